//! Collecting artifacts: the log files, and `/artifacts` copied out as a
//! tar stream, unpacked by glob (cancellable mid-archive).

use bollard::query_parameters::{DownloadFromContainerOptionsBuilder, LogsOptionsBuilder};
use futures::{StreamExt, TryStreamExt};
use runner_core::{
    Artifact, ArtifactBundle, ArtifactError, ArtifactKind, LogStream, RunContext, RunnerHandle,
    TestPayload,
};

use crate::client::{engine_error, is_not_found};
use crate::config::ARTIFACTS_PATH;
use crate::logs::LogFileError;
use crate::{RUNNER_TYPE, archive};

use super::{ContainerRunner, ContainerState, io_error};

impl ContainerRunner {
    /// The body of `RunnerAdapter::collect_artifacts`.
    pub(super) async fn collect_from_container(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        let state: ContainerState = handle.decode_in(ctx, RUNNER_TYPE)?;
        let globs = archive::compile(&payload.artifacts)
            .map_err(|(field, message)| ArtifactError::invalid_spec(ctx, field, message))?;
        let dest =
            runner_core::safe_path::safe_join(&self.config.artifacts_dir, ctx.execution_id())
                .map_err(|e| ArtifactError::permanent(ctx, e.to_string()))?;
        let endpoint = &state.endpoint;
        let redactor = payload.redactor();
        let docker = self.connect(ctx, endpoint)?;
        match docker.inspect_container(&state.name, None).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                return Err(ArtifactError::handle_gone(
                    ctx,
                    format!(
                        "container {} is gone (torn down?); nothing to collect",
                        state.name
                    ),
                ));
            }
            Err(e) => {
                return Err(engine_error(
                    ctx,
                    endpoint,
                    &format!("inspecting container {}", state.name),
                    &e,
                ));
            }
        }
        let logs_dir = dest.join("logs");
        tokio::fs::create_dir_all(&logs_dir)
            .await
            .map_err(|e| io_error(ctx, &format!("cannot create {}", logs_dir.display()), e))?;
        let mut bundle = ArtifactBundle::default();
        let mut taken: Vec<String> = Vec::new();
        // The engine keeps the whole log until the container is removed:
        // the record, complete even when the live stream was not.
        let options = LogsOptionsBuilder::new()
            .follow(false)
            .stdout(true)
            .stderr(true)
            .build();
        let (stdout, stderr) = (logs_dir.join("stdout.log"), logs_dir.join("stderr.log"));
        crate::logs::write_files(
            docker.logs(&state.name, Some(options)),
            &stdout,
            &stderr,
            self.config.max_log_bytes,
            &redactor,
        )
        .await
        .map_err(|e| match e {
            LogFileError::Engine(e) => engine_error(
                ctx,
                endpoint,
                &format!("reading the log of container {}", state.name),
                &e,
            ),
            LogFileError::Io(e) => io_error(ctx, "writing the log files", e),
        })?;
        for (name, path) in [("logs/stdout.log", stdout), ("logs/stderr.log", stderr)] {
            let artifact = tokio::task::spawn_blocking(move || {
                Artifact::from_local_file(name, ArtifactKind::Log, &path)
            })
            .await
            .map_err(|e| ArtifactError::permanent(ctx, format!("hashing a log panicked: {e}")))?
            .map_err(|e| io_error(ctx, &format!("hashing {name}"), e))?;
            taken.push(name.to_owned());
            bundle.artifacts.push(artifact);
        }

        // The directory as a tar stream, unpacked entry by entry on a
        // blocking thread as the bytes arrive: nothing holds the archive.
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(ARTIFACTS_PATH)
            .build();
        let mut stream = docker.download_from_container(&state.name, Some(options));
        let first = match stream.next().await {
            None => None,
            Some(Ok(chunk)) => Some(chunk),
            // No /artifacts at all: only the logs.
            Some(Err(e)) if is_not_found(&e) => return Ok(bundle),
            Some(Err(e)) => {
                return Err(engine_error(
                    ctx,
                    endpoint,
                    &format!("copying {ARTIFACTS_PATH} out of container {}", state.name),
                    &e,
                ));
            }
        };
        let bytes = futures::stream::iter(first.map(Ok))
            .chain(stream)
            .map_err(std::io::Error::other);
        let reader =
            tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(Box::pin(bytes)));
        let unpack_dest = dest.clone();
        let cancel = ctx.cancel_token().clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let mut taken = taken;
            let reader = CancellableRead {
                inner: reader,
                cancel,
            };
            archive::unpack(
                reader,
                ARTIFACTS_PATH,
                &unpack_dest,
                &globs,
                &redactor,
                &mut taken,
            )
        })
        .await
        .map_err(|e| ArtifactError::permanent(ctx, format!("unpacking panicked: {e}")))?;
        let unpacked = match unpacked {
            Ok(unpacked) => unpacked,
            Err(e) if ctx.is_cancelled() => {
                return Err(ArtifactError::cancelled(
                    ctx,
                    format!("cancelled while copying {ARTIFACTS_PATH} out: {e}"),
                ));
            }
            Err(e) => {
                return Err(io_error(
                    ctx,
                    &format!("copying {ARTIFACTS_PATH} out of container {}", state.name),
                    e,
                ));
            }
        };
        for refused in &unpacked.refused {
            tracing::warn!(name = %refused.name, reason = %refused.reason, "artifact refused");
            ctx.logs()
                .send(
                    LogStream::System,
                    &format!("artifact {:?} refused: {}", refused.name, refused.reason),
                )
                .await;
        }
        bundle.artifacts.extend(unpacked.artifacts);
        Ok(bundle)
    }
}

/// A reader that stops with an error once `cancel` fires, so a cancelled
/// collection does not copy the rest of a large archive.
struct CancellableRead<R> {
    inner: R,
    cancel: runner_core::CancellationToken,
}

impl<R: std::io::Read> std::io::Read for CancellableRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "cancelled",
            ));
        }
        self.inner.read(buf)
    }
}
