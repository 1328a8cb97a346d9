//! The outcome policy: one table from how an execution ended to what
//! happens to its task.
//!
//! | how the execution ended | attempts left | disposition |
//! |---|---|---|
//! | a test result: passed, failed, error, timed_out | any | **ack** (the result is recorded) |
//! | a test result: cancelled by worker shutdown | any | **release** (requeue now, attempt not counted) |
//! | a test result: cancelled otherwise | yes / no | **requeue** with backoff / **dead letter** |
//! | a retryable infrastructure error (transient, timeout, capacity) | yes | **requeue** with backoff |
//! | a retryable infrastructure error | no | **dead letter** (attempts exhausted) |
//! | a permanent error (permanent, invalid_spec, a panic, cancelled) | any | **dead letter** at once |
//! | a bad task (not JSON, missing fields, unknown runner type) | any | **dead letter** at once |
//! | nothing ran: a live worker still holds the execution's handle | any | **defer**: requeue after a delay, attempt not counted |
//!
//! A teardown failure never changes the disposition: the handle is left in
//! the journal for the reaper. An artifact failure after a result is
//! recorded beside the result and the task is still acked.

use runner_core::{ErrorKind, Phase, TestStatus};
use serde::{Deserialize, Serialize};

/// What becomes of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "disposition")]
pub enum Disposition {
    /// Done: remove it from the queue.
    Ack,
    /// Try again after `delay`.
    Requeue {
        /// How long it stays invisible.
        delay_ms: u64,
    },
    /// Put it back at once without counting the attempt (worker shutdown).
    Release,
    /// Put it back after `delay` without counting the attempt: another
    /// worker, still alive, holds the execution's handle.
    Defer {
        /// How long it stays invisible.
        delay_ms: u64,
    },
    /// Give up: move it to the dead-letter queue.
    DeadLetter {
        /// Why.
        reason: String,
    },
}

/// How an execution ended, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The test ran to a result.
    Result {
        /// Its status.
        status: TestStatus,
        /// Whether the worker was shutting down (a cancelled run is released).
        shutting_down: bool,
    },
    /// The infrastructure failed.
    Failed {
        /// In which phase.
        phase: Phase,
        /// How the backend classified it.
        kind: ErrorKind,
        /// Whether a panic caused it.
        panicked: bool,
        /// Whether the worker was shutting down.
        shutting_down: bool,
    },
    /// The task itself is unusable.
    BadTask,
    /// Nothing ran: a live worker holds the execution's handle.
    HeldElsewhere {
        /// That worker.
        worker: String,
    },
}

/// Retry delays (shared with the backends' API retries).
pub use runner_core::Backoff;

/// Apply the table. `attempt` is the attempt that just ended (1-based).
pub fn decide(ending: &Ending, attempt: u32, max_attempts: u32, backoff: &Backoff) -> Disposition {
    let retry_or_give_up = |what: String| {
        if attempt < max_attempts {
            Disposition::Requeue {
                delay_ms: u64::try_from(backoff.delay(attempt).as_millis()).unwrap_or(u64::MAX),
            }
        } else {
            Disposition::DeadLetter {
                reason: format!("{what}; attempts exhausted ({attempt} of {max_attempts})"),
            }
        }
    };
    match ending {
        Ending::Result {
            status: TestStatus::Cancelled,
            shutting_down: true,
        }
        | Ending::Failed {
            shutting_down: true,
            ..
        } => Disposition::Release,
        Ending::Result {
            status: TestStatus::Cancelled,
            ..
        } => retry_or_give_up("run cancelled".into()),
        Ending::Result { .. } => Disposition::Ack,
        Ending::Failed {
            phase,
            kind,
            panicked: false,
            ..
        } if kind.is_retryable() => retry_or_give_up(format!("{kind} error in {phase}")),
        Ending::Failed {
            phase,
            kind,
            panicked,
            ..
        } => Disposition::DeadLetter {
            reason: if *panicked {
                format!("the backend panicked in {phase}")
            } else {
                format!("{kind} error in {phase}")
            },
        },
        Ending::BadTask => Disposition::DeadLetter {
            reason: "bad task".into(),
        },
        Ending::HeldElsewhere { .. } => Disposition::Defer {
            delay_ms: u64::try_from(backoff.delay(1).as_millis()).unwrap_or(u64::MAX),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn failed(kind: ErrorKind) -> Ending {
        Ending::Failed {
            phase: Phase::Provision,
            kind,
            panicked: false,
            shutting_down: false,
        }
    }

    #[test]
    fn every_row_of_the_table() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        for status in [
            TestStatus::Passed,
            TestStatus::Failed,
            TestStatus::Error,
            TestStatus::TimedOut,
        ] {
            let e = Ending::Result {
                status,
                shutting_down: false,
            };
            assert_eq!(decide(&e, 1, 3, &b), Disposition::Ack);
            assert_eq!(decide(&e, 3, 3, &b), Disposition::Ack);
        }
        let cancelled_by_shutdown = Ending::Result {
            status: TestStatus::Cancelled,
            shutting_down: true,
        };
        assert_eq!(
            decide(&cancelled_by_shutdown, 3, 3, &b),
            Disposition::Release
        );
        for kind in [
            ErrorKind::Transient,
            ErrorKind::Timeout,
            ErrorKind::Capacity,
        ] {
            assert!(matches!(
                decide(&failed(kind), 1, 3, &b),
                Disposition::Requeue { .. }
            ));
            assert!(matches!(
                decide(&failed(kind), 3, 3, &b),
                Disposition::DeadLetter { .. }
            ));
        }
        for kind in [
            ErrorKind::Permanent,
            ErrorKind::InvalidSpec,
            ErrorKind::Cancelled,
        ] {
            assert!(matches!(
                decide(&failed(kind), 1, 3, &b),
                Disposition::DeadLetter { .. }
            ));
        }
        let panicked = Ending::Failed {
            phase: Phase::RunTest,
            kind: ErrorKind::Permanent,
            panicked: true,
            shutting_down: false,
        };
        match decide(&panicked, 1, 3, &b) {
            Disposition::DeadLetter { reason } => assert!(reason.contains("panicked")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&Ending::BadTask, 1, 3, &b),
            Disposition::DeadLetter { .. }
        ));
        let held = Ending::HeldElsewhere {
            worker: "w2".into(),
        };
        assert!(matches!(decide(&held, 3, 3, &b), Disposition::Defer { .. }));
    }
}
