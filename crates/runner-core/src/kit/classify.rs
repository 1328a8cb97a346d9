//! Error classification every backend shares: HTTP statuses, AWS error
//! codes and the free-text messages registries and quota systems answer
//! with, each to the taxonomy; and the one conversion of a backend's
//! classified error into a phase error.
//!
//! | what                                                      | kind       |
//! |-----------------------------------------------------------|------------|
//! | 408, 425, 429, 5xx                                        | transient  |
//! | AWS throttling, 5xx codes                                 | transient  |
//! | AWS expired credentials (ExpiredToken, RequestExpired...) | transient, with a hint |
//! | AWS capacity and limit codes                              | capacity   |
//! | a message saying rate limit, 429 or a 5xx                 | transient  |
//! | a message saying quota or limit exceeded                  | capacity   |
//! | any other 4xx                                             | permanent  |

use std::time::Duration;

use crate::context::RunContext;
use crate::error::{ErrorKind, RunnerError};
use crate::phase::PhaseMarker;

/// The kind for an HTTP status: 408, 425, 429 and 5xx are worth a retry.
pub fn http_status(status: u16) -> ErrorKind {
    match status {
        408 | 425 | 429 | 500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

/// AWS codes that mean "no capacity or quota right now".
const AWS_CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InstanceLimitExceeded",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "MaxSpotInstanceCountExceeded",
    "VcpuLimitExceeded",
    "ReservationCapacityExceeded",
];

/// AWS codes of throttling and service-side failures.
const AWS_TRANSIENT: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "Unavailable",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// AWS codes of credentials that expired (or a clock that drifted): a retry
/// loads fresh ones from the chain.
const AWS_EXPIRED: &[&str] = &[
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "TokenRefreshRequired",
    "RequestTimeTooSkewed",
];

/// What [`aws_code`] says: a kind and, for some codes, a hint for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// How the worker should treat it.
    pub kind: ErrorKind,
    /// What to check when it repeats.
    pub hint: Option<&'static str>,
}

/// The hint given with expired AWS credentials.
pub const EXPIRED_CREDENTIALS_HINT: &str = "the AWS credentials expired or the clock is off; the retry loads fresh ones from the credential chain; if it repeats, check the credential source (role session length, SSO login) and the worker's clock";

/// The kind for an AWS error code and HTTP status.
pub fn aws_code(code: Option<&str>, status: Option<u16>) -> Classified {
    let plain = |kind| Classified { kind, hint: None };
    match code {
        Some(code) if AWS_CAPACITY.contains(&code) => plain(ErrorKind::Capacity),
        Some(code) if AWS_TRANSIENT.contains(&code) => plain(ErrorKind::Transient),
        Some(code) if AWS_EXPIRED.contains(&code) => Classified {
            kind: ErrorKind::Transient,
            hint: Some(EXPIRED_CREDENTIALS_HINT),
        },
        _ => plain(status.map_or(ErrorKind::Permanent, http_status)),
    }
}

/// The kind a free-text failure message implies, when it says: rate limits,
/// throttling and server errors are transient, quota and limits exceeded
/// are capacity. `None` when the text says nothing of the sort (the caller
/// keeps its own default). Registries answer image pulls this way, and
/// Kubernetes admission answers quota with a bare 403.
pub fn message(text: &str) -> Option<ErrorKind> {
    let t = text.to_ascii_lowercase();
    const CAPACITY: &[&str] = &[
        "exceeded quota",
        "quota exceeded",
        "exceeds quota",
        "resourcequota",
        "insufficient quota",
        "limit exceeded",
        "limitexceeded",
    ];
    const TRANSIENT: &[&str] = &[
        "429",
        "too many requests",
        "toomanyrequests",
        "rate limit",
        "ratelimit",
        "rate exceeded",
        "throttl",
        "500 internal server error",
        "502 bad gateway",
        "503 service unavailable",
        "504 gateway timeout",
        "status code 500",
        "status code 502",
        "status code 503",
        "status code 504",
        "service unavailable",
        "i/o timeout",
        "tls handshake timeout",
        "connection reset",
        "connection refused",
        "temporary failure in name resolution",
        "context deadline exceeded",
    ];
    // Rate limits first: "rate limit exceeded" passes by itself, it is
    // not a quota someone must raise.
    if TRANSIENT.iter().any(|p| t.contains(p)) {
        Some(ErrorKind::Transient)
    } else if CAPACITY.iter().any(|p| t.contains(p)) {
        Some(ErrorKind::Capacity)
    } else {
        None
    }
}

/// A backend's own classified error (AWS, bench API, Kubernetes): what the
/// one conversion into a phase error needs.
pub trait BackendError: std::error::Error + Send + Sync + Sized + 'static {
    /// How the worker should treat it.
    fn kind(&self) -> ErrorKind;
    /// The message, safe to log.
    fn text(&self) -> String {
        self.to_string()
    }
    /// The backend to name, when the error says it.
    fn backend(&self) -> Option<&str> {
        None
    }
    /// A delay the remote side asked for.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// `err` as a phase error with the context's ids, its backend and delay,
/// and itself as the source.
pub fn into_runner<P: PhaseMarker, E: BackendError>(err: E, ctx: &RunContext) -> RunnerError<P> {
    let mut out = RunnerError::new(err.kind(), ctx, err.text());
    if let Some(backend) = err.backend() {
        out = out.with_backend(backend.to_owned());
    }
    if let Some(after) = err.retry_after() {
        out = out.with_retry_after(after);
    }
    out.with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        for s in [408, 425, 429, 500, 503, 599] {
            assert_eq!(http_status(s), ErrorKind::Transient, "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert_eq!(http_status(s), ErrorKind::Permanent, "{s}");
        }
    }

    #[test]
    fn aws_codes() {
        let kind = |c: &str, s| aws_code(Some(c), Some(s)).kind;
        assert_eq!(
            kind("InsufficientInstanceCapacity", 500),
            ErrorKind::Capacity
        );
        assert_eq!(kind("InstanceLimitExceeded", 400), ErrorKind::Capacity);
        assert_eq!(kind("RequestLimitExceeded", 503), ErrorKind::Transient);
        assert_eq!(kind("ThrottlingException", 400), ErrorKind::Transient);
        assert_eq!(kind("AuthFailure", 401), ErrorKind::Permanent);
        assert_eq!(kind("InvalidParameterValue", 400), ErrorKind::Permanent);
        for expired in ["ExpiredToken", "RequestExpired", "ExpiredTokenException"] {
            let c = aws_code(Some(expired), Some(400));
            assert_eq!(c.kind, ErrorKind::Transient, "{expired}");
            assert_eq!(c.hint, Some(EXPIRED_CREDENTIALS_HINT));
        }
        assert_eq!(aws_code(None, Some(502)).kind, ErrorKind::Transient);
        assert_eq!(aws_code(None, None).kind, ErrorKind::Permanent);
    }

    #[test]
    fn messages() {
        assert_eq!(
            message("failed to pull image: 429 Too Many Requests: toomanyrequests"),
            Some(ErrorKind::Transient)
        );
        assert_eq!(
            message("unexpected status code 503 Service Unavailable"),
            Some(ErrorKind::Transient)
        );
        assert_eq!(
            message("pods \"x\" is forbidden: exceeded quota: team-a, requested: cpu=2"),
            Some(ErrorKind::Capacity)
        );
        assert_eq!(message("rate limit exceeded"), Some(ErrorKind::Transient));
        assert_eq!(message("manifest unknown"), None);
        assert_eq!(message("User cannot create resource jobs"), None);
    }
}
