//! Leasing ahead: a slot whose test is collecting and tearing down gets its
//! next task leased before it frees (the lease is then not in the next
//! test's path), and a task leased ahead that never started goes back to
//! the queue, its attempt given back, when the worker stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use orchestrator_worker::config::WorkerConfig;
use orchestrator_worker::serve::Worker;
use orchestrator_worker::store::ExecState;
use orchestrator_worker::{Metrics, RunnerFactory, Task};
use runner_core::CancellationToken;
use runner_mock::fixtures;

/// Concurrency 1, and a teardown that takes `teardown_ms`.
fn worker(dir: &std::path::Path, teardown_ms: u64) -> Worker {
    let config = WorkerConfig::from_yaml_str(&format!(
        "queue: {{path: '{}'}}\nworker: {{concurrency: 1, poll_ms: 20, visibility_seconds: 30}}\nrunners:\n  - {{type: local_mock, retries: 0, backend: {{artifacts: memory, log_lines: 0, faults: [{{phase: teardown, fault: {{kind: delay, ms: {teardown_ms}}}}}]}}}}\n",
        dir.join("q.sqlite3").display()
    ))
    .unwrap();
    Worker::new(config, &RunnerFactory::with_builtins(Metrics::new())).unwrap()
}

async fn enqueue(worker: &Worker, keys: &[&str]) {
    for key in keys {
        let task = Task::new(*key, "local_mock", fixtures::bench(), fixtures::passing());
        worker.queue().enqueue(&task).await.unwrap();
    }
}

/// Whether the queue shows `n` tasks leased within `limit`.
async fn leased(worker: &Worker, n: u64, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if worker.queue().depth().await.unwrap().leased >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_task_is_leased_while_the_slot_tears_down_and_then_runs() {
    let dir = tempfile::tempdir().unwrap();
    let worker = worker(dir.path(), 600);
    enqueue(&worker, &["a", "b"]).await;
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (w, stop) = (worker.clone(), stop.clone());
        async move { w.serve(stop).await }
    });
    assert!(
        leased(&worker, 2, Duration::from_secs(20)).await,
        "with one slot, a second task is leased only ahead of the first's teardown"
    );
    let started = Instant::now();
    while worker.queue().depth().await.unwrap().done < 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "not both done");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    serving.await.unwrap().unwrap();
    for key in ["a", "b"] {
        let record = worker.store().execution(key).await.unwrap().unwrap();
        assert_eq!(record.state, ExecState::Passed, "{key}");
        assert_eq!(record.attempts.len(), 1, "{key}: {:?}", record.attempts);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_leased_ahead_goes_back_unstarted_when_the_worker_stops() {
    let dir = tempfile::tempdir().unwrap();
    let worker = worker(dir.path(), 1_500);
    enqueue(&worker, &["a", "b"]).await;
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (w, stop) = (worker.clone(), stop.clone());
        async move { w.serve(stop).await }
    });
    assert!(leased(&worker, 2, Duration::from_secs(20)).await);
    // Stop while the first tears down and the second waits for its slot.
    stop.cancel();
    serving.await.unwrap().unwrap();
    let depth = worker.queue().depth().await.unwrap();
    assert_eq!(
        (depth.done, depth.ready, depth.leased),
        (1, 1, 0),
        "{depth:?}"
    );
    let b = worker.store().execution("b").await.unwrap().unwrap();
    assert_eq!(b.state, ExecState::Queued, "never started: {b:?}");
    // Another worker gets it at once, as its first attempt.
    let lease = worker
        .queue()
        .lease("other", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("b is visible again");
    assert_eq!(lease.attempt, 1);
    assert!(
        lease
            .history
            .iter()
            .any(|h| !h.counted && h.message.contains("given back unstarted")),
        "{:?}",
        lease.history
    );
}

/// A teardown longer than the visibility: the task waiting ahead keeps its
/// lease (extended every third of it), so no other worker is given it
/// meanwhile, and it runs here as its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waiting_ahead_keeps_its_lease_through_a_long_teardown() {
    let dir = tempfile::tempdir().unwrap();
    let config = WorkerConfig::from_yaml_str(&format!(
        "queue: {{path: '{}'}}\nworker: {{concurrency: 1, poll_ms: 20, visibility_seconds: 1}}\nrunners:\n  - {{type: local_mock, retries: 0, backend: {{artifacts: memory, log_lines: 0, faults: [{{phase: teardown, fault: {{kind: delay, ms: 2500}}, times: 1}}]}}}}\n",
        dir.path().join("q.sqlite3").display()
    ))
    .unwrap();
    let worker = Worker::new(config, &RunnerFactory::with_builtins(Metrics::new())).unwrap();
    enqueue(&worker, &["a", "b"]).await;
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (w, stop) = (worker.clone(), stop.clone());
        async move { w.serve(stop).await }
    });
    assert!(leased(&worker, 2, Duration::from_secs(20)).await);
    // Through the rest of the teardown, another worker finds nothing.
    let started = Instant::now();
    while worker.queue().depth().await.unwrap().done < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a never settled"
        );
        let stolen = worker
            .queue()
            .lease("other", Duration::from_secs(30))
            .await
            .unwrap();
        assert!(stolen.is_none(), "given to another worker: {stolen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    while worker.queue().depth().await.unwrap().done < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "b never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    serving.await.unwrap().unwrap();
    let b = worker.store().execution("b").await.unwrap().unwrap();
    assert_eq!(b.state, ExecState::Passed);
    assert_eq!(b.attempts.len(), 1, "{:?}", b.attempts);
}
