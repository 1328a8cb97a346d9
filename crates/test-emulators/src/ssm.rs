//! An SSM agent emulator: the SSM JSON protocol (`X-Amz-Target:
//! AmazonSSM.*`) for the operations the ec2 backend uses, with commands
//! really run by `bash` on this machine in their own process group.
//!
//! Status follows the real service: `Pending` → `InProgress` → `Success`,
//! `Failed` (with the exit code as `ResponseCode`), `TimedOut` (after the
//! `executionTimeout` parameter) or `Cancelled` (after `CancelCommand`).
//! Instances listed as offline never come online in
//! `DescribeInstanceInformation`, and commands sent to them fail delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How much output `GetCommandInvocation` returns inline, as in SSM.
const INLINE_OUTPUT: usize = 24_000;

#[derive(Debug, Clone)]
struct Invocation {
    command_id: String,
    instance_id: String,
    comment: String,
    status: String,
    response_code: i64,
    stdout: String,
    stderr: String,
    pgid: Option<i32>,
}

#[derive(Debug, Default)]
struct Inner {
    invocations: Vec<Invocation>,
    offline: BTreeSet<String>,
    all_offline: bool,
    calls: BTreeMap<String, usize>,
    next_id: u64,
}

#[derive(Debug, Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    env: Arc<Vec<(String, String)>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running emulator; stops when dropped.
#[derive(Debug)]
pub struct SsmSim {
    addr: SocketAddr,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl SsmSim {
    /// Start on a free loopback port. `env` is added to every command's
    /// environment (moto's endpoint and dummy credentials, a PATH with the
    /// venv's `aws`).
    pub async fn start(env: Vec<(String, String)>) -> std::io::Result<SsmSim> {
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner::default())),
            env: Arc::new(env),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/", axum::routing::post(dispatch))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(SsmSim {
            addr,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Mark an instance offline (its agent never pings) or online again.
    pub fn set_offline(&self, instance_id: &str, offline: bool) {
        let mut inner = self.shared.lock();
        if offline {
            inner.offline.insert(instance_id.to_string());
        } else {
            inner.offline.remove(instance_id);
        }
    }

    /// Every instance offline (no agent pings) until called with `false`:
    /// for tests that need an instance stuck before SSM is ready, whose id
    /// they cannot know in advance.
    pub fn set_all_offline(&self, offline: bool) {
        self.shared.lock().all_offline = offline;
    }

    /// How many times an operation (`SendCommand`, `CancelCommand`, ...) was called.
    pub fn calls(&self, operation: &str) -> usize {
        self.shared
            .lock()
            .calls
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    /// The commands sent to an instance, oldest first: (command id, status).
    pub fn commands_for(&self, instance_id: &str) -> Vec<(String, String)> {
        self.shared
            .lock()
            .invocations
            .iter()
            .filter(|i| i.instance_id == instance_id)
            .map(|i| (i.command_id.clone(), i.status.clone()))
            .collect()
    }
}

impl Drop for SsmSim {
    fn drop(&mut self) {
        self.server.abort();
        let inner = self.shared.lock();
        for inv in &inner.invocations {
            if let Some(pgid) = inv.pgid {
                kill_group(pgid);
            }
        }
    }
}

/// What the agent does on cancel: TERM to the script's process group, KILL
/// a few seconds later.
fn terminate_group(pgid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGTERM,
    );
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        kill_group(pgid);
    });
}

fn kill_group(pgid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn error(kind: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"__type": kind, "message": message}).to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}

