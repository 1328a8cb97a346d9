//! One leased task: parse and check it, execute it, keep its lease alive,
//! and hand the outcome to the settle step.

use std::sync::Arc;
use std::time::Duration;

use runner_core::{CancellationToken, LogSink, Phase, RunContext};
use tracing::Instrument;

use crate::engine::Execution;
use crate::metrics::BackendLabels;
use crate::policy::{Disposition, decide};
use crate::queue::{AttemptRecord, Lease};
use crate::report::{attempt_detail, disposition_name, new_execution, settlement};
use crate::store::{ExecState, RecordUpdate, StoreError, now_ms};
use crate::task::Task;

use super::Worker;
use super::settle::{Settling, attempt_record};
use super::slot::Slot;

impl Worker {
    /// Execute one leased task and settle it. `hard` cancels the run.
    pub async fn process(&self, lease: Lease, hard: CancellationToken) -> Disposition {
        self.process_with(lease, hard, None).await
    }

    /// [`Worker::process`], with `hurry` cutting artifact collection short.
    pub async fn process_with(
        &self,
        lease: Lease,
        hard: CancellationToken,
        hurry: Option<CancellationToken>,
    ) -> Disposition {
        self.process_slot(lease, hard, hurry, None, std::time::Instant::now())
            .await
    }

