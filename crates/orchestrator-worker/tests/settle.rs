//! Settling under failure: a store call that fails is retried while the
//! lease is held, so a result is never dropped; a run past the runner's
//! limit settles once as a timed-out test under `serve`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use orchestrator_worker::backends::Backends;
use orchestrator_worker::config::WorkerConfig;
use orchestrator_worker::queue::{
    AttemptRecord, DeadLetter, Lease, QueueDepth, Submitted, TaskQueue,
};
use orchestrator_worker::serve::Worker;
use orchestrator_worker::store::{ExecState, NewExecution, SqliteStore, Store, StoreError};
use orchestrator_worker::{Metrics, RunnerFactory, Task};
use runner_core::CancellationToken;

/// The SQLite queue, with the first `fail_acks` acks failing as if the
/// database were unreachable.
#[derive(Debug)]
struct FlakyAcks {
    inner: SqliteStore,
    fail_acks: AtomicU32,
    acks: AtomicU32,
}

#[runner_core::async_trait]
impl TaskQueue for FlakyAcks {
    fn keeps_records(&self) -> bool {
        true
    }
    async fn submit(&self, task: &Task, new: &NewExecution) -> Result<Submitted, StoreError> {
        self.inner.submit(task, new).await
    }
    async fn submit_raw(&self, body: &str) -> Result<String, StoreError> {
        self.inner.submit_raw(body).await
    }
    async fn lease(&self, worker: &str, visibility: Duration) -> Result<Option<Lease>, StoreError> {
        self.inner.lease(worker, visibility).await
    }
    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<(), StoreError> {
        self.inner.extend(lease, visibility).await
    }
    async fn ack(&self, lease: &Lease, outcome: &str) -> Result<(), StoreError> {
        self.acks.fetch_add(1, Ordering::SeqCst);
        if self
            .fail_acks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Unavailable(
                "injected: connection refused".into(),
            ));
        }
        self.inner.ack(lease, outcome).await
    }
    async fn requeue(
        &self,
        lease: &Lease,
        delay: Duration,
        record: AttemptRecord,
        count_attempt: bool,
    ) -> Result<(), StoreError> {
        self.inner
            .requeue(lease, delay, record, count_attempt)
            .await
    }
    async fn dead_letter(
        &self,
        lease: &Lease,
        reason: &str,
        record: AttemptRecord,
    ) -> Result<(), StoreError> {
        self.inner.dead_letter(lease, reason, record).await
    }
    async fn depth(&self) -> Result<QueueDepth, StoreError> {
        self.inner.depth().await
    }
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dlq_list(limit).await
    }
    async fn dlq_show(&self, id: &str) -> Result<DeadLetter, StoreError> {
        self.inner.dlq_show(id).await
    }
    async fn dlq_replay(&self, id: &str) -> Result<String, StoreError> {
        self.inner.dlq_replay(id).await
    }
}

fn config(dir: &std::path::Path, runner: &str) -> WorkerConfig {
    WorkerConfig::from_yaml_str(&format!(
        "queue: {{path: '{}'}}\nworker: {{concurrency: 2, poll_ms: 20, backoff_base_ms: 50, backoff_max_ms: 200, visibility_seconds: 30}}\nrunners:\n{runner}",
        dir.join("q.sqlite3").display()
    ))
    .unwrap()
}

async fn serve_until_settled(worker: &Worker, store: &dyn Store, key: &str) -> ExecState {
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (w, stop) = (worker.clone(), stop.clone());
        async move { w.serve(stop).await }
    });
    let started = Instant::now();
    let state = loop {
        let state = store.execution(key).await.unwrap().map(|r| r.state);
        if let Some(state) = state.filter(|s| s.is_settled()) {
            break state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not settled: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Settled in the record; let the ack land too.
    let started = Instant::now();
    while worker.queue().depth().await.unwrap().done == 0
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    serving.await.unwrap().unwrap();
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_that_fails_twice_then_succeeds_settles_the_task_once() {
    let dir = tempfile::tempdir().unwrap();
    let lite = SqliteStore::open(&dir.path().join("q.sqlite3")).unwrap();
    let flaky = Arc::new(FlakyAcks {
        inner: lite.clone(),
        fail_acks: AtomicU32::new(2),
        acks: AtomicU32::new(0),
    });
    let backends = Backends {
        queue: flaky.clone(),
        store: Arc::new(lite.clone()),
    };
    let worker = Worker::with_backends(
        config(
            dir.path(),
            "  - {type: local_mock, backend: {artifacts: memory}}\n",
        ),
        &RunnerFactory::with_builtins(Metrics::new()),
        backends,
    )
    .unwrap();
    let task = Task::new(
        "flaky-ack",
        "local_mock",
        Default::default(),
        runner_core::TestPayload::new(["mock"]),
    );
    flaky.enqueue(&task).await.unwrap();
    let state = serve_until_settled(&worker, &lite, "flaky-ack").await;
    assert_eq!(state, ExecState::Passed);
    assert_eq!(
        flaky.acks.load(Ordering::SeqCst),
        3,
        "two failures, then the ack"
    );
    let depth = lite.depth().await.unwrap();
    assert_eq!(
        (depth.done, depth.ready, depth.leased, depth.dead),
        (1, 0, 0, 0)
    );
    let record = lite.execution("flaky-ack").await.unwrap().unwrap();
    assert_eq!(
        record.attempts.len(),
        1,
        "it ran once: {:?}",
        record.attempts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_the_runners_limit_settles_once_as_timed_out_under_serve() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let worker = Worker::new(
        config(
            dir.path(),
            &format!(
                "  - {{type: local, retries: 3, timeout_seconds: 1, artifacts_dir: '{}', backend: {{root: '{}', kill_grace_ms: 100}}}}\n",
                dir.path().join("art").display(),
                work.display()
            ),
        ),
        &RunnerFactory::with_builtins(Metrics::new()),
    )
    .unwrap();
    let task = Task::new(
        "hangs",
        "local",
        Default::default(),
        runner_core::TestPayload::new(["sh", "-c", "echo partial; exec sleep 30"]),
    );
    worker.queue().enqueue(&task).await.unwrap();
    let state = serve_until_settled(&worker, &**worker.store(), "hangs").await;
    assert_eq!(state, ExecState::TimedOut);
    let record = worker.store().execution("hangs").await.unwrap().unwrap();
    assert_eq!(
        record.attempts.len(),
        1,
        "not requeued: {:?}",
        record.attempts
    );
    assert_eq!(record.result.as_ref().unwrap().status, "timed_out");
    assert!(
        record
            .artifacts
            .iter()
            .any(|a| a.name.ends_with("stdout.log")),
        "its output is kept: {:?}",
        record.artifacts
    );
    let depth = worker.queue().depth().await.unwrap();
    assert_eq!((depth.done, depth.dead), (1, 0));
}
