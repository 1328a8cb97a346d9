//! The reaper: tear down what no live worker holds, and nothing else.
//!
//! 1. Journal entries whose owner stopped heartbeating (the worker died):
//!    taken over in the store (so a redelivery of the task waits for the
//!    reaper instead of racing it), torn down, marked released.
//! 2. Entries whose teardown failed: retried at most
//!    `reap_teardown_attempts` times, and only where the backend declares
//!    teardown idempotent (otherwise a second teardown may do harm; they
//!    are reported for an operator).
//! 3. Resources the backends list that no open journal entry holds, that
//!    no live worker made (by their worker tag) and that are older than
//!    the grace: leaks, torn down. A resource of unknown age gets the grace
//!    counted from the first time a reaper saw it.
//!
//! Liveness comes from the shared store, so a reaper on any machine of a
//! fleet leaves every live worker's environments alone. With `dry_run` it
//! lists, and changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use runner_core::{RunContext, RunnerAdapter};
use serde::Serialize;

use crate::config::WorkerSection;
use crate::metrics::BackendLabels;
use crate::store::{JournalState, Store, now_ms};

/// The store lock one reaper of a fleet holds at a time.
pub const LOCK: &str = "reaper";

/// What a reap found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReapReport {
    /// Journaled handles whose owner is gone.
    pub orphans: Vec<String>,
    /// Journaled handles whose teardown failed earlier.
    pub failed_teardowns: Vec<String>,
    /// Resources listed by backends that nothing live holds.
    pub leaks: Vec<String>,
    /// Handle ids torn down.
    pub torn_down: Vec<String>,
    /// Handles left for an operator (teardown not idempotent, or retried
    /// too often).
    pub left: Vec<String>,
    /// What went wrong.
    pub errors: Vec<String>,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

/// Options of a reap.
#[derive(Debug, Clone)]
pub struct ReapOptions {
    /// A worker silent this long is dead.
    pub stale_after: Duration,
    /// Leaks younger than this are left alone.
    pub leak_grace: Duration,
    /// How often a failed teardown is retried.
    pub teardown_attempts: u32,
    /// The reaper's own id (it takes journal entries over under it).
    pub reaper_id: String,
    /// List only.
    pub dry_run: bool,
}

impl ReapOptions {
    /// The options a worker config gives.
    pub fn from_worker(worker: &WorkerSection, reaper_id: &str, dry_run: bool) -> Self {
        Self {
            stale_after: worker.stale_after(),
            leak_grace: Duration::from_secs(worker.leak_grace_seconds),
            teardown_attempts: worker.reap_teardown_attempts,
            reaper_id: reaper_id.to_owned(),
            dry_run,
        }
    }
}

