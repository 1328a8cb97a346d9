//! The lifecycle engine: one execution, start to end, whatever the backend.
//!
//! claim the execution key's journaled handle (a redelivery reuses it when
//! its worker died) or provision (retrying retryable errors with jittered
//! backoff) → journal the handle → run_test (its deadline and cancellation
//! end the phase; a reused handle found gone is replaced once) →
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
use crate::store::{Claim, JournalState, PhaseTiming, Store, StoreError, now_ms};

/// Knobs of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// In-place retries of retryable provision, collect and (idempotent) teardown errors.
    pub retries: u32,
    /// Delays between those retries.
    pub backoff: Backoff,
    /// This worker's id, recorded as the owner of journaled handles.
    pub worker_id: String,
    /// A worker silent this long is dead: its journaled handles may be
    /// taken over by a redelivery.
    pub stale_after: Duration,
    /// Executions at once through this engine, provision to teardown (the
    /// runner config's `max_concurrency`; the backend's capability applies
    /// too, the smaller wins). `None`: no limit.
    pub max_concurrency: Option<usize>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            retries: 2,
            backoff: Backoff::default(),
            worker_id: format!("worker-{}", std::process::id()),
            stale_after: Duration::from_secs(60),
            max_concurrency: None,
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
}

impl ExecutionOutcome {
    fn timed(&mut self, phase: Phase, since: std::time::Instant) {
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
    /// Fired to stop waiting for artifacts (a second Ctrl-C): collection is
    /// cut short, teardown still runs.
    pub hurry: Option<runner_core::CancellationToken>,
}

/// Drives executions through one (layered) adapter.
#[derive(Debug, Clone)]
pub struct Engine {
    adapter: Arc<dyn RunnerAdapter>,
    journal: Option<Arc<dyn Store>>,
    settings: EngineSettings,
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// A handle this attempt holds, and its journal entry.
struct Held {
    handle: RunnerHandle,
    entry: Option<i64>,
    reused: bool,
}

/// Why no handle was acquired.
enum NotAcquired {
    Failed(PhaseFailure),
    HeldBy(String),
}

impl Engine {
    /// An engine over `adapter` (normally from the factory, so already layered).
    pub fn new(adapter: Arc<dyn RunnerAdapter>, settings: EngineSettings) -> Self {
        let limit = match (
            settings.max_concurrency,
            adapter.capabilities().max_concurrency,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self {
            adapter,
            journal: None,
            settings,
            slots: limit.map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
        }
    }

    /// Journal handles in `store` (before use, and their end).
    pub fn with_journal(mut self, store: Arc<dyn Store>) -> Self {
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
            started_ms: now_ms(),
            ..ExecutionOutcome::default()
        };
        // Cleanup phases run on a token of their own: cancelling the run must
        // not stop collection or teardown.
        let cleanup_ctx = ctx
            .clone()
            .with_cancel(runner_core::CancellationToken::new());

        // One of the runner's slots for the whole lifecycle (a bench that
        // takes one test at a time): waiting for it counts against no
        // phase's limit.
        let _slot = match &self.slots {
            Some(slots) => tokio::select! {
                permit = Arc::clone(slots).acquire_owned() => permit.ok(),
                _ = ctx.cancel_token().cancelled() => {
                    outcome.failure = Some(PhaseFailure {
                        phase: Phase::Provision,
                        kind: ErrorKind::Cancelled,
                        message: "cancelled while waiting for a free slot of this runner".into(),
                        panicked: false,
                    });
                    outcome.ended_ms = now_ms();
                    return outcome;
                }
            },
            None => None,
        };

        observe(Phase::Provision);
        let clock = std::time::Instant::now();
        let acquired = self.acquire(ctx, exec.bench, &mut outcome).await;
        outcome.timed(Phase::Provision, clock);
        let mut held = match acquired {
            Ok(held) => held,
            Err(NotAcquired::Failed(failure)) => {
                outcome.failure = Some(failure);
                outcome.ended_ms = now_ms();
                return outcome;
            }
            Err(NotAcquired::HeldBy(worker)) => {
                outcome.held_by = Some(worker);
                outcome.ended_ms = now_ms();
                return outcome;
            }
        };

        observe(Phase::RunTest);
        let clock = std::time::Instant::now();
        loop {
            match self.adapter.run_test(ctx, &held.handle, exec.payload).await {
                Ok(result) => outcome.result = Some(result),
                Err(err)
                    if err.is_handle_gone() && held.reused && !outcome.replaced_gone_handle =>
                {
                    // A handle adopted after a crash whose environment is
                    // gone: the task itself is fine, so end that entry and
                    // start again on a new one.
                    tracing::warn!(error = %err, handle = held.handle.handle_id(), "the adopted handle is gone; provisioning afresh");
                    outcome.replaced_gone_handle = true;
                    self.journal_end(
                        held.entry,
                        JournalState::Released,
                        Some("gone when adopted"),
                    )
                    .await;
                    match self.provision_fresh(ctx, exec.bench, &mut outcome).await {
                        Ok(fresh) => {
                            held = fresh;
                            continue;
                        }
                        Err(NotAcquired::Failed(failure)) => outcome.failure = Some(failure),
                        Err(NotAcquired::HeldBy(worker)) => outcome.held_by = Some(worker),
                    }
                    outcome.timed(Phase::RunTest, clock);
                    outcome.ended_ms = now_ms();
                    return outcome;
                }
                Err(err) => outcome.failure = Some(PhaseFailure::from_error(&err)),
            }
            break;
        }
        outcome.timed(Phase::RunTest, clock);

        observe(Phase::CollectArtifacts);
        let clock = std::time::Instant::now();
        // A hurry (second Ctrl-C) cancels collection only.
        let collect_ctx = match &exec.hurry {
            Some(hurry) => cleanup_ctx.clone().with_cancel(hurry.child_token()),
            None => cleanup_ctx.clone(),
        };
        match self
            .retrying(&collect_ctx, true, |c| {
                let (handle, payload) = (&held.handle, exec.payload);
                async move { self.adapter.collect_artifacts(&c, handle, payload).await }
            })
            .await
        {
            Ok(bundle) => outcome.artifacts = Some(bundle),
            Err(err) => outcome.artifact_error = Some(PhaseFailure::from_error(&err)),
        }
        outcome.timed(Phase::CollectArtifacts, clock);

        observe(Phase::Teardown);
        let clock = std::time::Instant::now();
        self.release(&cleanup_ctx, &held, &mut outcome).await;
        outcome.timed(Phase::Teardown, clock);
        outcome.ended_ms = now_ms();
        outcome
    }