    /// [`Worker::process_with`], giving `slot` back as soon as the
    /// execution is over, before the settlement is written, and marking it
    /// as about to free once the test's run is over. `arrived`: when the
    /// lease was granted (or last extended).
    pub(super) async fn process_slot(
        &self,
        lease: Lease,
        hard: CancellationToken,
        hurry: Option<CancellationToken>,
        slot: Option<Slot>,
        arrived: std::time::Instant,
    ) -> Disposition {
        // No other worker can take this execution's journal entry over
        // until then (see `surely_owned_until`).
        let lease_held_until = self.surely_owned_until(arrived);
        if let Some(problem) = &lease.body_error {
            return self.settle_bad(&lease, None, "unknown", problem).await;
        }
        let task = match Task::parse(&lease.body) {
            Ok(task) => task,
            Err(bad) => {
                return self
                    .settle_bad(&lease, None, "unknown", &bad.to_string())
                    .await;
            }
        };
        let Some(served) = self.served.get(&task.runner) else {
            let reason = format!(
                "bad task: unknown runner type `{}`; this worker serves: {}",
                task.runner,
                self.runner_types().join(", ")
            );
            return self
                .settle_bad(&lease, Some(&task), &task.runner, &reason)
                .await;
        };
        let max_attempts = served.config.max_attempts();
        let max_deliveries = self.config.worker.max_deliveries.max(max_attempts);
        if lease.attempt > max_deliveries {
            // Delivered more often than allowed: its workers kept dying (a poison task).
            let reason = format!(
                "delivered {} times (worker.max_deliveries is {max_deliveries}); its leases kept expiring without a result",
                lease.attempt
            );
            self.release_abandoned(&task).await;
            return self
                .settle_bad(&lease, Some(&task), &task.runner, &reason)
                .await;
        }

        // The checks submit made, again: a task may come from anywhere.
        let check = crate::validate::ids(&task)
            .and_then(|_| crate::validate::runner_type(Some(&task.runner), &task.bench))
            .and_then(|_| {
                let ctx = RunContext::new(&task.execution_key, task.correlation())
                    .with_execution_key(&task.execution_key);
                crate::validate::task(&**served.engine.adapter(), &ctx, &task.bench, &task.payload)
                    .and_then(|_| {
                        crate::validate::allowed(&served.config, &task.bench, &task.payload, true)
                    })
            });
        if let Err(invalid) = check {
            let reason = format!("invalid_spec: {invalid}");
            return self
                .settle_bad(&lease, Some(&task), &task.runner, &reason)
                .await;
        }
        // Secret references resolve here, in this worker's memory only.
        let resolved = match crate::secrets::resolve(&task.payload).await {
            Ok(payload) => payload,
            Err(e) if e.kind == runner_core::ErrorKind::Transient && lease.failures < 5 => {
                // Throttled or timed out: the secret may well resolve later.
                let delay = self.config.worker.backoff().delay(lease.failures + 1);
                tracing::warn!(task = %lease.task_id, error = %e, ?delay, "a secret did not resolve; trying again later");
                let record = AttemptRecord {
                    attempt: lease.attempt,
                    worker: self.id.clone(),
                    phase: None,
                    kind: Some(e.kind),
                    message: e.to_string(),
                    at_ms: now_ms(),
                    counted: true,
                };
                if let Err(err) = self.queue.requeue(&lease, delay, record, true).await {
                    tracing::warn!(task = %lease.task_id, error = %err, "cannot requeue the task");
                }
                return Disposition::Requeue {
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                };
            }
            Err(e) => {
                let reason = format!("{}: {e}", e.kind);
                return self
                    .settle_bad(&lease, Some(&task), &task.runner, &reason)
                    .await;
            }
        };
        // A queue that cannot take a task back (SQS) may deliver one whose
        // cancel was asked for while it waited.
        if !self.queue.keeps_records() && self.cancel_was_requested(&task.execution_key).await {
            return self.settle_cancelled(&lease, &task).await;
        }
        // SQS delivers at least once: a message redelivered while its first
        // delivery ran (a visibility timeout passed under load) can come
        // back after that execution settled and its delete went to the old
        // receipt. The record says it is done: drop the copy, never run it twice.
        if !self.queue.keeps_records() && self.already_settled(&task.execution_key).await {
            tracing::info!(execution_key = %task.execution_key, "a duplicate delivery of a settled execution; dropping it");
            if let Err(e) = self.queue.ack(&lease, "{\"duplicate\":true}").await {
                tracing::warn!(error = %e, "cannot drop a duplicate delivery");
            }
            return Disposition::Ack;
        }
        let new = new_execution(&task);
        let backend = BackendLabels {
            backend: task.runner.clone(),
        };
        self.metrics.in_flight.get_or_create(&backend).inc();
        let run_token = hard.child_token();
        if let Ok(mut running) = self.running.lock() {
            running.insert(task.execution_key.clone(), run_token.clone());
        }
        self.recorder
            .push(RecordUpdate::State {
                new: new.clone(),
                state: ExecState::Leased,
                at_ms: now_ms(),
                attempt: Some(lease.attempt),
                worker: Some(self.id.clone()),
                message: format!("attempt {} leased by {}", lease.attempt, self.id),
            })
            .await;
        let keeper = self.spawn_lease_keeper(&lease, run_token.clone());
        let execution_id = format!("{}.{}", task.execution_key, lease.attempt);
        let (sink, mut rx) = LogSink::channel(1024);
        let logs = tokio::spawn({
            let execution_id = execution_id.clone();
            async move {
                while let Some(batch) = rx.recv_batch().await {
                    for (stream, text) in batch.iter() {
                        tracing::debug!(target: "test_output", execution_id = %execution_id, stream = ?stream, "{}", text);
                    }
                }
            }
        });
        let ctx = RunContext::new(&execution_id, task.correlation())
            .with_execution_key(&task.execution_key)
            .with_attempt(lease.attempt)
            .with_worker(&self.id)
            .with_cancel(run_token.clone())
            .with_log_sink(sink.with_redactor(resolved.redactor()));
        // One trace per execution: this span is the parent of the four
        // phase spans, and the child of the submitter's span when the task
        // carried a trace context.
        let span = tracing::info_span!(
            "execution",
            backend = %task.runner,
            execution_key = %task.execution_key,
            execution_id = %execution_id,
            correlation_id = %task.correlation(),
            attempt = lease.attempt,
        );
        crate::telemetry::continue_trace(&span, &lease.attributes);
        let observer = {
            let (recorder, new, worker, attempt) = (
                self.recorder.clone(),
                new.clone(),
                self.id.clone(),
                lease.attempt,
            );
            let handle = tokio::runtime::Handle::current();
            let slot_end = slot.as_ref().map(Slot::end);
            Arc::new(move |phase: Phase| {
                if phase == Phase::CollectArtifacts
                    && let Some(end) = &slot_end
                {
                    end.cleaning();
                }
                let update = RecordUpdate::State {
                    new: new.clone(),
                    state: ExecState::of_phase(phase),
                    at_ms: now_ms(),
                    attempt: Some(attempt),
                    worker: Some(worker.clone()),
                    message: format!("{phase}"),
                };
                recorder.push_now(update, &handle);
            }) as crate::engine::PhaseObserver
        };
        // What the lease read of the journal holds only for the database
        // the engine journals in.
        let journal_clear = lease.journal_clear && self.queue_in_store();
        let mut outcome = served
            .engine
            .execute(Execution {
                ctx,
                bench: &task.bench,
                payload: &resolved,
                observer: Some(observer),
                hurry,
                journal_clear,
                journal_end_by_caller: true,
                lease_held_until,
            })
            .instrument(span)
            .await;
        let _ = logs.await;
        // The test and its resources are gone: the next one may start.
        drop(slot);
        let cancelled_by_request = run_token.is_cancelled() && !hard.is_cancelled();
        if let Ok(mut running) = self.running.lock() {
            running.remove(&task.execution_key);
        }
        self.metrics.in_flight.get_or_create(&backend).dec();
        if outcome.teardown_error.is_some() {
            self.metrics.teardown_failures.get_or_create(&backend).inc();
        }

        let ending = outcome.ending(hard.is_cancelled());
        // Against the retries count the attempts that failed, not the
        // deliveries whose worker died.
        let attempt = lease.failures.saturating_add(1);
        let mut disposition = decide(
            &ending,
            attempt,
            max_attempts,
            &self.config.worker.backoff(),
        );
        if cancelled_by_request && self.cancel_was_requested(&task.execution_key).await {
            // Someone asked for this cancel: the execution is over.
            disposition = Disposition::Ack;
        }
        let record = attempt_record(&self.id, lease.attempt, &outcome, &ending);
        let detail = attempt_detail(lease.attempt, &self.id, &outcome, &disposition);
        let dead_reason = match (&disposition, &outcome.failure) {
            (Disposition::DeadLetter { reason }, Some(f)) => {
                Some(format!("{reason}: {}", f.message))
            }
            (Disposition::DeadLetter { reason }, None) => Some(reason.clone()),
            _ => None,
        };
        let suite = crate::report::suite_cases(outcome.artifacts.as_ref()).await;
        let mut update = match settlement(
            new.clone(),
            &outcome,
            detail.clone(),
            &disposition,
            dead_reason.as_deref(),
            suite,
        ) {
            Some(mut s) => {
                if cancelled_by_request && s.state != ExecState::DeadLettered {
                    s.state = ExecState::Cancelled;
                }
                RecordUpdate::Settled(Box::new(s))
            }
            None => RecordUpdate::AttemptEnded {
                key: task.execution_key.clone(),
                detail,
                state: ExecState::Queued,
            },
        };
        // Before and after the queue call: a worker killed in between leaves
        // "settling" without "settled" (the queue may or may not have it).
        tracing::debug!(
            task = %lease.task_id,
            execution_key = %task.execution_key,
            attempt = lease.attempt,
            disposition = disposition_name(&disposition),
            "settling"
        );
        let settled = self
            .record_and_settle(
                &served.engine,
                Settling {
                    lease: &lease,
                    task: &task,
                    disposition: &disposition,
                    record: &record,
                    dead_reason,
                },
                &mut outcome,
                &mut update,
            )
            .await;
        keeper.abort();
        match settled {
            Ok(()) => tracing::info!(
                task = %lease.task_id,
                execution_key = %task.execution_key,
                attempt = lease.attempt,
                disposition = disposition_name(&disposition),
                "settled"
            ),
            Err(e) => {
                tracing::warn!(error = %e, task = %lease.task_id, "cannot settle the task; it will be redelivered")
            }
        }
        self.metrics
            .execution(&task.runner, disposition_name(&disposition));
        disposition
    }

