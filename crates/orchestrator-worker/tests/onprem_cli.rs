//! `orchestrator run` on the onprem backend against bench-sim over HTTP on
//! 127.0.0.1, with the shipped example files and the token from the
//! environment.

#![cfg(feature = "onprem")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_runs_on_bench_sim_through_the_cli() {
    let yaml = std::fs::read_to_string(root().join("examples/onprem/benches.yaml")).unwrap();
    let sim = bench_sim::serve(
        bench_sim::SimConfig::from_yaml(&yaml).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runner = std::fs::read_to_string(root().join("examples/onprem/runner.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:8080", &sim.base_url())
        .replace(
            "target/orchestrator/artifacts",
            &dir.path().join("artifacts").display().to_string(),
        );
    std::fs::write(dir.path().join("runner.yaml"), runner).unwrap();
    let out = tokio::process::Command::new(BIN)
        .arg("run")
        .arg("--bench")
        .arg(root().join("examples/onprem/bench.yaml"))
        .arg("--payload")
        .arg(root().join("examples/onprem/payload.yaml"))
        .arg("--config")
        .arg(dir.path().join("runner.yaml"))
        .env("BENCH_API_TOKEN", "sim-token")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("line 20 of 20"), "{text}");
    assert!(
        text.contains("env FLASH_KEY=***") && !text.contains("flash-key-77d2"),
        "{text}"
    );
    let junit = std::fs::read_dir(dir.path().join("artifacts"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("reports/junit.xml");
    assert!(junit.exists(), "{}", junit.display());
    assert_eq!(sim.live_reservations(), 0, "the reservation is released");

    // A wrong token: exit code 2 (infrastructure), the token nowhere.
    let out = tokio::process::Command::new(BIN)
        .arg("run")
        .arg("--bench")
        .arg(root().join("examples/onprem/bench.yaml"))
        .arg("--payload")
        .arg(root().join("examples/onprem/payload.yaml"))
        .arg("--config")
        .arg(dir.path().join("runner.yaml"))
        .env("BENCH_API_TOKEN", "not-the-token-3f9a")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        text.contains("401") && !text.contains("not-the-token-3f9a"),
        "{text}"
    );
}
