//! The engine connection: which endpoint, how to reach it, and what its errors mean.

use std::path::PathBuf;

use bollard::{ClientVersion, Docker};
use runner_core::{ErrorKind, PhaseMarker, RunContext, RunnerError};
use serde::{Deserialize, Serialize};

use crate::config::{ContainerConfig, TlsFiles};

/// The API version spoken: Docker 20.10 and Podman 4 both serve it, and
/// everything this runner calls exists in it.
const API_VERSION: &ClientVersion = &ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Where the engine is; kept in the handle so teardown reaches the same
/// engine from any process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `unix:///path`, `tcp://host:port`, `http://...` or `https://...`.
    pub address: String,
    /// Client certificates, for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

impl Endpoint {
    /// The endpoint `config` names, else `DOCKER_HOST` (with
    /// `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`), else the default socket.
    pub fn resolve(config: &ContainerConfig) -> Result<Endpoint, (String, String)> {
        let from_env = config.endpoint.is_none();
        let address = config
            .endpoint
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let key = if from_env {
            "DOCKER_HOST"
        } else {
            "backend.endpoint"
        };
        crate::config::check_endpoint(key, &address)?;
        let address = if address.starts_with('/') {
            format!("unix://{address}")
        } else {
            address
        };
        let tls_env = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0");
        let tls = match &config.tls {
            Some(tls) => Some(tls.clone()),
            None if address.starts_with("https://")
                || (address.starts_with("tcp://") && tls_env) =>
            {
                let dir = std::env::var_os("DOCKER_CERT_PATH")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
                    .ok_or_else(|| {
                        (
                            "DOCKER_CERT_PATH".to_string(),
                            "TLS is asked for, but neither DOCKER_CERT_PATH nor HOME is set"
                                .to_string(),
                        )
                    })?;
                Some(TlsFiles {
                    ca_file: dir.join("ca.pem"),
                    cert_file: dir.join("cert.pem"),
                    key_file: dir.join("key.pem"),
                })
            }
            None => None,
        };
        Ok(Endpoint { address, tls })
    }

    /// A client for this endpoint (no connection is made yet, except that a
    /// unix socket must exist).
    pub fn connect(&self, timeout_seconds: u64) -> Result<Docker, bollard::errors::Error> {
        if let Some(path) = self.address.strip_prefix("unix://") {
            return Docker::connect_with_socket(path, timeout_seconds, API_VERSION);
        }
        match &self.tls {
            Some(tls) => Docker::connect_with_ssl(
                &self.address,
                &tls.key_file,
                &tls.cert_file,
                &tls.ca_file,
                timeout_seconds,
                API_VERSION,
            ),
            None => Docker::connect_with_http(&self.address, timeout_seconds, API_VERSION),
        }
    }
}

/// One container as `GET /containers/json` lists it: the fields leak
/// listing reads, decoded leniently.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Listed {
    /// Its id.
    #[serde(default)]
    pub id: String,
    /// Its names (`/name` from Docker, `name` from Podman).
    #[serde(default)]
    pub names: Vec<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: Option<std::collections::HashMap<String, String>>,
    /// Creation time, seconds since the epoch.
    #[serde(default)]
    pub created: i64,
}

