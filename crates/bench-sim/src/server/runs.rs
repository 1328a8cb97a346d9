//! Runs on a reservation: start, state, logs, artifacts, cancel.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{Health, ResState, RunState, now_ms};

use super::{App, error, not_found, parse};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRun {
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    package_uri: Option<String>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

pub(super) async fn start_run(
    State(app): State<App>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request: NewRun = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if request.command.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`command` must not be empty",
        );
    }
    let mut world = app.world();
    let Some(reservation) = world.reservations.iter().find(|r| r.id == id).cloned() else {
        return not_found("reservation", &id);
    };
    if let Some(key) = &request.idempotency_key
        && let Some(run) = world
            .runs
            .iter()
            .find(|r| r.reservation_id == id && r.idempotency_key.as_ref() == Some(key))
    {
        return Json(run.json()).into_response();
    }
    if reservation.state != ResState::Allocated {
        return error(
            StatusCode::CONFLICT,
            "not_allocated",
            format!("reservation {id} holds no bench"),
        );
    }
    if world
        .runs
        .iter()
        .any(|r| r.reservation_id == id && r.state == RunState::Running)
    {
        return error(
            StatusCode::CONFLICT,
            "bench_busy",
            format!("reservation {id} already has a running run"),
        );
    }
    let now = now_ms();
    let run = match world.plan_run(
        &reservation,
        &request.command,
        &request.env,
        request.package_uri.as_deref(),
        request.timeout_seconds,
        request.idempotency_key,
        now,
    ) {
        Ok(run) => run,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", message),
    };
    let body = run.json();
    if let Some(bench) = &reservation.bench_id {
        world.set_health(bench, Health::Running);
    }
    world.runs.push(run);
    (StatusCode::CREATED, Json(body)).into_response()
}

pub(super) async fn list_runs(State(app): State<App>, Path(id): Path<String>) -> Response {
    let world = app.world();
    if !world.reservations.iter().any(|r| r.id == id) {
        return not_found("reservation", &id);
    }
    let runs: Vec<Value> = world
        .runs
        .iter()
        .filter(|r| r.reservation_id == id)
        .map(|r| r.json())
        .collect();
    Json(json!({"runs": runs})).into_response()
}

pub(super) async fn get_run(State(app): State<App>, Path(id): Path<String>) -> Response {
    let world = app.world();
    match world.runs.iter().find(|r| r.id == id) {
        Some(run) => Json(run.json()).into_response(),
        None => not_found("run", &id),
    }
}

#[derive(Deserialize)]
pub(super) struct LogQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    wait_ms: u64,
}

pub(super) async fn logs(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Response {
    let wait = Duration::from_millis(query.wait_ms.min(30_000));
    let started = tokio::time::Instant::now();
    loop {
        let answer = {
            let mut world = app.world();
            let now = now_ms();
            world.settle(now);
            let Some(run) = world.runs.iter().find(|r| r.id == id) else {
                return not_found("run", &id);
            };
            let text = run.visible_log(now);
            let total = text.len() as u64;
            if query.offset > total {
                return error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "bad_offset",
                    format!("offset {} is past the log's {total} bytes", query.offset),
                );
            }
            let data = &text.as_bytes()[query.offset as usize..];
            let complete = run.state != RunState::Running;
            if !data.is_empty() || complete || started.elapsed() >= wait {
                Some(json!({
                    "run_id": run.id,
                    "offset": query.offset,
                    "next_offset": total,
                    "data": String::from_utf8_lossy(data),
                    "complete": complete,
                    "state": run.state,
                }))
            } else {
                None
            }
        };
        if let Some(body) = answer {
            return Json(body).into_response();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn list_artifacts(State(app): State<App>, Path(id): Path<String>) -> Response {
    let world = app.world();
    let base = app.base.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(run) = world.runs.iter().find(|r| r.id == id) else {
        return not_found("run", &id);
    };
    let done = matches!(
        run.state,
        RunState::Passed | RunState::Failed | RunState::TimedOut
    );
    let list: Vec<Value> = if done {
        run.artifacts
            .iter()
            .map(|(name, bytes)| {
                json!({
                    "name": name,
                    "uri": format!("{base}/v1/runs/{}/artifacts/{name}", run.id),
                    "size": bytes.len(),
                    "sha256": runner_sha256(bytes),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    Json(json!({"artifacts": list})).into_response()
}

fn runner_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub(super) async fn download(
    State(app): State<App>,
    Path((id, name)): Path<(String, String)>,
) -> Response {
    let world = app.world();
    let Some(run) = world.runs.iter().find(|r| r.id == id) else {
        return not_found("run", &id);
    };
    match run.artifacts.iter().find(|(n, _)| *n == name) {
        Some((_, bytes)) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes.clone(),
        )
            .into_response(),
        None => not_found("artifact", &name),
    }
}

pub(super) async fn cancel(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut world = app.world();
    let now = now_ms();
    let Some(run) = world.runs.iter_mut().find(|r| r.id == id) else {
        return not_found("run", &id);
    };
    if run.state == RunState::Running {
        run.state = RunState::Cancelled;
        run.ended_ms = Some(now);
        run.error = Some("cancelled".into());
    }
    let (body, bench) = (run.json(), run.bench_id.clone());
    if world
        .benches
        .iter()
        .any(|b| b.config.id == bench && b.health == Health::Running)
    {
        world.set_health(&bench, Health::Reserved);
    }
    Json(body).into_response()
}
