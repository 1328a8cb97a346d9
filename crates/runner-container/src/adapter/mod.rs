//! The `RunnerAdapter` implementation over the Docker Engine API.

mod collect;
mod create;
mod run;

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use runner_core::phase::PhaseMarker;
use runner_core::{
    ArtifactBundle, ArtifactError, BenchSpec, Capabilities, ConfigError, ExecutionError,
    ListOwnedError, OwnedResource, ProvisionError, RunContext, RunnerAdapter, RunnerConfig,
    RunnerError, RunnerHandle, TeardownError, TestPayload, TestResult, decode_spec,
};
use serde::{Deserialize, Serialize};

use crate::client::{Endpoint, engine_error, is_not_found, status_of};
use crate::config::{ContainerBench, ContainerConfig, ContainerPayload, Sandbox, check_payload};
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

#[runner_core::async_trait]
impl RunnerAdapter for ContainerRunner {
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
        self.provision_container(ctx, bench).await
    }
    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        self.run_in_container(ctx, handle, payload).await
    }
    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        self.collect_from_container(ctx, handle, payload).await
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

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
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
                .map_err(|e| ListOwnedError::permanent(ctx, e.to_string()))?;
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

fn io_error<P: PhaseMarker>(ctx: &RunContext, what: &str, err: std::io::Error) -> RunnerError<P> {
    let message = format!("{what}: {err}");
    match err.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            RunnerError::permanent(ctx, message)
        }
        _ => RunnerError::transient(ctx, message),
    }
}

#[cfg(test)]
mod tests {
    use runner_core::TestStatus;

    use super::run::exit_result;
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
