//! One test through SSM: send (or find the command already sent for this
//! execution), poll `GetCommandInvocation` with backoff while following
//! the growing output in S3, cancel with `CancelCommand`, and map the end
//! state to a result.
//!
//! | SSM status (details)              | outcome                                   |
//! |-----------------------------------|-------------------------------------------|
//! | Success / Failed                  | `result.json` from S3: exit code, timed out, or a set-up error; without it, `ResponseCode` |
//! | TimedOut (execution timed out)    | result `timed_out`                        |
//! | TimedOut (delivery timed out), Undeliverable, Terminated | transient error: the instance is unreachable, a retry gets another |
//! | Cancelled                         | result `cancelled`                        |
//! | Pending, InProgress, Delayed, Cancelling | keep polling                       |

use std::time::Duration;

use aws_sdk_ssm::types::CommandInvocationStatus;
use runner_aws::{ArtifactStore, AwsError, classify};
use runner_core::kit::LogFollower;
use runner_core::{ErrorKind, LogSink, LogStream, TestResult, TestStatus};
use serde::Deserialize;
use tokio::time::Instant;

use crate::instances::{Backoff, Ops};

/// How long after `CancelCommand` the adapter waits for SSM to say
/// Cancelled before reporting the run cancelled anyway.
const CANCEL_SETTLE: Duration = Duration::from_secs(15);

/// SSM's `Comment` is at most 100 characters.
fn comment_for(execution_id: &str) -> String {
    execution_id.chars().take(100).collect()
}

/// What the script writes last.
#[derive(Debug, Deserialize)]
struct ScriptResult {
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    timed_out: bool,
    #[serde(default)]
    error: Option<String>,
}

/// One command's inputs.
#[derive(Debug)]
pub struct CommandSpec<'a> {
    /// The target.
    pub instance_id: &'a str,
    /// The execution (the command's comment; how a resent run is found).
    pub execution_id: &'a str,
    /// The S3 key prefix of the execution (ends in `/`).
    pub prefix: &'a str,
    /// The SSM `commands` parameter.
    pub commands: Vec<String>,
    /// SSM's `executionTimeout`.
    pub execution_timeout: u64,
}

/// The most bytes of output one poll reads (the follower then reads again
/// at once): memory stays bounded however fast the test writes.
const READ_MAX: u64 = 1024 * 1024;

/// Where the output is followed from: an offset into the output object and
/// the kit's bounded line assembler.
#[derive(Debug)]
struct Follower {
    offset: u64,
    lines: LogFollower,
}

impl Follower {
    fn new(sink: &LogSink) -> Follower {
        Follower {
            offset: 0,
            lines: LogFollower::new(sink.clone(), LogStream::Stdout),
        }
    }

    /// Read new bytes of the output object and send complete lines.
    async fn poll(&mut self, store: &ArtifactStore, key: &str) -> Result<(), AwsError> {
        loop {
            let Some(bytes) = store.read_at(key, self.offset, READ_MAX).await? else {
                return Ok(());
            };
            if bytes.is_empty() {
                return Ok(());
            }
            self.offset += bytes.len() as u64;
            self.lines.feed(&bytes).await;
            if (bytes.len() as u64) < READ_MAX {
                return Ok(());
            }
        }
    }

    async fn finish(&mut self) {
        self.lines.finish().await;
    }
}

