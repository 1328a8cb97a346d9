//! The reaper: tear down what no live worker holds.
//!
//! 1. Journal entries whose owner stopped heartbeating (the worker died), or
//!    whose teardown failed, are torn down and marked released.
//! 2. Backends that can list what they own are asked for it; anything that
//!    no live journal entry holds, and that is older than a grace period
//!    (it may be mid-provision), is a leak: counted and torn down.
//!
//! With `dry_run` it lists, and changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use runner_core::{RunContext, RunnerAdapter};
use serde::Serialize;

use crate::metrics::BackendLabels;
use crate::queue::{JournalState, SqliteStore, now_ms};

/// What a reap found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReapReport {
    /// Journaled handles whose owner is gone (or whose teardown failed).
    pub orphans: Vec<String>,
    /// Resources listed by backends that nothing live holds.
    pub leaks: Vec<String>,
    /// Handle ids torn down.
    pub torn_down: Vec<String>,
    /// What went wrong.
    pub errors: Vec<String>,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

/// Options of a reap.
#[derive(Debug, Clone, Copy)]
pub struct ReapOptions {
    /// A worker silent this long is dead.
    pub stale_after: Duration,
    /// Leaks younger than this are left alone.
    pub leak_grace: Duration,
    /// List only.
    pub dry_run: bool,
}

/// Reap with `adapters` (runner type → layered adapter).
pub async fn reap(
    store: &SqliteStore,
    adapters: &BTreeMap<String, Arc<dyn RunnerAdapter>>,
    metrics: &crate::Metrics,
    options: ReapOptions,
) -> ReapReport {
    let mut report = ReapReport {
        dry_run: options.dry_run,
        ..ReapReport::default()
    };
    let ctx = RunContext::new(format!("reap-{}", now_ms()), "reaper");
    let entries = match store.journal_entries().await {
        Ok(entries) => entries,
        Err(e) => {
            report.errors.push(format!("cannot read the journal: {e}"));
            return report;
        }
    };
    let stale_ms = u64::try_from(options.stale_after.as_millis()).unwrap_or(u64::MAX);
    let now = now_ms();
    let owner_alive = |beat: Option<u64>| beat.is_some_and(|b| now.saturating_sub(b) < stale_ms);

    let mut held = BTreeSet::new();
    for entry in &entries {
        let orphaned = match entry.state {
            JournalState::Released => continue,
            JournalState::TeardownFailed => true,
            JournalState::Live => !owner_alive(entry.owner_heartbeat_ms),
        };
        if !orphaned {
            held.insert(entry.handle.handle_id().to_owned());
            continue;
        }
        let id = entry.handle.handle_id().to_owned();
        report.orphans.push(id.clone());
        if options.dry_run {
            continue;
        }
        let Some(adapter) = adapters.get(entry.handle.runner_type()) else {
            report.errors.push(format!(
                "handle {id} is of runner type `{}`, which this worker has no config for",
                entry.handle.runner_type()
            ));
            continue;
        };
        match adapter.teardown(&ctx, &entry.handle).await {
            Ok(()) => {
                report.torn_down.push(id);
                if let Err(e) = store
                    .journal_end(&entry.execution_key, JournalState::Released, Some("reaped"))
                    .await
                {
                    report.errors.push(e.to_string());
                }
            }
            Err(e) => report.errors.push(e.to_string()),
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
        for resource in owned {
            if held.contains(&resource.resource_id)
                || report.orphans.contains(&resource.resource_id)
            {
                continue;
            }
            let young = resource
                .age_seconds
                .is_some_and(|age| age < options.leak_grace.as_secs());
            if young {
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
                Ok(()) => {
                    report.torn_down.push(resource.resource_id.clone());
                    if let Some(key) = &resource.execution_key {
                        let _ = store
                            .journal_end(key, JournalState::Released, Some("reaped as a leak"))
                            .await;
                    }
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
    report
}
