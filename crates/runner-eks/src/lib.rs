#![doc = include_str!("../README.md")]

pub mod api;
pub mod config;
pub mod job;
pub mod logs;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use runner_core::{
    Artifact, ArtifactBundle, ArtifactError, ArtifactKind, BenchSpec, Capabilities, ConfigError,
    ErrorKind, ExecutionError, LogStream, OwnedResource, PhaseMarker, ProvisionError, Redactor,
    RunContext, RunnerAdapter, RunnerConfig, RunnerError, RunnerHandle, TeardownError, TestPayload,
    TestResult, TestStatus, async_trait, decode_spec,
};
use runner_s3::ArtifactStore;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tokio::time::Instant;

pub use api::K8sError;
pub use config::{ArtifactsConfig, BenchBackend, EksConfig, PayloadBackend, Resources};
use status::{Ended, PodState};

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

struct Inner {
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
enum RunEnd {
    Ended(Ended),
    Evicted(String),
    PullFailed(String),
    Gone(String),
}

impl EksRunner {
    /// A runner over validated settings; the client comes from the
    /// kubeconfig (or the in-cluster account) on first use.
    pub fn new(config: EksConfig, artifacts_dir: PathBuf) -> Result<EksRunner, ConfigError> {
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        Ok(EksRunner {
            inner: Arc::new(Inner {
                config,
                artifacts_dir,
                client: OnceCell::new(),
                store: OnceCell::new(),
            }),
        })
    }

    /// From a runner config's `backend:` section.
    pub fn from_config(config: &RunnerConfig) -> Result<EksRunner, ConfigError> {
        EksRunner::new(
            config.backend_section::<EksConfig>()?,
            config.artifacts_dir.clone(),
        )
    }

    /// A runner over a given client (and S3 client when artifacts are
    /// configured): tests, or callers with their own set-up. Build the
    /// client with `default_retry = false`: kube's own retry of 429/503
    /// backs off for up to 1000 s; the runner retries, bounded, itself.
    pub fn with_clients(
        config: EksConfig,
        artifacts_dir: PathBuf,
        client: kube::Client,
        s3: Option<aws_sdk_s3::Client>,
    ) -> Result<EksRunner, ConfigError> {
        let runner = EksRunner::new(config, artifacts_dir)?;
        let _ = runner.inner.client.set(client);
        let store = match (s3, &runner.inner.config.artifacts) {
            (Some(s3), Some(a)) => Some(ArtifactStore::new(s3, a.bucket.clone())),
            _ => None,
        };
        if store.is_some() {
            let _ = runner.inner.store.set(store);
        }
        Ok(runner)
    }

    /// The settings.
    pub fn config(&self) -> &EksConfig {
        &self.inner.config
    }

    async fn client(&self) -> Result<kube::Client, K8sError> {
        let config = &self.inner.config;
        self.inner
            .client
            .get_or_try_init(|| async {
                let options = KubeConfigOptions {
                    context: config.context.clone(),
                    ..Default::default()
                };
                let kube_config = match &config.kubeconfig {
                    Some(path) => {
                        let file = Kubeconfig::read_from(path).map_err(|e| {
                            config_error(format!("kubeconfig {}: {e}", path.display()))
                        })?;
                        kube::Config::from_custom_kubeconfig(file, &options)
                            .await
                            .map_err(|e| {
                                config_error(format!("kubeconfig {}: {e}", path.display()))
                            })?
                    }
                    None if config.context.is_some() => kube::Config::from_kubeconfig(&options)
                        .await
                        .map_err(|e| config_error(format!("kubeconfig: {e}")))?,
                    None => kube::Config::infer().await.map_err(|e| {
                        config_error(format!("no kubeconfig and not in a cluster: {e}"))
                    })?,
                };
                // kube's own retry of 429/503/504 backs off up to 1000 s, 15
                // times; the runner's bounded retry ([`api::retry`]) is used instead.
                let mut kube_config = kube_config;
                kube_config.default_retry = false;
                kube::Client::try_from(kube_config)
                    .map_err(|e| config_error(format!("kubernetes client: {e}")))
            })
            .await
            .cloned()
    }

