//! `orchestrator`: run one test now, or serve a queue of them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use orchestrator_worker::config::WorkerConfig;
use orchestrator_worker::engine::{EngineSettings, Execution, ExecutionOutcome};
use orchestrator_worker::reaper::{ReapOptions, reap};
use orchestrator_worker::serve::Worker;
use orchestrator_worker::telemetry::Telemetry;
use orchestrator_worker::{Engine, Metrics, RunnerFactory, Task, junit};
use runner_core::{
    ArtifactLocation, BenchSpec, CancellationToken, LogSink, LogStream, Phase, RunContext,
    RunnerConfig, TestPayload, TestStatus,
};
use tracing::Instrument;

/// Exit code: the test failed (or timed out).
const EXIT_FAILED: u8 = 1;
/// Exit code: the infrastructure failed (or the test could not be judged).
const EXIT_INFRA: u8 = 2;
/// Exit code: the run was cancelled.
const EXIT_CANCELLED: u8 = 3;
/// Exit code: bad command line, config or input file.
const EXIT_USAGE: u8 = 4;

#[derive(Parser, Debug)]
#[command(
    name = "orchestrator",
    version,
    about = "Run tests on any backend through one lifecycle"
)]
struct Cli {
    /// Log as JSON lines (to stderr). Filter with RUST_LOG.
    #[arg(long, global = true)]
    json_logs: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one bench + payload now, with live logs and a summary.
    /// Exit code: 0 passed, 1 failed, 2 infrastructure error, 3 cancelled, 4 bad input.
    Run {
        /// The bench spec (YAML).
        #[arg(long)]
        bench: PathBuf,
        /// The test payload (YAML).
        #[arg(long)]
        payload: PathBuf,
        /// A runner config (YAML); without it, RUNNER_* variables, else `type: local`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write a JUnit XML report here.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Consume the queue until SIGTERM or SIGINT, then drain.
    Serve {
        /// The worker config (YAML).
        #[arg(long)]
        config: PathBuf,
        /// Serve Prometheus metrics at this address (e.g. 127.0.0.1:9464).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Override `worker.concurrency`.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Take tasks from this SQS queue (overrides `queue.sqs.url`).
        #[arg(long, env = "ORCHESTRATOR_QUEUE_URL")]
        queue_url: Option<String>,
    },
    /// Put a task on the queue.
    Submit {
        /// The worker config (YAML) naming the queue.
        #[arg(long)]
        config: PathBuf,
        /// The runner type to execute on.
        #[arg(long)]
        runner: String,
        /// The bench spec (YAML).
        #[arg(long)]
        bench: PathBuf,
        /// The test payload (YAML).
        #[arg(long)]
        payload: PathBuf,
        /// The execution key (idempotency key); a fresh one when absent.
        #[arg(long)]
        key: Option<String>,
        /// A correlation id (a CI pipeline id...).
        #[arg(long)]
        correlation_id: Option<String>,
        /// Submit to this SQS queue (overrides `queue.sqs.url`).
        #[arg(long, env = "ORCHESTRATOR_QUEUE_URL")]
        queue_url: Option<String>,
    },
    /// Inspect or replay the dead-letter queue.
    Dlq {
        /// The worker config (YAML) naming the queue (before or after the action).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The SQS queue whose dead-letter queue to use (overrides `queue.sqs.url`).
        #[arg(long, global = true, env = "ORCHESTRATOR_QUEUE_URL")]
        queue_url: Option<String>,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Tear down handles whose worker died, and leaks backends report.
    Reap {
        /// The worker config (YAML).
        #[arg(long)]
        config: PathBuf,
        /// List only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Override `worker.stale_after_seconds`.
        #[arg(long)]
        stale_after: Option<u64>,
        /// Override `worker.leak_grace_seconds`.
        #[arg(long)]
        leak_grace: Option<u64>,
    },
    /// List the runner types this build knows, with their capabilities.
    Backends,
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// The newest dead letters.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One dead letter in full (JSON).
    Show {
        /// Its id.
        id: String,
    },
    /// Put a dead letter back on the queue as a fresh task.
    Replay {
        /// Its id.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = init_tracing(cli.json_logs, matches!(cli.command, Command::Run { .. }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_INFRA);
        }
    };
    let outcome = runtime.block_on(dispatch(cli.command));
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Logs to stderr (JSON on request); spans to OTLP when the standard
/// `OTEL_EXPORTER_OTLP_*` variables ask for it (the guard flushes them).
fn init_tracing(json: bool, quiet_default: bool) -> Option<Telemetry> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if quiet_default { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (telemetry, otel_error) = match Telemetry::from_env() {
        Ok(t) => (t, None),
        Err(e) => (None, Some(e)),
    };
    let otel = telemetry.as_ref().map(|t| t.layer());
    let plain = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let structured = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(plain)
        .with(structured)
        .init();
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "spans are not exported");
    }
    telemetry
}