/// Send the command, or find the one this execution already sent.
async fn send_or_find(
    ops: &Ops,
    store: &ArtifactStore,
    spec: &CommandSpec<'_>,
) -> Result<String, AwsError> {
    let comment = comment_for(spec.execution_id);
    let listed = ops
        .ssm
        .list_commands()
        .instance_id(spec.instance_id)
        .send()
        .await
        .map_err(|e| classify("ssm:ListCommands", &e))?;
    // A command another attempt of this execution key left running (its
    // worker died; this attempt adopted the instance) is cancelled before
    // this one starts: two tests never share the instance.
    let key_prefix = spec
        .execution_id
        .rsplit_once('.')
        .map(|(key, _)| format!("{key}."));
    for stale in listed.commands().iter().filter(|c| {
        let comment = c.comment().unwrap_or_default();
        comment != comment_for(spec.execution_id)
            && key_prefix
                .as_deref()
                .is_some_and(|p| comment.starts_with(p))
            && matches!(
                c.status().map(|s| s.as_str()),
                Some("Pending" | "InProgress" | "Delayed")
            )
    }) {
        if let Some(id) = stale.command_id() {
            tracing::warn!(
                command_id = id,
                instance = spec.instance_id,
                attempt_of = stale.comment().unwrap_or_default(),
                "cancelling the command a dead attempt left running"
            );
            cancel_command(ops, id, spec.instance_id).await;
        }
    }
    let reusable = listed.commands().iter().find(|c| {
        c.comment() == Some(comment.as_str())
            && !matches!(
                c.status().map(|s| s.as_str()),
                Some("Cancelled" | "Cancelling" | "TimedOut" | "Undeliverable" | "Terminated")
            )
    });
    if let Some(id) = reusable.and_then(|c| c.command_id()) {
        tracing::info!(
            command_id = id,
            instance = spec.instance_id,
            "following the command already sent for this execution"
        );
        return Ok(id.to_string());
    }
    let sent = ops
        .ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .instance_ids(spec.instance_id)
        .comment(comment)
        .parameters("commands", spec.commands.clone())
        .parameters("executionTimeout", vec![spec.execution_timeout.to_string()])
        .output_s3_bucket_name(store.bucket())
        .output_s3_key_prefix(format!("{}ssm", spec.prefix))
        .send()
        .await
        .map_err(|e| classify("ssm:SendCommand", &e))?;
    sent.command()
        .and_then(|c| c.command_id())
        .map(str::to_string)
        .ok_or_else(|| {
            AwsError::new(
                ErrorKind::Transient,
                "ssm:SendCommand answered without a command id",
            )
        })
}

/// The end state of an invocation.
#[derive(Debug)]
struct Ended {
    status: CommandInvocationStatus,
    details: String,
    response_code: i32,
}

async fn invocation(
    ops: &Ops,
    command_id: &str,
    instance_id: &str,
) -> Result<Option<Ended>, AwsError> {
    let answer = ops
        .ssm
        .get_command_invocation()
        .command_id(command_id)
        .instance_id(instance_id)
        .send()
        .await;
    let out = match answer {
        Ok(out) => out,
        Err(e) => {
            let err = classify("ssm:GetCommandInvocation", &e);
            // Right after SendCommand the invocation may not exist yet.
            if err.is_code("InvocationDoesNotExist") {
                return Ok(None);
            }
            return Err(err);
        }
    };
    let status = out
        .status()
        .cloned()
        .unwrap_or(CommandInvocationStatus::Pending);
    Ok(Some(Ended {
        status,
        details: out.status_details().unwrap_or_default().to_string(),
        response_code: out.response_code(),
    }))
}

fn is_running(status: &CommandInvocationStatus) -> bool {
    matches!(
        status,
        CommandInvocationStatus::Pending
            | CommandInvocationStatus::InProgress
            | CommandInvocationStatus::Delayed
            | CommandInvocationStatus::Cancelling
    )
}

