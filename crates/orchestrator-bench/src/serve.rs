//! `serve`: real `orchestrator serve` processes draining zero-latency mock
//! tasks put on the queue beforehand in one transaction; the clock runs
//! from starting the process until the last task settled. On the embedded
//! SQLite file (three runs, their range) and on PostgreSQL (one worker process); beside them the queue alone (submit
//! is not timed: lease and ack per task, 32 consumers, in process) and the
//! worker's resident memory after 10,000 and after 100,000 tasks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_worker::Task;
use orchestrator_worker::backends::Backends;
use orchestrator_worker::queue::{SqliteStore, TaskQueue};
use runner_core::BenchSpec;

/// Tasks per timed run (`BENCH_SERVE_TASKS` overrides, for a quick look).
fn tasks_per_run() -> usize {
    std::env::var("BENCH_SERVE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

/// The `orchestrator` binary built beside this one.
fn orchestrator() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me.with_file_name("orchestrator");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: build it with the same profile (cargo xtask bench does)",
            bin.display()
        ))
    }
}

fn tasks(prefix: &str, n: usize) -> Vec<Task> {
    (0..n)
        .map(|i| {
            Task::new(
                format!("{prefix}-{i}"),
                "local_mock",
                BenchSpec::default(),
                super::mock_payload(0),
            )
        })
        .collect()
}

