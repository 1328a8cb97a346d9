//! The runner's `backend:` section, the bench's and the payload's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Toleration;
use serde::{Deserialize, Serialize};

/// The runner's `backend:` section (`type: eks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EksConfig {
    /// A kubeconfig file. Absent: `KUBECONFIG`, `~/.kube/config`, then the
    /// in-cluster service account, as kubectl does.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[serde(default)]
    pub context: Option<String>,
    /// Where Jobs run.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The test container's image when neither bench nor payload names one.
    #[serde(default)]
    pub image: Option<String>,
    /// The pod's service account (IRSA / pod identity for the uploader).
    #[serde(default)]
    pub service_account: Option<String>,
    /// Secrets for pulling private images.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// Node labels the pod must match.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pod tolerates (Kubernetes' own toleration fields).
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// Requests and limits of the test container.
    #[serde(default)]
    pub resources: Resources,
    /// The non-root user the containers run as.
    #[serde(default = "default_run_as_user")]
    pub run_as_user: i64,
    /// Kubernetes deletes a finished Job after this long (a backstop: the
    /// runner deletes it at teardown).
    #[serde(default = "default_ttl")]
    pub ttl_seconds_after_finished: i32,
    /// The owner label; leak listing looks at Jobs with this owner.
    #[serde(default = "default_owner")]
    pub owner: String,
    /// How long a pod may take to start (scheduling, image pull) when the
    /// context has no deadline.
    #[serde(default = "default_pod_start")]
    pub pod_start_timeout_seconds: u64,
    /// Reconnects of the log stream without a new line before the run is a
    /// transient error.
    #[serde(default = "default_reconnects")]
    pub log_reconnects: u32,
    /// Attempts of one idempotent API call (5xx, 429, connection errors).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Where artifacts go (absent: only the log, kept on the worker).
    #[serde(default)]
    pub artifacts: Option<ArtifactsConfig>,
}

/// Artifacts through S3: the test writes into `/artifacts`; the uploader
/// sidecar copies that directory to the execution's prefix when the test
/// container ends; the adapter lists the prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// The bucket (S3); empty with `volume`.
    #[serde(default)]
    pub bucket: String,
    /// A shared volume instead of S3: a PersistentVolumeClaim (an EFS-backed
    /// one, typically) mounted at `/artifacts` in the pod, with each
    /// execution in its own sub-directory, read back by the worker from
    /// the same filesystem mounted at `worker_path`.
    #[serde(default)]
    pub volume: Option<ArtifactsVolume>,
    /// Key prefix; each execution gets `{prefix}/{execution_id}/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// An image with the AWS CLI (`aws s3 cp`), run as a native sidecar.
    /// Absent: the test image uploads itself, to `$ARTIFACTS_S3_URI`.
    #[serde(default)]
    pub uploader_image: Option<String>,
    /// The AWS region (default: the SDK's chain).
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style S3 addressing (S3-compatible stores, emulators).
    #[serde(default)]
    pub force_path_style: bool,
    /// How long the uploader sidecar may take after the test container
    /// ends (the pod's `terminationGracePeriodSeconds`); the run waits for
    /// it before collecting.
    #[serde(default = "default_upload_timeout")]
    pub upload_timeout_seconds: u64,
}

/// The `artifacts.volume` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsVolume {
    /// The PersistentVolumeClaim (in the runner's namespace).
    pub claim_name: String,
    /// Where the worker sees the same filesystem (absolute).
    pub worker_path: PathBuf,
}

/// Container resources as Kubernetes quantities (`500m`, `1Gi`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Requests (scheduling).
    #[serde(default = "default_requests")]
    pub requests: BTreeMap<String, String>,
    /// Limits (a container over its memory limit is OOMKilled).
    #[serde(default = "default_limits")]
    pub limits: BTreeMap<String, String>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            requests: default_requests(),
            limits: default_limits(),
        }
    }
}

