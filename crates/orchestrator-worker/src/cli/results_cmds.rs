//! Results back to whoever asked: `status`, `history`, `logs`,
//! `artifacts`, `cancel`, and `validate` before anything is queued.
//!
//! `--json` output is a stable interface for scripts: an object with
//! `"version": 1` (see docs/adapters/worker.md).

use std::io::Write;
use std::path::PathBuf;

use runner_core::{BenchSpec, RunnerConfig, TestPayload};

use super::remote::Remote;
use super::{CliError, CliResult, MakeFactory, load_worker_config, load_yaml, open_backends};
use crate::results::{Cancelled, cancel, fetch_artifact, read_artifact, unsettled_of};
use crate::store::{ExecState, ExecutionRecord, HistoryFilter};

/// Arguments of `status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The execution key.
    key: String,
    /// The worker config (YAML) naming the store.
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    /// Ask this API server instead of the store (`ORCHESTRATOR_TOKEN`
    /// holds the token); `--config` wins when both are given.
    #[arg(long, env = "ORCHESTRATOR_SERVER")]
    server: Option<String>,
    /// Print the record as JSON.
    #[arg(long)]
    json: bool,
}

fn json_out(value: serde_json::Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(&value).map_err(|e| CliError::infra(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// The store's worker config, or else the API server to ask.
fn source<'a>(
    config: &'a Option<PathBuf>,
    server: &'a Option<String>,
) -> Result<Result<&'a std::path::Path, Remote>, CliError> {
    match (config, server) {
        (Some(c), _) => Ok(Ok(c.as_path())),
        (None, Some(s)) => Ok(Err(Remote::new(s)?)),
        (None, None) => Err(CliError::usage("give --config WORKER.yaml or --server URL")),
    }
}

async fn record(
    config: &Option<PathBuf>,
    server: &Option<String>,
    key: &str,
) -> Result<ExecutionRecord, CliError> {
    let config = match source(config, server)? {
        Ok(config) => config,
        Err(remote) => return remote.record(key).await,
    };
    let config = load_worker_config(config, None)?;
    let backends = open_backends(&config).await?;
    backends
        .store
        .execution(key)
        .await?
        .ok_or_else(|| CliError::usage(format!("no execution with key `{key}`")))
}

pub(super) async fn status(args: StatusArgs) -> CliResult {
    let r = record(&args.config, &args.server, &args.key).await?;
    if args.json {
        json_out(serde_json::json!({"version": 1, "execution": r}))?;
        return Ok(0);
    }
    println!("execution  {}", r.new.key);
    println!(
        "runner     {}  bench {}  payload {}",
        r.new.runner, r.new.bench, r.new.payload
    );
    println!("state      {}", r.state);
    for event in &r.timeline {
        let attempt = event.attempt.map(|a| format!(" #{a}")).unwrap_or_default();
        println!(
            "  {:>14} {:<13}{attempt} {}",
            event.at_ms,
            event.state.as_str(),
            event.message
        );
    }
    for a in &r.attempts {
        let phases: Vec<String> = a
            .phases
            .iter()
            .map(|p| format!("{} {} ms", p.phase, p.ms))
            .collect();
        println!(
            "attempt {} on {}: {} ({})",
            a.attempt,
            a.worker,
            a.disposition,
            phases.join(", ")
        );
        if let Some(e) = &a.error {
            println!("  {} failed ({}): {}", e.phase, e.kind, e.message);
        }
    }
    if r.state.is_settled() {
        super::summary::summary(std::slice::from_ref(&r));
    }
    Ok(0)
}

/// Arguments of `history`.
#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// The worker config (YAML) naming the store.
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    /// Ask this API server instead of the store (`ORCHESTRATOR_TOKEN`
    /// holds the token); `--config` wins when both are given.
    #[arg(long, env = "ORCHESTRATOR_SERVER")]
    server: Option<String>,
    /// Only executions of this correlation id.
    #[arg(long)]
    correlation_id: Option<String>,
    /// Only this runner type.
    #[arg(long)]
    runner: Option<String>,
    /// Only this state (queued, running, passed, failed, timed_out, ...).
    #[arg(long, value_parser = parse_state)]
    state: Option<ExecState>,
    /// Only executions submitted within this long (`2h`, `7d` as `168h`).
    #[arg(long, value_parser = super::submit_cmd::parse_duration)]
    since: Option<std::time::Duration>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_state(text: &str) -> Result<ExecState, String> {
    ExecState::parse(text).ok_or_else(|| {
        let known: Vec<&str> = ExecState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state `{text}`; known: {}", known.join(", "))
    })
}

pub(super) async fn history(args: HistoryArgs) -> CliResult {
    let remote = source(&args.config, &args.server)?.err();
    let filter = HistoryFilter {
        correlation_id: args.correlation_id,
        runner: args.runner,
        state: args.state,
        since_ms: args
            .since
            .map(|d| crate::store::now_ms().saturating_sub(d.as_millis() as u64)),
        before_ms: None,
        limit: args.limit as usize,
    };
    let records = match (&remote, &args.config) {
        (Some(remote), _) => {
            let mut q = vec![("limit", filter.limit.to_string())];
            for (name, value) in [
                ("correlation_id", filter.correlation_id.clone()),
                ("runner", filter.runner.clone()),
                ("state", super::remote::state_name(filter.state)),
                ("since_ms", filter.since_ms.map(|ms| ms.to_string())),
            ] {
                if let Some(v) = value {
                    q.push((name, v));
                }
            }
            remote.history(&q).await?.0
        }
        (None, Some(config)) => {
            let config = load_worker_config(config, None)?;
            let backends = open_backends(&config).await?;
            backends.store.executions(&filter).await?
        }
        (None, None) => return Err(CliError::usage("give --config WORKER.yaml or --server URL")),
    };
    if args.json {
        let next = (records.len() == filter.limit)
            .then(|| records.last().map(|r| r.created_ms))
            .flatten();
        json_out(serde_json::json!({"version": 1, "executions": records, "next_before_ms": next}))?;
        return Ok(0);
    }
    println!(
        "{:<36} {:<11} {:<14} {:<20} {:>9}",
        "EXECUTION", "RUNNER", "STATE", "CORRELATION", "SECONDS"
    );
    for r in records {
        let secs = r.result.as_ref().map_or_else(
            || "-".to_owned(),
            |res| format!("{:.1}", res.duration_ms as f64 / 1000.0),
        );
        println!(
            "{:<36} {:<11} {:<14} {:<20} {:>9}",
            r.new.key,
            r.new.runner,
            r.state.as_str(),
            r.new.correlation_id,
            secs
        );
    }
    Ok(0)
}

/// Arguments of `logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The execution key.
    key: String,
    /// The worker config (YAML) naming the store.
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    /// Ask this API server instead of the store (`ORCHESTRATOR_TOKEN`
    /// holds the token); `--config` wins when both are given.
    #[arg(long, env = "ORCHESTRATOR_SERVER")]
    server: Option<String>,
}

