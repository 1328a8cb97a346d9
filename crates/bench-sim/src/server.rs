//! The HTTP side: routes of docs/adapters/onprem-api.yaml, bearer auth,
//! fault injection, and the `/sim` admin endpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{
    Faults, Health, Malformed, ResState, Reservation, RunState, SimConfig, World, now_ms,
};

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

/// Faults first (a load balancer's 503 or 429 comes before auth), then
/// the bearer token, then the handler; malformed answers last.
async fn gate(State(app): State<App>, request: Request, next: Next) -> Response {
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

async fn list_benches(State(app): State<App>) -> Response {
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

async fn create_reservation(State(app): State<App>, body: Bytes) -> Response {
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
struct OwnerQuery {
    owner: Option<String>,
}

async fn list_reservations(State(app): State<App>, Query(query): Query<OwnerQuery>) -> Response {
    let world = app.world();
    let list: Vec<Value> = world
        .reservations
        .iter()
        .filter(|r| query.owner.as_ref().is_none_or(|o| &r.owner == o))
        .map(|r| world.reservation_json(r))
        .collect();
    Json(json!({"reservations": list})).into_response()
}

async fn get_reservation(State(app): State<App>, Path(id): Path<String>) -> Response {
    let world = app.world();
    match world.reservations.iter().find(|r| r.id == id) {
        Some(r) => Json(world.reservation_json(r)).into_response(),
        None => not_found("reservation", &id),
    }
}

async fn heartbeat(State(app): State<App>, Path(id): Path<String>) -> Response {
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

async fn release(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut world = app.world();
    let Some(index) = world.reservations.iter().position(|r| r.id == id) else {
        return not_found("reservation", &id);
    };
    world.end_reservation(index, ResState::Released, "released", now_ms());
    StatusCode::NO_CONTENT.into_response()
}

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

async fn start_run(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> Response {
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

async fn list_runs(State(app): State<App>, Path(id): Path<String>) -> Response {
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

async fn get_run(State(app): State<App>, Path(id): Path<String>) -> Response {
    let world = app.world();
    match world.runs.iter().find(|r| r.id == id) {
        Some(run) => Json(run.json()).into_response(),
        None => not_found("run", &id),
    }
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    wait_ms: u64,
}

async fn logs(
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

async fn list_artifacts(State(app): State<App>, Path(id): Path<String>) -> Response {
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

async fn download(State(app): State<App>, Path((id, name)): Path<(String, String)>) -> Response {
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

async fn cancel(State(app): State<App>, Path(id): Path<String>) -> Response {
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

#[derive(Deserialize)]
struct HealthBody {
    health: Health,
}

async fn admin_health(
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

async fn admin_faults(State(app): State<App>, body: Bytes) -> Response {
    let faults: Faults = match parse(&body) {
        Ok(f) => f,
        Err(e) => return e,
    };
    app.world().faults = faults;
    StatusCode::NO_CONTENT.into_response()
}
