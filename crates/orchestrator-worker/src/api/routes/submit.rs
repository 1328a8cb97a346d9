//! `POST /v1/executions`: one execution or a batch, parsed, checked as
//! `submit` checks, and queued.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use runner_core::{BenchSpec, RunContext, TestPayload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::SharedState;
use crate::api::auth::Scope;
use crate::api::problem::{ApiResult, Problem};
use crate::submit::{SubmitOutcome, submit, submit_batch};
use crate::task::Task;

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
pub fn check(state: &crate::api::ApiState, task: &Task, prefix: &str) -> Result<(), Problem> {
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
    state: &crate::api::ApiState,
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

pub(super) async fn create(
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
