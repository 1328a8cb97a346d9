//! Benches and reservations: list, reserve, heartbeat, release.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{ResState, Reservation, now_ms};

use super::{App, error, not_found, parse};

pub(super) async fn list_benches(State(app): State<App>) -> Response {
    let world = app.world();
    let benches: Vec<Value> = world
        .benches
        .iter()
        .map(|b| json!({"id": b.config.id, "type": b.config.bench_type, "labels": b.config.labels, "health": b.health}))
        .collect();
    Json(json!({"benches": benches})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewReservation {
    bench_type: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    idempotency_key: String,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    lease_seconds: Option<u64>,
}

pub(super) async fn create_reservation(State(app): State<App>, body: Bytes) -> Response {
    let request: NewReservation = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if request.bench_type.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`bench_type` must not be empty",
        );
    }
    if request.idempotency_key.is_empty() || request.idempotency_key.len() > 200 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`idempotency_key` must be 1 to 200 characters",
        );
    }
    let mut world = app.world();
    if !world
        .benches
        .iter()
        .any(|b| b.config.bench_type == request.bench_type)
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_bench_type",
            format!("no bench of type {:?}", request.bench_type),
        );
    }
    if let Some(existing) = world
        .reservations
        .iter()
        .find(|r| r.idempotency_key == request.idempotency_key && r.state.is_live())
    {
        return (StatusCode::OK, Json(world.reservation_json(existing))).into_response();
    }
    let now = now_ms();
    let lease = request
        .lease_seconds
        .unwrap_or(world.config.default_lease_seconds)
        .clamp(1, 3600);
    let reservation = Reservation {
        id: world.next_id("res"),
        bench_type: request.bench_type,
        labels: request.labels,
        idempotency_key: request.idempotency_key,
        owner: request.owner.unwrap_or_default(),
        state: ResState::Queued,
        bench_id: None,
        lease_seconds: lease,
        lease_expires_ms: now + lease * 1000,
        created_ms: now,
        ended_reason: None,
    };
    world.reservations.push(reservation);
    world.settle(now);
    let Some(created) = world.reservations.last() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "lost the reservation",
        );
    };
    (StatusCode::CREATED, Json(world.reservation_json(created))).into_response()
}

#[derive(Deserialize)]
pub(super) struct OwnerQuery {
    owner: Option<String>,
}

pub(super) async fn list_reservations(
    State(app): State<App>,
    Query(query): Query<OwnerQuery>,
) -> Response {
    let world = app.world();
    let list: Vec<Value> = world
        .reservations
        .iter()
        .filter(|r| query.owner.as_ref().is_none_or(|o| &r.owner == o))
        .map(|r| world.reservation_json(r))
        .collect();
    Json(json!({"reservations": list})).into_response()
}

pub(super) async fn get_reservation(State(app): State<App>, Path(id): Path<String>) -> Response {
    let world = app.world();
    match world.reservations.iter().find(|r| r.id == id) {
        Some(r) => Json(world.reservation_json(r)).into_response(),
        None => not_found("reservation", &id),
    }
}

pub(super) async fn heartbeat(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut world = app.world();
    let now = now_ms();
    let Some(r) = world.reservations.iter_mut().find(|r| r.id == id) else {
        return not_found("reservation", &id);
    };
    if !r.state.is_live() {
        let state = serde_json::to_value(r.state).unwrap_or_default();
        return error(
            StatusCode::CONFLICT,
            "reservation_ended",
            format!("reservation {id} is {}", state.as_str().unwrap_or("ended")),
        );
    }
    r.lease_expires_ms = now + r.lease_seconds * 1000;
    let r = r.clone();
    Json(world.reservation_json(&r)).into_response()
}

pub(super) async fn release(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut world = app.world();
    let Some(index) = world.reservations.iter().position(|r| r.id == id) else {
        return not_found("reservation", &id);
    };
    world.end_reservation(index, ResState::Released, "released", now_ms());
    StatusCode::NO_CONTENT.into_response()
}
