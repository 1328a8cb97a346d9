//! Collecting a run's artifacts: only this attempt's run, each file
//! streamed to disk through the kit's writer (redacted, hashed, checked
//! against the API's size and sha256), and the run's own log kept,
//! redacted, as `logs/run.log`.

use std::time::Duration;

use reqwest::Method;
use runner_core::kit::ArtifactWriter;
use runner_core::{
    Artifact, ArtifactBundle, ArtifactError, ArtifactKind, ArtifactLocation, RunContext,
    RunnerHandle, TestPayload,
};

use crate::wire::*;
use crate::{OnPremBenchRunner, OnPremState, RUNNER_TYPE};

/// The longest a download may stall between two chunks.
const IDLE: Duration = Duration::from_secs(30);

/// The name the run's own log is kept under.
pub(crate) const RUN_LOG: &str = "logs/run.log";

impl OnPremBenchRunner {
    pub(crate) async fn collect_impl(
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
                bundle.artifacts.push(Artifact::new(
                    remote.name,
                    ArtifactKind::File,
                    ArtifactLocation::Uri(remote.uri),
                    remote.size,
                    remote.sha256.to_ascii_lowercase(),
                ));
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
            let path = runner_core::safe_path::safe_join(&dest, &remote.name)
                .map_err(|e| ArtifactError::permanent(ctx, e.to_string()))?;
            let written = self
                .api
                .download_to(&remote.uri, &path, &redactor, IDLE)
                .await
                .map_err(|e| e.into_runner(ctx))?;
            if written.received != remote.size
                || written.received_sha256 != remote.sha256.to_ascii_lowercase()
            {
                let _ = tokio::fs::remove_file(&path).await;
                let message = format!(
                    "artifact {:?}: the API said {} bytes sha256 {}, the download is {} bytes sha256 {}",
                    remote.name,
                    remote.size,
                    remote.sha256,
                    written.received,
                    written.received_sha256
                );
                // Fewer bytes than announced: the transfer was cut; a retry may complete it.
                return Err(if written.received < remote.size {
                    ArtifactError::transient(ctx, message)
                } else {
                    ArtifactError::permanent(ctx, message)
                });
            }
            bundle
                .artifacts
                .push(written.artifact(remote.name, ArtifactKind::File));
        }
        let log_name = if bundle.get(RUN_LOG).is_some() {
            "logs/bench-run.log"
        } else {
            RUN_LOG
        };
        let log = self
            .keep_run_log(ctx, &run, &dest, log_name, payload)
            .await?;
        bundle.artifacts.insert(0, log);
        Ok(bundle)
    }

    /// The run's log, read from offset 0 to its end and written redacted.
    async fn keep_run_log(
        &self,
        ctx: &RunContext,
        run: &Run,
        dest: &std::path::Path,
        name: &str,
        payload: &TestPayload,
    ) -> Result<Artifact, ArtifactError> {
        let path = runner_core::safe_path::safe_join(dest, name)
            .map_err(|e| ArtifactError::permanent(ctx, e.to_string()))?;
        let io = |e: std::io::Error| {
            ArtifactError::transient(ctx, format!("writing {}: {e}", path.display()))
        };
        let mut writer = ArtifactWriter::create(&path, payload.redactor())
            .await
            .map_err(io)?;
        let mut offset = 0u64;
        loop {
            let chunk: Result<LogChunk, _> = self
                .api
                .json(
                    Method::GET,
                    &format!("/v1/runs/{}/logs?offset={offset}&wait_ms=0", run.id),
                    None,
                    None,
                )
                .await;
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    writer.abort().await;
                    return Err(e.into_runner(ctx));
                }
            };
            writer.write(chunk.data.as_bytes()).await.map_err(io)?;
            let progressed = chunk.next_offset > offset;
            offset = chunk.next_offset;
            if chunk.data.is_empty() || !progressed {
                break;
            }
        }
        let written = writer.finish().await.map_err(io)?;
        Ok(written.artifact(name, ArtifactKind::Log))
    }
}
