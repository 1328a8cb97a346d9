//! Fleet mode end to end: three `orchestrator serve` processes share one
//! SQS queue (moto) with 300 mock tasks; one is SIGKILLed mid-way. Every
//! task ends acked exactly once per execution key, or in the dead-letter
//! queue, and no lease is left.

#![cfg(all(feature = "sqs", feature = "mock"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sqs_common;
use sqs_common as common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator_worker::queue::TaskQueue;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");
const TASKS: usize = 300;

/// `(execution_key, disposition)` of every "settled" line in a JSON log.
fn settled(log: &Path) -> Vec<(String, String)> {
    lines(log, "settled")
}

/// `(execution_key, disposition)` of every `message` line in a JSON log.
fn lines(log: &Path, message: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["fields"]["message"] == message)
        .map(|v| {
            (
                v["fields"]["execution_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["fields"]["disposition"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// Keys the worker was acking ("settling ack") with no "settled" after.
fn unconfirmed(log: &Path) -> Vec<String> {
    let done: Vec<String> = settled(log).into_iter().map(|(k, _)| k).collect();
    lines(log, "settling")
        .into_iter()
        .filter(|(k, d)| d == "ack" && !done.contains(k))
        .map(|(k, _)| k)
        .collect()
}

fn spawn_worker(dir: &Path, n: usize, url: &str, moto: &test_emulators::Moto) -> Child {
    let config = dir.join(format!("worker{n}.yaml"));
    std::fs::write(
        &config,
        format!(
            "queue: {{path: worker{n}.sqlite3, sqs: {{url: '{url}', wait_seconds: 1}}}}\n\
             worker: {{concurrency: 4, visibility_seconds: 3, poll_ms: 50, drain_grace_seconds: 10, backoff_base_ms: 100, backoff_max_ms: 500}}\n\
             runners:\n  - {{type: local_mock, retries: 3, artifacts_dir: art{n}}}\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("worker{n}.log"))).unwrap();
    Command::new(BIN)
        .args(["--json-logs", "serve", "--config"])
        .arg(&config)
        .envs(moto.env())
        .env("RUST_LOG", "info,orchestrator_worker::serve=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_a_queue_and_a_sigkill_loses_nothing() {
    let moto = common::moto();
    let (queue, _) = common::sqs_queue(moto, "fleet", 5, false).await;
    for i in 0..TASKS {
        queue
            .submit(&common::mock_task(&format!("fleet-{i:03}"), 100))
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut workers: Vec<Child> = (0..3)
        .map(|n| spawn_worker(dir.path(), n, queue.url(), moto))
        .collect();
    let logs: Vec<_> = (0..3)
        .map(|n| dir.path().join(format!("worker{n}.log")))
        .collect();

    // SIGKILL worker 0 once it has settled a few tasks (it has others in flight).
    let started = Instant::now();
    while settled(&logs[0]).len() < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "worker 0 settled nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    workers[0].kill().unwrap();
    workers[0].wait().unwrap();
    let settled_by_killed = settled(&logs[0]).len();

    // The others finish everything, including what the dead worker held
    // (visible again once its leases lapse).
    let started = Instant::now();
    loop {
        let mut finished: std::collections::BTreeSet<String> = logs
            .iter()
            .flat_map(|l| settled(l))
            .filter(|(_, d)| d == "ack" || d == "dead_letter")
            .map(|(k, _)| k)
            .collect();
        finished.extend(unconfirmed(&logs[0]));
        let depth = queue.depth().await.unwrap();
        if finished.len() >= TASKS && depth.ready + depth.delayed + depth.leased == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let missing: Vec<String> = (0..TASKS)
                .map(|i| format!("fleet-{i:03}"))
                .filter(|k| !finished.contains(k))
                .collect();
            let kept = dir.keep();
            panic!(
                "not finished: {} settled, {depth:?}; missing {missing:?}; logs in {}",
                finished.len(),
                kept.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for worker in &mut workers[1..] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    for worker in &mut workers[1..] {
        assert!(worker.wait().unwrap().success(), "a drained worker exits 0");
    }

    let mut acks: BTreeMap<String, usize> = BTreeMap::new();
    for log in &logs {
        for (key, disposition) in settled(log) {
            if disposition == "ack" {
                *acks.entry(key).or_default() += 1;
            }
        }
    }
    // The killed worker may have been killed between "settling ack" and
    // "settled": its DeleteMessage either took effect (the task is gone and
    // nobody else acked it: one ack) or not (SQS redelivered it and another
    // worker acked it: that ack is the one).
    let unconfirmed = unconfirmed(&logs[0]);
    for key in &unconfirmed {
        acks.entry(key.clone()).or_insert(1);
    }
    let dead: Vec<String> = queue
        .dlq_list(1000)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|d| orchestrator_worker::Task::parse(&d.body).ok())
        .map(|t| t.execution_key)
        .collect();
    for i in 0..TASKS {
        let key = format!("fleet-{i:03}");
        let n = acks.get(&key).copied().unwrap_or(0);
        if !(n == 1 || (n == 0 && dead.contains(&key))) {
            let seen: Vec<String> = logs
                .iter()
                .flat_map(|l| {
                    std::fs::read_to_string(l)
                        .unwrap_or_default()
                        .lines()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .filter(|line| line.contains(&format!("\"{key}\"")))
                .collect();
            panic!(
                "{key}: acked {n} times, dead-lettered: {}; its log lines:\n{}",
                dead.contains(&key),
                seen.join("\n")
            );
        }
    }
    let depth = queue.depth().await.unwrap();
    assert_eq!(
        depth.ready + depth.delayed + depth.leased,
        0,
        "no lease left: {depth:?}"
    );
    assert!(settled_by_killed < TASKS, "the kill came mid-way");
    let by_others: usize = logs[1..].iter().map(|l| settled(l).len()).sum();
    assert!(by_others > 0);
    eprintln!(
        "fleet: {} acked, {} dead-lettered; killed worker settled {settled_by_killed} before SIGKILL, {} more unconfirmed",
        acks.len(),
        dead.len(),
        unconfirmed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_dlq_work_on_sqs_through_the_cli() {
    let moto = common::moto();
    let (queue, _) = common::sqs_queue(moto, "cli", 5, false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.yaml");
    std::fs::write(
        &config,
        "queue: {path: journal.sqlite3}\nrunners: [{type: local_mock}]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("bench.yaml"), "name: b\n").unwrap();
    std::fs::write(dir.path().join("payload.yaml"), "command: [mock]\n").unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .envs(moto.env())
            .env("ORCHESTRATOR_QUEUE_URL", queue.url())
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let submitted = cli(&[
        "submit",
        "--runner",
        "local_mock",
        "--bench",
        "bench.yaml",
        "--payload",
        "payload.yaml",
        "--key",
        "cli-1",
    ]);
    assert!(submitted.contains("cli-1"), "{submitted}");
    let lease = queue
        .lease("w", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the CLI's task is on the queue");
    assert!(lease.body.contains("cli-1"));
    let record = orchestrator_worker::queue::AttemptRecord {
        attempt: 1,
        worker: "w".into(),
        phase: None,
        kind: None,
        message: "test".into(),
        at_ms: 0,
    };
    queue
        .dead_letter(&lease, "permanent: test", record)
        .await
        .unwrap();
    let listed = cli(&["dlq", "list"]);
    assert!(listed.contains("permanent: test"), "{listed}");
    let id = listed.split('\t').next().unwrap().trim().to_string();
    let shown = cli(&["dlq", "show", &id]);
    assert!(shown.contains("cli-1"), "{shown}");
    let replayed = cli(&["dlq", "replay", &id]);
    assert!(replayed.contains("replayed"), "{replayed}");
    let back = queue
        .lease("w", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("replayed onto the queue");
    assert!(back.body.contains("cli-1"));
    queue.ack(&back, "{}").await.unwrap();
}
