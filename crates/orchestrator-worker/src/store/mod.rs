//! The store: the worker's state that is not the queue. The journal of
//! handles, the worker registry and heartbeats, execution records, store
//! locks and leak sightings.
//!
//! Two implementations: SQLite ([`SqliteStore`], one file, one machine, the
//! default) and PostgreSQL ([`PgStore`], a fleet). Each also implements the
//! task queue ([`crate::queue::TaskQueue`]); SQS implements the queue only
//! and is paired with a shared store. [`crate::backends::open`] picks them
//! from the worker config and refuses a shared queue with a machine-local
//! store.

pub mod postgres;
pub mod records;
pub mod sqlite;

use std::collections::BTreeMap;
use std::time::Duration;

use runner_core::RunnerHandle;
use serde::{Deserialize, Serialize};

pub use postgres::PgStore;
pub use records::{
    AttemptDetail, AttemptError, Created, ExecState, ExecutionRecord, HistoryFilter, NewExecution,
    PhaseTiming, RecordUpdate, RecordedArtifact, RecordedCase, RecordedResult, Settlement,
    TimelineEvent,
};
pub use sqlite::SqliteStore;

/// A queue or store operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
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
    /// Execution keys submitted before (a batch is all or nothing).
    #[error("execution key(s) already submitted: {}", keys.join(", "))]
    Exists {
        /// The keys.
        keys: Vec<String>,
    },
    /// The store cannot be reached now (connection refused or lost, pool
    /// exhausted): worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database holds a schema this program does not know.
    #[error(
        "the database schema is version {found}, newer than this program's {known}: \
         upgrade the orchestrator (it never downgrades a schema)"
    )]
    SchemaTooNew {
        /// The version found.
        found: i64,
        /// The newest this program knows.
        known: i64,
    },
    /// The configuration of the queue or store is wrong (a bad URL, a
    /// refused login, a shared queue with a local store).
    #[error("{0}")]
    Config(String),
    /// Any other failure.
    #[error("store error: {0}")]
    Store(String),
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The old name, kept for callers of the queue API.
pub type QueueError = StoreError;

/// The state of a journaled handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalState {
    /// Provisioned and not yet released.
    Live,
    /// Torn down.
    Released,
    /// Teardown failed; the reaper retries where the backend allows it.
    TeardownFailed,
}

impl JournalState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalState::Live => "live",
            JournalState::Released => "released",
            JournalState::TeardownFailed => "teardown_failed",
        }
    }

    /// Parse a stored name (an unknown one reads as live: never lose a handle).
    pub fn parse(s: &str) -> Self {
        match s {
            "released" => JournalState::Released,
            "teardown_failed" => JournalState::TeardownFailed,
            _ => JournalState::Live,
        }
    }
}

/// One journaled handle.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// The entry's id in the store.
    pub id: i64,
    /// The execution key it belongs to.
    pub execution_key: String,
    /// The handle.
    pub handle: RunnerHandle,
    /// The worker that holds it.
    pub owner: String,
    /// Live, released or teardown failed.
    pub state: JournalState,
    /// Whether the owner heartbeats (as of the read, by the store's clock).
    pub owner_alive: bool,
    /// Teardowns the reaper tried after the engine's failed.
    pub reap_attempts: u32,
    /// The last note (why teardown failed).
    pub note: Option<String>,
}

/// What a journal claim found for an execution key.
#[derive(Debug, Clone)]
pub enum Claim {
    /// No live handle: provision a new one.
    Fresh,
    /// A live handle whose owner is gone (or is this worker): now this
    /// worker's to reuse.
    Reuse(Box<JournalEntry>),
    /// A live handle of a worker that still heartbeats: leave it alone.
    HeldBy {
        /// The live owner.
        worker: String,
    },
}

/// A worker's heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBeat {
    /// Its id.
    pub id: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The runner types it serves.
    pub runners: Vec<String>,
    /// Executions it runs now.
    pub in_flight: u32,
}

/// A worker as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its last heartbeat.
    #[serde(flatten)]
    pub beat: WorkerBeat,
    /// When it first registered (ms since the epoch).
    pub started_ms: u64,
    /// Its last heartbeat (ms since the epoch).
    pub heartbeat_ms: u64,
    /// Milliseconds since that heartbeat, by the store's clock.
    pub heartbeat_age_ms: u64,
    /// Whether it counts as alive (heartbeat younger than `stale_after`).
    pub alive: bool,
}

/// The end of a journaled handle, not yet written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEnd {
    /// The journal entry.
    pub entry: i64,
    /// Released, or left for the reaper.
    pub state: JournalState,
    /// Why, when teardown failed.
    pub note: Option<String>,
}

/// What settling an execution writes besides its record: the end of its
/// journal entry and the ack of its task. Where the queue, the journal and
/// the records are one database, they go in the record's transaction
/// ([`Store::record_settling`]): one commit instead of three.
#[derive(Debug, Clone, Default)]
pub struct SettleOps {
    /// The journal entry's end.
    pub journal_end: Option<JournalEnd>,
    /// The lease to ack, and the outcome stored with the task.
    pub ack: Option<(crate::queue::Lease, String)>,
}

