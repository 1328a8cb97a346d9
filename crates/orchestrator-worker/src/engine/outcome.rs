//! What one attempt came to: the result, the failed phase, phase timings.

use runner_core::{ArtifactBundle, ErrorKind, Phase, PhaseMarker, RunnerError, TestResult};
use serde::{Deserialize, Serialize};

use crate::layers::panic::is_panic;
use crate::policy::Ending;
pub use crate::store::JournalEnd;
use crate::store::PhaseTiming;

/// A phase that failed, as recorded in an outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseFailure {
    /// The phase.
    pub phase: Phase,
    /// The kind the backend (or a layer) gave.
    pub kind: ErrorKind,
    /// The log-safe message with ids.
    pub message: String,
    /// Whether a panic caused it.
    pub panicked: bool,
}

impl PhaseFailure {
    pub(super) fn from_error<P: PhaseMarker>(err: &RunnerError<P>) -> Self {
        Self {
            phase: P::PHASE,
            kind: err.kind(),
            // The message and its causes once; the phase and kind are fields.
            message: err.detail(),
            panicked: is_panic(err),
        }
    }
}

/// Everything that happened to one execution attempt.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecutionOutcome {
    /// The execution id used.
    pub execution_id: String,
    /// The test result, when the test ran.
    pub result: Option<TestResult>,
    /// The infrastructure failure that ended it, if any.
    pub failure: Option<PhaseFailure>,
    /// What was collected.
    pub artifacts: Option<ArtifactBundle>,
    /// Why collection failed, if it did (the result stands).
    pub artifact_error: Option<PhaseFailure>,
    /// Why teardown failed, if it did (the handle went to the reaper).
    pub teardown_error: Option<PhaseFailure>,
    /// How many times teardown was called.
    pub teardown_calls: u32,
    /// Whether a journaled handle was reused instead of provisioning.
    pub reused_handle: bool,
    /// How many provision calls were made.
    pub provision_calls: u32,
    /// Teardown was skipped: another worker took the handle over (this
    /// worker's lease was lost and the task redelivered).
    pub handed_over: bool,
    /// Nothing ran: a live worker still holds this execution key's handle
    /// (the task was redelivered while its worker still finishes it).
    pub held_by: Option<String>,
    /// A reused handle was found gone and replaced by a new one.
    pub replaced_gone_handle: bool,
    /// Each phase that ran, in order, with its duration.
    pub phases: Vec<PhaseTiming>,
    /// When the attempt started (ms since the epoch).
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// The journal's end still to write, when the caller writes it
    /// ([`Execution::journal_end_by_caller`](super::Execution::journal_end_by_caller)).
    #[serde(skip)]
    pub journal_end: Option<JournalEnd>,
}

impl ExecutionOutcome {
    pub(super) fn timed(&mut self, phase: Phase, since: std::time::Instant) {
        self.phases.push(PhaseTiming {
            phase,
            ms: u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    /// The policy's view of this outcome.
    pub fn ending(&self, shutting_down: bool) -> Ending {
        if let Some(worker) = &self.held_by {
            return Ending::HeldElsewhere {
                worker: worker.clone(),
            };
        }
        match (&self.result, &self.failure) {
            (_, Some(f)) => Ending::Failed {
                phase: f.phase,
                kind: f.kind,
                panicked: f.panicked,
                shutting_down,
            },
            (Some(r), None) => Ending::Result {
                status: r.status,
                shutting_down,
            },
            (None, None) => Ending::Failed {
                phase: Phase::RunTest,
                kind: ErrorKind::Permanent,
                panicked: false,
                shutting_down,
            },
        }
    }
}
