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