async fn dispatch(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let operation = target
        .strip_prefix("AmazonSSM.")
        .unwrap_or(target)
        .to_string();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error("ValidationException", "the body is not JSON");
    };
    *shared.lock().calls.entry(operation.clone()).or_default() += 1;
    match operation.as_str() {
        "SendCommand" => send_command(shared, &request),
        "GetCommandInvocation" => get_invocation(&shared, &request),
        "CancelCommand" => cancel_command(&shared, &request),
        "ListCommands" => list_commands(&shared, &request),
        "DescribeInstanceInformation" => describe_instances(&shared, &request),
        other => error(
            "UnsupportedOperation",
            &format!("ssm-sim does not do {other}"),
        ),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn send_command(shared: Shared, request: &Value) -> Response {
    if request["DocumentName"].as_str() != Some("AWS-RunShellScript") {
        return error("InvalidDocument", "ssm-sim runs AWS-RunShellScript only");
    }
    let instances = strings(&request["InstanceIds"]);
    if instances.is_empty() {
        return error("ValidationException", "InstanceIds is empty");
    }
    let script = strings(&request["Parameters"]["commands"]).join("\n");
    let timeout = strings(&request["Parameters"]["executionTimeout"])
        .first()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(3600);
    let comment = request["Comment"].as_str().unwrap_or_default().to_string();
    let command_id = {
        let mut inner = shared.lock();
        inner.next_id += 1;
        format!(
            "{:08x}-sim0-4000-8000-{:012x}",
            inner.next_id, inner.next_id
        )
    };
    for instance in &instances {
        let offline = {
            let inner = shared.lock();
            inner.all_offline || inner.offline.contains(instance)
        };
        let status = if offline { "Undeliverable" } else { "Pending" };
        shared.lock().invocations.push(Invocation {
            command_id: command_id.clone(),
            instance_id: instance.clone(),
            comment: comment.clone(),
            status: status.to_string(),
            response_code: -1,
            stdout: String::new(),
            stderr: String::new(),
            pgid: None,
        });
        if !offline {
            tokio::spawn(execute(
                shared.clone(),
                command_id.clone(),
                instance.clone(),
                script.clone(),
                Duration::from_secs(timeout),
            ));
        }
    }
    ok(json!({"Command": {
        "CommandId": command_id,
        "DocumentName": "AWS-RunShellScript",
        "Comment": comment,
        "InstanceIds": instances,
        "Status": "Pending",
    }}))
}

fn update(shared: &Shared, command_id: &str, instance_id: &str, f: impl FnOnce(&mut Invocation)) {
    let mut inner = shared.lock();
    if let Some(inv) = inner
        .invocations
        .iter_mut()
        .find(|i| i.command_id == command_id && i.instance_id == instance_id)
    {
        f(inv);
    }
}

async fn execute(
    shared: Shared,
    command_id: String,
    instance_id: String,
    script: String,
    timeout: Duration,
) {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .envs(shared.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            update(&shared, &command_id, &instance_id, |inv| {
                inv.status = "Failed".into();
                inv.stderr = format!("ssm-sim could not start bash: {e}");
            });
            return;
        }
    };
    let pgid = child.id().map(|id| id as i32);
    update(&shared, &command_id, &instance_id, |inv| {
        inv.pgid = pgid;
        if inv.status == "Pending" {
            inv.status = "InProgress".into();
        }
    });
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let read_out = async {
        let mut buf = Vec::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.read_to_end(&mut buf).await;
        }
        buf
    };
    let read_err = async {
        let mut buf = Vec::new();
        if let Some(err) = stderr.as_mut() {
            let _ = err.read_to_end(&mut buf).await;
        }
        buf
    };
    let run = async {
        let (out, err, status) = tokio::join!(read_out, read_err, child.wait());
        (out, err, status)
    };
    let ended = tokio::time::timeout(timeout, run).await;
    let (status, code, out, err) = match ended {
        Ok((out, err, Ok(status))) => match status.code() {
            Some(0) => ("Success", 0, out, err),
            Some(code) => ("Failed", i64::from(code), out, err),
            // Killed by a signal: CancelCommand's doing, or the host's.
            None => ("Cancelled", -1, out, err),
        },
        Ok((out, err, Err(e))) => (
            "Failed",
            -1,
            out,
            format!("{e}").into_bytes().into_iter().chain(err).collect(),
        ),
        Err(_) => {
            if let Some(pgid) = pgid {
                terminate_group(pgid);
            }
            ("TimedOut", -1, Vec::new(), Vec::new())
        }
    };
    update(&shared, &command_id, &instance_id, |inv| {
        // A cancel that landed first wins.
        if inv.status != "Cancelled" {
            inv.status = status.into();
        }
        inv.response_code = code;
        inv.stdout = truncate(&out);
        inv.stderr = truncate(&err);
        inv.pgid = None;
    });
}

fn truncate(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.chars().take(INLINE_OUTPUT).collect()
}

fn get_invocation(shared: &Shared, request: &Value) -> Response {
    let command_id = request["CommandId"].as_str().unwrap_or_default();
    let instance_id = request["InstanceId"].as_str().unwrap_or_default();
    let inner = shared.lock();
    let Some(inv) = inner
        .invocations
        .iter()
        .find(|i| i.command_id == command_id && i.instance_id == instance_id)
    else {
        return error("InvocationDoesNotExist", "no such invocation");
    };
    ok(json!({
        "CommandId": inv.command_id,
        "InstanceId": inv.instance_id,
        "Comment": inv.comment,
        "DocumentName": "AWS-RunShellScript",
        "Status": inv.status,
        "StatusDetails": inv.status,
        "ResponseCode": inv.response_code,
        "StandardOutputContent": inv.stdout,
        "StandardErrorContent": inv.stderr,
    }))
}

fn cancel_command(shared: &Shared, request: &Value) -> Response {
    let command_id = request["CommandId"].as_str().unwrap_or_default();
    let mut inner = shared.lock();
    let mut found = false;
    for inv in inner
        .invocations
        .iter_mut()
        .filter(|i| i.command_id == command_id)
    {
        found = true;
        if matches!(inv.status.as_str(), "Pending" | "InProgress") {
            inv.status = "Cancelled".into();
            if let Some(pgid) = inv.pgid {
                terminate_group(pgid);
            }
        }
    }
    if found {
        ok(json!({}))
    } else {
        error("InvalidCommandId", "no such command")
    }
}

fn list_commands(shared: &Shared, request: &Value) -> Response {
    let instance = request["InstanceId"].as_str();
    let command = request["CommandId"].as_str();
    let inner = shared.lock();
    let commands: Vec<Value> = inner
        .invocations
        .iter()
        .filter(|i| instance.is_none_or(|id| id == i.instance_id))
        .filter(|i| command.is_none_or(|id| id == i.command_id))
        .map(|i| {
            json!({
                "CommandId": i.command_id,
                "Comment": i.comment,
                "DocumentName": "AWS-RunShellScript",
                "InstanceIds": [i.instance_id],
                "Status": i.status,
            })
        })
        .collect();
    ok(json!({"Commands": commands}))
}

fn describe_instances(shared: &Shared, request: &Value) -> Response {
    let mut wanted = Vec::new();
    for list in ["InstanceInformationFilterList", "Filters"] {
        for filter in request[list].as_array().into_iter().flatten() {
            let key = filter["key"]
                .as_str()
                .or(filter["Key"].as_str())
                .unwrap_or_default();
            if key == "InstanceIds" {
                wanted.extend(strings(&filter["valueSet"]));
                wanted.extend(strings(&filter["Values"]));
            }
        }
    }
    let inner = shared.lock();
    let list: Vec<Value> = wanted
        .iter()
        .filter(|id| !inner.all_offline && !inner.offline.contains(*id))
        .map(|id| json!({"InstanceId": id, "PingStatus": "Online", "PlatformType": "Linux"}))
        .collect();
    ok(json!({"InstanceInformationList": list}))
}
