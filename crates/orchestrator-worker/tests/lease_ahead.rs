//! Leasing ahead: a slot whose test is collecting and tearing down gets its
//! next task leased before it frees (the lease is then not in the next
//! test's path), and a task leased ahead that never started goes back to
//! the queue, its attempt given back, when the worker stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use orchestrator_worker::config::WorkerConfig;
use orchestrator_worker::serve::Worker;
use orchestrator_worker::store::{ExecState, StoreError};
use orchestrator_worker::{Metrics, RunnerFactory, Task};
use runner_core::CancellationToken;
use runner_mock::fixtures;

/// A serving worker's settings that these tests vary.
struct Setup {
    concurrency: usize,
    poll_ms: u64,
    visibility_seconds: u64,
    /// How long each teardown takes (only the first one's with `once`).
    teardown_ms: u64,
    once: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            concurrency: 1,
            poll_ms: 20,
            visibility_seconds: 30,
            teardown_ms: 600,
            once: false,
        }
    }
}

fn worker(dir: &std::path::Path, setup: Setup) -> Worker {
    let times = if setup.once { ", times: 1" } else { "" };
    let config = WorkerConfig::from_yaml_str(&format!(
        "queue: {{path: '{}'}}\nworker: {{concurrency: {}, poll_ms: {}, visibility_seconds: {}}}\nrunners:\n  - {{type: local_mock, retries: 0, backend: {{artifacts: memory, log_lines: 0, faults: [{{phase: teardown, fault: {{kind: delay, ms: {}}}{times}}}]}}}}\n",
        dir.join("q.sqlite3").display(),
        setup.concurrency,
        setup.poll_ms,
        setup.visibility_seconds,
        setup.teardown_ms,
    ))
    .unwrap();
    Worker::new(config, &RunnerFactory::with_builtins(Metrics::new())).unwrap()
}

/// `worker` serving until the token is cancelled.
fn serve(
    worker: &Worker,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), StoreError>>,
) {
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (w, stop) = (worker.clone(), stop.clone());
        async move { w.serve(stop).await }
    });
    (stop, serving)
}

/// Wait until `n` tasks are done, at most `limit`.
async fn done(worker: &Worker, n: u64, limit: Duration) {
    let started = Instant::now();
    while worker.queue().depth().await.unwrap().done < n {
        assert!(
            started.elapsed() < limit,
            "fewer than {n} done after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let worker = worker(dir.path(), Setup::default());
    enqueue(&worker, &["a", "b"]).await;
    let (stop, serving) = serve(&worker);
    assert!(
        leased(&worker, 2, Duration::from_secs(20)).await,
        "with one slot, a second task is leased only ahead of the first's teardown"
    );
    done(&worker, 2, Duration::from_secs(30)).await;
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
    let worker = worker(
        dir.path(),
        Setup {
            teardown_ms: 1_500,
            ..Setup::default()
        },
    );
    enqueue(&worker, &["a", "b"]).await;
    let (stop, serving) = serve(&worker);
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
    let worker = worker(
        dir.path(),
        Setup {
            visibility_seconds: 1,
            teardown_ms: 2_500,
            once: true,
            ..Setup::default()
        },
    );
    enqueue(&worker, &["a", "b"]).await;
    let (stop, serving) = serve(&worker);
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
    done(&worker, 2, Duration::from_secs(20)).await;
    stop.cancel();
    serving.await.unwrap().unwrap();
    let b = worker.store().execution("b").await.unwrap().unwrap();
    assert_eq!(b.state, ExecState::Passed);
    assert_eq!(b.attempts.len(), 1, "{:?}", b.attempts);
}

/// Two slots ending at once, one task left to lease ahead, and a queue
/// that is then empty: the task waiting ahead starts when the first slot
/// frees. (Before, the loop went on leasing for the second ending slot,
/// found nothing and slept `poll_ms` with the task waiting beside a free
/// slot.) The run takes well under a second; the poll (120 s) and the
/// keep-alive of a waiting lease (a third of 300 s) are each far beyond
/// the 20 s bound, so only a wait of that kind fails it, not a slow
/// machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waiting_ahead_starts_when_a_slot_frees_not_after_a_poll() {
    let dir = tempfile::tempdir().unwrap();
    let worker = worker(
        dir.path(),
        Setup {
            concurrency: 2,
            poll_ms: 120_000,
            visibility_seconds: 300,
            teardown_ms: 300,
            ..Setup::default()
        },
    );
    enqueue(&worker, &["a", "b", "c"]).await;
    let (stop, serving) = serve(&worker);
    done(&worker, 3, Duration::from_secs(20)).await;
    stop.cancel();
    serving.await.unwrap().unwrap();
}
