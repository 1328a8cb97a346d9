//! A worker whose task was redelivered (lease lost) must not tear down the
//! handle the new owner is using.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use orchestrator_worker::engine::{EngineSettings, Execution};
use orchestrator_worker::store::{Claim, JournalState, SqliteStore, Store};
use orchestrator_worker::{Engine, Metrics, RunnerFactory};
use runner_core::{Phase, RunContext, RunnerConfig};
use runner_mock::{Fault, FaultPlan, LocalMockRunner, fixtures};

#[tokio::test]
async fn teardown_is_skipped_once_another_worker_owns_the_handle() {
    // No lease known to be held: the owner is read before teardown.
    handed_over(None).await;
    // A lease known held until a moment that passed during the run: read too.
    handed_over(Some(std::time::Instant::now())).await;
}

/// While the caller surely holds the lease no other worker can have taken
/// the entry over, so teardown skips reading its owner (a store round trip
/// per test). The takeover below breaks that premise on purpose, to show
/// the read is what is skipped.
#[tokio::test]
async fn a_surely_held_lease_skips_the_owner_read_before_teardown() {
    let (outcome, mock, _dir, store) =
        run_and_take_over(Some(std::time::Instant::now() + Duration::from_secs(3600))).await;
    assert!(!outcome.handed_over, "{outcome:#?}");
    assert_eq!(outcome.teardown_calls, 1);
    assert_eq!(mock.call_count(Phase::Teardown), 1);
    assert_eq!(store.journal_all().await.unwrap()[0].owner, "second");
}

async fn handed_over(lease_held_until: Option<std::time::Instant>) {
    let (outcome, mock, _dir, store) = run_and_take_over(lease_held_until).await;
    let journal = store.journal_all().await.unwrap();
    assert!(outcome.handed_over, "{outcome:#?} {journal:#?}");
    assert_eq!(outcome.teardown_calls, 0);
    assert_eq!(mock.call_count(Phase::Teardown), 0);
    assert_eq!(
        mock.live_handles().len(),
        1,
        "the new owner's environment is intact"
    );
    let entry = &store.journal_all().await.unwrap()[0];
    assert_eq!(
        (entry.owner.as_str(), entry.state),
        ("second", JournalState::Live)
    );
}

/// Run one execution as worker "first" while worker "second" claims its
/// journaled handle (a redelivery).
async fn run_and_take_over(
    lease_held_until: Option<std::time::Instant>,
) -> (
    orchestrator_worker::engine::ExecutionOutcome,
    Arc<LocalMockRunner>,
    tempfile::TempDir,
    SqliteStore,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
    let mock = Arc::new(
        LocalMockRunner::in_memory()
            .with_faults(FaultPlan::none().always(Phase::RunTest, Fault::Delay { ms: 500 })),
    );
    let mut factory = RunnerFactory::empty(Metrics::new());
    let shared = mock.clone();
    factory.register("local_mock", move |_| Ok(shared.clone()));
    let adapter = factory.create(&RunnerConfig::new("local_mock")).unwrap();
    let engine = Engine::new(
        adapter,
        EngineSettings {
            worker_id: "first".into(),
            ..EngineSettings::default()
        },
    )
    .with_journal(Arc::new(store.clone()));

    let run = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .execute(Execution {
                    ctx: RunContext::new("k.1", "c").with_execution_key("k"),
                    bench: &fixtures::bench(),
                    payload: &fixtures::passing(),
                    observer: None,
                    hurry: None,
                    journal_clear: false,
                    journal_end_by_caller: false,
                    lease_held_until,
                })
                .await
        }
    });
    // Once the handle is journaled, a second worker takes the redelivered task over.
    // "first" never heartbeats, so it counts as dead and its handle may be
    // claimed.
    let mut claimed = false;
    for _ in 0..100 {
        claimed = matches!(
            store
                .journal_claim("k", "second", Duration::from_secs(60))
                .await
                .unwrap(),
            Claim::Reuse(_)
        );
        if claimed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(claimed, "the handle was never journaled");
    let outcome = run.await.unwrap();
    (outcome, mock, dir, store)
}
