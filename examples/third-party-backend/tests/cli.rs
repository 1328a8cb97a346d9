//! The third-party binary offers every command through the library CLI:
//! it serves a queue and a submitter waits for the result.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_third-party-backend");

/// Every subcommand of the built-in `orchestrator` binary, as the worker's
/// library lists them, is in this binary's help and answers `--help`.
#[test]
fn every_orchestrator_command_is_offered() {
    let names = orchestrator_worker::cli::command_names();
    assert!(names.len() >= 10, "{names:?}");
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for name in &names {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} "))),
            "`{name}` missing from the help:\n{help}"
        );
        let out = Command::new(BIN).args([name, "--help"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{name} --help: {out:?}");
    }
}

#[test]
fn submit_wait_and_status_through_the_library_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.yaml");
    std::fs::write(
        &config,
        "queue: {path: q.sqlite3}\nworker: {poll_ms: 50}\nrunners: [{type: echo}]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("bench.yaml"), "name: b\nrunner: echo\n").unwrap();
    std::fs::write(
        dir.path().join("payload.yaml"),
        "name: hello\ncommand: [make, test]\n",
    )
    .unwrap();
    let backends = Command::new(BIN).arg("backends").output().unwrap();
    assert!(String::from_utf8_lossy(&backends.stdout).contains("echo"));
    let mut serve = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The bench names its runner: no --runner needed.
    let submit = Command::new(BIN)
        .args([
            "submit",
            "--wait",
            "--timeout",
            "60s",
            "--key",
            "echo-1",
            "--bench",
        ])
        .arg(dir.path().join("bench.yaml"))
        .arg("--payload")
        .arg(dir.path().join("payload.yaml"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let status = Command::new(BIN)
        .args(["status", "echo-1", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let _ = Command::new("kill").arg(serve.id().to_string()).status();
    let started = Instant::now();
    while serve.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = serve.kill();
    let out = String::from_utf8_lossy(&submit.stdout);
    assert_eq!(
        submit.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    assert!(out.contains("result     passed"), "{out}");
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["execution"]["state"], "passed");
    assert_eq!(doc["execution"]["runner"], "echo");
}
