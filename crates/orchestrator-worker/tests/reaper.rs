//! The reaper: orphans of dead workers, failed teardowns and backend leaks,
//! with and without --dry-run, and never a live worker's environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use orchestrator_worker::Metrics;
use orchestrator_worker::metrics::sum_samples;
use orchestrator_worker::reaper::{ReapOptions, reap};
use orchestrator_worker::store::{JournalState, SqliteStore, Store, WorkerBeat};
use runner_core::{Phase, RunContext, RunnerAdapter};
use runner_mock::{Fault, FaultPlan, LocalMockRunner, fixtures};

fn beat(id: &str) -> WorkerBeat {
    WorkerBeat {
        id: id.into(),
        pid: 1,
        ..WorkerBeat::default()
    }
}

fn options(grace: Duration, dry_run: bool) -> ReapOptions {
    ReapOptions {
        stale_after: Duration::from_secs(60),
        leak_grace: grace,
        teardown_attempts: 2,
        reaper_id: "reaper-1".into(),
        dry_run,
    }
}

fn adapters(mock: &Arc<LocalMockRunner>) -> BTreeMap<String, Arc<dyn RunnerAdapter>> {
    BTreeMap::from([(
        "local_mock".to_owned(),
        mock.clone() as Arc<dyn RunnerAdapter>,
    )])
}

async fn provision(mock: &LocalMockRunner, key: &str, worker: &str) -> runner_core::RunnerHandle {
    let ctx = RunContext::new(format!("{key}.1"), "c")
        .with_execution_key(key)
        .with_worker(worker);
    mock.provision(&ctx, &fixtures::bench()).await.unwrap()
}

#[tokio::test]
async fn dead_workers_handles_and_old_leaks_go_and_live_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
    let mock = Arc::new(LocalMockRunner::in_memory());

    // An execution whose worker died: journaled, owner never heartbeats again.
    let orphan = provision(&mock, "orphan", "dead-worker").await;
    store
        .journal_provisioned("orphan", &orphan, "dead-worker")
        .await
        .unwrap();
    // An execution held by a live worker: must be left alone.
    store.worker_heartbeat(&beat("live-worker")).await.unwrap();
    let held = provision(&mock, "held", "live-worker").await;
    store
        .journal_provisioned("held", &held, "live-worker")
        .await
        .unwrap();
    // A live worker's resource not journaled yet (between provision and
    // journal): left alone whatever its age.
    let young = provision(&mock, "in-flight", "live-worker").await;
    // A resource nobody journaled whose worker is gone: a leak.
    let leak = provision(&mock, "leak", "dead-worker").await;

    let metrics = Metrics::new();
    // The mock reports no age: the first reap only notes the sightings.
    let report = reap(
        &store,
        &adapters(&mock),
        &metrics,
        options(Duration::from_millis(300), false),
    )
    .await;
    assert_eq!(report.orphans, vec![orphan.handle_id().to_owned()]);
    assert!(
        report.leaks.is_empty(),
        "unknown age gets the grace: {report:?}"
    );
    assert_eq!(report.torn_down, vec![orphan.handle_id().to_owned()]);

    tokio::time::sleep(Duration::from_millis(400)).await;
    let dry = reap(
        &store,
        &adapters(&mock),
        &metrics,
        options(Duration::from_millis(300), true),
    )
    .await;
    assert_eq!(dry.leaks, vec![leak.handle_id().to_owned()]);
    assert!(dry.torn_down.is_empty(), "a dry run changes nothing");
    assert_eq!(mock.live_handles().len(), 3);

    let report = reap(
        &store,
        &adapters(&mock),
        &metrics,
        options(Duration::from_millis(300), false),
    )
    .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.torn_down, vec![leak.handle_id().to_owned()]);
    let mut live = mock.live_handles();
    live.sort();
    let mut expected = vec![held.handle_id().to_owned(), young.handle_id().to_owned()];
    expected.sort();
    assert_eq!(
        live, expected,
        "the live worker's environments are untouched"
    );
    let states: BTreeMap<_, _> = store
        .journal_all()
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
    assert_eq!(leaked, 2, "one leak counted by each of the two later reaps");
}

#[tokio::test]
async fn a_failed_teardown_is_retried_a_bounded_number_of_times_and_only_when_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
    // Teardown always fails: the reaper tries twice, then leaves it.
    let mock = Arc::new(
        LocalMockRunner::in_memory()
            .with_faults(FaultPlan::none().always(Phase::Teardown, Fault::Transient)),
    );
    store.worker_heartbeat(&beat("w")).await.unwrap();
    let handle = provision(&mock, "k", "w").await;
    let id = store.journal_provisioned("k", &handle, "w").await.unwrap();
    store
        .journal_end(id, JournalState::TeardownFailed, Some("boom"))
        .await
        .unwrap();
    let metrics = Metrics::new();
    for _ in 0..4 {
        reap(
            &store,
            &adapters(&mock),
            &metrics,
            options(Duration::ZERO, false),
        )
        .await;
    }
    assert_eq!(
        mock.call_count(Phase::Teardown),
        2,
        "reap_teardown_attempts bounds the retries"
    );
    let report = reap(
        &store,
        &adapters(&mock),
        &metrics,
        options(Duration::ZERO, false),
    )
    .await;
    assert_eq!(report.failed_teardowns, vec![handle.handle_id().to_owned()]);
    assert!(report.left[0].contains("2 time(s)"), "{:?}", report.left);
}

#[tokio::test]
async fn a_live_workers_claim_waits_and_a_dead_workers_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
    let mock = LocalMockRunner::in_memory();
    store.worker_heartbeat(&beat("alive")).await.unwrap();
    let handle = provision(&mock, "k", "alive").await;
    let first = store
        .journal_provisioned("k", &handle, "alive")
        .await
        .unwrap();
    let stale = Duration::from_secs(60);
    use orchestrator_worker::store::{Claim, StoreError};
    assert!(matches!(
        store.journal_claim("k", "other", stale).await.unwrap(),
        Claim::HeldBy { worker } if worker == "alive"
    ));
    // Its owner is silent for longer than stale_after: taken over.
    assert!(matches!(
        store.journal_claim("k", "other", Duration::ZERO).await.unwrap(),
        Claim::Reuse(entry) if entry.id == first && entry.owner == "other"
    ));
    // A second live handle for the key is refused, and a teardown_failed
    // entry is never overwritten by a later provision.
    assert!(matches!(
        store.journal_provisioned("k", &handle, "third").await,
        Err(StoreError::Exists { .. })
    ));
    store
        .journal_end(first, JournalState::TeardownFailed, Some("x"))
        .await
        .unwrap();
    let second = store
        .journal_provisioned("k", &handle, "third")
        .await
        .unwrap();
    assert_ne!(first, second);
    let all = store.journal_all().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].state, JournalState::TeardownFailed);
}
