//! Scripted AWS answers for what moto cannot show (SSM statuses, client
//! tokens, failing describes): the SDK's own static HTTP test client
//! (`infallible_client_fn`) answers from a script.

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

pub type Log = Arc<Mutex<Vec<(String, String)>>>;

pub fn target_of(req: &http::Request<SdkBody>) -> String {
    req.headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_start_matches("AmazonSSM.")
        .to_string()
}

pub fn body_of(req: &http::Request<SdkBody>) -> String {
    String::from_utf8_lossy(req.body().bytes().unwrap_or_default()).to_string()
}

pub fn json(status: u16, body: serde_json::Value) -> http::Response<SdkBody> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(SdkBody::from(body.to_string()))
        .unwrap()
}

/// An SSM double: `GetCommandInvocation` answers from `script` in order
/// (the last answer repeats); after a `CancelCommand` it answers Cancelled.
pub fn scripted_ssm(script: Vec<serde_json::Value>, log: Log) -> aws_sdk_ssm::Client {
    scripted_ssm_listing(serde_json::json!([]), script, log)
}

/// [`scripted_ssm`] whose `ListCommands` answers `commands`.
pub fn scripted_ssm_listing(
    commands: serde_json::Value,
    script: Vec<serde_json::Value>,
    log: Log,
) -> aws_sdk_ssm::Client {
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let cancelled = Arc::new(Mutex::new(false));
    let http = infallible_client_fn(move |req| {
        let op = target_of(&req);
        log.lock().unwrap().push((op.clone(), body_of(&req)));
        match op.as_str() {
            "ListCommands" => json(200, serde_json::json!({"Commands": commands})),
            "SendCommand" => json(
                200,
                serde_json::json!({"Command": {"CommandId": "cmd-1", "Status": "Pending"}}),
            ),
            "CancelCommand" => {
                // Only a cancel of this run's own command ends it.
                if body_of(&req).contains("cmd-1") {
                    *cancelled.lock().unwrap() = true;
                }
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

pub const NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

pub fn xml(status: u16, body: String) -> http::Response<SdkBody> {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(SdkBody::from(body))
        .unwrap()
}

pub fn ec2_error(status: u16, code: &str) -> http::Response<SdkBody> {
    xml(
        status,
        format!(
            "<Response><Errors><Error><Code>{code}</Code><Message>scripted {code}</Message></Error></Errors><RequestID>req</RequestID></Response>"
        ),
    )
}

pub fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// An EC2 double: DescribeInstances knows nothing until a launch, then a
/// running instance; RunInstances answers from `launches` in order.
pub fn scripted_ec2(
    launches: Vec<http::Response<SdkBody>>,
    retries: bool,
    log: Log,
) -> aws_sdk_ec2::Client {
    scripted_ec2_with(launches, Vec::new(), retries, log)
}

/// What a DescribeInstances after a launch answers.
#[derive(Debug, Clone, Copy)]
pub enum Describe {
    /// The launched instance, in this state.
    State(&'static str),
    /// An error answer.
    Error(u16, &'static str),
}

/// [`scripted_ec2`] whose DescribeInstances after a launch answer from
/// `describes` in order (the last repeats; none: running), and which
/// accepts TerminateInstances and CreateTags.
pub fn scripted_ec2_with(
    launches: Vec<http::Response<SdkBody>>,
    describes: Vec<Describe>,
    retries: bool,
    log: Log,
) -> aws_sdk_ec2::Client {
    let describes = Arc::new(Mutex::new(VecDeque::from(describes)));
    let launches = Arc::new(Mutex::new(VecDeque::from(launches)));
    let launched = Arc::new(Mutex::new(false));
    let http = infallible_client_fn(move |req| {
        let body = body_of(&req);
        let action = form_value(&body, "Action").unwrap_or_default();
        log.lock().unwrap().push((action.clone(), body.clone()));
        match action.as_str() {
            "DescribeInstances" => {
                let state = if *launched.lock().unwrap() {
                    let mut describes = describes.lock().unwrap();
                    let next = if describes.len() > 1 {
                        describes.pop_front()
                    } else {
                        describes.front().copied()
                    };
                    match next.unwrap_or(Describe::State("running")) {
                        Describe::Error(status, code) => return ec2_error(status, code),
                        Describe::State(state) => Some(state),
                    }
                } else {
                    None
                };
                let set = state.map(|state| format!(
                    "<item><reservationId>r-1</reservationId><instancesSet><item><instanceId>i-0abc</instanceId><instanceState><code>16</code><name>{state}</name></instanceState></item></instancesSet></item>"
                )).unwrap_or_default();
                xml(
                    200,
                    format!(
                        "<DescribeInstancesResponse xmlns=\"{NS}\"><requestId>r</requestId><reservationSet>{set}</reservationSet></DescribeInstancesResponse>"
                    ),
                )
            }
            "TerminateInstances" => xml(
                200,
                format!(
                    "<TerminateInstancesResponse xmlns=\"{NS}\"><requestId>r</requestId><instancesSet/></TerminateInstancesResponse>"
                ),
            ),
            "CreateTags" => xml(
                200,
                format!(
                    "<CreateTagsResponse xmlns=\"{NS}\"><requestId>r</requestId><return>true</return></CreateTagsResponse>"
                ),
            ),
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

pub fn launched() -> http::Response<SdkBody> {
    xml(
        200,
        format!(
            "<RunInstancesResponse xmlns=\"{NS}\"><requestId>r</requestId><reservationId>r-1</reservationId><ownerId>1</ownerId><instancesSet><item><instanceId>i-0abc</instanceId><instanceState><code>0</code><name>pending</name></instanceState></item></instancesSet></RunInstancesResponse>"
        ),
    )
}