    async fn store(&self) -> Option<ArtifactStore> {
        let artifacts = self.inner.config.artifacts.clone();
        self.inner
            .store
            .get_or_init(|| async move {
                let a = artifacts?;
                let sdk = runner_s3::load_sdk_config(a.region.as_deref()).await;
                Some(ArtifactStore::new(
                    runner_s3::s3_client(&sdk, a.force_path_style),
                    a.bucket,
                ))
            })
            .await
            .clone()
    }

    fn attempts(&self) -> u32 {
        self.inner.config.attempts
    }

    fn local_log_path(&self, execution_id: &str) -> Result<PathBuf, String> {
        let dir = runner_core::safe_path::safe_join(&self.inner.artifacts_dir, execution_id)
            .map_err(|e| e.to_string())?;
        Ok(dir.join("logs").join("output.log"))
    }

    async fn apis<P: PhaseMarker>(
        &self,
        ctx: &RunContext,
        namespace: &str,
    ) -> Result<(Api<Job>, Api<Pod>, Api<Secret>), RunnerError<P>> {
        let client = self.client().await.map_err(|e| e.into_runner(ctx))?;
        Ok((
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client, namespace),
        ))
    }

    /// Create the Job; an existing one of this attempt is adopted, one of
    /// an earlier attempt deleted first. Returns the Job's uid.
    async fn create_job(
        &self,
        ctx: &RunContext,
        jobs: &Api<Job>,
        manifest: &Job,
        name: &str,
    ) -> Result<Option<String>, ExecutionError> {
        let attempts = self.attempts();
        for _ in 0..3 {
            let created = api::retry(attempts, &format!("create job {name}"), || async {
                jobs.create(&PostParams::default(), manifest).await
            })
            .await;
            let err = match created {
                Ok(job) => return Ok(job.metadata.uid),
                Err(e) if e.is_already_exists() => e,
                Err(e) if e.is_not_found() => {
                    return Err(ExecutionError::permanent(
                        ctx,
                        format!(
                            "{e} (does namespace {:?} exist?)",
                            self.inner.config.namespace
                        ),
                    )
                    .with_backend(RUNNER_TYPE));
                }
                Err(e) => return Err(e.into_runner(ctx)),
            };
            let existing = api::retry(attempts, &format!("get job {name}"), || jobs.get_opt(name))
                .await
                .map_err(|e| e.into_runner(ctx))?;
            let Some(existing) = existing else {
                continue; // deleted meanwhile: create again
            };
            let annotations = existing.metadata.annotations.clone().unwrap_or_default();
            let same_attempt = annotations.get(job::ATTEMPT) == Some(&ctx.attempt().to_string())
                && annotations.get(job::EXECUTION_KEY).map(String::as_str)
                    == Some(ctx.execution_key());
            if same_attempt && existing.metadata.deletion_timestamp.is_none() {
                tracing::info!(job = %name, "adopting the Job of a redelivered attempt");
                ctx.logs()
                    .send(
                        LogStream::System,
                        &format!("eks: Job {name} already exists for this attempt; following it"),
                    )
                    .await;
                return Ok(existing.metadata.uid);
            }
            tracing::info!(job = %name, err = %err, "deleting the Job of an earlier attempt");
            self.delete_job(jobs, name)
                .await
                .map_err(|e| e.into_runner(ctx))?;
            self.wait_gone(ctx, jobs, name).await?;
        }
        Err(ExecutionError::transient(
            ctx,
            format!("job {name} kept existing after it was deleted"),
        )
        .with_backend(RUNNER_TYPE))
    }

