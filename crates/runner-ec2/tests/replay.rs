//! What moto cannot show: moto's SSM answers "Success" at once and moto
//! ignores client tokens. Here a static HTTP client (`infallible_client_fn`,
//! below) scripts SSM and EC2 answers; S3 is moto's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::Credentials;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use runner_core::{ErrorKind, RunContext, RunnerAdapter, RunnerHandle, TestStatus};
use runner_ec2::{Ec2Runner, Ec2State};

type Log = Arc<Mutex<Vec<(String, String)>>>;

type Answer = dyn Fn(http::Request<SdkBody>) -> http::Response<SdkBody> + Send + Sync;

/// An HTTP client that answers every request with `answer`: the SDK's own
/// `aws_smithy_http_client::test_util::infallible_client_fn`, in a few
/// lines. That one needs the `test-util` feature of the SDK's HTTP client,
/// and a feature only tests turn on makes `cargo run` after `cargo test`
/// rebuild the whole AWS SDK (~8 minutes on two cores).
#[derive(Clone)]
struct InfallibleClientFn(Arc<Answer>);

impl std::fmt::Debug for InfallibleClientFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InfallibleClientFn")
    }
}

impl HttpConnector for InfallibleClientFn {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let response = (self.0)(request.try_into_http1x().unwrap());
        HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).unwrap()))
    }
}

impl HttpClient for InfallibleClientFn {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

fn infallible_client_fn(
    answer: impl Fn(http::Request<SdkBody>) -> http::Response<SdkBody> + Send + Sync + 'static,
) -> SharedHttpClient {
    SharedHttpClient::new(InfallibleClientFn(Arc::new(answer)))
}

fn target_of(req: &http::Request<SdkBody>) -> String {
    req.headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_start_matches("AmazonSSM.")
        .to_string()
}

fn body_of(req: &http::Request<SdkBody>) -> String {
    String::from_utf8_lossy(req.body().bytes().unwrap_or_default()).to_string()
}

fn json(status: u16, body: serde_json::Value) -> http::Response<SdkBody> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(SdkBody::from(body.to_string()))
        .unwrap()
}

/// An SSM double: `GetCommandInvocation` answers from `script` in order
/// (the last answer repeats); after a `CancelCommand` it answers Cancelled.
fn scripted_ssm(script: Vec<serde_json::Value>, log: Log) -> aws_sdk_ssm::Client {
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let cancelled = Arc::new(Mutex::new(false));
    let http = infallible_client_fn(move |req| {
        let op = target_of(&req);
        log.lock().unwrap().push((op.clone(), body_of(&req)));
        match op.as_str() {
            "ListCommands" => json(200, serde_json::json!({"Commands": []})),
            "SendCommand" => json(
                200,
                serde_json::json!({"Command": {"CommandId": "cmd-1", "Status": "Pending"}}),
            ),
            "CancelCommand" => {
                *cancelled.lock().unwrap() = true;
                json(200, serde_json::json!({}))
            }
            "GetCommandInvocation" => {
                if *cancelled.lock().unwrap() {
                    return json(
                        200,
                        serde_json::json!({"CommandId": "cmd-1", "Status": "Cancelled", "StatusDetails": "Cancelled", "ResponseCode": -1}),
                    );
                }
                let mut script = script.lock().unwrap();
                let answer = if script.len() > 1 {
                    script.pop_front().unwrap()
                } else {
                    script[0].clone()
                };
                if answer.get("__type").is_some() {
                    json(400, answer)
                } else {
                    json(200, answer)
                }
            }
            other => json(
                400,
                serde_json::json!({"__type": "UnsupportedOperation", "message": other}),
            ),
        }
    });
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("a", "b", None, None, "replay"))
        .http_client(http)
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

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

const NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

fn xml(status: u16, body: String) -> http::Response<SdkBody> {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(SdkBody::from(body))
        .unwrap()
}

fn ec2_error(status: u16, code: &str) -> http::Response<SdkBody> {
    xml(
        status,
        format!(
            "<Response><Errors><Error><Code>{code}</Code><Message>scripted {code}</Message></Error></Errors><RequestID>req</RequestID></Response>"
        ),
    )
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// An EC2 double: DescribeInstances knows nothing until a launch, then a
/// running instance; RunInstances answers from `launches` in order.
fn scripted_ec2(
    launches: Vec<http::Response<SdkBody>>,
    retries: bool,
    log: Log,
) -> aws_sdk_ec2::Client {
    let launches = Arc::new(Mutex::new(VecDeque::from(launches)));
    let launched = Arc::new(Mutex::new(false));
    let http = infallible_client_fn(move |req| {
        let body = body_of(&req);
        let action = form_value(&body, "Action").unwrap_or_default();
        log.lock().unwrap().push((action.clone(), body.clone()));
        match action.as_str() {
            "DescribeInstances" => {
                let set = if *launched.lock().unwrap() {
                    "<item><reservationId>r-1</reservationId><instancesSet><item><instanceId>i-0abc</instanceId><instanceState><code>16</code><name>running</name></instanceState></item></instancesSet></item>"
                } else {
                    ""
                };
                xml(
                    200,
                    format!(
                        "<DescribeInstancesResponse xmlns=\"{NS}\"><requestId>r</requestId><reservationSet>{set}</reservationSet></DescribeInstancesResponse>"
                    ),
                )
            }
            "RunInstances" => {
                let answer = launches
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or_else(|| ec2_error(500, "InternalError"));
                if answer.status() == 200 {
                    *launched.lock().unwrap() = true;
                }
                answer
            }
            _ => ec2_error(400, "UnsupportedOperation"),
        }
    });
    let mut config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("a", "b", None, None, "replay"))
        .http_client(http);
    if !retries {
        config = config.retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled());
    } else {
        config = config.retry_config(
            aws_sdk_ec2::config::retry::RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(10)),
        );
    }
    aws_sdk_ec2::Client::from_conf(config.build())
}

fn launched() -> http::Response<SdkBody> {
    xml(
        200,
        format!(
            "<RunInstancesResponse xmlns=\"{NS}\"><requestId>r</requestId><reservationId>r-1</reservationId><ownerId>1</ownerId><instancesSet><item><instanceId>i-0abc</instanceId><instanceState><code>0</code><name>pending</name></instanceState></item></instancesSet></RunInstancesResponse>"
        ),
    )
}

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
