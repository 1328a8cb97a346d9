//! Making a container: the image (pulled by policy), the create request
//! from the sandbox, the writable `/artifacts`, and start errors.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, CreateImageOptionsBuilder};
use futures::StreamExt;
use runner_core::{
    BenchSpec, LogStream, ProvisionError, RunContext, RunnerHandle, TestPayload, decode_spec,
};

use crate::client::{Endpoint, engine_error, is_name_conflict, is_not_found, status_of};
use crate::config::{ARTIFACTS_PATH, ContainerBench, PullPolicy, Sandbox};

use super::{ContainerRunner, ContainerState, HandleProblem, remove};

impl ContainerRunner {
    /// The body of `RunnerAdapter::provision`.
    pub(super) async fn provision_container(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        let spec: ContainerBench = decode_spec(ctx, &bench.backend, "bench.backend")?;
        let (sandbox, pull) = self
            .config
            .sandbox(&spec)
            .map_err(|(field, message)| ProvisionError::invalid_spec(ctx, field, message))?;
        let endpoint = self.endpoint.clone();
        let docker = self.connect(ctx, &endpoint)?;
        docker
            .ping()
            .await
            .map_err(|e| engine_error(ctx, &endpoint, "reaching the container engine", &e))?;
        self.ensure_image(ctx, &docker, &endpoint, &sandbox.image, pull)
            .await?;
        let mut state = ContainerState {
            endpoint: endpoint.clone(),
            name: Self::container_name(&self.config.owner, ctx.execution_key()),
            id: String::new(),
            execution_key: ctx.execution_key().to_owned(),
            worker: ctx.worker_id().to_owned(),
            owner: self.config.owner.clone(),
            sandbox: Some(sandbox.clone()),
        };
        let body = self.create_body(ctx, &state, &sandbox, None);
        let options = CreateContainerOptionsBuilder::new()
            .name(&state.name)
            .build();
        match docker.create_container(Some(options), body).await {
            Ok(made) => state.id = made.id,
            Err(e) if is_name_conflict(&e) => {
                // A retried or redelivered provision: adopt what an earlier
                // attempt made, if it is this execution's.
                let existing = docker
                    .inspect_container(&state.name, None)
                    .await
                    .map_err(|e| {
                        engine_error(
                            ctx,
                            &endpoint,
                            &format!("inspecting container {}", state.name),
                            &e,
                        )
                    })?;
                let labels = existing
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.clone())
                    .unwrap_or_default();
                let ours = labels.get(super::labels::OWNER) == Some(&state.owner)
                    && labels.get(super::labels::EXECUTION_KEY) == Some(&state.execution_key);
                if !ours {
                    return Err(ProvisionError::permanent(
                        ctx,
                        format!(
                            "a container named {} exists on {} but was not made for this execution (owner or execution key label differs)",
                            state.name, endpoint.address
                        ),
                    ));
                }
                state.id = existing.id.unwrap_or_default();
                tracing::debug!(name = %state.name, "adopted the container of an earlier attempt");
            }
            Err(e) => {
                return Err(engine_error(
                    ctx,
                    &endpoint,
                    &format!("creating container {} from {}", state.name, sandbox.image),
                    &e,
                ));
            }
        }
        let handle = match self.handle_for(ctx, &state) {
            Ok(handle) => handle,
            Err(HandleProblem(message)) => {
                let _ = remove(&docker, &state.name).await;
                return Err(ProvisionError::permanent(ctx, message));
            }
        };
        if ctx.is_cancelled() {
            let _ = remove(&docker, &state.name).await;
            return Err(ProvisionError::cancelled(
                ctx,
                "cancelled; the container made was removed",
            ));
        }
        Ok(handle)
    }

    /// The create request: the sandbox's limits and security settings, the
    /// labels, and the payload's command when there is one (provision makes
    /// the container before the payload is known; `run_test` replaces it).
    pub(super) fn create_body(
        &self,
        ctx: &RunContext,
        state: &ContainerState,
        sandbox: &Sandbox,
        payload: Option<&TestPayload>,
    ) -> ContainerCreateBody {
        let memory =
            i64::try_from(sandbox.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
        let mut tmpfs = HashMap::new();
        if sandbox.read_only_rootfs {
            tmpfs.insert("/tmp".to_owned(), "rw,nosuid,nodev,size=64m".to_owned());
        }
        let host_config = HostConfig {
            memory: Some(memory),
            // No swap beyond the limit: over it, the kernel kills the test.
            memory_swap: Some(memory),
            nano_cpus: Some((sandbox.cpus * 1e9) as i64),
            pids_limit: Some(sandbox.pids_limit),
            // The API has no default of its own worth trusting (Podman's
            // service ignores containers.conf's netns), so always send it.
            network_mode: Some(sandbox.network.clone()),
            readonly_rootfs: Some(sandbox.read_only_rootfs),
            tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            init: Some(false),
            auto_remove: Some(false),
            ..HostConfig::default()
        };
        let (cmd, env, working_dir) = match payload {
            Some(payload) => {
                let cmd = if payload.shell {
                    vec!["sh".to_owned(), "-c".to_owned(), payload.command.join(" ")]
                } else {
                    payload.command.clone()
                };
                let mut env: Vec<String> = payload
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.value()))
                    .collect();
                env.push(format!("RUNNER_EXECUTION_ID={}", ctx.execution_id()));
                env.push(format!("RUNNER_CORRELATION_ID={}", ctx.correlation_id()));
                env.push(format!("RUNNER_ATTEMPT={}", ctx.attempt()));
                env.push(format!("ARTIFACTS_DIR={ARTIFACTS_PATH}"));
                (cmd, Some(env), payload.working_dir.clone())
            }
            // Never started: it holds the settings and the name.
            None => (vec!["true".to_owned()], None, None),
        };
        ContainerCreateBody {
            image: Some(sandbox.image.clone()),
            cmd: Some(cmd),
            env,
            working_dir,
            user: Some(sandbox.user.clone()),
            labels: Some(self.labels(ctx, &state.owner)),
            // An anonymous volume: writable with a read-only root, kept
            // after the container stops (the archive endpoint reads it), and
            // removed with the container.
            volumes: Some(vec![ARTIFACTS_PATH.to_owned()]),
            tty: Some(false),
            open_stdin: Some(false),
            attach_stdin: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            stop_timeout: i64::try_from(self.config.stop_grace_seconds).ok(),
            host_config: Some(host_config),
            ..ContainerCreateBody::default()
        }
    }

    /// Make the image present as `pull` says.
    async fn ensure_image(
        &self,
        ctx: &RunContext,
        docker: &Docker,
        endpoint: &Endpoint,
        image: &str,
        pull: PullPolicy,
    ) -> Result<(), ProvisionError> {
        let present = match docker.inspect_image(image).await {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => {
                return Err(engine_error(
                    ctx,
                    endpoint,
                    &format!("inspecting image {image}"),
                    &e,
                ));
            }
        };
        let must_pull = match (pull, present) {
            (PullPolicy::Always, _) | (PullPolicy::Missing, false) => true,
            (PullPolicy::Never, false) => {
                return Err(ProvisionError::permanent(
                    ctx,
                    format!(
                        "image {image} is not present on the engine at {} and the pull policy is `never` (load or build it there, or set pull: missing)",
                        endpoint.address
                    ),
                ));
            }
            _ => false,
        };
        if !must_pull {
            return Ok(());
        }
        ctx.logs()
            .send(LogStream::System, &format!("pulling image {image}"))
            .await;
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut progress = docker.create_image(Some(options), None, None);
        let pulled = async {
            while let Some(step) = progress.next().await {
                let step = step?;
                if let Some(detail) = step.error_detail.and_then(|d| d.message) {
                    return Err(bollard::errors::Error::DockerStreamError { error: detail });
                }
            }
            Ok(())
        };
        let outcome = tokio::select! {
            outcome = pulled => outcome,
            _ = ctx.cancel_token().cancelled() => {
                return Err(ProvisionError::cancelled(ctx, format!("cancelled while pulling {image}")));
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(e) => {
                let text = e.to_string().to_lowercase();
                // No such image, or no access to it, fails the same way on retry.
                let permanent = is_not_found(&e)
                    || matches!(status_of(&e), Some(400..=499))
                    || [
                        "not found",
                        "manifest unknown",
                        "unauthorized",
                        "denied",
                        "invalid reference",
                    ]
                    .iter()
                    .any(|s| text.contains(s));
                let message = format!(
                    "image {image} is not present and pulling it failed (pull policy `{}`)",
                    match pull {
                        PullPolicy::Always => "always",
                        PullPolicy::Missing => "missing",
                        PullPolicy::Never => "never",
                    }
                );
                let err =
                    engine_error::<runner_core::phase::ProvisionPhase>(ctx, endpoint, &message, &e);
                Err(if permanent {
                    ProvisionError::permanent(ctx, err.message().to_owned())
                } else {
                    err
                })
            }
        }
    }
}
