//! In front of every API route: fault injection, the bearer token,
//! malformed answers.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

use crate::model::{Malformed, now_ms};

use super::{App, error};

/// Faults first (a load balancer's 503 or 429 comes before auth), then
/// the bearer token, then the handler; malformed answers last.
pub(super) async fn gate(State(app): State<App>, request: Request, next: Next) -> Response {
    let route = format!("{} {}", request.method(), route_of(request.uri().path()));
    let malformed = {
        let mut world = app.world();
        *world.requests.entry(route).or_default() += 1;
        if world.faults.fail_next > 0 {
            world.faults.fail_next -= 1;
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the bench platform is briefly unavailable",
            );
        }
        if world.faults.rate_limit_next > 0 {
            world.faults.rate_limit_next -= 1;
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
            if let Ok(v) = HeaderValue::from_str(&world.faults.retry_after_seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return response;
        }
        if !world.config.tokens.is_empty() {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !presented.is_some_and(|t| world.config.tokens.iter().any(|ok| ok == t)) {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or invalid bearer token",
                );
            }
        }
        world.settle(now_ms());
        if world.faults.malformed_next > 0 {
            world.faults.malformed_next -= 1;
            world.faults.malformed
        } else {
            None
        }
    };
    let response = next.run(request).await;
    match malformed {
        None => response,
        Some(kind) => corrupt(response, kind).await,
    }
}

async fn corrupt(response: Response, kind: Malformed) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let bytes = match kind {
        Malformed::BadJson => Bytes::copy_from_slice(&bytes[..bytes.len() / 2]),
        Malformed::MissingFields => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(mut map)) => {
                map.remove("state");
                map.remove("id");
                Bytes::from(Value::Object(map).to_string())
            }
            _ => bytes,
        },
    };
    let mut response = Response::from_parts(parts, Body::from(bytes));
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}

/// `/v1/runs/run-000001/logs` → `/v1/runs/{id}/logs`.
fn route_of(path: &str) -> String {
    path.split('/')
        .map(|part| {
            if part.starts_with("res-") || part.starts_with("run-") {
                "{id}"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}