/// The store: journal, workers, locks, leak sightings and execution records.
///
/// Times that decide liveness (heartbeats, lock expiry) are the store's own
/// clock, so machines with skewed clocks agree.
#[runner_core::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    /// Which open database this is: the same value for every clone of one
    /// opened store, and for the queue of the same database
    /// ([`crate::queue::TaskQueue::database_id`]).
    fn database_id(&self) -> Option<usize> {
        None
    }

    /// Whether workers on other machines share it (PostgreSQL), or it is a
    /// file of this machine (SQLite).
    fn is_shared(&self) -> bool;

    // ---- journal ---------------------------------------------------------

    /// Look for a live handle of `key` and take it over when its owner
    /// stopped heartbeating for `stale_after` (or is `worker` itself).
    async fn journal_claim(
        &self,
        key: &str,
        worker: &str,
        stale_after: Duration,
    ) -> Result<Claim, StoreError>;

    /// Record a freshly provisioned handle before it is used; returns the
    /// entry id. Fails with [`StoreError::Store`] when `key` already has a
    /// live handle (another worker provisioned it concurrently).
    async fn journal_provisioned(
        &self,
        key: &str,
        handle: &RunnerHandle,
        worker: &str,
    ) -> Result<i64, StoreError>;

    /// Record the end of entry `id`: released, or teardown failed with `note`.
    async fn journal_end(
        &self,
        id: i64,
        state: JournalState,
        note: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Take entry `id` over from `from` (the reaper, before tearing an
    /// orphan down); false when someone else took it first.
    async fn journal_take(&self, id: i64, from: &str, to: &str) -> Result<bool, StoreError>;

    /// Count a reaper teardown that failed on entry `id`.
    async fn journal_reap_failed(&self, id: i64, note: &str) -> Result<(), StoreError>;

    /// The entry `id`, if it exists.
    async fn journal_get(
        &self,
        id: i64,
        stale_after: Duration,
    ) -> Result<Option<JournalEntry>, StoreError>;

    /// Every entry not yet released, with its owner's liveness.
    async fn journal_open_entries(
        &self,
        stale_after: Duration,
    ) -> Result<Vec<JournalEntry>, StoreError>;

    // ---- workers ---------------------------------------------------------

    /// Record that a worker is alive now.
    async fn worker_heartbeat(&self, beat: &WorkerBeat) -> Result<(), StoreError>;

    /// Remove a worker that stopped cleanly.
    async fn worker_gone(&self, worker: &str) -> Result<(), StoreError>;

    /// Every registered worker.
    async fn workers(&self, stale_after: Duration) -> Result<Vec<WorkerInfo>, StoreError>;

    /// Forget workers silent for longer than `older_than` that hold no
    /// open journal entry; returns how many.
    async fn prune_workers(&self, older_than: Duration) -> Result<u64, StoreError>;

    // ---- locks -----------------------------------------------------------

    /// Take (or renew) lock `name` for `holder` for `ttl`; false when
    /// another holder has it and it has not expired.
    async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Give lock `name` back (only when `holder` has it).
    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    // ---- leak sightings --------------------------------------------------

    /// Note that resources `ids` were seen unheld now; returns how long
    /// ago each was first seen (a resource of unknown age gets the grace
    /// counted from its first sighting). Sightings not in `ids` for
    /// `runner_type` are forgotten (the resource went away). With `record`
    /// false (a dry run) nothing is written: only known sightings count.
    async fn leak_sightings(
        &self,
        runner_type: &str,
        ids: &[String],
        record: bool,
    ) -> Result<BTreeMap<String, Duration>, StoreError>;

    // ---- execution records -----------------------------------------------

    /// Create the record of a new execution, or find the existing one.
    async fn create_execution(&self, new: &NewExecution) -> Result<Created, StoreError>;

    /// Create many records in one transaction, all or nothing: an existing
    /// key fails the batch (listed in the error).
    async fn create_executions(&self, batch: &[NewExecution]) -> Result<(), StoreError>;

    /// Forget a record whose task could not be queued after all.
    async fn delete_execution(&self, key: &str) -> Result<(), StoreError>;

    /// Apply updates in order, in one transaction.
    async fn record(&self, updates: &[RecordUpdate]) -> Result<(), StoreError>;

    /// Whether [`Store::record_settling`] can settle in the records'
    /// transaction (SQLite); `false` (the default) where it cannot.
    fn settles_with_records(&self) -> bool {
        false
    }

    /// Apply `updates`, then `ops`, in one transaction: all or nothing (a
    /// lost lease undoes the records too). `Ok(false)`: this store cannot
    /// ([`Store::settles_with_records`]); nothing was written, and the
    /// caller writes them one by one. Only for a store that is also the
    /// queue and the journal ([`Store::database_id`]).
    async fn record_settling(
        &self,
        updates: &[RecordUpdate],
        ops: &[SettleOps],
    ) -> Result<bool, StoreError> {
        let _ = (updates, ops);
        Ok(false)
    }

    /// One execution with its timeline.
    async fn execution(&self, key: &str) -> Result<Option<ExecutionRecord>, StoreError>;

    /// Executions matching `filter`, newest first (no timelines).
    async fn executions(&self, filter: &HistoryFilter) -> Result<Vec<ExecutionRecord>, StoreError>;

    /// Of `keys`, those whose cancel was asked for.
    async fn cancel_requested(&self, keys: &[String]) -> Result<Vec<String>, StoreError>;

    /// Delete settled records (and done tasks) older than `older_than`.
    async fn prune_executions(&self, older_than: Duration) -> Result<u64, StoreError>;

    /// Whether the store answers (for readiness checks).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `d` in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
