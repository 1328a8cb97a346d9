//! The queue and store behaviour suite, run against SQLite and a real
//! PostgreSQL server alike: lease, extend, ack, requeue, dead letter and
//! replay; lease-token fencing; visibility expiry; unique execution keys;
//! batches; journal claim rules; heartbeats; locks; leak sightings;
//! execution records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pg_common;

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
    workers_register_beat_and_are_pruned,
    a_lock_has_one_holder_until_it_expires,
    leak_sightings_remember_the_first_time,
    records_keep_the_timeline_attempts_and_result,
    one_batch_of_state_changes_keeps_every_event_and_the_right_state,
    history_filters_and_pages,
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

/// Ready tasks and tasks whose lease expired are leased in the order they
/// became visible (SQLite reads each state in index order and merges).
async fn leases_go_oldest_first_across_ready_and_expired_tasks(f: Fixture) {
    let q = &f.queue;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for key in ["order-a", "order-b", "order-c"] {
            ids.push(q.enqueue(&task(key)).await.unwrap().task_id);
        }
        ids
    };
    // a is leased for a moment, so it becomes visible again after b and c.
    let first = q
        .lease_many("w1", Duration::from_millis(1), 1)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].task_id, ids[0]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let got = q.lease_many("w2", LONG, 1).await.unwrap();
        assert_eq!(got.len(), 1, "one task a call");
        order.push(got[0].task_id.clone());
    }
    assert_eq!(order, [ids[1].clone(), ids[2].clone(), ids[0].clone()]);
    assert!(q.lease_many("w2", LONG, 3).await.unwrap().is_empty());
}

async fn lease_ack_requeue_dead_letter_and_replay(f: Fixture) {
    let q = &f.queue;
    let id = q.enqueue(&task("a")).await.unwrap().task_id;
    let lease = q.lease("w1", LONG).await.unwrap().unwrap();
    assert_eq!((lease.task_id.as_str(), lease.attempt), (id.as_str(), 1));
    assert!(
        q.lease("w2", LONG).await.unwrap().is_none(),
        "leased tasks are invisible"
    );
    q.requeue(&lease, Duration::ZERO, record(1), true)
        .await
        .unwrap();
    // The old lease is settled: using it again is refused.
    assert!(matches!(
        q.ack(&lease, "{}").await,
        Err(StoreError::LeaseLost { .. })
    ));
    let again = q.lease("w2", LONG).await.unwrap().unwrap();
    assert_eq!(again.attempt, 2);
    assert_eq!(again.history.len(), 1);
    q.dead_letter(&again, "gave up", record(2)).await.unwrap();
    let dead = q.dlq_list(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].history.len(), 2);
    assert_eq!(q.depth().await.unwrap().dead, 1);
    let new_id = q.dlq_replay(&dead[0].id).await.unwrap();
    assert_ne!(new_id, id);
    assert!(q.dlq_list(10).await.unwrap().is_empty());
    let fresh = q.lease("w3", LONG).await.unwrap().unwrap();
    assert_eq!(fresh.attempt, 1);
    q.ack(&fresh, "{\"ok\":true}").await.unwrap();
    let depth = q.depth().await.unwrap();
    assert_eq!((depth.done, depth.ready, depth.leased), (1, 0, 0));
    assert!(matches!(
        q.dlq_show("999").await,
        Err(StoreError::NotFound { .. })
    ));
    // A delayed requeue stays invisible until its delay passed.
    q.enqueue(&task("b")).await.unwrap();
    let b = q.lease("w", LONG).await.unwrap().unwrap();
    q.requeue(&b, LONG, record(1), true).await.unwrap();
    assert!(q.lease("w", LONG).await.unwrap().is_none());
    assert_eq!(q.depth().await.unwrap().delayed, 1);
}