    /// Tear down the live handle a poison task left (its workers died
    /// holding it), so dead-lettering it leaves nothing behind.
    async fn release_abandoned(&self, task: &Task) {
        if let Some(served) = self.served.get(&task.runner) {
            served.engine.release_journaled(&task.execution_key).await;
        }
    }

    async fn already_settled(&self, key: &str) -> bool {
        matches!(self.store.execution(key).await, Ok(Some(record)) if record.settled_ms.is_some())
    }

    async fn cancel_was_requested(&self, key: &str) -> bool {
        self.store
            .cancel_requested(&[key.to_owned()])
            .await
            .is_ok_and(|k| !k.is_empty())
    }

    /// Extend the lease while the test runs. A lease found lost (expired and
    /// taken by another worker) cancels the run: the task belongs elsewhere now.
    fn spawn_lease_keeper(
        &self,
        lease: &Lease,
        run: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let queue = Arc::clone(&self.queue);
        let lease = lease.clone();
        let visibility = self.config.worker.visibility();
        tokio::spawn(async move {
            let every = (visibility / 3).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(every).await;
                match queue.extend(&lease, visibility).await {
                    Ok(()) => {}
                    Err(e @ StoreError::LeaseLost { .. }) => {
                        tracing::warn!(error = %e, "lease lost; cancelling the run");
                        run.cancel();
                        return;
                    }
                    // A busy or failing store: try again next beat.
                    Err(e) => tracing::warn!(error = %e, "lease heartbeat failed"),
                }
            }
        })
    }
}
