//! Benchmarks behind `cargo xtask bench`: each figure beside a baseline
//! measured in the same process, and the ratio. Nothing here asserts a time.
//!
//! `orchestrator-bench NAME` runs one figure (engine, queue, serve, local,
//! logs, artifacts, warmpool, pg-queue).

mod cloud;
mod pg;
mod serve;

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_worker::config::WorkerConfig;
use orchestrator_worker::engine::{EngineSettings, Execution};
use orchestrator_worker::queue::{SqliteStore, TaskQueue};
use orchestrator_worker::serve::Worker;
use orchestrator_worker::{Engine, Metrics, RunnerFactory, Task};
use runner_core::{
    BenchSpec, CancellationToken, LogSink, RunContext, RunnerAdapter, RunnerConfig, TestPayload,
};

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of this process and of its waited-for children, from
/// `/proc/self/stat` (clock ticks, assumed 100 per second).
fn cpu_split() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14-17 (11-14 after the name).
    let tick = |i: usize| f.get(i).copied().unwrap_or(0.0) / 100.0;
    (tick(11) + tick(12), tick(13) + tick(14))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn mock_engine() -> Result<Arc<Engine>, String> {
    let config = RunnerConfig::from_yaml_str(
        "type: local_mock\nretries: 0\nbackend: {artifacts: memory, log_lines: 0}\n",
    )
    .map_err(|e| e.to_string())?;
    let phase_metrics = Metrics::new();
    let adapter = RunnerFactory::with_builtins(phase_metrics.clone())
        .create(&config)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(Engine::new(adapter, EngineSettings::default())))
}

fn mock_payload(duration_ms: u64) -> TestPayload {
    TestPayload::new(["mock"])
        .with_name("bench")
        .with_backend(serde_json::json!({"duration_ms": duration_ms, "log_lines": 0}))
}

/// One lifecycle of execution `key` on the set, returning its latency.
fn spawn_lifecycle(
    set: &mut tokio::task::JoinSet<Duration>,
    engine: &Arc<Engine>,
    bench: &Arc<BenchSpec>,
    payload: &Arc<TestPayload>,
    key: String,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let (engine, bench, payload) = (Arc::clone(engine), Arc::clone(bench), Arc::clone(payload));
    set.spawn(async move {
        let t = Instant::now();
        engine
            .execute(Execution {
                ctx: RunContext::new(&key, "bench").with_execution_key(&key),
                bench: &bench,
                payload: &payload,
                observer: None,
                hurry: None,
                journal_clear: false,
                journal_end_by_caller: false,
                lease_held_until: None,
            })
            .await;
        drop(permit);
        t.elapsed()
    });
}

/// `total` lifecycles with at most `in_flight` at once; returns wall time and latencies.
async fn lifecycles(
    engine: &Arc<Engine>,
    total: usize,
    in_flight: usize,
) -> (Duration, Vec<Duration>) {
    let bench = Arc::new(BenchSpec::default());
    let payload = Arc::new(mock_payload(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..total {
        let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
            break;
        };
        spawn_lifecycle(
            &mut set,
            engine,
            &bench,
            &payload,
            format!("b{i}"),
            Some(permit),
        );
    }
    let mut lat = Vec::with_capacity(total);
    while let Some(r) = set.join_next().await {
        if let Ok(d) = r {
            lat.push(d);
        }
    }
    let wall = started.elapsed();
    lat.sort();
    (wall, lat)
}

async fn spawn_baseline(total: usize, in_flight: usize) -> Duration {
    let gate = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..total {
        let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
            break;
        };
        set.spawn(async move {
            tokio::task::yield_now().await;
            drop(permit);
        });
    }
    while set.join_next().await.is_some() {}
    started.elapsed()
}