/// Reap with `adapters` (runner type → layered adapter).
pub async fn reap(
    store: &dyn Store,
    adapters: &BTreeMap<String, Arc<dyn RunnerAdapter>>,
    metrics: &crate::Metrics,
    options: ReapOptions,
) -> ReapReport {
    let mut report = ReapReport {
        dry_run: options.dry_run,
        ..ReapReport::default()
    };
    let ctx =
        RunContext::new(format!("reap-{}", now_ms()), "reaper").with_worker(&options.reaper_id);
    let entries = match store.journal_open_entries(options.stale_after).await {
        Ok(entries) => entries,
        Err(e) => {
            report.errors.push(format!("cannot read the journal: {e}"));
            return report;
        }
    };
    let live_workers: BTreeSet<String> = match store.workers(options.stale_after).await {
        Ok(workers) => workers
            .into_iter()
            .filter(|w| w.alive)
            .map(|w| w.beat.id)
            .collect(),
        Err(e) => {
            report.errors.push(format!("cannot read the workers: {e}"));
            return report;
        }
    };

    // Everything an open journal entry names is the journal's business,
    // never a leak: by handle id and by execution key.
    let held_ids: BTreeSet<String> = entries
        .iter()
        .map(|e| e.handle.handle_id().to_owned())
        .collect();
    let held_keys: BTreeSet<String> = entries.iter().map(|e| e.execution_key.clone()).collect();

    for entry in &entries {
        let id = entry.handle.handle_id().to_owned();
        let failed = entry.state == JournalState::TeardownFailed;
        if entry.state == JournalState::Live && entry.owner_alive {
            continue;
        }
        let Some(adapter) = adapters.get(entry.handle.runner_type()) else {
            report.errors.push(format!(
                "handle {id} is of runner type `{}`, which this reaper has no config for",
                entry.handle.runner_type()
            ));
            continue;
        };
        if failed {
            report.failed_teardowns.push(id.clone());
            if !adapter.capabilities().idempotent_teardown {
                report.left.push(format!(
                    "{id}: teardown failed and `{}` does not declare it idempotent; release it by hand, then mark it released",
                    entry.handle.runner_type()
                ));
                continue;
            }
            if entry.reap_attempts >= options.teardown_attempts {
                report.left.push(format!(
                    "{id}: teardown failed {} time(s) in the reaper: {}",
                    entry.reap_attempts,
                    entry.note.as_deref().unwrap_or("no note")
                ));
                continue;
            }
        } else {
            report.orphans.push(id.clone());
        }
        if options.dry_run {
            continue;
        }
        // Take it over first: a redelivery of its task now sees a live
        // holder and waits, instead of reusing a handle being torn down.
        match store
            .journal_take(entry.id, &entry.owner, &options.reaper_id)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                report.errors.push(format!("cannot take {id} over: {e}"));
                continue;
            }
        }
        match adapter.teardown(&ctx, &entry.handle).await {
            Ok(()) => {
                report.torn_down.push(id);
                if let Err(e) = store
                    .journal_end(entry.id, JournalState::Released, Some("reaped"))
                    .await
                {
                    report.errors.push(e.to_string());
                }
            }
            Err(e) => {
                report.errors.push(e.to_string());
                if let Err(e) = store.journal_reap_failed(entry.id, &e.to_string()).await {
                    report.errors.push(e.to_string());
                }
            }
        }
    }

    for (runner_type, adapter) in adapters {
        if !adapter.capabilities().leak_listing {
            continue;
        }
        let owned = match adapter.list_owned(&ctx).await {
            Ok(owned) => owned,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        let candidates: Vec<_> = owned
            .into_iter()
            .filter(|r| {
                !held_ids.contains(&r.resource_id) && !held_ids.contains(r.handle.handle_id())
            })
            .filter(|r| {
                r.execution_key
                    .as_ref()
                    .is_none_or(|k| !held_keys.contains(k))
            })
            // A live worker's resource without a journal entry yet: it is
            // between provisioning and journaling.
            .filter(|r| {
                r.worker_id
                    .as_ref()
                    .is_none_or(|w| !live_workers.contains(w))
            })
            .collect();
        let ids: Vec<String> = candidates.iter().map(|r| r.resource_id.clone()).collect();
        let sightings = match store
            .leak_sightings(runner_type, &ids, !options.dry_run)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                report
                    .errors
                    .push(format!("cannot record leak sightings: {e}"));
                continue;
            }
        };
        for resource in candidates {
            let age = match resource.age_seconds {
                Some(age) => Duration::from_secs(age),
                None => sightings
                    .get(&resource.resource_id)
                    .copied()
                    .unwrap_or(Duration::ZERO),
            };
            if age < options.leak_grace {
                continue;
            }
            metrics
                .leaked_handles
                .get_or_create(&BackendLabels {
                    backend: runner_type.clone(),
                })
                .inc();
            report.leaks.push(resource.resource_id.clone());
            if options.dry_run {
                continue;
            }
            match adapter.teardown(&ctx, &resource.handle).await {
                Ok(()) => report.torn_down.push(resource.resource_id.clone()),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
    report
}
