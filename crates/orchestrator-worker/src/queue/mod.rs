//! Task queues behind one trait. Delivery is at least once: a lease that
//! expires (its worker died) makes the task visible again.

#[cfg(feature = "sqs")]
pub mod sqs;

use std::time::Duration;

use runner_core::{ErrorKind, Phase};
use serde::{Deserialize, Serialize};

use crate::store::NewExecution;
pub use crate::store::{JournalEntry, JournalState, QueueError, SqliteStore, StoreError, now_ms};
use crate::task::Task;

/// What a submit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The task's id in its queue (the existing task's, or empty when the
    /// execution already settled).
    pub task_id: String,
    /// The execution key existed already: nothing new was queued.
    pub existing: bool,
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
    /// Whether the attempt counts against the runner's retries (a release
    /// at shutdown or a deferral does not).
    #[serde(default = "counted_default")]
    pub counted: bool,
}

fn counted_default() -> bool {
    true
}

/// A leased task: invisible to other workers until settled or expired.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The task's id in its queue.
    pub task_id: String,
    /// The raw message body (a [`Task`] as JSON, unless the sender erred).
    pub body: String,
    /// Why the body could not even be read as text (bytes that are not
    /// UTF-8): such a task is dead-lettered with this reason.
    pub body_error: Option<String>,
    /// This delivery's attempt number (1-based): deliveries, less those
    /// given back (releases, deferrals). A worker that dies mid-run counts.
    pub attempt: u32,
    /// Earlier attempts that ended and count against the runner's
    /// retries (failures); deliveries whose worker died are not among them
    /// where the queue keeps a history (SQLite, PostgreSQL). SQS keeps
    /// none, so there it is `attempt - 1`.
    pub failures: u32,
    /// Proves this lease is still the current one when settling.
    pub token: String,
    /// Earlier attempts.
    pub history: Vec<AttemptRecord>,
    /// Message attributes (SQS): the submitter's W3C trace context.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// No live journal entry existed for the task's execution key when it
    /// was leased, read by the lease's own statement (a queue that is its
    /// own store: SQLite, PostgreSQL). The worker then skips the journal
    /// claim before provisioning, one store round trip per task, when the
    /// queue and its store are one database ([`TaskQueue::database_id`]).
    /// `false` where the queue cannot tell (SQS).
    pub journal_clear: bool,
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

impl QueueDepth {
    /// Count `n` tasks stored in `state`, visible now or not.
    pub fn add(&mut self, state: &str, visible: bool, n: u64) {
        match (state, visible) {
            ("ready", true) => self.ready += n,
            ("ready", false) => self.delayed += n,
            // An expired lease is as good as ready.
            ("leased", true) => self.ready += n,
            ("leased", false) => self.leased += n,
            ("done", _) => self.done += n,
            ("dead", _) => self.dead += n,
            _ => {}
        }
    }
}

/// A durable task queue with leases, delayed retry and a dead-letter queue.
#[runner_core::async_trait]
pub trait TaskQueue: Send + Sync + std::fmt::Debug + 'static {
    /// Whether [`TaskQueue::submit`] also creates the execution record, in
    /// the same transaction (a queue that is its own store). Otherwise the
    /// caller creates it in the store first (see [`crate::submit`]).
    fn keeps_records(&self) -> bool {
        false
    }

    /// Which open database this queue reads ([`Store::database_id`] of
    /// the same value: one database, so what a lease says of the journal
    /// holds for the store). `None` for a queue that is not a database.
    ///
    /// [`Store::database_id`]: crate::store::Store::database_id
    fn database_id(&self) -> Option<usize> {
        None
    }

    /// Enqueue a task. A queue that keeps records creates `new`'s record
    /// with it, and returns the existing execution's task when the key was
    /// submitted before.
    async fn submit(&self, task: &Task, new: &NewExecution) -> Result<Submitted, QueueError> {
        let _ = new;
        Ok(Submitted {
            task_id: self.submit_raw(&task.to_json()).await?,
            existing: false,
        })
    }

    /// Enqueue a task with the record its fields describe (tests, tools;
    /// see [`crate::submit::submit`] for the full rule with a separate store).
    async fn enqueue(&self, task: &Task) -> Result<Submitted, QueueError> {
        self.submit(task, &crate::report::new_execution(task)).await
    }

    /// Enqueue many tasks, all or nothing where the queue can (SQL queues:
    /// one transaction; an execution key that exists fails the batch).
    async fn submit_batch(
        &self,
        tasks: &[(Task, NewExecution)],
    ) -> Result<Vec<String>, QueueError> {
        let mut ids = Vec::with_capacity(tasks.len());
        for (task, new) in tasks {
            ids.push(self.submit(task, new).await?.task_id);
        }
        Ok(ids)
    }

    /// Enqueue a raw body as given (bad bodies are dead-lettered when leased).
    async fn submit_raw(&self, body: &str) -> Result<String, QueueError>;
    /// Take the next visible task for `visibility`, or `None`.
    async fn lease(&self, worker: &str, visibility: Duration) -> Result<Option<Lease>, QueueError>;
    /// Take up to `max` visible tasks at once (one round trip where the
    /// queue can).
    async fn lease_many(
        &self,
        worker: &str,
        visibility: Duration,
        max: usize,
    ) -> Result<Vec<Lease>, QueueError> {
        let _ = max;
        Ok(self.lease(worker, visibility).await?.into_iter().collect())
    }
    /// Wait until work may be there, at most `max_wait`: a queue that can
    /// be told of new tasks (PostgreSQL's LISTEN) returns as soon as one is
    /// submitted; the others just sleep.
    async fn wait_for_work(&self, max_wait: Duration) {
        tokio::time::sleep(max_wait).await;
    }
    /// Remove a task of `execution_key` that no worker holds yet; returns
    /// whether one was removed.
    async fn remove_queued(&self, execution_key: &str) -> Result<bool, QueueError> {
        let _ = execution_key;
        Ok(false)
    }
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
