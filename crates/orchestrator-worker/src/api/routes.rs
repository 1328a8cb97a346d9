//! The JSON API, v1. Handlers are thin: authorize, parse, call the store
//! (or [`crate::submit`] / [`crate::results`]), answer.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use runner_core::{BenchSpec, RunContext, TestPayload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::SharedState;
use super::auth::Scope;
use super::problem::{ApiResult, Problem};
use crate::store::{ExecState, ExecutionRecord, HistoryFilter, RecordedArtifact};
use crate::submit::{SubmitOutcome, submit, submit_batch};
use crate::task::Task;

/// Every route of the JSON API and the probes: (method, path). The
/// OpenAPI document is checked against this list by a test.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/executions"),
    ("GET", "/v1/executions"),
    ("GET", "/v1/executions/{key}"),
    ("GET", "/v1/executions/{key}/events"),
    ("POST", "/v1/executions/{key}/cancel"),
    ("GET", "/v1/executions/{key}/artifacts/{name}"),
    ("GET", "/v1/dlq"),
    ("GET", "/v1/dlq/{id}"),
    ("POST", "/v1/dlq/{id}/replay"),
    ("GET", "/v1/workers"),
    ("GET", "/v1/leaks"),
];

/// The API's routes (state still to be given).
pub fn router() -> axum::Router<SharedState> {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/executions", post(create).get(list))
        .route("/v1/executions/{key}", get(one))
        .route("/v1/executions/{key}/events", get(super::sse::events))
        .route("/v1/executions/{key}/cancel", post(cancel))
        .route("/v1/executions/{key}/artifacts/{*name}", get(artifact))
        .route("/v1/dlq", get(dlq_list))
        .route("/v1/dlq/{id}", get(dlq_show))
        .route("/v1/dlq/{id}/replay", post(dlq_replay))
        .route("/v1/workers", get(workers))
        .route("/v1/leaks", get(leaks))
}

/// 404 for anything else, as a problem document.
pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!("no route {}", uri.path()))
}

async fn healthz(State(state): State<SharedState>, headers: HeaderMap) -> ApiResult<Response> {
    if !state.section.open_health {
        state.authorize(&headers, Scope::Read)?;
    }
    Ok(Json(json!({"status": "ok"})).into_response())
}

async fn readyz(State(state): State<SharedState>, headers: HeaderMap) -> ApiResult<Response> {
    if !state.section.open_health {
        state.authorize(&headers, Scope::Read)?;
    }
    match state.backends.store.ping().await {
        Ok(()) => Ok(
            Json(json!({"status": "ready", "store": state.backends.store.kind()})).into_response(),
        ),
        Err(e) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            format!("the store does not answer: {e}"),
        )),
    }
}

async fn metrics(State(state): State<SharedState>, headers: HeaderMap) -> ApiResult<Response> {
    if !state.section.open_metrics {
        state.authorize(&headers, Scope::Read)?;
    }
    if let Ok(depth) = state.backends.queue.depth().await {
        for (name, n) in [
            ("ready", depth.ready),
            ("delayed", depth.delayed),
            ("leased", depth.leased),
            ("dead", depth.dead),
        ] {
            state
                .metrics
                .queue_depth
                .get_or_create(&crate::metrics::QueueLabels {
                    state: name.to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.encode(),
    )
        .into_response())
}

// ---- submit ------------------------------------------------------------

/// One execution to submit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitEntry {
    /// The runner type (optional when the bench names its `runner`).
    #[serde(default)]
    pub runner: Option<String>,
    /// The bench spec.
    #[serde(default)]
    pub bench: BenchSpec,
    /// The payload.
    pub payload: TestPayload,
    /// The execution key (idempotency key); a fresh one when absent.
    #[serde(default)]
    pub key: Option<String>,
    /// The correlation id.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A batch: all queued, or none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    /// The executions.
    pub executions: Vec<SubmitEntry>,
}

/// What a submit did, per execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The execution key.
    pub key: String,
    /// The task's id in its queue (absent when it existed and settled).
    pub task_id: Option<String>,
    /// The key was submitted before: nothing new was queued.
    pub existing: bool,
}

