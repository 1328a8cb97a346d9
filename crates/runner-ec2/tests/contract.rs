//! The contract suite on Ec2Runner: EC2 and S3 from moto's server, SSM
//! from the agent emulator, which runs each test's script for real.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use runner_contract::Fixture;

fn fixture() -> Fixture {
    let mut passing =
        common::sh("echo hello from the test; mkdir -p out; echo data > out/result.txt; exit 0");
    passing.artifacts = vec!["out/*.txt".into()];
    Fixture::new(
        common::bench(),
        common::invalid_bench(),
        "bench.backend.instance_type",
        passing,
        common::sh("echo failing; exit 3"),
        common::sh("echo started; exec sleep 600"),
    )
    .with_cancel_bound(Duration::from_secs(30))
}

async fn setup() -> (runner_ec2::Ec2Runner, common::Env) {
    let env = common::env("contract").await;
    (env.runner(), env)
}

runner_contract::contract_tests!(setup = setup(), fixture = fixture());
