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
use std::sync::Arc;

use runner_core::RunnerAdapter;

use crate::backends::Backends;
use crate::config::WorkerConfig;
pub use crate::config::{ApiSection, TlsSection};
use crate::metrics::Metrics;

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
