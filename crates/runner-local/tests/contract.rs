//! The contract suite on LocalProcessRunner, with real processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use runner_contract::Fixture;

fn fixture() -> Fixture {
    Fixture::new(
        common::bench(),
        common::invalid_bench(),
        "bench.backend.workdir_prefix",
        common::sh("echo hello from the test; exit 0"),
        common::sh("echo failing; exit 3"),
        common::sh("echo started; exec sleep 600"),
    )
    .with_artifacts_root(common::base("contract").join("artifacts"))
}

runner_contract::contract_tests!(
    adapter = common::runner(&common::base("contract")),
    fixture = fixture(),
);
