//! `orchestrator api`: the HTTP API (JSON, v1) and the web dashboard over
//! the store. Stateless: any number of replicas may serve one store behind
//! a load balancer; everything they know is read from the store on each
//! request (tokens from a file on each replica).
//!
//! Composition, in one place ([`router`]): routes, then the body limit;
//! authentication, scopes and the per-token rate limit are checked by each
//! handler first ([`auth::authorize`]), so a route's scope is next to its
//! code. Errors are problem documents ([`problem::Problem`]).

pub mod auth;
pub mod charts;
pub mod dashboard;
pub mod problem;
pub mod routes;
pub mod sse;
pub mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use runner_core::RunnerAdapter;
use serde::{Deserialize, Serialize};

use crate::config::WorkerConfig;
use crate::metrics::Metrics;
use crate::store::Backends;

/// The `api` section of the worker config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// The tokens file (relative to the config file); absent: no token is
    /// valid, so only the open routes answer.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// `/healthz` and `/readyz` answer without a token (load balancer
    /// probes).
    #[serde(default = "yes")]
    pub open_health: bool,
    /// `/metrics` answers without a token (a Prometheus scraper).
    #[serde(default)]
    pub open_metrics: bool,
    /// Serve HTTPS with this certificate and key (PEM files); absent:
    /// plain HTTP (put a TLS-terminating proxy in front).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// The largest request body accepted, in bytes.
    #[serde(default = "d_body")]
    pub max_body_bytes: usize,
    /// The largest page of `GET /v1/executions` (and the DLQ).
    #[serde(default = "d_page")]
    pub max_page_size: usize,
    /// Executions in one `POST /v1/executions` batch at most.
    #[serde(default = "d_batch")]
    pub max_batch: usize,
    /// Requests a minute one token may make on average.
    #[serde(default = "d_rate")]
    pub rate_per_minute: u32,
    /// Requests one token may make at once before the rate applies.
    #[serde(default = "d_burst")]
    pub burst: u32,
}

/// The `api.tls` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The certificate chain (PEM), relative to the config file.
    pub cert: PathBuf,
    /// The private key (PEM), relative to the config file.
    pub key: PathBuf,
}

fn yes() -> bool {
    true
}
fn d_body() -> usize {
    1024 * 1024
}
fn d_page() -> usize {
    500
}
fn d_batch() -> usize {
    1000
}
fn d_rate() -> u32 {
    1200
}
fn d_burst() -> u32 {
    200
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            tokens_file: None,
            open_health: true,
            open_metrics: false,
            tls: None,
            max_body_bytes: d_body(),
            max_page_size: d_page(),
            max_batch: d_batch(),
            rate_per_minute: d_rate(),
            burst: d_burst(),
        }
    }
}

impl ApiSection {
    /// Paths made relative to `base` (the config file's directory).
    pub fn resolved(mut self, base: &std::path::Path) -> Self {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = &mut self.tokens_file {
            fix(p);
        }
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        self
    }
}

/// What every request handler shares.
#[derive(Debug)]
pub struct ApiState {
    /// The queue and store.
    pub backends: Backends,
    /// The worker config (its runners validate submissions and list leaks).
    pub config: WorkerConfig,
    /// The `api` section in effect.
    pub section: ApiSection,
    /// The tokens.
    pub tokens: auth::Tokens,
    /// The per-token rate limit.
    pub limiter: auth::RateLimiter,
    /// Runner type → adapter, for the config's runners.
    pub adapters: BTreeMap<String, Arc<dyn RunnerAdapter>>,
    /// This process's metrics (queue depth is read on each scrape).
    pub metrics: Metrics,
}

/// Shared state.
pub type SharedState = Arc<ApiState>;

impl ApiState {
    /// State over `backends`; `adapters` made from `config.runners`.
    pub fn new(
        backends: Backends,
        config: WorkerConfig,
        section: ApiSection,
        adapters: BTreeMap<String, Arc<dyn RunnerAdapter>>,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let tokens = auth::Tokens::open(section.tokens_file.as_deref())?;
        let limiter = auth::RateLimiter::new(section.rate_per_minute, section.burst);
        Ok(Self {
            backends,
            config,
            section,
            tokens,
            limiter,
            adapters,
            metrics,
        })
    }

    /// Check the request's token for `need` (bearer only).
    pub fn authorize(
        &self,
        headers: &axum::http::HeaderMap,
        need: auth::Scope,
    ) -> Result<auth::Caller, problem::Problem> {
        auth::authorize(&self.tokens, &self.limiter, headers, need, false)
    }
}

/// The whole application: API, dashboard, probes, the body limit.
pub fn router(state: SharedState) -> axum::Router {
    let limit = state.section.max_body_bytes;
    routes::router()
        .merge(dashboard::router())
        .fallback(routes::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serve `state` on `listener` until `stop` (HTTPS when the section says).
pub async fn serve(
    state: SharedState,
    listener: tokio::net::TcpListener,
    stop: runner_core::CancellationToken,
) -> Result<(), String> {
    let app = router(state.clone());
    let shutdown = async move { stop.cancelled().await };
    match &state.section.tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| format!("the API server stopped: {e}")),
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|e| format!("the API server stopped: {e}"))
        }
    }
}
