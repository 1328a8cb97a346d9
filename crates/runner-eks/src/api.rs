//! Kubernetes API errors in the project's taxonomy, and bounded retries of
//! idempotent calls.

use std::future::Future;
use std::time::Duration;

use runner_core::{ErrorKind, PhaseMarker, RunContext, RunnerError};

/// A failed API call, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sError {
    /// What the caller should do with it.
    pub kind: ErrorKind,
    /// The HTTP status when the server answered.
    pub code: Option<u16>,
    /// The server's reason (`NotFound`, `AlreadyExists`, `Forbidden`...).
    pub reason: String,
    /// What happened, with the operation.
    pub message: String,
}

impl std::fmt::Display for K8sError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for K8sError {}

impl K8sError {
    /// Classify a kube error from operation `op` (`create job orch-1`).
    pub fn classify(op: &str, err: &kube::Error) -> K8sError {
        match err {
            kube::Error::Api(status) => {
                let code = status.code;
                let kind = match code {
                    // 410 Gone: a watch's resource version expired; re-list.
                    410 => ErrorKind::Transient,
                    422 => ErrorKind::InvalidSpec,
                    // A bare 403 is RBAC, or admission refusing a quota
                    // ("exceeded quota"): the message tells them apart.
                    403 => runner_core::kit::classify::message(&status.message)
                        .unwrap_or(ErrorKind::Permanent),
                    _ => runner_core::kit::classify::http_status(code),
                };
                let hint = match code {
                    401 => " (the credentials were refused: check the kubeconfig's user)",
                    403 if kind != ErrorKind::Permanent => "",
                    403 => " (RBAC: the runner's Role lacks this verb; see docs/adapters/eks.md)",
                    _ => "",
                };
                K8sError {
                    kind,
                    code: Some(code),
                    reason: status.reason.clone(),
                    message: format!(
                        "kubernetes {op}: {code} {}: {}{hint}",
                        status.reason, status.message
                    ),
                }
            }
            kube::Error::SerdeError(e) => K8sError {
                kind: ErrorKind::Transient,
                code: None,
                reason: "BadResponse".into(),
                message: format!("kubernetes {op}: the API server's answer did not decode: {e}"),
            },
            kube::Error::Auth(e) => K8sError {
                kind: ErrorKind::Permanent,
                code: None,
                reason: "Auth".into(),
                message: format!("kubernetes {op}: authentication failed: {e}"),
            },
            kube::Error::BuildRequest(e) => K8sError {
                kind: ErrorKind::Permanent,
                code: None,
                reason: "BuildRequest".into(),
                message: format!("kubernetes {op}: {e}"),
            },
            other => K8sError {
                kind: ErrorKind::Transient,
                code: None,
                reason: "Connection".into(),
                // The causes too: "client error (Connect)" alone does not
                // say that the connection was refused, or by whom.
                message: format!("kubernetes {op}: {}", with_causes(other)),
            },
        }
    }

    /// Whether the object was not there.
    pub fn is_not_found(&self) -> bool {
        self.code == Some(404)
    }

    /// Whether the object already exists.
    pub fn is_already_exists(&self) -> bool {
        self.code == Some(409) && self.reason == "AlreadyExists"
    }

    /// As the phase's error, with the context's ids.
    pub fn into_runner<P: PhaseMarker>(self, ctx: &RunContext) -> RunnerError<P> {
        runner_core::kit::classify::into_runner(self, ctx)
    }
}

impl runner_core::kit::BackendError for K8sError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
    fn backend(&self) -> Option<&str> {
        Some(crate::RUNNER_TYPE)
    }
}

/// Delays between retries of one call: 200 ms doubling to 5 s, jittered.
const BACKOFF: runner_core::Backoff =
    runner_core::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Run an idempotent call up to `attempts` times while it fails transiently
/// (jittered exponential backoff from 200 ms, at most 5 s).
pub async fn retry<T, F, Fut>(attempts: u32, op: &str, mut call: F) -> Result<T, K8sError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let err = K8sError::classify(op, &e);
                if err.kind != ErrorKind::Transient || attempt >= attempts {
                    return Err(err);
                }
                tracing::debug!(%op, attempt, error = %err, "retrying a kubernetes call");
                tokio::time::sleep(BACKOFF.delay(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// An error and its causes, each once: "a: b: c".
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "code": code, "reason": reason, "message": message
        }))
        .unwrap();
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn a_403_is_read_by_its_message() {
        let rbac = K8sError::classify(
            "create job x",
            &api_error(
                403,
                "Forbidden",
                "jobs.batch is forbidden: User \"w\" cannot create resource \"jobs\"",
            ),
        );
        assert_eq!(rbac.kind, ErrorKind::Permanent);
        assert!(rbac.message.contains("RBAC"));
        let quota = K8sError::classify(
            "create job x",
            &api_error(
                403,
                "Forbidden",
                "pods \"x\" is forbidden: exceeded quota: team-a, requested: cpu=2, used: cpu=8, limited: cpu=8",
            ),
        );
        assert_eq!(quota.kind, ErrorKind::Capacity);
        let limited = K8sError::classify(
            "get pod",
            &api_error(403, "Forbidden", "rate limit exceeded, retry later"),
        );
        assert_eq!(limited.kind, ErrorKind::Transient);
        assert_eq!(
            K8sError::classify("get pod", &api_error(503, "ServiceUnavailable", "")).kind,
            ErrorKind::Transient
        );
    }
}
