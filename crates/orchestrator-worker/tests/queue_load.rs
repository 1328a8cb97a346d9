//! Many tasks through the SQLite queue and a serving worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use orchestrator_worker::config::WorkerConfig;
use orchestrator_worker::metrics::sum_samples;
use orchestrator_worker::serve::Worker;
use orchestrator_worker::{Metrics, RunnerFactory, Task};
use runner_core::CancellationToken;
use runner_mock::fixtures;

fn worker(dir: &std::path::Path, runner_yaml: &str, concurrency: usize) -> Worker {
    let yaml = format!(
        "queue: {{path: {}}}\nworker: {{concurrency: {concurrency}, poll_ms: 5, backoff_base_ms: 1, backoff_max_ms: 5, visibility_seconds: 30}}\nrunners:\n{runner_yaml}",
        dir.join("q.sqlite3").display()
    );
    let config = WorkerConfig::from_yaml_str(&yaml).unwrap();
    Worker::new(config, &RunnerFactory::with_builtins(Metrics::new())).unwrap()
}

fn task(key: String) -> Task {
    Task::new(key, "local_mock", fixtures::bench(), fixtures::passing())
}

/// Serve until `done(depth)` or the deadline; returns whether it got there.
async fn serve_until(worker: &Worker, limit: Duration, done: impl Fn(u64, u64) -> bool) -> bool {
    let stop = CancellationToken::new();
    let serving = {
        let (worker, stop) = (worker.clone(), stop.clone());
        tokio::spawn(async move { worker.serve(stop).await })
    };
    let started = Instant::now();
    let mut reached = false;
    while started.elapsed() < limit {
        let depth = worker.queue().depth().await.unwrap();
        if done(depth.done, depth.dead) {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    serving.await.unwrap().unwrap();
    reached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_tasks_with_ten_percent_transient_faults_all_settle() {
    const TASKS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    // Every 10th run_test call fails transiently; three retries per task.
    let w = worker(
        dir.path(),
        "  - type: local_mock\n    retries: 3\n    backend:\n      artifacts: memory\n      log_lines: 4\n      faults: [{phase: run_test, fault: {kind: transient}, every: 10}]\n",
        32,
    );
    for i in 0..TASKS {
        w.queue()
            .enqueue(&task(format!("load-{i:04}")))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let reached = serve_until(&w, Duration::from_secs(240), |done, dead| {
        done + dead == TASKS
    })
    .await;
    let took = started.elapsed();
    let depth = w.queue().depth().await.unwrap();
    assert!(reached, "not all tasks settled: {depth:?}");
    assert_eq!(depth.leased, 0, "a lease was left");

    let text = w.metrics().encode();
    let acked = sum_samples(&text, "orchestrator_executions_total", "outcome=\"ack\"");
    let dead = sum_samples(
        &text,
        "orchestrator_executions_total",
        "outcome=\"dead_letter\"",
    );
    let requeued = sum_samples(
        &text,
        "orchestrator_executions_total",
        "outcome=\"requeue\"",
    );
    let transient = sum_samples(
        &text,
        "orchestrator_phase_failures_total",
        "kind=\"transient\"",
    );
    println!(
        "{TASKS} tasks in {took:.2?} ({:.0} tasks/s): acked {acked}, dead {dead}, requeued {requeued}, transient faults {transient}",
        TASKS as f64 / took.as_secs_f64()
    );
    // Every task ends acked or dead-lettered, and the counters add up to the task count.
    assert_eq!(acked, depth.done);
    assert_eq!(dead, depth.dead);
    assert_eq!(acked + dead, TASKS);
    // Every injected transient fault ended its attempt: a requeue while
    // attempts were left, a dead letter once all four were spent.
    assert!(transient >= TASKS / 10, "faults were injected: {transient}");
    assert_eq!(requeued + dead, transient);
    for entry in w.queue().dlq_list(usize::MAX).await.unwrap() {
        assert!(
            entry.reason.contains("attempts exhausted"),
            "{}",
            entry.reason
        );
        assert_eq!(entry.history.len(), 4, "{entry:?}");
        assert!(
            entry
                .history
                .iter()
                .all(|h| h.kind == Some(runner_core::ErrorKind::Transient))
        );
    }
    let journal = orchestrator_worker::store::SqliteStore::open(&dir.path().join("q.sqlite3"))
        .unwrap()
        .journal_all()
        .await
        .unwrap();
    // One entry per provision: every attempt after a torn-down one
    // provisions afresh.
    assert_eq!(journal.len() as u64, TASKS + requeued);
    assert!(
        journal
            .iter()
            .all(|e| e.state == orchestrator_worker::queue::JournalState::Released)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tasks_go_to_the_dlq_with_a_reason_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let w = worker(
        dir.path(),
        "  - type: local_mock\n    backend: {artifacts: memory}\n",
        2,
    );
    let q = w.queue();
    q.submit_raw("this is not json").await.unwrap();
    q.submit_raw(r#"{"execution_key": "k1", "runner": "local_mock"}"#)
        .await
        .unwrap();
    let mut unknown = task("k2".into());
    unknown.runner = "quantum".into();
    q.enqueue(&unknown).await.unwrap();
    let mut invalid = task("k3".into());
    invalid.bench = fixtures::invalid_bench();
    q.enqueue(&invalid).await.unwrap();
    q.enqueue(&task("good".into())).await.unwrap();

    assert!(serve_until(&w, Duration::from_secs(30), |done, dead| done + dead == 5).await);
    let depth = q.depth().await.unwrap();
    assert_eq!((depth.done, depth.dead), (1, 4), "{depth:?}");
    let reasons: Vec<String> = q
        .dlq_list(10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.reason)
        .collect();
    let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
    assert!(has("not valid JSON"), "{reasons:#?}");
    assert!(has("missing field `payload`"), "{reasons:#?}");
    assert!(
        has("unknown runner type `quantum`") && has("local_mock"),
        "{reasons:#?}"
    );
    assert!(has("bench.backend.seed"), "{reasons:#?}");
    let invalid_entry = q
        .dlq_list(10)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.reason.contains("bench.backend.seed"))
        .unwrap();
    assert_eq!(invalid_entry.history.len(), 1);
    // Refused when taken, before anything was provisioned.
    assert_eq!(invalid_entry.history[0].phase, None);
    assert_eq!(
        invalid_entry.history[0].kind,
        Some(runner_core::ErrorKind::InvalidSpec)
    );
}
