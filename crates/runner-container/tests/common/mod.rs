//! Shared set-up for the container runner's tests: one Podman service per
//! test binary (test-emulators installs and starts it), a runner on it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use runner_container::{ContainerConfig, ContainerRunner, PullPolicy};
use runner_core::{BenchSpec, RunContext, TestPayload};
use test_emulators::podman::Podman;

/// The shared Podman service.
pub fn podman() -> &'static Podman {
    Podman::shared().expect("Podman for the container runner's tests")
}

/// The settings tests use: the shared service, the local test image, small
/// limits, a short stop grace, artifacts below `base`.
pub fn config(base: &Path) -> ContainerConfig {
    let podman = podman();
    ContainerConfig {
        endpoint: Some(podman.endpoint()),
        image: Some(podman.image().to_owned()),
        pull: PullPolicy::Never,
        owner: owner(),
        memory_mb: 256,
        stop_grace_seconds: 1,
        request_timeout_seconds: 30,
        artifacts_dir: base.join("artifacts"),
        ..ContainerConfig::default()
    }
}

/// An owner label of this test process, so its leak listing sees only its
/// own containers.
pub fn owner() -> String {
    format!("orch-test-{}", std::process::id())
}

pub fn runner(base: &Path) -> ContainerRunner {
    ContainerRunner::new(config(base)).unwrap()
}

pub fn sh(script: &str) -> TestPayload {
    TestPayload::new(["sh", "-c", script]).with_name("sh")
}

pub fn bench() -> BenchSpec {
    BenchSpec::default()
}

pub fn invalid_bench() -> BenchSpec {
    BenchSpec::new().with_backend(serde_json::json!({"memory_mb": 1}))
}

pub fn ctx(name: &str) -> RunContext {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    RunContext::new(
        format!(
            "{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ),
        "corr",
    )
}

/// A per-process base directory for tests that cannot hold a TempDir.
pub fn base(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("runner-container-{name}-{}", std::process::id()))
}
