//! A scripted Kubernetes API server on 127.0.0.1 for the eks tests.
//!
//! It serves the part of the API the runner uses (Jobs, their pods with
//! list/watch/get/log, Secrets) with real JSON over HTTP, so the runner's
//! `kube::Client` is exercised end to end. Each Job's pod follows a script
//! read from its test container's environment, as a function of time:
//!
//! | variable | meaning (default) |
//! |---|---|
//! | `SIM_PENDING_MS` | time in Pending/ContainerCreating (30) |
//! | `SIM_LINES` | log lines written, one per `SIM_LINE_MS` (3) |
//! | `SIM_LINE_MS` | ms between lines (5) |
//! | `SIM_EXIT` | exit code at the end (0) |
//! | `SIM_MODE` | `normal`, `oom` (OOMKilled 137), `evict` (pod evicted), `imagepull` (ErrImagePull then ImagePullBackOff forever) |
//! | `SIM_LOG_DROP_AFTER` | each log connection breaks after this many lines |
//! | `SIM_STAMP_MS` | timestamps rounded down to this many ms (equal stamps) |
//! | `SIM_ARTIFACTS` | files the "uploader" puts under `$ARTIFACTS_S3_URI` at the end |
//!
//! `activeDeadlineSeconds` is honoured (the pod is killed and the Job fails
//! with DeadlineExceeded). Deleting a Job deletes its pod unless the
//! propagation policy is Orphan; the policies seen are recorded.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// Uploads `n` artifact files to an `s3://` URI (the sidecar's job).
pub type Uploader =
    Arc<dyn Fn(String, u64) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Oom,
    Evict,
    ImagePull,
}

#[derive(Debug, Clone)]
struct Script {
    pending_ms: u64,
    lines: u64,
    line_ms: u64,
    exit: i32,
    mode: Mode,
    drop_after: Option<u64>,
    stamp_ms: u64,
    artifacts: u64,
    artifacts_uri: Option<String>,
}

struct Entry {
    namespace: String,
    job: Value,
    created: Instant,
    created_at: jiff::Timestamp,
    script: Script,
    uid: String,
    uploaded: bool,
    upload_done: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<(String, String), Entry>,
    orphans: Vec<Entry>,
    secrets: BTreeMap<(String, String), Value>,
    requests: Vec<String>,
    deletes: Vec<(String, String)>,
    log_connections: u64,
    fail_next: u32,
    reject_jobs: bool,
    counter: u64,
    uploader: Option<Uploader>,
}

/// The running server.
#[derive(Clone)]
pub struct FakeK8s {
    base: String,
    inner: Arc<Mutex<Inner>>,
}

