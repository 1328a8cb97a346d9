//! The runner's own machinery: construction from a config, the lease
//! heartbeat of each reservation, releasing, finding a run again after a
//! restart, and mapping a run's end state to a result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use runner_core::{
    CancellationToken, ConfigError, ErrorKind, RunContext, RunnerConfig, TestResult, TestStatus,
};
use tokio::time::Instant;

use crate::wire::*;
use crate::{Api, ApiError, OnPremBenchRunner, OnPremConfig, RetryPolicy, Token};

impl OnPremBenchRunner {
    /// A runner with an explicit token.
    pub fn new(
        config: OnPremConfig,
        token: Token,
        artifacts_dir: PathBuf,
    ) -> Result<OnPremBenchRunner, ConfigError> {
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        let retry = RetryPolicy {
            attempts: config.attempts,
            base: Duration::from_millis(config.backoff_base_ms),
            max: Duration::from_millis(config.backoff_max_ms),
            max_retry_after: Duration::from_secs(60),
        };
        let api = Api::new(
            &config.base_url,
            token,
            Duration::from_millis(config.request_timeout_ms),
            retry,
        )
        .map_err(|message| ConfigError::Invalid {
            key: "backend.base_url".into(),
            message,
        })?;
        Ok(OnPremBenchRunner {
            config,
            artifacts_dir,
            api,
            heartbeats: Arc::default(),
        })
    }

    /// From a runner config; the token comes from the variable `token_env` names.
    pub fn from_config(config: &RunnerConfig) -> Result<OnPremBenchRunner, ConfigError> {
        let backend: OnPremConfig = config.backend_section()?;
        // The settings first: a bad URL is worth knowing before a missing token.
        backend
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        let token = std::env::var(&backend.token_env).map_err(|_| ConfigError::Invalid {
            key: "backend.token_env".into(),
            message: format!(
                "the environment variable {} (the API token) is not set",
                backend.token_env
            ),
        })?;
        OnPremBenchRunner::new(backend, Token::new(token), config.artifacts_dir.clone())
    }

    /// The settings.
    pub fn config(&self) -> &OnPremConfig {
        &self.config
    }

    /// Whether a heartbeat is running for a reservation (tests).
    pub fn is_heartbeating(&self, reservation_id: &str) -> bool {
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(reservation_id)
    }

    /// Stop heartbeating a reservation without releasing it (what a dead
    /// worker does; tests use it to let a lease expire).
    pub fn stop_heartbeat(&self, reservation_id: &str) {
        if let Some(token) = self
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(reservation_id)
        {
            token.cancel();
        }
    }

    pub(crate) fn ensure_heartbeat(&self, reservation_id: &str) {
        let mut beats = self.heartbeats.lock().unwrap_or_else(|e| e.into_inner());
        if beats.contains_key(reservation_id) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let token = CancellationToken::new();
        beats.insert(reservation_id.to_string(), token.clone());
        let api = self.api.clone();
        let path = format!("/v1/reservations/{reservation_id}/heartbeat");
        let every = Duration::from_secs(self.config.lease_seconds.max(3) / 3);
        let id = reservation_id.to_string();
        let beats = self.heartbeats.clone();
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                match api.json::<serde_json::Value>(Method::POST, &path, None, None).await {
                    Ok(_) => {}
                    Err(e) if e.is_status(404) || e.is_status(409) => {
                        tracing::warn!(reservation = %id, error = %e, "the reservation ended; heartbeat stops");
                        beats.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                        return;
                    }
                    Err(e) => tracing::warn!(reservation = %id, error = %e, "heartbeat failed; will retry"),
                }
            }
        });
    }

    pub(crate) fn deadline(&self, ctx: &RunContext) -> Instant {
        ctx.deadline().map(Instant::from_std).unwrap_or_else(|| {
            Instant::now() + Duration::from_secs(self.config.provision_wait_seconds)
        })
    }

    pub(crate) async fn release(&self, reservation_id: &str) -> Result<(), ApiError> {
        self.stop_heartbeat(reservation_id);
        match self
            .api
            .bytes(
                Method::DELETE,
                &format!("/v1/reservations/{reservation_id}"),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_status(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The run of this execution's attempt on a reservation: the one whose
    /// idempotency key is the execution id. Never another attempt's (an
    /// adopted reservation also holds the dead attempt's run).
    pub(crate) async fn find_run(
        &self,
        reservation_id: &str,
        execution_id: &str,
    ) -> Result<Option<Run>, ApiError> {
        let runs: Runs = self
            .api
            .json(
                Method::GET,
                &format!("/v1/reservations/{reservation_id}/runs"),
                None,
                None,
            )
            .await?;
        Ok(runs
            .runs
            .into_iter()
            .find(|r| r.idempotency_key.as_deref() == Some(execution_id)))
    }
}

/// Held by a provision from the moment its reservation exists until it
/// hands the handle back: a provision dropped on the way (its caller's time
/// limit, a shutdown) stops the lease heartbeat and releases the
/// reservation instead of keeping the bench leased for the worker's life.
pub(crate) struct ProvisionGuard {
    api: Api,
    heartbeats: Heartbeats,
    id: String,
    armed: bool,
}

pub(crate) type Heartbeats =
    Arc<std::sync::Mutex<std::collections::HashMap<String, CancellationToken>>>;

impl ProvisionGuard {
    pub(crate) fn new(runner: &OnPremBenchRunner, id: &str) -> ProvisionGuard {
        ProvisionGuard {
            api: runner.api.clone(),
            heartbeats: runner.heartbeats.clone(),
            id: id.to_string(),
            armed: true,
        }
    }

    /// The provision finished (a handle, or an error path that released itself).
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ProvisionGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(token) = self
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id)
        {
            token.cancel();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let api = self.api.clone();
        let id = self.id.clone();
        runtime.spawn(async move {
            let path = format!("/v1/reservations/{id}");
            match api.bytes(Method::DELETE, &path, None).await {
                Ok(_) => tracing::info!(reservation = %id, "released the reservation of a provision that was dropped"),
                Err(e) if e.is_status(404) => {}
                Err(e) => tracing::warn!(reservation = %id, error = %e, "could not release the reservation of a dropped provision; its lease will expire"),
            }
        });
    }
}

pub(crate) fn map_run_end(
    run_id: &str,
    state: &str,
    exit_code: Option<i32>,
    error: Option<&str>,
    elapsed: Duration,
) -> Result<TestResult, (ErrorKind, String)> {
    match state {
        "passed" => Ok(TestResult::from_exit_code(exit_code.unwrap_or(0), elapsed)),
        "failed" => Ok(TestResult::from_exit_code(exit_code.unwrap_or(1), elapsed)),
        "timed_out" => Ok(TestResult::new(TestStatus::TimedOut, elapsed)
            .with_diagnosis("bench", format!("run {run_id} hit its timeout"))),
        "cancelled" => Ok(
            TestResult::new(TestStatus::Cancelled, elapsed).with_diagnosis(
                "bench",
                format!(
                    "run {run_id} was cancelled ({})",
                    error.unwrap_or("by request")
                ),
            ),
        ),
        "error" => Ok(TestResult::new(TestStatus::Error, elapsed).with_diagnosis(
            "bench",
            format!("run {run_id}: {}", error.unwrap_or("error")),
        )),
        "lost" => Err((
            ErrorKind::Transient,
            format!(
                "run {run_id} was cut off: {} (the retry reserves another bench)",
                error.unwrap_or("the bench went away")
            ),
        )),
        other => Err((
            ErrorKind::Permanent,
            format!("run {run_id} ended in an unknown state {other:?}"),
        )),
    }
}
