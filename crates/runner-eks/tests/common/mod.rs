//! Shared set-up: a scripted API server per test, a runner pointed at it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod fake_k8s;

use std::path::Path;

use runner_core::{BenchSpec, EnvVar, TestPayload};
use runner_eks::{EksConfig, EksRunner};

pub use fake_k8s::FakeK8s;

pub fn config(extra: serde_json::Value) -> EksConfig {
    let mut base = serde_json::json!({
        "namespace": "tests",
        "image": "registry.example/tests:1",
        "owner": "eks-tests",
        "pod_start_timeout_seconds": 20,
    });
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(base).unwrap()
}

pub fn runner_with(fake: &FakeK8s, config: EksConfig, artifacts: &Path) -> EksRunner {
    EksRunner::with_clients(config, artifacts.to_path_buf(), fake.client(), None).unwrap()
}

pub fn runner(fake: &FakeK8s, artifacts: &Path) -> EksRunner {
    runner_with(fake, config(serde_json::json!({})), artifacts)
}

pub fn bench() -> BenchSpec {
    BenchSpec::new()
        .with_name("pod")
        .with_backend(serde_json::json!({"node_selector": {"pool": "tests"}}))
}

pub fn invalid_bench() -> BenchSpec {
    BenchSpec::new()
        .with_name("bad")
        .with_backend(serde_json::json!({"resources": {"limits": {"memory": "lots"}}}))
}

pub fn payload(env: &[(&str, &str)]) -> TestPayload {
    TestPayload::new(["/bin/run-tests"])
        .with_name("sim")
        .with_env_vars(
            env.iter()
                .map(|(k, v)| (k.to_string(), EnvVar::Plain(v.to_string()))),
        )
}

/// `payload` with a secret variable (`{value, secret: true}`).
pub fn with_secret(mut payload: TestPayload, name: &str, value: &str) -> TestPayload {
    payload.env.insert(
        name.into(),
        EnvVar::Detailed {
            value: value.into(),
            secret: true,
        },
    );
    payload
}

/// A context named after the test.
pub fn ctx(name: &str) -> runner_core::RunContext {
    runner_core::RunContext::new(format!("exec-{name}"), format!("corr-{name}"))
}

/// A scripted API server and a runner on it, artifacts in a temp dir.
pub struct Setup {
    pub fake: FakeK8s,
    pub runner: EksRunner,
    _dir: tempfile::TempDir,
}

/// [`Setup`] with the default config.
pub async fn setup() -> Setup {
    let fake = FakeK8s::start().await;
    let dir = tempfile::tempdir().unwrap();
    let runner = runner(&fake, dir.path());
    Setup {
        fake,
        runner,
        _dir: dir,
    }
}