fn default_requests() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cpu".to_string(), "250m".to_string()),
        ("memory".to_string(), "256Mi".to_string()),
    ])
}
fn default_limits() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cpu".to_string(), "1".to_string()),
        ("memory".to_string(), "1Gi".to_string()),
    ])
}
fn default_namespace() -> String {
    "default".into()
}
fn default_run_as_user() -> i64 {
    1000
}
fn default_ttl() -> i32 {
    3600
}
fn default_owner() -> String {
    "test-orchestrator".into()
}
fn default_pod_start() -> u64 {
    600
}
fn default_reconnects() -> u32 {
    20
}
fn default_attempts() -> u32 {
    4
}
fn default_upload_timeout() -> u64 {
    300
}

fn default_prefix() -> String {
    "orchestrator".into()
}

/// Whether `value` is a valid label value (63 characters, alphanumerics at
/// both ends, `-_.` inside).
pub fn is_label_value(value: &str) -> bool {
    value.len() <= 63
        && (value.is_empty()
            || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric())
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))))
}

/// Whether `name` is a DNS-1123 label (namespaces, most object names).
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `name` is a DNS-1123 subdomain (secret and Job names).
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

impl EksConfig {
    /// Check what serde cannot; the error is `(dotted key, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("backend.{k}"), m));
        if !is_dns_label(&self.namespace) {
            return bad(
                "namespace",
                format!("{:?} is not a DNS-1123 label", self.namespace),
            );
        }
        if let Some(image) = &self.image
            && image.trim().is_empty()
        {
            return bad("image", "must not be empty".into());
        }
        if self.owner.is_empty() || !is_label_value(&self.owner) {
            return bad(
                "owner",
                format!(
                    "{:?} must be a Kubernetes label value (63 characters, [A-Za-z0-9-_.])",
                    self.owner
                ),
            );
        }
        if self.run_as_user <= 0 {
            return bad("run_as_user", "must be a non-root user id (above 0)".into());
        }
        if self.ttl_seconds_after_finished < 0 {
            return bad("ttl_seconds_after_finished", "must not be negative".into());
        }
        if self.attempts == 0 {
            return bad("attempts", "must be at least 1".into());
        }
        for (i, secret) in self.image_pull_secrets.iter().enumerate() {
            if !is_dns_subdomain(secret) {
                return bad(
                    &format!("image_pull_secrets[{i}]"),
                    format!("{secret:?} is not a secret name"),
                );
            }
        }
        check_resources(&self.resources).map_err(|(k, m)| (format!("backend.resources.{k}"), m))?;
        if let Some(artifacts) = &self.artifacts {
            if let Some(volume) = &artifacts.volume {
                if !artifacts.bucket.is_empty() || artifacts.uploader_image.is_some() {
                    return bad(
                        "artifacts.volume",
                        "goes without `bucket` and `uploader_image`: artifacts go through S3 or a volume".into(),
                    );
                }
                if !is_dns_subdomain(&volume.claim_name) {
                    return bad(
                        "artifacts.volume.claim_name",
                        format!(
                            "{:?} is not a PersistentVolumeClaim name",
                            volume.claim_name
                        ),
                    );
                }
                if !volume.worker_path.is_absolute() {
                    return bad(
                        "artifacts.volume.worker_path",
                        "must be an absolute path on the worker".into(),
                    );
                }
            } else if artifacts.bucket.trim().is_empty() {
                return bad("artifacts.bucket", "must not be empty".into());
            }
            if artifacts.upload_timeout_seconds == 0 || artifacts.upload_timeout_seconds > 3600 {
                return bad(
                    "artifacts.upload_timeout_seconds",
                    format!(
                        "must be between 1 and 3600, got {}",
                        artifacts.upload_timeout_seconds
                    ),
                );
            }
            if artifacts.prefix.starts_with('/') || artifacts.prefix.contains("..") {
                return bad("artifacts.prefix", "must be relative, without `..`".into());
            }
        }
        Ok(())
    }

    /// The S3 prefix of one execution (ends with `/`); `None` without S3.
    pub fn execution_prefix(&self, execution_id: &str) -> Option<String> {
        self.artifacts
            .as_ref()
            .filter(|a| a.volume.is_none())
            .map(|a| execution_dir(&a.prefix, execution_id))
    }

    /// The volume and one execution's sub-directory on it (ends with `/`);
    /// `None` without `artifacts.volume`.
    pub fn volume_dir(&self, execution_id: &str) -> Option<(&ArtifactsVolume, String)> {
        let artifacts = self.artifacts.as_ref()?;
        let volume = artifacts.volume.as_ref()?;
        Some((volume, execution_dir(&artifacts.prefix, execution_id)))
    }
}

