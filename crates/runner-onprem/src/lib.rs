#![doc = include_str!("../README.md")]

pub mod api;
mod collect;
mod config;
mod register;
mod run;
mod session;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use runner_core::{
    ArtifactBundle, ArtifactError, BenchSpec, Capabilities, ExecutionError, ListOwnedError,
    LogStream, OwnedResource, ProvisionError, RunContext, RunnerAdapter, RunnerHandle,
    TeardownError, TestPayload, TestResult, async_trait, decode_spec,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use api::{Api, ApiError, RetryPolicy, Token};
pub use config::{BenchBackend, OnPremConfig};
pub use register::register;
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
    heartbeats: session::Heartbeats,
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
        Capabilities::new()
            .with_live_logs(true)
            .with_idempotent_teardown(true)
            .with_leak_listing(true)
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
        runner_core::kit::checks::command(ctx, payload)
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
        let mut guard = session::ProvisionGuard::new(self, &id);
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
                    guard.disarm();
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
                guard.disarm();
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
                .map_err(|e| {
                    // An error returned keeps the lease: the retry adopts
                    // the reservation. Only a dropped provision releases.
                    guard.disarm();
                    e.into_runner(ctx)
                })?;
        }
        guard.disarm();
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
        self.run_impl(ctx, handle, payload).await
    }

    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        self.collect_impl(ctx, handle, payload).await
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

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
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
            .map_err(|e| ListOwnedError::permanent(ctx, e.to_string()))?;
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