/// Parse JSON into `T`, with the bad field named.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return Problem::bad_request(format!("the body is not valid JSON: {inner}"));
        }
        let mut field = e.path().to_string();
        let text = inner.to_string();
        // serde names a missing field only in its message (an unknown one
        // is the path's last segment already).
        for prefix in ["unknown field `", "missing field `"] {
            if let Some(rest) = text.strip_prefix(prefix)
                && let Some((name, _)) = rest.split_once('`')
                && field.rsplit('.').next() != Some(name)
            {
                field = if field == "." {
                    name.to_owned()
                } else {
                    format!("{field}.{name}")
                };
            }
        }
        Problem::invalid(field, text)
    })?;
    de.end()
        .map_err(|e| Problem::bad_request(format!("trailing data after the JSON document: {e}")))?;
    Ok(value)
}

/// The body, or the problem with it (too large: 413).
pub fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Problem> {
    body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                status,
                "body-too-large",
                "the request body is over api.max_body_bytes",
            )
        } else {
            Problem::new(status, "bad-body", e.body_text())
        }
    })
}

/// Check `task` as `submit` does: the runner type among the config's
/// runners (any, when the config lists none), then the backend's check.
pub fn check(state: &super::ApiState, task: &Task, prefix: &str) -> Result<(), Problem> {
    let named = |p: Problem| match &p.field {
        Some(f) if !prefix.is_empty() => {
            let f = format!("{prefix}{f}");
            p.with_field(f)
        }
        _ => p,
    };
    // Ids, and no literal secret: a task here is stored.
    crate::validate::queued(task).map_err(|e| named(e.into()))?;
    if state.adapters.is_empty() {
        return crate::validate::payload_common(&task.payload).map_err(|e| named(e.into()));
    }
    let Some(adapter) = state.adapters.get(&task.runner) else {
        let known: Vec<&str> = state.adapters.keys().map(String::as_str).collect();
        return Err(named(Problem::invalid(
            "runner",
            format!(
                "unknown runner type `{}`; this server's runners: {}",
                task.runner,
                known.join(", ")
            ),
        )));
    };
    let ctx = RunContext::new(&task.execution_key, task.correlation())
        .with_execution_key(&task.execution_key);
    crate::validate::task(&**adapter, &ctx, &task.bench, &task.payload)
        .and_then(|_| {
            match state
                .config
                .runners
                .iter()
                .find(|r| r.runner_type == task.runner)
            {
                Some(runner) => crate::validate::allowed(runner, &task.bench, &task.payload, true),
                None => Ok(()),
            }
        })
        .map_err(|e| named(e.into()))
}

fn task_of(
    state: &super::ApiState,
    entry: SubmitEntry,
    by: &str,
    prefix: &str,
) -> Result<Task, Problem> {
    let runner = crate::validate::runner_type(entry.runner.as_deref(), &entry.bench)
        .map_err(|e| Problem::invalid(format!("{prefix}{}", e.field), e.message))?;
    let key = match entry.key {
        Some(k) if k.trim().is_empty() => {
            return Err(Problem::invalid(
                format!("{prefix}key"),
                "must not be empty",
            ));
        }
        Some(k) if k.len() > 200 || k.chars().any(char::is_control) => {
            return Err(Problem::invalid(
                format!("{prefix}key"),
                "at most 200 characters, no control characters",
            ));
        }
        Some(k) => k,
        None => format!("exec-{}-{:08x}", crate::store::now_ms(), fastrand::u32(..)),
    };
    let mut task = Task::new(key, runner, entry.bench, entry.payload);
    task.correlation_id = entry.correlation_id;
    task.labels = entry.labels;
    task.submitted_by = Some(by.to_owned());
    check(state, &task, prefix)?;
    Ok(task)
}