/// `{prefix}/{execution_id}/`, or `{execution_id}/` without a prefix.
fn execution_dir(prefix: &str, execution_id: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{execution_id}/")
    } else {
        format!("{prefix}/{execution_id}/")
    }
}

/// Requests and limits use known resource names and quantity syntax.
pub fn check_resources(resources: &Resources) -> Result<(), (String, String)> {
    for (section, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        for (name, quantity) in map {
            let known = matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage")
                || name.contains('/');
            if !known {
                return Err((
                    format!("{section}.{name}"),
                    "is not a resource name (cpu, memory, ephemeral-storage or a vendor/name)"
                        .into(),
                ));
            }
            if !is_quantity(quantity) {
                return Err((
                    format!("{section}.{name}"),
                    format!("{quantity:?} is not a Kubernetes quantity (like 500m, 2, 1Gi)"),
                ));
            }
        }
    }
    Ok(())
}

/// A Kubernetes quantity: a decimal number and an optional suffix.
pub fn is_quantity(q: &str) -> bool {
    let number_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    let number_ok = !number.is_empty()
        && number.chars().filter(|&c| c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    );
    number_ok && suffix_ok
}

/// The bench's `backend:` section: what differs per bench.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchBackend {
    /// The image (overrides the runner's).
    #[serde(default)]
    pub image: Option<String>,
    /// Extra node labels to match.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Resources (replace the runner's when given).
    #[serde(default)]
    pub resources: Option<Resources>,
}

impl BenchBackend {
    /// Check what serde cannot, naming the key under `bench.backend`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(image) = &self.image
            && image.trim().is_empty()
        {
            return Err(("bench.backend.image".into(), "must not be empty".into()));
        }
        if let Some(resources) = &self.resources {
            check_resources(resources)
                .map_err(|(k, m)| (format!("bench.backend.resources.{k}"), m))?;
        }
        Ok(())
    }
}

/// The payload's `backend:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadBackend {
    /// The image for this test (overrides bench and runner).
    #[serde(default)]
    pub image: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_labels() {
        for ok in ["1", "500m", "1Gi", "0.5", "256Mi", "2"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "1GB", "1..2", "-1", "1 Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        assert!(is_label_value("contract-full-1"));
        assert!(!is_label_value("-x"));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(is_dns_label("tests"));
        assert!(!is_dns_label("Tests"));
    }

    #[test]
    fn validation_names_the_key() {
        let mut config: EksConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(config.validate(), Ok(()));
        config
            .resources
            .limits
            .insert("memory".into(), "lots".into());
        let (key, message) = config.validate().unwrap_err();
        assert_eq!(key, "backend.resources.limits.memory");
        assert!(message.contains("lots"), "{message}");
        let err = serde_json::from_value::<EksConfig>(serde_json::json!({"namepsace": "x"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("namepsace"), "{err}");
        let config: EksConfig = serde_json::from_value(serde_json::json!({
            "artifacts": {"bucket": "b", "upload_timeout_seconds": 0},
        }))
        .unwrap();
        let (key, _) = config.validate().unwrap_err();
        assert_eq!(key, "backend.artifacts.upload_timeout_seconds");
    }
}
