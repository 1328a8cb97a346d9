//! `dlq`: the dead-letter queue.

use std::path::PathBuf;

use clap::Subcommand;

use super::{CliError, CliResult, load_worker_config, open_backends};

/// Arguments of `dlq`.
#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    /// The worker config (YAML) naming the queue (before or after the action).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The SQS queue whose dead-letter queue to use (overrides `queue.sqs.url`).
    #[arg(long, global = true, env = "ORCHESTRATOR_QUEUE_URL")]
    queue_url: Option<String>,
    /// Ask this API server instead (`ORCHESTRATOR_TOKEN` holds the token;
    /// replay needs the `admin` scope); `--config` wins when both are given.
    #[arg(long, global = true, env = "ORCHESTRATOR_SERVER")]
    server: Option<String>,
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
    if args.config.is_none()
        && let Some(server) = &args.server
    {
        return remote(server, args.action).await;
    }
    let config = args
        .config
        .ok_or_else(|| CliError::usage("dlq needs --config WORKER.yaml (or --server URL)"))?;
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
            let letter = queue.dlq_show(&id).await?;
            let task = queue.dlq_replay(&id).await?;
            // A queue that is not its own store leaves the record to us.
            if !queue.keeps_records()
                && let Ok(t) = crate::task::Task::parse(&letter.body)
            {
                backends
                    .store
                    .record(&[crate::store::RecordUpdate::Reopened {
                        key: t.execution_key,
                        message: format!("replayed from the dead-letter queue ({id})"),
                    }])
                    .await?;
            }
            println!("replayed dead letter {id} as task {task}");
        }
    }
    Ok(0)
}

async fn remote(server: &str, action: DlqAction) -> CliResult {
    let remote = super::remote::Remote::new(server)?;
    let json = |v: &serde_json::Value| {
        serde_json::to_string_pretty(v).map_err(|e| CliError::infra(e.to_string()))
    };
    match action {
        DlqAction::List { limit } => {
            let doc = remote
                .get(&format!("/v1/dlq?limit={limit}"), "dlq list")
                .await?;
            let letters: Vec<crate::queue::DeadLetter> =
                serde_json::from_value(doc["dead_letters"].clone())
                    .map_err(|e| CliError::infra(format!("dlq list: unexpected answer: {e}")))?;
            for entry in letters {
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
            let path = format!("/v1/dlq/{}", crate::percent::encode_component(&id));
            let doc = remote.get(&path, "dlq show").await?;
            println!("{}", json(&doc["dead_letter"])?);
        }
        DlqAction::Replay { id } => {
            let path = format!("/v1/dlq/{}/replay", crate::percent::encode_component(&id));
            let doc = remote
                .post(&path, &serde_json::json!({}), "dlq replay")
                .await?;
            println!(
                "replayed dead letter {id} as task {}",
                doc["task_id"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(0)
}