pub(super) async fn logs(args: LogsArgs) -> CliResult {
    let r = record(&args.config, &args.server, &args.key).await?;
    let logs: Vec<_> = r.artifacts.iter().filter(|a| a.kind == "log").collect();
    if logs.is_empty() {
        return Err(CliError::usage(format!(
            "execution `{}` has no collected log (state {})",
            r.new.key, r.state
        )));
    }
    let mut out = std::io::stdout().lock();
    for log in logs {
        if logs_many(&r) {
            let _ = writeln!(out, "==> {} <==", log.name);
        }
        let bytes = match &args.config {
            Some(_) => read_artifact(log).await.map_err(CliError::infra)?,
            None => match source(&args.config, &args.server)? {
                Err(remote) => remote.artifact_bytes(&r.new.key, log, None).await?,
                Ok(_) => read_artifact(log).await.map_err(CliError::infra)?,
            },
        };
        let _ = out.write_all(&bytes);
    }
    Ok(0)
}

fn logs_many(r: &ExecutionRecord) -> bool {
    r.artifacts.iter().filter(|a| a.kind == "log").count() > 1
}

/// Arguments of `artifacts`.
#[derive(clap::Args, Debug)]
pub struct ArtifactsArgs {
    /// The execution key.
    key: String,
    /// The worker config (YAML) naming the store.
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    /// Ask this API server instead of the store (`ORCHESTRATOR_TOKEN`
    /// holds the token); `--config` wins when both are given.
    #[arg(long, env = "ORCHESTRATOR_SERVER")]
    server: Option<String>,
    /// Download them here, checking each one's sha256.
    #[arg(long)]
    download: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn artifacts(args: ArtifactsArgs) -> CliResult {
    let r = record(&args.config, &args.server, &args.key).await?;
    if let Some(dir) = &args.download {
        let remote = source(&args.config, &args.server)?.err();
        for a in &r.artifacts {
            let path = match &remote {
                Some(remote) => remote.download(&r.new.key, a, dir).await?,
                None => fetch_artifact(a, dir).await.map_err(CliError::infra)?,
            };
            eprintln!("» {} ({} B, sha256 verified)", path.display(), a.size);
        }
        return Ok(0);
    }
    if args.json {
        json_out(serde_json::json!({"version": 1, "key": r.new.key, "artifacts": r.artifacts}))?;
        return Ok(0);
    }
    for a in &r.artifacts {
        println!(
            "{:<32} {:>10} B  sha256 {}  {}",
            a.name, a.size, a.sha256, a.uri
        );
    }
    Ok(0)
}

/// Arguments of `cancel`.
#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The execution key.
    #[arg(required_unless_present = "correlation_id")]
    key: Option<String>,
    /// Cancel every unsettled execution of this correlation id.
    #[arg(long, conflicts_with = "key")]
    correlation_id: Option<String>,
    /// The worker config (YAML) naming the queue and the store.
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    /// Ask this API server instead of the store (`ORCHESTRATOR_TOKEN`
    /// holds the token); `--config` wins when both are given.
    #[arg(long, env = "ORCHESTRATOR_SERVER")]
    server: Option<String>,
}

