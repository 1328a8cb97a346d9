//! The fleet-store figure: zero-latency mock
//! lifecycles through three workers sharing one PostgreSQL database,
//! beside one worker on the embedded SQLite file, and a bare-statements
//! baseline (submit, lease, ack as three plain statements per task) on the
//! same PostgreSQL server, all in one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_worker::backends::Backends;
use orchestrator_worker::config::{PostgresSection, WorkerConfig};
use orchestrator_worker::serve::Worker;
use orchestrator_worker::store::{PgStore, SqliteStore};
use orchestrator_worker::{Metrics, RunnerFactory, Task};
use runner_core::{BenchSpec, CancellationToken};

const TASKS: usize = 3_000;

fn tasks() -> Vec<Task> {
    (0..TASKS)
        .map(|i| {
            Task::new(
                format!("pg-{i}"),
                "local_mock",
                BenchSpec::default(),
                super::mock_payload(0),
            )
        })
        .collect()
}

fn config(queue: &str) -> Result<WorkerConfig, String> {
    WorkerConfig::from_yaml_str(&format!(
        "{queue}worker: {{concurrency: 32, poll_ms: 20, reap_interval_seconds: 0}}\n\
         runners: [{{type: local_mock, retries: 0, backend: {{artifacts: memory, log_lines: 0}}}}]\n"
    ))
    .map_err(|e| e.to_string())
}

/// Serve `workers` until every task settled; the seconds it took.
async fn drain(workers: Vec<Worker>, backends: &Backends) -> Result<f64, String> {
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut serving = Vec::new();
    for w in workers {
        let stop = stop.clone();
        serving.push(tokio::spawn(async move { w.serve(stop).await }));
    }
    loop {
        let depth = backends.queue.depth().await.map_err(|e| e.to_string())?;
        if depth.done + depth.dead >= TASKS as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("not drained in 10 minutes: {depth:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    stop.cancel();
    for s in serving {
        let _ = s.await;
    }
    Ok(wall)
}

pub async fn pg_queue() -> Result<(), String> {
    let server = test_emulators::postgres::Postgres::start()?;
    let factory = RunnerFactory::with_builtins(Metrics::new());

    // Three workers, one database.
    let url = server.fresh_database()?;
    let section = PostgresSection::with_url(&url);
    let mut workers = Vec::new();
    let mut first = None;
    for _ in 0..3 {
        let pg = PgStore::connect(&section)
            .await
            .map_err(|e| e.to_string())?;
        let backends = Backends {
            queue: Arc::new(pg.clone()),
            store: Arc::new(pg),
        };
        first.get_or_insert_with(|| backends.clone());
        workers.push(Worker::with_backends(
            config(&format!("queue: {{postgres: {{url: '{url}'}}}}\n"))?,
            &factory,
            backends,
        )?);
    }
    let backends = first.ok_or("no worker")?;
    orchestrator_worker::submit::submit_batch(&backends, &tasks())
        .await
        .map_err(|e| e.to_string())?;
    let pg_wall = drain(workers, &backends).await?;

    // One worker on the embedded SQLite file.
    let dir = std::env::temp_dir().join(format!("orchestrator-bench-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("q.sqlite3");
    let lite = SqliteStore::open(&path).map_err(|e| e.to_string())?;
    let lite_backends = Backends {
        queue: Arc::new(lite.clone()),
        store: Arc::new(lite),
    };
    orchestrator_worker::submit::submit_batch(&lite_backends, &tasks())
        .await
        .map_err(|e| e.to_string())?;
    let worker = Worker::with_backends(
        config(&format!("queue: {{path: '{}'}}\n", path.display()))?,
        &factory,
        lite_backends.clone(),
    )?;
    let lite_wall = drain(vec![worker], &lite_backends).await?;
    let _ = std::fs::remove_dir_all(&dir);

    // Bare statements on the same server: insert, lease (update), ack
    // (update) per task, 32 tasks at a time on 3 connections.
    let base_url = server.fresh_database()?;
    let (client, connection) = tokio_postgres::connect(&base_url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, body TEXT, state TEXT)")
        .await
        .map_err(|e| e.to_string())?;
    let body = tasks()[0].to_json();
    let started = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..3 {
        let url = base_url.clone();
        let body = body.clone();
        lanes.spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            for _ in (lane..TASKS).step_by(3) {
                let id: i64 = c
                    .query_one(
                        "INSERT INTO t (body, state) VALUES ($1, 'ready') RETURNING id",
                        &[&body],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                c.execute("UPDATE t SET state = 'leased' WHERE id = $1", &[&id])
                    .await
                    .map_err(|e| e.to_string())?;
                c.execute("UPDATE t SET state = 'done' WHERE id = $1", &[&id])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = lanes.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let base = started.elapsed().as_secs_f64();
    let rate = |wall: f64| TASKS as f64 / wall;
    println!(
        "pg-queue     {:>10.0} lifecycles/s (3 workers, PostgreSQL) | 1 worker, SQLite {:>8.0}/s | baseline bare statements on the same server {:>8.0}/s  ratio {:.1}x slower",
        rate(pg_wall),
        rate(lite_wall),
        rate(base),
        pg_wall / base
    );
    Ok(())
}