async fn create(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = state.authorize(&headers, Scope::Submit)?;
    let body = body_of(body)?;
    let value: serde_json::Value = parse_json(&body)?;
    let by = caller.submitter();
    if value.get("executions").is_some() {
        let batch: SubmitBatch = parse_json(&body)?;
        if batch.executions.is_empty() {
            return Err(Problem::invalid("executions", "the batch is empty"));
        }
        if batch.executions.len() > state.section.max_batch {
            return Err(Problem::invalid(
                "executions",
                format!("at most {} executions a batch", state.section.max_batch),
            ));
        }
        let mut tasks = Vec::with_capacity(batch.executions.len());
        for (i, entry) in batch.executions.into_iter().enumerate() {
            tasks.push(task_of(&state, entry, &by, &format!("executions[{i}]."))?);
        }
        let keys: Vec<String> = tasks.iter().map(|t| t.execution_key.clone()).collect();
        return match submit_batch(&state.backends, &tasks).await {
            Ok(ids) => {
                let out: Vec<Submitted> = keys
                    .into_iter()
                    .zip(ids)
                    .map(|(key, id)| Submitted {
                        key,
                        task_id: Some(id),
                        existing: false,
                    })
                    .collect();
                tracing::info!(token = %caller.id, n = out.len(), "batch submitted");
                Ok((
                    StatusCode::CREATED,
                    Json(json!({"version": 1, "executions": out})),
                )
                    .into_response())
            }
            // The same batch again (a retry after a lost answer): nothing new.
            Err(crate::store::StoreError::Exists { keys: existing })
                if existing.len() == keys.len() =>
            {
                let out: Vec<Submitted> = keys
                    .into_iter()
                    .map(|key| Submitted {
                        key,
                        task_id: None,
                        existing: true,
                    })
                    .collect();
                Ok(Json(json!({"version": 1, "executions": out})).into_response())
            }
            Err(e) => Err(e.into()),
        };
    }
    let entry: SubmitEntry = parse_json(&body)?;
    let task = task_of(&state, entry, &by, "")?;
    let outcome = submit(&state.backends, &task).await?;
    tracing::info!(token = %caller.id, key = %task.execution_key, "submitted");
    let (status, submitted) = match outcome {
        SubmitOutcome::Queued { task_id } => (
            StatusCode::CREATED,
            Submitted {
                key: task.execution_key,
                task_id: Some(task_id),
                existing: false,
            },
        ),
        SubmitOutcome::Existing { task_id } => (
            StatusCode::OK,
            Submitted {
                key: task.execution_key,
                task_id,
                existing: true,
            },
        ),
    };
    Ok((
        status,
        Json(json!({"version": 1, "executions": [submitted]})),
    )
        .into_response())
}

// ---- history -----------------------------------------------------------

/// A page cursor: the creation time of the last record seen and how many
/// records of that very millisecond were seen (the store orders by time,
/// then key, so they are the first ones at that time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The creation time (ms).
    pub ms: u64,
    /// Records at `ms` already returned.
    pub n: usize,
}

impl Cursor {
    /// `MS-N`.
    pub fn encode(self) -> String {
        format!("{}-{}", self.ms, self.n)
    }

    /// Parse `MS-N`.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, n) = text.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            n: n.parse().ok()?,
        })
    }
}

/// A page of records matching `filter` (and `keep`), after `cursor`.
pub async fn page(
    store: &dyn crate::store::Store,
    filter: &HistoryFilter,
    mut cursor: Option<Cursor>,
    limit: usize,
    keep: impl Fn(&ExecutionRecord) -> bool,
    filtered: bool,
) -> Result<(Vec<ExecutionRecord>, Option<Cursor>), crate::store::StoreError> {
    let mut out = Vec::new();
    for _round in 0..20 {
        let (before, skip) = match cursor {
            Some(c) => (Some(c.ms.saturating_add(1)), c.n),
            None => (None, 0),
        };
        let want = limit - out.len();
        let fetch = if filtered { want.max(200) } else { want } + skip;
        let got = store
            .executions(&HistoryFilter {
                before_ms: before,
                limit: fetch,
                ..filter.clone()
            })
            .await?;
        let exhausted = got.len() < fetch;
        for record in got.into_iter().skip(skip) {
            cursor = Some(match cursor {
                Some(c) if c.ms == record.created_ms => Cursor {
                    ms: c.ms,
                    n: c.n + 1,
                },
                _ => Cursor {
                    ms: record.created_ms,
                    n: 1,
                },
            });
            if keep(&record) {
                out.push(record);
                if out.len() == limit {
                    return Ok((out, if exhausted { None } else { cursor }));
                }
            }
        }
        if exhausted {
            return Ok((out, None));
        }
    }
    Ok((out, cursor))
}

