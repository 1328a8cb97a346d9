//! The HTTP API through a real server on 127.0.0.1 with a real worker
//! behind it (SQLite): every route, auth (no token, a bad one, the wrong
//! scope, a good one), the rate limit, cursor pages, SSE until settled,
//! an artifact with its sha256, problem documents for bad input, the
//! OpenAPI document against the routes; and the CLI through `--server`
//! from a process with no store access.
//!
//! Size: one file because every file under tests/ is its own test binary
//! (another link of the whole worker) and these tests share one server
//! and worker set-up.

#![cfg(all(feature = "mock", feature = "local"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_worker::api::{ApiSection, ApiState};
use orchestrator_worker::backends::Backends;
use orchestrator_worker::config::WorkerConfig;
use orchestrator_worker::serve::Worker;
use orchestrator_worker::store::SqliteStore;
use orchestrator_worker::{Metrics, RunnerFactory};
use runner_core::{CancellationToken, RunnerAdapter};
use serde_json::{Value, json};
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

struct Server {
    base: String,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn config_text(dir: &Path, api: &str) -> String {
    format!(
        "queue: {{path: q.sqlite3}}\n\
         worker: {{concurrency: 4, poll_ms: 30, reap_interval_seconds: 0, backoff_base_ms: 50, backoff_max_ms: 100}}\n\
         runners:\n  - {{type: local_mock, artifacts_dir: art}}\n  - {{type: local, artifacts_dir: art, backend: {{root: '{}'}}}}\n\
         api: {api}\n",
        dir.join("work").display()
    )
}

fn token(dir: &Path, name: &str, scopes: &str) -> String {
    let out = Command::new(BIN)
        .args(["api", "token", "add", "--file"])
        .arg(dir.join("tokens"))
        .args(["--name", name, "--scopes", scopes])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn start(config: &WorkerConfig, section: ApiSection, backends: Backends) -> Server {
    let metrics = Metrics::new();
    let factory = RunnerFactory::with_builtins(metrics.clone());
    let mut adapters: BTreeMap<String, Arc<dyn RunnerAdapter>> = BTreeMap::new();
    for r in &config.runners {
        adapters.insert(r.runner_type.clone(), factory.create(r).unwrap());
    }
    let state = ApiState::new(backends, config.clone(), section, adapters, metrics).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(orchestrator_worker::api::serve(
        Arc::new(state),
        listener,
        stop.clone(),
    ));
    Server { base, stop }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut req = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.base),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap().to_vec();
        (status, headers, bytes)
    }

