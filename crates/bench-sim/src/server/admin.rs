//! The `/sim` admin endpoints: bench health and fault injection.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::model::{Faults, Health};

use super::{App, not_found, parse};

#[derive(Deserialize)]
pub(super) struct HealthBody {
    health: Health,
}

pub(super) async fn admin_health(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(body): Json<HealthBody>,
) -> Response {
    if app.world().set_health(&id, body.health) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found("bench", &id)
    }
}

pub(super) async fn admin_faults(State(app): State<App>, body: Bytes) -> Response {
    let faults: Faults = match parse(&body) {
        Ok(f) => f,
        Err(e) => return e,
    };
    app.world().faults = faults;
    StatusCode::NO_CONTENT.into_response()
}
