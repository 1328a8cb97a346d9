//! Poison task bodies in the SQLite queue (bytes that are not UTF-8, text
//! that is not JSON, JSON of the wrong shape, a body over the size limit)
//! are dead-lettered with their reason on first sight by `serve`, never
//! leased again and again; and the largest accepted value of an input that
//! sizes an allocation (the mock's `log_lines`) runs.

#![cfg(all(feature = "mock", feature = "local"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator_worker::queue::{SqliteStore, TaskQueue};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn poison_bodies_are_dead_lettered_with_their_reason_on_first_sight() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.sqlite3");
    std::fs::write(
        dir.path().join("worker.yaml"),
        format!(
            "queue: {{path: '{}'}}\nworker: {{concurrency: 2, poll_ms: 50, visibility_seconds: 2, reap_interval_seconds: 0}}\nrunners: [{{type: local_mock, backend: {{artifacts: memory}}, allowed: {{env: ['TEST_*']}}}}]\n",
            db.display()
        ),
    )
    .unwrap();
    let store = SqliteStore::open(&db).unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let oversize = format!(
            "{{\"execution_key\":\"big\",\"runner\":\"local_mock\",\"payload\":{{\"name\":\"{}\"}}}}",
            "x".repeat(1_100_000)
        );
        for body in [
            rusqlite::types::Value::Blob(vec![0xff, 0xfe, 0x00, 0x41]),
            rusqlite::types::Value::Text("{not json".into()),
            rusqlite::types::Value::Text("[1, 2, 3]".into()),
            rusqlite::types::Value::Text(oversize),
            // Well-formed, but outside the runner's allow-list: the worker
            // refuses it too, whoever queued it.
            rusqlite::types::Value::Text(
                r#"{"execution_key":"sneaky","runner":"local_mock","payload":{"name":"p","env":{"LD_PRELOAD":"/x.so"}}}"#.into(),
            ),
        ] {
            conn.execute(
                "INSERT INTO tasks (body, state, visible_at, created_at, updated_at) VALUES (?1, 'ready', 0, 0, 0)",
                [body],
            )
            .unwrap();
        }
    }
    let mut serve = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("worker.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut dead = 0;
    while started.elapsed() < Duration::from_secs(30) {
        dead = block_on(store.depth()).unwrap().dead;
        if dead == 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = serve.wait();
    assert_eq!(dead, 5, "every poison body is dead-lettered");
    let letters = block_on(store.dlq_list(10)).unwrap();
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("UTF-8")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("JSON")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("limit")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("allowed.env")),
        "{reasons:?}"
    );
    for letter in &letters {
        assert_eq!(letter.history.len(), 1, "dead on first sight: {letter:?}");
    }
}

#[test]
fn the_largest_accepted_log_lines_runs() {
    let dir = tempfile::tempdir().unwrap();
    let runner = dir.path().join("runner.yaml");
    std::fs::write(&runner, "type: local_mock\nbackend: {artifacts: memory}\n").unwrap();
    std::fs::write(dir.path().join("bench.yaml"), "name: b\n").unwrap();
    let payload = dir.path().join("payload.yaml");
    std::fs::write(
        &payload,
        format!(
            "name: p\nbackend: {{log_lines: {}}}\n",
            runner_mock::MAX_LOG_LINES
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&runner)
        .args(["--bench", "bench.yaml", "--payload"])
        .arg(&payload)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One more is refused before anything runs.
    std::fs::write(
        &payload,
        format!(
            "name: p\nbackend: {{log_lines: {}}}\n",
            runner_mock::MAX_LOG_LINES + 1
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&runner)
        .args(["--bench", "bench.yaml", "--payload"])
        .arg(&payload)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("payload.backend.log_lines"));
}
