//! `submit` and `dlq`: putting tasks on the queue and taking them back.

use std::path::PathBuf;

use clap::Subcommand;
use tracing::Instrument;

use super::{CliError, CliResult, load_worker_config, load_yaml, open_backends};
use crate::submit::{SubmitOutcome, submit as submit_task};
use crate::task::Task;

/// Arguments of `submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
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
}

/// Who submits: `user@host`.
pub(crate) fn submitter() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", crate::serve::hostname())
}

/// A fresh execution key.
pub(crate) fn fresh_key() -> String {
    format!("exec-{}-{:08x}", crate::store::now_ms(), fastrand::u32(..))
}

pub(super) async fn submit(args: SubmitArgs) -> CliResult {
    if args.runner.trim().is_empty() {
        return Err(CliError::usage("--runner must name a runner type"));
    }
    if args.key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return Err(CliError::usage("--key must not be empty"));
    }
    let worker_config = load_worker_config(&args.config, args.queue_url)?;
    let mut task = Task::new(
        args.key.unwrap_or_else(fresh_key),
        args.runner,
        load_yaml(&args.bench)?,
        load_yaml(&args.payload)?,
    );
    task.correlation_id = args.correlation_id;
    task.submitted_by = Some(submitter());
    let backends = open_backends(&worker_config).await?;
    // The task carries this span's trace context (SQS message attributes),
    // so the worker's trace continues the submitter's.
    let span = tracing::info_span!("submit", execution_key = %task.execution_key, correlation_id = %task.correlation());
    match submit_task(&backends, &task).instrument(span).await? {
        SubmitOutcome::Queued { task_id } => println!("{task_id}\t{}", task.execution_key),
        SubmitOutcome::Existing { task_id } => {
            eprintln!(
                "» execution key `{}` was submitted before; nothing new was queued",
                task.execution_key
            );
            println!(
                "{}\t{}",
                task_id.unwrap_or_else(|| "-".into()),
                task.execution_key
            );
        }
    }
    Ok(0)
}

/// Arguments of `dlq`.
#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    /// The worker config (YAML) naming the queue (before or after the action).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The SQS queue whose dead-letter queue to use (overrides `queue.sqs.url`).
    #[arg(long, global = true, env = "ORCHESTRATOR_QUEUE_URL")]
    queue_url: Option<String>,
    #[command(subcommand)]
    action: DlqAction,
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

pub(super) async fn dlq(args: DlqArgs) -> CliResult {
    let config = args
        .config
        .ok_or_else(|| CliError::usage("dlq needs --config WORKER.yaml"))?;
    let worker_config = load_worker_config(&config, args.queue_url)?;
    let backends = open_backends(&worker_config).await?;
    let queue = &backends.queue;
    match args.action {
        DlqAction::List { limit } => {
            for entry in queue.dlq_list(limit).await? {
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
            let entry = queue.dlq_show(&id).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&entry).map_err(|e| CliError::infra(e.to_string()))?
            );
        }
        DlqAction::Replay { id } => {
            let task = queue.dlq_replay(&id).await?;
            println!("replayed dead letter {id} as task {task}");
        }
    }
    Ok(0)
}
