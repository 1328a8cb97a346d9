//! The `RunnerAdapter` implementation over the Docker Engine API.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    KillContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::{FutureExt, StreamExt, TryStreamExt};
use runner_core::phase::PhaseMarker;
use runner_core::{
    Artifact, ArtifactBundle, ArtifactError, ArtifactKind, BenchSpec, Capabilities, ConfigError,
    ExecutionError, LogStream, OwnedResource, ProvisionError, RunContext, RunnerAdapter,
    RunnerConfig, RunnerError, RunnerHandle, TeardownError, TestPayload, TestResult, TestStatus,
    decode_spec,
};
use serde::{Deserialize, Serialize};

use crate::client::{Endpoint, engine_error, is_name_conflict, is_not_found, status_of};
use crate::config::{
    ARTIFACTS_PATH, ContainerBench, ContainerConfig, ContainerPayload, PullPolicy, Sandbox,
    check_payload,
};
use crate::logs::{LiveLogs, LogFileError};
use crate::{RUNNER_TYPE, archive};

/// Label keys on every container this runner makes.
pub mod labels {
    /// `test-orchestrator`: made by this project.
    pub const MANAGED_BY: &str = "io.test-orchestrator.managed-by";
    /// The value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "test-orchestrator";
    /// The deployment's owner (`backend.owner`).
    pub const OWNER: &str = "io.test-orchestrator.owner";
    /// The worker that made it.
    pub const WORKER: &str = "io.test-orchestrator.worker";
    /// The execution key (stable across redeliveries).
    pub const EXECUTION_KEY: &str = "io.test-orchestrator.execution-key";
    /// The execution id.
    pub const EXECUTION_ID: &str = "io.test-orchestrator.execution-id";
}

/// Runs payloads in containers on a Docker-compatible engine; see the crate docs.
#[derive(Debug, Clone)]
pub struct ContainerRunner {
    config: ContainerConfig,
    endpoint: Endpoint,
}

/// What the handle carries: enough to run, collect and tear down from
/// another process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContainerState {
    endpoint: Endpoint,
    /// The container's name: stable, unlike its id, when `run_test`
    /// replaces the container with one running the payload.
    name: String,
    /// The id of the container as made (informational).
    #[serde(default)]
    id: String,
    execution_key: String,
    #[serde(default)]
    worker: String,
    owner: String,
    /// The settings it was made with; absent in a handle built from leak
    /// listing, which can only be torn down.
    #[serde(default)]
    sandbox: Option<Sandbox>,
}

impl ContainerRunner {
    /// A runner with `config`; the endpoint is resolved now (config, then
    /// `DOCKER_HOST`, then the default socket), nothing is contacted.
    pub fn new(config: ContainerConfig) -> Result<Self, ConfigError> {
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        let endpoint = Endpoint::resolve(&config)
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        Ok(Self { config, endpoint })
    }

    /// A runner from a runner config (`backend` section and `artifacts_dir`).
    pub fn from_config(config: &RunnerConfig) -> Result<Self, ConfigError> {
        Self::new(ContainerConfig::from_runner_config(config)?)
    }

    /// The settings in force.
    pub fn config(&self) -> &ContainerConfig {
        &self.config
    }

    /// The engine this runner talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn connect<P: PhaseMarker>(
        &self,
        ctx: &RunContext,
        endpoint: &Endpoint,
    ) -> Result<Docker, RunnerError<P>> {
        // Stopping a container waits out its grace inside one request.
        let timeout = self
            .config
            .request_timeout_seconds
            .max(self.config.stop_grace_seconds + 30);
        endpoint
            .connect(timeout)
            .map_err(|e| engine_error(ctx, endpoint, "connecting to the container engine", &e))
    }

    /// The container name for an execution key: the owner, the key made
    /// safe, and a hash of the key so two keys never share a name.
    fn container_name(owner: &str, key: &str) -> String {
        let clean: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(60)
            .collect();
        let hash = runner_core::artifact::sha256_bytes(key.as_bytes());
        format!("{owner}-{clean}-{}", &hash[..12])
    }

    fn labels(&self, ctx: &RunContext, owner: &str) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (
                labels::MANAGED_BY.to_owned(),
                labels::MANAGED_BY_VALUE.to_owned(),
            ),
            (labels::OWNER.to_owned(), owner.to_owned()),
            (
                labels::EXECUTION_KEY.to_owned(),
                ctx.execution_key().to_owned(),
            ),
            (
                labels::EXECUTION_ID.to_owned(),
                ctx.execution_id().to_owned(),
            ),
        ]);
        if !ctx.worker_id().is_empty() {
            labels.insert(labels::WORKER.to_owned(), ctx.worker_id().to_owned());
        }
        labels
    }

    /// The create request: the sandbox's limits and security settings, the
    /// labels, and the payload's command when there is one (provision makes
    /// the container before the payload is known; `run_test` replaces it).
    fn create_body(
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

    fn handle_for(
        &self,
        ctx: &RunContext,
        state: &ContainerState,
    ) -> Result<RunnerHandle, HandleProblem> {
        RunnerHandle::new(RUNNER_TYPE, &state.name, ctx.execution_id(), state)
            .map_err(|e| HandleProblem(e.to_string()))
    }
}

