//! The fault matrix on LocalMockRunner: 4 phases × {transient, permanent,
//! timeout, hang, panic} × retries {0, 3}. Each cell drives attempts through
//! the engine and the policy as the worker would, and checks the final
//! disposition, the attempts used and the teardown calls. A run that hangs
//! past its limit is a timed-out test (acked, once); a backend that
//! returns a timeout error is an infrastructure failure (retried).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use orchestrator_worker::engine::Execution;
use orchestrator_worker::policy::{Disposition, decide};
use orchestrator_worker::queue::{JournalState, SqliteStore};
use runner_core::{Phase, RunContext};
use runner_mock::{Fault, FaultPlan, LocalMockRunner, fixtures};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Acked after one attempt.
    Ack,
    /// Requeued until attempts ran out, then dead-lettered.
    DeadAfterAllAttempts,
    /// Dead-lettered after the first attempt.
    DeadAtOnce,
    /// Acked after one attempt with a timed-out result.
    TimedOut,
}

struct Cell {
    phase: Phase,
    fault: Fault,
    retries: u32,
}

impl Cell {
    fn retryable(&self) -> bool {
        matches!(self.fault, Fault::Transient | Fault::Timeout | Fault::Hang)
    }

    fn expect(&self) -> Expect {
        match self.phase {
            // A result exists: artifact and teardown failures never change it.
            Phase::CollectArtifacts | Phase::Teardown => Expect::Ack,
            // Past its limit the run is a result: timed out.
            Phase::RunTest if self.fault == Fault::Hang => Expect::TimedOut,
            _ if self.retryable() => Expect::DeadAfterAllAttempts,
            _ => Expect::DeadAtOnce,
        }
    }

    /// Teardown calls in each attempt.
    fn teardowns_per_attempt(&self) -> u32 {
        match (self.phase, self.retryable()) {
            (Phase::Provision, _) => 0,
            // The mock declares idempotent teardown, so retryable failures are retried.
            (Phase::Teardown, true) => self.retries + 1,
            _ => 1,
        }
    }
}

async fn run_cell(cell: Cell) -> Result<(), String> {
    let name = format!("{:?} {:?} retries={}", cell.phase, cell.fault, cell.retries);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
    let mock = Arc::new(
        LocalMockRunner::in_memory()
            .with_faults(FaultPlan::none().always(cell.phase, cell.fault.clone())),
    );
    let engine = common::layered_engine(
        mock.clone(),
        Duration::from_millis(150),
        Duration::from_millis(50),
        cell.retries,
        "matrix",
    )
    .with_journal(Arc::new(store.clone()));
    let max_attempts = cell.retries + 1;
    let mut attempts = 0;
    let mut teardowns = 0;
    let mut last_status;
    let disposition = loop {
        attempts += 1;
        let outcome = engine
            .execute(Execution {
                ctx: RunContext::new(format!("cell.{attempts}"), "matrix")
                    .with_execution_key("cell")
                    .with_attempt(attempts),
                bench: &fixtures::bench(),
                payload: &fixtures::passing(),
                observer: None,
                hurry: None,
                journal_clear: false,
                journal_end_by_caller: false,
                lease_held_until: None,
            })
            .await;
        teardowns += outcome.teardown_calls;
        last_status = outcome.result.as_ref().map(|r| r.status);
        if cell.phase == Phase::Teardown && outcome.teardown_error.is_none() {
            return Err(format!("{name}: teardown fault did not surface"));
        }
        match decide(
            &outcome.ending(false),
            attempts,
            max_attempts,
            &common::fast_backoff(),
        ) {
            Disposition::Requeue { .. } if attempts < 10 => continue,
            other => break other,
        }
    };
    let expected_attempts = match cell.expect() {
        Expect::Ack | Expect::DeadAtOnce | Expect::TimedOut => 1,
        Expect::DeadAfterAllAttempts => max_attempts,
    };
    let ok_disposition = match cell.expect() {
        Expect::Ack => disposition == Disposition::Ack,
        Expect::TimedOut => {
            disposition == Disposition::Ack
                && last_status == Some(runner_core::TestStatus::TimedOut)
        }
        _ => matches!(disposition, Disposition::DeadLetter { .. }),
    };
    if !ok_disposition || attempts != expected_attempts {
        return Err(format!(
            "{name}: ended {disposition:?} after {attempts} attempt(s); expected {:?} after {expected_attempts}",
            cell.expect()
        ));
    }
    let expected_teardowns = cell.teardowns_per_attempt() * attempts;
    if teardowns != expected_teardowns {
        return Err(format!(
            "{name}: {teardowns} teardown call(s), expected {expected_teardowns}"
        ));
    }
    // Nothing live is left, except a handle whose teardown failed, which the
    // journal hands to the reaper.
    let journal = store.journal_all().await.unwrap();
    let live = mock.live_handles();
    if cell.phase == Phase::Teardown {
        if journal
            .iter()
            .any(|e| e.state != JournalState::TeardownFailed)
            || live.len() != 1
        {
            return Err(format!("{name}: journal {journal:?}, live {live:?}"));
        }
    } else if !live.is_empty() || journal.iter().any(|e| e.state != JournalState::Released) {
        return Err(format!("{name}: leaked {live:?}, journal {journal:?}"));
    }
    // A retry after a torn-down attempt provisions afresh: one provision per
    // attempt that got past provisioning, never two live at once.
    let expected_provisions = if cell.phase == Phase::Provision {
        0
    } else {
        attempts
    };
    // One journal entry per provision.
    let provisions = journal.len() as u32;
    if provisions != expected_provisions {
        return Err(format!(
            "{name}: {provisions} provision(s) journaled, expected {expected_provisions}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_cell_ends_as_the_policy_says() {
    let mut cells = Vec::new();
    for phase in Phase::ALL {
        for fault in [
            Fault::Transient,
            Fault::Permanent,
            Fault::Timeout,
            Fault::Hang,
            Fault::Panic,
        ] {
            for retries in [0, 3] {
                cells.push(run_cell(Cell {
                    phase,
                    fault: fault.clone(),
                    retries,
                }));
            }
        }
    }
    assert_eq!(cells.len(), 40);
    let failures: Vec<String> = futures::future::join_all(cells)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(
        failures.is_empty(),
        "{} cell(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
