//! The dashboard in a real browser: headless Chromium (Debian's, installed
//! when absent) over WebDriver. It logs in with a token, opens the list,
//! opens a failed execution and sees its phases and log, replays a dead
//! letter by clicking and sees the execution come back and pass.
//! Screenshots of each page go to `target/tmp/dashboard/` for review.

#![cfg(all(feature = "mock", feature = "local"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use orchestrator_worker::api::ApiState;
use orchestrator_worker::backends::Backends;
use orchestrator_worker::config::WorkerConfig;
use orchestrator_worker::queue::TaskQueue;
use orchestrator_worker::serve::Worker;
use orchestrator_worker::store::{SqliteStore, Store};
use orchestrator_worker::{Metrics, RunnerFactory, Task};
use runner_core::{CancellationToken, RunnerAdapter, TestPayload};
use test_emulators::chromium::{BROWSER, ChromeDriver, browser_args};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");
const BOUND: Duration = Duration::from_secs(30);

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn settled(store: &dyn Store, key: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(r) = store.execution(key).await.unwrap()
            && r.state.is_settled()
        {
            return r.state.to_string();
        }
        assert!(started.elapsed() < BOUND, "{key} did not settle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn task(key: &str, outcome: &str) -> Task {
    let payload: TestPayload = serde_json::from_value(serde_json::json!({
        "name": key, "command": ["mock"], "backend": {"outcome": outcome, "log_lines": 5}
    }))
    .unwrap();
    let mut t = Task::new(key, "local_mock", Default::default(), payload);
    t.bench.name = "bench-a".into();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_logs_in_looks_at_a_failure_and_replays_a_dead_letter() {
    let driver = ChromeDriver::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = std::process::Command::new(BIN)
        .args(["api", "token", "add", "--file"])
        .arg(d.join("tokens"))
        .args(["--name", "ops", "--scopes", "admin"])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // The first provision fails for good: that task is dead-lettered, and
    // passes when replayed.
    std::fs::write(
        d.join("worker.yaml"),
        "queue: {path: q.sqlite3}\n\
         worker: {concurrency: 2, poll_ms: 30, reap_interval_seconds: 0}\n\
         runners:\n  - {type: local_mock, artifacts_dir: art, retries: 0, backend: {faults: [{phase: provision, fault: {kind: permanent}, times: 1}]}}\n\
         api: {tokens_file: tokens}\n",
    )
    .unwrap();
    let config = WorkerConfig::from_file(&d.join("worker.yaml")).unwrap();
    let section = config.api.clone().unwrap().resolved(d);
    let lite = SqliteStore::open(&config.queue.path).unwrap();
    let backends = Backends {
        queue: Arc::new(lite.clone()),
        store: Arc::new(lite.clone()),
    };
    let factory = RunnerFactory::with_builtins(Metrics::new());
    let worker = Worker::with_backends(config.clone(), &factory, backends.clone()).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn({
        let (w, s) = (worker.clone(), stop.clone());
        async move { w.serve(s).await }
    });
    lite.enqueue(&task("dead-1", "pass")).await.unwrap();
    assert_eq!(settled(&lite, "dead-1").await, "dead_lettered");
    lite.enqueue(&task("fail-1", "fail")).await.unwrap();
    lite.enqueue(&task("pass-1", "pass")).await.unwrap();
    assert_eq!(settled(&lite, "fail-1").await, "failed");
    assert_eq!(settled(&lite, "pass-1").await, "passed");

    let mut adapters: BTreeMap<String, Arc<dyn RunnerAdapter>> = BTreeMap::new();
    for r in &config.runners {
        adapters.insert(r.runner_type.clone(), factory.create(r).unwrap());
    }
    let state = ApiState::new(backends, config.clone(), section, adapters, Metrics::new()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(orchestrator_worker::api::serve(
        Arc::new(state),
        listener,
        stop.clone(),
    ));

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"binary": BROWSER, "args": browser_args(1280, 900)}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let c = tokio::time::timeout(
        Duration::from_secs(60),
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url()),
    )
    .await
    .expect("the browser starts within 60 s")
    .unwrap();
    let shot = |name: &'static str| {
        let c = c.clone();
        async move {
            let png = c.screenshot().await.unwrap();
            std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
        }
    };
    let wait_for = |css: &'static str| {
        let c = c.clone();
        async move {
            c.wait()
                .at_most(BOUND)
                .for_element(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"))
        }
    };

    // Log in: the list comes up.
    c.goto(&format!("{base}/")).await.unwrap();
    wait_for("#token").await.send_keys(&token).await.unwrap();
    shot("login").await;
    c.find(Locator::Css("#login-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let table = wait_for("#executions").await;
    let text = table.text().await.unwrap();
    for key in ["fail-1", "pass-1", "dead-1"] {
        assert!(text.contains(key), "{key} in {text}");
    }
    assert!(
        c.find(Locator::Css("tr.failed")).await.is_ok(),
        "coloured by outcome"
    );
    shot("executions").await;

    // The failed execution: phases drawn, its log shown.
    c.find(Locator::LinkText("fail-1"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("#attempts").await;
    let phases = c.find_all(Locator::Css("rect.phase")).await.unwrap();
    assert!(phases.len() >= 3, "a bar per phase: {}", phases.len());
    assert!(c.find(Locator::Css("rect.phase-run_test")).await.is_ok());
    let log = wait_for("pre.log").await.text().await.unwrap();
    assert!(!log.trim().is_empty(), "the collected log is shown");
    let state = c
        .find(Locator::Css("#state"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(state.trim(), "failed");
    shot("execution-failed").await;

    // The DLQ: replay by clicking; the execution runs again and passes.
    c.goto(&format!("{base}/dlq")).await.unwrap();
    wait_for("#dlq").await;
    shot("dlq").await;
    c.find(Locator::Css("button.replay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let url = c.current_url().await.unwrap();
        if url.path() == "/executions/dead-1" {
            // The page may be reloading (the refresh below): an element
            // of the old page goes stale, or none is there yet. Both are
            // "not yet"; the loop's bound still fails a replay that never
            // passes.
            let state = match c.find(Locator::Css("#state")).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if state.trim() == "passed" {
                break;
            }
        }
        assert!(
            started.elapsed() < BOUND,
            "the replayed execution did not pass: {url}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        if url.path() == "/executions/dead-1" {
            c.refresh().await.unwrap();
        }
    }
    let body = c
        .find(Locator::Css("#timeline"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("replayed from the dead-letter queue") || body.contains("passed"),
        "{body}"
    );
    shot("execution-replayed").await;
    c.goto(&format!("{base}/")).await.unwrap();
    let row = wait_for("#executions").await.text().await.unwrap();
    assert!(row.contains("dead-1"), "{row}");
    assert!(
        c.find(Locator::Css("tr.dead_lettered")).await.is_err(),
        "no dead letter left in the list"
    );

    for (path, name, css) in [
        ("/workers", "workers", "#workers"),
        ("/leaks", "leaks", "main"),
        ("/charts", "charts", "svg.chart"),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        wait_for(css).await;
        shot(name).await;
    }
    c.close().await.unwrap();
    stop.cancel();
}