struct HandleProblem(String);

/// Remove `name` and its anonymous volumes, killing it if it runs;
/// `Ok(false)` when there was no such container.
async fn remove(docker: &Docker, name: &str) -> Result<bool, bollard::errors::Error> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        // Already being removed by another call: gone for our purposes.
        Err(e) if status_of(&e) == Some(409) && e.to_string().contains("in progress") => Ok(true),
        Err(e) => Err(e),
    }
}

/// Make `/artifacts` writable by the test's user before it starts (an
/// anonymous volume is created owned by root): a tar holding only the
/// directory entry, mode 1777, unpacked at `/`.
async fn open_artifacts_dir(docker: &Docker, name: &str) -> Result<(), bollard::errors::Error> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o1777);
    header.set_size(0);
    header.set_mtime(0);
    // `artifacts/`, relative: the archive is unpacked at `/`.
    let dir = format!("{}/", ARTIFACTS_PATH.trim_start_matches('/'));
    builder.append_data(&mut header, &dir, std::io::empty())?;
    let bytes = builder.into_inner()?;
    let options = UploadToContainerOptionsBuilder::new().path("/").build();
    docker
        .upload_to_container(name, Some(options), bollard::body_full(bytes.into()))
        .await
}

fn start_error(
    ctx: &RunContext,
    endpoint: &Endpoint,
    program: &str,
    err: &bollard::errors::Error,
    redactor: &runner_core::Redactor,
) -> ExecutionError {
    let text = err.to_string();
    let missing = [
        "executable file not found",
        "no such file or directory",
        "permission denied",
    ]
    .iter()
    .any(|s| text.to_lowercase().contains(s));
    if missing {
        return ExecutionError::permanent(
            ctx,
            redactor
                .redact(&format!(
                    "cannot start command `{program}` (payload.command[0]) in the container: {}",
                    text.trim()
                ))
                .into_owned(),
        );
    }
    let err: ExecutionError = engine_error(ctx, endpoint, "starting the container", err);
    ExecutionError::new(err.kind(), ctx, redactor.redact(err.message()).into_owned())
}

/// How a run ended, before the engine is asked for the exit status.
enum End {
    Exited,
    Cancelled,
    TimedOut(Duration),
}

