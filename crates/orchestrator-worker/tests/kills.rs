//! Crash recovery that recovers: 300 mock and 200 local tasks under
//! `serve`, the worker SIGKILLed 50 times at random moments and started
//! again. No task is dead-lettered because of the kills alone (the
//! delivery cap, `worker.max_deliveries`, is set above the kills a task can
//! meet), every execution passes once, nothing is left behind.

#![cfg(all(feature = "mock", feature = "local"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_worker::Task;
use orchestrator_worker::backends::Backends;
use orchestrator_worker::store::{ExecState, HistoryFilter, SqliteStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");
const KILLS: usize = 50;
const MOCK: usize = 300;
const LOCAL: usize = 200;

fn serve(dir: &std::path::Path, n: usize) -> Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.join("worker.yaml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("serve{n}.log"))).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn fifty_sigkills_dead_letter_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("worker.yaml"),
        format!(
            "queue: {{path: q.sqlite3}}\n\
             worker: {{concurrency: 8, visibility_seconds: 2, stale_after_seconds: 2, poll_ms: 50, backoff_base_ms: 50, backoff_max_ms: 200, max_deliveries: {}, reap_interval_seconds: 0}}\n\
             runners:\n  - {{type: local_mock, retries: 2, backend: {{artifacts: memory}}}}\n  - {{type: local, retries: 2, artifacts_dir: art, backend: {{root: '{}', kill_grace_ms: 100}}}}\n",
            KILLS + 10,
            root.join("work").display()
        ),
    )
    .unwrap();
    let store = SqliteStore::open(&root.join("q.sqlite3")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..MOCK {
        tasks.push(Task::new(
            format!("mock-{i:03}"),
            "local_mock",
            Default::default(),
            runner_core::TestPayload::new(["mock"])
                .with_backend(serde_json::json!({"duration_ms": 40})),
        ));
    }
    for i in 0..LOCAL {
        tasks.push(Task::new(
            format!("local-{i:03}"),
            "local",
            Default::default(),
            runner_core::TestPayload::new(["sh", "-c", "sleep 0.1"]),
        ));
    }
    let backends = Backends {
        queue: Arc::new(store.clone()),
        store: Arc::new(store.clone()),
    };
    runtime
        .block_on(orchestrator_worker::submit::submit_batch(&backends, &tasks))
        .unwrap();

    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for n in 0..KILLS {
        let mut worker = serve(root, n);
        std::thread::sleep(Duration::from_millis(150 + next() % 900));
        worker.kill().unwrap(); // SIGKILL: no drain, no teardown, no settle.
        worker.wait().unwrap();
    }
    let settled_before = runtime
        .block_on(store.executions(&HistoryFilter {
            state: Some(ExecState::Passed),
            limit: MOCK + LOCAL,
            ..Default::default()
        }))
        .unwrap()
        .len();
    let mut last = serve(root, KILLS);
    let started = Instant::now();
    loop {
        let depth = runtime
            .block_on(orchestrator_worker::queue::TaskQueue::depth(&store))
            .unwrap();
        if depth.done + depth.dead == (MOCK + LOCAL) as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not settled after the kills: {depth:?}; logs in {}",
            dir.keep().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stop it once it serves (registered), so SIGTERM meets its handler.
    let started = Instant::now();
    while !runtime
        .block_on(store.workers(Duration::from_secs(60)))
        .unwrap()
        .iter()
        .any(|w| w.beat.pid == last.id())
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the last worker never registered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(last.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = last.wait().unwrap();
    let log = std::fs::read_to_string(root.join(format!("serve{KILLS}.log"))).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    assert!(status.success(), "{status}: {tail:#?}");

    let dead = runtime
        .block_on(orchestrator_worker::queue::TaskQueue::dlq_list(&store, 100))
        .unwrap();
    assert!(
        dead.is_empty(),
        "dead-lettered by the kills: {:#?}",
        dead.iter().map(|d| &d.reason).collect::<Vec<_>>()
    );
    let records = runtime
        .block_on(store.executions(&HistoryFilter {
            limit: MOCK + LOCAL + 1,
            ..Default::default()
        }))
        .unwrap();
    assert_eq!(records.len(), MOCK + LOCAL);
    let not_passed: Vec<_> = records
        .iter()
        .filter(|r| r.state != ExecState::Passed)
        .map(|r| (&r.new.key, r.state, &r.error))
        .collect();
    assert!(not_passed.is_empty(), "{not_passed:#?}");
    let open = runtime
        .block_on(store.journal_open_entries(Duration::from_secs(2)))
        .unwrap();
    assert!(open.is_empty(), "no handle left open: {open:#?}");
    let left = std::fs::read_dir(root.join("work"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "no working directory left");
    eprintln!(
        "{KILLS} SIGKILLs: {settled_before} of {} passed before the last start, all passed after",
        MOCK + LOCAL
    );
}
