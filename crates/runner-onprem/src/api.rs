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
        runner_core::kit::classify::into_runner(self, ctx)
    }
}

impl runner_core::kit::BackendError for ApiError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
    fn backend(&self) -> Option<&str> {
        Some(crate::RUNNER_TYPE)
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
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
    /// For downloads: no whole-request timeout (a large trace takes as long
    /// as it takes); the kit's writer times out a body idle between chunks.
    stream: reqwest::Client,
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
        let stream = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Api {
            http,
            stream,
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

    /// Download `uri` (on the API's origin) to `path`, redacting and hashing
    /// as it streams, in bounded memory. A body idle for `idle` between
    /// chunks, or cut, is retried from the start up to the retry policy's
    /// attempts and then is a transient error; an answer that is not 2xx is
    /// classified as any other call's.
    pub async fn download_to(
        &self,
        uri: &str,
        path: &std::path::Path,
        redactor: &runner_core::Redactor,
        idle: Duration,
    ) -> Result<runner_core::kit::Written, ApiError> {
        let what = format!("GET {uri}");
        let url = if uri.starts_with("http://") || uri.starts_with("https://") {
            uri.to_string()
        } else {
            format!("{}{uri}", self.base)
        };
        let backoff = runner_core::Backoff::new(self.retry.base, self.retry.max);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self.stream.get(&url).bearer_auth(&self.token.0).send();
            let failure = match tokio::time::timeout(idle, sent).await {
                Err(_) => ApiError::new(
                    ErrorKind::Transient,
                    format!("bench API {what}: no answer for {} s", idle.as_secs()),
                ),
                Ok(Err(e)) => ApiError::new(
                    ErrorKind::Transient,
                    format!("bench API {what}: {}", without_url(&e)),
                ),
                Ok(Ok(response)) if !response.status().is_success() => {
                    let status = response.status();
                    let bytes = response
                        .bytes()
                        .await
                        .map(|b| b.to_vec())
                        .unwrap_or_default();
                    let failure = status_error(&what, status, &bytes, None);
                    if failure.kind != ErrorKind::Transient {
                        return Err(failure);
                    }
                    failure
                }
                Ok(Ok(response)) => {
                    let mut body = Body(response);
                    match runner_core::kit::write_stream(&mut body, path, redactor.clone(), idle)
                        .await
                    {
                        Ok(written) => return Ok(written),
                        Err(runner_core::kit::StreamError::Io(e)) => {
                            return Err(ApiError::new(
                                ErrorKind::Permanent,
                                format!("bench API {what}: writing {}: {e}", path.display()),
                            ));
                        }
                        Err(e) => ApiError::new(
                            ErrorKind::Transient,
                            format!("bench API {what}: the download was cut: {e}"),
                        ),
                    }
                }
            };
            if attempt >= self.retry.attempts {
                return Err(failure);
            }
            tracing::debug!(call = %what, attempt, error = %failure, "retrying the download");
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
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

/// A response body as the kit's chunk source.
struct Body(reqwest::Response);

#[runner_core::async_trait]
impl runner_core::kit::ChunkSource for Body {
    type Chunk = Vec<u8>;
    type Error = String;
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.0.chunk().await {
            Ok(chunk) => Ok(chunk.map(|b| b.to_vec())),
            Err(e) => Err(without_url(&e)),
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
    let kind = runner_core::kit::classify::http_status(status.as_u16());
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
