//! The queue and store behaviour suite, run against SQLite and a real
//! PostgreSQL server alike: lease, extend, ack, requeue, dead letter and
//! replay; lease-token fencing; visibility expiry; unique execution keys;
//! batches; journal claim rules; heartbeats; locks; leak sightings;
//! execution records.
//!
//! One file per concern: `queue.rs` (the task queue), `state.rs` (the
//! journal, worker registry, locks and leak sightings), `records.rs`
//! (execution records and history); this file holds the fixtures and
//! the list of cases run on both stores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../pg_common/mod.rs"]
mod pg_common;
mod queue;
mod records;
mod state;

use queue::*;
use records::*;
use state::*;

use std::sync::Arc;
use std::time::Duration;

use orchestrator_worker::Task;
use orchestrator_worker::queue::{AttemptRecord, TaskQueue};
use orchestrator_worker::report::new_execution;
use orchestrator_worker::store::{
    Claim, ExecState, HistoryFilter, JournalState, RecordUpdate, SqliteStore, Store, StoreError,
    WorkerBeat,
};
use runner_core::RunnerHandle;

struct Fixture {
    queue: Arc<dyn TaskQueue>,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
    Fixture {
        queue: Arc::new(s.clone()),
        store: Arc::new(s),
        _dir: Some(dir),
    }
}

async fn postgres() -> Fixture {
    let s = pg_common::fresh_store().await;
    Fixture {
        queue: Arc::new(s.clone()),
        store: Arc::new(s),
        _dir: None,
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite().await).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::postgres().await).await
                }
            )*
        }
    };
}

suite!(
    leases_go_oldest_first_across_ready_and_expired_tasks,
    lease_ack_requeue_dead_letter_and_replay,
    an_expired_lease_is_redelivered_and_the_old_token_is_fenced,
    an_execution_key_is_submitted_once,
    a_batch_is_all_or_nothing,
    concurrent_leasers_never_share_a_task,
    a_queued_task_can_be_removed,
    journal_claims_follow_the_owners_heartbeat,
    a_lease_tells_whether_the_journal_holds_its_key,
    workers_register_beat_and_are_pruned,
    a_lock_has_one_holder_until_it_expires,
    leak_sightings_remember_the_first_time,
    records_keep_the_timeline_attempts_and_result,
    one_batch_of_state_changes_keeps_every_event_and_the_right_state,
    history_filters_and_pages,
    a_settlement_goes_with_its_journal_end_and_ack,
);

fn task(key: &str) -> Task {
    let mut t = Task::new(
        key,
        "local_mock",
        Default::default(),
        runner_core::TestPayload::new(["mock"]).with_name(format!("payload-{key}")),
    );
    t.correlation_id = Some("pipeline-7".into());
    t
}

fn record(attempt: u32) -> AttemptRecord {
    AttemptRecord {
        attempt,
        worker: "w".into(),
        phase: None,
        kind: None,
        message: "m".into(),
        at_ms: 0,
        counted: true,
    }
}

const LONG: Duration = Duration::from_secs(60);
