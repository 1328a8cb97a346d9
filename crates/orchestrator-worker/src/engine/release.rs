//! Letting a handle go: teardown (once, or repeated when idempotent),
//! discarding a gone handle, and the journal's end.

use runner_core::{RunContext, RunnerHandle};

use super::{Engine, ExecutionOutcome, Held, JournalEnd, PhaseFailure};
use crate::store::{Claim, JournalState};

impl Engine {
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
        self.release(&ctx, &held, false, &mut outcome).await;
        self.end_journal(&mut outcome).await;
    }

    /// Journal a handle nobody will use, tear it down, journal the end: a
    /// crash in between leaves it to the reaper, not lost.
    pub(super) async fn discard(&self, ctx: &RunContext, handle: &RunnerHandle) {
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

    pub(super) async fn journal_end(
        &self,
        entry: Option<i64>,
        state: JournalState,
        note: Option<&str>,
    ) {
        if let (Some(journal), Some(id)) = (&self.journal, entry)
            && let Err(e) = journal.journal_end(id, state, note).await
        {
            tracing::warn!(error = %e, "cannot journal the end of a handle");
        }
    }

    /// Teardown exactly once, or more when the backend says it is
    /// idempotent. `owned`: the caller still surely holds the task's lease
    /// ([`Execution::lease_held_until`](super::Execution::lease_held_until)),
    /// so the journal entry cannot have been taken over.
    pub(super) async fn release(
        &self,
        ctx: &RunContext,
        held: &Held,
        owned: bool,
        outcome: &mut ExecutionOutcome,
    ) {
        if !owned
            && let (Some(journal), Some(id)) = (&self.journal, held.entry)
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
        // Written by `execute` before it returns, or by its caller.
        outcome.journal_end = held.entry.map(|entry| JournalEnd { entry, state, note });
    }
}