async fn an_expired_lease_is_redelivered_and_the_old_token_is_fenced(f: Fixture) {
    let q = &f.queue;
    q.enqueue(&task("x")).await.unwrap();
    let first = q
        .lease("dead-worker", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let second = q.lease("w2", LONG).await.unwrap().unwrap();
    assert_eq!(second.task_id, first.task_id);
    assert_eq!(second.attempt, 2);
    for settled in [
        q.extend(&first, Duration::from_secs(5)).await,
        q.ack(&first, "{}").await,
        q.requeue(&first, Duration::ZERO, record(1), true).await,
        q.dead_letter(&first, "x", record(1)).await,
    ] {
        assert!(
            matches!(settled, Err(StoreError::LeaseLost { .. })),
            "{settled:?}"
        );
    }
    q.extend(&second, LONG).await.unwrap();
    // An uncounted requeue gives the attempt back.
    q.requeue(&second, Duration::ZERO, record(2), false)
        .await
        .unwrap();
    let third = q.lease("w3", LONG).await.unwrap().unwrap();
    assert_eq!(third.attempt, 2);
}

async fn an_execution_key_is_submitted_once(f: Fixture) {
    let q = &f.queue;
    let first = q.enqueue(&task("once")).await.unwrap();
    assert!(!first.existing);
    let again = q.enqueue(&task("once")).await.unwrap();
    assert!(again.existing);
    assert_eq!(again.task_id, first.task_id, "the live task is returned");
    assert_eq!(q.depth().await.unwrap().ready, 1);
    let lease = q.lease("w", LONG).await.unwrap().unwrap();
    q.ack(&lease, "{}").await.unwrap();
    let after = q.enqueue(&task("once")).await.unwrap();
    assert!(after.existing, "a settled execution is not run again");
    assert_eq!(q.depth().await.unwrap().ready, 0);
}

async fn a_batch_is_all_or_nothing(f: Fixture) {
    let q = &f.queue;
    q.enqueue(&task("taken")).await.unwrap();
    let batch: Vec<_> = ["n1", "n2", "taken", "n3"]
        .iter()
        .map(|k| (task(k), new_execution(&task(k))))
        .collect();
    match q.submit_batch(&batch).await {
        Err(StoreError::Exists { keys }) => assert_eq!(keys, vec!["taken".to_owned()]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        q.depth().await.unwrap().ready,
        1,
        "nothing of the batch was queued"
    );
    assert!(f.store.execution("n1").await.unwrap().is_none());
    let batch: Vec<_> = (0..300)
        .map(|i| {
            let t = task(&format!("b{i}"));
            let n = new_execution(&t);
            (t, n)
        })
        .collect();
    let ids = q.submit_batch(&batch).await.unwrap();
    assert_eq!(ids.len(), 300);
    assert_eq!(q.depth().await.unwrap().ready, 301);
}

async fn concurrent_leasers_never_share_a_task(f: Fixture) {
    const TASKS: usize = 200;
    let batch: Vec<_> = (0..TASKS)
        .map(|i| {
            let t = task(&format!("c{i}"));
            let n = new_execution(&t);
            (t, n)
        })
        .collect();
    f.queue.submit_batch(&batch).await.unwrap();
    let mut leasers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let q = Arc::clone(&f.queue);
        leasers.spawn(async move {
            let mut got = Vec::new();
            for _ in 0..200 {
                let leases = q.lease_many(&format!("w{w}"), LONG, 7).await.unwrap();
                if leases.is_empty() {
                    break;
                }
                for lease in leases {
                    got.push(lease.task_id.clone());
                    q.ack(&lease, "{}").await.unwrap();
                }
            }
            got
        });
    }
    let mut all = Vec::new();
    while let Some(got) = leasers.join_next().await {
        all.extend(got.unwrap());
    }
    let unique: std::collections::BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), TASKS, "every task leased once");
    assert_eq!(unique.len(), TASKS);
    assert_eq!(f.queue.depth().await.unwrap().done, TASKS as u64);
}

