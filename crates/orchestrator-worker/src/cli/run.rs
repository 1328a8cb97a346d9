//! `orchestrator run`: one bench + payload now, live logs, a summary. The
//! handle is journaled (and an execution record kept) in a local store, so
//! a `run` killed by SIGKILL is found by `reap`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use runner_core::{
    ArtifactLocation, BenchSpec, CancellationToken, LogSink, LogStream, Phase, RunContext,
    RunnerConfig, TestPayload, TestStatus,
};

use super::{CliError, CliResult, EXIT_CANCELLED, EXIT_FAILED, EXIT_INFRA, MakeFactory, load_yaml};
use crate::engine::{Engine, EngineSettings, Execution, ExecutionOutcome};
use crate::junit;
use crate::metrics::Metrics;
use crate::report::{attempt_detail, settlement};
use crate::serve::{hostname, new_worker_id};
use crate::store::{NewExecution, RecordUpdate, SqliteStore, Store, WorkerBeat};

/// Arguments of `run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The bench spec (YAML).
    #[arg(long)]
    bench: PathBuf,
    /// The test payload (YAML).
    #[arg(long)]
    payload: PathBuf,
    /// A runner config (YAML); without it, ORCHESTRATOR_RUNNER_* (or RUNNER_*)
    /// variables when they name a type, else `type: local`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// The local store that journals the handle and keeps the record
    /// (default: `orchestrator-runs.sqlite3` beside the runner's artifacts
    /// directory).
    #[arg(long, env = "ORCHESTRATOR_RUN_STORE")]
    store: Option<PathBuf>,
}

pub(super) async fn run(args: RunArgs, make: MakeFactory) -> CliResult {
    let config = match &args.config {
        Some(path) => RunnerConfig::from_yaml_file(path),
        None if RunnerConfig::env_has_type(
            std::env::vars()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        ) =>
        {
            RunnerConfig::from_env()
        }
        None => Ok(RunnerConfig::new("local")),
    }
    .map_err(|e| CliError::usage(e.to_string()))?;
    let bench: BenchSpec = load_yaml(&args.bench)?;
    let payload: TestPayload = load_yaml(&args.payload)?;
    let factory = make(Metrics::new());
    let adapter = factory
        .create(&config)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let ctx = RunContext::new("validate", "validate");
    crate::validate::runner_type(Some(&config.runner_type), &bench)
        .and_then(|_| crate::validate::task(&*adapter, &ctx, &bench, &payload))
        .and_then(|_| crate::validate::allowed(&config, &bench, &payload, false))
        .map_err(|e| CliError::usage(e.to_string()))?;
    // Secret references are resolved here, in memory only: the record
    // keeps the payload's names, never a value.
    let payload = crate::secrets::resolve(&payload)
        .await
        .map_err(|e| match e.kind {
            runner_core::ErrorKind::Transient => CliError::infra(e.to_string()),
            _ => CliError::usage(e.to_string()),
        })?;
    let store_path = args.store.clone().unwrap_or_else(|| {
        config
            .artifacts_dir
            .parent()
            .unwrap_or_else(|| Path::new(""))
            .join("orchestrator-runs.sqlite3")
    });
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&store_path)?);
    let worker_id = new_worker_id("run-");
    let stale_after = Duration::from_secs(60);
    let engine = Engine::for_runner(
        adapter,
        &config,
        EngineSettings {
            worker_id: worker_id.clone(),
            stale_after,
            ..EngineSettings::default()
        },
    )
    .with_journal(Arc::clone(&store));

    let execution_id = format!(
        "run-{}-{:06x}",
        crate::store::now_ms(),
        fastrand::u32(..0xFF_FFFF)
    );
    let new = NewExecution {
        key: execution_id.clone(),
        runner: config.runner_type.clone(),
        bench: bench.name.clone(),
        payload: payload.name.clone(),
        correlation_id: execution_id.clone(),
        labels: Default::default(),
        submitted_by: format!("run@{}", hostname()),
    };
    store.create_execution(&new).await?;
    // Heartbeat while the run lasts: a reaper must not take a live run's
    // handle for an orphan.
    let beat = WorkerBeat {
        id: worker_id.clone(),
        host: hostname(),
        pid: std::process::id(),
        runners: vec![config.runner_type.clone()],
        in_flight: 1,
    };
    store.worker_heartbeat(&beat).await?;
    let heartbeat = {
        let (store, beat) = (Arc::clone(&store), beat.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(stale_after / 4).await;
                let _ = store.worker_heartbeat(&beat).await;
            }
        })
    };

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
    // Ctrl-C or SIGTERM (what CI systems and Kubernetes send on a cancel):
    // cancel the run; collect and teardown still run. A second one stops
    // waiting for artifacts; teardown still runs.
    let cancel = CancellationToken::new();
    let hurry = CancellationToken::new();
    let signals = {
        let (cancel, hurry) = (cancel.clone(), hurry.clone());
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            let mut seen = 0;
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                seen += 1;
                if seen == 1 {
                    eprintln!(
                        "» cancelling (artifacts are still collected and the environment torn down; again to skip the artifacts)"
                    );
                    cancel.cancel();
                } else {
                    eprintln!("» not waiting for artifacts; tearing down");
                    hurry.cancel();
                    return;
                }
            }
        })
    };
    let ctx = RunContext::new(&execution_id, &execution_id)
        .with_worker(&worker_id)
        .with_cancel(cancel.clone())
        .with_log_sink(sink.with_redactor(payload.redactor()));
    let observer = spinner.clone().map(|pb| {
        Arc::new(move |phase: Phase| pb.set_message(format!("{phase}…")))
            as crate::engine::PhaseObserver
    });
    eprintln!(
        "» {} on `{}`, execution {execution_id}",
        if payload.name.is_empty() {
            "test".to_owned()
        } else {
            crate::validate::shown(&payload.name)
        },
        config.runner_type
    );
    let outcome = engine
        .execute(Execution {
            ctx,
            bench: &bench,
            payload: &payload,
            observer,
            hurry: Some(hurry),
            journal_clear: false,
            journal_end_by_caller: false,
            lease_held_until: None,
        })
        .await;
    signals.abort();
    let _ = printer.await;
    if let Some(pb) = &spinner {
        pb.finish_and_clear();
    }
    let code = exit_code(&outcome, cancel.is_cancelled());
    record(&*store, new, &outcome, &worker_id).await;
    heartbeat.abort();
    let _ = store.worker_gone(&worker_id).await;
    print_summary(&outcome, &store_path, args.config.as_deref());
    if let Some(path) = &args.junit {
        let record = store
            .execution(&execution_id)
            .await?
            .ok_or_else(|| CliError::infra(format!("the record of {execution_id} is missing")))?;
        std::fs::write(path, junit::render(&[record]))
            .map_err(|e| CliError::infra(format!("cannot write {}: {e}", path.display())))?;
        eprintln!("» JUnit report: {}", path.display());
    }
    Ok(code)
}