async fn dispatch(command: Command) -> Result<u8, String> {
    match command {
        Command::Run {
            bench,
            payload,
            config,
            junit,
        } => run(&bench, &payload, config.as_deref(), junit.as_deref()).await,
        Command::Serve {
            config,
            metrics_addr,
            concurrency,
            queue_url,
        } => serve(&config, metrics_addr, concurrency, queue_url).await,
        Command::Submit {
            config,
            runner,
            bench,
            payload,
            key,
            correlation_id,
            queue_url,
        } => {
            let worker_config = load_worker_config(&config, queue_url)?;
            let (_, queue) = orchestrator_worker::queue::open(&worker_config).await?;
            let task = Task {
                execution_key: key.unwrap_or_else(|| {
                    format!(
                        "exec-{}-{:08x}",
                        orchestrator_worker::queue::now_ms(),
                        fastrand::u32(..)
                    )
                }),
                correlation_id,
                runner,
                bench: load_yaml(&bench)?,
                payload: load_yaml(&payload)?,
            };
            // The task carries this span's trace context (SQS message
            // attributes), so the worker's trace continues the submitter's.
            let span = tracing::info_span!("submit", execution_key = %task.execution_key, correlation_id = %task.correlation());
            let id = queue
                .submit(&task)
                .instrument(span)
                .await
                .map_err(|e| e.to_string())?;
            println!("{id}\t{}", task.execution_key);
            Ok(0)
        }
        Command::Dlq {
            config,
            queue_url,
            action,
        } => {
            let config = config.ok_or("dlq needs --config WORKER.yaml")?;
            let worker_config = load_worker_config(&config, queue_url)?;
            let (_, store) = orchestrator_worker::queue::open(&worker_config).await?;
            match action {
                DlqAction::List { limit } => {
                    for entry in store.dlq_list(limit).await.map_err(|e| e.to_string())? {
                        println!(
                            "{}\ttask {}\t{} attempt(s)\t{}",
                            entry.id,
                            entry.task_id,
                            entry.history.len(),
                            entry.reason
                        );
                    }
                }
                DlqAction::Show { id } => {
                    let entry = store.dlq_show(&id).await.map_err(|e| e.to_string())?;
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&entry).map_err(|e| e.to_string())?
                    );
                }
                DlqAction::Replay { id } => {
                    let task = store.dlq_replay(&id).await.map_err(|e| e.to_string())?;
                    println!("replayed dead letter {id} as task {task}");
                }
            }
            Ok(0)
        }
        Command::Reap {
            config,
            dry_run,
            stale_after,
            leak_grace,
        } => {
            let worker_config = WorkerConfig::from_file(&config).map_err(|e| e.to_string())?;
            let options = ReapOptions {
                stale_after: Duration::from_secs(
                    stale_after.unwrap_or(worker_config.worker.stale_after_seconds),
                ),
                leak_grace: Duration::from_secs(
                    leak_grace.unwrap_or(worker_config.worker.leak_grace_seconds),
                ),
                dry_run,
            };
            let factory = RunnerFactory::with_builtins(Metrics::new());
            let worker = Worker::new(worker_config, &factory)?;
            let report = reap(
                worker.store(),
                &worker.adapters(),
                worker.metrics(),
                options,
            )
            .await;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
            );
            Ok(if report.errors.is_empty() {
                0
            } else {
                EXIT_INFRA
            })
        }
        Command::Backends => {
            let factory = RunnerFactory::with_builtins(Metrics::new());
            for runner_type in factory.known_types() {
                match factory.create(&RunnerConfig::new(&runner_type)) {
                    Ok(adapter) => println!("{runner_type}\t{:?}", adapter.capabilities()),
                    Err(e) => println!("{runner_type}\t(needs config: {e})"),
                }
            }
            Ok(0)
        }
    }
}

