//! The contract suite on ContainerRunner, against a real Podman service.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use runner_contract::Fixture;

fn fixture() -> Fixture {
    let mut passing =
        common::sh("echo hello from the container; echo report > /artifacts/report.txt");
    passing.artifacts = vec![];
    Fixture::new(
        common::bench(),
        common::invalid_bench(),
        "bench.backend.memory_mb",
        passing,
        common::sh("echo failing; exit 3"),
        common::sh("echo started; exec sleep 600"),
    )
    .with_artifacts_root(common::base("contract").join("artifacts"))
}

runner_contract::contract_tests!(
    adapter = common::runner(&common::base("contract")),
    fixture = fixture(),
);
