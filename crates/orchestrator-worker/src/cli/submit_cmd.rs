//! `submit`: validate, queue (one task or a batch in one transaction),
//! and with `--wait` follow them to the end and exit with `run`'s codes.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_core::{BenchSpec, CancellationToken, RunContext, TestPayload};
use serde::Deserialize;
use tracing::Instrument;

use super::{CliError, CliResult, MakeFactory, load_worker_config, load_yaml, open_backends};
use crate::backends::Backends;
use crate::config::WorkerConfig;
use crate::metrics::Metrics;
use crate::results::{Cancelled, cancel, exit_code, wait};
use crate::store::{ExecState, ExecutionRecord};
use crate::submit::{SubmitOutcome, submit, submit_batch};
use crate::task::Task;

/// Arguments of `submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The worker config (YAML) naming the queue, the store and the runners.
    #[arg(long, required_unless_present = "server")]
    config: Option<PathBuf>,
    /// Submit through this API server instead (`ORCHESTRATOR_TOKEN` holds
    /// the token; the server validates); `--config` wins when both are given.
    #[arg(long, env = "ORCHESTRATOR_SERVER")]
    server: Option<String>,
    /// The runner type (optional when the bench names its `runner`).
    #[arg(long)]
    runner: Option<String>,
    /// The bench spec (YAML).
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    bench: Option<PathBuf>,
    /// The test payload (YAML).
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    payload: Option<PathBuf>,
    /// Many tasks: a YAML list, or JSON lines, of {runner, bench, payload,
    /// key, labels} (bench and payload as file paths relative to the batch
    /// file, or inline). One transaction: all queued, or none.
    #[arg(long)]
    batch: Option<PathBuf>,
    /// The execution key (idempotency key); a fresh one when absent.
    #[arg(long, conflicts_with = "batch")]
    key: Option<String>,
    /// A correlation id (a CI pipeline id...).
    #[arg(long)]
    correlation_id: Option<String>,
    /// A label, `name=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Wait until the executions settle; print their progress and the
    /// summary; exit 0 passed, 1 failed or timed out, 2 infrastructure,
    /// 3 cancelled (the worst of a batch).
    #[arg(long)]
    wait: bool,
    /// Stop waiting after this long (`90s`, `15m`, `2h`); exit 2 if not settled.
    #[arg(long, requires = "wait", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// With --wait: write a JUnit report here (the suites' own cases where
    /// they wrote JUnit, else one case per execution).
    #[arg(long, requires = "wait")]
    junit: Option<PathBuf>,
    /// With --wait: on Ctrl-C or SIGTERM stop waiting but leave the
    /// executions running (by default they are cancelled).
    #[arg(long, requires = "wait")]
    detach_on_interrupt: bool,
    /// Submit to this SQS queue (overrides `queue.sqs.url`).
    #[arg(long, env = "ORCHESTRATOR_QUEUE_URL")]
    queue_url: Option<String>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not name=value")),
    }
}

/// `90`, `90s`, `15m`, `2h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (90s, 15m, 2h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?}: unit must be s, m or h")),
    };
    if secs == 0 || secs > 7 * 86_400 {
        return Err(format!("{text:?}: must be between 1 s and 7 days"));
    }
    Ok(Duration::from_secs(secs))
}

/// Who submits: `user@host`.
pub fn submitter() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", crate::serve::hostname())
}

/// A fresh execution key.
pub fn fresh_key() -> String {
    format!("exec-{}-{:08x}", crate::store::now_ms(), fastrand::u32(..))
}

/// A bench or payload in a batch entry: a file, or the document inline.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Doc<T> {
    Path(PathBuf),
    Inline(T),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchEntry {
    #[serde(default)]
    runner: Option<String>,
    bench: Doc<BenchSpec>,
    payload: Doc<TestPayload>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn resolve<T: serde::de::DeserializeOwned>(doc: Doc<T>, base: &Path) -> Result<T, CliError> {
    match doc {
        Doc::Inline(value) => Ok(value),
        Doc::Path(path) => load_yaml(&base.join(path)),
    }
}

/// The entries of a batch file: a YAML list, or one JSON object a line.
fn read_batch(path: &Path) -> Result<Vec<BatchEntry>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let json_lines = text.trim_start().starts_with('{');
    if json_lines {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let mut de = serde_json::Deserializer::from_str(line);
                serde_path_to_error::deserialize(&mut de).map_err(|e| {
                    // The entry itself (a missing field) has the path `.`:
                    // the message names the field then.
                    let at = match e.path().to_string() {
                        top if top == "." => String::new(),
                        inner => format!("`{inner}`: "),
                    };
                    CliError::usage(format!(
                        "{} line {}: {at}{}",
                        path.display(),
                        i + 1,
                        e.inner()
                    ))
                })
            })
            .collect()
    } else {
        runner_core::spec::from_yaml_str(&text, &path.display().to_string())
            .map_err(|e| CliError::usage(e.to_string()))
    }
}

