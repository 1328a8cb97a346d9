//! The bench-platform API client: bearer auth, bounded retries with
//! backoff for 5xx and connection failures, `Retry-After` on 429, and
//! answers decoded with the failing field named.
//!
//! The token is held in [`Token`], whose `Debug` prints `***`; it goes in
//! the `Authorization` header to the configured base URL only, and no error
//! text carries it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use runner_core::ErrorKind;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

/// The bearer token.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wrap a token.
    pub fn new(value: impl Into<String>) -> Token {
        Token(value.into())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// How the worker should treat it.
    pub kind: ErrorKind,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// The API's error code (`not_found`, `reservation_ended`, ...).
    pub code: Option<String>,
    /// `METHOD path: what happened`.
    pub message: String,
    /// The server's `Retry-After`, when it gave one.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn new(kind: ErrorKind, message: String) -> ApiError {
        ApiError {
            kind,
            status: None,
            code: None,
            message,
            retry_after: None,
        }
    }

    /// Whether the answer was this HTTP status.
    pub fn is_status(&self, status: u16) -> bool {
        self.status == Some(status)
    }

    /// Into a runner error of any phase.
    pub fn into_runner<P: runner_core::PhaseMarker>(
        self,
        ctx: &runner_core::RunContext,
    ) -> runner_core::RunnerError<P> {
        let mut err = runner_core::RunnerError::new(self.kind, ctx, self.message.clone())
            .with_backend("onprem");
        if let Some(after) = self.retry_after {
            err = err.with_retry_after(after);
        }
        err.with_source(self)
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// Retry settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// First backoff.
    pub base: Duration,
    /// Backoff cap.
    pub max: Duration,
    /// The longest `Retry-After` honoured by waiting; longer ones return
    /// a transient error carrying the delay.
    pub max_retry_after: Duration,
}

/// The client.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Token,
    retry: RetryPolicy,
}

impl Api {
    /// A client for `base` (no trailing slash needed).
    pub fn new(
        base: &str,
        token: Token,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Api, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
            retry,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether `uri` is on the API's own origin (the only place the token goes).
    pub fn same_origin(&self, uri: &str) -> bool {
        uri.strip_prefix(&self.base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Call and decode a JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        deadline: Option<Instant>,
    ) -> Result<T, ApiError> {
        let (status, bytes) = self.call(method.clone(), path, body, deadline).await?;
        decode(&method, path, status, &bytes)
    }

    /// Call and return the raw body (downloads, 204s).
    pub async fn bytes(
        &self,
        method: Method,
        path: &str,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, ApiError> {
        self.call(method, path, None, deadline)
            .await
            .map(|(_, b)| b)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        deadline: Option<Instant>,
    ) -> Result<(StatusCode, Vec<u8>), ApiError> {
        let what = format!("{method} {path}");
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let backoff = runner_core::Backoff::new(self.retry.base, self.retry.max);
        // Backoff steps taken (a server's Retry-After takes none).
        let mut step = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token.0);
            if let Some(body) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string());
            }
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let bytes = match response.bytes().await {
                        Ok(b) => b.to_vec(),
                        Err(e) => {
                            return Err(ApiError::new(
                                ErrorKind::Transient,
                                format!(
                                    "bench API {what}: reading the answer: {}",
                                    without_url(&e)
                                ),
                            ));
                        }
                    };
                    if status.is_success() {
                        return Ok((status, bytes));
                    }
                    let failure = status_error(&what, status, &bytes, retry_after);
                    let retryable =
                        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    if !retryable {
                        return Err(failure);
                    }
                    failure
                }
                Err(e) => ApiError::new(
                    ErrorKind::Transient,
                    format!("bench API {what}: {}", without_url(&e)),
                ),
            };
            if attempt >= self.retry.attempts {
                return Err(failure);
            }
            let pause = match failure.retry_after {
                Some(after) if after > self.retry.max_retry_after => return Err(failure),
                Some(after) => after,
                None => {
                    step += 1;
                    backoff.delay(step)
                }
            };
            if deadline.is_some_and(|d| Instant::now() + pause > d) {
                return Err(failure);
            }
            tracing::debug!(call = %what, attempt, pause_ms = pause.as_millis() as u64, error = %failure, "retrying the bench API");
            tokio::time::sleep(pause).await;
        }
    }
}

/// What went wrong with a request, and its sources, without reqwest's own
/// text (which carries the URL, and a URL may carry query values).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_request() {
        "request failed"
    } else if e.is_body() || e.is_decode() {
        "bad answer body"
    } else {
        "failed"
    }
    .to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

fn status_error(
    what: &str,
    status: StatusCode,
    bytes: &[u8],
    retry_after: Option<Duration>,
) -> ApiError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(bytes).ok();
    let (code, text) = match parsed {
        Some(b) => (Some(b.code), b.message),
        None => (
            None,
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string(),
        ),
    };
    let kind = match status.as_u16() {
        429 => ErrorKind::Transient,
        s if s >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    };
    let hint = if matches!(status.as_u16(), 401 | 403) {
        " (check the API token the runner is configured with)"
    } else {
        ""
    };
    ApiError {
        kind,
        status: Some(status.as_u16()),
        message: format!(
            "bench API {what}: HTTP {}{}: {text}{hint}",
            status.as_u16(),
            code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
        ),
        code,
        retry_after,
    }
}

/// Decode an answer, naming the missing or mistyped field.
pub fn decode<T: DeserializeOwned>(
    method: &Method,
    path: &str,
    status: StatusCode,
    bytes: &[u8],
) -> Result<T, ApiError> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() {
        return Err(ApiError {
            kind: ErrorKind::Transient,
            status: Some(status.as_u16()),
            code: None,
            message: format!(
                "bench API {method} {path}: the answer is not JSON ({} bytes: {:?})",
                bytes.len(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
            ),
            retry_after: None,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        ApiError {
            kind: ErrorKind::Permanent,
            status: Some(status.as_u16()),
            code: None,
            message: format!(
                "bench API {method} {path}: the answer does not match the API (at `{field}`): {}",
                e.into_inner()
            ),
            retry_after: None,
        }
    })
}
