//! The contract suite on OnPremBenchRunner against bench-sim over real
//! HTTP on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use runner_contract::Fixture;

fn artifacts_root() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("runner-onprem-contract-{}", std::process::id()))
}

fn fixture() -> Fixture {
    Fixture::new(
        common::bench(),
        common::invalid_bench(),
        "bench.backend.bench_type",
        common::payload(&[("SIM_LINES", "5")]),
        common::payload(&[("SIM_EXIT", "3")]),
        common::payload(&[("SIM_DURATION_MS", "600000"), ("SIM_LINES", "600")]),
    )
    .with_artifacts_root(artifacts_root())
    .with_secret_case(secret_payload(), SECRET)
    // No big case: bench-sim runs in the test's own process and holds every
    // log and artifact in memory, so the process's RSS cannot tell the
    // runner's memory from the simulator's. The onprem download path is the
    // kit's writer, whose bound runner-core's tests show.
}

const SECRET: &str = "hil-s3cr3t-across-the-edge";

/// The sim writes the command into the run's first log line and into each
/// artifact: padded so the secret straddles the 64 KiB chunk boundary of
/// the run log (`$ run-suite <pad> <secret>`: 12 + 65,517 + 1 = 65,530).
fn secret_payload() -> runner_core::TestPayload {
    let mut payload = common::payload(&[("SIM_LINES", "5")]);
    payload.command = vec!["run-suite".into(), "a".repeat(65_517), SECRET.into()];
    runner_contract::with_secret_env(payload, "TOKEN", SECRET)
}

async fn setup() -> (runner_onprem::OnPremBenchRunner, bench_sim::SimHandle) {
    let sim = common::sim(common::BENCHES).await;
    (common::runner(&sim, &artifacts_root()), sim)
}

runner_contract::contract_tests!(setup = setup(), fixture = fixture());
