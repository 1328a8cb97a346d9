#![doc = include_str!("../README.md")]

pub mod api;
mod client;
pub mod config;
pub mod job;
pub mod logs;
mod register;
mod run;
pub mod status;
mod volume;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::api::ListParams;
use runner_aws::ArtifactStore;
use runner_core::{
    ArtifactBundle, ArtifactError, ArtifactKind, BenchSpec, Capabilities, ExecutionError,
    ListOwnedError, OwnedResource, ProvisionError, RunContext, RunnerAdapter, RunnerHandle,
    TeardownError, TestPayload, TestResult, TestStatus, async_trait, decode_spec,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tokio::time::Instant;

pub use api::K8sError;
pub use config::{
    ArtifactsConfig, ArtifactsVolume, BenchBackend, EksConfig, PayloadBackend, Resources,
};
pub use register::register;
use run::{LogOut, check_payload, open_log};
use status::Ended;

/// The runner type in configs and handles.
pub const RUNNER_TYPE: &str = "eks";

/// What a handle carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EksState {
    /// The namespace.
    pub namespace: String,
    /// The Job's name.
    pub job: String,
    /// The execution key the name derives from.
    pub execution_key: String,
    /// The bench's settings (image, node labels, resources).
    #[serde(default)]
    pub bench: BenchBackend,
}

/// Runs tests as Kubernetes Jobs.
#[derive(Clone)]
pub struct EksRunner {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: EksConfig,
    artifacts_dir: PathBuf,
    client: OnceCell<kube::Client>,
    store: OnceCell<Option<ArtifactStore>>,
}

impl std::fmt::Debug for EksRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EksRunner")
            .field("namespace", &self.inner.config.namespace)
            .field("owner", &self.inner.config.owner)
            .finish_non_exhaustive()
    }
}

/// How a run ended, before it becomes a result or an error.
pub(crate) enum RunEnd {
    Ended(Ended),
    Evicted(String),
    PullFailed(String),
    Gone(String),
}

