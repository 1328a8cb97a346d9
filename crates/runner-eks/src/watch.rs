//! The Job's life on the API server: create it (adopting one an earlier
//! attempt made), delete it and wait until it is gone, and wait for its pod
//! to start, with bounded polling and watches.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use runner_core::{ErrorKind, ExecutionError, LogStream, RunContext};
use tokio::time::Instant;

use crate::api::{self, K8sError};
use crate::run::newest_pod;
use crate::status::{self, Ended};
use crate::{EksRunner, RUNNER_TYPE, RunEnd, job};

impl EksRunner {
    /// Create the Job; an existing one of this attempt is adopted, one of
    /// an earlier attempt deleted first. Returns the Job's uid.
    pub(crate) async fn create_job(
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

    pub(crate) async fn delete_job(&self, jobs: &Api<Job>, name: &str) -> Result<(), K8sError> {
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

    pub(crate) async fn wait_gone(
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
    pub(crate) async fn poll_until<K>(
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
    pub(crate) async fn wait_for_pod(
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
}
