//! The contract suite on LocalMockRunner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use runner_contract::Fixture;
use runner_mock::{LocalMockRunner, fixtures};

fn artifacts_dir() -> PathBuf {
    std::env::temp_dir().join(format!("runner-mock-contract-{}", std::process::id()))
}

fn fixture() -> Fixture {
    Fixture::new(
        fixtures::bench(),
        fixtures::invalid_bench(),
        fixtures::INVALID_FIELD,
        fixtures::passing(),
        fixtures::failing(),
        fixtures::long_running(),
    )
    .with_artifacts_root(artifacts_dir())
    .with_secret_case(secret_payload(), SECRET)
}

const SECRET: &str = "mock-s3cr3t-value";

/// The mock prints the payload's name; a name holding a secret env value
/// is redacted in the live log and the log artifact.
fn secret_payload() -> runner_core::TestPayload {
    let mut payload = fixtures::passing();
    payload.name = format!("suite-{SECRET}");
    runner_contract::with_secret_env(payload, "TOKEN", SECRET)
}

runner_contract::contract_tests!(
    adapter = LocalMockRunner::with_artifacts_dir(artifacts_dir()),
    fixture = fixture(),
);

#[tokio::test]
async fn run_all_reports_every_check_passing() {
    let report = runner_contract::run_all(
        &LocalMockRunner::with_artifacts_dir(artifacts_dir()),
        &fixture(),
    )
    .await;
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.outcomes.len(), runner_contract::CHECKS.len());
}
