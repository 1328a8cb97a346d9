//! The operator's routes: dead letters and replay, workers, leaks.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::SharedState;
use crate::api::auth::Scope;
use crate::api::problem::{ApiResult, Problem};
use crate::task::Task;

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

pub(super) async fn dlq_list(
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

pub(super) async fn dlq_show(
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
    state: &crate::api::ApiState,
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

pub(super) async fn dlq_replay(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let caller = state.authorize(&headers, Scope::Admin)?;
    let (task_id, key) = replay(&state, &id).await?;
    tracing::info!(token = %caller.id, %id, %task_id, "dead letter replayed");
    Ok(Json(json!({"version": 1, "id": id, "task_id": task_id, "key": key})).into_response())
}

pub(super) async fn workers(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> ApiResult<Response> {
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
pub async fn dry_reap(state: &crate::api::ApiState) -> crate::reaper::ReapReport {
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

pub(super) async fn leaks(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    state.authorize(&headers, Scope::Read)?;
    let report = dry_reap(&state).await;
    let runners: Vec<&String> = state.adapters.keys().collect();
    Ok(Json(json!({"version": 1, "runners": runners, "report": report})).into_response())
}
