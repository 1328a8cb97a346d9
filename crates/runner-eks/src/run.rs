//! Running a test: the Job for the payload, the pod's log followed into the
//! sink and a local file, the end state read from the pod and the Job, the
//! artifact uploader waited for, and the result.

use std::path::Path;
use std::time::Duration;

use futures::AsyncReadExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use runner_core::kit::LineAssembler;
use runner_core::{
    ErrorKind, ExecutionError, LogStream, PhaseMarker, Redactor, RunContext, RunnerError,
    TestPayload, TestResult, TestStatus, decode_spec,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::PayloadBackend;
use crate::api::{self, K8sError};
use crate::status::{self, Ended, PodState};
use crate::{EksRunner, EksState, RUNNER_TYPE, RunEnd, job, logs};

impl EksRunner {
    pub(crate) async fn decide(
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
    pub(crate) async fn follow(
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
    pub(crate) async fn pod_end(
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
    pub(crate) async fn wait_for_uploader(
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

    pub(crate) async fn run_job(
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
        let volume = config.volume_dir(ctx.execution_id());
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
            artifacts_volume: volume
                .as_ref()
                .map(|(v, dir)| (v.claim_name.as_str(), dir.as_str())),
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
                Err(ExecutionError::new(status::pull_failure_kind(&m), ctx, m)
                    .with_backend(RUNNER_TYPE))
            }
            RunEnd::Gone(m) => Err(ExecutionError::transient(ctx, m).with_backend(RUNNER_TYPE)),
        }
    }

    pub(crate) async fn delete_secret(
        &self,
        secrets: &Api<Secret>,
        name: &str,
    ) -> Result<(), K8sError> {
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

pub(crate) fn config_error(message: String) -> K8sError {
    K8sError {
        kind: ErrorKind::Permanent,
        code: None,
        reason: "Config".into(),
        message,
    }
}

pub(crate) fn newest_pod(mut pods: Vec<Pod>) -> Option<Pod> {
    pods.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    pods.pop()
}

pub(crate) fn result_of(
    end: &Ended,
    job_deadline: Option<String>,
    elapsed: Duration,
) -> TestResult {
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
pub(crate) struct LogOut {
    pub(crate) sink: runner_core::LogSink,
    pub(crate) file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    pub(crate) redactor: Redactor,
    pub(crate) lines: u64,
}

impl LogOut {
    /// One line, already cut and redacted by the kit's assembler.
    async fn emit(&mut self, text: &str) {
        self.lines += 1;
        self.sink.send(LogStream::Stdout, text).await;
        if let Some(file) = &mut self.file {
            let written = async {
                file.write_all(text.as_bytes()).await?;
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
pub(crate) async fn read_log(
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
    let mut stream = std::pin::pin!(stream);
    // The kit's assembler bounds each line (a test printing megabytes
    // without a newline costs one maximum line), folds progress redraws and
    // redacts; the timestamps the kubelet puts first are read after it.
    let mut assembler = LineAssembler::new(out.redactor.clone());
    let mut buf = vec![0u8; 64 * 1024];
    let mut lines: Vec<String> = Vec::new();
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(kube::Error::ReadEvents)?;
        if n == 0 {
            assembler.finish(&mut |l| lines.push(l.to_owned()));
        } else {
            assembler.push(&buf[..n], &mut |l| lines.push(l.to_owned()));
        }
        for line in lines.drain(..) {
            let parsed = logs::parse_line(&line);
            if resume.offer(parsed.at) {
                out.emit(parsed.text).await;
            }
        }
        if n == 0 {
            return Ok(());
        }
    }
}

pub(crate) fn url_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encode a query value (RFC 3986 unreserved characters pass).
pub(crate) fn percent(value: &str) -> String {
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

pub(crate) fn check_payload<P: PhaseMarker>(
    ctx: &RunContext,
    payload: &TestPayload,
) -> Result<(), RunnerError<P>> {
    runner_core::kit::checks::command(ctx, payload)?;
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
    runner_core::kit::checks::env_names(ctx, payload)
}

pub(crate) fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)
}
