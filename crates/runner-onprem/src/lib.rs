#![doc = include_str!("../README.md")]

pub mod api;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use runner_core::{
    Artifact, ArtifactBundle, ArtifactError, ArtifactKind, ArtifactLocation, BenchSpec,
    CancellationToken, Capabilities, ConfigError, ErrorKind, ExecutionError, LogBatch, LogStream,
    OwnedResource, ProvisionError, RunContext, RunnerAdapter, RunnerConfig, RunnerHandle,
    TeardownError, TestPayload, TestResult, TestStatus, async_trait, decode_spec,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

pub use api::{Api, ApiError, RetryPolicy, Token};

/// The payload's `backend:` section: this backend has none, so any key in
/// it is refused instead of being ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSection {}

/// The runner type in configs and handles.
pub const RUNNER_TYPE: &str = "onprem";

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

/// What a handle carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnPremState {
    /// The reservation.
    pub reservation_id: String,
    /// The bench it holds.
    pub bench_id: String,
    /// Its idempotency key (the execution key).
    pub execution_key: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Reservation {
    id: String,
    state: String,
    #[serde(default)]
    position: Option<u64>,
    #[serde(default)]
    bench_id: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    created_at: Option<u64>,
    #[serde(default)]
    ended_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Reservations {
    reservations: Vec<Reservation>,
}

#[derive(Debug, Clone, Deserialize)]
struct Run {
    id: String,
    state: String,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Runs {
    runs: Vec<Run>,
}

#[derive(Debug, Deserialize)]
struct LogChunk {
    next_offset: u64,
    data: String,
    complete: bool,
}

#[derive(Debug, Deserialize)]
struct RemoteArtifact {
    name: String,
    uri: String,
    size: u64,
    sha256: String,
}

#[derive(Debug, Deserialize)]
struct Artifacts {
    artifacts: Vec<RemoteArtifact>,
}

/// The on-prem backend.
pub struct OnPremBenchRunner {
    config: OnPremConfig,
    artifacts_dir: PathBuf,
    api: Api,
    heartbeats: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

impl std::fmt::Debug for OnPremBenchRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnPremBenchRunner")
            .field("config", &self.config)
            .finish()
    }
}

impl Drop for OnPremBenchRunner {
    fn drop(&mut self) {
        for token in self
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            token.cancel();
        }
    }
}

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

