//! The third-party backend passes the same contract suite as the built-ins.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use runner_contract::Fixture;
use runner_core::blocking::Blocking;
use runner_core::{BenchSpec, TestPayload};
use third_party_backend::EchoRunner;

fn payload(command: &str) -> TestPayload {
    TestPayload::new([command])
}

fn fixture() -> Fixture {
    Fixture::new(
        BenchSpec::default(),
        BenchSpec::new().with_backend(serde_json::json!({"greeting": 7})),
        "bench.backend.greeting",
        payload("true"),
        payload("false"),
        payload("true"),
    )
}

// Cancellation is not checked: a blocking backend without a long-running
// payload has nothing to cancel; the other seven checks apply.
mod checks {
    use super::*;

    macro_rules! check {
        ($($name:ident),*) => {$(
            #[tokio::test]
            async fn $name() {
                let adapter = Blocking::new(EchoRunner::default());
                runner_contract::$name(&adapter, &fixture()).await.unwrap();
            }
        )*};
    }

    check!(
        full_lifecycle,
        teardown_after_failed_run,
        teardown_released_handle,
        handle_survives_serialization,
        invalid_spec_is_permanent,
        artifacts_are_safe_and_hashed,
        errors_carry_ids
    );
}

#[tokio::test]
async fn registered_from_outside_the_worker() {
    let mut factory =
        orchestrator_worker::RunnerFactory::with_builtins(orchestrator_worker::Metrics::new());
    third_party_backend::register(factory.registry_mut());
    assert!(factory.known_types().contains(&"echo".to_owned()));
    let adapter = factory
        .create(&runner_core::RunnerConfig::new("echo"))
        .unwrap();
    assert_eq!(adapter.runner_type(), "echo");
}

#[test]
fn registers_without_the_worker() {
    let registry = runner_core::RunnerRegistry::with(&[third_party_backend::register]);
    assert_eq!(registry.known_types(), ["echo"]);
    let bare = registry
        .create(&runner_core::RunnerConfig::new("echo"))
        .unwrap();
    assert_eq!(bare.runner_type(), "echo");
}
