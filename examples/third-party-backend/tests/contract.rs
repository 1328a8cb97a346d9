//! The third-party backend passes the same contract suite as the built-ins,
//! twice: on the bare adapter (what this crate wrote) and on the adapter the
//! worker's factory hands out (the same, inside the worker's time limits,
//! panic guard and error context: what runs in production).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use runner_contract::Fixture;
use runner_core::blocking::Blocking;
use runner_core::{BenchSpec, RunnerAdapter, RunnerConfig, TestPayload};
use third_party_backend::EchoRunner;

fn payload(command: &[&str]) -> TestPayload {
    TestPayload::new(command.iter().copied())
}

fn fixture() -> Fixture {
    Fixture::new(
        BenchSpec::new(),
        BenchSpec::new().with_backend(serde_json::json!({"greeting": 7})),
        "bench.backend.greeting",
        payload(&["true"]),
        payload(&["false"]),
        payload(&["sleep", "600"]),
    )
}

/// What the worker runs: `echo` registered the way a third-party binary
/// registers it, created through the factory, so wrapped in every layer.
fn wrapped() -> Arc<dyn RunnerAdapter> {
    let mut factory =
        orchestrator_worker::RunnerFactory::empty(orchestrator_worker::Metrics::new());
    third_party_backend::register(factory.registry_mut());
    factory.create(&RunnerConfig::new("echo")).unwrap()
}

/// The bare adapter: the backend's own code, nothing around it.
mod bare {
    use super::*;

    runner_contract::contract_tests!(
        adapter = Blocking::new(EchoRunner::default()),
        fixture = fixture(),
    );
}

/// The wrapped adapter, an `Arc<dyn RunnerAdapter>`.
mod wrapped {
    use super::*;

    runner_contract::contract_tests!(adapter = wrapped(), fixture = fixture());
}

#[test]
fn registered_from_outside_the_worker() {
    let adapter = wrapped();
    assert_eq!(adapter.runner_type(), "echo");
    let mut factory =
        orchestrator_worker::RunnerFactory::with_builtins(orchestrator_worker::Metrics::new());
    third_party_backend::register(factory.registry_mut());
    assert!(factory.known_types().contains(&"echo".to_owned()));
}

#[test]
fn registers_without_the_worker() {
    let registry = runner_core::RunnerRegistry::with(&[third_party_backend::register]);
    assert_eq!(registry.known_types(), ["echo"]);
    let bare = registry.create(&RunnerConfig::new("echo")).unwrap();
    assert_eq!(bare.runner_type(), "echo");
}