fn load_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    runner_core::spec::from_yaml_file(path).map_err(|e| e.to_string())
}

async fn run(
    bench_path: &Path,
    payload_path: &Path,
    config_path: Option<&Path>,
    junit_path: Option<&Path>,
) -> Result<u8, String> {
    let config = match config_path {
        Some(path) => RunnerConfig::from_yaml_file(path),
        None if std::env::var("RUNNER_TYPE").is_ok() => RunnerConfig::from_env(),
        None => Ok(RunnerConfig::new("local")),
    }
    .map_err(|e| e.to_string())?;
    let bench: BenchSpec = load_yaml(bench_path)?;
    let payload: TestPayload = load_yaml(payload_path)?;
    let factory = RunnerFactory::with_builtins(Metrics::new());
    let adapter = factory.create(&config).map_err(|e| e.to_string())?;
    let engine = Engine::new(
        adapter,
        EngineSettings {
            retries: config.retries,
            ..EngineSettings::default()
        },
    );

    let execution_id = format!(
        "run-{}-{:06x}",
        orchestrator_worker::queue::now_ms(),
        fastrand::u32(..0xFF_FFFF)
    );
    let spinner = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    });
    let (sink, mut rx) = LogSink::channel(4096);
    let printer = {
        let spinner = spinner.clone();
        tokio::spawn(async move {
            while let Some(batch) = rx.recv_batch().await {
                let print = || {
                    for (stream, text) in batch.iter() {
                        match stream {
                            LogStream::Stdout => println!("{text}"),
                            LogStream::Stderr => eprintln!("{text}"),
                            LogStream::System => eprintln!("» {text}"),
                        }
                    }
                };
                match &spinner {
                    Some(pb) => pb.suspend(print),
                    None => print(),
                }
            }
        })
    };
    let cancel = CancellationToken::new();
    let ctrl_c = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("» cancelling (teardown still runs)");
                cancel.cancel();
            }
        })
    };
    let ctx = RunContext::new(&execution_id, &execution_id)
        .with_cancel(cancel.clone())
        .with_log_sink(sink.with_redactor(payload.redactor()));
    let observer = spinner.clone().map(|pb| {
        Arc::new(move |phase: Phase| pb.set_message(format!("{phase}…")))
            as orchestrator_worker::engine::PhaseObserver
    });
    eprintln!(
        "» {} on `{}`, execution {execution_id}",
        if payload.name.is_empty() {
            "test"
        } else {
            &payload.name
        },
        config.runner_type
    );
    let outcome = engine
        .execute(Execution {
            ctx,
            bench: &bench,
            payload: &payload,
            observer,
        })
        .await;
    ctrl_c.abort();
    let _ = printer.await;
    if let Some(pb) = &spinner {
        pb.finish_and_clear();
    }
    print_summary(&outcome);
    if let Some(path) = junit_path {
        let name = if payload.name.is_empty() {
            "test"
        } else {
            payload.name.as_str()
        };
        let xml = junit::render(
            &config.runner_type,
            &[junit::Case {
                name,
                outcome: &outcome,
            }],
        );
        std::fs::write(path, xml).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("» JUnit report: {}", path.display());
    }
    Ok(exit_code(&outcome, cancel.is_cancelled()))
}