/// Validate `task` against the runner config the fleet uses for its type.
pub(crate) fn check(
    config: &WorkerConfig,
    make: &MakeFactory,
    task: &Task,
    field_prefix: &str,
) -> Result<(), CliError> {
    let fail = |field: &str, message: &str| {
        CliError::usage(format!("{field_prefix}invalid field `{field}`: {message}"))
    };
    crate::validate::queued(task).map_err(|e| fail(&e.field, &e.message))?;
    let runner = config.runners.iter().find(|r| r.runner_type == task.runner);
    let Some(runner) = runner else {
        if config.runners.is_empty() {
            crate::validate::payload_common(&task.payload)
                .map_err(|e| fail(&e.field, &e.message))?;
            return Ok(());
        }
        let known: Vec<&str> = config
            .runners
            .iter()
            .map(|r| r.runner_type.as_str())
            .collect();
        return Err(fail(
            "runner",
            &format!(
                "unknown runner type `{}`; this config's runners: {}",
                task.runner,
                known.join(", ")
            ),
        ));
    };
    let adapter = make(Metrics::new())
        .create(runner)
        .map_err(|e| CliError::usage(format!("{field_prefix}{e}")))?;
    let ctx = RunContext::new(&task.execution_key, task.correlation())
        .with_execution_key(&task.execution_key);
    crate::validate::task(&*adapter, &ctx, &task.bench, &task.payload)
        .and_then(|_| crate::validate::allowed(runner, &task.bench, &task.payload, true))
        .map_err(|e| fail(&e.field, &e.message))
}

fn tasks_of(
    args: &SubmitArgs,
    config: &WorkerConfig,
    make: &MakeFactory,
) -> Result<Vec<Task>, CliError> {
    let by = submitter();
    let mut tasks = Vec::new();
    if let Some(batch) = &args.batch {
        let base = batch.parent().unwrap_or_else(|| Path::new("."));
        for (i, entry) in read_batch(batch)?.into_iter().enumerate() {
            let at = format!("{} entry {}: ", batch.display(), i + 1);
            let bench: BenchSpec = resolve(entry.bench, base)?;
            let payload: TestPayload = resolve(entry.payload, base)?;
            let runner = crate::validate::runner_type(
                entry.runner.as_deref().or(args.runner.as_deref()),
                &bench,
            )
            .map_err(|e| CliError::usage(format!("{at}{e}")))?;
            let mut task = Task::new(entry.key.unwrap_or_else(fresh_key), runner, bench, payload);
            task.correlation_id = args.correlation_id.clone();
            task.labels = args.labels.iter().cloned().collect();
            task.labels.extend(entry.labels);
            task.submitted_by = Some(by.clone());
            check(config, make, &task, &at)?;
            tasks.push(task);
        }
        if tasks.is_empty() {
            return Err(CliError::usage(format!("{}: no entries", batch.display())));
        }
    } else {
        let (Some(bench_path), Some(payload_path)) = (&args.bench, &args.payload) else {
            return Err(CliError::usage("give --bench and --payload, or --batch"));
        };
        if args.key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(CliError::usage("--key must not be empty"));
        }
        let bench: BenchSpec = load_yaml(bench_path)?;
        let payload: TestPayload = load_yaml(payload_path)?;
        let runner = crate::validate::runner_type(args.runner.as_deref(), &bench)
            .map_err(|e| CliError::usage(e.to_string()))?;
        let mut task = Task::new(
            args.key.clone().unwrap_or_else(fresh_key),
            runner,
            bench,
            payload,
        );
        task.correlation_id = args.correlation_id.clone();
        task.labels = args.labels.iter().cloned().collect();
        task.submitted_by = Some(by);
        check(config, make, &task, "")?;
        tasks.push(task);
    }
    Ok(tasks)
}