fn write_config(dir: &Path, queue: &str) -> Result<PathBuf, String> {
    let path = dir.join("worker.yaml");
    std::fs::write(
        &path,
        format!(
            "{queue}worker: {{concurrency: 32, poll_ms: 20, reap_interval_seconds: 0}}\n\
             runners: [{{type: local_mock, retries: 0, artifacts_dir: '{}', backend: {{artifacts: memory, log_lines: 0}}}}]\n",
            dir.join("art").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(path)
}

fn spawn_serve(config: &Path, dir: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join("serve.log")).map_err(|e| e.to_string())?;
    Command::new(orchestrator()?)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start serve: {e}"))
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Wait until `settled` of the queued tasks are done; the time since
/// `started`, and the serve process's RSS at each of `marks` settled tasks.
async fn drain(
    backends: &Backends,
    child: &mut Child,
    total: u64,
    marks: &[u64],
    started: Instant,
) -> Result<(f64, Vec<f64>), String> {
    let mut rss = Vec::new();
    loop {
        let depth = backends.queue.depth().await.map_err(|e| e.to_string())?;
        let settled = depth.done + depth.dead;
        while rss.len() < marks.len() && settled >= marks[rss.len()] {
            rss.push(rss_mib(child.id()));
        }
        if settled >= total {
            return Ok((started.elapsed().as_secs_f64(), rss));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("serve exited early ({status})"));
        }
        if started.elapsed() > Duration::from_secs(900) {
            return Err(format!("not drained in 15 minutes: {depth:?}"));
        }
        // Every 10 ms: the count is a query on the serving worker's file,
        // and at 2 ms it took a noticeable share of the two cores from the
        // worker it measures (the clock is ±10 ms on runs of ~0.7 s).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

async fn sqlite_run(n: usize, marks: &[u64]) -> Result<(f64, Vec<f64>), String> {
    let dir = std::env::temp_dir().join(format!(
        "orchestrator-bench-serve-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("q.sqlite3");
    let store = SqliteStore::open(&path).map_err(|e| e.to_string())?;
    let backends = Backends {
        queue: Arc::new(store.clone()),
        store: Arc::new(store),
    };
    orchestrator_worker::submit::submit_batch(&backends, &tasks("s", n))
        .await
        .map_err(|e| e.to_string())?;
    let config = write_config(&dir, &format!("queue: {{path: '{}'}}\n", path.display()))?;
    let started = Instant::now();
    let mut child = spawn_serve(&config, &dir)?;
    let drained = drain(&backends, &mut child, n as u64, marks, started).await;
    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
    drained
}

async fn postgres_run(n: usize) -> Result<f64, String> {
    use orchestrator_worker::config::PostgresSection;
    use orchestrator_worker::store::PgStore;
    let server = test_emulators::postgres::Postgres::start()?;
    let url = server.fresh_database()?;
    let pg = PgStore::connect(&PostgresSection::with_url(&url))
        .await
        .map_err(|e| e.to_string())?;
    let backends = Backends {
        queue: Arc::new(pg.clone()),
        store: Arc::new(pg),
    };
    orchestrator_worker::submit::submit_batch(&backends, &tasks("p", n))
        .await
        .map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!(
        "orchestrator-bench-serve-pg-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = write_config(&dir, &format!("queue: {{postgres: {{url: '{url}'}}}}\n"))?;
    let started = Instant::now();
    let mut child = spawn_serve(&config, &dir)?;
    let drained = drain(&backends, &mut child, n as u64, &[], started).await;
    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
    drained.map(|(wall, _)| wall)
}

/// The queue alone: lease and ack of `n` queued tasks, 32 consumers.
async fn queue_only(n: usize) -> Result<f64, String> {
    let dir =
        std::env::temp_dir().join(format!("orchestrator-bench-serveq-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let store = SqliteStore::open(&dir.join("q.sqlite3")).map_err(|e| e.to_string())?;
    let backends = Backends {
        queue: Arc::new(store.clone()),
        store: Arc::new(store.clone()),
    };
    orchestrator_worker::submit::submit_batch(&backends, &tasks("q", n))
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
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
    let wall = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(n as f64 / wall)
}

/// `orchestrator submit --batch` of `n` tasks (JSON lines, bench and
/// payload inline) into a fresh SQLite queue: the wall time of the whole
/// process, beside the same tasks through `submit_batch` in this process
/// and the process start alone (`orchestrator --version`).
async fn batch_submit(n: usize) -> Result<(f64, f64, f64), String> {
    let dir = std::env::temp_dir().join(format!("orchestrator-bench-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("q.sqlite3");
    let config = write_config(&dir, &format!("queue: {{path: '{}'}}\n", path.display()))?;
    let mut lines = String::new();
    for task in tasks("b", n) {
        let line = serde_json::json!({
            "runner": task.runner,
            "bench": task.bench,
            "payload": task.payload,
            "key": task.execution_key,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    let batch = dir.join("batch.jsonl");
    std::fs::write(&batch, lines).map_err(|e| e.to_string())?;
    // The queue file exists before the clock starts, as on a fleet.
    SqliteStore::open(&path).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let status = Command::new(orchestrator()?)
        .args(["submit", "--config"])
        .arg(&config)
        .arg("--batch")
        .arg(&batch)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run submit: {e}"))?;
    let cli = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("submit --batch failed ({status})"));
    }
    let started = Instant::now();
    let status = Command::new(orchestrator()?)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run orchestrator: {e}"))?;
    let start_only = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("orchestrator --version failed ({status})"));
    }
    let store = SqliteStore::open(&dir.join("q2.sqlite3")).map_err(|e| e.to_string())?;
    let backends = Backends {
        queue: Arc::new(store.clone()),
        store: Arc::new(store),
    };
    let started = Instant::now();
    orchestrator_worker::submit::submit_batch(&backends, &tasks("b", n))
        .await
        .map_err(|e| e.to_string())?;
    let in_process = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((cli, in_process, start_only))
}

pub async fn serve() -> Result<(), String> {
    let n = tasks_per_run();
    let (cli, in_process, start_only) = batch_submit(n).await?;
    println!(
        "submit-batch {n} tasks by `orchestrator submit --batch` in {cli:.3} s | the same through submit_batch in process {in_process:.3} s, process start alone {start_only:.3} s"
    );
    let mut rates = Vec::new();
    for _ in 0..3 {
        let (wall, _) = sqlite_run(n, &[]).await?;
        rates.push(n as f64 / wall);
    }
    rates.sort_by(f64::total_cmp);
    let queue = queue_only(n).await?;
    println!(
        "serve        {:>6.0}..{:>6.0} lifecycles/s (SQLite, {n} mock tasks, concurrency 32, 3 runs) | queue alone (lease+ack) {:>6.0}/s  ratio {:.2}x",
        rates[0],
        rates[2],
        queue,
        queue / rates[1]
    );
    let wall = postgres_run(n).await?;
    println!(
        "serve-pg     {:>6.0} lifecycles/s (PostgreSQL, one serve process, {n} mock tasks, concurrency 32)",
        n as f64 / wall
    );
    let long = (n * 100 / 3).max(1_000);
    let marks = [long as u64 / 10, long as u64 / 2, long as u64];
    let (_, rss) = sqlite_run(long, &marks).await?;
    if let [first, middle, last] = rss[..] {
        println!(
            "serve-rss    {first:>6.1} MiB after {} tasks, {middle:.1} MiB after {}, {last:.1} MiB after {} ({:+.1} % from the first to the last)",
            marks[0],
            marks[1],
            marks[2],
            (last - first) / first.max(0.001) * 100.0
        );
    }
    Ok(())
}
