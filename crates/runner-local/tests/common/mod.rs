//! Shared set-up for the local runner's tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use runner_core::{BenchSpec, TestPayload};
use runner_local::{LocalConfig, LocalProcessRunner};

/// A runner whose work root and artifacts dir are under `base`.
pub fn runner(base: &Path) -> LocalProcessRunner {
    LocalProcessRunner::new(LocalConfig {
        root: base.join("work"),
        artifacts_dir: base.join("artifacts"),
        kill_grace_ms: 500,
        ..LocalConfig::default()
    })
}

pub fn sh(script: &str) -> TestPayload {
    TestPayload::new(["sh", "-c", script]).with_name("sh")
}

pub fn bench() -> BenchSpec {
    BenchSpec::default()
}

pub fn invalid_bench() -> BenchSpec {
    BenchSpec::new().with_backend(serde_json::json!({"workdir_prefix": "../escape"}))
}

/// A per-process base directory for tests that cannot hold a TempDir.
pub fn base(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("runner-local-{name}-{}", std::process::id()))
}

/// Pids of live (non-zombie) processes whose environment holds `marker`.
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        if state == Some('Z') || state.is_none() {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
            found.push(pid);
        }
    }
    found
}
