//! The CLI through the HTTP API: `--server URL` (or `ORCHESTRATOR_SERVER`)
//! with `ORCHESTRATOR_TOKEN` instead of a worker config, for machines
//! with no access to the store (a CI runner). Problem documents become the
//! same exit codes as the store's errors: 4 for bad input (the field
//! named), 2 for an unreachable server or store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_core::CancellationToken;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{CliError, CliResult};
use crate::percent::{encode_component, encode_path};
use crate::store::{ExecState, ExecutionRecord, RecordedArtifact};
use crate::task::Task;

/// The variable holding the API token.
pub const TOKEN_VAR: &str = "ORCHESTRATOR_TOKEN";

/// A client of one API server.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Remote {
    /// A client of `server` with the token of `ORCHESTRATOR_TOKEN`.
    pub(crate) fn new(server: &str) -> Result<Self, CliError> {
        let base = server.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::usage(format!(
                "--server {server:?}: give the API's URL (https://HOST[:PORT])"
            )));
        }
        let token = std::env::var(TOKEN_VAR)
            .ok()
            .filter(|t| !t.trim().is_empty());
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("orchestrator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::infra(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self { base, token, http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, CliError> {
        let response = req
            .send()
            .await
            .map_err(|e| CliError::infra(format!("{what}: cannot reach {}: {e}", self.base)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        let problem: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let detail = problem["detail"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
        let message = match problem["field"].as_str() {
            Some(field) => format!("{what}: invalid field `{field}`: {detail}"),
            None => format!("{what}: {status}: {detail}"),
        };
        let message = if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
            format!("{message} (set {TOKEN_VAR})")
        } else {
            message
        };
        Err(
            if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
                CliError::usage(message)
            } else {
                CliError::infra(message)
            },
        )
    }

    async fn json(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value, CliError> {
        let response = self
            .send(req.timeout(Duration::from_secs(60)), what)
            .await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CliError::infra(format!("{what}: answer cut: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::infra(format!("{what}: the answer is not JSON: {e}")))
    }

    pub(crate) async fn get(&self, path: &str, what: &str) -> Result<Value, CliError> {
        self.json(self.request(reqwest::Method::GET, path), what)
            .await
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        body: &Value,
        what: &str,
    ) -> Result<Value, CliError> {
        let body = serde_json::to_vec(body).map_err(|e| CliError::infra(e.to_string()))?;
        let req = self
            .request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.json(req, what).await
    }

    /// One execution's record.
    pub(crate) async fn record(&self, key: &str) -> Result<ExecutionRecord, CliError> {
        let doc = self
            .get(
                &format!("/v1/executions/{}", encode_component(key)),
                "status",
            )
            .await?;
        serde_json::from_value(doc["execution"].clone())
            .map_err(|e| CliError::infra(format!("status: unexpected answer: {e}")))
    }

    /// A page of history; the query as `(name, value)` pairs.
    pub(crate) async fn history(
        &self,
        query: &[(&str, String)],
    ) -> Result<(Vec<ExecutionRecord>, Option<String>), CliError> {
        let q: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_component(v)))
            .collect();
        let doc = self
            .get(&format!("/v1/executions?{}", q.join("&")), "history")
            .await?;
        let records = serde_json::from_value(doc["executions"].clone())
            .map_err(|e| CliError::infra(format!("history: unexpected answer: {e}")))?;
        Ok((records, doc["next_cursor"].as_str().map(str::to_owned)))
    }

    /// Download an artifact of `key` to `dir`, checking the sha256 the
    /// server sends and the one recorded.
    pub(crate) async fn download(
        &self,
        key: &str,
        artifact: &RecordedArtifact,
        dir: &Path,
    ) -> Result<PathBuf, CliError> {
        let target = runner_core::safe_path::safe_join(dir, &artifact.name)
            .map_err(|e| CliError::infra(format!("artifact name {:?}: {e}", artifact.name)))?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| CliError::infra(format!("cannot create {}: {e}", parent.display())))?;
        }
        let bytes = self.artifact_bytes(key, artifact, Some(&target)).await?;
        let _ = bytes;
        Ok(target)
    }

    /// An artifact's bytes (kept in memory unless `to` is given).
    pub(crate) async fn artifact_bytes(
        &self,
        key: &str,
        artifact: &RecordedArtifact,
        to: Option<&Path>,
    ) -> Result<Vec<u8>, CliError> {
        use tokio::io::AsyncWriteExt;
        let what = format!("artifact {}", artifact.name);
        let path = format!(
            "/v1/executions/{}/artifacts/{}",
            encode_component(key),
            encode_path(&artifact.name)
        );
        let mut response = self
            .send(self.request(reqwest::Method::GET, &path), &what)
            .await?;
        let sent = response
            .headers()
            .get("x-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut file = match to {
            Some(p) => Some(
                tokio::fs::File::create(p)
                    .await
                    .map_err(|e| CliError::infra(format!("cannot write {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CliError::infra(format!("{what}: download cut: {e}")))?
        {
            hasher.update(&chunk);
            match &mut file {
                Some(f) => f
                    .write_all(&chunk)
                    .await
                    .map_err(|e| CliError::infra(format!("{what}: cannot write: {e}")))?,
                None => kept.extend_from_slice(&chunk),
            }
        }
        if let Some(f) = &mut file {
            f.flush()
                .await
                .map_err(|e| CliError::infra(format!("{what}: cannot write: {e}")))?;
        }
        let digest = hex::encode(hasher.finalize());
        for expected in sent.iter().chain(std::iter::once(&artifact.sha256)) {
            if &digest != expected {
                if let Some(p) = to {
                    let _ = tokio::fs::remove_file(p).await;
                }
                return Err(CliError::infra(format!(
                    "{what}: sha256 {digest} does not match the recorded {expected}"
                )));
            }
        }
        Ok(kept)
    }

    /// Cancel `key`; the server's word for what happened.
    pub(crate) async fn cancel(&self, key: &str) -> Result<String, CliError> {
        let doc = self
            .post(
                &format!("/v1/executions/{}/cancel", encode_component(key)),
                &json!({}),
                "cancel",
            )
            .await?;
        Ok(doc["outcome"].as_str().unwrap_or("requested").to_owned())
    }

    /// Submit `tasks` (one, or a batch); `(task id, key, existing)` each.
    pub(crate) async fn submit(
        &self,
        tasks: &[Task],
        batch: bool,
    ) -> Result<Vec<(Option<String>, String, bool)>, CliError> {
        let entry = |t: &Task| {
            json!({
                "runner": t.runner,
                "bench": t.bench,
                "payload": t.payload,
                "key": t.execution_key,
                "correlation_id": t.correlation_id,
                "labels": t.labels,
            })
        };
        let body = if batch {
            json!({"executions": tasks.iter().map(entry).collect::<Vec<_>>()})
        } else {
            tasks.first().map(entry).unwrap_or(Value::Null)
        };
        let doc = self.post("/v1/executions", &body, "submit").await?;
        let out = doc["executions"]
            .as_array()
            .ok_or_else(|| CliError::infra("submit: unexpected answer"))?
            .iter()
            .map(|e| {
                (
                    e["task_id"].as_str().map(str::to_owned),
                    e["key"].as_str().unwrap_or_default().to_owned(),
                    e["existing"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        Ok(out)
    }

    /// Poll `keys` until all settled (or `limit`, or `stop`).
    pub(crate) async fn wait(
        &self,
        keys: &[String],
        limit: Option<Duration>,
        stop: &CancellationToken,
    ) -> Result<Vec<ExecutionRecord>, CliError> {
        let started = std::time::Instant::now();
        let mut records: BTreeMap<String, ExecutionRecord> = BTreeMap::new();
        let mut failures = 0u32;
        loop {
            for key in keys {
                if records.get(key).is_some_and(|r| r.state.is_settled()) {
                    continue;
                }
                match self.record(key).await {
                    Ok(record) => {
                        failures = 0;
                        let before = records.get(key).map(|r| r.state);
                        if before != Some(record.state) {
                            if keys.len() == 1 {
                                eprintln!("» {}", record.state);
                            } else if record.state.is_settled() {
                                eprintln!("» {:<40} {}", record.new.key, record.state);
                            }
                        }
                        records.insert(key.clone(), record);
                    }
                    // A server or store briefly away does not end the wait.
                    Err(e) if e.code == super::EXIT_INFRA && failures < 30 => failures += 1,
                    Err(e) => return Err(e),
                }
            }
            let all = keys
                .iter()
                .all(|k| records.get(k).is_some_and(|r| r.state.is_settled()));
            if all || limit.is_some_and(|l| started.elapsed() >= l) || stop.is_cancelled() {
                return Ok(keys.iter().filter_map(|k| records.remove(k)).collect());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}

/// `submit --server`: queue through the API, then (with `--wait`) follow.
pub(crate) async fn submit(
    server: &str,
    tasks: &[Task],
    batch: bool,
    wait: Option<WaitOptions<'_>>,
) -> CliResult {
    let remote = Remote::new(server)?;
    let out = remote.submit(tasks, batch).await?;
    if batch {
        eprintln!("» queued {} executions in one transaction", out.len());
    }
    for (task_id, key, existing) in &out {
        if *existing {
            eprintln!("» execution key `{key}` was submitted before; nothing new was queued");
        }
        println!("{}\t{key}", task_id.as_deref().unwrap_or("-"));
    }
    let Some(options) = wait else {
        return Ok(0);
    };
    let keys: Vec<String> = out.into_iter().map(|(_, k, _)| k).collect();
    follow(&remote, &keys, options).await
}

/// What `--wait` was given.
pub(crate) struct WaitOptions<'a> {
    pub(crate) timeout: Option<Duration>,
    pub(crate) junit: Option<&'a Path>,
    pub(crate) detach_on_interrupt: bool,
}

async fn follow(remote: &Remote, keys: &[String], options: WaitOptions<'_>) -> CliResult {
    let interrupted = CancellationToken::new();
    let signals = {
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            interrupted.cancel();
        })
    };
    let records = remote.wait(keys, options.timeout, &interrupted).await?;
    signals.abort();
    if interrupted.is_cancelled() {
        let open: Vec<&ExecutionRecord> =
            records.iter().filter(|r| !r.state.is_settled()).collect();
        if options.detach_on_interrupt {
            eprintln!("» interrupted: {} execution(s) left running", open.len());
        } else {
            let mut n = 0;
            for record in &open {
                match remote.cancel(&record.new.key).await {
                    Ok(outcome) if outcome != "already_settled" => n += 1,
                    Ok(_) => {}
                    Err(e) => eprintln!("» cannot cancel {}: {}", record.new.key, e.message),
                }
            }
            eprintln!("» interrupted: cancelled {n} execution(s) this command submitted");
        }
        return Ok(super::EXIT_CANCELLED);
    }
    super::summary::summary(&records);
    if let Some(path) = options.junit {
        std::fs::write(path, crate::junit::render(&records))
            .map_err(|e| CliError::infra(format!("cannot write {}: {e}", path.display())))?;
        eprintln!("» JUnit report: {}", path.display());
    }
    if records.len() < keys.len() || records.iter().any(|r| !r.state.is_settled()) {
        eprintln!("» not settled within the --timeout; they keep running");
        return Ok(super::EXIT_INFRA);
    }
    Ok(crate::results::exit_code(&records))
}

/// `cancel --server`: one key, or every unsettled execution of a
/// correlation id.
pub(crate) async fn cancel(
    server: &str,
    key: Option<&str>,
    correlation_id: Option<&str>,
) -> Result<Vec<(String, String)>, CliError> {
    let remote = Remote::new(server)?;
    let keys = match (key, correlation_id) {
        (Some(k), _) => vec![k.to_owned()],
        (None, Some(c)) => {
            let mut keys = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..1000 {
                let mut q = vec![("correlation_id", c.to_owned()), ("limit", "500".into())];
                if let Some(cur) = &cursor {
                    q.push(("cursor", cur.clone()));
                }
                let (page, next) = remote.history(&q).await?;
                keys.extend(
                    page.iter()
                        .filter(|r| !r.state.is_settled())
                        .map(|r| r.new.key.clone()),
                );
                match next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            keys
        }
        (None, None) => return Err(CliError::usage("give an execution key or --correlation-id")),
    };
    let mut out = Vec::new();
    for key in keys {
        let outcome = remote.cancel(&key).await?;
        out.push((key, outcome));
    }
    Ok(out)
}

/// What `ExecState` a history `--state` names (for the query).
pub(crate) fn state_name(state: Option<ExecState>) -> Option<String> {
    state.map(|s| s.as_str().to_owned())
}