/// Keep the run's record (best effort: the run itself is over).
async fn record(store: &dyn Store, new: NewExecution, outcome: &ExecutionOutcome, worker: &str) {
    let disposition = if outcome.result.is_some() {
        crate::policy::Disposition::Ack
    } else {
        crate::policy::Disposition::DeadLetter {
            reason: "infrastructure error".into(),
        }
    };
    let detail = attempt_detail(1, worker, outcome, &disposition);
    let reason = outcome.failure.as_ref().map(|f| f.message.clone());
    let suite = crate::report::suite_cases(outcome.artifacts.as_ref()).await;
    if let Some(mut s) = settlement(new, outcome, detail, &disposition, reason.as_deref(), suite) {
        if outcome.result.is_none() {
            s.state = crate::store::ExecState::Error;
        }
        if let Err(e) = store.record(&[RecordUpdate::Settled(Box::new(s))]).await {
            tracing::warn!(error = %e, "cannot record the run");
        }
    }
}

/// The exit code of one execution's outcome.
pub(crate) fn exit_code(outcome: &ExecutionOutcome, cancelled: bool) -> u8 {
    match (&outcome.result, &outcome.failure) {
        (_, Some(_)) if cancelled => EXIT_CANCELLED,
        // The test's own input was at fault (found only where it runs: a
        // program missing from the image, a working dir not in the package).
        (_, Some(f)) if f.kind == runner_core::ErrorKind::InvalidSpec => super::EXIT_USAGE,
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

fn print_summary(outcome: &ExecutionOutcome, store: &Path, config: Option<&Path>) {
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
        Some(e) => {
            let config = config
                .map(|c| format!(" --runner-config {}", c.display()))
                .unwrap_or_default();
            println!(
                "teardown   FAILED (left for `orchestrator reap --store {}{config}`): {}",
                store.display(),
                e.message
            );
        }
    }
}
