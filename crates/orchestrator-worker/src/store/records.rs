//! Execution records: what became of each execution key, for whoever
//! submitted it (`submit --wait`, `status`, `history`) and for people.

use std::collections::BTreeMap;

use runner_core::{ErrorKind, Phase};
use serde::{Deserialize, Serialize};

/// Where an execution stands. The first six are on the way; the rest are
/// settled and final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecState {
    /// On the queue (also between attempts).
    Queued,
    /// Taken by a worker.
    Leased,
    /// Provisioning its environment.
    Provisioning,
    /// The test runs.
    Running,
    /// Collecting artifacts.
    Collecting,
    /// Tearing the environment down.
    TearingDown,
    /// Settled: the test passed.
    Passed,
    /// Settled: the test failed.
    Failed,
    /// Settled: the test ran past its limit.
    TimedOut,
    /// Settled: cancelled.
    Cancelled,
    /// Settled: the infrastructure failed for good (or the test errored).
    Error,
    /// Settled: given up, in the dead-letter queue.
    DeadLettered,
}

impl ExecState {
    /// Every state, in timeline order.
    pub const ALL: [ExecState; 12] = [
        ExecState::Queued,
        ExecState::Leased,
        ExecState::Provisioning,
        ExecState::Running,
        ExecState::Collecting,
        ExecState::TearingDown,
        ExecState::Passed,
        ExecState::Failed,
        ExecState::TimedOut,
        ExecState::Cancelled,
        ExecState::Error,
        ExecState::DeadLettered,
    ];

    /// The name used in the store, the JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecState::Queued => "queued",
            ExecState::Leased => "leased",
            ExecState::Provisioning => "provisioning",
            ExecState::Running => "running",
            ExecState::Collecting => "collecting",
            ExecState::TearingDown => "tearing_down",
            ExecState::Passed => "passed",
            ExecState::Failed => "failed",
            ExecState::TimedOut => "timed_out",
            ExecState::Cancelled => "cancelled",
            ExecState::Error => "error",
            ExecState::DeadLettered => "dead_lettered",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Whether this state is final.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            ExecState::Passed
                | ExecState::Failed
                | ExecState::TimedOut
                | ExecState::Cancelled
                | ExecState::Error
                | ExecState::DeadLettered
        )
    }

    /// The state a phase puts an execution in.
    pub fn of_phase(phase: Phase) -> Self {
        match phase {
            Phase::Provision => ExecState::Provisioning,
            Phase::RunTest => ExecState::Running,
            Phase::CollectArtifacts => ExecState::Collecting,
            Phase::Teardown => ExecState::TearingDown,
        }
    }
}

impl std::fmt::Display for ExecState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a submitter says about a new execution.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewExecution {
    /// The execution key (unique).
    pub key: String,
    /// The runner type.
    pub runner: String,
    /// The bench's name, if it has one.
    pub bench: String,
    /// The payload's name, if it has one.
    pub payload: String,
    /// The correlation id (defaults to the key).
    pub correlation_id: String,
    /// Free labels given at submit.
    pub labels: BTreeMap<String, String>,
    /// Who submitted (user@host, a CI job...).
    pub submitted_by: String,
}

/// One phase's duration within an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTiming {
    /// The phase.
    pub phase: Phase,
    /// How long it took, in milliseconds.
    pub ms: u64,
}

/// An error that ended (or marred) an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The phase it happened in.
    pub phase: Phase,
    /// Its kind.
    pub kind: ErrorKind,
    /// The log-safe message.
    pub message: String,
}

/// One attempt of an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptDetail {
    /// The attempt (1-based).
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: String,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// Each phase that ran, in order.
    pub phases: Vec<PhaseTiming>,
    /// The error that ended it, if any.
    pub error: Option<AttemptError>,
    /// What the worker did with the task afterwards (ack, requeue...).
    pub disposition: String,
}

/// The result of a settled execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedResult {
    /// passed, failed, error, timed_out, cancelled.
    pub status: String,
    /// The test's exit code, when it had one.
    pub exit_code: Option<i32>,
    /// How long the test ran, in milliseconds.
    pub duration_ms: u64,
    /// Test counts (from the suite's JUnit when it wrote one).
    pub counts: Option<runner_core::TestCounts>,
    /// A short diagnosis from the layer that failed.
    pub diagnosis: Option<String>,
}

