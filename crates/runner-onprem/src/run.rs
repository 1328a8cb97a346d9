//! Running a test on an allocated bench: start the run (cancelling a run a
//! dead attempt of this execution left on the reservation), follow its log
//! through the kit's follower, and map its end state to a result.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use runner_core::kit::LogFollower;
use runner_core::{
    ExecutionError, LogStream, RunContext, RunnerHandle, TestPayload, TestResult, TestStatus,
};
use serde_json::json;
use tokio::time::Instant;

use crate::session::map_run_end;
use crate::wire::*;
use crate::{ApiError, OnPremBenchRunner, OnPremState, RUNNER_TYPE};

impl OnPremBenchRunner {
    /// `POST /runs`; on `409 bench_busy` from a run another attempt of
    /// this execution key left running (its worker died, this attempt
    /// adopted the reservation), cancel that run and start anew, once.
    async fn start_run(
        &self,
        ctx: &RunContext,
        reservation_id: &str,
        body: &serde_json::Value,
    ) -> Result<Run, ApiError> {
        let path = format!("/v1/reservations/{reservation_id}/runs");
        match self
            .api
            .json::<Run>(Method::POST, &path, Some(body), None)
            .await
        {
            Err(e) if e.code.as_deref() == Some("bench_busy") => {
                let runs: Runs = self.api.json(Method::GET, &path, None, None).await?;
                let key_prefix = format!("{}.", ctx.execution_key());
                let stale: Vec<&Run> = runs
                    .runs
                    .iter()
                    .filter(|r| r.state == "running")
                    .filter(|r| {
                        r.idempotency_key
                            .as_deref()
                            .is_some_and(|k| k != ctx.execution_id() && k.starts_with(&key_prefix))
                    })
                    .collect();
                if stale.is_empty() {
                    // Someone else's run: not ours to cancel.
                    return Err(e);
                }
                for run in stale {
                    tracing::warn!(run = %run.id, reservation = reservation_id, "cancelling the run a dead attempt of this execution left on the bench");
                    self.api
                        .json::<serde_json::Value>(
                            Method::POST,
                            &format!("/v1/runs/{}/cancel", run.id),
                            None,
                            None,
                        )
                        .await?;
                }
                self.api
                    .json::<Run>(Method::POST, &path, Some(body), None)
                    .await
            }
            other => other,
        }
    }

    pub(crate) async fn run_impl(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        let state: OnPremState = handle.decode_in(ctx, RUNNER_TYPE)?;
        runner_core::kit::checks::command(ctx, payload)?;
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
            .start_run(ctx, &state.reservation_id, &body)
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
        let mut follower = LogFollower::new(sink, LogStream::Stdout);
        let mut offset = 0u64;
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
            follower.feed(chunk.data.as_bytes()).await;
            offset = chunk.next_offset;
            if chunk.complete {
                break ("done", TestStatus::Passed);
            }
            if chunk.data.is_empty() {
                // The server did not long-poll; do not spin.
                tokio::time::sleep(Duration::from_millis(self.config.poll_ms.min(200))).await;
            }
        };
        follower.finish().await;
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
}
