//! The two journal writes a serving worker takes out of a test's slot:
//! the claim, skipped when the lease already read that no live entry
//! exists (`Execution::journal_clear`), and the end, written by the caller
//! after the slot is given back (`Execution::journal_end_by_caller`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use orchestrator_worker::engine::{EngineSettings, Execution, JournalEnd};
use orchestrator_worker::store::{JournalState, SqliteStore, Store, WorkerBeat};
use orchestrator_worker::{Engine, Metrics, RunnerFactory};
use runner_core::{RunContext, RunnerConfig, RunnerHandle, TestStatus};
use runner_mock::fixtures;

mod common;

fn engine(store: &SqliteStore) -> Engine {
    let config =
        RunnerConfig::from_yaml_str("type: local_mock\nbackend: {artifacts: memory}\n").unwrap();
    let adapter = RunnerFactory::with_builtins(Metrics::new())
        .create(&config)
        .unwrap();
    let settings = EngineSettings {
        worker_id: "me".into(),
        backoff: common::fast_backoff(),
        ..EngineSettings::default()
    };
    Engine::for_runner(adapter, &config, settings).with_journal(Arc::new(store.clone()))
}

fn execution(journal_clear: bool, journal_end_by_caller: bool) -> Execution<'static> {
    static BENCH: std::sync::OnceLock<runner_core::BenchSpec> = std::sync::OnceLock::new();
    static PAYLOAD: std::sync::OnceLock<runner_core::TestPayload> = std::sync::OnceLock::new();
    Execution {
        ctx: RunContext::new("e.1", "c")
            .with_execution_key("e")
            .with_worker("me"),
        bench: BENCH.get_or_init(fixtures::bench),
        payload: PAYLOAD.get_or_init(fixtures::passing),
        observer: None,
        hurry: None,
        journal_clear,
        journal_end_by_caller,
        lease_held_until: None,
    }
}

#[tokio::test]
async fn the_caller_writes_the_journals_end_when_it_asked_to() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
    let engine = engine(&store);
    let mut outcome = engine.execute(execution(true, true)).await;
    assert_eq!(
        outcome.result.as_ref().map(|r| r.status),
        Some(TestStatus::Passed)
    );
    let Some(JournalEnd { entry, state, .. }) = outcome.journal_end.clone() else {
        panic!("no journal end handed back: {outcome:?}");
    };
    assert_eq!(state, JournalState::Released);
    // Torn down, but not yet written: a crash here leaves it live for the
    // reaper (teardown is idempotent).
    let live = store.journal_get(entry, Duration::from_secs(60)).await;
    assert_eq!(live.unwrap().unwrap().state, JournalState::Live);
    engine.end_journal(&mut outcome).await;
    assert!(outcome.journal_end.is_none());
    let ended = store.journal_get(entry, Duration::from_secs(60)).await;
    assert_eq!(ended.unwrap().unwrap().state, JournalState::Released);

    // Without the flag the engine writes it itself.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
    let outcome = engine_run(&store, execution(false, false)).await;
    assert!(outcome.journal_end.is_none());
    assert!(
        store
            .journal_open_entries(Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn engine_run(
    store: &SqliteStore,
    exec: Execution<'static>,
) -> orchestrator_worker::engine::ExecutionOutcome {
    engine(store).execute(exec).await
}

/// A live worker holds a handle for the key. Claiming finds it and defers
/// without provisioning; a clear lease skips the claim (one round trip
/// fewer), so only the journal's unique live entry per key stops a second
/// handle: provisioned, refused, torn down, deferred all the same.
#[tokio::test]
async fn a_clear_lease_skips_the_claim_and_the_journal_still_refuses_a_second_handle() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
    store
        .worker_heartbeat(&WorkerBeat {
            id: "other".into(),
            host: "h".into(),
            pid: 1,
            runners: vec!["local_mock".into()],
            in_flight: 1,
        })
        .await
        .unwrap();
    let theirs = RunnerHandle::new("local_mock", "theirs", "e.1", &serde_json::json!({})).unwrap();
    store
        .journal_provisioned("e", &theirs, "other")
        .await
        .unwrap();

    let claimed = engine_run(&store, execution(false, false)).await;
    assert_eq!(claimed.held_by.as_deref(), Some("other"));
    assert_eq!(claimed.provision_calls, 0);

    let skipped = engine_run(&store, execution(true, false)).await;
    assert!(skipped.held_by.is_some(), "{skipped:?}");
    assert_eq!(skipped.provision_calls, 1);
    let open = store
        .journal_open_entries(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(open.len(), 1, "only theirs stays: {open:?}");
    assert_eq!(open[0].handle.handle_id(), "theirs");
}
