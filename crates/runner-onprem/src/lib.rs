#![doc = include_str!("../README.md")]

pub mod api;
mod config;
mod register;
mod session;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use runner_core::{
    Artifact, ArtifactBundle, ArtifactError, ArtifactKind, ArtifactLocation, BenchSpec,
    CancellationToken, Capabilities, ExecutionError, LogBatch, LogStream, OwnedResource,
    ProvisionError, RunContext, RunnerAdapter, RunnerHandle, TeardownError, TestPayload,
    TestResult, TestStatus, async_trait, decode_spec,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

pub use api::{Api, ApiError, RetryPolicy, Token};
pub use config::{BenchBackend, OnPremConfig};
pub use register::register;
use session::map_run_end;
use wire::*;

/// The payload's `backend:` section: this backend has none, so any key in
/// it is refused instead of being ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSection {}

/// The runner type in configs and handles.
pub const RUNNER_TYPE: &str = "onprem";

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