    /// A journaled handle for this execution key, or a new one.
    async fn acquire(
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
    async fn provision_fresh(
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

    /// Tear down the live handle journaled for `key` when its owner is gone
    /// (or is this worker); used when a task is given up.
    pub async fn release_journaled(&self, key: &str) {
        let Some(journal) = &self.journal else {
            return;
        };
        let entry = match journal
            .journal_claim(key, &self.settings.worker_id, self.settings.stale_after)
            .await
        {
            Ok(Claim::Reuse(entry)) => entry,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the journal; the reaper will find the handle");
                return;
            }
        };
        let ctx = RunContext::new(format!("{key}.release"), key)
            .with_execution_key(key)
            .with_worker(&self.settings.worker_id);
        let held = Held {
            handle: entry.handle.clone(),
            entry: Some(entry.id),
            reused: true,
        };
        let mut outcome = ExecutionOutcome::default();
        self.release(&ctx, &held, &mut outcome).await;
    }

    /// Journal a handle nobody will use, tear it down, journal the end: a
    /// crash in between leaves it to the reaper, not lost.
    async fn discard(&self, ctx: &RunContext, handle: &RunnerHandle) {
        tracing::warn!(
            handle = handle.handle_id(),
            "tearing down what a failed provision made"
        );
        let entry = match &self.journal {
            Some(journal) => journal
                .journal_provisioned(ctx.execution_key(), handle, &self.settings.worker_id)
                .await
                .ok(),
            None => None,
        };
        let cleanup = ctx
            .clone()
            .with_cancel(runner_core::CancellationToken::new());
        match self.adapter.teardown(&cleanup, handle).await {
            Ok(()) => {
                self.journal_end(
                    entry,
                    JournalState::Released,
                    Some("made by a failed provision"),
                )
                .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot tear down what a failed provision made; the reaper will");
                self.journal_end(entry, JournalState::TeardownFailed, Some(&e.detail()))
                    .await
            }
        }
    }

    async fn journal_end(&self, entry: Option<i64>, state: JournalState, note: Option<&str>) {
        if let (Some(journal), Some(id)) = (&self.journal, entry)
            && let Err(e) = journal.journal_end(id, state, note).await
        {
            tracing::warn!(error = %e, "cannot journal the end of a handle");
        }
    }

    /// Teardown exactly once, or more when the backend says it is idempotent.
    async fn release(&self, ctx: &RunContext, held: &Held, outcome: &mut ExecutionOutcome) {
        if let (Some(journal), Some(id)) = (&self.journal, held.entry)
            && let Ok(Some(entry)) = journal.journal_get(id, self.settings.stale_after).await
            && entry.owner != self.settings.worker_id
        {
            // The task was redelivered and another worker reuses this handle;
            // tearing it down would pull the environment from under it.
            tracing::warn!(owner = %entry.owner, "handle taken over by another worker; not tearing it down");
            outcome.handed_over = true;
            return;
        }
        let handle = &held.handle;
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
        self.journal_end(held.entry, state, note.as_deref()).await;
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
