//! Typed, validated settings: the runner's `backend:` section, the bench's and the payload's.

use std::path::PathBuf;

use runner_core::{ConfigError, RunnerConfig, TestPayload};
use serde::{Deserialize, Serialize};

/// Where tests write what they keep, inside the container.
pub const ARTIFACTS_PATH: &str = "/artifacts";

/// When the engine pulls the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Pull before every provision (a moving tag).
    Always,
    /// Pull only when the engine does not have the image.
    #[default]
    Missing,
    /// Never pull; a missing image is a permanent error naming it.
    Never,
}

/// Client certificate files for an engine on `tcp://` with TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA that signed the engine's certificate (`ca.pem`).
    pub ca_file: PathBuf,
    /// The client certificate (`cert.pem`).
    pub cert_file: PathBuf,
    /// The client key (`key.pem`).
    pub key_file: PathBuf,
}

/// The runner's `backend:` section (`type: container`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The engine: `unix:///run/podman/podman.sock`, `tcp://host:2376`,
    /// `https://host:2376`. Absent: `DOCKER_HOST`, then
    /// `unix:///var/run/docker.sock`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Client certificates for a `tcp://` engine. Absent on `tcp://` with
    /// `DOCKER_TLS_VERIFY` set: `ca.pem`, `cert.pem` and `key.pem` in
    /// `DOCKER_CERT_PATH` (default `~/.docker`).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The owner label: leak listing looks at containers with this owner.
    #[serde(default = "default_owner")]
    pub owner: String,
    /// The image when the bench names none.
    #[serde(default)]
    pub image: Option<String>,
    /// When to pull the image.
    #[serde(default)]
    pub pull: PullPolicy,
    /// Memory limit in MiB (no swap beyond it); the kernel kills the test
    /// when it goes over.
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
    /// CPUs the test may use (fractions allowed).
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    /// Most processes and threads at once in the container.
    #[serde(default = "default_pids")]
    pub pids_limit: i64,
    /// The user the test runs as (`uid`, `uid:gid` or a name in the image).
    #[serde(default = "default_user")]
    pub user: String,
    /// Let `user` be root. Off: a root user is refused.
    #[serde(default)]
    pub allow_root: bool,
    /// The container's network: `none` (no interface but loopback), or a
    /// network the engine knows (`bridge`, `podman`, `host`...).
    #[serde(default = "default_network")]
    pub network: String,
    /// Mount the image read-only (`/artifacts` and a `/tmp` tmpfs stay writable).
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// Seconds between SIGTERM and SIGKILL when a run is stopped.
    #[serde(default = "default_grace")]
    pub stop_grace_seconds: u64,
    /// How long one engine request may take to answer (streams excepted).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
    /// Each collected log file stops growing at this size; a marker line says so.
    #[serde(default = "default_max_log")]
    pub max_log_bytes: u64,
    /// Where artifacts are written (from the runner config's `artifacts_dir`).
    #[serde(skip, default = "default_artifacts")]
    pub artifacts_dir: PathBuf,
}

fn default_owner() -> String {
    "test-orchestrator".into()
}
fn default_memory() -> u64 {
    1024
}
fn default_cpus() -> f64 {
    1.0
}
fn default_pids() -> i64 {
    512
}
fn default_user() -> String {
    "1000:1000".into()
}
fn default_network() -> String {
    "none".into()
}
fn default_grace() -> u64 {
    5
}
fn default_request_timeout() -> u64 {
    120
}
fn default_max_log() -> u64 {
    1024 * 1024 * 1024
}
fn default_artifacts() -> PathBuf {
    PathBuf::from("artifacts")
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            tls: None,
            owner: default_owner(),
            image: None,
            pull: PullPolicy::default(),
            memory_mb: default_memory(),
            cpus: default_cpus(),
            pids_limit: default_pids(),
            user: default_user(),
            allow_root: false,
            network: default_network(),
            read_only_rootfs: false,
            stop_grace_seconds: default_grace(),
            request_timeout_seconds: default_request_timeout(),
            max_log_bytes: default_max_log(),
            artifacts_dir: default_artifacts(),
        }
    }
}

