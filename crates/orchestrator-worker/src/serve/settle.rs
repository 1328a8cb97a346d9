//! Settling a lease: the record write and the ack, requeue or dead-letter,
//! retried while the store fails; bad and cancelled tasks.

use std::time::Duration;

use serde::Serialize;

use crate::engine::{Engine, ExecutionOutcome};
use crate::policy::{Disposition, Ending};
use crate::queue::{AttemptRecord, Lease};
use crate::report::new_execution;
use crate::store::{ExecState, RecordUpdate, SettleOps, StoreError, now_ms};
use crate::task::Task;

use super::Worker;

/// What is stored with an acked task.
#[derive(Debug, Serialize)]
struct AckRecord<'a> {
    execution_key: &'a str,
    attempt: u32,
    outcome: &'a ExecutionOutcome,
}

/// What one settlement is about.
pub(super) struct Settling<'a> {
    pub lease: &'a Lease,
    pub task: &'a Task,
    pub disposition: &'a Disposition,
    pub record: &'a AttemptRecord,
    pub dead_reason: Option<String>,
}

fn ack_json(s: &Settling<'_>, outcome: &ExecutionOutcome) -> String {
    serde_json::to_string(&AckRecord {
        execution_key: &s.task.execution_key,
        attempt: s.lease.attempt,
        outcome,
    })
    .unwrap_or_default()
}

impl Worker {
    /// End the journal entry, write the record (`update`) and ack, requeue
    /// or dead-letter. An ack where the queue, the journal and the records
    /// are one database is one transaction (with the state changes the
    /// recorder holds); otherwise, or when that fails, one write after
    /// the other as below.
    pub(super) async fn record_and_settle(
        &self,
        engine: &Engine,
        s: Settling<'_>,
        outcome: &mut ExecutionOutcome,
        update: &mut RecordUpdate,
    ) -> Result<(), StoreError> {
        let one_database = self.store.settles_with_records()
            && self.queue_in_store()
            && (outcome.journal_end.is_none()
                || engine.journal_database_id() == self.store.database_id());
        if one_database && matches!(s.disposition, Disposition::Ack) {
            let ops = SettleOps {
                journal_end: outcome.journal_end.clone(),
                ack: Some((s.lease.clone(), ack_json(&s, outcome))),
            };
            match self.recorder.commit_settling(update.clone(), ops).await {
                Ok(true) => {
                    outcome.journal_end = None;
                    return Ok(());
                }
                // The records are in; the journal's end and the ack follow.
                Ok(false) => {
                    engine.end_journal(outcome).await;
                    return self.settle_with_retry(&s, outcome).await;
                }
                // Nothing was written: as below.
                Err(e) => {
                    tracing::debug!(error = %e, "cannot settle in one transaction; one write after the other");
                }
            }
        }
        engine.end_journal(outcome).await;
        // The record first: once the queue forgets the task (SQS deletes
        // the message) the record is the only place the outcome lives.
        if let Err(e) = self.commit_with_retry(update).await {
            tracing::warn!(error = %e, "cannot record the outcome; settling the task anyway");
        }
        self.settle_with_retry(&s, outcome).await
    }

    pub(super) async fn commit_with_retry(
        &self,
        update: &mut RecordUpdate,
    ) -> Result<(), StoreError> {
        let backoff = self.config.worker.backoff();
        let mut tries = 0;
        loop {
            tries += 1;
            match self.recorder.commit(update.clone()).await {
                Err(e) if e.is_retryable() && tries < 5 => {
                    tokio::time::sleep(backoff.delay(tries).min(Duration::from_secs(5))).await;
                }
                other => return other,
            }
        }
    }