async fn a_queued_task_can_be_removed(f: Fixture) {
    let q = &f.queue;
    q.enqueue(&task("r1")).await.unwrap();
    q.enqueue(&task("r2")).await.unwrap();
    let leased = q.lease("w", LONG).await.unwrap().unwrap();
    assert_eq!(Task::parse(&leased.body).unwrap().execution_key, "r1");
    assert!(!q.remove_queued("r1").await.unwrap(), "a leased task stays");
    assert!(q.remove_queued("r2").await.unwrap());
    assert!(q.lease("w", LONG).await.unwrap().is_none());
}

fn handle(id: &str) -> RunnerHandle {
    RunnerHandle::new("local_mock", id, "e", &serde_json::json!({"x": 1})).unwrap()
}

fn beat(id: &str) -> WorkerBeat {
    WorkerBeat {
        id: id.into(),
        host: "h".into(),
        pid: 42,
        runners: vec!["local_mock".into()],
        in_flight: 1,
    }
}

async fn journal_claims_follow_the_owners_heartbeat(f: Fixture) {
    let s = &f.store;
    assert!(matches!(
        s.journal_claim("k", "a", LONG).await.unwrap(),
        Claim::Fresh
    ));
    s.worker_heartbeat(&beat("a")).await.unwrap();
    let id = s
        .journal_provisioned("k", &handle("h1"), "a")
        .await
        .unwrap();
    // The owner itself reuses it; another worker waits while it beats.
    assert!(matches!(
        s.journal_claim("k", "a", LONG).await.unwrap(),
        Claim::Reuse(e) if e.id == id
    ));
    assert!(matches!(
        s.journal_claim("k", "b", LONG).await.unwrap(),
        Claim::HeldBy { worker } if worker == "a"
    ));
    // A second live handle for one key is refused.
    assert!(matches!(
        s.journal_provisioned("k", &handle("h2"), "b").await,
        Err(StoreError::Exists { .. })
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Silent for longer than stale_after: taken over.
    let Claim::Reuse(entry) = s
        .journal_claim("k", "b", Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!("not taken over");
    };
    assert_eq!((entry.id, entry.owner.as_str()), (id, "b"));
    assert_eq!(entry.handle.handle_id(), "h1");
    // The reaper takes an entry over only from the owner it saw.
    assert!(!s.journal_take(id, "a", "reaper").await.unwrap());
    assert!(s.journal_take(id, "b", "reaper").await.unwrap());
    // A teardown_failed entry is never overwritten by a later provision.
    s.journal_end(id, JournalState::TeardownFailed, Some("boom"))
        .await
        .unwrap();
    let second = s
        .journal_provisioned("k", &handle("h2"), "c")
        .await
        .unwrap();
    assert_ne!(second, id);
    let open = s.journal_open_entries(LONG).await.unwrap();
    assert_eq!(open.len(), 2);
    let failed = open.iter().find(|e| e.id == id).unwrap();
    assert_eq!(failed.state, JournalState::TeardownFailed);
    assert_eq!(failed.note.as_deref(), Some("boom"));
    s.journal_reap_failed(id, "again").await.unwrap();
    let failed = s.journal_get(id, LONG).await.unwrap().unwrap();
    assert_eq!(failed.reap_attempts, 1);
    s.journal_end(second, JournalState::Released, None)
        .await
        .unwrap();
    s.journal_end(id, JournalState::Released, None)
        .await
        .unwrap();
    assert!(s.journal_open_entries(LONG).await.unwrap().is_empty());
}

async fn workers_register_beat_and_are_pruned(f: Fixture) {
    let s = &f.store;
    s.worker_heartbeat(&beat("w1")).await.unwrap();
    s.worker_heartbeat(&beat("w2")).await.unwrap();
    let workers = s.workers(LONG).await.unwrap();
    assert_eq!(workers.len(), 2);
    assert!(
        workers
            .iter()
            .all(|w| w.alive && w.beat.runners == ["local_mock"])
    );
    // w2 holds an open journal entry: pruning keeps it.
    s.journal_provisioned("k", &handle("h"), "w2")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.prune_workers(Duration::ZERO).await.unwrap(), 1);
    let left: Vec<_> = s
        .workers(LONG)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.beat.id)
        .collect();
    assert_eq!(left, vec!["w2".to_owned()]);
    assert!(!s.workers(Duration::ZERO).await.unwrap()[0].alive);
    s.worker_gone("w2").await.unwrap();
    assert!(s.workers(LONG).await.unwrap().is_empty());
}