/// One artifact of a settled execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedArtifact {
    /// Its name (relative).
    pub name: String,
    /// `file:///...` or `s3://...`.
    pub uri: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex sha256.
    pub sha256: String,
    /// log or file.
    pub kind: String,
}

/// One test case from the suite's own JUnit report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedCase {
    /// The suite (testsuite name).
    pub suite: String,
    /// The class name, if any.
    pub classname: String,
    /// The case name.
    pub name: String,
    /// passed, failed, error, skipped.
    pub status: String,
    /// Seconds.
    pub time_s: f64,
    /// The failure message, if any.
    pub message: Option<String>,
}

/// A state change on an execution's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The state entered.
    pub state: ExecState,
    /// The attempt, when one is running.
    pub attempt: Option<u32>,
    /// The worker, when one holds it.
    pub worker: Option<String>,
    /// What happened, log-safe.
    pub message: String,
}

/// Everything known about one execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// The submitter's view.
    #[serde(flatten)]
    pub new: NewExecution,
    /// The current state.
    pub state: ExecState,
    /// When it was submitted.
    pub created_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// When it settled.
    pub settled_ms: Option<u64>,
    /// A cancel was asked for.
    pub cancel_requested: bool,
    /// Every attempt that ended.
    pub attempts: Vec<AttemptDetail>,
    /// The result, once settled with one.
    pub result: Option<RecordedResult>,
    /// The artifacts of the last attempt.
    pub artifacts: Vec<RecordedArtifact>,
    /// The suite's own test cases.
    pub cases: Vec<RecordedCase>,
    /// Why it ended without a result (error, dead letter), if it did.
    pub error: Option<String>,
    /// The state timeline (only in [`crate::store::Store::execution`]).
    #[serde(default)]
    pub timeline: Vec<TimelineEvent>,
}

/// A change to an execution record.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordUpdate {
    /// Entered a state (not a settled one). Creates a minimal record when
    /// the execution was queued without one (a task sent to the queue
    /// directly).
    State {
        /// Who and what, for a missing record.
        new: NewExecution,
        /// The state.
        state: ExecState,
        /// When.
        at_ms: u64,
        /// The attempt.
        attempt: Option<u32>,
        /// The worker.
        worker: Option<String>,
        /// What happened.
        message: String,
    },
    /// An attempt ended without settling the execution (requeued).
    AttemptEnded {
        /// The execution key.
        key: String,
        /// The attempt.
        detail: AttemptDetail,
        /// The state it goes back to (queued).
        state: ExecState,
    },
    /// The execution settled.
    Settled(Box<Settlement>),
    /// A settled execution is on its way again (a dead letter replayed).
    Reopened {
        /// The execution key.
        key: String,
        /// Why.
        message: String,
    },
    /// A cancel was asked for.
    CancelRequested {
        /// The execution key.
        key: String,
        /// When.
        at_ms: u64,
        /// Who asked.
        by: String,
    },
}

impl RecordUpdate {
    /// The execution key it changes.
    pub fn key(&self) -> &str {
        match self {
            RecordUpdate::State { new, .. } => &new.key,
            RecordUpdate::AttemptEnded { key, .. }
            | RecordUpdate::CancelRequested { key, .. }
            | RecordUpdate::Reopened { key, .. } => key,
            RecordUpdate::Settled(s) => &s.new.key,
        }
    }
}

/// The end of an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// Who and what, for a missing record.
    pub new: NewExecution,
    /// The final state.
    pub state: ExecState,
    /// When.
    pub at_ms: u64,
    /// The last attempt, when one ran.
    pub attempt: Option<AttemptDetail>,
    /// The result.
    pub result: Option<RecordedResult>,
    /// The artifacts.
    pub artifacts: Vec<RecordedArtifact>,
    /// The suite's own cases.
    pub cases: Vec<RecordedCase>,
    /// Why it ended without a result.
    pub error: Option<String>,
}

/// Filters of `history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryFilter {
    /// Only this correlation id.
    pub correlation_id: Option<String>,
    /// Only this runner type.
    pub runner: Option<String>,
    /// Only this state.
    pub state: Option<ExecState>,
    /// Only executions created at or after this time (ms).
    pub since_ms: Option<u64>,
    /// Only executions created before this time (ms): the page cursor.
    pub before_ms: Option<u64>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// What submitting an execution did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// A new record: the caller queues the task.
    New,
    /// The key existed already: nothing was queued again.
    Existing(Box<ExecutionRecord>),
}
