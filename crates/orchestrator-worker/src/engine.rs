//! The lifecycle engine: one execution, start to end, whatever the backend.
//!
//! provision (retrying retryable errors with jittered backoff) → journal the
//! handle → run_test (its deadline and cancellation end the phase) →
//! collect_artifacts, always, also after a failed, timed-out or cancelled run
//! → teardown, always, exactly once (repeated only when the backend declares
//! it idempotent) → journal the end. A teardown failure is recorded and the
//! handle left to the reaper; it never changes the test result.

use std::sync::Arc;
use std::time::Duration;

use runner_core::{
    ArtifactBundle, BenchSpec, ErrorKind, Phase, PhaseMarker, RunContext, RunnerAdapter,
    RunnerError, RunnerHandle, TestPayload, TestResult,
};
use serde::{Deserialize, Serialize};

use crate::layers::panic::is_panic;
use crate::policy::{Backoff, Ending};
use crate::queue::{JournalState, SqliteStore};

/// Knobs of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// In-place retries of retryable provision, collect and (idempotent) teardown errors.
    pub retries: u32,
    /// Delays between those retries.
    pub backoff: Backoff,
    /// This worker's id, recorded as the owner of journaled handles.
    pub worker_id: String,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            retries: 2,
            backoff: Backoff::default(),
            worker_id: format!("worker-{}", std::process::id()),
        }
    }
}

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
    fn from_error<P: PhaseMarker>(err: &RunnerError<P>) -> Self {
        Self {
            phase: P::PHASE,
            kind: err.kind(),
            message: err.to_string(),
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
}

impl ExecutionOutcome {
    /// The policy's view of this outcome.
    pub fn ending(&self, shutting_down: bool) -> Ending {
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

/// Observes phase changes (the CLI's spinner).
pub type PhaseObserver = Arc<dyn Fn(Phase) + Send + Sync>;

/// One execution to run.
#[derive(Clone)]
pub struct Execution<'a> {
    /// Ids, attempt, log sink and the cancellation token of the run.
    pub ctx: RunContext,
    /// Where.
    pub bench: &'a BenchSpec,
    /// What.
    pub payload: &'a TestPayload,
    /// Told of each phase as it starts.
    pub observer: Option<PhaseObserver>,
}

/// Drives executions through one (layered) adapter.
#[derive(Debug, Clone)]
pub struct Engine {
    adapter: Arc<dyn RunnerAdapter>,
    journal: Option<SqliteStore>,
    settings: EngineSettings,
}

impl Engine {
    /// An engine over `adapter` (normally from the factory, so already layered).
    pub fn new(adapter: Arc<dyn RunnerAdapter>, settings: EngineSettings) -> Self {
        Self {
            adapter,
            journal: None,
            settings,
        }
    }

    /// Journal handles in `store` (before use, and their end).
    pub fn with_journal(mut self, store: SqliteStore) -> Self {
        self.journal = Some(store);
        self
    }

    /// The adapter.
    pub fn adapter(&self) -> &Arc<dyn RunnerAdapter> {
        &self.adapter
    }

    /// Run one execution to its end.
    pub async fn execute(&self, exec: Execution<'_>) -> ExecutionOutcome {
        let ctx = &exec.ctx;
        let observe = |phase| {
            if let Some(o) = &exec.observer {
                o(phase);
            }
        };
        let mut outcome = ExecutionOutcome {
            execution_id: ctx.execution_id().to_owned(),
            ..ExecutionOutcome::default()
        };
        // Cleanup phases run on a token of their own: cancelling the run must
        // not stop collection or teardown.
        let cleanup_ctx = ctx
            .clone()
            .with_cancel(runner_core::CancellationToken::new());

        observe(Phase::Provision);
        let handle = match self.acquire(ctx, exec.bench, &mut outcome).await {
            Ok(handle) => handle,
            Err(failure) => {
                outcome.failure = Some(failure);
                return outcome;
            }
        };

        observe(Phase::RunTest);
        match self.adapter.run_test(ctx, &handle, exec.payload).await {
            Ok(result) => outcome.result = Some(result),
            Err(err) => outcome.failure = Some(PhaseFailure::from_error(&err)),
        }

        observe(Phase::CollectArtifacts);
        match self
            .retrying(&cleanup_ctx, true, |c| {
                let (handle, payload) = (&handle, exec.payload);
                async move { self.adapter.collect_artifacts(&c, handle, payload).await }
            })
            .await
        {
            Ok(bundle) => outcome.artifacts = Some(bundle),
            Err(err) => outcome.artifact_error = Some(PhaseFailure::from_error(&err)),
        }

        observe(Phase::Teardown);
        self.release(&cleanup_ctx, &handle, &mut outcome).await;
        outcome
    }

    /// A journaled handle for this execution key, or a new one.
    async fn acquire(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
        outcome: &mut ExecutionOutcome,
    ) -> Result<RunnerHandle, PhaseFailure> {
        if let Some(journal) = &self.journal {
            match journal
                .journal_claim(ctx.execution_key(), &self.settings.worker_id)
                .await
            {
                Ok(Some(handle)) if handle.runner_type() == self.adapter.runner_type() => {
                    tracing::info!(
                        handle = handle.handle_id(),
                        "reusing the journaled handle of a redelivered task"
                    );
                    outcome.reused_handle = true;
                    return Ok(handle);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "journal lookup failed; provisioning afresh"),
            }
        }
        let calls = std::sync::atomic::AtomicU32::new(0);
        let provisioned = self
            .retrying(ctx, true, |c| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move { self.adapter.provision(&c, bench).await }
            })
            .await;
        outcome.provision_calls = calls.into_inner();
        let handle = provisioned.map_err(|e| PhaseFailure::from_error(&e))?;
        if let Some(journal) = &self.journal
            && let Err(e) = journal
                .journal_provisioned(ctx.execution_key(), &handle, &self.settings.worker_id)
                .await
        {
            // An unjournaled handle could leak on a crash: give it back now.
            let _ = self.adapter.teardown(ctx, &handle).await;
            return Err(PhaseFailure {
                phase: Phase::Provision,
                kind: ErrorKind::Transient,
                message: format!("cannot journal the handle, released it: {e}"),
                panicked: false,
            });
        }
        Ok(handle)
    }

    /// Teardown exactly once, or more when the backend says it is idempotent.
    async fn release(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        outcome: &mut ExecutionOutcome,
    ) {
        if let Some(journal) = &self.journal
            && let Ok(Some(owner)) = journal.journal_owner(ctx.execution_key()).await
            && owner != self.settings.worker_id
        {
            // The task was redelivered and another worker reuses this handle;
            // tearing it down would pull the environment from under it.
            tracing::warn!(%owner, "handle taken over by another worker; not tearing it down");
            outcome.handed_over = true;
            return;
        }
        let idempotent = self.adapter.capabilities().idempotent_teardown;
        let calls = std::sync::atomic::AtomicU32::new(0);
        let result = self
            .retrying(ctx, idempotent, |c| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move { self.adapter.teardown(&c, handle).await }
            })
            .await;
        outcome.teardown_calls = calls.into_inner();
        let (state, note) = match &result {
            Ok(()) => (JournalState::Released, None),
            Err(err) => {
                tracing::warn!(error = %err, "teardown failed; the handle is left for the reaper");
                outcome.teardown_error = Some(PhaseFailure::from_error(err));
                (JournalState::TeardownFailed, Some(err.to_string()))
            }
        };
        if let Some(journal) = &self.journal
            && let Err(e) = journal
                .journal_end(ctx.execution_key(), state, note.as_deref())
                .await
        {
            tracing::warn!(error = %e, "cannot journal the end of a handle");
        }
    }

    /// Call `op`, retrying retryable errors (when `allowed`) with backoff,
    /// at most `retries` more times, and never once `ctx` is cancelled.
    async fn retrying<P, T, F, Fut>(
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

/// A short sleep helper shared by the worker loops.
pub(crate) async fn pause(d: Duration, token: &runner_core::CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = token.cancelled() => {}
    }
}