/// The query of `GET /v1/executions`, checked (errors name the parameter).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// The store's filter.
    pub filter: HistoryFilter,
    /// Only this bench (filtered here; the store has no bench index).
    pub bench: Option<String>,
    /// Where to go on.
    pub cursor: Option<Cursor>,
    /// The page size.
    pub limit: usize,
}

/// Parse the query of `GET /v1/executions`.
pub fn list_query(q: &HashMap<String, String>, max: usize) -> Result<ListQuery, Problem> {
    let mut out = ListQuery {
        limit: 50.min(max),
        ..ListQuery::default()
    };
    let bad = |name: &str, msg: String| Problem::invalid(name, msg).with_field(name);
    for (name, value) in q {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match name.as_str() {
            "correlation_id" => out.filter.correlation_id = Some(value.to_owned()),
            "runner" => out.filter.runner = Some(value.to_owned()),
            "bench" => out.bench = Some(value.to_owned()),
            "state" => {
                out.filter.state = Some(ExecState::parse(value).ok_or_else(|| {
                    let known: Vec<&str> = ExecState::ALL.iter().map(|s| s.as_str()).collect();
                    bad(
                        "state",
                        format!("unknown state `{value}`; known: {}", known.join(", ")),
                    )
                })?)
            }
            "since_ms" => {
                out.filter.since_ms =
                    Some(value.parse().map_err(|_| {
                        bad("since_ms", "must be milliseconds since the epoch".into())
                    })?)
            }
            "limit" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad("limit", "must be a number".into()))?;
                if n == 0 || n > max {
                    return Err(bad("limit", format!("must be 1..={max}")));
                }
                out.limit = n;
            }
            "cursor" => {
                out.cursor = Some(
                    Cursor::parse(value)
                        .ok_or_else(|| bad("cursor", "not a cursor this server gave".into()))?,
                )
            }
            other => {
                return Err(bad(
                    other,
                    format!(
                        "unknown parameter `{other}` (correlation_id, runner, bench, state, since_ms, limit, cursor)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let query = list_query(&q, state.section.max_page_size)?;
    let bench = query.bench.clone();
    let (records, next) = page(
        &*state.backends.store,
        &query.filter,
        query.cursor,
        query.limit,
        |r| bench.as_ref().is_none_or(|b| &r.new.bench == b),
        bench.is_some(),
    )
    .await?;
    Ok(Json(json!({
        "version": 1,
        "executions": records,
        "next_cursor": next.map(Cursor::encode),
    }))
    .into_response())
}

/// The record of `key`, or 404.
pub async fn record_of(state: &super::ApiState, key: &str) -> Result<ExecutionRecord, Problem> {
    state
        .backends
        .store
        .execution(key)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no execution with key `{key}`")))
}

async fn one(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let record = record_of(&state, &key).await?;
    Ok(Json(json!({"version": 1, "execution": record})).into_response())
}

// ---- cancel ------------------------------------------------------------

async fn cancel(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> ApiResult<Response> {
    let caller = state.authorize(&headers, Scope::Submit)?;
    let record = record_of(&state, &key).await?;
    if !caller.admin && record.new.submitted_by != caller.submitter() {
        return Err(Problem::forbidden(format!(
            "execution `{key}` was submitted by `{}`; cancelling another's needs the `admin` scope",
            record.new.submitted_by
        )));
    }
    let outcome = crate::results::cancel(&state.backends, &key, &caller.submitter()).await?;
    tracing::info!(token = %caller.id, %key, ?outcome, "cancel");
    Ok(Json(json!({"version": 1, "key": key, "outcome": outcome})).into_response())
}

// ---- artifacts ---------------------------------------------------------

/// Stream `artifact`: its bytes with its recorded sha256 as `x-sha256`.
pub async fn artifact_response(artifact: &RecordedArtifact) -> Result<Response, Problem> {
    let (path, cleanup) = if let Some(path) = artifact.uri.strip_prefix("file://") {
        (std::path::PathBuf::from(path), None)
    } else if artifact.uri.starts_with("s3://") {
        // Through a temporary file, checked against its sha256 on the way.
        let dir = std::env::temp_dir().join(format!(
            "orchestrator-api-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let path = crate::results::fetch_artifact(artifact, &dir)
            .await
            .map_err(|e| Problem::new(StatusCode::BAD_GATEWAY, "artifact-unavailable", e))?;
        (path, Some(dir))
    } else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "not-downloadable",
            format!(
                "artifact `{}` is at {}, which this server cannot read",
                artifact.name, artifact.uri
            ),
        ));
    };
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        Problem::new(
            StatusCode::GONE,
            "artifact-gone",
            format!("artifact `{}` cannot be read: {e}", artifact.name),
        )
    })?;
    if let Some(dir) = cleanup {
        // Unlinked now; the open file stays readable until it is closed.
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    let stream = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    let kind = if artifact.kind == "log" {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(artifact.size));
    if let Ok(v) = HeaderValue::from_str(&artifact.sha256) {
        h.insert("x-sha256", v);
    }
    let file_name: String = artifact
        .name
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

async fn artifact(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path((key, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let record = record_of(&state, &key).await?;
    let artifact = record
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| {
            Problem::not_found(format!("execution `{key}` has no artifact `{name}`"))
                .with_field("name")
        })?;
    artifact_response(artifact).await
}

// ---- DLQ, workers, leaks -------------------------------------------------

/// A dead letter as the API shows it: secret env values of its task masked.
pub fn masked(mut letter: crate::queue::DeadLetter) -> crate::queue::DeadLetter {
    if let Ok(mut task) = Task::parse(&letter.body) {
        for value in task.payload.env.values_mut() {
            if value.is_secret() {
                *value = runner_core::EnvVar::Detailed {
                    value: "***".into(),
                    secret: true,
                };
            }
        }
        letter.body = task.to_json();
    }
    letter
}

async fn dlq_list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let max = state.section.max_page_size;
    let limit = match q.get("limit") {
        None => 50.min(max),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => return Err(Problem::invalid("limit", format!("must be 1..={max}"))),
        },
    };
    let letters: Vec<_> = state
        .backends
        .queue
        .dlq_list(limit)
        .await?
        .into_iter()
        .map(masked)
        .collect();
    Ok(Json(json!({"version": 1, "dead_letters": letters})).into_response())
}

async fn dlq_show(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let letter = state.backends.queue.dlq_show(&id).await?;
    Ok(Json(json!({"version": 1, "dead_letter": masked(letter)})).into_response())
}

/// Replay dead letter `id` (the record of its execution reopened); returns
/// the new task id and the execution key.
pub async fn replay(
    state: &super::ApiState,
    id: &str,
) -> Result<(String, Option<String>), Problem> {
    let queue = &state.backends.queue;
    let letter = queue.dlq_show(id).await?;
    let task_id = queue.dlq_replay(id).await?;
    let key = Task::parse(&letter.body).ok().map(|t| t.execution_key);
    if !queue.keeps_records()
        && let Some(key) = &key
    {
        state
            .backends
            .store
            .record(&[crate::store::RecordUpdate::Reopened {
                key: key.clone(),
                message: format!("replayed from the dead-letter queue ({id})"),
            }])
            .await?;
    }
    Ok((task_id, key))
}

async fn dlq_replay(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let caller = state.authorize(&headers, Scope::Admin)?;
    let (task_id, key) = replay(&state, &id).await?;
    tracing::info!(token = %caller.id, %id, %task_id, "dead letter replayed");
    Ok(Json(json!({"version": 1, "id": id, "task_id": task_id, "key": key})).into_response())
}

async fn workers(State(state): State<SharedState>, headers: HeaderMap) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let workers = state
        .backends
        .store
        .workers(state.config.worker.stale_after())
        .await?;
    Ok(Json(json!({"version": 1, "workers": workers})).into_response())
}

/// A dry-run reap with the config's runners (journal orphans of other
/// runner types are reported as errors: no config to judge them with).
pub async fn dry_reap(state: &super::ApiState) -> crate::reaper::ReapReport {
    let options =
        crate::reaper::ReapOptions::from_worker(&state.config.worker, "api-dry-run", true);
    crate::reaper::reap(
        &*state.backends.store,
        &state.adapters,
        &crate::Metrics::new(),
        options,
    )
    .await
}

async fn leaks(State(state): State<SharedState>, headers: HeaderMap) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let report = dry_reap(&state).await;
    let runners: Vec<&String> = state.adapters.keys().collect();
    Ok(Json(json!({"version": 1, "runners": runners, "report": report})).into_response())
}
