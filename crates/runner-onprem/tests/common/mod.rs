//! Shared set-up: a bench-sim per test on 127.0.0.1, a runner pointed at it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use bench_sim::{SimConfig, SimHandle};
use runner_core::{BenchSpec, RunContext, TestPayload};
use runner_onprem::{OnPremBenchRunner, OnPremConfig, Token};

pub const TOKEN: &str = "sim-token-5b0e";

pub const BENCHES: &str = "
tokens: [sim-token-5b0e]
default_lease_seconds: 30
benches:
  - {id: rig-1, type: rig, labels: {fw: '2'}}
  - {id: rig-2, type: rig, labels: {fw: '2'}}
";

pub async fn sim(yaml: &str) -> SimHandle {
    bench_sim::serve(
        SimConfig::from_yaml(yaml).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

pub fn config(sim: &SimHandle) -> OnPremConfig {
    serde_json::from_value(serde_json::json!({
        "base_url": sim.base_url(),
        "owner": "tests",
        "lease_seconds": 30,
        "poll_ms": 20,
        "log_wait_ms": 200,
        "backoff_base_ms": 20,
        "backoff_max_ms": 200,
        "request_timeout_ms": 5000,
    }))
    .unwrap()
}

pub fn runner_with(config: OnPremConfig, token: &str, artifacts: &Path) -> OnPremBenchRunner {
    OnPremBenchRunner::new(config, Token::new(token), artifacts.to_path_buf()).unwrap()
}

pub fn runner(sim: &SimHandle, artifacts: &Path) -> OnPremBenchRunner {
    runner_with(config(sim), TOKEN, artifacts)
}

pub fn bench() -> BenchSpec {
    BenchSpec::new()
        .with_name("rig")
        .with_backend(serde_json::json!({"bench_type": "rig", "labels": {"fw": "2"}}))
}

pub fn invalid_bench() -> BenchSpec {
    BenchSpec::new().with_backend(serde_json::json!({"bench_type": ""}))
}

pub fn payload(env: &[(&str, &str)]) -> TestPayload {
    TestPayload::new(["run-suite"])
        .with_name("hil")
        .with_env_vars(
            env.iter()
                .map(|(k, v)| (k.to_string(), runner_core::EnvVar::Plain(v.to_string()))),
        )
}

pub fn ctx(key: &str, attempt: u32) -> RunContext {
    RunContext::new(format!("{key}.{attempt}"), format!("corr-{key}"))
        .with_execution_key(key)
        .with_attempt(attempt)
}
