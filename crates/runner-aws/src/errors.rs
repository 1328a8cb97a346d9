//! One classification of AWS errors for every cloud backend.
//!
//! | what                                                         | kind       |
//! |--------------------------------------------------------------|------------|
//! | InsufficientInstanceCapacity, InstanceLimitExceeded, vCPU/spot limits | capacity |
//! | throttling (Throttling, RequestLimitExceeded, SlowDown, ...) | transient  |
//! | service-side 5xx, InternalError, ServiceUnavailable          | transient  |
//! | connection failures, timeouts, unreadable answers            | transient  |
//! | expired credentials (ExpiredToken, RequestExpired, ...)     | transient, with a hint |
//! | auth (AuthFailure, UnauthorizedOperation, AccessDenied, ...) | permanent  |
//! | validation and any other 4xx                                 | permanent  |
//! | a request the SDK could not build                            | permanent  |

use std::fmt;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use runner_core::ErrorKind;

/// An AWS failure reduced to what a runner needs: a kind, the service's
/// error code when there is one, and a message that names the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// How the worker should treat it.
    pub kind: ErrorKind,
    /// The service's error code (`InsufficientInstanceCapacity`, `NoSuchKey`).
    pub code: Option<String>,
    /// The HTTP status, when an answer came back.
    pub status: Option<u16>,
    /// `operation: code: message`.
    pub message: String,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AwsError {}

impl AwsError {
    /// An error of this kind with a message (for answers that parsed but
    /// made no sense).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> AwsError {
        AwsError {
            kind,
            code: None,
            status: None,
            message: message.into(),
        }
    }

    /// Whether the service said this code.
    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// Into a runner error of any phase, with the context's ids.
    pub fn into_runner<P: runner_core::PhaseMarker>(
        self,
        ctx: &runner_core::RunContext,
    ) -> runner_core::RunnerError<P> {
        runner_core::kit::classify::into_runner(self, ctx)
    }
}

impl runner_core::kit::BackendError for AwsError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// The kind for a service error code and HTTP status (the kit's table:
/// `runner_core::kit::classify::aws_code`).
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    runner_core::kit::classify::aws_code(code, status).kind
}

/// Classify any SDK error; `operation` names the call in the message.
pub fn classify<E>(operation: &str, err: &SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let inner = service.err();
            let code = inner.code().map(str::to_string);
            let classified = runner_core::kit::classify::aws_code(code.as_deref(), Some(status));
            let text = inner.message().unwrap_or("no message");
            let hint = classified
                .hint
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            AwsError {
                kind: classified.kind,
                message: format!(
                    "{operation}: {} (HTTP {status}): {text}{hint}",
                    code.as_deref().unwrap_or("unknown error")
                ),
                code,
                status: Some(status),
            }
        }
        SdkError::ConstructionFailure(_) => AwsError::new(
            ErrorKind::Permanent,
            format!(
                "{operation}: the request could not be built: {}",
                source_chain(err)
            ),
        ),
        SdkError::TimeoutError(_) => AwsError::new(
            ErrorKind::Transient,
            format!("{operation}: timed out: {}", source_chain(err)),
        ),
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_user() {
                ErrorKind::Permanent
            } else {
                ErrorKind::Transient
            };
            AwsError::new(
                kind,
                format!("{operation}: could not send: {}", source_chain(err)),
            )
        }
        SdkError::ResponseError(response) => AwsError {
            kind: ErrorKind::Transient,
            code: None,
            status: Some(response.raw().status().as_u16()),
            message: format!("{operation}: unreadable answer: {}", source_chain(err)),
        },
        _ => AwsError::new(
            ErrorKind::Transient,
            format!("{operation}: {}", source_chain(err)),
        ),
    }
}

/// The error and its sources, joined: the SDK's top-level Display alone
/// often says only "dispatch failure".
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(
            classify_code(Some("InsufficientInstanceCapacity"), Some(500)),
            ErrorKind::Capacity
        );
        assert_eq!(
            classify_code(Some("InstanceLimitExceeded"), Some(400)),
            ErrorKind::Capacity
        );
        assert_eq!(
            classify_code(Some("RequestLimitExceeded"), Some(503)),
            ErrorKind::Transient
        );
        assert_eq!(
            classify_code(Some("AuthFailure"), Some(401)),
            ErrorKind::Permanent
        );
        assert_eq!(
            classify_code(Some("UnauthorizedOperation"), Some(403)),
            ErrorKind::Permanent
        );
        assert_eq!(
            classify_code(Some("InvalidParameterValue"), Some(400)),
            ErrorKind::Permanent
        );
        assert_eq!(classify_code(None, Some(502)), ErrorKind::Transient);
        assert_eq!(classify_code(None, Some(429)), ErrorKind::Transient);
        assert_eq!(classify_code(None, None), ErrorKind::Permanent);
        assert_eq!(
            classify_code(Some("ExpiredToken"), Some(400)),
            ErrorKind::Transient
        );
    }
}
