//! The runner's `backend:` section and the bench's, with their checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The runner's `backend:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnPremConfig {
    /// The platform's base URL (`https://benches.example/`).
    pub base_url: String,
    /// The environment variable holding the bearer token. The token itself
    /// never sits in a config file.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Who owns reservations made by this runner (leak listing looks at these).
    #[serde(default = "default_owner")]
    pub owner: String,
    /// Lease asked for; the heartbeat renews it at a third of this.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
    /// Reservation and run status polling, milliseconds.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    /// How long one log request may wait for new output (long poll).
    #[serde(default = "default_log_wait")]
    pub log_wait_ms: u64,
    /// Per-request timeout.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Attempts per API call (5xx, connection failures, 429).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First retry backoff; doubles up to `backoff_max_ms`.
    #[serde(default = "default_backoff_base")]
    pub backoff_base_ms: u64,
    /// Backoff cap.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Download artifacts into the runner's artifacts directory (else
    /// reference them by URI).
    #[serde(default = "yes")]
    pub download_artifacts: bool,
    /// How long provision waits for an allocation when the context has no deadline.
    #[serde(default = "default_provision_wait")]
    pub provision_wait_seconds: u64,
}

fn default_token_env() -> String {
    "BENCH_API_TOKEN".into()
}
fn default_owner() -> String {
    "test-orchestrator".into()
}
fn default_lease() -> u64 {
    60
}
fn default_poll() -> u64 {
    500
}
fn default_log_wait() -> u64 {
    1_000
}
fn default_request_timeout() -> u64 {
    15_000
}
fn default_attempts() -> u32 {
    5
}
fn default_backoff_base() -> u64 {
    200
}
fn default_backoff_max() -> u64 {
    5_000
}
fn default_provision_wait() -> u64 {
    1_800
}
fn yes() -> bool {
    true
}

impl OnPremConfig {
    /// Check what serde cannot; the error is `(dotted key, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("backend.{k}"), m.to_string()));
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return bad("base_url", "must be an http:// or https:// URL");
        }
        if let Err(e) = reqwest::Url::parse(&self.base_url) {
            return Err((
                "backend.base_url".into(),
                format!("{:?} is not a valid URL: {e}", self.base_url),
            ));
        }
        const HOUR_MS: u64 = 3_600_000;
        for (key, value, max) in [
            ("lease_seconds", self.lease_seconds, 86_400),
            ("poll_ms", self.poll_ms, HOUR_MS),
            ("log_wait_ms", self.log_wait_ms, HOUR_MS),
            ("request_timeout_ms", self.request_timeout_ms, HOUR_MS),
            ("backoff_base_ms", self.backoff_base_ms, HOUR_MS),
            ("backoff_max_ms", self.backoff_max_ms, HOUR_MS),
            (
                "provision_wait_seconds",
                self.provision_wait_seconds,
                runner_core::config::MAX_TIMEOUT_SECONDS,
            ),
            ("attempts", u64::from(self.attempts), 100),
        ] {
            if value > max {
                return Err((
                    format!("backend.{key}"),
                    format!("{value} is more than the maximum of {max}"),
                ));
            }
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms", "must be above 0");
        }
        if self.lease_seconds < 3 {
            return bad("lease_seconds", "must be at least 3");
        }
        if self.attempts == 0 {
            return bad("attempts", "must be at least 1");
        }
        if self.poll_ms == 0 {
            return bad("poll_ms", "must be above 0");
        }
        if self.owner.trim().is_empty() {
            return bad("owner", "must not be empty");
        }
        Ok(())
    }
}

/// The bench's `backend:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchBackend {
    /// Bench type to reserve.
    pub bench_type: String,
    /// Labels the bench must have.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}