/// The containers with every label in `labels` (`key=value`), running or
/// not.
///
/// Podman 4 lists a stopped container with the state `stopped`, which
/// bollard's typed model refuses (the whole list fails to decode), so over
/// a unix socket or plain TCP the list is fetched with a small HTTP/1.0
/// GET and only the fields needed are decoded. With TLS, bollard's typed
/// call is used (Docker, which never says `stopped`).
pub async fn list_containers(
    docker: &Docker,
    endpoint: &Endpoint,
    labels: &[String],
    timeout: std::time::Duration,
) -> Result<Vec<Listed>, bollard::errors::Error> {
    let filters = serde_json::json!({ "label": labels }).to_string();
    if endpoint.tls.is_some() {
        let filters = std::collections::HashMap::from([("label", labels.to_vec())]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let listed = docker.list_containers(Some(options)).await?;
        return Ok(listed
            .into_iter()
            .map(|c| Listed {
                id: c.id.unwrap_or_default(),
                names: c.names.unwrap_or_default(),
                labels: c.labels,
                created: c.created.unwrap_or_default(),
            })
            .collect());
    }
    let path = format!(
        "/v{}.{}/containers/json?all=1&filters={}",
        API_VERSION.major_version,
        API_VERSION.minor_version,
        percent_encode(&filters)
    );
    let body = tokio::time::timeout(timeout, raw_get(endpoint, &path))
        .await
        .map_err(|_| bollard::errors::Error::RequestTimeoutError)??;
    Ok(serde_json::from_slice(&body)?)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET path` with HTTP/1.0 (the server answers unchunked and closes);
/// the body of a 200, else the engine's error. At most 64 MiB.
async fn raw_get(endpoint: &Endpoint, path: &str) -> Result<Vec<u8>, bollard::errors::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MAX: u64 = 64 * 1024 * 1024;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: docker\r\nAccept: application/json\r\n\r\n");
    let mut response = Vec::new();
    if let Some(socket) = endpoint.address.strip_prefix("unix://") {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        stream.write_all(request.as_bytes()).await?;
        (&mut stream).take(MAX).read_to_end(&mut response).await?;
    } else {
        let host = endpoint
            .address
            .trim_start_matches("tcp://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream.write_all(request.as_bytes()).await?;
        (&mut stream).take(MAX).read_to_end(&mut response).await?;
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("the engine's answer has no header end"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    let body = response.split_off(split + 4);
    if status != 200 {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(bollard::errors::Error::DockerResponseServerError {
            status_code: status,
            message,
        });
    }
    Ok(body)
}

/// The HTTP status of an engine's answer, if the error is one.
pub fn status_of(err: &bollard::errors::Error) -> Option<u16> {
    match err {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Whether the engine said "no such container / image / path".
pub fn is_not_found(err: &bollard::errors::Error) -> bool {
    status_of(err) == Some(404)
}

/// Whether the engine refused a name already in use (Docker says 409;
/// Podman 4 says 500 "is already in use").
pub fn is_name_conflict(err: &bollard::errors::Error) -> bool {
    match err {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => *status_code == 409 || message.contains("already in use"),
        _ => false,
    }
}

/// Whether the request never got an answer (the engine is down, the
/// socket is missing, the connection broke).
pub fn is_unreachable(err: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        err,
        E::SocketNotFoundError(_)
            | E::IOError { .. }
            | E::HyperResponseError { .. }
            | E::HyperLegacyError { .. }
            | E::RequestTimeoutError
    )
}

/// A phase error for a failed engine call: `what` says which call, on which
/// object. Unreachable engines, timeouts and 5xx are transient; a refused
/// request (4xx) is permanent.
pub fn engine_error<P: PhaseMarker>(
    ctx: &RunContext,
    endpoint: &Endpoint,
    what: &str,
    err: &bollard::errors::Error,
) -> RunnerError<P> {
    use bollard::errors::Error as E;
    let (kind, message) = match err {
        E::SocketNotFoundError(path) => (
            ErrorKind::Transient,
            format!(
                "{what}: the container engine at {} is unreachable: no socket at {path} (is the service running?)",
                endpoint.address
            ),
        ),
        E::RequestTimeoutError => (
            ErrorKind::Transient,
            format!(
                "{what}: the container engine at {} did not answer in time",
                endpoint.address
            ),
        ),
        e if is_unreachable(e) => (
            ErrorKind::Transient,
            format!(
                "{what}: the container engine at {} is unreachable: {}",
                endpoint.address,
                chain(e)
            ),
        ),
        E::DockerResponseServerError {
            status_code,
            message,
        } => {
            let kind = match status_code {
                429 => ErrorKind::Capacity,
                500.. => ErrorKind::Transient,
                _ => ErrorKind::Permanent,
            };
            (
                kind,
                format!(
                    "{what}: the engine answered {status_code}: {}",
                    message.trim()
                ),
            )
        }
        e @ (E::CertPathError { .. }
        | E::CertParseError { .. }
        | E::CertMultipleKeys { .. }
        | E::NoHomePathError
        | E::UnsupportedURISchemeError { .. }) => (
            ErrorKind::Permanent,
            format!(
                "{what}: cannot set up the connection to {}: {e}",
                endpoint.address
            ),
        ),
        e => (ErrorKind::Transient, format!("{what}: {}", chain(e))),
    };
    RunnerError::new(kind, ctx, message)
}

/// An error and its causes on one line (hyper's outer errors say little).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_with_their_scheme() {
        let config = ContainerConfig {
            endpoint: Some("/run/podman/podman.sock".into()),
            ..ContainerConfig::default()
        };
        let endpoint = Endpoint::resolve(&config).unwrap();
        assert_eq!(endpoint.address, "unix:///run/podman/podman.sock");
        assert_eq!(endpoint.tls, None);
        let config = ContainerConfig {
            endpoint: Some("tcp://10.0.0.1:2376".into()),
            tls: Some(TlsFiles {
                ca_file: "/c/ca.pem".into(),
                cert_file: "/c/cert.pem".into(),
                key_file: "/c/key.pem".into(),
            }),
            ..ContainerConfig::default()
        };
        let endpoint = Endpoint::resolve(&config).unwrap();
        assert!(endpoint.tls.is_some());
        let config = ContainerConfig {
            endpoint: Some("ftp://x".into()),
            ..ContainerConfig::default()
        };
        assert_eq!(
            Endpoint::resolve(&config).unwrap_err().0,
            "backend.endpoint"
        );
    }

    #[test]
    fn a_missing_socket_is_transient_and_names_the_endpoint() {
        let endpoint = Endpoint {
            address: "unix:///nonexistent/engine.sock".into(),
            tls: None,
        };
        let err = endpoint.connect(5).unwrap_err();
        assert!(is_unreachable(&err));
        let ctx = RunContext::new("e", "c");
        let err: runner_core::ProvisionError = engine_error(&ctx, &endpoint, "ping", &err);
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert!(err.message().contains("/nonexistent/engine.sock"), "{err}");
    }
}
