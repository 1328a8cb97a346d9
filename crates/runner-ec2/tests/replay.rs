//! What moto cannot show: moto's SSM answers "Success" at once and moto
//! ignores client tokens. Here the SDK's own static HTTP test client
//! (`infallible_client_fn`) scripts SSM and EC2 answers; S3 is moto's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::scripted::*;

use std::sync::Arc;
use std::time::Duration;

use runner_core::{ErrorKind, RunContext, RunnerAdapter, RunnerHandle, TestStatus};
use runner_ec2::{Ec2Runner, Ec2State};

fn status(status: &str, details: &str, code: i32) -> serde_json::Value {
    serde_json::json!({"CommandId": "cmd-1", "InstanceId": "i-replay", "Status": status, "StatusDetails": details, "ResponseCode": code})
}

fn not_yet() -> serde_json::Value {
    serde_json::json!({"__type": "InvocationDoesNotExist", "message": "not yet"})
}

struct Replay {
    runner: Ec2Runner,
    env: common::Env,
    log: Log,
}

async fn replay(name: &str, script: Vec<serde_json::Value>) -> Replay {
    let env = common::env(name).await;
    let log: Log = Arc::default();
    let ssm = scripted_ssm(script, log.clone());
    let runner =
        Ec2Runner::with_clients(env.config.clone(), env.ec2.clone(), ssm, env.s3.clone()).unwrap();
    Replay { runner, env, log }
}

fn handle(ctx: &RunContext) -> RunnerHandle {
    let state = Ec2State {
        instance_id: "i-replay".into(),
        execution_key: ctx.execution_key().into(),
        pool: None,
    };
    RunnerHandle::new("ec2", "i-replay", ctx.execution_id(), &state).unwrap()
}

async fn put_result(r: &Replay, ctx: &RunContext, body: &str) {
    let key = format!(
        "{}result.json",
        r.env.config.execution_prefix(ctx.execution_id())
    );
    r.env
        .s3
        .put_object()
        .bucket(&r.env.config.bucket)
        .key(key)
        .body(body.as_bytes().to_vec().into())
        .send()
        .await
        .unwrap();
}