async fn engine() -> Result<(), String> {
    const TOTAL: usize = 10_000;
    let engine = mock_engine()?;
    lifecycles(&engine, 1_000, 64).await; // warm-up
    for in_flight in [1usize, 256, 10_000] {
        let base = spawn_baseline(TOTAL, in_flight).await;
        let (wall, lat) = lifecycles(&engine, TOTAL, in_flight).await;
        let rate = TOTAL as f64 / wall.as_secs_f64();
        let base_rate = TOTAL as f64 / base.as_secs_f64();
        println!(
            "engine/{in_flight:<6} {rate:>10.0} lifecycles/s  p50 {:>8.1?}  p99 {:>8.1?}  | baseline spawn+join {base_rate:>10.0}/s  ratio {:.1}x slower",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            base_rate / rate
        );
    }
    // Memory per parked lifecycle: 10,000 executions all inside run_test at once.
    let before = rss_kib("VmRSS:");
    let bench = Arc::new(BenchSpec::default());
    let payload = Arc::new(mock_payload(3_000));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..10_000 {
        spawn_lifecycle(&mut set, &engine, &bench, &payload, format!("m{i}"), None);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let parked = rss_kib("VmRSS:");
    while set.join_next().await.is_some() {}
    println!(
        "engine/rss   {:.1} KiB per in-flight lifecycle at 10,000 (RSS {before} → {parked} KiB)",
        parked.saturating_sub(before) as f64 / 10_000.0
    );
    Ok(())
}

async fn queue() -> Result<(), String> {
    const TASKS: usize = 5_000;
    let dir = std::env::temp_dir().join(format!("orchestrator-bench-queue-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let store = SqliteStore::open(&dir.join("q.sqlite3")).map_err(|e| e.to_string())?;
    let task = Task::new("k", "local_mock", BenchSpec::default(), mock_payload(0));
    let started = Instant::now();
    for i in 0..TASKS {
        let mut t = task.clone();
        t.execution_key = format!("k{i}");
        let new = orchestrator_worker::report::new_execution(&t);
        store.submit(&t, &new).await.map_err(|e| e.to_string())?;
    }
    let mut consumers = tokio::task::JoinSet::new();
    for c in 0..32 {
        let store = store.clone();
        consumers.spawn(async move {
            let worker = format!("c{c}");
            while let Ok(Some(lease)) = store.lease(&worker, Duration::from_secs(60)).await {
                let _ = store.ack(&lease, "{}").await;
            }
        });
    }
    while consumers.join_next().await.is_some() {}
    let wall = started.elapsed();

    // Baseline: the same three statements per task on a bare connection, one thread.
    let raw = rusqlite::Connection::open(dir.join("raw.sqlite3")).map_err(|e| e.to_string())?;
    raw.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| e.to_string())?;
    raw.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| e.to_string())?;
    raw.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT, state TEXT)")
        .map_err(|e| e.to_string())?;
    let body = task.to_json();
    let base_started = Instant::now();
    for _ in 0..TASKS {
        raw.execute("INSERT INTO t (body, state) VALUES (?1, 'ready')", [&body])
            .map_err(|e| e.to_string())?;
    }
    for id in 1..=TASKS as i64 {
        raw.execute("UPDATE t SET state = 'leased' WHERE id = ?1", [id])
            .map_err(|e| e.to_string())?;
        raw.execute("UPDATE t SET state = 'done' WHERE id = ?1", [id])
            .map_err(|e| e.to_string())?;
    }
    let base = base_started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "queue        {:>10.0} tasks/s (submit+lease+ack, 32 consumers)  | baseline bare SQLite statements {:>10.0}/s  ratio {:.1}x slower",
        TASKS as f64 / wall.as_secs_f64(),
        TASKS as f64 / base.as_secs_f64(),
        wall.as_secs_f64() / base.as_secs_f64()
    );
    Ok(())
}

async fn local() -> Result<(), String> {
    local_on(&std::env::temp_dir(), "disk").await?;
    // The same on tmpfs: the runner's cost is mostly file-system metadata
    // (work dir, handle and group records, log files, artifact copies).
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        local_on(shm, "tmpfs").await?;
    }
    Ok(())
}

async fn local_on(base_dir: &std::path::Path, label: &str) -> Result<(), String> {
    const JOBS: usize = 500;
    let dir = base_dir.join(format!("orchestrator-bench-local-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let yaml = format!(
        "queue: {{path: {}}}\nworker: {{concurrency: 2, poll_ms: 2}}\nrunners:\n  - {{type: local, artifacts_dir: {}, backend: {{root: {}}}}}\n",
        dir.join("q.sqlite3").display(),
        dir.join("artifacts").display(),
        dir.join("work").display()
    );
    let config = WorkerConfig::from_yaml_str(&yaml).map_err(|e| e.to_string())?;
    let worker = Worker::new(config, &RunnerFactory::with_builtins(Metrics::new()))?;
    let payload = TestPayload::new(["true"]);
    for i in 0..JOBS {
        let task = Task::new(
            format!("j{i}"),
            "local",
            BenchSpec::default(),
            payload.clone(),
        );
        let new = orchestrator_worker::report::new_execution(&task);
        worker
            .queue()
            .submit(&task, &new)
            .await
            .map_err(|e| e.to_string())?;
    }
    let stop = CancellationToken::new();
    let cpu_before = cpu_split();
    let started = Instant::now();
    let serving = {
        let (w, stop) = (worker.clone(), stop.clone());
        tokio::spawn(async move { w.serve(stop).await })
    };
    loop {
        let depth = worker.queue().depth().await.map_err(|e| e.to_string())?;
        if depth.done + depth.dead >= JOBS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = started.elapsed();
    let cpu_after = cpu_split();
    stop.cancel();
    let _ = serving.await;
    // The same jobs through the engine alone (no queue, no journal), to
    // split the cost between the runner and the durable bookkeeping.
    let phase_metrics = Metrics::new();
    let adapter = RunnerFactory::with_builtins(phase_metrics.clone())
        .create(
            &RunnerConfig::from_yaml_str(&format!(
                "type: local\nartifacts_dir: {}\nbackend: {{root: {}}}\n",
                dir.join("artifacts2").display(),
                dir.join("work2").display()
            ))
            .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
    let engine = Arc::new(Engine::new(adapter, EngineSettings::default()));
    let engine_started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(2));
    let payload = Arc::new(payload);
    let bench = Arc::new(BenchSpec::default());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..JOBS {
        let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
            break;
        };
        spawn_lifecycle(
            &mut set,
            &engine,
            &bench,
            &payload,
            format!("e{i}"),
            Some(permit),
        );
    }
    while set.join_next().await.is_some() {}
    let engine_wall = engine_started.elapsed();
    let phases: Vec<String> = phase_metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("orchestrator_phase_duration_seconds_sum"))
        .map(|l| {
            let phase = l
                .split("phase=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            let secs: f64 = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            format!("{phase} {:.2} ms", secs * 1000.0 / JOBS as f64)
        })
        .collect();

    let base_cpu_before = cpu_split();
    let base_started = Instant::now();
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("seq {JOBS} | xargs -P2 -I{{}} true")])
        .status()
        .map_err(|e| e.to_string())?;
    let base = base_started.elapsed();
    let base_cpu = cpu_split().1 - base_cpu_before.1;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "local/{label:<6} {JOBS} jobs of `true` through the worker (concurrency 2) in {wall:.2?}  | baseline xargs -P2 {base:.2?} ({status})  ratio {:.2}x",
        wall.as_secs_f64() / base.as_secs_f64()
    );
    println!(
        "local/{label:<6} CPU per job through the worker: worker {:.2} ms, test processes {:.2} ms (over {:.2?} of wall per job); xargs and its `true`s {:.2} ms",
        (cpu_after.0 - cpu_before.0) * 1000.0 / JOBS as f64,
        (cpu_after.1 - cpu_before.1) * 1000.0 / JOBS as f64,
        wall / JOBS as u32,
        base_cpu * 1000.0 / JOBS as f64
    );
    println!(
        "local/{label:<6} {JOBS} jobs through the engine alone (no queue, no journal) in {engine_wall:.2?}  ratio {:.2}x  (per job: {})",
        engine_wall.as_secs_f64() / base.as_secs_f64(),
        phases.join(", ")
    );
    Ok(())
}

