//! The bench-platform API's answers, as this runner reads them.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Reservation {
    pub(crate) id: String,
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) position: Option<u64>,
    #[serde(default)]
    pub(crate) bench_id: Option<String>,
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
    #[serde(default)]
    pub(crate) created_at: Option<u64>,
    #[serde(default)]
    pub(crate) ended_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Reservations {
    pub(crate) reservations: Vec<Reservation>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Run {
    pub(crate) id: String,
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) exit_code: Option<i32>,
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
    #[serde(default)]
    pub(crate) error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Runs {
    pub(crate) runs: Vec<Run>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LogChunk {
    pub(crate) next_offset: u64,
    pub(crate) data: String,
    pub(crate) complete: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RemoteArtifact {
    pub(crate) name: String,
    pub(crate) uri: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Artifacts {
    pub(crate) artifacts: Vec<RemoteArtifact>,
}