/// The bench's `backend:` section: what differs per bench. Each field
/// replaces the runner's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerBench {
    /// The image.
    #[serde(default)]
    pub image: Option<String>,
    /// When to pull it.
    #[serde(default)]
    pub pull: Option<PullPolicy>,
    /// Memory limit in MiB.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// CPUs.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Process limit.
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// The user.
    #[serde(default)]
    pub user: Option<String>,
    /// The network.
    #[serde(default)]
    pub network: Option<String>,
    /// Read-only image.
    #[serde(default)]
    pub read_only_rootfs: Option<bool>,
}

/// The payload's `backend:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPayload {}

/// Everything the container is made with, resolved from runner and bench;
/// kept in the handle so `run_test` makes the same sandbox in any process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    /// The image.
    pub image: String,
    /// Memory limit in MiB.
    pub memory_mb: u64,
    /// CPUs.
    pub cpus: f64,
    /// Process limit.
    pub pids_limit: i64,
    /// The user.
    pub user: String,
    /// The network mode.
    pub network: String,
    /// Read-only image.
    pub read_only_rootfs: bool,
}

/// A bad setting: the dotted key and what is wrong.
pub type Bad = (String, String);

fn bad<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T, Bad> {
    Err((key.into(), message.into()))
}

/// Memory limits the engines accept: Docker refuses less than 6 MiB.
const MEMORY_MB: std::ops::RangeInclusive<u64> = 6..=1024 * 1024;
/// CPUs: above zero, at most 1024.
const MAX_CPUS: f64 = 1024.0;
/// Processes: at least one, at most the kernel's `pid_max` ceiling.
const PIDS: std::ops::RangeInclusive<i64> = 1..=4_194_304;

fn check_image(key: &str, image: &str) -> Result<(), Bad> {
    if image.trim().is_empty() {
        return bad(key, "must not be empty");
    }
    if image.len() > 255 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(
            key,
            format!("{image:?} is not an image reference (no spaces, at most 255 characters)"),
        );
    }
    Ok(())
}

fn check_memory(key: &str, mb: u64) -> Result<(), Bad> {
    if !MEMORY_MB.contains(&mb) {
        return bad(
            key,
            format!(
                "must be between {} and {} (MiB), got {mb}",
                MEMORY_MB.start(),
                MEMORY_MB.end()
            ),
        );
    }
    Ok(())
}

fn check_cpus(key: &str, cpus: f64) -> Result<(), Bad> {
    // NaN fails both comparisons, so it is refused too.
    if !(0.01..=MAX_CPUS).contains(&cpus) {
        return bad(
            key,
            format!("must be between 0.01 and {MAX_CPUS}, got {cpus}"),
        );
    }
    Ok(())
}

fn check_pids(key: &str, pids: i64) -> Result<(), Bad> {
    if !PIDS.contains(&pids) {
        return bad(
            key,
            format!(
                "must be between {} and {}, got {pids}",
                PIDS.start(),
                PIDS.end()
            ),
        );
    }
    Ok(())
}

/// Whether `user` names root: `root`, `0`, `0:gid`, `root:group`.
pub fn is_root_user(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or_default();
    name == "root" || name.trim_start_matches('0').is_empty() && !name.is_empty()
}

fn check_user(key: &str, user: &str, allow_root: bool) -> Result<(), Bad> {
    let name_ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 64
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let mut parts = user.split(':');
    let valid = match (parts.next(), parts.next(), parts.next()) {
        (Some(u), None, None) => name_ok(u),
        (Some(u), Some(g), None) => name_ok(u) && name_ok(g),
        _ => false,
    };
    if !valid {
        return bad(
            key,
            format!("{user:?} is not a user (`uid`, `uid:gid`, `name` or `name:group`)"),
        );
    }
    if is_root_user(user) && !allow_root {
        return bad(
            key,
            format!(
                "{user:?} is root; tests run as a non-root user (set backend.allow_root: true in the runner config to permit it)"
            ),
        );
    }
    Ok(())
}

fn check_network(key: &str, network: &str) -> Result<(), Bad> {
    let ok = !network.is_empty()
        && network.len() <= 64
        && network
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return bad(
            key,
            format!(
                "{network:?} is not a network name (`none`, `bridge`, a network the engine knows)"
            ),
        );
    }
    Ok(())
}

