//! Typed, validated settings of the local runner.

use std::path::PathBuf;

use runner_core::{ConfigError, RunnerConfig};
use serde::{Deserialize, Serialize};

/// The longest `kill_grace_ms` accepted: 10 minutes.
pub const MAX_KILL_GRACE_MS: u64 = 600_000;

/// The `backend` section of a `local` payload: there is none, so any key is
/// refused instead of being ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPayload {}

/// The `backend` section of a `local` runner config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Where working directories are made.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Where artifacts are copied (from the runner config's `artifacts_dir`).
    #[serde(skip, default = "default_artifacts")]
    pub artifacts_dir: PathBuf,
    /// Milliseconds between SIGTERM and SIGKILL on timeout or cancellation.
    #[serde(default = "default_grace")]
    pub kill_grace_ms: u64,
    /// Environment variables of the worker passed to every test (names).
    #[serde(default = "default_passthrough")]
    pub env_passthrough: Vec<String>,
    /// Each log file stops growing at this size; a marker line says so.
    #[serde(default = "default_max_log")]
    pub max_log_bytes: u64,
    /// Once the test's main process has exited (and what it started was
    /// killed), output still in the pipes is read for at most this long.
    #[serde(default = "default_output_grace")]
    pub output_grace_ms: u64,
}

fn default_output_grace() -> u64 {
    2_000
}

fn default_root() -> PathBuf {
    std::env::temp_dir().join("orchestrator-local")
}
fn default_artifacts() -> PathBuf {
    PathBuf::from("artifacts")
}
fn default_grace() -> u64 {
    2_000
}
fn default_passthrough() -> Vec<String> {
    ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"]
        .map(String::from)
        .to_vec()
}
fn default_max_log() -> u64 {
    4 * 1024 * 1024 * 1024
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            root: default_root(),
            artifacts_dir: default_artifacts(),
            kill_grace_ms: default_grace(),
            env_passthrough: default_passthrough(),
            max_log_bytes: default_max_log(),
            output_grace_ms: default_output_grace(),
        }
    }
}

impl LocalConfig {
    /// From a runner config: its `backend` section and `artifacts_dir`.
    pub fn from_runner_config(config: &RunnerConfig) -> Result<Self, ConfigError> {
        let mut local: LocalConfig = config.backend_section()?;
        local.artifacts_dir = config.artifacts_dir.clone();
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message,
            })
        };
        if local.root.as_os_str().is_empty() {
            return invalid("backend.root", "must not be empty".into());
        }
        if local.kill_grace_ms > MAX_KILL_GRACE_MS {
            return invalid(
                "backend.kill_grace_ms",
                format!(
                    "{} is more than the maximum of {MAX_KILL_GRACE_MS} (10 minutes)",
                    local.kill_grace_ms
                ),
            );
        }
        if local.output_grace_ms > MAX_KILL_GRACE_MS {
            return invalid(
                "backend.output_grace_ms",
                format!(
                    "{} is more than the maximum of {MAX_KILL_GRACE_MS} (10 minutes)",
                    local.output_grace_ms
                ),
            );
        }
        if local.max_log_bytes == 0 {
            return invalid("backend.max_log_bytes", "must be at least 1".into());
        }
        Ok(local)
    }
}

/// The `backend` section of a bench for `local`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalBench {
    /// A prefix for the working directory's name (letters, digits, `-`, `_`).
    #[serde(default)]
    pub workdir_prefix: Option<String>,
}

impl LocalBench {
    /// Check what types cannot; returns the bad field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(prefix) = &self.workdir_prefix {
            let ok = !prefix.is_empty()
                && prefix.len() <= 64
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err((
                    "bench.backend.workdir_prefix",
                    format!("{prefix:?} must be 1 to 64 letters, digits, `-` or `_`"),
                ));
            }
        }
        Ok(())
    }
}
