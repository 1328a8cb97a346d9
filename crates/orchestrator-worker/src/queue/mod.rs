//! Task queues behind one trait. Delivery is at least once: a lease that
//! expires (its worker died) makes the task visible again.

mod sqlite;
#[cfg(feature = "sqs")]
pub mod sqs;

use std::time::Duration;

use runner_core::{ErrorKind, Phase};
use serde::{Deserialize, Serialize};

pub use sqlite::{JournalEntry, JournalState, SqliteStore};

use crate::task::Task;

/// A queue operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The lease was lost (expired and taken by another worker, or finished).
    #[error("lease on task {task_id} was lost (expired or already settled)")]
    LeaseLost {
        /// The task.
        task_id: String,
    },
    /// No such entry.
    #[error("no {what} with id {id}")]
    NotFound {
        /// What was looked up.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The store failed.
    #[error("queue store error: {0}")]
    Store(String),
}

/// One attempt's end, kept in the task's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt (1-based).
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: String,
    /// The phase that failed, if one did.
    pub phase: Option<Phase>,
    /// The error kind, if an error ended it.
    pub kind: Option<ErrorKind>,
    /// What happened, log-safe.
    pub message: String,
    /// When (milliseconds since the Unix epoch).
    pub at_ms: u64,
}

/// A leased task: invisible to other workers until settled or expired.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The task's id in its queue.
    pub task_id: String,
    /// The raw message body (a [`Task`] as JSON, unless the sender erred).
    pub body: String,
    /// This delivery's attempt number (1-based).
    pub attempt: u32,
    /// Proves this lease is still the current one when settling.
    pub token: String,
    /// Earlier attempts.
    pub history: Vec<AttemptRecord>,
    /// Message attributes (SQS): the submitter's W3C trace context.
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// A task in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The entry's id.
    pub id: String,
    /// The task it came from.
    pub task_id: String,
    /// The raw body.
    pub body: String,
    /// Why it was given up.
    pub reason: String,
    /// Every attempt.
    pub history: Vec<AttemptRecord>,
    /// When (milliseconds since the Unix epoch).
    pub created_ms: u64,
}

/// How many tasks are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Visible now.
    pub ready: u64,
    /// Waiting for a retry delay.
    pub delayed: u64,
    /// Leased by a worker.
    pub leased: u64,
    /// Acked.
    pub done: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

/// A durable task queue with leases, delayed retry and a dead-letter queue.
#[runner_core::async_trait]
pub trait TaskQueue: Send + Sync + std::fmt::Debug + 'static {
    /// Enqueue a task; returns its id.
    async fn submit(&self, task: &Task) -> Result<String, QueueError> {
        self.submit_raw(&task.to_json()).await
    }
    /// Enqueue a raw body as given (bad bodies are dead-lettered when leased).
    async fn submit_raw(&self, body: &str) -> Result<String, QueueError>;
    /// Take the next visible task for `visibility`, or `None`.
    async fn lease(&self, worker: &str, visibility: Duration) -> Result<Option<Lease>, QueueError>;
    /// Keep a lease for another `visibility` (a heartbeat for long tests).
    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<(), QueueError>;
    /// The task is done; `outcome` (JSON) is kept with it.
    async fn ack(&self, lease: &Lease, outcome: &str) -> Result<(), QueueError>;
    /// Make the task visible again after `delay`. `count_attempt: false` gives
    /// the attempt back (the worker was shutting down, the test never failed).
    async fn requeue(
        &self,
        lease: &Lease,
        delay: Duration,
        record: AttemptRecord,
        count_attempt: bool,
    ) -> Result<(), QueueError>;
    /// Move the task to the dead-letter queue.
    async fn dead_letter(
        &self,
        lease: &Lease,
        reason: &str,
        record: AttemptRecord,
    ) -> Result<(), QueueError>;
    /// Counts by state.
    async fn depth(&self) -> Result<QueueDepth, QueueError>;
    /// The newest dead letters, at most `limit`.
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
    /// One dead letter.
    async fn dlq_show(&self, id: &str) -> Result<DeadLetter, QueueError>;
    /// Put a dead letter back as a fresh task; returns the new task id.
    async fn dlq_replay(&self, id: &str) -> Result<String, QueueError>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The queue a worker config names, and the local store for its journal:
/// SQS when `queue.sqs` is set, else the SQLite queue in `queue.path`.
pub async fn open(
    config: &crate::config::WorkerConfig,
) -> Result<(SqliteStore, std::sync::Arc<dyn TaskQueue>), String> {
    let store = SqliteStore::open(&config.queue.path).map_err(|e| e.to_string())?;
    match &config.queue.sqs {
        None => {
            let queue: std::sync::Arc<dyn TaskQueue> = std::sync::Arc::new(store.clone());
            Ok((store, queue))
        }
        #[cfg(feature = "sqs")]
        Some(section) => {
            let sdk = runner_s3::load_sdk_config(section.region.as_deref()).await;
            let client = aws_sdk_sqs::Client::new(&sdk);
            let queue = sqs::SqsQueue::open(client, section)
                .await
                .map_err(|e| e.to_string())?;
            Ok((store, std::sync::Arc::new(queue)))
        }
        #[cfg(not(feature = "sqs"))]
        Some(_) => {
            Err("queue.sqs is set, but this build has no SQS support (cargo feature `sqs`)".into())
        }
    }
}