    async fn delete_job(&self, jobs: &Api<Job>, name: &str) -> Result<(), K8sError> {
        match api::retry(self.attempts(), &format!("delete job {name}"), || async {
            jobs.delete(name, &DeleteParams::background()).await
        })
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn wait_gone(
        &self,
        ctx: &RunContext,
        jobs: &Api<Job>,
        name: &str,
    ) -> Result<(), ExecutionError> {
        let limit = Duration::from_secs(120);
        if self
            .poll_until(ctx, jobs, name, limit, Option::is_none)
            .await?
        {
            return Ok(());
        }
        Err(ExecutionError::transient(
            ctx,
            format!("job {name} of an earlier attempt was still being deleted after 120 s"),
        )
        .with_backend(RUNNER_TYPE))
    }

    /// Get object `name` (each get retried, bounded) until `done` holds for
    /// what was found (`None`: it is gone), backing off from 50 ms to 2 s;
    /// `false` when `limit` passed first.
    async fn poll_until<K>(
        &self,
        ctx: &RunContext,
        api: &Api<K>,
        name: &str,
        limit: Duration,
        done: impl Fn(&Option<K>) -> bool,
    ) -> Result<bool, ExecutionError>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let what = format!("get {} {name}", K::kind(&()).to_lowercase());
        let until = Instant::now() + limit;
        let mut delay = Duration::from_millis(50);
        loop {
            let found = api::retry(self.attempts(), &what, || api.get_opt(name))
                .await
                .map_err(|e| e.into_runner(ctx))?;
            if done(&found) {
                return Ok(true);
            }
            if Instant::now() + delay > until {
                return Ok(false);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// The test pod's name once it runs (or has already ended), or how it
    /// failed to get there.
    async fn wait_for_pod(
        &self,
        ctx: &RunContext,
        jobs: &Api<Job>,
        pods: &Api<Pod>,
        name: &str,
        start_deadline: Instant,
    ) -> Result<Result<String, RunEnd>, ExecutionError> {
        let selector = format!("{}={name}", job::JOB_LABEL);
        let mut last_reported: Option<String> = None;
        loop {
            let list = api::retry(self.attempts(), &format!("list pods of {name}"), || async {
                pods.list(&ListParams::default().labels(&selector)).await
            })
            .await
            .map_err(|e| e.into_runner(ctx))?;
            let version = list.metadata.resource_version.clone().unwrap_or_default();
            let mut newest = newest_pod(list.items);
            if newest.is_none() {
                // No pod: the Job may have failed without one (deadline).
                let job = api::retry(self.attempts(), &format!("get job {name}"), || {
                    jobs.get_opt(name)
                })
                .await
                .map_err(|e| e.into_runner(ctx))?;
                match job {
                    None => {
                        return Ok(Err(RunEnd::Gone(format!(
                            "job {name} was deleted before its pod ran"
                        ))));
                    }
                    Some(job) => {
                        if let Some(message) = status::deadline_exceeded(&job) {
                            return Ok(Err(RunEnd::Ended(Ended {
                                exit_code: -1,
                                reason: Some("DeadlineExceeded".into()),
                                message: Some(message),
                            })));
                        }
                    }
                }
            }
            // Watch from the list's version until something decides it.
            let remaining = start_deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let why = last_reported.unwrap_or_else(|| "no pod was scheduled".into());
                return Err(ExecutionError::new(
                    ErrorKind::Capacity,
                    ctx,
                    format!("the pod of job {name} did not start in time: {why}"),
                )
                .with_backend(RUNNER_TYPE));
            }
            if let Some(pod) = newest.take()
                && let Some(decided) = self.decide(ctx, &pod, &mut last_reported).await
            {
                return Ok(decided);
            }
            let params = WatchParams::default()
                .labels(&selector)
                .timeout(remaining.as_secs().clamp(1, 60) as u32);
            let watched = pods.watch(&params, &version).await;
            let stream = match watched {
                Ok(stream) => stream,
                Err(e) => {
                    let err = K8sError::classify(&format!("watch pods of {name}"), &e);
                    if err.kind != ErrorKind::Transient {
                        return Err(err.into_runner(ctx));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            let watch_end = tokio::time::sleep_until(start_deadline);
            tokio::pin!(watch_end);
            loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    _ = &mut watch_end => None,
                };
                match event {
                    Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                        if let Some(decided) = self.decide(ctx, &pod, &mut last_reported).await {
                            return Ok(decided);
                        }
                    }
                    Some(Ok(WatchEvent::Deleted(_))) => break,
                    Some(Ok(WatchEvent::Bookmark(_))) => {}
                    // 410 Gone and the like: list again.
                    Some(Ok(WatchEvent::Error(_))) | Some(Err(_)) | None => break,
                }
            }
        }
    }

    async fn decide(
        &self,
        ctx: &RunContext,
        pod: &Pod,
        last_reported: &mut Option<String>,
    ) -> Option<Result<String, RunEnd>> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        match status::pod_state(pod, job::TEST_CONTAINER) {
            PodState::Running | PodState::Ended(_) => Some(Ok(name)),
            PodState::PullFailed(m) => Some(Err(RunEnd::PullFailed(m))),
            PodState::Evicted(m) => Some(Err(RunEnd::Evicted(m))),
            PodState::Starting(why) => {
                if let Some(why) = why
                    && last_reported.as_ref() != Some(&why)
                {
                    ctx.logs()
                        .send(
                            LogStream::System,
                            &format!("eks: pod {name} waiting: {why}"),
                        )
                        .await;
                    *last_reported = Some(why);
                }
                None
            }
        }
    }

    /// Follow the test container's log until it ends; the end state.
    async fn follow(
        &self,
        ctx: &RunContext,
        client: &kube::Client,
        pods: &Api<Pod>,
        namespace: &str,
        pod: &str,
        out: &mut LogOut,
    ) -> Result<RunEnd, ExecutionError> {
        let mut resume = logs::Resume::new();
        let mut quiet = 0u32;
        let mut ended: Option<RunEnd> = None;
        loop {
            let before = resume.emitted();
            // While the container runs: follow. Once it has ended: read
            // what is left from the last line, until a read completes.
            let read = read_log(client, namespace, pod, &mut resume, ended.is_none(), out).await;
            match (&read, ended.is_some()) {
                (Ok(()), true) => break,
                (Err(e), _) => {
                    tracing::debug!(%pod, error = %e, "log stream broke; resuming from the last line")
                }
                (Ok(()), false) => {}
            }
            if ended.is_none() {
                ended = self.pod_end(ctx, pods, pod).await?;
            }
            if resume.emitted() == before {
                quiet += 1;
                if quiet > self.inner.config.log_reconnects {
                    let message = format!(
                        "the log stream of pod {pod} broke {quiet} times in a row without a new line"
                    );
                    if ended.is_some() {
                        // The test is over; its result stands, the log may lack its end.
                        tracing::warn!(%pod, "{message}; the log may be incomplete");
                        out.sink
                            .send(
                                LogStream::System,
                                &format!("eks: {message}; the log may be incomplete"),
                            )
                            .await;
                        break;
                    }
                    return Err(ExecutionError::transient(ctx, message).with_backend(RUNNER_TYPE));
                }
                tokio::time::sleep(Duration::from_millis(50 * u64::from(quiet.min(40)))).await;
            } else {
                quiet = 0;
            }
        }
        Ok(ended.unwrap_or_else(|| RunEnd::Gone(format!("pod {pod} ended without a status"))))
    }

    /// `Some(end)` once the test container has ended (or the pod is gone);
    /// `None` while it still runs.
    async fn pod_end(
        &self,
        ctx: &RunContext,
        pods: &Api<Pod>,
        pod: &str,
    ) -> Result<Option<RunEnd>, ExecutionError> {
        let mut delay = Duration::from_millis(50);
        // The log can end a moment before the status says so; look a few times.
        for _ in 0..6 {
            let found = api::retry(self.attempts(), &format!("get pod {pod}"), || {
                pods.get_opt(pod)
            })
            .await
            .map_err(|e| e.into_runner(ctx))?;
            let Some(found) = found else {
                return Ok(Some(RunEnd::Gone(format!(
                    "pod {pod} disappeared while its test ran"
                ))));
            };
            match status::pod_state(&found, job::TEST_CONTAINER) {
                PodState::Ended(end) => return Ok(Some(RunEnd::Ended(end))),
                PodState::Evicted(m) => return Ok(Some(RunEnd::Evicted(m))),
                PodState::PullFailed(m) => return Ok(Some(RunEnd::PullFailed(m))),
                PodState::Running | PodState::Starting(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Ok(None)
    }

    /// With an uploader sidecar, the test container's end is not the
    /// pod's: the sidecar copies the artifacts after it. Wait (bounded by
    /// the upload timeout) until the pod has finished, so collect sees
    /// every file.
    async fn wait_for_uploader(
        &self,
        ctx: &RunContext,
        pods: &Api<Pod>,
        pod: &str,
    ) -> Result<(), ExecutionError> {
        let Some(artifacts) = self
            .inner
            .config
            .artifacts
            .as_ref()
            .filter(|a| a.uploader_image.is_some())
        else {
            return Ok(());
        };
        // The kubelet kills the sidecar after its grace period; a little
        // more for the status to reach the API server.
        let limit = Duration::from_secs(artifacts.upload_timeout_seconds + 5);
        // Gone (TTL, deleted) or finished: the upload is over either way.
        let finished = |found: &Option<Pod>| {
            let phase = found
                .as_ref()
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref());
            found.is_none() || matches!(phase, Some("Succeeded" | "Failed"))
        };
        if !self.poll_until(ctx, pods, pod, limit, finished).await? {
            let message = format!(
                "eks: the uploader of pod {pod} had not finished {} s after the test ended; artifacts may be incomplete",
                limit.as_secs()
            );
            tracing::warn!(%pod, "{message}");
            ctx.logs().send(LogStream::System, &message).await;
        }
        Ok(())
    }

    async fn run_job(
        &self,
        ctx: &RunContext,
        state: &EksState,
        payload: &TestPayload,
        started: std::time::Instant,
        out: &mut LogOut,
    ) -> Result<TestResult, ExecutionError> {
        let (jobs, pods, secrets) = self.apis(ctx, &state.namespace).await?;
        let config = &self.inner.config;
        let payload_backend: PayloadBackend =
            decode_spec(ctx, &payload.backend, "payload.backend")?;
        let image = payload_backend
            .image
            .or_else(|| state.bench.image.clone())
            .or_else(|| config.image.clone())
            .ok_or_else(|| {
                ExecutionError::invalid_spec(
                    ctx,
                    "payload.backend.image",
                    "no image: set backend.image in the runner config, the bench or the payload",
                )
            })?;
        let ids = job::Ids {
            execution_id: ctx.execution_id(),
            correlation_id: ctx.correlation_id(),
            execution_key: ctx.execution_key(),
            attempt: ctx.attempt(),
            worker: ctx.worker_id(),
        };
        // The smaller of the test's own limit and the phase's deadline: a
        // Job whose worker died then still ends on its own.
        let timeout = match (
            payload.timeout_seconds.map(Duration::from_secs),
            ctx.remaining(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let store_uri = config
            .execution_prefix(ctx.execution_id())
            .zip(config.artifacts.as_ref())
            .map(|(prefix, a)| format!("s3://{}/{prefix}artifacts/", a.bucket));
        let secret = job::secret_manifest(config, &ids, &state.job, payload);
        let secret_name = job::secret_name(&state.job);
        if let Some(secret) = &secret {
            match api::retry(self.attempts(), "create secret", || async {
                secrets.create(&PostParams::default(), secret).await
            })
            .await
            {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {
                    // A redelivery: replace it with this payload's values.
                    self.delete_secret(&secrets, &secret_name)
                        .await
                        .map_err(|e| e.into_runner(ctx))?;
                    api::retry(self.attempts(), "create secret", || async {
                        secrets.create(&PostParams::default(), secret).await
                    })
                    .await
                    .map_err(|e| e.into_runner(ctx))?;
                }
                Err(e) => return Err(e.into_runner(ctx)),
            }
        }
        let resources = state.bench.resources.as_ref().unwrap_or(&config.resources);
        let manifest = job::job_manifest(&job::JobSpec {
            config,
            name: &state.job,
            ids,
            image: &image,
            node_selector: &state.bench.node_selector,
            resources,
            payload,
            deadline_seconds: timeout.map(|t| t.as_secs_f64().ceil() as i64),
            secret: secret.as_ref().map(|_| secret_name.as_str()),
            artifacts_uri: store_uri.as_deref(),
        })
        .map_err(|e| ExecutionError::permanent(ctx, format!("building the Job manifest: {e}")))?;
        let uid = self.create_job(ctx, &jobs, &manifest, &state.job).await?;
        if let (Some(_), Some(uid)) = (&secret, uid) {
            // Owned by the Job: when the Job goes (teardown, or its TTL after
            // a worker crash) Kubernetes deletes the Secret with it.
            let owner = serde_json::json!({"metadata": {"ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": state.job, "uid": uid,
            }]}});
            let patched = api::retry(self.attempts(), "patch secret owner", || async {
                secrets
                    .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&owner))
                    .await
            })
            .await;
            if let Err(e) = patched {
                tracing::warn!(secret = %secret_name, error = %e, "the Secret is not owned by its Job; teardown still deletes it");
            }
        }
        ctx.logs()
            .send(
                LogStream::System,
                &format!(
                    "eks: job {}/{} created, image {image}",
                    state.namespace, state.job
                ),
            )
            .await;
        let start_deadline = Instant::now() + Duration::from_secs(config.pod_start_timeout_seconds);
        let start_deadline = match ctx.deadline() {
            Some(d) => start_deadline.min(Instant::from_std(d)),
            None => start_deadline,
        };
        let mut pod_name = None;
        let end = match self
            .wait_for_pod(ctx, &jobs, &pods, &state.job, start_deadline)
            .await?
        {
            Ok(pod) => {
                let client = self.client().await.map_err(|e| e.into_runner(ctx))?;
                let end = self
                    .follow(ctx, &client, &pods, &state.namespace, &pod, out)
                    .await?;
                pod_name = Some(pod);
                end
            }
            Err(end) => end,
        };
        let elapsed = started.elapsed();
        if let (RunEnd::Ended(_), Some(pod)) = (&end, &pod_name) {
            self.wait_for_uploader(ctx, &pods, pod).await?;
        }
        match end {
            RunEnd::Ended(end) => {
                let job_deadline = if end.exit_code != 0 {
                    api::retry(self.attempts(), "get job", || jobs.get_opt(&state.job))
                        .await
                        .ok()
                        .flatten()
                        .and_then(|j| status::deadline_exceeded(&j))
                } else {
                    None
                };
                Ok(result_of(&end, job_deadline, elapsed))
            }
            RunEnd::Evicted(m) => Err(ExecutionError::transient(ctx, m).with_backend(RUNNER_TYPE)),
            RunEnd::PullFailed(m) => {
                Err(ExecutionError::permanent(ctx, m).with_backend(RUNNER_TYPE))
            }
            RunEnd::Gone(m) => Err(ExecutionError::transient(ctx, m).with_backend(RUNNER_TYPE)),
        }
    }

    async fn delete_secret(&self, secrets: &Api<Secret>, name: &str) -> Result<(), K8sError> {
        match api::retry(
            self.attempts(),
            &format!("delete secret {name}"),
            || async { secrets.delete(name, &DeleteParams::default()).await },
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn config_error(message: String) -> K8sError {
    K8sError {
        kind: ErrorKind::Permanent,
        code: None,
        reason: "Config".into(),
        message,
    }
}

fn newest_pod(mut pods: Vec<Pod>) -> Option<Pod> {
    pods.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    pods.pop()
}

fn result_of(end: &Ended, job_deadline: Option<String>, elapsed: Duration) -> TestResult {
    let reason = end.reason.as_deref().unwrap_or("");
    if end.exit_code == 0 {
        return TestResult::from_exit_code(0, elapsed);
    }
    if reason == "DeadlineExceeded" || job_deadline.is_some() {
        let mut result = TestResult::new(TestStatus::TimedOut, elapsed);
        result.exit_code = (end.exit_code >= 0).then_some(end.exit_code);
        return result.with_diagnosis(
            "eks",
            format!(
                "the Job's activeDeadlineSeconds passed: {}",
                job_deadline
                    .or_else(|| end.message.clone())
                    .unwrap_or_default()
            ),
        );
    }
    let result = TestResult::from_exit_code(end.exit_code, elapsed);
    if end.oom_killed() {
        return result.with_diagnosis(
            "eks",
            format!(
                "the test container was OOMKilled (exit {}): it went over its memory limit",
                end.exit_code
            ),
        );
    }
    match &end.message {
        Some(m) if !m.is_empty() => result.with_diagnosis("eks", format!("{reason}: {m}")),
        _ => result,
    }
}

/// Where followed log lines go: the context's sink and the local log file
/// (redacted).
struct LogOut {
    sink: runner_core::LogSink,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    redactor: Redactor,
    lines: u64,
}

impl LogOut {
    async fn emit(&mut self, text: &str) {
        self.lines += 1;
        self.sink.send(LogStream::Stdout, text).await;
        if let Some(file) = &mut self.file {
            let line = self.redactor.redact(text);
            let written = async {
                file.write_all(line.as_bytes()).await?;
                file.write_all(b"\n").await
            }
            .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "could not write the local log; going on without it");
                self.file = None;
            }
        }
    }
}

/// One log connection: `follow` or not, from where `resume` left off.
///
/// The request is built here rather than with kube's `LogParams`, which
/// rounds `sinceTime` to whole seconds: the API server takes RFC 3339 with
/// nanoseconds, so a resumed stream starts at the last line, not up to a
/// second before it.
async fn read_log(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    resume: &mut logs::Resume,
    follow: bool,
    out: &mut LogOut,
) -> Result<(), kube::Error> {
    resume.new_connection();
    let mut query = url_query(&[
        ("container", job::TEST_CONTAINER),
        ("timestamps", "true"),
        ("follow", if follow { "true" } else { "false" }),
    ]);
    if let Some(since) = resume.since() {
        query.push_str("&sinceTime=");
        query.push_str(&percent(
            &since.strftime("%Y-%m-%dT%H:%M:%S.%9fZ").to_string(),
        ));
    }
    let uri = format!("/api/v1/namespaces/{namespace}/pods/{pod}/log?{query}");
    let request = http::Request::get(uri)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let stream = client.request_stream(request).await?;
    let mut lines = std::pin::pin!(stream.lines());
    while let Some(line) = lines.next().await {
        let line = line.map_err(kube::Error::ReadEvents)?;
        let parsed = logs::parse_line(&line);
        if resume.offer(parsed.at) {
            out.emit(parsed.text).await;
        }
    }
    Ok(())
}

fn url_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encode a query value (RFC 3986 unreserved characters pass).
fn percent(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn check_payload<P: PhaseMarker>(
    ctx: &RunContext,
    payload: &TestPayload,
) -> Result<(), RunnerError<P>> {
    if payload.command.is_empty() || payload.command[0].is_empty() {
        return Err(RunnerError::invalid_spec(
            ctx,
            "payload.command",
            "must name a program",
        ));
    }
    if payload.package.is_some() {
        return Err(RunnerError::invalid_spec(
            ctx,
            "payload.package",
            "the eks backend runs an image: build the package into it",
        ));
    }
    if let Some(dir) = &payload.working_dir
        && !dir.starts_with('/')
    {
        return Err(RunnerError::invalid_spec(
            ctx,
            "payload.working_dir",
            format!("{dir:?} must be an absolute path inside the image"),
        ));
    }
    for name in payload.env.keys() {
        let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(RunnerError::invalid_spec(
                ctx,
                format!("payload.env.{name}"),
                "must be a variable name ([A-Za-z_][A-Za-z0-9_]*)",
            ));
        }
    }
    Ok(())
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)
}

#[async_trait]
impl RunnerAdapter for EksRunner {
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
        _payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        let _state: EksState = handle.decode_in(ctx, RUNNER_TYPE)?;
        let mut bundle = ArtifactBundle::default();
        if let Some(store) = self.store().await
            && let Some(prefix) = self.inner.config.execution_prefix(ctx.execution_id())
        {
            bundle = store
                .collect(&format!("{prefix}artifacts/"), |_| ArtifactKind::File)
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
            let artifact =
                Artifact::from_local_file(name, ArtifactKind::Log, &log_path).map_err(|e| {
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

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, TeardownError> {
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
            .map_err(|e| TeardownError::permanent(ctx, e.to_string()))?;
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