    /// Ack, requeue or dead-letter, retried with backoff while the store
    /// fails and the lease is still ours: a result is never dropped because
    /// one store call failed.
    async fn settle_with_retry(
        &self,
        s: &Settling<'_>,
        outcome: &ExecutionOutcome,
    ) -> Result<(), StoreError> {
        let (lease, disposition, record, dead_reason) =
            (s.lease, s.disposition, s.record, &s.dead_reason);
        let backoff = self.config.worker.backoff();
        let bound = self.config.worker.visibility();
        let started = std::time::Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let result = match disposition {
                Disposition::Ack => self.queue.ack(lease, &ack_json(s, outcome)).await,
                Disposition::Requeue { delay_ms } => {
                    self.queue
                        .requeue(
                            lease,
                            Duration::from_millis(*delay_ms),
                            record.clone(),
                            true,
                        )
                        .await
                }
                Disposition::Release => {
                    self.queue
                        .requeue(lease, Duration::ZERO, record.clone(), false)
                        .await
                }
                Disposition::Defer { delay_ms } => {
                    self.queue
                        .requeue(
                            lease,
                            Duration::from_millis(*delay_ms),
                            record.clone(),
                            false,
                        )
                        .await
                }
                Disposition::DeadLetter { reason } => {
                    let reason = dead_reason.clone().unwrap_or_else(|| reason.clone());
                    self.queue.dead_letter(lease, &reason, record.clone()).await
                }
            };
            match result {
                Err(StoreError::LeaseLost { task_id }) => {
                    return Err(StoreError::LeaseLost { task_id });
                }
                Err(e) if started.elapsed() < bound => {
                    let delay = backoff.delay(tries).min(Duration::from_secs(5));
                    tracing::warn!(error = %e, ?delay, try_number = tries, "settling failed; trying again");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// Ack a task whose cancel was asked for before it ran.
    pub(super) async fn settle_cancelled(&self, lease: &Lease, task: &Task) -> Disposition {
        let update = RecordUpdate::Settled(Box::new(crate::store::Settlement {
            new: new_execution(task),
            state: ExecState::Cancelled,
            at_ms: now_ms(),
            attempt: None,
            result: None,
            artifacts: Vec::new(),
            cases: Vec::new(),
            error: Some("cancelled before it ran".into()),
        }));
        if let Err(e) = self.recorder.commit(update).await {
            tracing::warn!(error = %e, "cannot record a cancelled task");
        }
        if let Err(e) = self.queue.ack(lease, "{\"cancelled\":true}").await {
            tracing::warn!(error = %e, "cannot ack a cancelled task");
        }
        self.metrics.execution(&task.runner, "ack");
        Disposition::Ack
    }

    pub(super) async fn settle_bad(
        &self,
        lease: &Lease,
        task: Option<&Task>,
        backend: &str,
        reason: &str,
    ) -> Disposition {
        tracing::warn!(task = %lease.task_id, reason, "dead-lettering a bad task");
        let record = AttemptRecord {
            attempt: lease.attempt,
            worker: self.id.clone(),
            phase: None,
            kind: Some(runner_core::ErrorKind::InvalidSpec),
            message: reason.to_owned(),
            at_ms: now_ms(),
            counted: true,
        };
        if let Some(task) = task {
            let update = RecordUpdate::Settled(Box::new(crate::store::Settlement {
                new: new_execution(task),
                state: ExecState::DeadLettered,
                at_ms: now_ms(),
                attempt: None,
                result: None,
                artifacts: Vec::new(),
                cases: Vec::new(),
                error: Some(reason.to_owned()),
            }));
            if let Err(e) = self.recorder.commit(update).await {
                tracing::warn!(error = %e, "cannot record a bad task");
            }
        }
        if let Err(e) = self.queue.dead_letter(lease, reason, record).await {
            tracing::warn!(error = %e, "cannot dead-letter a bad task");
        }
        self.metrics.execution(backend, "dead_letter");
        Disposition::DeadLetter {
            reason: reason.to_owned(),
        }
    }
}

pub(super) fn attempt_record(
    worker: &str,
    attempt: u32,
    outcome: &ExecutionOutcome,
    ending: &Ending,
) -> AttemptRecord {
    let (phase, kind, message) = match (&outcome.failure, &outcome.result) {
        (Some(f), _) => (Some(f.phase), Some(f.kind), f.message.clone()),
        (None, Some(r)) => (None, None, format!("test {}", r.status.as_str())),
        (None, None) => (None, None, format!("{ending:?}")),
    };
    AttemptRecord {
        attempt,
        worker: worker.to_owned(),
        phase,
        kind,
        message,
        at_ms: now_ms(),
        counted: true,
    }
}
