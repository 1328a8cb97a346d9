//! The `orchestrator` binary as an operator runs it: killed mid-run and
//! restarted, drained on SIGTERM, and reaped.
//!
//! Size: the operator scenarios share their process helpers, and every
//! file under tests/ is its own test binary (another link of the worker).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use orchestrator_worker::queue::{JournalState, SqliteStore, TaskQueue};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

struct Setup {
    dir: tempfile::TempDir,
    marker: String,
}

impl Setup {
    fn new(name: &str, worker: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let marker = format!("{name}-{}-{}", std::process::id(), fastrand::u32(..));
        let root = dir.path();
        std::fs::write(
            root.join("worker.yaml"),
            format!(
                "queue: {{path: queue.sqlite3}}\nworker: {{{worker}}}\nrunners:\n  - type: local\n    retries: 2\n    artifacts_dir: artifacts\n    backend: {{root: {}, kill_grace_ms: 200}}\n",
                root.join("work").display()
            ),
        )
        .unwrap();
        std::fs::write(root.join("bench.yaml"), "name: here\n").unwrap();
        Self { dir, marker }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn payload(&self, script: &str) -> PathBuf {
        let path = self.path("payload.yaml");
        std::fs::write(
            &path,
            format!(
                "name: sleeper\ncommand: [sh, -c, \"{script}\"]\nenv: {{PROC_MARKER: {}}}\n",
                self.marker
            ),
        )
        .unwrap();
        path
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .args(["--config", self.path("worker.yaml").to_str().unwrap()])
            .output()
            .unwrap()
    }

    fn submit(&self, key: &str, payload: &Path) {
        let out = self.cli(&[
            "submit",
            "--runner",
            "local",
            "--key",
            key,
            "--bench",
            self.path("bench.yaml").to_str().unwrap(),
            "--payload",
            payload.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn serve(&self, log: &str) -> Child {
        Command::new(BIN)
            .args([
                "serve",
                "--config",
                self.path("worker.yaml").to_str().unwrap(),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path(log)).unwrap())
            .spawn()
            .unwrap()
    }

    fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.path("queue.sqlite3")).unwrap()
    }

    /// Live processes carrying this test's marker in their environment.
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

    /// Start `serve`, wait until `running` tests run, SIGTERM it, and
    /// require a clean exit; returns the store to inspect.
    fn serve_then_sigterm(&self, running: usize) -> SqliteStore {
        let mut serve = self.serve("serve.log");
        assert!(
            wait_for(Duration::from_secs(30), || self.marked() == running),
            "tests never started"
        );
        sigterm(&serve);
        let status = wait_exit(&mut serve, Duration::from_secs(60));
        assert!(status.success(), "{status}");
        self.store()
    }

    fn work_dirs(&self) -> usize {
        std::fs::read_dir(self.path("work"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Poll `cond` every 50 ms for at most `limit`.
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

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn sigterm(child: &Child) {
    kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigkill_mid_run_then_restart_and_reap_loses_nothing_and_leaks_nothing() {
    let s = Setup::new(
        "crash",
        "concurrency: 2, visibility_seconds: 2, poll_ms: 50, stale_after_seconds: 2, leak_grace_seconds: 0, backoff_base_ms: 10",
    );
    let payload = s.payload("echo started; sleep 3; echo finished");
    for i in 0..4 {
        s.submit(&format!("crash-{i}"), &payload);
    }
    let mut first = s.serve("serve1.log");
    assert!(
        wait_for(Duration::from_secs(30), || s.marked() >= 2),
        "tests never started"
    );
    first.kill().unwrap(); // SIGKILL: no drain, no teardown, leases left behind.
    first.wait().unwrap();
    assert!(
        s.marked() >= 1,
        "the killed worker's tests outlive it (own process groups)"
    );

    let mut second = s.serve("serve2.log");
    let store = s.store();
    let settled = wait_for(Duration::from_secs(90), || {
        let d = block_on(store.depth()).unwrap();
        d.done + d.dead == 4
    });
    sigterm(&second);
    let status = wait_exit(&mut second, Duration::from_secs(30));
    let log = std::fs::read_to_string(s.path("serve2.log")).unwrap_or_default();
    assert!(
        settled,
        "tasks did not settle after the restart; log:\n{log}"
    );
    assert!(status.success(), "{status}; log:\n{log}");

    let reap = s.cli(&["reap", "--stale-after", "0", "--leak-grace", "0"]);
    assert!(
        reap.status.success(),
        "{}",
        String::from_utf8_lossy(&reap.stdout)
    );

    let depth = block_on(store.depth()).unwrap();
    assert_eq!((depth.done, depth.dead), (4, 0), "no task lost: {depth:?}");
    assert_eq!(block_on(store.leased_count()).unwrap(), 0);
    let journal = block_on(store.journal_all()).unwrap();
    assert_eq!(
        journal.len(),
        4,
        "one provision per execution key: {journal:#?}"
    );
    for entry in &journal {
        assert_eq!(entry.state, JournalState::Released, "{entry:?}");
    }
    assert!(
        wait_for(Duration::from_secs(5), || s.marked() == 0),
        "test processes survived"
    );
    assert_eq!(s.work_dirs(), 0, "working directories left behind");
    let outcomes = block_on(store.outcomes()).unwrap();
    assert!(
        outcomes.iter().all(|o| o.contains("\"passed\"")),
        "{outcomes:#?}"
    );
}

#[test]
fn sigterm_drains_running_executions_and_leaves_no_lease() {
    let s = Setup::new(
        "drain",
        "concurrency: 2, poll_ms: 50, drain_grace_seconds: 60",
    );
    let payload = s.payload("echo started; exec sleep 3");
    s.submit("drain-1", &payload);
    s.submit("drain-2", &payload);
    let store = s.serve_then_sigterm(2);
    let depth = block_on(store.depth()).unwrap();
    assert_eq!(
        depth.done, 2,
        "running executions finished and were acked: {depth:?}"
    );
    assert_eq!(block_on(store.leased_count()).unwrap(), 0);
    let outcomes = block_on(store.outcomes()).unwrap();
    assert!(
        outcomes.iter().all(|o| o.contains("\"passed\"")),
        "{outcomes:#?}"
    );
    assert_eq!(s.marked(), 0);
}

#[test]
fn drain_grace_over_cancels_tears_down_and_releases_the_task() {
    let s = Setup::new(
        "grace",
        "concurrency: 1, poll_ms: 50, drain_grace_seconds: 1",
    );
    let payload = s.payload("echo started; exec sleep 600");
    s.submit("grace-1", &payload);
    let store = s.serve_then_sigterm(1);
    let depth = block_on(store.depth()).unwrap();
    assert_eq!(
        depth.ready, 1,
        "the cancelled task is back on the queue: {depth:?}"
    );
    assert_eq!(block_on(store.leased_count()).unwrap(), 0);
    assert_eq!(s.marked(), 0, "the cancelled test was stopped");
    assert_eq!(s.work_dirs(), 0, "and torn down");
    // Its attempt was given back: the next delivery is attempt 1 again.
    let lease = block_on(TaskQueue::lease(&store, "probe", Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(lease.attempt, 1);
}

#[test]
fn dlq_commands_metrics_endpoint_and_backends() {
    let s = Setup::new("dlq", "concurrency: 1, poll_ms: 50");
    let payload = s.payload("true");
    let out = s.cli(&[
        "submit",
        "--runner",
        "nope",
        "--bench",
        s.path("bench.yaml").to_str().unwrap(),
        "--payload",
        payload.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "an unknown runner is refused at submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    // A task queued by something that skipped that check (an older worker,
    // another fleet's submitter) still goes to the DLQ with the reason.
    let task: orchestrator_worker::task::Task = serde_json::from_value(serde_json::json!({
        "execution_key": "dlq-1",
        "runner": "nope",
        "payload": {"name": "p", "command": ["true"]},
    }))
    .unwrap();
    block_on(TaskQueue::submit(
        &s.store(),
        &task,
        &orchestrator_worker::report::new_execution(&task),
    ))
    .unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut serve = Command::new(BIN)
        .args(["serve", "--config", s.path("worker.yaml").to_str().unwrap()])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let store = s.store();
    assert!(wait_for(Duration::from_secs(30), || block_on(
        store.depth()
    )
    .unwrap()
    .dead
        == 1));
    let mut metrics = String::new();
    assert!(wait_for(Duration::from_secs(10), || {
        use std::io::{Read, Write};
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = conn
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        metrics.clear();
        conn.read_to_string(&mut metrics).is_ok() && metrics.contains("200 OK")
    }));
    sigterm(&serve);
    assert!(wait_exit(&mut serve, Duration::from_secs(30)).success());
    assert!(
        metrics
            .contains(r#"orchestrator_executions_total{backend="nope",outcome="dead_letter"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("orchestrator_queue_depth"), "{metrics}");

    let list = s.cli(&["dlq", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(listed.contains("unknown runner type `nope`"), "{listed}");
    let id = listed.split('\t').next().unwrap().trim().to_owned();
    let show = s.cli(&["dlq", "show", &id]);
    let entry: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(entry["history"].as_array().unwrap().len(), 1);
    assert!(
        entry["body"]
            .as_str()
            .unwrap()
            .contains("\"runner\":\"nope\"")
    );
    let replay = s.cli(&["dlq", "replay", &id]);
    assert!(replay.status.success());
    assert_eq!(block_on(store.depth()).unwrap().ready, 1);
    assert!(
        String::from_utf8_lossy(&s.cli(&["dlq", "list"]).stdout)
            .trim()
            .is_empty()
    );
    let missing = s.cli(&["dlq", "show", "999"]);
    assert_eq!(missing.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter with id 999"));

    let backends = Command::new(BIN).arg("backends").output().unwrap();
    let text = String::from_utf8_lossy(&backends.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("local "))
            && text.lines().any(|l| l.starts_with("local_mock ")),
        "{text}"
    );
    assert!(
        !text.contains("Capabilities {"),
        "a table, not debug output: {text}"
    );
}

#[test]
fn run_exit_codes_follow_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runner.yaml");
    std::fs::write(
        &config,
        format!(
            "type: local\nartifacts_dir: {}\nbackend: {{root: {}}}\n",
            dir.path().join("artifacts").display(),
            dir.path().join("work").display()
        ),
    )
    .unwrap();
    let bench = dir.path().join("bench.yaml");
    std::fs::write(&bench, "name: here\n").unwrap();
    let run_file = |payload: &Path, with_config: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--bench", bench.to_str().unwrap(), "--payload"])
            .arg(payload);
        if with_config {
            cmd.args(["--config", config.to_str().unwrap()]);
        }
        cmd.output().unwrap()
    };
    let run = |yaml: &str| {
        let payload = dir.path().join("payload.yaml");
        std::fs::write(&payload, yaml).unwrap();
        run_file(&payload, true)
    };
    assert_eq!(
        run("command: [sh, -c, \"exit 0\"]\n").status.code(),
        Some(0)
    );
    assert_eq!(
        run("command: [sh, -c, \"exit 3\"]\n").status.code(),
        Some(1)
    );
    let out = run("command: [no-such-program-xyz]\n");
    assert_eq!(
        out.status.code(),
        Some(4),
        "the test's own input is at fault (invalid_spec)"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no-such-program-xyz"));
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::write(&bad_yaml, "command: [unclosed\n").unwrap();
    let out = run_file(&bad_yaml, false);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml"));
}

#[test]
fn a_run_killed_by_sigkill_is_found_and_torn_down_by_reap() {
    let s = Setup::new("killed-run", "concurrency: 1");
    let payload = s.payload("echo started; exec sleep 30");
    std::fs::write(
        s.path("runner.yaml"),
        format!(
            "type: local\nartifacts_dir: {}\nbackend: {{root: {}, kill_grace_ms: 200}}\n",
            s.path("artifacts").display(),
            s.path("work").display()
        ),
    )
    .unwrap();
    let mut run = Command::new(BIN)
        .args(["run", "--bench"])
        .arg(s.path("bench.yaml"))
        .arg("--payload")
        .arg(&payload)
        .arg("--config")
        .arg(s.path("runner.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || s.marked() == 1),
        "the test never started"
    );
    run.kill().unwrap(); // SIGKILL: no teardown.
    run.wait().unwrap();
    assert_eq!(s.work_dirs(), 1, "the killed run left its environment");
    assert_eq!(s.marked(), 1, "and its test");
    let store = s.path("orchestrator-runs.sqlite3");
    assert!(store.exists(), "run journals beside its artifacts dir");
    // Its heartbeat stops with it; after stale_after the reaper takes it.
    std::thread::sleep(Duration::from_millis(1_200));
    let reap = Command::new(BIN)
        .args(["reap", "--stale-after", "1", "--store"])
        .arg(&store)
        .arg("--runner-config")
        .arg(s.path("runner.yaml"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&reap.stdout);
    assert!(
        reap.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&reap.stderr)
    );
    assert!(report.contains("\"torn_down\": [\n    \""), "{report}");
    assert_eq!(s.work_dirs(), 0, "torn down: {report}");
    assert!(
        wait_for(Duration::from_secs(5), || s.marked() == 0),
        "the run's test was killed"
    );
}

/// A runner config with `timeout_seconds`, for the local root of `s`.
fn runner_with_timeout(s: &Setup, seconds: u64) -> PathBuf {
    let path = s.path("runner.yaml");
    std::fs::write(
        &path,
        format!(
            "type: local\ntimeout_seconds: {seconds}\nartifacts_dir: {}\nbackend: {{root: {}, kill_grace_ms: 200}}\n",
            s.path("artifacts").display(),
            s.path("work").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_run_past_the_runners_timeout_is_a_timed_out_test() {
    let s = Setup::new("runner-timeout", "concurrency: 1");
    let config = runner_with_timeout(&s, 2);
    let payload = s.payload("echo before the limit; exec sleep 30");
    let out = Command::new(BIN)
        .args(["run", "--bench"])
        .arg(s.path("bench.yaml"))
        .arg("--payload")
        .arg(&payload)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a test result, not infrastructure: {stdout}"
    );
    assert!(stdout.contains("result     timed_out"), "{stdout}");
    assert!(stdout.contains("the runner's run limit"), "{stdout}");
    assert!(
        stdout.contains("before the limit"),
        "its output is kept: {stdout}"
    );
    assert!(!stdout.contains("run_test failed"), "{stdout}");
    assert!(stdout.contains("teardown   ok"), "{stdout}");
    assert_eq!(s.marked(), 0);
    assert_eq!(s.work_dirs(), 0);
}

#[test]
fn sigterm_to_run_cancels_and_tears_down() {
    let s = Setup::new("run-sigterm", "concurrency: 1");
    let config = runner_with_timeout(&s, 600);
    let payload = s.payload("echo started; exec sleep 60");
    let mut run = Command::new(BIN)
        .args(["run", "--bench"])
        .arg(s.path("bench.yaml"))
        .arg("--payload")
        .arg(&payload)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || s.marked() == 1),
        "the test never started"
    );
    sigterm(&run);
    let status = wait_exit(&mut run, Duration::from_secs(30));
    let mut stdout = String::new();
    std::io::Read::read_to_string(run.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(3), "cancelled: {stdout}");
    assert!(stdout.contains("teardown   ok"), "{stdout}");
    assert_eq!(s.work_dirs(), 0, "torn down");
    assert!(wait_for(Duration::from_secs(5), || s.marked() == 0));
}

#[test]
fn a_drain_with_a_slow_teardown_ends_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.yaml");
    // The run hangs and teardown takes ten minutes: the drain must still
    // end after drain_grace_seconds + drain_cleanup_seconds.
    std::fs::write(
        &config,
        "queue: {path: q.sqlite3}\nworker: {concurrency: 1, poll_ms: 50, drain_grace_seconds: 1, drain_cleanup_seconds: 2}\n\
         runners:\n  - {type: local_mock, backend: {artifacts: memory, faults: [{phase: run_test, fault: {kind: hang}}, {phase: teardown, fault: {kind: delay, ms: 600000}}]}}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("bench.yaml"), "name: b\n").unwrap();
    std::fs::write(dir.path().join("payload.yaml"), "command: [mock]\n").unwrap();
    let submit = Command::new(BIN)
        .args(["submit", "--runner", "local_mock", "--bench"])
        .arg(dir.path().join("bench.yaml"))
        .arg("--payload")
        .arg(dir.path().join("payload.yaml"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(submit.status.success());
    let mut serve = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let store = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || block_on(store.leased_count())
            .unwrap()
            == 1),
        "the task never started"
    );
    sigterm(&serve);
    // grace 1 s + cleanup 2 s, and some start-up slack; the teardown alone
    // would take ten minutes.
    let status = wait_exit(&mut serve, Duration::from_secs(20));
    assert!(status.success(), "{status}");
}
