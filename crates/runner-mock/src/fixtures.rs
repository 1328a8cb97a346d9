//! Ready-made benches and payloads for tests of and with the mock.

use runner_core::{BenchSpec, TestPayload};
use serde_json::json;

/// A valid bench.
pub fn bench() -> BenchSpec {
    BenchSpec::new().with_name("mock-bench")
}

/// A bench whose `bench.backend.seed` is not a number.
pub fn invalid_bench() -> BenchSpec {
    BenchSpec::new()
        .with_name("bad")
        .with_backend(json!({"seed": "not-a-number"}))
}

/// The field [`invalid_bench`] gets wrong.
pub const INVALID_FIELD: &str = "bench.backend.seed";

/// A payload that passes.
pub fn passing() -> TestPayload {
    payload("passes", json!({"outcome": "pass"}))
}

/// A payload that fails.
pub fn failing() -> TestPayload {
    payload("fails", json!({"outcome": "fail"}))
}

/// A payload that runs for ten minutes unless cancelled.
pub fn long_running() -> TestPayload {
    payload("long", json!({"outcome": "pass", "duration_ms": 600_000}))
}

fn payload(name: &str, backend: serde_json::Value) -> TestPayload {
    TestPayload::new(["mock"])
        .with_name(name)
        .with_backend(backend)
}