fn check_owner(key: &str, owner: &str) -> Result<(), Bad> {
    let ok = !owner.is_empty()
        && owner.len() <= 63
        && owner.starts_with(|c: char| c.is_ascii_alphanumeric())
        && owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return bad(
            key,
            format!(
                "{owner:?} must be 1 to 63 letters, digits, `-`, `_` or `.`, starting with a letter or digit"
            ),
        );
    }
    Ok(())
}

/// Whether `endpoint` has a scheme this runner speaks.
pub fn check_endpoint(key: &str, endpoint: &str) -> Result<(), Bad> {
    let known = ["unix://", "tcp://", "http://", "https://"];
    if endpoint.starts_with('/') || known.iter().any(|s| endpoint.starts_with(s)) {
        let rest = known
            .iter()
            .find_map(|s| endpoint.strip_prefix(s))
            .unwrap_or(endpoint);
        if rest.is_empty() {
            return bad(key, format!("{endpoint:?} names no socket or address"));
        }
        return Ok(());
    }
    bad(
        key,
        format!(
            "{endpoint:?} is not an engine address (unix:///path, tcp://host:port, http://host:port, https://host:port)"
        ),
    )
}

impl ContainerConfig {
    /// From a runner config: its `backend` section (checked) and `artifacts_dir`.
    pub fn from_runner_config(config: &RunnerConfig) -> Result<Self, ConfigError> {
        let mut container: ContainerConfig = config.backend_section()?;
        container.artifacts_dir = config.artifacts_dir.clone();
        container
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        Ok(container)
    }

    /// Check what serde cannot; the error is `(dotted key, message)`.
    pub fn validate(&self) -> Result<(), Bad> {
        if let Some(endpoint) = &self.endpoint {
            check_endpoint("backend.endpoint", endpoint)?;
        }
        check_owner("backend.owner", &self.owner)?;
        if let Some(image) = &self.image {
            check_image("backend.image", image)?;
        }
        check_memory("backend.memory_mb", self.memory_mb)?;
        check_cpus("backend.cpus", self.cpus)?;
        check_pids("backend.pids_limit", self.pids_limit)?;
        check_user("backend.user", &self.user, self.allow_root)?;
        check_network("backend.network", &self.network)?;
        if self.stop_grace_seconds > 300 {
            return bad(
                "backend.stop_grace_seconds",
                format!("must be at most 300, got {}", self.stop_grace_seconds),
            );
        }
        if !(1..=3600).contains(&self.request_timeout_seconds) {
            return bad(
                "backend.request_timeout_seconds",
                format!(
                    "must be between 1 and 3600, got {}",
                    self.request_timeout_seconds
                ),
            );
        }
        if self.max_log_bytes == 0 {
            return bad("backend.max_log_bytes", "must be above 0");
        }
        Ok(())
    }

    /// The sandbox for `bench`: its fields over the runner's, checked; the
    /// error names the bench field (`bench.backend.memory_mb`).
    pub fn sandbox(&self, bench: &ContainerBench) -> Result<(Sandbox, PullPolicy), Bad> {
        let image = match (&bench.image, &self.image) {
            (Some(image), _) => {
                check_image("bench.backend.image", image)?;
                image.clone()
            }
            (None, Some(image)) => image.clone(),
            (None, None) => {
                return bad(
                    "bench.backend.image",
                    "no image: name one in the bench or in the runner config's backend.image",
                );
            }
        };
        if let Some(mb) = bench.memory_mb {
            check_memory("bench.backend.memory_mb", mb)?;
        }
        if let Some(cpus) = bench.cpus {
            check_cpus("bench.backend.cpus", cpus)?;
        }
        if let Some(pids) = bench.pids_limit {
            check_pids("bench.backend.pids_limit", pids)?;
        }
        if let Some(user) = &bench.user {
            check_user("bench.backend.user", user, self.allow_root)?;
        }
        if let Some(network) = &bench.network {
            check_network("bench.backend.network", network)?;
        }
        Ok((
            Sandbox {
                image,
                memory_mb: bench.memory_mb.unwrap_or(self.memory_mb),
                cpus: bench.cpus.unwrap_or(self.cpus),
                pids_limit: bench.pids_limit.unwrap_or(self.pids_limit),
                user: bench.user.clone().unwrap_or_else(|| self.user.clone()),
                network: bench
                    .network
                    .clone()
                    .unwrap_or_else(|| self.network.clone()),
                read_only_rootfs: bench.read_only_rootfs.unwrap_or(self.read_only_rootfs),
            },
            bench.pull.unwrap_or(self.pull),
        ))
    }
}

