//! PostgreSQL as the fleet's store, beyond the shared suite: new tasks wake
//! idle workers without polling, a lost connection is survived, bad
//! connection settings and a newer schema are refused with clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pg_common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_worker::backends::Backends;
use orchestrator_worker::config::{PostgresSection, WorkerConfig};
use orchestrator_worker::serve::Worker;
use orchestrator_worker::store::{ExecState, PgStore, Store, StoreError};
use orchestrator_worker::{Metrics, RunnerFactory, Task};
use runner_core::CancellationToken;
use test_emulators::postgres::Postgres;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

fn mock_task(key: &str, duration_ms: u64) -> Task {
    Task::new(
        key,
        "local_mock",
        Default::default(),
        runner_core::TestPayload::new(["mock"])
            .with_backend(serde_json::json!({"duration_ms": duration_ms})),
    )
}

fn worker_config(url: &str, poll_ms: u64) -> WorkerConfig {
    WorkerConfig::from_yaml_str(&format!(
        "queue: {{postgres: {{url: '{url}', connect_timeout_seconds: 2}}}}\n\
         worker: {{concurrency: 2, poll_ms: {poll_ms}, visibility_seconds: 30, backoff_base_ms: 50, backoff_max_ms: 500}}\n\
         runners: [{{type: local_mock, backend: {{artifacts: memory}}}}]\n"
    ))
    .unwrap()
}

async fn wait_settled(store: &dyn Store, key: &str, limit: Duration) -> Option<ExecState> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(r) = store.execution(key).await.ok().flatten()
            && r.state.is_settled()
        {
            return Some(r.state);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_task_wakes_an_idle_worker_without_polling() {
    let url = pg_common::fresh_url();
    // Idle polling every 30 s: only the NOTIFY can start the task sooner.
    let config = worker_config(&url, 30_000);
    let pg = PgStore::connect(config.queue.postgres.as_ref().unwrap())
        .await
        .unwrap();
    let backends = Backends {
        queue: Arc::new(pg.clone()),
        store: Arc::new(pg.clone()),
    };
    let worker = Worker::with_backends(
        config,
        &RunnerFactory::with_builtins(Metrics::new()),
        backends,
    )
    .unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (w, stop) = (worker.clone(), stop.clone());
        async move { w.serve(stop).await }
    });
    // Let the worker go idle (its first lease finds nothing).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    for i in 0..5 {
        let key = format!("wake-{i}");
        let submitted = Instant::now();
        let submitter = PgStore::connect(&PostgresSection::with_url(url.clone()))
            .await
            .unwrap();
        orchestrator_worker::submit::submit(
            &Backends {
                queue: Arc::new(submitter.clone()),
                store: Arc::new(submitter),
            },
            &mock_task(&key, 0),
        )
        .await
        .unwrap();
        let state = wait_settled(&pg, &key, Duration::from_secs(10)).await;
        assert_eq!(
            state,
            Some(ExecState::Passed),
            "{key} did not settle within 10 s of a 30 s poll"
        );
        latencies.push(submitted.elapsed());
    }
    println!("submit → settled with a 30 s idle poll: {latencies:?}");
    stop.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_survived_and_the_running_test_settles() {
    let mut server = Postgres::start().unwrap();
    server.psql("postgres", "CREATE DATABASE fleet").unwrap();
    let url = server.url("fleet");
    let config = worker_config(&url, 100);
    let pg = PgStore::connect(config.queue.postgres.as_ref().unwrap())
        .await
        .unwrap();
    let backends = Backends {
        queue: Arc::new(pg.clone()),
        store: Arc::new(pg.clone()),
    };
    let worker = Worker::with_backends(
        config,
        &RunnerFactory::with_builtins(Metrics::new()),
        backends.clone(),
    )
    .unwrap();
    orchestrator_worker::submit::submit(&backends, &mock_task("through-outage", 3_000))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (w, stop) = (worker.clone(), stop.clone());
        async move { w.serve(stop).await }
    });
    // Wait until the test runs, then take the database away for a while.
    let started = Instant::now();
    loop {
        let r = pg.execution("through-outage").await.unwrap().unwrap();
        if r.state == ExecState::Running {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never ran: {:?}",
            r.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop();
    match pg.ping().await {
        Err(StoreError::Unavailable(message)) => assert!(!message.is_empty()),
        other => panic!("a stopped server is unavailable: {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().unwrap();
    // The test kept running; its result is recorded and acked once the
    // database is back.
    let state = wait_settled(&pg, "through-outage", Duration::from_secs(30)).await;
    assert_eq!(state, Some(ExecState::Passed));
    let depth = orchestrator_worker::queue::TaskQueue::depth(&pg)
        .await
        .unwrap();
    assert_eq!((depth.done, depth.leased, depth.ready), (1, 0, 0));
    stop.cancel();
    serving.await.unwrap().unwrap();
}

fn migrate(url: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.yaml");
    std::fs::write(
        &config,
        "queue: {postgres: {connect_timeout_seconds: 2}}\nrunners: []\n",
    )
    .unwrap();
    Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&config)
        .env("ORCHESTRATOR_DATABASE_URL", url)
        .output()
        .unwrap()
}

#[test]
fn bad_connection_settings_and_a_newer_schema_are_refused_clearly() {
    let server = pg_common::server();
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();

    // Nobody listens: infrastructure (2), the address named, no password shown.
    let closed = test_emulators::free_port().unwrap();
    let out = migrate(&format!(
        "postgres://orchestrator:hunter2@127.0.0.1:{closed}/x"
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{closed}")),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));

    // Not a URL at all: bad input (4), the key named.
    let out = migrate("postgres://[::1");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("url"), "{}", stderr(&out));

    // A login the server refuses: bad input (4), said so.
    let out = migrate(&format!(
        "postgres://nobody@127.0.0.1:{}/postgres",
        server.port()
    ));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the login"),
        "{}",
        stderr(&out)
    );

    // A schema from a newer program: refused, and left as it is.
    let url = pg_common::fresh_url();
    let out = migrate(&url);
    assert!(out.status.success(), "{}", stderr(&out));
    let db = url.rsplit('/').next().unwrap();
    server
        .psql(db, "INSERT INTO schema_migrations (version) VALUES (99)")
        .unwrap();
    let out = migrate(&url);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("version 99"), "{}", stderr(&out));
    assert_eq!(
        server
            .psql(db, "SELECT MAX(version) FROM schema_migrations")
            .unwrap(),
        "99"
    );
    // A failed connection made nothing in an empty database.
    let empty = pg_common::fresh_url();
    let edb = empty.rsplit('/').next().unwrap();
    assert_eq!(
        server
            .psql(
                edb,
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'"
            )
            .unwrap(),
        "0"
    );
}

#[tokio::test]
async fn a_shared_queue_with_a_machine_local_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = WorkerConfig::from_yaml_str(&format!(
        "queue: {{path: '{}', sqs: {{url: 'http://127.0.0.1:1/000000000000/q'}}}}\nrunners: []\n",
        dir.path().join("q.sqlite3").display()
    ))
    .unwrap();
    let err = orchestrator_worker::backends::open(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("queue.postgres.url") && err.contains("single_worker"),
        "{err}"
    );
    assert!(
        !dir.path().join("q.sqlite3").exists(),
        "refused before anything was made"
    );
}