pub(super) async fn run(args: SubmitArgs, make: MakeFactory) -> CliResult {
    let Some(config_path) = &args.config else {
        let server = args
            .server
            .clone()
            .ok_or_else(|| CliError::usage("give --config WORKER.yaml or --server URL"))?;
        // The server checks against its runners; here only what needs none.
        let tasks = tasks_of(&args, &WorkerConfig::default(), &make)?;
        let wait = args.wait.then_some(super::remote::WaitOptions {
            timeout: args.timeout,
            junit: args.junit.as_deref(),
            detach_on_interrupt: args.detach_on_interrupt,
        });
        return super::remote::submit(&server, &tasks, args.batch.is_some(), wait).await;
    };
    let config = load_worker_config(config_path, args.queue_url.clone())?;
    let tasks = tasks_of(&args, &config, &make)?;
    let backends = open_backends(&config).await?;
    // The tasks carry this span's trace context, so the worker's trace
    // continues the submitter's.
    let span = tracing::info_span!("submit", tasks = tasks.len());
    let keys: Vec<String> = tasks.iter().map(|t| t.execution_key.clone()).collect();
    if args.batch.is_some() {
        let ids = submit_batch(&backends, &tasks).instrument(span).await?;
        eprintln!("» queued {} executions in one transaction", ids.len());
        for (id, key) in ids.iter().zip(&keys) {
            println!("{id}\t{key}");
        }
    } else {
        match submit(&backends, &tasks[0]).instrument(span).await? {
            SubmitOutcome::Queued { task_id } => println!("{task_id}\t{}", keys[0]),
            SubmitOutcome::Existing { task_id } => {
                eprintln!(
                    "» execution key `{}` was submitted before; nothing new was queued",
                    keys[0]
                );
                println!("{}\t{}", task_id.unwrap_or_else(|| "-".into()), keys[0]);
            }
        }
    }
    if !args.wait {
        return Ok(0);
    }
    follow(&args, &backends, &keys).await
}

/// Wait for `keys`, cancelling them on Ctrl-C or SIGTERM unless detached.
async fn follow(args: &SubmitArgs, backends: &Backends, keys: &[String]) -> CliResult {
    let interrupted = CancellationToken::new();
    let signals = {
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            interrupted.cancel();
        })
    };
    let single = keys.len() == 1;
    let spinner = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    });
    let mut states: BTreeMap<String, ExecState> = BTreeMap::new();
    let records = wait(backends, keys, args.timeout, &interrupted, |record, _| {
        states.insert(record.new.key.clone(), record.state);
        let line = if single {
            format!("» {}", record.state)
        } else {
            format!("» {:<40} {}", record.new.key, record.state)
        };
        match &spinner {
            Some(pb) => {
                pb.suspend(|| eprintln!("{line}"));
                let mut counts: BTreeMap<ExecState, usize> = BTreeMap::new();
                for s in states.values() {
                    *counts.entry(*s).or_default() += 1;
                }
                let table: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
                pb.set_message(table.join(", "));
            }
            None if single || record.state.is_settled() => eprintln!("{line}"),
            None => {}
        }
    })
    .await?;
    signals.abort();
    if let Some(pb) = &spinner {
        pb.finish_and_clear();
    }
    if interrupted.is_cancelled() {
        let open: Vec<&ExecutionRecord> =
            records.iter().filter(|r| !r.state.is_settled()).collect();
        if args.detach_on_interrupt {
            eprintln!("» interrupted: {} execution(s) left running", open.len());
        } else {
            let by = submitter();
            let mut n = 0;
            for record in &open {
                match cancel(backends, &record.new.key, &by).await {
                    Ok(Cancelled::Removed | Cancelled::Requested) => n += 1,
                    Ok(Cancelled::AlreadySettled) => {}
                    Err(e) => eprintln!("» cannot cancel {}: {e}", record.new.key),
                }
            }
            eprintln!("» interrupted: cancelled {n} execution(s) this command submitted");
        }
        return Ok(super::EXIT_CANCELLED);
    }
    super::summary::summary(&records);
    if let Some(path) = &args.junit {
        std::fs::write(path, crate::junit::render(&records))
            .map_err(|e| CliError::infra(format!("cannot write {}: {e}", path.display())))?;
        eprintln!("» JUnit report: {}", path.display());
    }
    if records.len() < keys.len() || records.iter().any(|r| !r.state.is_settled()) {
        eprintln!("» not settled within the --timeout; they keep running");
        return Ok(super::EXIT_INFRA);
    }
    Ok(exit_code(&records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