/// (name, sequence, result.json, expected status, expected exit code)
type Case = (
    &'static str,
    Vec<serde_json::Value>,
    Option<&'static str>,
    TestStatus,
    Option<i32>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_status_sequences_map_to_results() {
    let in_progress = status("InProgress", "InProgress", -1);
    // (name, sequence, result.json, expected status, expected exit code)
    let cases: Vec<Case> = vec![
        (
            "success",
            vec![
                not_yet(),
                in_progress.clone(),
                in_progress.clone(),
                status("Success", "Success", 0),
            ],
            Some(r#"{"exit_code": 0, "timed_out": false}"#),
            TestStatus::Passed,
            Some(0),
        ),
        (
            "failed",
            vec![in_progress.clone(), status("Failed", "Failed", 3)],
            Some(r#"{"exit_code": 3, "timed_out": false}"#),
            TestStatus::Failed,
            Some(3),
        ),
        (
            "no-result",
            vec![in_progress.clone(), status("Failed", "Failed", 2)],
            None,
            TestStatus::Failed,
            Some(2),
        ),
        (
            "test-timeout",
            vec![in_progress.clone(), status("Failed", "Failed", 143)],
            Some(r#"{"exit_code": 143, "timed_out": true}"#),
            TestStatus::TimedOut,
            Some(143),
        ),
        (
            "ssm-timeout",
            vec![
                in_progress.clone(),
                status("TimedOut", "ExecutionTimedOut", -1),
            ],
            None,
            TestStatus::TimedOut,
            None,
        ),
        (
            "cancelled",
            vec![in_progress.clone(), status("Cancelled", "Cancelled", -1)],
            None,
            TestStatus::Cancelled,
            None,
        ),
        (
            "setup-error",
            vec![status("Failed", "Failed", 70)],
            Some(r#"{"error": "cannot fetch the package"}"#),
            TestStatus::Error,
            None,
        ),
    ];
    for (name, sequence, result, expected, code) in cases {
        let r = replay(&format!("seq-{name}"), sequence).await;
        let ctx = common::ctx(&format!("seq-{name}"));
        if let Some(body) = result {
            put_result(&r, &ctx, body).await;
        }
        let got = r
            .runner
            .run_test(&ctx, &handle(&ctx), &common::sh("true"))
            .await
            .unwrap();
        assert_eq!(got.status, expected, "{name}: {got:?}");
        assert_eq!(got.exit_code, code, "{name}: {got:?}");
        let sends = r
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(op, _)| op == "SendCommand")
            .count();
        assert_eq!(sends, 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_instance_is_a_transient_error() {
    for (name, end) in [
        (
            "undeliverable",
            status("Undeliverable", "Undeliverable", -1),
        ),
        (
            "delivery-timeout",
            status("TimedOut", "DeliveryTimedOut", -1),
        ),
        ("terminated", status("Terminated", "Terminated", -1)),
    ] {
        let r = replay(&format!("unreach-{name}"), vec![end]).await;
        let ctx = common::ctx(name);
        let err = r
            .runner
            .run_test(&ctx, &handle(&ctx), &common::sh("true"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient, "{name}: {err}");
        assert!(err.message().contains("unreachable"), "{name}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_carries_the_script_and_timeout_and_no_secret() {
    let r = replay("send", vec![status("Success", "Success", 0)]).await;
    let ctx = common::ctx("send");
    let mut payload = common::sh("echo hi");
    payload.timeout_seconds = Some(42);
    payload.env.insert(
        "SECRET".into(),
        runner_core::EnvVar::Detailed {
            value: "do-not-send".into(),
            secret: true,
        },
    );
    r.runner
        .run_test(&ctx, &handle(&ctx), &payload)
        .await
        .unwrap();
    let log = r.log.lock().unwrap().clone();
    let (_, body) = log.iter().find(|(op, _)| op == "SendCommand").unwrap();
    let sent: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(sent["DocumentName"], "AWS-RunShellScript");
    assert_eq!(sent["Comment"], "send.1");
    assert_eq!(
        sent["Parameters"]["executionTimeout"][0],
        (42 + r.env.config.upload_margin_seconds).to_string()
    );
    assert_eq!(sent["OutputS3BucketName"], r.env.config.bucket);
    assert!(
        !body.contains("do-not-send"),
        "secret values travel in S3, never in the command"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_sends_cancel_command() {
    let r = replay("cancel", vec![status("InProgress", "InProgress", -1)]).await;
    let ctx = common::ctx("cancel");
    let token = ctx.cancel_token().clone();
    let log = r.log.clone();
    let watcher = tokio::spawn(async move {
        // Cancel once the run is being polled; bounded.
        for _ in 0..200 {
            let polls = log
                .lock()
                .unwrap()
                .iter()
                .filter(|(op, _)| op == "GetCommandInvocation")
                .count();
            if polls >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        token.cancel();
    });
    let got = r
        .runner
        .run_test(&ctx, &handle(&ctx), &common::sh("sleep 600"))
        .await
        .unwrap();
    watcher.await.unwrap();
    assert_eq!(got.status, TestStatus::Cancelled, "{got:?}");
    let log = r.log.lock().unwrap().clone();
    let cancels: Vec<&String> = log
        .iter()
        .filter(|(op, _)| op == "CancelCommand")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(cancels.len(), 1, "{log:?}");
    assert!(cancels[0].contains("cmd-1") && cancels[0].contains("i-replay"));
}

// ---- EC2: client tokens and error kinds ----------------------------------

async fn ec2_runner(name: &str, ec2: aws_sdk_ec2::Client) -> (Ec2Runner, common::Env) {
    let env = common::env(name).await;
    let mut config = env.config.clone();
    config.wait_for_ssm = false;
    let runner = Ec2Runner::with_clients(config, ec2, env.ssm.clone(), env.s3.clone()).unwrap();
    (runner, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_run_instances_reuses_its_client_token() {
    let log: Log = Arc::default();
    let ec2 = scripted_ec2(
        vec![ec2_error(503, "RequestLimitExceeded"), launched()],
        true,
        log.clone(),
    );
    let (runner, _env) = ec2_runner("token", ec2).await;
    let ctx = common::ctx("token-key");
    let handle = runner.provision(&ctx, &common::bench()).await.unwrap();
    assert_eq!(handle.handle_id(), "i-0abc");
    let log = log.lock().unwrap().clone();
    let tokens: Vec<String> = log
        .iter()
        .filter(|(op, _)| op == "RunInstances")
        .map(|(_, body)| {
            form_value(body, "ClientToken").expect("RunInstances carries a ClientToken")
        })
        .collect();
    assert_eq!(
        tokens.len(),
        2,
        "the SDK retried the throttled call: {log:?}"
    );
    assert_eq!(tokens[0], tokens[1], "a retried call must reuse its token");
    assert!(tokens[0].len() <= 64);
    // The tags go with the launch, on the instance and its volumes.
    let (_, body) = log.iter().find(|(op, _)| op == "RunInstances").unwrap();
    assert!(
        body.contains("ResourceType=instance") && body.contains("ResourceType=volume"),
        "{body}"
    );
    assert!(
        body.contains("orchestrator%3Aexecution-key") && body.contains("token-key"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_error_is_permanent_and_a_capacity_error_retryable() {
    for (code, status, kind) in [
        ("AuthFailure", 401, ErrorKind::Permanent),
        ("UnauthorizedOperation", 403, ErrorKind::Permanent),
        ("InvalidParameterValue", 400, ErrorKind::Permanent),
        ("InsufficientInstanceCapacity", 500, ErrorKind::Capacity),
        ("InstanceLimitExceeded", 400, ErrorKind::Capacity),
        ("RequestLimitExceeded", 503, ErrorKind::Transient),
    ] {
        let log: Log = Arc::default();
        let ec2 = scripted_ec2(vec![ec2_error(status, code)], false, log);
        let (runner, _env) = ec2_runner(&format!("kind-{}", code.to_lowercase()), ec2).await;
        let ctx = common::ctx("kinds");
        let err = runner.provision(&ctx, &common::bench()).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{code}: {err}");
        assert_eq!(err.is_retryable(), kind != ErrorKind::Permanent, "{code}");
        assert!(err.message().contains(code), "{code}: {err}");
        assert_eq!(err.execution_id(), "kinds.1");
    }
}

// ---- Recovery: failing describes, in-place retries, a dead attempt's command

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_rides_out_a_transient_describe_error() {
    let log: Log = Arc::default();
    let ec2 = scripted_ec2_with(
        vec![launched()],
        vec![
            Describe::Error(503, "Unavailable"),
            Describe::State("running"),
        ],
        false,
        log.clone(),
    );
    let (runner, _env) = ec2_runner("describe-503", ec2).await;
    let ctx = common::ctx("describe-503");
    let handle = runner
        .provision(&ctx, &common::bench())
        .await
        .expect("one failed DescribeInstances is one more poll");
    assert_eq!(handle.handle_id(), "i-0abc");
    let log = log.lock().unwrap().clone();
    assert!(
        !log.iter().any(|(op, _)| op == "TerminateInstances"),
        "the new instance was terminated: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_retry_launches_with_a_fresh_client_token() {
    let log: Log = Arc::default();
    let ec2 = scripted_ec2_with(
        vec![launched(), launched()],
        vec![
            // The first launch dies while starting; the retry's adoption
            // lookup sees it terminated; the second launch runs.
            Describe::State("shutting-down"),
            Describe::State("terminated"),
            Describe::State("running"),
        ],
        false,
        log.clone(),
    );
    let (runner, _env) = ec2_runner("fresh-token", ec2).await;
    let ctx = common::ctx("fresh-token");
    let first = runner.provision(&ctx, &common::bench()).await.unwrap_err();
    assert!(first.is_retryable(), "{first}");
    runner.provision(&ctx, &common::bench()).await.unwrap();
    let tokens: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(op, _)| op == "RunInstances")
        .map(|(_, body)| form_value(body, "ClientToken").unwrap())
        .collect();
    assert_eq!(tokens.len(), 2);
    assert_ne!(
        tokens[0], tokens[1],
        "the retry reused the token of the instance just terminated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_instance_has_the_dead_attempts_command_cancelled_first() {
    let env = common::env("dead-command").await;
    let log: Log = Arc::default();
    let commands = serde_json::json!([
        {"CommandId": "cmd-dead", "Comment": "dead-command.1", "Status": "InProgress"},
        {"CommandId": "cmd-other", "Comment": "another-key.1", "Status": "InProgress"},
    ]);
    let ssm = scripted_ssm_listing(commands, vec![status("Success", "Success", 0)], log.clone());
    let runner =
        Ec2Runner::with_clients(env.config.clone(), env.ec2.clone(), ssm, env.s3.clone()).unwrap();
    let r = Replay { runner, env, log };
    let ctx = RunContext::new("dead-command.2", "corr-dead")
        .with_execution_key("dead-command")
        .with_attempt(2);
    put_result(&r, &ctx, r#"{"exit_code": 0}"#).await;
    let result = r
        .runner
        .run_test(&ctx, &handle(&ctx), &common::sh("true"))
        .await
        .unwrap();
    assert_eq!(result.status, TestStatus::Passed);
    let log = r.log.lock().unwrap().clone();
    let ops: Vec<&str> = log.iter().map(|(op, _)| op.as_str()).collect();
    let cancel = log
        .iter()
        .position(|(op, body)| op == "CancelCommand" && body.contains("cmd-dead"))
        .unwrap_or_else(|| panic!("the dead attempt's command was not cancelled: {ops:?}"));
    let send = ops.iter().position(|op| *op == "SendCommand").unwrap();
    assert!(
        cancel < send,
        "cancelled after the new command was sent: {ops:?}"
    );
    assert!(
        !log.iter()
            .any(|(op, body)| op == "CancelCommand" && body.contains("cmd-other")),
        "another execution's command was cancelled"
    );
}
