//! The `orchestrator run` command on the ec2 backend, configured only
//! through the SDK's standard settings: `AWS_ENDPOINT_URL` (moto, for EC2
//! and S3) and `AWS_ENDPOINT_URL_SSM` (the SSM agent emulator), dummy
//! credentials in the environment. The README's example suite, packed as a
//! tar, runs on a (moto) instance through the real binary.

#![cfg(feature = "ec2")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ec2_common;

use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_suite_runs_on_ec2_through_the_cli() {
    let emu = ec2_common::start("cli-artifacts").await;
    let (moto, sim, s3, ec2, image) = (&emu.moto, &emu.sim, &emu.s3, &emu.ec2, &emu.image);

    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("suite.tar.gz");
    let packed = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tar)
        .arg("-C")
        .arg(root().join("examples/local-suite"))
        .arg(".")
        .status()
        .unwrap();
    assert!(packed.success());
    let mut payload = std::fs::read_to_string(root().join("examples/local/payload.yaml")).unwrap();
    payload = payload.replace(
        "package: examples/local-suite",
        &format!("package: {}", tar.display()),
    );
    std::fs::write(dir.path().join("payload.yaml"), payload).unwrap();
    let mut runner = std::fs::read_to_string(root().join("examples/ec2/runner.yaml")).unwrap();
    runner = runner
        .replace("bucket: my-test-artifacts", "bucket: cli-artifacts")
        .replace("image_id: ami-0123456789abcdef0", &format!("image_id: {image}"))
        .replace("owner: my-ci-farm", "owner: cli-test\n  force_path_style: true\n  poll_initial_ms: 50\n  poll_max_ms: 250\n  live_log_interval_seconds: 1");
    std::fs::write(dir.path().join("runner.yaml"), runner).unwrap();

    let mut cmd = tokio::process::Command::new(BIN);
    // The bench file's backend section is the local runner's; ec2 refuses
    // unknown keys, so give it an empty one.
    let bench = dir.path().join("bench.yaml");
    std::fs::write(&bench, "name: an-ec2-instance\nbackend: {}\n").unwrap();
    cmd.arg("run")
        .arg("--bench")
        .arg(&bench)
        .arg("--payload")
        .arg(dir.path().join("payload.yaml"))
        .arg("--config")
        .arg(dir.path().join("runner.yaml"))
        .env_remove("AWS_PROFILE")
        .env("AWS_ENDPOINT_URL_SSM", sim.endpoint())
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .envs(moto.env())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the run ends within two minutes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("5 passed, 0 failed"), "{text}");
    assert!(
        !text.contains("example-token-8c1f"),
        "the secret must not appear: {text}"
    );

    // The instance is gone and the artifacts are in the bucket.
    let listed = s3
        .list_objects_v2()
        .bucket("cli-artifacts")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert!(
        keys.iter()
            .any(|k| k.ends_with("artifacts/reports/junit.xml")),
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.ends_with("env.sh")),
        "teardown deletes the environment file: {keys:?}"
    );
    let instances = ec2.describe_instances().send().await.unwrap();
    let states: Vec<&str> = instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()))
        .collect();
    assert_eq!(states, ["terminated"]);
}
