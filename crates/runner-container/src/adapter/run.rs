//! Running the test in the container: live logs, the deadline and
//! cancellation (stop, then kill), the exit status as a result.

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, LogsOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::{FutureExt, StreamExt};
use runner_core::{
    ExecutionError, LogStream, RunContext, RunnerHandle, TestPayload, TestResult, TestStatus,
    decode_spec,
};

use crate::RUNNER_TYPE;
use crate::client::{Endpoint, engine_error, is_name_conflict, is_not_found, status_of};
use crate::config::{ARTIFACTS_PATH, ContainerPayload, check_payload};
use crate::logs::LiveLogs;

use super::{ContainerRunner, ContainerState, remove};

/// How long a log stream may stay open once the container exited.
const FOLLOW_GRACE: Duration = Duration::from_secs(5);

/// How a run ended, before the engine is asked for the exit status.
enum End {
    Exited,
    Cancelled,
    TimedOut(Duration),
}

impl ContainerRunner {
    /// The body of `RunnerAdapter::run_test`.
    pub(super) async fn run_in_container(
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
        // Podman sometimes keeps a follow stream open after the container
        // exited (seen in CI: a contract check hung for minutes on a
        // container that had exited 0). Once the exit is known the stream
        // gets FOLLOW_GRACE to end; the collected log is complete anyway.
        let run = async {
            tokio::pin!(follow);
            tokio::pin!(wait);
            let mut followed = None;
            let waited = loop {
                tokio::select! {
                    f = &mut follow, if followed.is_none() => followed = Some(f),
                    w = &mut wait => break w,
                }
            };
            let followed = match followed {
                Some(f) => f,
                None => match tokio::time::timeout(FOLLOW_GRACE, &mut follow).await {
                    Ok(f) => f,
                    Err(_) => {
                        tracing::warn!(
                            "the engine kept the log stream open after the container exited; the collected log is complete"
                        );
                        Ok(())
                    }
                },
            };
            (followed, waited)
        };
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
pub(super) fn exit_result(
    code: Option<i32>,
    oom_killed: bool,
    memory_mb: u64,
    duration: Duration,
) -> TestResult {
    match code {
        _ if oom_killed => {
            let result = TestResult::new(TestStatus::Failed, duration).with_diagnosis(
                "test",
                format!("killed by the out-of-memory killer: the container's memory limit is {memory_mb} MiB"),
            );
            match code {
                Some(code) => result.with_exit_code(code),
                None => result,
            }
        }
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
