//! The SQS task queue against moto's SQS (started by the test set-up):
//! redrive to the dead-letter queue after maxReceiveCount, a heartbeat
//! that keeps a long task invisible, requeue with delay, explicit dead
//! letters and replay, FIFO groups and deduplication.

#![cfg(feature = "sqs")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sqs_common;
use sqs_common as common;

use std::time::{Duration, Instant};

use orchestrator_worker::queue::sqs::SqsQueue;
use orchestrator_worker::queue::{AttemptRecord, TaskQueue, now_ms};

fn record(attempt: u32, message: &str) -> AttemptRecord {
    AttemptRecord {
        attempt,
        worker: "w1".into(),
        phase: None,
        kind: None,
        message: message.into(),
        at_ms: now_ms(),
        counted: true,
    }
}

/// Lease until something comes, bounded by `bound`.
async fn lease_within(
    queue: &SqsQueue,
    visibility: Duration,
    bound: Duration,
) -> Option<orchestrator_worker::queue::Lease> {
    let started = Instant::now();
    while started.elapsed() < bound {
        if let Some(lease) = queue.lease("w", visibility).await.unwrap() {
            return Some(lease);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_redriven_to_the_dlq_after_max_receive_count() {
    let moto = common::moto();
    let (queue, _) = common::sqs_queue(moto, "poison", 2, false).await;
    queue
        .enqueue(&common::mock_task("poison-1", 0))
        .await
        .unwrap();
    // Two deliveries whose workers "die" (never settle).
    for attempt in 1..=2 {
        let lease = lease_within(&queue, Duration::from_secs(1), Duration::from_secs(20))
            .await
            .expect("delivered");
        assert_eq!(lease.attempt, attempt);
    }
    // The third receive finds it gone: SQS moved it to the DLQ.
    let started = Instant::now();
    let mut letters = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        assert!(
            queue
                .lease("w", Duration::from_secs(1))
                .await
                .unwrap()
                .is_none()
        );
        letters = queue.dlq_list(10).await.unwrap();
        if !letters.is_empty() {
            break;
        }
    }
    assert_eq!(letters.len(), 1, "the poison message is in the DLQ");
    assert!(
        letters[0].reason.contains("maxReceiveCount"),
        "{:?}",
        letters[0]
    );
    assert!(letters[0].body.contains("poison-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_keeps_a_long_task_invisible() {
    let moto = common::moto();
    let (queue, _) = common::sqs_queue(moto, "heartbeat", 3, false).await;
    queue
        .enqueue(&common::mock_task("long-1", 0))
        .await
        .unwrap();
    let lease = lease_within(&queue, Duration::from_secs(2), Duration::from_secs(20))
        .await
        .unwrap();
    // Four times the visibility timeout passes; the lease is extended every
    // second, and another worker polling meanwhile never sees the task.
    let until = Instant::now() + Duration::from_secs(8);
    let mut polls = 0;
    while Instant::now() < until {
        queue.extend(&lease, Duration::from_secs(2)).await.unwrap();
        let other = queue.lease("w2", Duration::from_secs(2)).await.unwrap();
        assert!(
            other.is_none(),
            "the task was redelivered while its lease was kept"
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(polls >= 4);
    queue.ack(&lease, "{}").await.unwrap();
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.leased), (0, 0), "{depth:?}");
    // An ack with a stale receipt handle is a lost lease, not a success.
    let err = queue.extend(&lease, Duration::from_secs(2)).await;
    assert!(err.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_with_delay_hides_the_task_then_redelivers_it() {
    let moto = common::moto();
    let (queue, _) = common::sqs_queue(moto, "requeue", 5, false).await;
    queue
        .enqueue(&common::mock_task("retry-1", 0))
        .await
        .unwrap();
    let lease = lease_within(&queue, Duration::from_secs(30), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(lease.attempt, 1);
    queue
        .requeue(&lease, Duration::from_secs(3), record(1, "transient"), true)
        .await
        .unwrap();
    assert!(
        queue
            .lease("w", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "hidden during the delay"
    );
    let again = lease_within(&queue, Duration::from_secs(30), Duration::from_secs(30))
        .await
        .expect("redelivered after the delay");
    assert_eq!(again.attempt, 2);
    assert_eq!(again.task_id, lease.task_id);
    queue.ack(&again, "{}").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_explicit_and_replayable() {
    let moto = common::moto();
    let (queue, _) = common::sqs_queue(moto, "explicit", 5, false).await;
    queue
        .enqueue(&common::mock_task("perm-1", 0))
        .await
        .unwrap();
    let lease = lease_within(&queue, Duration::from_secs(30), Duration::from_secs(20))
        .await
        .unwrap();
    queue
        .dead_letter(
            &lease,
            "permanent: invalid_spec",
            record(1, "bench.backend.x: unknown field"),
        )
        .await
        .unwrap();
    let letters = queue.dlq_list(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "permanent: invalid_spec");
    assert_eq!(letters[0].task_id, lease.task_id);
    assert_eq!(
        letters[0].history[0].message,
        "bench.backend.x: unknown field"
    );
    let shown = queue.dlq_show(&letters[0].id).await.unwrap();
    assert_eq!(shown.body, lease.body);
    let new_id = queue.dlq_replay(&letters[0].id).await.unwrap();
    assert_ne!(new_id, lease.task_id);
    let back = lease_within(&queue, Duration::from_secs(30), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(back.body, lease.body);
    assert_eq!(back.attempt, 1, "a replay is a fresh task");
    queue.ack(&back, "{}").await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10)
        && !queue.dlq_list(10).await.unwrap().is_empty()
    {}
    assert!(queue.dlq_list(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_queues_group_by_runner_and_deduplicate_by_key() {
    let moto = common::moto();
    let (queue, client) = common::sqs_queue(moto, "ordered", 5, true).await;
    let task = common::mock_task("fifo-1", 0);
    queue.enqueue(&task).await.unwrap();
    queue.enqueue(&task).await.unwrap();
    queue
        .enqueue(&common::mock_task("fifo-2", 0))
        .await
        .unwrap();
    let first = lease_within(&queue, Duration::from_secs(30), Duration::from_secs(20))
        .await
        .unwrap();
    assert!(first.body.contains("fifo-1"));
    queue.ack(&first, "{}").await.unwrap();
    let second = lease_within(&queue, Duration::from_secs(30), Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        second.body.contains("fifo-2"),
        "the duplicate submit was deduplicated"
    );
    queue.ack(&second, "{}").await.unwrap();
    let out = client
        .receive_message()
        .queue_url(common::queue_url(&client, "ordered.fifo").await)
        .wait_time_seconds(0)
        .send()
        .await
        .unwrap();
    assert!(out.messages().is_empty());
}

/// A copy of a message delivered after its execution settled (SQS is at
/// least once: a visibility timeout that passed under load, a delete sent
/// with the old receipt) is dropped, not run a second time. Seen in the
/// SQS fleet test as one task acked by two workers.
#[cfg(feature = "mock")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_copy_of_a_settled_task_is_dropped_not_run_again() {
    use orchestrator_worker::config::WorkerConfig;
    use orchestrator_worker::queue::SqliteStore;
    use orchestrator_worker::serve::Worker;
    use orchestrator_worker::store::Store;
    use orchestrator_worker::{Metrics, RunnerFactory};
    use runner_core::CancellationToken;
    use std::sync::Arc;

    let moto = common::moto();
    let (queue, _) = common::sqs_queue(moto, "late-copy", 5, false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = WorkerConfig::from_yaml_str(&format!(
        "queue: {{path: '{}'}}\nrunners: [{{type: local_mock, artifacts_dir: '{}', retries: 0}}]\n",
        dir.path().join("journal.sqlite3").display(),
        dir.path().join("art").display()
    ))
    .unwrap();
    let store = SqliteStore::open(&config.queue.path).unwrap();
    let factory = RunnerFactory::with_builtins(Metrics::new());
    let backends = orchestrator_worker::backends::Backends {
        queue: Arc::new(queue.clone()),
        store: Arc::new(store.clone()),
    };
    let worker = Worker::with_backends(config, &factory, backends).unwrap();
    let task = common::mock_task("late-copy-1", 0);
    for _ in 0..2 {
        queue.enqueue(&task).await.unwrap();
        let lease = lease_within(&queue, Duration::from_secs(30), Duration::from_secs(20))
            .await
            .expect("the message comes");
        worker.process(lease, CancellationToken::new()).await;
    }
    let record = store
        .execution("late-copy-1")
        .await
        .unwrap()
        .expect("the execution is recorded");
    assert!(record.settled_ms.is_some());
    assert_eq!(
        record.attempts.len(),
        1,
        "it ran once: {:?}",
        record.attempts
    );
    assert!(
        lease_within(&queue, Duration::from_secs(30), Duration::from_secs(2))
            .await
            .is_none(),
        "the copy is gone from the queue"
    );
}
