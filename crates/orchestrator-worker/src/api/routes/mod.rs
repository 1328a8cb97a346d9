//! The JSON API, v1. Handlers are thin: authorize, parse, call the store
//! (or [`crate::submit`] / [`crate::results`]), answer.

mod admin;
mod executions;
mod submit;

pub use admin::{dry_reap, masked, replay};
pub use executions::{Cursor, ListQuery, artifact_response, list_query, page, record_of};
pub use submit::{SubmitBatch, SubmitEntry, Submitted, body_of, check, parse_json};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::SharedState;
use super::auth::Scope;
use super::problem::{ApiResult, Problem};

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
        .route("/v1/executions", post(submit::create).get(executions::list))
        .route("/v1/executions/{key}", get(executions::one))
        .route("/v1/executions/{key}/events", get(executions::events))
        .route("/v1/executions/{key}/cancel", post(executions::cancel))
        .route(
            "/v1/executions/{key}/artifacts/{*name}",
            get(executions::artifact),
        )
        .route("/v1/dlq", get(admin::dlq_list))
        .route("/v1/dlq/{id}", get(admin::dlq_show))
        .route("/v1/dlq/{id}/replay", post(admin::dlq_replay))
        .route("/v1/workers", get(admin::workers))
        .route("/v1/leaks", get(admin::leaks))
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