#[async_trait]
impl RunnerAdapter for EksRunner {
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
        let backend: BenchBackend = decode_spec(ctx, &bench.backend, "bench.backend")?;
        backend
            .validate()
            .map_err(|(key, message)| ProvisionError::invalid_spec(ctx, key, message))?;
        let _: PayloadBackend = decode_spec(ctx, &payload.backend, "payload.backend")?;
        Ok(())
    }

    async fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        let backend: BenchBackend = decode_spec(ctx, &bench.backend, "bench.backend")?;
        backend
            .validate()
            .map_err(|(key, message)| ProvisionError::invalid_spec(ctx, key, message))?;
        let config = &self.inner.config;
        let (jobs, _, _) = self.apis(ctx, &config.namespace).await?;
        api::retry(
            self.attempts(),
            &format!("list jobs in {}", config.namespace),
            || async { jobs.list(&ListParams::default().limit(1)).await },
        )
        .await
        .map_err(|e| e.into_runner(ctx))?;
        let name = job::job_name(&config.owner, ctx.execution_key());
        let state = EksState {
            namespace: config.namespace.clone(),
            job: name.clone(),
            execution_key: ctx.execution_key().to_string(),
            bench: backend,
        };
        RunnerHandle::new(
            RUNNER_TYPE,
            format!("{}/{name}", config.namespace),
            ctx.execution_id(),
            &state,
        )
        .map_err(|e| ProvisionError::permanent(ctx, e.to_string()))
    }

    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        let state: EksState = handle.decode_in(ctx, RUNNER_TYPE)?;
        check_payload(ctx, payload)?;
        let started = std::time::Instant::now();
        let log_path = self
            .local_log_path(ctx.execution_id())
            .map_err(|e| ExecutionError::permanent(ctx, e))?;
        let file = match open_log(&log_path) {
            Ok(f) => Some(tokio::io::BufWriter::new(tokio::fs::File::from_std(f))),
            Err(e) => {
                return Err(ExecutionError::permanent(
                    ctx,
                    format!("cannot write the log file {}: {e}", log_path.display()),
                ));
            }
        };
        let mut out = LogOut {
            sink: ctx.logs().clone(),
            file,
            redactor: payload.redactor(),
            lines: 0,
        };
        let deadline = payload
            .timeout_seconds
            .map(|s| Instant::now() + Duration::from_secs(s))
            .into_iter()
            .chain(ctx.deadline().map(Instant::from_std))
            .min();
        let stop = async {
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = ctx.cancel_token().cancelled() => TestStatus::Cancelled,
                        _ = tokio::time::sleep_until(d) => TestStatus::TimedOut,
                    }
                }
                None => {
                    ctx.cancel_token().cancelled().await;
                    TestStatus::Cancelled
                }
            }
        };
        let outcome = tokio::select! {
            result = self.run_job(ctx, &state, payload, started, &mut out) => Ok(result),
            stopped = stop => Err(stopped),
        };
        if let Some(file) = &mut out.file
            && let Err(e) = file.flush().await
        {
            tracing::warn!(error = %e, "could not flush the local log");
        }
        match outcome {
            Ok(result) => result,
            Err(status) => {
                // Stop the test where it runs: delete the Job (and its pod).
                let why = match status {
                    TestStatus::Cancelled => "cancelled",
                    _ => "timed out",
                };
                if let Ok((jobs, _, _)) = self
                    .apis::<runner_core::phase::RunTestPhase>(ctx, &state.namespace)
                    .await
                    && let Err(e) = self.delete_job(&jobs, &state.job).await
                {
                    tracing::warn!(job = %state.job, error = %e, "could not delete the Job after the run was {why}");
                }
                Ok(TestResult::new(status, started.elapsed()).with_diagnosis(
                    "eks",
                    format!("the run was {why}; Job {} deleted", state.job),
                ))
            }
        }
    }

    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        let _state: EksState = handle.decode_in(ctx, RUNNER_TYPE)?;
        let mut bundle = ArtifactBundle::default();
        if let Some((volume, dir)) = self.inner.config.volume_dir(ctx.execution_id()) {
            let to =
                runner_core::safe_path::safe_join(&self.inner.artifacts_dir, ctx.execution_id())
                    .map_err(|e| ArtifactError::permanent(ctx, e.to_string()))?
                    .join("artifacts");
            bundle.artifacts =
                volume::collect(volume.worker_path.join(dir), to, payload.redactor())
                    .await
                    .map_err(|e| ArtifactError::permanent(ctx, e).with_backend(RUNNER_TYPE))?;
        }
        if let Some(store) = self.store().await
            && let Some(prefix) = self.inner.config.execution_prefix(ctx.execution_id())
        {
            bundle = store
                .collect(&format!("{prefix}artifacts/"), |_| ArtifactKind::File)
                .await
                .map_err(|e| e.into_runner(ctx))?;
            // The sidecar uploads what the test wrote, raw: with secrets to
            // hide, each object is rewritten redacted in place.
            store
                .redact_artifacts(
                    &mut bundle.artifacts,
                    &payload.redactor(),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|e| e.into_runner(ctx))?;
        }
        let log_path = self
            .local_log_path(ctx.execution_id())
            .map_err(|e| ArtifactError::permanent(ctx, e))?;
        if log_path.exists() {
            let mut name = "logs/output.log".to_string();
            if bundle.artifacts.iter().any(|a| a.name == name) {
                name = "logs/pod-output.log".into();
            }
            let artifact = runner_core::kit::describe_file(name, ArtifactKind::Log, &log_path)
                .await
                .map_err(|e| {
                    ArtifactError::transient(
                        ctx,
                        format!("reading the log {}: {e}", log_path.display()),
                    )
                })?;
            bundle.artifacts.insert(0, artifact);
        }
        Ok(bundle)
    }

    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        let state: EksState = handle.decode_in(ctx, RUNNER_TYPE)?;
        let (jobs, _, secrets) = self.apis(ctx, &state.namespace).await?;
        self.delete_job(&jobs, &state.job)
            .await
            .map_err(|e| e.into_runner(ctx))?;
        self.delete_secret(&secrets, &job::secret_name(&state.job))
            .await
            .map_err(|e| e.into_runner(ctx))
    }

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
        let config = &self.inner.config;
        let (jobs, _, secrets) = self.apis(ctx, &config.namespace).await?;
        let selector = format!(
            "{}={},{}={}",
            job::MANAGED_BY_KEY,
            job::MANAGED_BY,
            job::OWNER,
            config.owner
        );
        let params = ListParams::default().labels(&selector);
        let listed_jobs = api::retry(self.attempts(), "list owned jobs", || async {
            jobs.list(&params).await
        })
        .await
        .map_err(|e| e.into_runner(ctx))?;
        // A Secret whose Job never came to be (the worker died between the
        // two): its ownerReference was never set, so nothing else removes it.
        let listed_secrets = api::retry(self.attempts(), "list owned secrets", || async {
            secrets.list(&params).await
        })
        .await
        .map_err(|e| e.into_runner(ctx))?;
        let now = jiff::Timestamp::now();
        let job_names: std::collections::BTreeSet<String> = listed_jobs
            .items
            .iter()
            .filter_map(|j| j.metadata.name.clone())
            .collect();
        let found = listed_jobs
            .items
            .into_iter()
            .filter_map(|j| Some((j.metadata.name.clone()?, j.metadata)))
            .chain(listed_secrets.items.into_iter().filter_map(|s| {
                let job = s.metadata.labels.as_ref()?.get(job::JOB_LABEL)?.clone();
                (!job_names.contains(&job)).then_some((job, s.metadata))
            }));
        let mut owned = Vec::new();
        for (name, metadata) in found {
            let annotations = metadata.annotations.unwrap_or_default();
            let execution_id = annotations.get(job::EXECUTION_ID).cloned();
            let execution_key = annotations.get(job::EXECUTION_KEY).cloned();
            let age = metadata
                .creation_timestamp
                .as_ref()
                .map(|t| now.duration_since(t.0).as_secs().max(0) as u64);
            // The Job's handle either way: teardown deletes the Job (a 404
            // is success) and its Secret.
            let handle = RunnerHandle::new(
                RUNNER_TYPE,
                format!("{}/{name}", config.namespace),
                execution_id.clone().unwrap_or_default(),
                &EksState {
                    namespace: config.namespace.clone(),
                    job: name.clone(),
                    execution_key: execution_key.clone().unwrap_or_default(),
                    bench: BenchBackend::default(),
                },
            )
            .map_err(|e| ListOwnedError::permanent(ctx, e.to_string()))?;
            let mut resource = OwnedResource::new(format!("{}/{name}", config.namespace), handle)
                .with_worker(annotations.get(job::WORKER).cloned().unwrap_or_default());
            if let Some(id) = execution_id {
                resource = resource.with_execution_id(id);
            }
            if let Some(key) = execution_key {
                resource = resource.with_execution_key(key);
            }
            if let Some(age) = age {
                resource = resource.with_age_seconds(age);
            }
            owned.push(resource);
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::result_of;

    #[test]
    fn results_from_container_ends() {
        let d = Duration::from_secs(1);
        let end = |code, reason: &str| Ended {
            exit_code: code,
            reason: Some(reason.into()),
            message: None,
        };
        assert_eq!(
            result_of(&end(0, "Completed"), None, d).status,
            TestStatus::Passed
        );
        let failed = result_of(&end(3, "Error"), None, d);
        assert_eq!(
            (failed.status, failed.exit_code),
            (TestStatus::Failed, Some(3))
        );
        let oom = result_of(&end(137, "OOMKilled"), None, d);
        assert_eq!(oom.status, TestStatus::Failed);
        assert!(oom.diagnosis.unwrap().message.contains("OOMKilled"));
        let late = result_of(&end(137, "Error"), Some("too long".into()), d);
        assert_eq!(late.status, TestStatus::TimedOut);
    }
}