/// Run one command to its end and map the outcome. `deadline` bounds the
/// whole wait (after it the command is cancelled and the run timed out).
pub async fn run(
    ops: &Ops,
    store: &ArtifactStore,
    spec: CommandSpec<'_>,
    sink: &LogSink,
    cancel: &runner_core::CancellationToken,
    deadline: Option<Instant>,
) -> Result<TestResult, AwsError> {
    let started = Instant::now();
    let command_id = send_or_find(ops, store, &spec).await?;
    let output_key = format!("{}output.log", spec.prefix);
    let mut follower = Follower::new(sink);
    let mut backoff = Backoff::new(&ops.config);
    let mut missing_polls = 0u32;
    let ended = loop {
        let pause = backoff.step();
        let stop = tokio::select! {
            _ = tokio::time::sleep(pause) => None,
            _ = cancel.cancelled() => Some(TestStatus::Cancelled),
            _ = sleep_until(deadline) => Some(TestStatus::TimedOut),
        };
        if let Some(status) = stop {
            cancel_command(ops, &command_id, spec.instance_id).await;
            follower.poll(store, &output_key).await.ok();
            follower.finish().await;
            let why = if status == TestStatus::Cancelled {
                "cancelled"
            } else {
                "the run phase's deadline passed"
            };
            return Ok(TestResult::new(status, started.elapsed()).with_diagnosis(
                "ssm",
                format!("command {command_id}: {why}; CancelCommand sent"),
            ));
        }
        if let Err(e) = follower.poll(store, &output_key).await {
            tracing::debug!(error = %e, "live output not readable yet");
        }
        match invocation(ops, &command_id, spec.instance_id).await? {
            None => {
                missing_polls += 1;
                if missing_polls > 30 {
                    return Err(AwsError::new(
                        ErrorKind::Transient,
                        format!(
                            "ssm: command {command_id} never appeared on {}",
                            spec.instance_id
                        ),
                    ));
                }
            }
            Some(state) if is_running(&state.status) => {}
            Some(state) => break state,
        }
    };
    follower.poll(store, &output_key).await?;
    follower.finish().await;
    let elapsed = started.elapsed();
    map_end(store, &spec, &command_id, ended, elapsed).await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn cancel_command(ops: &Ops, command_id: &str, instance_id: &str) {
    let sent = ops
        .ssm
        .cancel_command()
        .command_id(command_id)
        .instance_ids(instance_id)
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(command_id, error = %classify("ssm:CancelCommand", &e), "CancelCommand failed");
        return;
    }
    // Give SSM a moment to settle, so a teardown right after does not race
    // the script's own exit; bounded, and never an error.
    let until = Instant::now() + CANCEL_SETTLE;
    let mut pause = Duration::from_millis(200);
    while Instant::now() < until {
        match invocation(ops, command_id, instance_id).await {
            Ok(Some(state)) if !is_running(&state.status) => return,
            Err(_) => return,
            _ => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

async fn map_end(
    store: &ArtifactStore,
    spec: &CommandSpec<'_>,
    command_id: &str,
    ended: Ended,
    elapsed: Duration,
) -> Result<TestResult, AwsError> {
    let details = ended.details.replace(' ', "");
    match ended.status {
        CommandInvocationStatus::Success | CommandInvocationStatus::Failed => {
            let key = format!("{}result.json", spec.prefix);
            let script = match store.read_from(&key, 0).await? {
                Some(bytes) => {
                    Some(serde_json::from_slice::<ScriptResult>(&bytes).map_err(|e| {
                        AwsError::new(
                            ErrorKind::Permanent,
                            format!(
                                "s3://{}/{key} is not a result the script writes: {e}",
                                store.bucket()
                            ),
                        )
                    })?)
                }
                None => None,
            };
            Ok(match script {
                Some(ScriptResult {
                    error: Some(error), ..
                }) => TestResult::new(TestStatus::Error, elapsed)
                    .with_diagnosis("ec2", format!("the test never started: {error}")),
                Some(ScriptResult {
                    timed_out: true,
                    exit_code,
                    ..
                }) => {
                    let mut r = TestResult::new(TestStatus::TimedOut, elapsed)
                        .with_diagnosis("ec2", "the test ran past its timeout and was killed");
                    r.exit_code = exit_code;
                    r
                }
                Some(ScriptResult {
                    exit_code: Some(code),
                    ..
                }) => TestResult::from_exit_code(code, elapsed),
                _ => {
                    let code = if ended.status == CommandInvocationStatus::Success {
                        0
                    } else {
                        ended.response_code
                    };
                    TestResult::from_exit_code(code, elapsed).with_diagnosis(
                        "ssm",
                        format!("command {command_id} left no result.json; exit code from SSM's ResponseCode"),
                    )
                }
            })
        }
        CommandInvocationStatus::Cancelled => Ok(TestResult::new(TestStatus::Cancelled, elapsed)
            .with_diagnosis("ssm", format!("command {command_id} was cancelled"))),
        CommandInvocationStatus::TimedOut if !details.contains("DeliveryTimedOut") => Ok(
            TestResult::new(TestStatus::TimedOut, elapsed).with_diagnosis(
                "ssm",
                format!("command {command_id} hit SSM's execution timeout"),
            ),
        ),
        other => Err(AwsError::new(
            ErrorKind::Transient,
            format!(
                "ssm: command {command_id} on {} ended {} ({}): the instance is unreachable",
                spec.instance_id,
                other.as_str(),
                ended.details
            ),
        )),
    }
}