    fn ensure_heartbeat(&self, reservation_id: &str) {
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

    fn deadline(&self, ctx: &RunContext) -> Instant {
        ctx.deadline().map(Instant::from_std).unwrap_or_else(|| {
            Instant::now() + Duration::from_secs(self.config.provision_wait_seconds)
        })
    }

    async fn release(&self, reservation_id: &str) -> Result<(), ApiError> {
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

    /// The run of this execution on a reservation (the one whose
    /// idempotency key is the execution id, else the latest).
    async fn find_run(
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
        let mine = runs
            .runs
            .iter()
            .find(|r| r.idempotency_key.as_deref() == Some(execution_id))
            .cloned();
        Ok(mine.or_else(|| runs.runs.last().cloned()))
    }
}

fn map_run_end(
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

#[async_trait]
impl RunnerAdapter for OnPremBenchRunner {
    fn runner_type(&self) -> &str {
        RUNNER_TYPE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            warm_pool: false,
            live_logs: true,
            idempotent_teardown: true,
            leak_listing: true,
            max_concurrency: None,
        }
    }

    fn validate(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
        payload: &TestPayload,
    ) -> Result<(), ProvisionError> {
        let wanted: BenchBackend = decode_spec(ctx, &bench.backend, "bench.backend")?;
        if wanted.bench_type.trim().is_empty() {
            return Err(ProvisionError::invalid_spec(
                ctx,
                "bench.backend.bench_type",
                "must name a bench type",
            ));
        }
        let _: NoSection = decode_spec(ctx, &payload.backend, "payload.backend")?;
        if payload.command.first().is_none_or(|p| p.is_empty()) {
            return Err(ProvisionError::invalid_spec(
                ctx,
                "payload.command",
                "must name a program",
            ));
        }
        Ok(())
    }

    async fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        let wanted: BenchBackend = decode_spec(ctx, &bench.backend, "bench.backend")?;
        if wanted.bench_type.trim().is_empty() {
            return Err(ProvisionError::invalid_spec(
                ctx,
                "bench.backend.bench_type",
                "must name a bench type",
            ));
        }
        let deadline = self.deadline(ctx);
        let body = json!({
            "bench_type": wanted.bench_type,
            "labels": wanted.labels,
            "idempotency_key": ctx.execution_key(),
            "owner": self.config.owner,
            "lease_seconds": self.config.lease_seconds,
        });
        let mut reservation: Reservation = self
            .api
            .json(
                Method::POST,
                "/v1/reservations",
                Some(&body),
                Some(deadline),
            )
            .await
            .map_err(|e| {
                if e.is_status(422) || e.is_status(400) {
                    ProvisionError::invalid_spec(ctx, "bench.backend", e.message.clone())
                } else {
                    e.into_runner(ctx)
                }
            })?;
        let id = reservation.id.clone();
        // The lease runs while queued too.
        self.ensure_heartbeat(&id);
        let mut last_position = None;
        loop {
            match reservation.state.as_str() {
                "allocated" => break,
                "queued" => {
                    if reservation.position != last_position {
                        last_position = reservation.position;
                        let position = reservation
                            .position
                            .map_or("?".to_string(), |p| p.to_string());
                        tracing::info!(reservation = %id, position = %position, "waiting for a bench");
                        ctx.logs()
                            .send(
                                LogStream::System,
                                &format!("reservation {id} queued at position {position}"),
                            )
                            .await;
                    }
                }
                other => {
                    self.stop_heartbeat(&id);
                    let reason = reservation.ended_reason.clone().unwrap_or_default();
                    return Err(ProvisionError::transient(
                        ctx,
                        format!(
                            "reservation {id} ended {other} ({reason}) before a bench was allocated"
                        ),
                    ));
                }
            }
            let pause = Duration::from_millis(self.config.poll_ms);
            let stop = tokio::select! {
                _ = tokio::time::sleep(pause) => None,
                _ = ctx.cancel_token().cancelled() => Some(ProvisionError::cancelled(ctx, format!("cancelled while reservation {id} was queued"))),
                _ = tokio::time::sleep_until(deadline) => Some(ProvisionError::timeout(ctx, format!("reservation {id} was still queued (position {}) at the provision deadline", last_position.map_or("?".into(), |p| p.to_string())))),
            };
            if let Some(err) = stop {
                if let Err(e) = self.release(&id).await {
                    tracing::warn!(reservation = %id, error = %e, "could not release the queued reservation; its lease will expire");
                }
                return Err(err);
            }
            reservation = self
                .api
                .json(
                    Method::GET,
                    &format!("/v1/reservations/{id}"),
                    None,
                    Some(deadline),
                )
                .await
                .map_err(|e| e.into_runner(ctx))?;
        }
        let bench_id = reservation.bench_id.clone().ok_or_else(|| {
            ProvisionError::permanent(
                ctx,
                format!("bench API: reservation {id} is allocated but names no bench_id"),
            )
        })?;
        tracing::info!(reservation = %id, bench = %bench_id, "bench allocated");
        RunnerHandle::new(
            RUNNER_TYPE,
            &id,
            ctx.execution_id(),
            &OnPremState {
                reservation_id: id.clone(),
                bench_id,
                execution_key: ctx.execution_key().to_string(),
            },
        )
        .map_err(|e| ProvisionError::permanent(ctx, e.to_string()))
    }

    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        let state: OnPremState = handle.decode_in(ctx, RUNNER_TYPE)?;
        if payload.command.is_empty() {
            return Err(ExecutionError::invalid_spec(
                ctx,
                "payload.command",
                "must name a program",
            ));
        }
        self.ensure_heartbeat(&state.reservation_id);
        let started = Instant::now();
        let command = if payload.shell {
            vec![
                "sh".to_string(),
                "-c".to_string(),
                payload.command.join(" "),
            ]
        } else {
            payload.command.clone()
        };
        let env: BTreeMap<&str, &str> = payload
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.value()))
            .collect();
        let body = json!({
            "command": command,
            "env": env,
            "package_uri": payload.package,
            "timeout_seconds": payload.timeout_seconds,
            "idempotency_key": ctx.execution_id(),
        });
        let run: Run = self
            .api
            .json(
                Method::POST,
                &format!("/v1/reservations/{}/runs", state.reservation_id),
                Some(&body),
                None,
            )
            .await
            .map_err(|e| {
                if e.code.as_deref() == Some("not_allocated") {
                    // The lease expired or the bench went away: a fresh reservation may work.
                    ExecutionError::transient(ctx, e.message.clone())
                } else if e.is_status(400) {
                    ExecutionError::invalid_spec(ctx, "payload", e.message.clone())
                } else {
                    e.into_runner(ctx)
                }
            })?;
        let sink = ctx.logs().clone().with_redactor(payload.redactor());
        let mut offset = 0u64;
        let mut partial = String::new();
        let deadline = ctx.deadline().map(Instant::from_std);
        let (end_state, why) = loop {
            let path = format!(
                "/v1/runs/{}/logs?offset={offset}&wait_ms={}",
                run.id, self.config.log_wait_ms
            );
            let fetch = self
                .api
                .json::<LogChunk>(Method::GET, &path, None, deadline);
            let chunk = tokio::select! {
                chunk = fetch => chunk.map_err(|e| e.into_runner(ctx))?,
                _ = ctx.cancel_token().cancelled() => break ("cancel", TestStatus::Cancelled),
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break ("deadline", TestStatus::TimedOut),
            };
            partial.push_str(&chunk.data);
            let mut batch = LogBatch::default();
            while let Some(pos) = partial.find('\n') {
                let line: String = partial.drain(..=pos).collect();
                sink.push(&mut batch, LogStream::Stdout, &line);
                if batch.is_full() {
                    sink.send_batch(&mut batch).await;
                }
            }
            sink.send_batch(&mut batch).await;
            offset = chunk.next_offset;
            if chunk.complete {
                break ("done", TestStatus::Passed);
            }
            if chunk.data.is_empty() {
                // The server did not long-poll; do not spin.
                tokio::time::sleep(Duration::from_millis(self.config.poll_ms.min(200))).await;
            }
        };
        if !partial.is_empty() {
            sink.send(LogStream::Stdout, &partial).await;
        }
        if end_state != "done" {
            let cancelled = self
                .api
                .json::<serde_json::Value>(
                    Method::POST,
                    &format!("/v1/runs/{}/cancel", run.id),
                    None,
                    None,
                )
                .await;
            if let Err(e) = cancelled {
                tracing::warn!(run = %run.id, error = %e, "cancel failed; teardown will release the bench");
            }
            let reason = if why == TestStatus::Cancelled {
                "cancelled"
            } else {
                "the run phase's deadline passed"
            };
            return Ok(TestResult::new(why, started.elapsed())
                .with_diagnosis("bench", format!("run {}: {reason}; cancel sent", run.id)));
        }
        let finished: Run = self
            .api
            .json(Method::GET, &format!("/v1/runs/{}", run.id), None, None)
            .await
            .map_err(|e| e.into_runner(ctx))?;
        map_run_end(
            &finished.id,
            &finished.state,
            finished.exit_code,
            finished.error.as_deref(),
            started.elapsed(),
        )
        .map_err(|(kind, message)| ExecutionError::new(kind, ctx, message).with_backend("onprem"))
    }

    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        let state: OnPremState = handle.decode_in(ctx, RUNNER_TYPE)?;
        let Some(run) = self
            .find_run(&state.reservation_id, ctx.execution_id())
            .await
            .map_err(|e| e.into_runner(ctx))?
        else {
            return Ok(ArtifactBundle::default());
        };
        let listed: Artifacts = self
            .api
            .json(
                Method::GET,
                &format!("/v1/runs/{}/artifacts", run.id),
                None,
                None,
            )
            .await
            .map_err(|e| e.into_runner(ctx))?;
        let dest = runner_core::safe_path::safe_join(&self.artifacts_dir, ctx.execution_id())
            .map_err(|e| ArtifactError::permanent(ctx, format!("artifacts directory: {e}")))?;
        let mut bundle = ArtifactBundle::default();
        let redactor = payload.redactor();
        for remote in listed.artifacts {
            runner_core::safe_path::validate_name(&remote.name).map_err(|e| {
                ArtifactError::permanent(
                    ctx,
                    format!(
                        "bench API listed artifact {:?} of run {}: {e}",
                        remote.name, run.id
                    ),
                )
            })?;
            if bundle
                .artifacts
                .iter()
                .any(|a: &Artifact| a.name == remote.name)
            {
                return Err(ArtifactError::permanent(
                    ctx,
                    format!("bench API listed artifact {:?} twice", remote.name),
                ));
            }
            if !self.config.download_artifacts {
                bundle.artifacts.push(Artifact {
                    name: remote.name,
                    kind: ArtifactKind::File,
                    location: ArtifactLocation::Uri(remote.uri),
                    size: remote.size,
                    sha256: remote.sha256.to_ascii_lowercase(),
                });
                continue;
            }
            if !self.api.same_origin(&remote.uri) {
                return Err(ArtifactError::permanent(
                    ctx,
                    format!(
                        "artifact {:?} is at {}, outside the bench API; the token is not sent there",
                        remote.name, remote.uri
                    ),
                ));
            }
            let bytes = self
                .api
                .bytes(Method::GET, &remote.uri, None)
                .await
                .map_err(|e| e.into_runner(ctx))?;
            let sha = runner_core::artifact::sha256_bytes(&bytes);
            if sha != remote.sha256.to_ascii_lowercase() || bytes.len() as u64 != remote.size {
                return Err(ArtifactError::permanent(
                    ctx,
                    format!(
                        "artifact {:?}: the API said {} bytes sha256 {}, the download is {} bytes sha256 {sha}",
                        remote.name,
                        remote.size,
                        remote.sha256,
                        bytes.len()
                    ),
                ));
            }
            let path = runner_core::safe_path::safe_join(&dest, &remote.name)
                .map_err(|e| ArtifactError::permanent(ctx, e.to_string()))?;
            let bytes = if redactor.is_empty() {
                bytes
            } else {
                redactor.redact_bytes(&bytes)
            };
            let write = async {
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                tokio::fs::write(&path, &bytes).await
            };
            write.await.map_err(|e| {
                ArtifactError::permanent(ctx, format!("writing {}: {e}", path.display()))
            })?;
            bundle.artifacts.push(Artifact {
                name: remote.name,
                kind: ArtifactKind::File,
                location: ArtifactLocation::Local(path),
                size: bytes.len() as u64,
                sha256: runner_core::artifact::sha256_bytes(&bytes),
            });
        }
        Ok(bundle)
    }

    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        let state: OnPremState = handle.decode_in(ctx, RUNNER_TYPE)?;
        self.stop_heartbeat(&state.reservation_id);
        match self
            .api
            .json::<Runs>(
                Method::GET,
                &format!("/v1/reservations/{}/runs", state.reservation_id),
                None,
                None,
            )
            .await
        {
            Ok(runs) => {
                for run in runs.runs.iter().filter(|r| r.state == "running") {
                    let path = format!("/v1/runs/{}/cancel", run.id);
                    if let Err(e) = self
                        .api
                        .json::<serde_json::Value>(Method::POST, &path, None, None)
                        .await
                    {
                        tracing::warn!(run = %run.id, error = %e, "cancel at teardown failed; release follows");
                    }
                }
            }
            Err(e) if e.is_status(404) => return Ok(()),
            Err(e) => return Err(e.into_runner(ctx)),
        }
        self.release(&state.reservation_id)
            .await
            .map_err(|e| e.into_runner(ctx))
    }

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, TeardownError> {
        let path = format!("/v1/reservations?owner={}", urlencode(&self.config.owner));
        let listed: Reservations = self
            .api
            .json(Method::GET, &path, None, None)
            .await
            .map_err(|e| e.into_runner(ctx))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut owned = Vec::new();
        for r in listed
            .reservations
            .into_iter()
            .filter(|r| matches!(r.state.as_str(), "queued" | "allocated"))
        {
            let key = r.idempotency_key.clone().unwrap_or_default();
            let handle = RunnerHandle::new(
                RUNNER_TYPE,
                &r.id,
                &key,
                &OnPremState {
                    reservation_id: r.id.clone(),
                    bench_id: r.bench_id.clone().unwrap_or_default(),
                    execution_key: key.clone(),
                },
            )
            .map_err(|e| TeardownError::permanent(ctx, e.to_string()))?;
            let mut resource = OwnedResource::new(&r.id, handle).with_execution_key(key);
            if let Some(created) = r.created_at {
                resource = resource.with_age_seconds(now.saturating_sub(created));
            }
            owned.push(resource);
        }
        Ok(owned)
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