/// Check the payload fields this backend reads its own way.
pub fn check_payload(payload: &TestPayload) -> Result<(), Bad> {
    if payload.command.is_empty() || payload.command[0].is_empty() {
        return bad("payload.command", "must name a program");
    }
    if payload.package.is_some() {
        return bad(
            "payload.package",
            "the container backend runs what its image holds; build the package into the image",
        );
    }
    if let Some(dir) = &payload.working_dir
        && (!dir.starts_with('/') || dir.contains('\0'))
    {
        return bad(
            "payload.working_dir",
            format!("{dir:?} must be an absolute path inside the container"),
        );
    }
    for (name, value) in &payload.env {
        let ok = !name.is_empty()
            && !name.contains('=')
            && !name.contains('\0')
            && !value.value().contains('\0');
        if !ok {
            return bad(
                format!("payload.env.{name}"),
                "names and values must not contain `=` (names) or NUL bytes",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_safe() {
        let config = ContainerConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.network, "none");
        assert!(!is_root_user(&config.user));
    }

    #[test]
    fn unknown_keys_and_bad_numbers_name_the_key() {
        let err = serde_json::from_value::<ContainerConfig>(serde_json::json!({"memroy_mb": 5}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("memroy_mb"), "{err}");
        for (json, key) in [
            (serde_json::json!({"memory_mb": 2}), "backend.memory_mb"),
            (serde_json::json!({"cpus": 0.0}), "backend.cpus"),
            (serde_json::json!({"pids_limit": 0}), "backend.pids_limit"),
            (serde_json::json!({"user": "root"}), "backend.user"),
            (serde_json::json!({"user": "0:0"}), "backend.user"),
            (serde_json::json!({"user": "a b"}), "backend.user"),
            (serde_json::json!({"network": "x y"}), "backend.network"),
            (
                serde_json::json!({"endpoint": "ftp://x"}),
                "backend.endpoint",
            ),
            (serde_json::json!({"owner": ""}), "backend.owner"),
            (
                serde_json::json!({"request_timeout_seconds": 0}),
                "backend.request_timeout_seconds",
            ),
        ] {
            let config: ContainerConfig = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(config.validate().unwrap_err().0, key, "{json}");
        }
        let root: ContainerConfig =
            serde_json::from_value(serde_json::json!({"user": "0", "allow_root": true})).unwrap();
        assert_eq!(root.validate(), Ok(()));
        assert!(!is_root_user("1000"));
        assert!(!is_root_user("10"));
        assert!(is_root_user("00:1"));
    }

    #[test]
    fn bench_fields_override_and_name_their_key() {
        let config = ContainerConfig {
            image: Some("base".into()),
            ..ContainerConfig::default()
        };
        let (sandbox, pull) = config
            .sandbox(&ContainerBench {
                memory_mb: Some(64),
                pull: Some(PullPolicy::Never),
                ..ContainerBench::default()
            })
            .unwrap();
        assert_eq!(sandbox.image, "base");
        assert_eq!(sandbox.memory_mb, 64);
        assert_eq!(pull, PullPolicy::Never);
        let (key, _) = config
            .sandbox(&ContainerBench {
                cpus: Some(f64::NAN),
                ..ContainerBench::default()
            })
            .unwrap_err();
        assert_eq!(key, "bench.backend.cpus");
        let (key, message) = ContainerConfig::default()
            .sandbox(&ContainerBench::default())
            .unwrap_err();
        assert_eq!(key, "bench.backend.image");
        assert!(message.contains("no image"), "{message}");
    }

    #[test]
    fn payload_checks() {
        let mut payload = TestPayload::new(["true"]);
        assert_eq!(check_payload(&payload), Ok(()));
        payload.working_dir = Some("rel".into());
        assert_eq!(
            check_payload(&payload).unwrap_err().0,
            "payload.working_dir"
        );
        payload.working_dir = None;
        payload.package = Some("dir".into());
        assert_eq!(check_payload(&payload).unwrap_err().0, "payload.package");
    }
}
