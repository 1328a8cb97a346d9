//! Results back to whoever asked, through the binary, on SQLite and on
//! PostgreSQL: `submit --wait` of a passing, a failing, a timed-out and a
//! cancelled test with their exit codes and summaries; a batch of 50 with
//! one JUnit report holding every case; `cancel` of a running local test;
//! SIGTERM to a waiting submitter; `status`, `history`, `logs`,
//! `artifacts --download`; and bad input refused at submit.

#![cfg(all(feature = "mock", feature = "local"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pg_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

struct Harness {
    dir: tempfile::TempDir,
    serve: Option<Child>,
    marker: String,
}

impl Harness {
    fn new(postgres: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let queue = if postgres {
            format!(
                "queue: {{postgres: {{url: '{}'}}}}\n",
                pg_common::fresh_url()
            )
        } else {
            "queue: {path: q.sqlite3}\n".to_owned()
        };
        std::fs::write(
            dir.path().join("worker.yaml"),
            format!(
                "{queue}worker: {{concurrency: 6, poll_ms: 50, reap_interval_seconds: 0}}\n\
                 runners:\n  - {{type: local_mock, backend: {{artifacts: memory}}}}\n  - {{type: local, artifacts_dir: art, backend: {{root: '{}', kill_grace_ms: 200}}}}\n",
                dir.path().join("work").display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("mock.yaml"),
            "name: m\nrunner: local_mock\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("local.yaml"), "name: l\nrunner: local\n").unwrap();
        let marker = format!("results-{}-{}", std::process::id(), fastrand::u32(..));
        let mut h = Self {
            dir,
            serve: None,
            marker,
        };
        let serve = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(h.path("worker.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(h.path("serve.log")).unwrap())
            .spawn()
            .unwrap();
        h.serve = Some(serve);
        h
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--config")
            .arg(self.path("worker.yaml"))
            .current_dir(self.dir.path());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn local_payload(&self, name: &str, script: &str, extra: &str) -> PathBuf {
        self.write(
            &format!("{name}.yaml"),
            &format!(
                "name: {name}\ncommand: [sh, -c, \"{script}\"]\nenv: {{PROC_MARKER: {}}}\n{extra}",
                self.marker
            ),
        )
    }

    fn marked(&self) -> usize {
        let needle = format!("PROC_MARKER={}", self.marker);
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|s| s.parse::<u32>().is_ok())
            })
            .filter(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let zombie = stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with('Z'));
                let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
                !zombie && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
            })
            .count()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(serve.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let started = Instant::now();
            while serve.try_wait().ok().flatten().is_none()
                && started.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = serve.kill();
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn submit_wait(h: &Harness, key: &str, bench: &str, payload: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "submit",
        "--wait",
        "--timeout",
        "120s",
        "--key",
        key,
        "--bench",
        bench,
        "--payload",
    ];
    let p = payload.to_str().unwrap();
    args.push(p);
    args.extend_from_slice(extra);
    h.run(&args)
}

fn scenario(postgres: bool) {
    let h = Harness::new(postgres);

    // Passing: exit 0, the summary, the record, the log and the artifacts.
    let pass = h.local_payload(
        "pass",
        "echo hello from the test; mkdir -p reports; printf '<testsuite name=\\\"unit\\\"><testcase name=\\\"a\\\"/><testcase name=\\\"b\\\"><failure message=\\\"x\\\"/></testcase></testsuite>' > reports/junit.xml",
        "artifacts: ['reports/*.xml']\n",
    );
    let out = submit_wait(&h, "pass-1", "local.yaml", &pass, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("result     passed"), "{}", text(&out));
    assert!(
        text(&out).contains("tests      1 passed, 1 failed, 0 skipped"),
        "the suite's own counts: {}",
        text(&out)
    );
    let status = h.run(&["status", "pass-1", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["execution"]["state"], "passed");
    assert_eq!(doc["execution"]["cases"].as_array().unwrap().len(), 2);
    let states: Vec<&str> = doc["execution"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    for s in [
        "queued",
        "leased",
        "provisioning",
        "running",
        "collecting",
        "tearing_down",
        "passed",
    ] {
        assert!(states.contains(&s), "{s} in {states:?}");
    }
    let logs = h.run(&["logs", "pass-1"]);
    assert!(
        text(&logs).contains("hello from the test"),
        "{}",
        text(&logs)
    );
    let down = h.path("down");
    let fetched = h.run(&["artifacts", "pass-1", "--download", down.to_str().unwrap()]);
    assert!(fetched.status.success(), "{}", text(&fetched));
    assert!(down.join("reports/junit.xml").exists());

    // Failing: exit 1. Timed out (payload limit 1 s): exit 1, timed_out.
    let fail = h.write(
        "fail.yaml",
        "name: fail\ncommand: [mock]\nbackend: {outcome: fail}\n",
    );
    let out = submit_wait(&h, "fail-1", "mock.yaml", &fail, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("result     failed"), "{}", text(&out));
    let slow = h.local_payload("slow", "exec sleep 30", "timeout_seconds: 1\n");
    let out = submit_wait(&h, "slow-1", "local.yaml", &slow, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("result     timed_out"),
        "{}",
        text(&out)
    );

    // Cancelled: a running local test is stopped by `cancel`; the waiting
    // submitter exits 3; no process and no work dir remain.
    let long = h.local_payload("long", "exec sleep 60", "");
    let waiter = h
        .cmd(&[
            "submit",
            "--wait",
            "--key",
            "long-1",
            "--bench",
            "local.yaml",
            "--payload",
            long.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || h.marked() == 1),
        "never ran"
    );
    let cancelled = h.run(&["cancel", "long-1"]);
    assert!(
        text(&cancelled).contains("cancel requested"),
        "{}",
        text(&cancelled)
    );
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("cancelled"), "{}", text(&out));
    assert!(
        wait_for(Duration::from_secs(10), || h.marked() == 0),
        "the test process is gone"
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&h.run(&["status", "long-1", "--json"]).stdout).unwrap();
    assert_eq!(doc["execution"]["state"], "cancelled");
    assert!(doc["execution"]["cancel_requested"].as_bool().unwrap());
    // (`.spare` holds the serving runner's clean directories kept for
    // reuse, never an execution's.)
    assert!(
        std::fs::read_dir(h.path("work"))
            .unwrap()
            .flatten()
            .all(|e| e.file_name() == ".spare"),
        "its working directory was torn down"
    );

    // SIGTERM to a waiting `submit --wait` cancels what it submitted.
    let waiter = h
        .cmd(&[
            "submit",
            "--wait",
            "--key",
            "term-1",
            "--bench",
            "local.yaml",
            "--payload",
            long.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || h.marked() == 1),
        "never ran"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(waiter.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("cancelled 1 execution"),
        "{}",
        text(&out)
    );
    assert!(
        wait_for(Duration::from_secs(10), || h.marked() == 0),
        "the test it submitted stopped"
    );

    // A batch of 50, mixed: one transaction, one JUnit report with every case.
    let mut batch = String::new();
    for i in 0..50 {
        let (outcome, suite) = match i % 5 {
            0 => ("fail", ""),
            1 => ("pass", "suite"),
            _ => ("pass", ""),
        };
        if suite.is_empty() {
            batch.push_str(&format!(
                "- {{runner: local_mock, key: batch-{i:02}, bench: mock.yaml, payload: {{name: b{i}, command: [mock], backend: {{outcome: {outcome}}}}}}}\n"
            ));
        } else {
            batch.push_str(&format!(
                "- {{key: batch-{i:02}, bench: local.yaml, payload: pass.yaml}}\n"
            ));
        }
    }
    h.write("batch.yaml", &batch);
    let junit = h.path("report.xml");
    let out = h.run(&[
        "submit",
        "--batch",
        "batch.yaml",
        "--wait",
        "--timeout",
        "120s",
        "--junit",
        junit.to_str().unwrap(),
        "--correlation-id",
        "pipeline-9",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the worst is a failure: {}",
        text(&out)
    );
    assert!(text(&out).contains("total      50"), "{}", text(&out));
    let xml = std::fs::read_to_string(&junit).unwrap();
    let (cases, counts) = orchestrator_worker::junit::parse(xml.as_bytes()).unwrap();
    // 10 local suites with 2 cases each, 40 mock executions with one.
    assert_eq!(cases.len(), 10 * 2 + 40, "{xml}");
    assert_eq!((counts.failed, counts.passed), (10 + 10, 30 + 10));
    let history = h.run(&[
        "history",
        "--correlation-id",
        "pipeline-9",
        "--limit",
        "100",
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(doc["executions"].as_array().unwrap().len(), 50);

    // Bad input is refused at submit, naming the field, before anything is queued.
    let out = h.run(&[
        "submit",
        "--runner",
        "quantum",
        "--bench",
        "mock.yaml",
        "--payload",
        fail.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("bench.runner"), "{}", text(&out));
    std::fs::write(h.path("plain.yaml"), "name: p\n").unwrap();
    let out = h.run(&[
        "submit",
        "--runner",
        "quantum",
        "--bench",
        "plain.yaml",
        "--payload",
        fail.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("unknown runner type `quantum`") && text(&out).contains("local_mock"),
        "{}",
        text(&out)
    );
    let escape = h.local_payload("escape", "true", "artifacts: ['../*']\n");
    for cmd in ["submit", "validate"] {
        let out = h.run(&[
            cmd,
            "--bench",
            "local.yaml",
            "--payload",
            escape.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(4), "{cmd}: {}", text(&out));
        assert!(
            text(&out).contains("payload.artifacts[0]"),
            "{cmd}: {}",
            text(&out)
        );
    }
    let out = h.run(&[
        "validate",
        "--bench",
        "local.yaml",
        "--payload",
        pass.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn results_come_back_on_sqlite() {
    scenario(false);
}

#[test]
fn results_come_back_on_postgres() {
    scenario(true);
}