/// How a pod is at an instant.
enum Phase {
    Pending(&'static str),
    Running,
    Ended {
        exit: i32,
        reason: &'static str,
        pod_reason: Option<&'static str>,
    },
}

impl Entry {
    fn name(&self) -> String {
        self.job["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn pod_name(&self) -> String {
        format!("{}-x7k2p", self.name())
    }

    fn deadline_ms(&self) -> Option<u64> {
        self.job["spec"]["activeDeadlineSeconds"]
            .as_u64()
            .map(|s| s * 1000)
    }

    /// ms after creation when the test container ends, and how.
    fn end_ms(&self) -> Option<(u64, Phase)> {
        let s = &self.script;
        if s.mode == Mode::ImagePull {
            return self.deadline_ms().map(|d| {
                (
                    d,
                    Phase::Ended {
                        exit: -1,
                        reason: "DeadlineExceeded",
                        pod_reason: Some("DeadlineExceeded"),
                    },
                )
            });
        }
        let natural = s.pending_ms + s.lines * s.line_ms;
        if let Some(d) = self.deadline_ms()
            && d < natural
        {
            return Some((
                d,
                Phase::Ended {
                    exit: 137,
                    reason: "Error",
                    pod_reason: Some("DeadlineExceeded"),
                },
            ));
        }
        let phase = match s.mode {
            Mode::Oom => Phase::Ended {
                exit: 137,
                reason: "OOMKilled",
                pod_reason: None,
            },
            Mode::Evict => Phase::Ended {
                exit: 137,
                reason: "Error",
                pod_reason: Some("Evicted"),
            },
            _ if s.exit == 0 => Phase::Ended {
                exit: 0,
                reason: "Completed",
                pod_reason: None,
            },
            _ => Phase::Ended {
                exit: s.exit,
                reason: "Error",
                pod_reason: None,
            },
        };
        Some((natural, phase))
    }

    fn phase_at(&self, ms: u64) -> Phase {
        if let Some((end, phase)) = self.end_ms()
            && ms >= end
        {
            return phase;
        }
        let s = &self.script;
        if ms < s.pending_ms {
            return Phase::Pending("ContainerCreating");
        }
        if s.mode == Mode::ImagePull {
            return if ms < 2 * s.pending_ms {
                Phase::Pending("ErrImagePull")
            } else {
                Phase::Pending("ImagePullBackOff")
            };
        }
        Phase::Running
    }

    fn now_ms(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }

    fn stamp(&self, ms: u64) -> String {
        let ms = match self.script.stamp_ms {
            0 => ms,
            q => ms / q * q,
        };
        // Nanosecond precision, as the kubelet writes.
        let at = self.created_at + jiff::SignedDuration::from_millis(ms as i64);
        at.strftime("%Y-%m-%dT%H:%M:%S.%9fZ").to_string()
    }

    /// Lines written by `ms`: (index, ms written).
    fn lines_until(&self, ms: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let s = &self.script;
        let end = self.end_ms().map(|(e, _)| e).unwrap_or(u64::MAX);
        (0..s.lines)
            .map(move |i| (i, s.pending_ms + i * s.line_ms))
            .take_while(move |&(_, at)| at < end && at <= ms)
    }

    fn pod(&self) -> Value {
        let ms = self.now_ms();
        let phase = self.phase_at(ms);
        let started = self.stamp(self.script.pending_ms);
        let image = self.job["spec"]["template"]["spec"]["containers"][0]["image"].clone();
        let (pod_phase, state, pod_reason) = match &phase {
            Phase::Pending(reason) => (
                "Pending",
                json!({"waiting": {"reason": reason, "message": format!("simulated {reason}")}}),
                None,
            ),
            Phase::Running => ("Running", json!({"running": {"startedAt": started}}), None),
            Phase::Ended {
                exit,
                reason,
                pod_reason,
            } => (
                if *exit == 0 { "Succeeded" } else { "Failed" },
                json!({"terminated": {"exitCode": exit, "reason": reason, "startedAt": started, "finishedAt": self.stamp(ms)}}),
                *pod_reason,
            ),
        };
        let mut labels = self.job["spec"]["template"]["metadata"]["labels"].clone();
        labels["job-name"] = json!(self.name());
        labels["batch.kubernetes.io/job-name"] = json!(self.name());
        let mut status = json!({
            "phase": pod_phase,
            "containerStatuses": [{
                "name": "test", "image": image, "imageID": "", "ready": matches!(phase, Phase::Running),
                "restartCount": 0, "state": state,
            }],
        });
        if let Some(reason) = pod_reason {
            status["reason"] = json!(reason);
            status["message"] = json!(match reason {
                "Evicted" =>
                    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki.",
                _ => "Pod was active on the node longer than the specified deadline",
            });
        }
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": self.pod_name(), "namespace": self.namespace, "labels": labels,
                "uid": format!("{}-pod", self.uid),
                "creationTimestamp": self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "resourceVersion": format!("{}", ms),
            },
            "spec": self.job["spec"]["template"]["spec"].clone(),
            "status": status,
        })
    }

    fn job_view(&self) -> Value {
        let mut job = self.job.clone();
        let ms = self.now_ms();
        let status = match self.phase_at(ms) {
            Phase::Ended { exit: 0, .. } => {
                json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
            }
            Phase::Ended {
                pod_reason: Some("DeadlineExceeded"),
                ..
            } => {
                json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]})
            }
            Phase::Ended { .. } => {
                json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})
            }
            _ => json!({"active": 1}),
        };
        job["status"] = status;
        job
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn env_of(job: &Value) -> BTreeMap<String, String> {
    job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .filter_map(|v| {
                    Some((
                        v["name"].as_str()?.to_string(),
                        v["value"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn script_of(job: &Value) -> Script {
    let env = env_of(job);
    let num = |k: &str, d: u64| env.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    Script {
        pending_ms: num("SIM_PENDING_MS", 30),
        lines: num("SIM_LINES", 3),
        line_ms: num("SIM_LINE_MS", 5),
        exit: env
            .get("SIM_EXIT")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        mode: match env.get("SIM_MODE").map(String::as_str) {
            Some("oom") => Mode::Oom,
            Some("evict") => Mode::Evict,
            Some("imagepull") => Mode::ImagePull,
            _ => Mode::Normal,
        },
        drop_after: env.get("SIM_LOG_DROP_AFTER").and_then(|v| v.parse().ok()),
        stamp_ms: num("SIM_STAMP_MS", 0),
        artifacts: num("SIM_ARTIFACTS", 0),
        artifacts_uri: env.get("ARTIFACTS_S3_URI").cloned(),
    }
}

fn selector_matches(selector: Option<&String>, labels: &Value) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels[k].as_str() == Some(v),
            None => labels.get(term).is_some(),
        })
}

type Shared = Arc<Mutex<Inner>>;
type Params = Query<BTreeMap<String, String>>;

impl FakeK8s {
    /// Serve on 127.0.0.1 with a free port.
    pub async fn start() -> FakeK8s {
        let inner: Shared = Arc::default();
        let app = Router::new()
            .route(
                "/apis/batch/v1/namespaces/{ns}/jobs",
                get(list_jobs).post(create_job),
            )
            .route(
                "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
                get(get_job).delete(delete_job),
            )
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
            .route(
                "/api/v1/namespaces/{ns}/secrets",
                get(list_secrets).post(create_secret),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets/{name}",
                get(get_secret).delete(delete_secret).patch(patch_secret),
            )
            .layer(axum::middleware::from_fn_with_state(inner.clone(), record))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeK8s {
            base: format!("http://{addr}"),
            inner,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// A kube client for it.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.base.parse().unwrap());
        config.default_namespace = "tests".into();
        config.read_timeout = Some(Duration::from_secs(30));
        // As the runner does for clients it builds: its own bounded retry only.
        config.default_retry = false;
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig file pointing at it.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster: {{server: '{}'}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: tester, namespace: tests}}\nusers:\n- name: tester\n  user: {{token: fake-token}}\n",
            self.base
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The next `n` requests fail with 503.
    pub fn fail_next(&self, n: u32) {
        self.inner.lock().unwrap().fail_next = n;
    }

    /// Refuse every Job creation with 403 (a worker that made the Secret
    /// and died before its Job, as far as the cluster can tell).
    pub fn reject_jobs(&self, reject: bool) {
        self.inner.lock().unwrap().reject_jobs = reject;
    }

    /// Give the fake sidecar somewhere to upload.
    pub fn set_uploader(&self, uploader: Uploader) {
        self.inner.lock().unwrap().uploader = Some(uploader);
    }

    /// Requests seen, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// `(job, propagationPolicy)` of each Job delete.
    pub fn deletes(&self) -> Vec<(String, String)> {
        self.inner.lock().unwrap().deletes.clone()
    }

    /// Jobs that exist now.
    pub fn jobs(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .jobs
            .keys()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The stored Job.
    pub fn job(&self, name: &str) -> Option<Value> {
        let inner = self.inner.lock().unwrap();
        inner
            .jobs
            .values()
            .find(|e| e.name() == name)
            .map(|e| e.job.clone())
    }

    /// Pods that exist now (a Job's, or orphans).
    pub fn pods(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        inner
            .jobs
            .values()
            .chain(inner.orphans.iter())
            .map(Entry::pod_name)
            .collect()
    }

    /// Secrets that exist now.
    pub fn secrets(&self) -> Vec<Value> {
        self.inner
            .lock()
            .unwrap()
            .secrets
            .values()
            .cloned()
            .collect()
    }

    /// Log connections opened.
    pub fn log_connections(&self) -> u64 {
        self.inner.lock().unwrap().log_connections
    }
}

async fn record(
    State(inner): State<Shared>,
    method: Method,
    uri: Uri,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    {
        let mut inner = inner.lock().unwrap();
        inner.requests.push(format!("{method} {uri}"));
        if inner.fail_next > 0 {
            inner.fail_next -= 1;
            return status(503, "ServiceUnavailable", "simulated outage".into());
        }
    }
    next.run(request).await
}

fn list(kind: &str, api_version: &str, items: Vec<Value>, version: u64) -> Response {
    axum::Json(json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"resourceVersion": version.to_string()},
        "items": items,
    }))
    .into_response()
}

async fn list_jobs(
    State(inner): State<Shared>,
    Path(ns): Path<String>,
    Query(q): Params,
) -> Response {
    let inner = inner.lock().unwrap();
    let items: Vec<Value> = inner
        .jobs
        .values()
        .filter(|e| {
            e.namespace == ns
                && selector_matches(q.get("labelSelector"), &e.job["metadata"]["labels"])
        })
        .map(Entry::job_view)
        .collect();
    let limit = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    list(
        "JobList",
        "batch/v1",
        items.into_iter().take(limit).collect(),
        inner.counter,
    )
}

async fn create_job(State(inner): State<Shared>, Path(ns): Path<String>, body: Bytes) -> Response {
    let Ok(mut job) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "body is not JSON".into());
    };
    if ns != "tests" {
        return status(404, "NotFound", format!("namespaces \"{ns}\" not found"));
    }
    if inner.lock().unwrap().reject_jobs {
        return status(
            403,
            "Forbidden",
            "jobs.batch is forbidden: simulated".into(),
        );
    }
    let Some(name) = job["metadata"]["name"].as_str().map(str::to_string) else {
        return status(
            422,
            "Invalid",
            "Job.batch \"\" is invalid: metadata.name: Required value".into(),
        );
    };
    let mut inner = inner.lock().unwrap();
    if inner.jobs.contains_key(&(ns.clone(), name.clone())) {
        return status(
            409,
            "AlreadyExists",
            format!("jobs.batch \"{name}\" already exists"),
        );
    }
    inner.counter += 1;
    let uid = format!("uid-{}", inner.counter);
    let created_at = jiff::Timestamp::now();
    job["metadata"]["uid"] = json!(uid);
    job["metadata"]["resourceVersion"] = json!(inner.counter.to_string());
    job["metadata"]["creationTimestamp"] =
        json!(created_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let entry = Entry {
        namespace: ns.clone(),
        script: script_of(&job),
        job,
        created: Instant::now(),
        created_at,
        uid,
        uploaded: false,
        upload_done: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let view = entry.job_view();
    inner.jobs.insert((ns, name), entry);
    (StatusCode::CREATED, axum::Json(view)).into_response()
}

async fn get_job(
    State(inner): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let inner = inner.lock().unwrap();
    match inner.jobs.get(&(ns, name.clone())) {
        Some(e) => axum::Json(e.job_view()).into_response(),
        None => status(404, "NotFound", format!("jobs.batch \"{name}\" not found")),
    }
}

async fn delete_job(
    State(inner): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Params,
    body: Bytes,
) -> Response {
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let policy = options["propagationPolicy"]
        .as_str()
        .or(q.get("propagationPolicy").map(String::as_str))
        .unwrap_or("(default: Orphan for batch/v1 Jobs)")
        .to_string();
    let mut inner = inner.lock().unwrap();
    match inner.jobs.remove(&(ns, name.clone())) {
        Some(entry) => {
            inner.deletes.push((name.clone(), policy.clone()));
            if policy != "Background" && policy != "Foreground" {
                inner.orphans.push(entry);
            }
            axum::Json(
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": "batch", "kind": "jobs"}}),
            )
            .into_response()
        }
        None => status(404, "NotFound", format!("jobs.batch \"{name}\" not found")),
    }
}

/// The matching pods now; the sidecar's uploads of pods that just ended
/// finish before the answer (a native sidecar ends before the pod does).
async fn pods_now(inner: &Shared, ns: &str, selector: Option<&String>) -> Vec<Value> {
    let (pods, uploads) = {
        let mut guard = inner.lock().unwrap();
        matching_pods(&mut guard, ns, selector)
    };
    // Spawned: a caller that goes away (a dropped watch) must not cancel it.
    for upload in uploads {
        tokio::spawn(upload);
    }
    pods
}

fn matching_pods(
    inner: &mut Inner,
    ns: &str,
    selector: Option<&String>,
) -> (Vec<Value>, Vec<futures::future::BoxFuture<'static, ()>>) {
    let mut pods = Vec::new();
    let mut uploads = Vec::new();
    let uploader = inner.uploader.clone();
    for entry in inner.jobs.values_mut().chain(inner.orphans.iter_mut()) {
        if entry.namespace != ns {
            continue;
        }
        let mut pod = entry.pod();
        // The sidecar uploads once the test container has ended; until the
        // upload is done the pod stays Running with the sidecar running, as
        // a real kubelet shows it (the test container is already terminated).
        let ended = pod["status"]["containerStatuses"][0]["state"]["terminated"].is_object();
        let uploading = uploader.is_some()
            && entry.script.artifacts_uri.is_some()
            && entry.script.artifacts > 0;
        if ended && uploading {
            if !entry.uploaded {
                entry.uploaded = true;
                if let (Some(upload), Some(uri)) = (&uploader, &entry.script.artifacts_uri) {
                    let done = entry.upload_done.clone();
                    let upload = upload(uri.clone(), entry.script.artifacts);
                    uploads.push(Box::pin(async move {
                        upload.await;
                        done.store(true, std::sync::atomic::Ordering::SeqCst);
                    })
                        as futures::future::BoxFuture<'static, ()>);
                }
            }
            let running = !entry.upload_done.load(std::sync::atomic::Ordering::SeqCst);
            if running {
                pod["status"]["phase"] = json!("Running");
            }
            let state = if running {
                json!({"running": {}})
            } else {
                json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
            };
            pod["status"]["initContainerStatuses"] = json!([{
                "name": "uploader", "image": "uploader", "imageID": "", "ready": running,
                "restartCount": 0, "state": state,
            }]);
        }
        if selector_matches(selector, &pod["metadata"]["labels"]) {
            pods.push(pod);
        }
    }
    (pods, uploads)
}

async fn list_pods(
    State(inner): State<Shared>,
    Path(ns): Path<String>,
    Query(q): Params,
) -> Response {
    if q.get("watch").map(String::as_str) == Some("true")
        || q.get("watch").map(String::as_str) == Some("1")
    {
        return watch_pods(inner, ns, q);
    }
    let items = pods_now(&inner, &ns, q.get("labelSelector")).await;
    let version = inner.lock().unwrap().counter;
    list("PodList", "v1", items, version)
}

fn watch_pods(inner: Shared, ns: String, q: BTreeMap<String, String>) -> Response {
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(30u64)
        .min(60);
    let until = Instant::now() + Duration::from_secs(timeout);
    let selector = q.get("labelSelector").cloned();
    let state = (
        inner,
        BTreeMap::<String, String>::new(),
        Vec::<Bytes>::new(),
    );
    let stream = futures::stream::unfold(state, move |(inner, mut sent, mut queue)| {
        let ns = ns.clone();
        let selector = selector.clone();
        async move {
            loop {
                if let Some(next) = queue.pop() {
                    return Some((Ok::<_, std::io::Error>(next), (inner, sent, queue)));
                }
                if Instant::now() >= until {
                    return None;
                }
                let pods = pods_now(&inner, &ns, selector.as_ref()).await;
                let mut names = Vec::new();
                for pod in pods {
                    let name = pod["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let status = pod["status"].to_string();
                    names.push(name.clone());
                    let kind = match sent.get(&name) {
                        None => "ADDED",
                        Some(s) if *s != status => "MODIFIED",
                        _ => continue,
                    };
                    sent.insert(name, status);
                    let line = json!({"type": kind, "object": pod}).to_string() + "\n";
                    queue.insert(0, Bytes::from(line));
                }
                let gone: Vec<String> = sent
                    .keys()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                for name in gone {
                    sent.remove(&name);
                    let pod =
                        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}});
                    queue.insert(
                        0,
                        Bytes::from(json!({"type": "DELETED", "object": pod}).to_string() + "\n"),
                    );
                }
                if queue.is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn get_pod(
    State(inner): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let pods = pods_now(&inner, &ns, None).await;
    match pods
        .into_iter()
        .find(|p| p["metadata"]["name"] == name.as_str())
    {
        Some(pod) => axum::Json(pod).into_response(),
        None => status(404, "NotFound", format!("pods \"{name}\" not found")),
    }
}

struct LogState {
    inner: Shared,
    ns: String,
    pod: String,
    next: u64,
    sent: u64,
    follow: bool,
    since: Option<jiff::Timestamp>,
}

fn find<'a>(inner: &'a Inner, ns: &str, pod: &str) -> Option<&'a Entry> {
    inner
        .jobs
        .values()
        .chain(inner.orphans.iter())
        .find(|e| e.namespace == ns && e.pod_name() == pod)
}

async fn pod_log(
    State(inner): State<Shared>,
    Path((ns, pod)): Path<(String, String)>,
    Query(q): Params,
) -> Response {
    let since = q.get("sinceTime").map(|s| s.parse::<jiff::Timestamp>());
    let since = match since {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return status(400, "BadRequest", format!("sinceTime: {e}")),
        None => None,
    };
    {
        let mut guard = inner.lock().unwrap();
        guard.log_connections += 1;
        let Some(entry) = find(&guard, &ns, &pod) else {
            return status(404, "NotFound", format!("pods \"{pod}\" not found"));
        };
        if q.get("timestamps").map(String::as_str) != Some("true") {
            return status(
                400,
                "BadRequest",
                "this fake serves timestamped logs only".into(),
            );
        }
        if let Phase::Pending(reason) = entry.phase_at(entry.now_ms()) {
            return status(
                400,
                "BadRequest",
                format!("container \"test\" in pod \"{pod}\" is waiting to start: {reason}"),
            );
        }
    }
    let state = LogState {
        inner,
        ns,
        pod,
        next: 0,
        sent: 0,
        follow: q.get("follow").map(String::as_str) == Some("true"),
        since,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            let (line, wait, done, drop) = {
                let guard = st.inner.lock().unwrap();
                let Some(entry) = find(&guard, &st.ns, &st.pod) else {
                    return None; // deleted: the stream ends
                };
                let now = entry.now_ms();
                let written: Vec<(u64, u64)> = entry.lines_until(now).collect();
                let ended = !matches!(entry.phase_at(now), Phase::Running | Phase::Pending(_));
                match written.iter().find(|(i, _)| *i == st.next) {
                    Some(&(i, at)) => {
                        let stamp = entry.stamp(at);
                        let keep = st
                            .since
                            .is_none_or(|s| stamp.parse::<jiff::Timestamp>().is_ok_and(|t| t >= s));
                        let drop = entry.script.drop_after.is_some_and(|n| st.sent >= n);
                        (
                            keep.then(|| format!("{stamp} line {i}\n")),
                            false,
                            false,
                            drop,
                        )
                    }
                    None => (None, !ended && st.follow, ended || !st.follow, false),
                }
            };
            if drop {
                // Break the connection mid-stream, as a proxy or kubelet restart would.
                return Some((Err(std::io::Error::other("simulated drop")), st));
            }
            if done {
                return None;
            }
            if wait {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            st.next += 1;
            if let Some(line) = line {
                st.sent += 1;
                return Some((Ok(Bytes::from(line)), st));
            }
        }
    });
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn create_secret(
    State(inner): State<Shared>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(mut secret) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "body is not JSON".into());
    };
    let name = secret["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut inner = inner.lock().unwrap();
    if inner.secrets.contains_key(&(ns.clone(), name.clone())) {
        return status(
            409,
            "AlreadyExists",
            format!("secrets \"{name}\" already exists"),
        );
    }
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    inner.secrets.insert((ns, name), secret.clone());
    (StatusCode::CREATED, axum::Json(secret)).into_response()
}

async fn list_secrets(
    State(inner): State<Shared>,
    Path(ns): Path<String>,
    Query(q): Params,
) -> Response {
    let inner = inner.lock().unwrap();
    let items: Vec<Value> = inner
        .secrets
        .iter()
        .filter(|((n, _), secret)| {
            *n == ns && selector_matches(q.get("labelSelector"), &secret["metadata"]["labels"])
        })
        .map(|(_, secret)| secret.clone())
        .collect();
    list("SecretList", "v1", items, inner.counter)
}

async fn get_secret(
    State(inner): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match inner.lock().unwrap().secrets.get(&(ns, name.clone())) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => status(404, "NotFound", format!("secrets \"{name}\" not found")),
    }
}

async fn delete_secret(
    State(inner): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match inner.lock().unwrap().secrets.remove(&(ns, name.clone())) {
        Some(_) => axum::Json(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        )
        .into_response(),
        None => status(404, "NotFound", format!("secrets \"{name}\" not found")),
    }
}

/// A JSON merge patch of the metadata (what the runner sends).
async fn patch_secret(
    State(inner): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "body is not JSON".into());
    };
    let mut inner = inner.lock().unwrap();
    match inner.secrets.get_mut(&(ns, name.clone())) {
        Some(secret) => {
            if let Some(meta) = patch["metadata"].as_object() {
                for (k, v) in meta {
                    secret["metadata"][k] = v.clone();
                }
            }
            axum::Json(secret.clone()).into_response()
        }
        None => status(404, "NotFound", format!("secrets \"{name}\" not found")),
    }
}
