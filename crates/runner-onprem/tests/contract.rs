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
}

async fn setup() -> (runner_onprem::OnPremBenchRunner, bench_sim::SimHandle) {
    let sim = common::sim(common::BENCHES).await;
    (common::runner(&sim, &artifacts_root()), sim)
}

runner_contract::contract_tests!(setup = setup(), fixture = fixture());
