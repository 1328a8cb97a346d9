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
                    408 | 429 | 500..=599 => ErrorKind::Transient,
                    // 410 Gone: a watch's resource version expired; re-list.
                    410 => ErrorKind::Transient,
                    422 => ErrorKind::InvalidSpec,
                    _ => ErrorKind::Permanent,
                };
                let hint = match code {
                    401 => " (the credentials were refused: check the kubeconfig's user)",
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
        RunnerError::new(self.kind, ctx, self.message).with_backend(crate::RUNNER_TYPE)
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
