//! The task queue: lease order, ack, requeue, dead letter, replay,
//! fencing, unique keys, batches, concurrent leasers, removal.

use super::*;

/// Ready tasks and tasks whose lease expired are leased in the order they
/// became visible (SQLite reads each state in index order and merges).
pub(super) async fn leases_go_oldest_first_across_ready_and_expired_tasks(f: Fixture) {
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

pub(super) async fn lease_ack_requeue_dead_letter_and_replay(f: Fixture) {
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

pub(super) async fn an_expired_lease_is_redelivered_and_the_old_token_is_fenced(f: Fixture) {
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

pub(super) async fn an_execution_key_is_submitted_once(f: Fixture) {
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

pub(super) async fn a_batch_is_all_or_nothing(f: Fixture) {
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

pub(super) async fn concurrent_leasers_never_share_a_task(f: Fixture) {
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

pub(super) async fn a_queued_task_can_be_removed(f: Fixture) {
    let q = &f.queue;
    q.enqueue(&task("r1")).await.unwrap();
    q.enqueue(&task("r2")).await.unwrap();
    let leased = q.lease("w", LONG).await.unwrap().unwrap();
    assert_eq!(Task::parse(&leased.body).unwrap().execution_key, "r1");
    assert!(!q.remove_queued("r1").await.unwrap(), "a leased task stays");
    assert!(q.remove_queued("r2").await.unwrap());
    assert!(q.lease("w", LONG).await.unwrap().is_none());
}
