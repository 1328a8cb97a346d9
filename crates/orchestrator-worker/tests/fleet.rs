//! A fleet end to end: three `orchestrator serve` processes, each in its
//! own working directory (its "machine"), share one PostgreSQL store (and
//! queue, or an SQS queue on moto beside it); 300 tasks, mock and local;
//! one worker SIGKILLed mid-way. Then `orchestrator reap` from a fourth
//! process, while the two live workers still run tests older than the
//! grace: exactly the dead worker's handles are torn down, not one of the
//! live workers'. Every execution key settles once.
//!
//! Size: one scenario (a fleet, a kill, a reap) with its process and
//! store helpers; split, each part would be its own test binary to link.

#![cfg(all(feature = "sqs", feature = "mock", feature = "local"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pg_common;
mod sqs_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_worker::Task;
use orchestrator_worker::backends::Backends;
use orchestrator_worker::config::PostgresSection;
use orchestrator_worker::queue::TaskQueue;
use orchestrator_worker::store::{ExecState, JournalState, PgStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");
const MOCK: usize = 200;
const LOCAL_SHORT: usize = 88;
const LOCAL_LONG: usize = 12;
const TASKS: usize = MOCK + LOCAL_SHORT + LOCAL_LONG;

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

fn settled(log: &Path) -> Vec<(String, String)> {
    lines(log, "settled")
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

struct Fleet {
    dir: tempfile::TempDir,
    url: String,
    sqs_url: Option<String>,
    marker: String,
}

impl Fleet {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The work root every worker's local runner shares: what leak listing
    /// sees, as a cloud account's listing sees every machine's instances.
    fn work(&self) -> PathBuf {
        self.root().join("work")
    }

    fn queue_yaml(&self) -> String {
        let sqs = self
            .sqs_url
            .as_ref()
            .map(|u| format!(", sqs: {{url: '{u}', wait_seconds: 1}}"))
            .unwrap_or_default();
        format!("queue: {{postgres: {{url: '{}'}}{sqs}}}\n", self.url)
    }

    fn runners_yaml(&self) -> String {
        format!(
            "runners:\n  - {{type: local_mock, retries: 3, artifacts_dir: art, backend: {{artifacts: memory}}}}\n  - {{type: local, retries: 3, artifacts_dir: art, backend: {{root: '{}', kill_grace_ms: 200}}}}\n",
            self.work().display()
        )
    }

    fn spawn_worker(&self, n: usize, moto: &test_emulators::Moto) -> Child {
        let machine = self.root().join(format!("machine{n}"));
        std::fs::create_dir_all(&machine).unwrap();
        let config = machine.join("worker.yaml");
        // Leases outlast the reap below (20 s), so the dead worker's tasks
        // are not redelivered before it; its heartbeat is stale after 3 s.
        std::fs::write(
            &config,
            format!(
                "{}worker: {{concurrency: 4, visibility_seconds: 20, stale_after_seconds: 3, poll_ms: 200, drain_grace_seconds: 30, backoff_base_ms: 100, backoff_max_ms: 500, reap_interval_seconds: 0}}\n{}",
                self.queue_yaml(),
                self.runners_yaml()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(machine.join("worker.log")).unwrap();
        Command::new(BIN)
            .args(["--json-logs", "serve", "--config"])
            .arg(&config)
            .envs(moto.env())
            .env("RUST_LOG", "info,orchestrator_worker::serve=debug")
            .current_dir(&machine)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self, n: usize) -> PathBuf {
        self.root().join(format!("machine{n}/worker.log"))
    }

    fn tasks(&self) -> Vec<Task> {
        let mock = |i: usize| {
            Task::new(
                format!("mock-{i:03}"),
                "local_mock",
                Default::default(),
                runner_core::TestPayload::new(["mock"])
                    .with_backend(serde_json::json!({"duration_ms": 150})),
            )
        };
        // Some quick ones, then the long local tests, so every worker has
        // settled a few and holds a long one when one of them dies.
        let mut tasks: Vec<Task> = (0..40).map(mock).collect();
        for i in 0..LOCAL_LONG {
            tasks.push(self.local(&format!("long-{i:02}"), "sleep 14"));
        }
        tasks.extend((40..MOCK).map(mock));
        for i in 0..LOCAL_SHORT {
            tasks.push(self.local(&format!("short-{i:02}"), "true"));
        }
        tasks
    }

    fn local(&self, key: &str, script: &str) -> Task {
        let mut env = std::collections::BTreeMap::new();
        env.insert(
            "PROC_MARKER".to_string(),
            runner_core::EnvVar::Plain(self.marker.clone()),
        );
        Task::new(
            key,
            "local",
            Default::default(),
            runner_core::TestPayload::new(["sh", "-c", script]).with_env_vars(env),
        )
    }
}

async fn pg(url: &str) -> PgStore {
    PgStore::connect(&PostgresSection::with_url(url))
        .await
        .unwrap()
}

/// Whether a process with `pid` and our marker still runs.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

async fn scenario(with_sqs: bool) {
    let moto = sqs_common::moto();
    let url = pg_common::fresh_url();
    let sqs_url = if with_sqs {
        let (queue, _) =
            sqs_common::sqs_queue(moto, &format!("fleet{}", fastrand::u32(..)), 10, false).await;
        Some(queue.url().to_string())
    } else {
        None
    };
    let fleet = Fleet {
        dir: tempfile::tempdir().unwrap(),
        url: url.clone(),
        sqs_url: sqs_url.clone(),
        marker: format!("fleet-{}-{}", std::process::id(), fastrand::u32(..)),
    };
    let store = pg(&url).await;
    let queue: Arc<dyn TaskQueue> = match &sqs_url {
        Some(u) => {
            let client = test_emulators::aws::sqs_client(&moto.endpoint()).await;
            Arc::new(
                orchestrator_worker::queue::sqs::SqsQueue::open(
                    client,
                    &orchestrator_worker::config::SqsSection {
                        url: u.clone(),
                        dlq_url: None,
                        wait_seconds: 1,
                        fifo_group: Default::default(),
                        region: None,
                    },
                )
                .await
                .unwrap(),
            )
        }
        None => Arc::new(store.clone()),
    };
    let backends = Backends {
        queue: Arc::clone(&queue),
        store: Arc::new(store.clone()),
    };
    let tasks = fleet.tasks();
    orchestrator_worker::submit::submit_batch(&backends, &tasks)
        .await
        .unwrap();

    let mut workers: Vec<Child> = (0..3).map(|n| fleet.spawn_worker(n, moto)).collect();
    let pids: Vec<u32> = workers.iter().map(|w| w.id()).collect();
    // The registry knows each worker's pid: its id for the journal.
    let ids: Vec<String> = {
        let started = Instant::now();
        loop {
            let known = store.workers(Duration::from_secs(60)).await.unwrap();
            let ids: Vec<Option<String>> = pids
                .iter()
                .map(|pid| {
                    known
                        .iter()
                        .find(|w| w.beat.pid == *pid)
                        .map(|w| w.beat.id.clone())
                })
                .collect();
            if ids.iter().all(Option::is_some) {
                break ids.into_iter().flatten().collect();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "workers did not register"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // SIGKILL worker 0 once it holds a long local test and settled some.
    let started = Instant::now();
    let dead_entries = loop {
        let open = store
            .journal_open_entries(Duration::from_secs(60))
            .await
            .unwrap();
        let held: Vec<_> = open.into_iter().filter(|e| e.owner == ids[0]).collect();
        // A long test whose process runs (its group is recorded).
        let holds_long = held.iter().any(|e| {
            e.execution_key.starts_with("long-")
                && Path::new(e.handle.handle_id()).join("group.json").exists()
        });
        if holds_long && !settled(&fleet.log(0)).is_empty() {
            workers[0].kill().unwrap();
            workers[0].wait().unwrap();
            break store
                .journal_open_entries(Duration::from_secs(60))
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.owner == ids[0])
                .collect::<Vec<_>>();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "worker 0 never held a long test"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!dead_entries.is_empty());

    // Once worker 0 is stale, and while the live workers still run long
    // tests older than the grace, reap from a fourth process.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Read the dead worker's entries again: a statement it sent just
    // before the SIGKILL may have committed after the first read (the
    // server finishes what it received), and that handle is an orphan too.
    let dead_entries: Vec<_> = store
        .journal_open_entries(Duration::from_secs(60))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.owner == ids[0])
        .collect();
    let dead_ids: BTreeSet<String> = dead_entries
        .iter()
        .map(|e| e.handle.handle_id().to_owned())
        .collect();
    let live_entries: Vec<_> = store
        .journal_open_entries(Duration::from_secs(3))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.owner != ids[0])
        .collect();
    let live_long: Vec<_> = live_entries
        .iter()
        .filter(|e| e.execution_key.starts_with("long-"))
        .collect();
    assert!(
        !live_long.is_empty(),
        "the live workers run long tests during the reap: {live_entries:#?}"
    );
    let live_dirs: Vec<PathBuf> = live_entries
        .iter()
        .filter(|e| e.handle.runner_type() == "local")
        .map(|e| PathBuf::from(e.handle.handle_id()))
        .collect();
    assert!(live_dirs.iter().all(|d| d.exists()));
    // The dead worker's test processes (their group records go with the
    // reap, so read them now).
    let dead_pids: Vec<u32> = dead_entries
        .iter()
        .filter(|e| e.handle.runner_type() == "local")
        .filter_map(|e| {
            let group: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(Path::new(e.handle.handle_id()).join("group.json"))
                    .ok()?,
            )
            .ok()?;
            group["pgid"].as_u64().map(|p| p as u32)
        })
        .collect();
    assert!(
        dead_pids.iter().any(|pid| process_alive(*pid)),
        "the dead worker's long test outlives it until the reap"
    );
    let reaper_dir = fleet.root().join("machine3");
    std::fs::create_dir_all(&reaper_dir).unwrap();
    let reaper_config = reaper_dir.join("reaper.yaml");
    std::fs::write(
        &reaper_config,
        format!("{}{}", fleet.queue_yaml(), fleet.runners_yaml()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "reap",
            "--stale-after",
            "3",
            "--leak-grace",
            "1",
            "--config",
        ])
        .arg(&reaper_config)
        .envs(moto.env())
        .current_dir(&reaper_dir)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{report:#}");
    let torn: BTreeSet<String> = report["torn_down"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    // The dead worker's journaled handles, plus what it made but had not
    // journaled yet when it died (a provision in flight: its claim is
    // journaled, its directory tagged with the dead worker, and the reaper
    // finds it by leak listing). Nothing of a live worker (checked below).
    let leaks: BTreeSet<String> = report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        dead_ids.is_subset(&torn),
        "every handle of the dead worker is torn down: {report:#}"
    );
    assert_eq!(
        torn.difference(&dead_ids).cloned().collect::<BTreeSet<_>>(),
        leaks
            .difference(&dead_ids)
            .cloned()
            .collect::<BTreeSet<_>>(),
        "nothing but the dead worker's handles and its tagged leaks: {report:#}"
    );
    for dir in &live_dirs {
        assert!(
            dir.exists(),
            "a live worker's environment was touched: {}",
            dir.display()
        );
    }
    for entry in &live_entries {
        assert!(
            !torn.contains(entry.handle.handle_id()),
            "{} of a live worker was torn down",
            entry.handle.handle_id()
        );
    }
    // The dead worker's test processes went with its handles.
    for pid in dead_pids {
        assert!(
            !process_alive(pid),
            "the dead worker's test {pid} survived the reap"
        );
    }

    // Everything settles, each key once, nothing dead-lettered.
    let started = Instant::now();
    loop {
        let depth = queue.depth().await.unwrap();
        let records = store
            .executions(&orchestrator_worker::store::HistoryFilter {
                limit: TASKS * 2,
                ..Default::default()
            })
            .await
            .unwrap();
        let settled_records = records.iter().filter(|r| r.state.is_settled()).count();
        if settled_records == TASKS && depth.ready + depth.delayed + depth.leased == 0 {
            assert!(
                records.iter().all(|r| r.state == ExecState::Passed),
                "{:#?}",
                records
                    .iter()
                    .filter(|r| r.state != ExecState::Passed)
                    .collect::<Vec<_>>()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not settled: {settled_records} of {TASKS}, {depth:?}; logs in {}",
            fleet.dir.path().display()
        );
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
    for n in 0..3 {
        for (key, disposition) in settled(&fleet.log(n)) {
            if disposition == "ack" {
                *acks.entry(key).or_default() += 1;
            }
        }
    }
    // A worker killed between "settling ack" and "settled" may or may not
    // have acked; if it did not, another worker's ack is the one.
    for key in unconfirmed(&fleet.log(0)) {
        acks.entry(key).or_insert(1);
    }
    for task in &tasks {
        assert_eq!(
            acks.get(&task.execution_key).copied(),
            Some(1),
            "{} settled once",
            task.execution_key
        );
    }
    assert!(queue.dlq_list(10).await.unwrap().is_empty());
    let open = store
        .journal_open_entries(Duration::from_secs(3))
        .await
        .unwrap();
    assert!(
        open.iter().all(|e| e.state != JournalState::Live),
        "no live handle left: {open:#?}"
    );
    assert_eq!(
        std::fs::read_dir(fleet.work())
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "no working directory left"
    );
    eprintln!(
        "fleet (sqs: {with_sqs}): {TASKS} settled; the reap tore down {} handle(s) of the dead worker, {} live entries untouched",
        torn.len(),
        live_entries.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_postgres_survives_a_sigkill_and_reaps_only_the_dead() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_sqs_and_postgres_survives_a_sigkill_and_reaps_only_the_dead() {
    scenario(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_dlq_work_on_sqs_through_the_cli() {
    let moto = sqs_common::moto();
    let (queue, _) = sqs_common::sqs_queue(moto, "cli", 5, false).await;
    let url = pg_common::fresh_url();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.yaml");
    std::fs::write(&config, "runners: [{type: local_mock}]\n").unwrap();
    std::fs::write(dir.path().join("bench.yaml"), "name: b\n").unwrap();
    std::fs::write(dir.path().join("payload.yaml"), "command: [mock]\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .envs(moto.env())
            .env("ORCHESTRATOR_QUEUE_URL", queue.url())
            .env("ORCHESTRATOR_DATABASE_URL", &url)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let cli = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let submit = [
        "submit",
        "--runner",
        "local_mock",
        "--bench",
        "bench.yaml",
        "--payload",
        "payload.yaml",
        "--key",
        "cli-1",
    ];
    let submitted = cli(&submit);
    assert!(submitted.contains("cli-1"), "{submitted}");
    // The same key again: the existing execution, nothing queued twice.
    let again = run(&submit);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("submitted before"));
    let store = pg(&url).await;
    assert_eq!(
        store.execution("cli-1").await.unwrap().unwrap().state,
        ExecState::Queued
    );
    let lease = queue
        .lease("w", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the CLI's task is on the queue");
    assert!(lease.body.contains("cli-1"));
    assert!(
        queue
            .lease("w", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "queued once"
    );
    let record = orchestrator_worker::queue::AttemptRecord {
        attempt: 1,
        worker: "w".into(),
        phase: None,
        kind: None,
        message: "test".into(),
        at_ms: 0,
        counted: true,
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

    // SQS with the machine-local store is refused, saying what to do.
    let out = Command::new(BIN)
        .args([
            "submit",
            "--runner",
            "local_mock",
            "--bench",
            "bench.yaml",
            "--payload",
            "payload.yaml",
            "--config",
        ])
        .arg(&config)
        .env("ORCHESTRATOR_QUEUE_URL", queue.url())
        .env_remove("ORCHESTRATOR_DATABASE_URL")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("queue.postgres.url") && text.contains("single_worker"),
        "{text}"
    );
}