fn exit_code(outcome: &ExecutionOutcome, cancelled: bool) -> u8 {
    match (&outcome.result, &outcome.failure) {
        (_, Some(_)) if cancelled => EXIT_CANCELLED,
        (_, Some(_)) => EXIT_INFRA,
        (Some(r), None) => match r.status {
            TestStatus::Passed => 0,
            TestStatus::Failed | TestStatus::TimedOut => EXIT_FAILED,
            TestStatus::Cancelled => EXIT_CANCELLED,
            TestStatus::Error => EXIT_INFRA,
        },
        (None, None) => EXIT_INFRA,
    }
}

fn print_summary(outcome: &ExecutionOutcome) {
    println!("──────── summary ────────");
    match (&outcome.result, &outcome.failure) {
        (Some(r), None) => {
            let code = r
                .exit_code
                .map_or_else(|| "-".to_owned(), |c| c.to_string());
            println!(
                "result     {} (exit code {code}) in {:.2?}",
                r.status.as_str(),
                r.duration
            );
            if let Some(d) = &r.diagnosis {
                println!("diagnosis  [{}] {}", d.layer, d.message);
            }
        }
        (_, Some(f)) => println!("error      {} failed ({}): {}", f.phase, f.kind, f.message),
        (None, None) => println!("error      no result"),
    }
    if let Some(bundle) = &outcome.artifacts {
        println!(
            "artifacts  {} ({} bytes)",
            bundle.artifacts.len(),
            bundle.total_size()
        );
        for a in &bundle.artifacts {
            let at = match &a.location {
                ArtifactLocation::Local(p) => p.display().to_string(),
                ArtifactLocation::Uri(u) => u.clone(),
            };
            println!(
                "  {:<28} {:>10} B  sha256 {}…  {at}",
                a.name,
                a.size,
                &a.sha256[..12.min(a.sha256.len())]
            );
        }
    }
    if let Some(e) = &outcome.artifact_error {
        println!("artifacts  FAILED: {}", e.message);
    }
    match &outcome.teardown_error {
        None => println!("teardown   ok"),
        Some(e) => println!(
            "teardown   FAILED (left for `orchestrator reap`): {}",
            e.message
        ),
    }
}

/// The worker config, with `--queue-url` (or `ORCHESTRATOR_QUEUE_URL`)
/// selecting an SQS queue.
fn load_worker_config(path: &Path, queue_url: Option<String>) -> Result<WorkerConfig, String> {
    let mut config = WorkerConfig::from_file(path).map_err(|e| e.to_string())?;
    if let Some(url) = queue_url.filter(|u| !u.is_empty()) {
        let mut section =
            config
                .queue
                .sqs
                .take()
                .unwrap_or_else(|| orchestrator_worker::config::SqsSection {
                    url: String::new(),
                    dlq_url: None,
                    wait_seconds: 5,
                    fifo_group: Default::default(),
                    region: None,
                });
        section.url = url;
        section
            .validate()
            .map_err(|(key, message)| format!("--queue-url ({key}): {message}"))?;
        config.queue.sqs = Some(section);
    }
    Ok(config)
}

async fn serve(
    config_path: &Path,
    metrics_addr: Option<std::net::SocketAddr>,
    concurrency: Option<usize>,
    queue_url: Option<String>,
) -> Result<u8, String> {
    let mut config = load_worker_config(config_path, queue_url)?;
    if let Some(n) = concurrency {
        config.worker.concurrency = n.max(1);
    }
    let factory = RunnerFactory::with_builtins(Metrics::new());
    let (store, queue) = orchestrator_worker::queue::open(&config).await?;
    let worker = Worker::with_queue(config, &factory, store, queue)?;
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let metrics = worker.metrics().clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        metrics.encode(),
                    )
                }
            }),
        );
        tracing::info!(%addr, "metrics at /metrics");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot watch SIGTERM");
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            }
            stop.cancel();
        });
    }
    worker.serve(stop).await.map_err(|e| e.to_string())?;
    Ok(0)
}
