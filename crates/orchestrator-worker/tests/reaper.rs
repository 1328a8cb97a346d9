//! The reaper: orphans of dead workers, failed teardowns and backend leaks,
//! with and without --dry-run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use orchestrator_worker::Metrics;
use orchestrator_worker::metrics::sum_samples;
use orchestrator_worker::queue::{JournalState, SqliteStore};
use orchestrator_worker::reaper::{ReapOptions, reap};
use runner_core::{RunContext, RunnerAdapter};
use runner_mock::{LocalMockRunner, fixtures};

#[tokio::test]
async fn dry_run_lists_then_reap_tears_down_orphans_and_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
    let mock = Arc::new(LocalMockRunner::in_memory());
    let bench = fixtures::bench();

    // An execution whose worker died: journaled, owner never heartbeats again.
    let ctx = RunContext::new("orphan.1", "c").with_execution_key("orphan");
    let orphan = mock.provision(&ctx, &bench).await.unwrap();
    store
        .journal_provisioned("orphan", &orphan, "dead-worker")
        .await
        .unwrap();
    // An execution held by a live worker: must be left alone.
    store.worker_heartbeat("live-worker", 1).await.unwrap();
    let ctx = RunContext::new("held.1", "c").with_execution_key("held");
    let held = mock.provision(&ctx, &bench).await.unwrap();
    store
        .journal_provisioned("held", &held, "live-worker")
        .await
        .unwrap();
    // A resource nobody journaled (the worker died between provision and journal).
    let ctx = RunContext::new("leak.1", "c").with_execution_key("leak");
    let leak = mock.provision(&ctx, &bench).await.unwrap();

    let adapters: BTreeMap<String, Arc<dyn RunnerAdapter>> = BTreeMap::from([(
        "local_mock".to_owned(),
        mock.clone() as Arc<dyn RunnerAdapter>,
    )]);
    let metrics = Metrics::new();
    let options = ReapOptions {
        stale_after: Duration::from_secs(60),
        leak_grace: Duration::ZERO,
        dry_run: true,
    };
    let report = reap(&store, &adapters, &metrics, options).await;
    assert_eq!(report.orphans, vec![orphan.handle_id().to_owned()]);
    assert_eq!(report.leaks, vec![leak.handle_id().to_owned()]);
    assert!(report.torn_down.is_empty(), "a dry run changes nothing");
    assert_eq!(mock.live_handles().len(), 3);

    let report = reap(
        &store,
        &adapters,
        &metrics,
        ReapOptions {
            dry_run: false,
            ..options
        },
    )
    .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut torn = report.torn_down.clone();
    torn.sort();
    let mut expected = vec![orphan.handle_id().to_owned(), leak.handle_id().to_owned()];
    expected.sort();
    assert_eq!(torn, expected);
    assert_eq!(mock.live_handles(), vec![held.handle_id().to_owned()]);
    let states: BTreeMap<_, _> = store
        .journal_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.execution_key, e.state))
        .collect();
    assert_eq!(states["orphan"], JournalState::Released);
    assert_eq!(states["held"], JournalState::Live);
    let leaked = sum_samples(
        &metrics.encode(),
        "orchestrator_leaked_handles_total",
        "local_mock",
    );
    assert_eq!(leaked, 2, "one leak counted by each of the two reaps");
}
