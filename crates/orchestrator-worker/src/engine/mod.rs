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

mod acquire;
mod outcome;
mod release;

pub use outcome::{ExecutionOutcome, JournalEnd, PhaseFailure};

use std::sync::Arc;
use std::time::Duration;

use runner_core::{
    BenchSpec, ErrorKind, Phase, RunContext, RunnerAdapter, RunnerConfig, RunnerHandle, TestPayload,
};

use crate::policy::Backoff;
use crate::store::{JournalState, Store, now_ms};

/// Knobs of the engine.
///
/// [`Engine::for_runner`] takes `retries` and `max_concurrency` from the
/// runner's config, so a caller with a [`RunnerConfig`] sets neither.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// In-place retries of retryable provision, collect and (idempotent)
    /// teardown errors. [`Engine::for_runner`]: the config's `retries`.
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
    /// too, the smaller wins). `None`: no limit. [`Engine::for_runner`]:
    /// the config's `max_concurrency`.
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
    /// The caller knows, from the store it leased the task from, that no
    /// live journal entry exists for this execution key
    /// ([`Lease::journal_clear`](crate::queue::Lease::journal_clear)): the
    /// journal claim before provisioning is skipped. `false`: claim.
    pub journal_clear: bool,
    /// The caller writes the journal's end itself, after giving the slot
    /// back ([`ExecutionOutcome::journal_end`], [`Engine::end_journal`]),
    /// so the next test does not wait for that write. A crash before it
    /// leaves the entry live for its dead owner: the reaper (or a
    /// redelivery) finds the handle gone and ends it. `false`: the engine
    /// writes it before returning.
    pub journal_end_by_caller: bool,
    /// Until this instant the caller surely holds the task's lease, so no
    /// other worker can have been given the task and taken this
    /// execution's journal entry over: teardown then skips reading the
    /// entry's owner, a store round trip in the slot's path. Take it well
    /// inside the lease (the worker uses half its visibility from when the
    /// lease arrived), for clocks that differ between hosts. `None`: read it.
    pub lease_held_until: Option<std::time::Instant>,
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

    /// An engine over `adapter` made from `runner`: the runner's `retries`
    /// and `max_concurrency` replace those of `settings`, so they cannot
    /// be forgotten on the way.
    pub fn for_runner(
        adapter: Arc<dyn RunnerAdapter>,
        runner: &RunnerConfig,
        settings: EngineSettings,
    ) -> Self {
        Self::new(
            adapter,
            EngineSettings {
                retries: runner.retries,
                max_concurrency: runner.max_concurrency,
                ..settings
            },
        )
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Journal handles in `store` (before use, and their end).
    pub fn with_journal(mut self, store: Arc<dyn Store>) -> Self {
        self.journal = Some(store);
        self
    }

    /// Which database the journal is in ([`Store::database_id`]).
    pub fn journal_database_id(&self) -> Option<usize> {
        self.journal.as_ref().and_then(|j| j.database_id())
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
        let acquired = if exec.journal_clear {
            self.provision_fresh(ctx, exec.bench, &mut outcome).await
        } else {
            self.acquire(ctx, exec.bench, &mut outcome).await
        };
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
        let owned = exec
            .lease_held_until
            .is_some_and(|until| std::time::Instant::now() < until);
        self.release(&cleanup_ctx, &held, owned, &mut outcome).await;
        if !exec.journal_end_by_caller {
            self.end_journal(&mut outcome).await;
        }
        outcome.timed(Phase::Teardown, clock);
        outcome.ended_ms = now_ms();
        outcome
    }

    /// Write the journal's end that `outcome` still carries
    /// ([`Execution::journal_end_by_caller`]); nothing when there is none.
    pub async fn end_journal(&self, outcome: &mut ExecutionOutcome) {
        if let Some(end) = outcome.journal_end.take() {
            self.journal_end(Some(end.entry), end.state, end.note.as_deref())
                .await;
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