async fn a_lock_has_one_holder_until_it_expires(f: Fixture) {
    let s = &f.store;
    assert!(s.try_lock("reaper", "a", LONG).await.unwrap());
    assert!(!s.try_lock("reaper", "b", LONG).await.unwrap());
    assert!(
        s.try_lock("reaper", "a", LONG).await.unwrap(),
        "the holder renews"
    );
    s.unlock("reaper", "b").await.unwrap();
    assert!(
        !s.try_lock("reaper", "b", LONG).await.unwrap(),
        "only the holder unlocks"
    );
    s.unlock("reaper", "a").await.unwrap();
    assert!(s.try_lock("reaper", "b", Duration::ZERO).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        s.try_lock("reaper", "c", LONG).await.unwrap(),
        "an expired lock is free"
    );
}

async fn leak_sightings_remember_the_first_time(f: Fixture) {
    let s = &f.store;
    let ids = vec!["r1".to_owned(), "r2".to_owned()];
    assert!(
        s.leak_sightings("local", &ids, false)
            .await
            .unwrap()
            .is_empty(),
        "a dry run writes nothing"
    );
    let first = s.leak_sightings("local", &ids, true).await.unwrap();
    assert_eq!(first.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = s.leak_sightings("local", &ids[..1], true).await.unwrap();
    assert!(later["r1"] >= Duration::from_millis(250), "{later:?}");
    // r2 was not listed again: forgotten, so it starts over.
    let again = s.leak_sightings("local", &ids, true).await.unwrap();
    assert!(again["r2"] < Duration::from_millis(250), "{again:?}");
    assert!(again["r1"] >= Duration::from_millis(250));
}

async fn records_keep_the_timeline_attempts_and_result(f: Fixture) {
    use orchestrator_worker::store::{AttemptDetail, RecordedResult, Settlement};
    let (q, s) = (&f.queue, &f.store);
    let t = task("rec");
    q.enqueue(&t).await.unwrap();
    let new = new_execution(&t);
    let at = orchestrator_worker::store::now_ms();
    let state = |state, m: &str| RecordUpdate::State {
        new: new.clone(),
        state,
        at_ms: at,
        attempt: Some(1),
        worker: Some("w".into()),
        message: m.into(),
    };
    let detail = AttemptDetail {
        attempt: 1,
        worker: "w".into(),
        started_ms: at,
        ended_ms: at + 5,
        phases: vec![],
        error: None,
        disposition: "ack".into(),
    };
    s.record(&[
        state(ExecState::Leased, "leased"),
        state(ExecState::Provisioning, "provision"),
        state(ExecState::Running, "run_test"),
        RecordUpdate::CancelRequested {
            key: "rec".into(),
            at_ms: at,
            by: "me".into(),
        },
    ])
    .await
    .unwrap();
    assert_eq!(
        s.cancel_requested(&["rec".into(), "other".into()])
            .await
            .unwrap(),
        vec!["rec".to_owned()]
    );
    s.record(&[RecordUpdate::Settled(Box::new(Settlement {
        new: new.clone(),
        state: ExecState::Passed,
        at_ms: at + 6,
        attempt: Some(detail.clone()),
        result: Some(RecordedResult {
            status: "passed".into(),
            exit_code: Some(0),
            duration_ms: 5,
            counts: None,
            diagnosis: None,
        }),
        artifacts: vec![],
        cases: vec![],
        error: None,
    }))])
    .await
    .unwrap();
    // A late event of the attempt does not reopen a settled record.
    s.record(&[state(ExecState::TearingDown, "late")])
        .await
        .unwrap();
    let r = s.execution("rec").await.unwrap().unwrap();
    assert_eq!(r.state, ExecState::Passed);
    assert_eq!(r.new.correlation_id, "pipeline-7");
    assert_eq!(r.new.payload, "payload-rec");
    assert_eq!(r.attempts, vec![detail]);
    assert_eq!(r.result.as_ref().unwrap().exit_code, Some(0));
    assert!(r.settled_ms.is_some());
    let states: Vec<_> = r.timeline.iter().map(|e| e.state).collect();
    assert_eq!(states.first(), Some(&ExecState::Queued));
    assert!(states.contains(&ExecState::Running) && states.contains(&ExecState::Passed));
    assert!(
        s.cancel_requested(&["rec".into()])
            .await
            .unwrap()
            .is_empty(),
        "settled"
    );
    assert!(s.execution("nope").await.unwrap().is_none());
}

/// What the recorder sends a busy store: several state changes of two
/// executions, one settling in the middle, a late event after it, all in
/// one batch. Every event is kept; each record ends in its last state, and
/// the settled one in its final one.
async fn one_batch_of_state_changes_keeps_every_event_and_the_right_state(f: Fixture) {
    use orchestrator_worker::store::Settlement;
    let (q, s) = (&f.queue, &f.store);
    let (a, b) = (task("batch-a"), task("batch-b"));
    q.enqueue(&a).await.unwrap();
    q.enqueue(&b).await.unwrap();
    let at = orchestrator_worker::store::now_ms();
    let state = |t: &Task, state, m: &str| RecordUpdate::State {
        new: new_execution(t),
        state,
        at_ms: at,
        attempt: Some(1),
        worker: Some("w".into()),
        message: m.into(),
    };
    s.record(&[
        state(&a, ExecState::Leased, "a leased"),
        state(&b, ExecState::Leased, "b leased"),
        state(&a, ExecState::Provisioning, "a provision"),
        state(&b, ExecState::Provisioning, "b provision"),
        state(&a, ExecState::Running, "a run"),
        RecordUpdate::Settled(Box::new(Settlement {
            new: new_execution(&a),
            state: ExecState::Passed,
            at_ms: at + 1,
            attempt: None,
            result: None,
            artifacts: vec![],
            cases: vec![],
            error: None,
        })),
        state(&a, ExecState::TearingDown, "a late"),
        state(&b, ExecState::Running, "b run"),
    ])
    .await
    .unwrap();
    let ra = s.execution("batch-a").await.unwrap().unwrap();
    assert_eq!(
        ra.state,
        ExecState::Passed,
        "a settled record keeps its state"
    );
    let messages: Vec<_> = ra.timeline.iter().map(|e| e.message.as_str()).collect();
    for m in ["a leased", "a provision", "a run", "a late"] {
        assert!(messages.contains(&m), "{m} missing from {messages:?}");
    }
    let rb = s.execution("batch-b").await.unwrap().unwrap();
    assert_eq!(rb.state, ExecState::Running, "the last state change wins");
    let states: Vec<_> = rb.timeline.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [
            ExecState::Queued,
            ExecState::Leased,
            ExecState::Provisioning,
            ExecState::Running
        ]
    );
}

async fn history_filters_and_pages(f: Fixture) {
    let (q, s) = (&f.queue, &f.store);
    for i in 0..5 {
        let mut t = task(&format!("h{i}"));
        if i % 2 == 0 {
            t.correlation_id = Some("even".into());
        }
        q.enqueue(&t).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let all = s
        .executions(&HistoryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = all.iter().map(|r| r.new.key.as_str()).collect();
    assert_eq!(keys, ["h4", "h3", "h2", "h1", "h0"], "newest first");
    let even = s
        .executions(&HistoryFilter {
            correlation_id: Some("even".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(even.len(), 3);
    let page = s
        .executions(&HistoryFilter {
            limit: 2,
            before_ms: Some(all[1].created_ms),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.new.key.as_str()).collect::<Vec<_>>(),
        ["h2", "h1"]
    );
    let queued = s
        .executions(&HistoryFilter {
            state: Some(ExecState::Queued),
            runner: Some("local_mock".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 5);
}