    async fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, headers, bytes) = self
            .call(
                method,
                path,
                token,
                body.map(|b| serde_json::to_vec(&b).unwrap()),
            )
            .await;
        if status >= 400 {
            assert_eq!(
                headers["content-type"],
                "application/problem+json",
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

async fn settled(c: &Client, token: &str, key: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (status, doc) = c
            .json("GET", &format!("/v1/executions/{key}"), Some(token), None)
            .await;
        if status == 200 && doc["execution"]["settled_ms"].is_u64() {
            return doc["execution"].clone();
        }
        assert!(started.elapsed() < limit, "{key} did not settle: {doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mock(key: &str, outcome: &str, extra: Value) -> Value {
    let mut backend = json!({"outcome": outcome});
    if let Some(ms) = extra.get("duration_ms") {
        backend["duration_ms"] = ms.clone();
    }
    json!({"runner": "local_mock", "bench": {"name": "bench-a"}, "key": key,
           "payload": {"name": key, "command": ["mock"], "backend": backend}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_through_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let read = token(d, "reader", "read");
    let sub = token(d, "ci", "submit");
    let other = token(d, "other", "submit");
    let admin = token(d, "ops", "admin");
    let path = d.join("worker.yaml");
    std::fs::write(
        &path,
        config_text(
            d,
            "{tokens_file: tokens, max_body_bytes: 65536, max_page_size: 100}",
        ),
    )
    .unwrap();
    let config = WorkerConfig::from_file(&path).unwrap();
    let section = config.api.clone().unwrap().resolved(d);
    let lite = SqliteStore::open(&config.queue.path).unwrap();
    let backends = Backends {
        queue: Arc::new(lite.clone()),
        store: Arc::new(lite.clone()),
    };
    let server = start(&config, section.clone(), backends.clone()).await;
    let c = Client {
        http: reqwest::Client::new(),
        base: server.base.clone(),
    };
    let worker = Worker::with_backends(
        config.clone(),
        &RunnerFactory::with_builtins(Metrics::new()),
        backends.clone(),
    )
    .unwrap();
    let stop_worker = CancellationToken::new();
    let serving = tokio::spawn({
        let (w, s) = (worker.clone(), stop_worker.clone());
        async move { w.serve(s).await }
    });

    // Probes: open by default; /metrics needs a token unless opened.
    assert_eq!(c.json("GET", "/healthz", None, None).await.0, 200);
    let (status, ready) = c.json("GET", "/readyz", None, None).await;
    assert_eq!((status, ready["store"].as_str()), (200, Some("sqlite")));
    assert_eq!(c.call("GET", "/metrics", None, None).await.0, 401);
    let (status, _, body) = c.call("GET", "/metrics", Some(&read), None).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("orchestrator_queue_depth"));

    // Auth: no token 401, a bad token 401, the wrong scope 403.
    let (status, p) = c.json("GET", "/v1/executions", None, None).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (401, Some("/problems/unauthorized"))
    );
    let forged = format!("{}x", &read[..read.len() - 1]);
    assert_eq!(
        c.json("GET", "/v1/executions", Some(&forged), None).await.0,
        401
    );
    let (status, p) = c
        .json(
            "POST",
            "/v1/executions",
            Some(&read),
            Some(mock("nope", "pass", json!({}))),
        )
        .await;
    assert_eq!(status, 403, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("submit"), "{p}");

    // Bad input: problem documents naming the field.
    let (status, _, body) = c
        .call(
            "POST",
            "/v1/executions",
            Some(&sub),
            Some(b"{not json".to_vec()),
        )
        .await;
    let p: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, p["type"].as_str()),
        (400, Some("/problems/bad-request")),
        "{p}"
    );
    let mut unknown = mock("u-1", "pass", json!({}));
    unknown["payload"]["colour"] = json!("red");
    let (status, p) = c
        .json("POST", "/v1/executions", Some(&sub), Some(unknown))
        .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (422, Some("payload.colour")),
        "{p}"
    );
    let mut top = mock("u-2", "pass", json!({}));
    top["priority"] = json!(1);
    let (status, p) = c
        .json("POST", "/v1/executions", Some(&sub), Some(top))
        .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (422, Some("priority")),
        "{p}"
    );
    let mut runner = mock("u-3", "pass", json!({}));
    runner["runner"] = json!("quantum");
    let (status, p) = c
        .json("POST", "/v1/executions", Some(&sub), Some(runner))
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("runner")), "{p}");
    assert!(p["detail"].as_str().unwrap().contains("local_mock"), "{p}");
    let mut glob = mock("u-4", "pass", json!({}));
    glob["payload"]["artifacts"] = json!(["../etc/*"]);
    let (status, p) = c
        .json("POST", "/v1/executions", Some(&sub), Some(glob))
        .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (422, Some("payload.artifacts[0]")),
        "{p}"
    );
    let mut big = mock("u-5", "pass", json!({}));
    big["labels"] = json!({"x": "y".repeat(70_000)});
    let (status, p) = c
        .json("POST", "/v1/executions", Some(&sub), Some(big))
        .await;
    assert_eq!(
        (status, p["type"].as_str()),
        (413, Some("/problems/body-too-large")),
        "{p}"
    );
    let (status, p) = c
        .json("GET", "/v1/executions?limit=1000", Some(&read), None)
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("limit")), "{p}");
    let (status, p) = c
        .json("GET", "/v1/executions?colour=red", Some(&read), None)
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("colour")), "{p}");
    assert_eq!(c.json("GET", "/v1/nothing", Some(&read), None).await.0, 404);
    for key in ["u-1", "u-2", "u-3", "u-4", "u-5"] {
        assert_eq!(
            c.json("GET", &format!("/v1/executions/{key}"), Some(&read), None)
                .await
                .0,
            404
        );
    }

    // Submit, idempotent by key; SSE until settled.
    let (status, doc) = c
        .json(
            "POST",
            "/v1/executions",
            Some(&sub),
            Some(mock("pass-1", "pass", json!({"duration_ms": 300}))),
        )
        .await;
    assert_eq!(status, 201, "{doc}");
    assert_eq!(doc["executions"][0]["existing"], false);
    let (status, doc) = c
        .json(
            "POST",
            "/v1/executions",
            Some(&sub),
            Some(mock("pass-1", "pass", json!({}))),
        )
        .await;
    assert_eq!(
        (status, &doc["executions"][0]["existing"]),
        (200, &json!(true))
    );
    let mut events = c
        .http
        .get(format!("{}/v1/executions/pass-1/events", c.base))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let started = Instant::now();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), events.chunk())
            .await
            .expect("an event within 30 s");
        match chunk.unwrap() {
            Some(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            None => break,
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{text}");
    }
    for state in ["queued", "running", "passed"] {
        assert!(
            text.contains(&format!("\"state\":\"{state}\"")),
            "{state}: {text}"
        );
    }
    assert!(text.contains("event: settled"), "{text}");
    let settled_at = text.find("event: settled").unwrap();
    assert!(
        !text[settled_at..].contains("event: state"),
        "settled comes last: {text}"
    );

    // A failing execution: its record, its log with its sha256.
    c.json(
        "POST",
        "/v1/executions",
        Some(&sub),
        Some(mock("fail-1", "fail", json!({}))),
    )
    .await;
    let record = settled(&c, &read, "fail-1", Duration::from_secs(60)).await;
    assert_eq!(record["state"], "failed");
    assert!(!record["timeline"].as_array().unwrap().is_empty());
    let artifact = record["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "log")
        .expect("a log")
        .clone();
    let name = artifact["name"].as_str().unwrap();
    let (status, headers, bytes) = c
        .call(
            "GET",
            &format!("/v1/executions/fail-1/artifacts/{name}"),
            Some(&read),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let digest = hex::encode(sha2::Sha256::digest(&bytes));
    assert_eq!(headers["x-sha256"].to_str().unwrap(), digest);
    assert_eq!(artifact["sha256"].as_str().unwrap(), digest);
    assert_eq!(bytes.len() as u64, artifact["size"].as_u64().unwrap());
    assert_eq!(
        c.json(
            "GET",
            "/v1/executions/fail-1/artifacts/nope.txt",
            Some(&read),
            None
        )
        .await
        .0,
        404
    );

    // A batch (all or nothing), pages by cursor, the same batch again.
    let batch: Vec<Value> = (0..25)
        .map(|i| {
            let mut e = mock(&format!("page-{i:02}"), "pass", json!({}));
            e["correlation_id"] = json!("pipeline-7");
            e
        })
        .collect();
    let (status, doc) = c
        .json(
            "POST",
            "/v1/executions",
            Some(&sub),
            Some(json!({"executions": batch.clone()})),
        )
        .await;
    assert_eq!(status, 201, "{doc}");
    let (status, doc) = c
        .json(
            "POST",
            "/v1/executions",
            Some(&sub),
            Some(json!({"executions": batch})),
        )
        .await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["executions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["existing"] == true)
    );
    let mut bad_batch = vec![
        mock("b-ok", "pass", json!({})),
        mock("b-bad", "pass", json!({})),
    ];
    bad_batch[1]["runner"] = json!("quantum");
    let (status, p) = c
        .json(
            "POST",
            "/v1/executions",
            Some(&sub),
            Some(json!({"executions": bad_batch})),
        )
        .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (422, Some("executions[1].runner")),
        "{p}"
    );
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    for _ in 0..10 {
        let q = match &cursor {
            Some(cur) => format!("/v1/executions?correlation_id=pipeline-7&limit=7&cursor={cur}"),
            None => "/v1/executions?correlation_id=pipeline-7&limit=7".to_owned(),
        };
        let (status, doc) = c.json("GET", &q, Some(&read), None).await;
        assert_eq!(status, 200, "{doc}");
        let page = doc["executions"].as_array().unwrap();
        pages.push(page.len());
        for r in page {
            assert!(
                seen.insert(r["key"].as_str().unwrap().to_owned()),
                "twice: {}",
                r["key"]
            );
        }
        match doc["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25, "pages {pages:?}");
    assert_eq!(&pages[..3], &[7, 7, 7], "{pages:?}");
    let (_, doc) = c
        .json(
            "GET",
            "/v1/executions?bench=bench-a&state=failed",
            Some(&read),
            None,
        )
        .await;
    let keys: Vec<&str> = doc["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["fail-1"]);

    // Cancel: another submitter's execution needs admin.
    c.json(
        "POST",
        "/v1/executions",
        Some(&sub),
        Some(mock("long-1", "pass", json!({"duration_ms": 60_000}))),
    )
    .await;
    let (status, p) = c
        .json("POST", "/v1/executions/long-1/cancel", Some(&other), None)
        .await;
    assert_eq!(status, 403, "{p}");
    assert_eq!(
        c.json("POST", "/v1/executions/long-1/cancel", Some(&read), None)
            .await
            .0,
        403
    );
    let (status, doc) = c
        .json("POST", "/v1/executions/long-1/cancel", Some(&sub), None)
        .await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        ["removed", "requested"].contains(&doc["outcome"].as_str().unwrap()),
        "{doc}"
    );
    let record = settled(&c, &read, "long-1", Duration::from_secs(60)).await;
    assert_eq!(record["state"], "cancelled");
    c.json(
        "POST",
        "/v1/executions",
        Some(&sub),
        Some(mock("long-2", "pass", json!({"duration_ms": 60_000}))),
    )
    .await;
    assert_eq!(
        c.json("POST", "/v1/executions/long-2/cancel", Some(&admin), None)
            .await
            .0,
        200
    );
    assert_eq!(
        c.json("POST", "/v1/executions/nope/cancel", Some(&admin), None)
            .await
            .0,
        404
    );

    // The DLQ: a task for a runner nobody serves is dead-lettered; replay
    // needs admin and reopens its record.
    use orchestrator_worker::queue::TaskQueue;
    let body = json!({"execution_key": "dead-1", "runner": "nope", "payload": {"env": {"T": {"value": "s3cr3t", "secret": true}}}});
    lite.submit_raw(&body.to_string()).await.unwrap();
    let started = Instant::now();
    let letters = loop {
        let (status, doc) = c.json("GET", "/v1/dlq", Some(&read), None).await;
        assert_eq!(status, 200);
        if !doc["dead_letters"].as_array().unwrap().is_empty() {
            break doc["dead_letters"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id = letters[0]["id"].as_str().unwrap().to_owned();
    assert!(
        !letters.to_string().contains("s3cr3t"),
        "secrets masked: {letters}"
    );
    let (status, doc) = c
        .json("GET", &format!("/v1/dlq/{id}"), Some(&read), None)
        .await;
    assert_eq!(
        (status, doc["dead_letter"]["id"].as_str()),
        (200, Some(id.as_str()))
    );
    assert_eq!(
        c.json("POST", &format!("/v1/dlq/{id}/replay"), Some(&sub), None)
            .await
            .0,
        403
    );
    let (status, doc) = c
        .json("POST", &format!("/v1/dlq/{id}/replay"), Some(&admin), None)
        .await;
    assert_eq!(
        (status, doc["key"].as_str()),
        (200, Some("dead-1")),
        "{doc}"
    );
    assert_eq!(
        c.json("POST", "/v1/dlq/999999/replay", Some(&admin), None)
            .await
            .0,
        404
    );

    // Workers and leaks.
    let (status, doc) = c.json("GET", "/v1/workers", Some(&read), None).await;
    assert_eq!(status, 200);
    assert!(
        doc["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["alive"] == true),
        "{doc}"
    );
    let (status, doc) = c.json("GET", "/v1/leaks", Some(&read), None).await;
    assert_eq!(
        (status, &doc["report"]["dry_run"]),
        (200, &json!(true)),
        "{doc}"
    );

    // The OpenAPI document names exactly the routes, and each answers.
    let spec_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/adapters/api-openapi.yaml");
    let spec: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = orchestrator_worker::api::routes::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "docs/adapters/api-openapi.yaml and routes::ROUTES differ"
    );
    for (method, path) in &served {
        let concrete = path
            .replace("{key}", "fail-1")
            .replace("{name}", name)
            .replace("{id}", &id);
        let (status, _, body) = c.call(method, &concrete, Some(&admin), None).await;
        let routed = !(status == 405
            || (status == 404 && String::from_utf8_lossy(&body).contains("no route")));
        assert!(routed, "{method} {path}: {status}");
    }

    // The rate limit per token: a second replica with a small burst.
    let small = ApiSection {
        burst: 2,
        rate_per_minute: 6,
        ..section
    };
    let limited = start(&config, small, backends.clone()).await;
    let lc = Client {
        http: reqwest::Client::new(),
        base: limited.base.clone(),
    };
    assert_eq!(
        lc.json("GET", "/v1/workers", Some(&read), None).await.0,
        200
    );
    assert_eq!(
        lc.json("GET", "/v1/workers", Some(&read), None).await.0,
        200
    );
    let (status, headers, _) = lc.call("GET", "/v1/workers", Some(&read), None).await;
    assert_eq!(status, 429);
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        lc.json("GET", "/v1/workers", Some(&admin), None).await.0,
        200,
        "per token"
    );

    stop_worker.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), serving).await;
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let started = Instant::now();
        while self.0.try_wait().ok().flatten().is_none()
            && started.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
    }
}

/// `orchestrator api` as a process; its URL from its first line.
fn api_process(config: &Path, log: &Path) -> (Proc, String) {
    let child = Command::new(BIN)
        .args(["api", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(url) = text.lines().find_map(|l| l.strip_prefix("» listening on ")) {
            return (proc, url.trim().to_owned());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "api did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_cli_through_the_api_from_a_machine_without_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sub = token(d, "ci", "submit");
    let admin = token(d, "ops", "admin");
    std::fs::write(
        d.join("worker.yaml"),
        config_text(d, "{tokens_file: tokens}"),
    )
    .unwrap();
    let _serve = Proc(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(d.join("worker.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("serve.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let (_api, url) = api_process(&d.join("worker.yaml"), &d.join("api.log"));

    // The client: its own directory, no config, no database variables.
    let client = d.join("client");
    std::fs::create_dir(&client).unwrap();
    std::fs::write(client.join("bench.yaml"), "name: b\nrunner: local\n").unwrap();
    std::fs::write(
        client.join("fail.yaml"),
        "name: f\ncommand: [sh, -c, 'echo from the test; mkdir -p out; echo data > out/r.txt; exit 3']\nartifacts: ['out/*.txt']\n",
    )
    .unwrap();
    std::fs::write(
        client.join("bad.yaml"),
        "name: f\ncommand: [true]\nartifacts: ['../x']\n",
    )
    .unwrap();
    let cli = |token: &str, args: &[&str]| -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .current_dir(&client)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("ORCHESTRATOR_SERVER", &url)
            .env("ORCHESTRATOR_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = cli(
        &sub,
        &[
            "submit",
            "--wait",
            "--timeout",
            "120s",
            "--key",
            "cli-1",
            "--bench",
            "bench.yaml",
            "--payload",
            "fail.yaml",
            "--junit",
            "junit.xml",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n--- serve.log:\n{}\n--- api.log:\n{}",
        text(&out),
        std::fs::read_to_string(d.join("serve.log")).unwrap_or_default(),
        std::fs::read_to_string(d.join("api.log")).unwrap_or_default()
    );
    assert!(
        text(&out).contains("result     failed (exit code 3)"),
        "{}",
        text(&out)
    );
    assert!(client.join("junit.xml").exists());
    let out = cli(
        &sub,
        &[
            "submit",
            "--key",
            "cli-1",
            "--bench",
            "bench.yaml",
            "--payload",
            "fail.yaml",
        ],
    );
    assert!(text(&out).contains("submitted before"), "{}", text(&out));
    let out = cli(
        &sub,
        &["submit", "--bench", "bench.yaml", "--payload", "bad.yaml"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("payload.artifacts[0]"),
        "{}",
        text(&out)
    );
    let out = cli("orch_bad_token", &["status", "cli-1"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("401"), "{}", text(&out));

    let out = cli(&sub, &["status", "cli-1", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["execution"]["state"], "failed", "{}", text(&out));
    let out = cli(&sub, &["history", "--json", "--state", "failed"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["executions"][0]["key"], "cli-1", "{}", text(&out));
    let out = cli(&sub, &["logs", "cli-1"]);
    assert!(text(&out).contains("from the test"), "{}", text(&out));
    let out = cli(&sub, &["artifacts", "cli-1", "--download", "down"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(client.join("down/out/r.txt")).unwrap(),
        "data\n"
    );

    std::fs::write(
        client.join("long.yaml"),
        "name: l\ncommand: [sleep, '60']\n",
    )
    .unwrap();
    let out = cli(
        &sub,
        &[
            "submit",
            "--key",
            "cli-long",
            "--bench",
            "bench.yaml",
            "--payload",
            "long.yaml",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&sub, &["cancel", "cli-long"]);
    assert!(text(&out).contains("cli-long\t"), "{}", text(&out));
    let out = cli(
        &sub,
        &[
            "submit",
            "--wait",
            "--timeout",
            "60s",
            "--key",
            "cli-long",
            "--bench",
            "bench.yaml",
            "--payload",
            "long.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "cancelled: {}", text(&out));

    let out = cli(&admin, &["dlq", "list"]);
    assert!(out.status.success(), "{}", text(&out));
}
