//! Getting a handle: adopt the journaled one of this execution key, or
//! provision afresh (retried, a half-made resource deleted) and journal it.

use runner_core::{BenchSpec, ErrorKind, Phase, PhaseMarker, RunContext, RunnerError};

use super::{Engine, ExecutionOutcome, Held, NotAcquired, PhaseFailure};
use crate::store::{Claim, JournalState, StoreError};

impl Engine {
    /// A journaled handle for this execution key, or a new one.
    pub(super) async fn acquire(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
        outcome: &mut ExecutionOutcome,
    ) -> Result<Held, NotAcquired> {
        if let Some(journal) = &self.journal {
            match journal
                .journal_claim(
                    ctx.execution_key(),
                    &self.settings.worker_id,
                    self.settings.stale_after,
                )
                .await
            {
                Ok(Claim::Reuse(entry))
                    if entry.handle.runner_type() == self.adapter.runner_type() =>
                {
                    tracing::info!(
                        handle = entry.handle.handle_id(),
                        "reusing the journaled handle of a redelivered task"
                    );
                    outcome.reused_handle = true;
                    return Ok(Held {
                        handle: entry.handle,
                        entry: Some(entry.id),
                        reused: true,
                    });
                }
                Ok(Claim::Reuse(entry)) => {
                    // Another runner type made it (the task was resubmitted
                    // to another runner): leave it to the reaper.
                    tracing::warn!(
                        handle = entry.handle.handle_id(),
                        runner_type = entry.handle.runner_type(),
                        "the journaled handle is of another runner type; handing it to the reaper"
                    );
                    self.journal_end(
                        Some(entry.id),
                        JournalState::TeardownFailed,
                        Some("left by a task resubmitted to another runner type"),
                    )
                    .await;
                }
                Ok(Claim::HeldBy { worker }) => {
                    tracing::info!(%worker, "a live worker still holds this execution's handle; deferring");
                    return Err(NotAcquired::HeldBy(worker));
                }
                Ok(Claim::Fresh) => {}
                Err(e) => {
                    // Provisioning without knowing whether a handle exists
                    // could make a second one: try again later instead.
                    return Err(NotAcquired::Failed(PhaseFailure {
                        phase: Phase::Provision,
                        kind: ErrorKind::Transient,
                        message: format!("cannot read the journal before provisioning: {e}"),
                        panicked: false,
                    }));
                }
            }
        }
        self.provision_fresh(ctx, bench, outcome).await
    }

    /// Provision a new handle and journal it before it is used.
    pub(super) async fn provision_fresh(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
        outcome: &mut ExecutionOutcome,
    ) -> Result<Held, NotAcquired> {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let provisioned = self
            .retrying(ctx, true, |c| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    let result = self.adapter.provision(&c, bench).await;
                    // Something was made before the failure (a provision
                    // that finished after its limit): journal it and tear
                    // it down before the error goes on (or is retried).
                    if let Err(e) = &result
                        && let Some(handle) = e.handle()
                    {
                        self.discard(&c, handle).await;
                    }
                    result
                }
            })
            .await;
        outcome.provision_calls += calls.into_inner();
        let handle = provisioned.map_err(|e| NotAcquired::Failed(PhaseFailure::from_error(&e)))?;
        let Some(journal) = &self.journal else {
            return Ok(Held {
                handle,
                entry: None,
                reused: false,
            });
        };
        match journal
            .journal_provisioned(ctx.execution_key(), &handle, &self.settings.worker_id)
            .await
        {
            Ok(id) => Ok(Held {
                handle,
                entry: Some(id),
                reused: false,
            }),
            Err(e) => {
                // An unjournaled handle could leak on a crash: give it back now.
                let _ = self.adapter.teardown(ctx, &handle).await;
                match e {
                    StoreError::Exists { .. } => Err(NotAcquired::HeldBy(
                        "another worker (it provisioned this execution concurrently)".into(),
                    )),
                    e => Err(NotAcquired::Failed(PhaseFailure {
                        phase: Phase::Provision,
                        kind: ErrorKind::Transient,
                        message: format!("cannot journal the handle, released it: {e}"),
                        panicked: false,
                    })),
                }
            }
        }
    }

    /// Call `op`, retrying retryable errors (when `allowed`) with backoff,
    /// at most `retries` more times, and never once `ctx` is cancelled.
    pub(super) async fn retrying<P, T, F, Fut>(
        &self,
        ctx: &RunContext,
        allowed: bool,
        mut op: F,
    ) -> Result<T, RunnerError<P>>
    where
        P: PhaseMarker,
        F: FnMut(RunContext) -> Fut,
        Fut: std::future::Future<Output = Result<T, RunnerError<P>>>,
    {
        let mut tries = 0u32;
        loop {
            tries += 1;
            match op(ctx.clone()).await {
                Ok(v) => return Ok(v),
                Err(err)
                    if allowed
                        && err.is_retryable()
                        && tries <= self.settings.retries
                        && !ctx.is_cancelled() =>
                {
                    let delay = err
                        .retry_after()
                        .unwrap_or_else(|| self.settings.backoff.delay(tries));
                    tracing::info!(error = %err, ?delay, try_number = tries, "retrying {}", P::PHASE);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = ctx.cancel_token().cancelled() => return Err(err),
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }
}
