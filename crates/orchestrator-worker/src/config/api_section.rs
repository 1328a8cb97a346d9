//! The `api` section of the worker config (read by `orchestrator api`,
//! see [`crate::api`]). It lives with the config so that reading a config
//! does not reach up into the HTTP server.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