pub(super) async fn cancel_cmd(args: CancelArgs) -> CliResult {
    let config = match source(&args.config, &args.server)? {
        Ok(config) => config,
        Err(_) => {
            let server = args.server.as_deref().unwrap_or_default();
            let done =
                super::remote::cancel(server, args.key.as_deref(), args.correlation_id.as_deref())
                    .await?;
            for (key, outcome) in done {
                println!("{key}\t{}", cancel_words(&outcome));
            }
            return Ok(0);
        }
    };
    let config = load_worker_config(config, None)?;
    let backends = open_backends(&config).await?;
    let keys = match (&args.key, &args.correlation_id) {
        (Some(key), _) => vec![key.clone()],
        (None, Some(c)) => unsettled_of(&backends, c).await?,
        (None, None) => return Err(CliError::usage("give an execution key or --correlation-id")),
    };
    let by = super::submit_cmd::submitter();
    for key in keys {
        let what = match cancel(&backends, &key, &by).await? {
            Cancelled::Removed => "removed",
            Cancelled::Requested => "requested",
            Cancelled::AlreadySettled => "already_settled",
        };
        println!("{key}\t{}", cancel_words(what));
    }
    Ok(0)
}

/// What a cancel outcome (`removed`, `requested`, `already_settled`) means.
fn cancel_words(outcome: &str) -> &'static str {
    match outcome {
        "removed" => "removed from the queue (cancelled)",
        "already_settled" => "already settled; nothing changed",
        _ => {
            "cancel requested: its worker stops it within seconds; artifacts are still collected and the environment torn down"
        }
    }
}

/// Arguments of `validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// A worker config (YAML): checked, and its runners used for the pair.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A runner config (YAML), instead of the worker config's runners.
    #[arg(long)]
    runner_config: Option<PathBuf>,
    /// The runner type (optional when the bench names it).
    #[arg(long)]
    runner: Option<String>,
    /// A bench spec (YAML).
    #[arg(long)]
    bench: Option<PathBuf>,
    /// A payload (YAML).
    #[arg(long)]
    payload: Option<PathBuf>,
}

pub(super) async fn validate(args: ValidateArgs, make: MakeFactory) -> CliResult {
    let mut checked = Vec::new();
    let mut worker = match &args.config {
        Some(path) => {
            let c = load_worker_config(path, None)?;
            checked.push(format!("worker config {}", path.display()));
            c
        }
        None => crate::config::WorkerConfig::default(),
    };
    if let Some(path) = &args.runner_config {
        let runner =
            RunnerConfig::from_yaml_file(path).map_err(|e| CliError::usage(e.to_string()))?;
        make(crate::metrics::Metrics::new())
            .create(&runner)
            .map_err(|e| CliError::usage(e.to_string()))?;
        checked.push(format!("runner config {}", path.display()));
        worker
            .runners
            .retain(|r| r.runner_type != runner.runner_type);
        worker.runners.push(runner);
    }
    for runner in &worker.runners {
        make(crate::metrics::Metrics::new())
            .create(runner)
            .map_err(|e| CliError::usage(format!("runner `{}`: {e}", runner.runner_type)))?;
    }
    let bench: Option<BenchSpec> = args.bench.as_deref().map(load_yaml).transpose()?;
    let payload: Option<TestPayload> = args.payload.as_deref().map(load_yaml).transpose()?;
    if bench.is_some() {
        checked.push("bench".into());
    }
    if let Some(p) = &payload {
        crate::validate::payload_common(p).map_err(|e| CliError::usage(e.to_string()))?;
        checked.push("payload".into());
    }
    if let (Some(bench), Some(payload)) = (bench, payload) {
        let runner = crate::validate::runner_type(args.runner.as_deref(), &bench)
            .map_err(|e| CliError::usage(e.to_string()))?;
        let task = crate::task::Task::new("validate", runner, bench, payload);
        super::submit_cmd::check(&worker, &make, &task, "")?;
        checked.push(format!("the pair on `{}`", task.runner));
    }
    if checked.is_empty() {
        return Err(CliError::usage(
            "nothing to validate: give --config, --runner-config, --bench and/or --payload",
        ));
    }
    println!("ok: {}", checked.join(", "));
    Ok(0)
}