async fn logs() -> Result<(), String> {
    logs_on(&std::env::temp_dir(), "disk").await?;
    // The log file is part of the path; on tmpfs the disk drops out of the figure.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        logs_on(shm, "tmpfs").await?;
    }
    Ok(())
}

async fn logs_on(base_dir: &std::path::Path, label: &str) -> Result<(), String> {
    const BYTES: u64 = 1 << 30;
    let dir = base_dir.join(format!("orchestrator-bench-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runner = runner_local::LocalProcessRunner::new(runner_local::LocalConfig {
        root: dir.join("work"),
        artifacts_dir: dir.join("artifacts"),
        ..runner_local::LocalConfig::default()
    });
    let line = "x".repeat(63);
    let script = format!("yes '{line}' | head -c {BYTES}");
    let (sink, mut rx) = LogSink::channel(1024);
    let consumer = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(batch) = rx.recv_batch().await {
            n += batch.len() as u64;
        }
        n
    });
    let ctx = RunContext::new("logs", "bench").with_log_sink(sink);
    let handle = runner
        .provision(&ctx, &BenchSpec::default())
        .await
        .map_err(|e| e.to_string())?;
    let hwm_before = rss_kib("VmHWM:");
    let started = Instant::now();
    let payload = TestPayload::new(["sh", "-c", script.as_str()]);
    runner
        .run_test(&ctx, &handle, &payload)
        .await
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    let hwm_after = rss_kib("VmHWM:");
    runner
        .teardown(&ctx, &handle)
        .await
        .map_err(|e| e.to_string())?;
    drop(ctx);
    let lines = consumer.await.unwrap_or(0);
    let base_started = Instant::now();
    std::process::Command::new("sh")
        .args(["-c", &format!("{script} | cat > /dev/null")])
        .status()
        .map_err(|e| e.to_string())?;
    let base = base_started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let mbps = |d: Duration| BYTES as f64 / 1e6 / d.as_secs_f64();
    println!(
        "logs/{label:<7} 1 GiB ({lines} lines) through the local log path (log file on {label}) at {:.0} MB/s, peak RSS {} MiB (before {} MiB)  | baseline cat > /dev/null {:.0} MB/s  ratio {:.2}x slower",
        mbps(wall),
        hwm_after / 1024,
        hwm_before / 1024,
        mbps(base),
        wall.as_secs_f64() / base.as_secs_f64()
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let name = std::env::args().nth(1).unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match name.as_str() {
            "engine" => engine().await,
            "queue" => queue().await,
            "serve" => serve::serve().await,
            "local" => local().await,
            "logs" => logs().await,
            "artifacts" => cloud::artifacts().await,
            "warmpool" => cloud::warmpool().await,
            "pg-queue" => pg::pg_queue().await,
            other => Err(format!("unknown benchmark `{other}`; known: engine, queue, serve, local, logs, artifacts, warmpool, pg-queue")),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench {name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