#[runner_core::async_trait]
impl RunnerAdapter for ContainerRunner {
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
        let spec: ContainerBench = decode_spec(ctx, &bench.backend, "bench.backend")?;
        self.config
            .sandbox(&spec)
            .map_err(|(field, message)| ProvisionError::invalid_spec(ctx, field, message))?;
        let _: ContainerPayload = decode_spec(ctx, &payload.backend, "payload.backend")?;
        check_payload(payload)
            .map_err(|(field, message)| ProvisionError::invalid_spec(ctx, field, message))?;
        archive::compile(&payload.artifacts)
            .map_err(|(field, message)| ProvisionError::invalid_spec(ctx, field, message))?;
        Ok(())
    }

    async fn provision(
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
                let ours = labels.get(labels::OWNER) == Some(&state.owner)
                    && labels.get(labels::EXECUTION_KEY) == Some(&state.execution_key);
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

    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        let state: ContainerState = handle.decode_in(ctx, RUNNER_TYPE)?;
        let _: ContainerPayload = decode_spec(ctx, &payload.backend, "payload.backend")?;
        check_payload(payload)
            .map_err(|(field, message)| ExecutionError::invalid_spec(ctx, field, message))?;
        let Some(sandbox) = state.sandbox.clone() else {
            return Err(ExecutionError::permanent(
                ctx,
                format!(
                    "the handle of container {} came from leak listing; it can be torn down, not run",
                    state.name
                ),
            ));
        };
        let endpoint = &state.endpoint;
        let redactor = payload.redactor();
        let docker = self.connect(ctx, endpoint)?;
        match docker.inspect_container(&state.name, None).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                return Err(ExecutionError::handle_gone(
                    ctx,
                    format!("container {} is gone (torn down?)", state.name),
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
        // The engine cannot change a container's command: the one made at
        // provision (or by an earlier attempt, maybe still running after its
        // worker died) makes way for one running this payload, under the
        // same name and labels.
        let body = self.create_body(ctx, &state, &sandbox, Some(payload));
        let options = CreateContainerOptionsBuilder::new()
            .name(&state.name)
            .build();
        let mut made = None;
        for _ in 0..3 {
            remove(&docker, &state.name).await.map_err(|e| {
                engine_error(
                    ctx,
                    endpoint,
                    &format!("replacing container {}", state.name),
                    &e,
                )
            })?;
            match docker
                .create_container(Some(options.clone()), body.clone())
                .await
            {
                Ok(created) => {
                    made = Some(created.id);
                    break;
                }
                // Its removal had not finished; try again.
                Err(e) if is_name_conflict(&e) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    let err: ExecutionError = engine_error(
                        ctx,
                        endpoint,
                        &format!("creating container {} from {}", state.name, sandbox.image),
                        &e,
                    );
                    return Err(ExecutionError::new(
                        err.kind(),
                        ctx,
                        redactor.redact(err.message()).into_owned(),
                    ));
                }
            }
        }
        let Some(id) = made else {
            return Err(ExecutionError::transient(
                ctx,
                format!(
                    "container {} could not be replaced (name still in use)",
                    state.name
                ),
            ));
        };
        tracing::debug!(name = %state.name, %id, "test container created");
        open_artifacts_dir(&docker, &state.name)
            .await
            .map_err(|e| {
                engine_error(
                    ctx,
                    endpoint,
                    &format!("preparing {ARTIFACTS_PATH} in container {}", state.name),
                    &e,
                )
            })?;
        if ctx.is_cancelled() {
            return Ok(TestResult::new(TestStatus::Cancelled, Duration::ZERO)
                .with_diagnosis("runner", "cancelled before the container started"));
        }
        docker
            .start_container(&state.name, None)
            .await
            .map_err(|e| start_error(ctx, endpoint, &payload.command[0], &e, &redactor))?;
        let started = Instant::now();

        // The earlier of the payload's own limit and the phase's deadline.
        let limit = payload
            .timeout_seconds
            .map(Duration::from_secs)
            .into_iter()
            .chain(ctx.remaining())
            .min();
        let mut live = LiveLogs::new(ctx.logs().clone(), redactor.clone());
        let follow = async {
            let options = LogsOptionsBuilder::new()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .build();
            let mut stream = docker.logs(&state.name, Some(options));
            let mut outcome = Ok(());
            let mut ended = false;
            while !ended {
                match stream.next().await {
                    Some(Ok(frame)) => live.take(frame).await,
                    Some(Err(e)) => {
                        outcome = Err(e);
                        break;
                    }
                    None => break,
                }
                // Frames already here join the same batch; it goes out as
                // soon as the stream has nothing ready.
                loop {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(frame))) => live.take(frame).await,
                        Some(Some(Err(e))) => {
                            outcome = Err(e);
                            ended = true;
                            break;
                        }
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                live.flush().await;
            }
            live.finish().await;
            outcome
        };
        let wait = wait_exit(&docker, &state.name);
        let run = futures::future::join(follow, wait);
        tokio::pin!(run);
        let sleep = async {
            match limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let (end, waited) = tokio::select! {
            (followed, waited) = &mut run => {
                if let Err(e) = followed {
                    tracing::warn!(error = %e, "the live log stream broke; the collected log is complete");
                }
                (End::Exited, Some(waited))
            }
            _ = ctx.cancel_token().cancelled() => (End::Cancelled, None),
            _ = sleep => (End::TimedOut(limit.unwrap_or_default()), None),
        };
        // Cancelled at the deadline: the worker's time limit fired the
        // token; that is a timeout.
        let end = match (end, limit) {
            (End::Cancelled, Some(limit)) if started.elapsed() >= limit => End::TimedOut(limit),
            (end, _) => end,
        };
        let waited = match (&end, waited) {
            (End::Exited, Some(waited)) => waited,
            _ => {
                self.stop(&docker, &state.name).await;
                // What the test wrote before it stopped still reaches the
                // sink; bounded, in case the engine keeps the stream open.
                tokio::time::timeout(Duration::from_secs(10), &mut run)
                    .await
                    .map(|(_, waited)| waited)
                    .unwrap_or(Ok(()))
            }
        };
        if let Err(e) = waited {
            let err: ExecutionError = engine_error(
                ctx,
                endpoint,
                &format!("waiting for container {}", state.name),
                &e,
            );
            return Err(err);
        }
        let duration = started.elapsed();
        let inspected = docker
            .inspect_container(&state.name, None)
            .await
            .map_err(|e| {
                engine_error(
                    ctx,
                    endpoint,
                    &format!("inspecting container {}", state.name),
                    &e,
                )
            })?;
        let status = inspected.state.unwrap_or_default();
        let exit_code = status.exit_code.and_then(|c| i32::try_from(c).ok());
        let grace = self.config.stop_grace_seconds;
        let result = match end {
            End::Cancelled => TestResult::new(TestStatus::Cancelled, duration).with_diagnosis(
                "runner",
                format!("cancelled; the container was stopped (SIGTERM, SIGKILL after {grace} s)"),
            ),
            End::TimedOut(limit) => TestResult::new(TestStatus::TimedOut, duration)
                .with_diagnosis(
                    "timeout",
                    format!(
                        "test exceeded its limit of {} s; the container was stopped (SIGTERM, SIGKILL after {grace} s)",
                        limit.as_secs()
                    ),
                ),
            End::Exited => exit_result(
                exit_code,
                status.oom_killed.unwrap_or(false),
                sandbox.memory_mb,
                duration,
            ),
        };
        let mut result = result;
        if !matches!(result.status, TestStatus::Passed | TestStatus::Failed) {
            result.exit_code = exit_code;
        }
        ctx.logs()
            .send(
                LogStream::System,
                &format!("test ended: {} in {:.2?}", result.status.as_str(), duration),
            )
            .await;
        Ok(result)
    }

    async fn collect_artifacts(
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

    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        let state: ContainerState = handle.decode_in(ctx, RUNNER_TYPE)?;
        let docker = self.connect(ctx, &state.endpoint)?;
        // Forced: a running container is killed first. No such container
        // is success: teardown is idempotent.
        remove(&docker, &state.name).await.map(|_| ()).map_err(|e| {
            engine_error(
                ctx,
                &state.endpoint,
                &format!("removing container {}", state.name),
                &e,
            )
        })
    }

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, TeardownError> {
        let endpoint = &self.endpoint;
        let docker = self.connect(ctx, endpoint)?;
        let labels = [
            format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            format!("{}={}", labels::OWNER, self.config.owner),
        ];
        let timeout = Duration::from_secs(self.config.request_timeout_seconds);
        let listed = crate::client::list_containers(&docker, endpoint, &labels, timeout)
            .await
            .map_err(|e| engine_error(ctx, endpoint, "listing containers", &e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut owned = Vec::new();
        for container in listed {
            let labels = container.labels.unwrap_or_default();
            // Engines filter by label, but an old one might not: check.
            if labels.get(labels::OWNER) != Some(&self.config.owner) {
                continue;
            }
            let Some(name) = container
                .names
                .first()
                .map(|n| n.trim_start_matches('/').to_owned())
            else {
                continue;
            };
            let key = labels
                .get(labels::EXECUTION_KEY)
                .cloned()
                .unwrap_or_default();
            let worker = labels.get(labels::WORKER).cloned().unwrap_or_default();
            let state = ContainerState {
                endpoint: endpoint.clone(),
                name: name.clone(),
                id: container.id.clone(),
                execution_key: key.clone(),
                worker: worker.clone(),
                owner: self.config.owner.clone(),
                sandbox: None,
            };
            let execution_id = labels
                .get(labels::EXECUTION_ID)
                .cloned()
                .unwrap_or_default();
            let handle = RunnerHandle::new(RUNNER_TYPE, &name, &execution_id, &state)
                .map_err(|e| TeardownError::permanent(ctx, e.to_string()))?;
            let mut resource = OwnedResource::new(&name, handle)
                .with_execution_key(key)
                .with_execution_id(execution_id)
                .with_worker(worker);
            if let Ok(created) = u64::try_from(container.created) {
                resource = resource.with_age_seconds(now.saturating_sub(created));
            }
            owned.push(resource);
        }
        Ok(owned)
    }
}

impl ContainerRunner {
    /// Stop `name`: SIGTERM, SIGKILL after the grace (the engine does both
    /// inside one call); a kill when that call fails.
    async fn stop(&self, docker: &Docker, name: &str) {
        let grace = i32::try_from(self.config.stop_grace_seconds).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(grace).build();
        match docker.stop_container(name, Some(options)).await {
            Ok(()) => {}
            // 304: already stopped.
            Err(e) if matches!(status_of(&e), Some(304 | 404)) => {}
            Err(e) => {
                tracing::warn!(error = %e, container = name, "stop failed; killing");
                let options = KillContainerOptionsBuilder::new().signal("KILL").build();
                if let Err(e) = docker.kill_container(name, Some(options)).await {
                    tracing::warn!(error = %e, container = name, "kill failed");
                }
            }
        }
    }
}

/// Wait until `name` is no longer running. A non-zero exit is not an error
/// here (the exit status is read by inspection); a broken wait is retried a
/// few times while the container still runs.
async fn wait_exit(docker: &Docker, name: &str) -> Result<(), bollard::errors::Error> {
    let mut broken = 0;
    loop {
        let outcome = docker.wait_container(name, None).next().await;
        match outcome {
            Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {
                return Ok(());
            }
            Some(Err(e)) if broken >= 5 => return Err(e),
            Some(Err(e)) if is_not_found(&e) => return Err(e),
            Some(Err(_)) | None => {
                broken += 1;
                tokio::time::sleep(Duration::from_millis(200 * broken)).await;
                if let Ok(inspected) = docker.inspect_container(name, None).await
                    && !inspected.state.and_then(|s| s.running).unwrap_or(false)
                {
                    return Ok(());
                }
            }
        }
    }
}

/// The result of a container that exited by itself.
fn exit_result(
    code: Option<i32>,
    oom_killed: bool,
    memory_mb: u64,
    duration: Duration,
) -> TestResult {
    match code {
        _ if oom_killed => TestResult {
            exit_code: code,
            ..TestResult::new(TestStatus::Failed, duration).with_diagnosis(
                "test",
                format!("killed by the out-of-memory killer: the container's memory limit is {memory_mb} MiB"),
            )
        },
        // Podman on cgroup v1 does not report OOMKilled; a SIGKILL nobody
        // here sent, under a memory limit, is that.
        Some(137) => TestResult::from_exit_code(137, duration).with_diagnosis(
            "test",
            format!(
                "killed by SIGKILL (exit 137) that the runner did not send; the container's memory limit is {memory_mb} MiB, so most likely out of memory"
            ),
        ),
        Some(127) => TestResult::from_exit_code(127, duration).with_diagnosis(
            "test",
            "exit code 127: a command inside the test was not found",
        ),
        Some(code) => TestResult::from_exit_code(code, duration),
        None => TestResult::new(TestStatus::Error, duration)
            .with_diagnosis("runner", "the container ended without an exit code"),
    }
}

fn io_error<P: PhaseMarker>(ctx: &RunContext, what: &str, err: std::io::Error) -> RunnerError<P> {
    let message = format!("{what}: {err}");
    match err.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            RunnerError::permanent(ctx, message)
        }
        _ => RunnerError::transient(ctx, message),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_safe_and_distinct() {
        let a = ContainerRunner::container_name("orch", "key/1");
        let b = ContainerRunner::container_name("orch", "key_1");
        assert_ne!(a, b);
        assert_eq!(a, ContainerRunner::container_name("orch", "key/1"));
        assert!(a.starts_with("orch-key_1-"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }

    #[test]
    fn exit_137_under_a_limit_is_diagnosed_as_memory() {
        let result = exit_result(Some(137), false, 64, Duration::from_secs(1));
        assert_eq!(result.status, TestStatus::Failed);
        let diagnosis = result.diagnosis.unwrap().message;
        assert!(diagnosis.contains("64 MiB"), "{diagnosis}");
        let oom = exit_result(Some(137), true, 64, Duration::from_secs(1));
        assert!(oom.diagnosis.unwrap().message.contains("out-of-memory"));
        assert!(exit_result(Some(0), false, 64, Duration::ZERO).passed());
    }
}
