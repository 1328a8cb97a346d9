//! The HTTP side: routes of docs/adapters/onprem-api.yaml, bearer auth,
//! fault injection, and the `/sim` admin endpoints.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

mod admin;
mod gate;
mod reservations;
mod runs;

use admin::{admin_faults, admin_health};
use gate::gate;
use reservations::{
    create_reservation, get_reservation, heartbeat, list_benches, list_reservations, release,
};
use runs::{cancel, download, get_run, list_artifacts, list_runs, logs, start_run};

use crate::model::{Health, Malformed, SimConfig, World, now_ms};

#[derive(Clone)]
struct App {
    world: Arc<Mutex<World>>,
    base: Arc<Mutex<String>>,
}

impl App {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

fn not_found(what: &str, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no {what} {id}"),
    )
}

/// Parse a request body; the error is the 400 answer, naming the field.
#[allow(clippy::result_large_err)] // a Response is the natural error of a handler
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("`{path}`: {}", e.into_inner()),
        )
    })
}

/// A handle on a running simulator: its address, and fault injection.
#[derive(Clone)]
pub struct SimHandle {
    addr: SocketAddr,
    app: App,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Set a bench's health (offline mid-run loses the run; idle frees it).
    pub fn set_health(&self, bench: &str, health: Health) -> bool {
        self.app.world().set_health(bench, health)
    }

    /// A bench's health now.
    pub fn health(&self, bench: &str) -> Option<Health> {
        let mut world = self.app.world();
        world.settle(now_ms());
        world
            .benches
            .iter()
            .find(|b| b.config.id == bench)
            .map(|b| b.health)
    }

    /// The next `n` requests answer 503.
    pub fn fail_next(&self, n: u32) {
        self.app.world().faults.fail_next = n;
    }

    /// The next `n` requests answer 429 with `Retry-After: seconds`.
    pub fn rate_limit_next(&self, n: u32, retry_after_seconds: u64) {
        let mut world = self.app.world();
        world.faults.rate_limit_next = n;
        world.faults.retry_after_seconds = retry_after_seconds;
    }

    /// The next `n` JSON answers are malformed this way.
    pub fn malformed_next(&self, n: u32, kind: Malformed) {
        let mut world = self.app.world();
        world.faults.malformed_next = n;
        world.faults.malformed = Some(kind);
    }

    /// Reservations wait this long before they can be allocated.
    pub fn set_allocation_delay(&self, ms: u64) {
        self.app.world().config.allocation_delay_ms = ms;
    }

    /// State of a reservation (`queued`, `allocated`, `expired`, ...).
    pub fn reservation_state(&self, id: &str) -> Option<String> {
        let mut world = self.app.world();
        world.settle(now_ms());
        world.reservations.iter().find(|r| r.id == id).map(|r| {
            serde_json::to_value(r.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        })
    }

    /// Requests seen per route pattern, e.g. `POST /v1/reservations`.
    pub fn requests(&self, route: &str) -> u64 {
        self.app.world().requests.get(route).copied().unwrap_or(0)
    }

    /// Live (queued or allocated) reservations.
    pub fn live_reservations(&self) -> usize {
        let mut world = self.app.world();
        world.settle(now_ms());
        world
            .reservations
            .iter()
            .filter(|r| r.state.is_live())
            .count()
    }
}

/// The router for a world (for embedding; [`serve`] binds it).
pub fn router(config: SimConfig) -> (Router, SimHandleParts) {
    let app = App {
        world: Arc::new(Mutex::new(World::new(config))),
        base: Arc::new(Mutex::new(String::new())),
    };
    let api = Router::new()
        .route("/v1/benches", get(list_benches))
        .route(
            "/v1/reservations",
            post(create_reservation).get(list_reservations),
        )
        .route(
            "/v1/reservations/{id}",
            get(get_reservation).delete(release),
        )
        .route("/v1/reservations/{id}/heartbeat", post(heartbeat))
        .route("/v1/reservations/{id}/runs", post(start_run).get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/logs", get(logs))
        .route("/v1/runs/{id}/artifacts", get(list_artifacts))
        .route("/v1/runs/{id}/artifacts/{*name}", get(download))
        .route("/v1/runs/{id}/cancel", post(cancel))
        .layer(middleware::from_fn_with_state(app.clone(), gate));
    let admin = Router::new()
        .route("/sim/benches/{id}/health", post(admin_health))
        .route("/sim/faults", post(admin_faults));
    let router = api.merge(admin).with_state(app.clone());
    (router, SimHandleParts { app })
}

/// What [`router`] hands back to build a [`SimHandle`] once bound.
pub struct SimHandleParts {
    app: App,
}

impl SimHandleParts {
    /// The handle for the router served at `addr`.
    pub fn bind(self, addr: SocketAddr) -> SimHandle {
        *self.app.base.lock().unwrap_or_else(|e| e.into_inner()) = format!("http://{addr}");
        SimHandle {
            addr,
            app: self.app,
        }
    }
}

/// Bind `addr` (port 0 for a free one), serve in the background, return
/// the handle. The server stops when the runtime does.
pub async fn serve(config: SimConfig, addr: SocketAddr) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (router, parts) = router(config);
    let handle = parts.bind(addr);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(handle)
}
