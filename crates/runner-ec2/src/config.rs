//! The ec2 backend's configuration (`backend:` of a runner config with
//! `type: ec2`) and the bench's own section (`bench.backend`).

use serde::{Deserialize, Serialize};

/// The runner's `backend:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Config {
    /// Region; the default chain's (`AWS_REGION`, profile) when absent.
    #[serde(default)]
    pub region: Option<String>,
    /// Launch from this template (its settings first; the fields below override).
    #[serde(default)]
    pub launch_template: Option<LaunchTemplate>,
    /// AMI, unless the launch template sets it.
    #[serde(default)]
    pub image_id: Option<String>,
    /// Instance type, unless the launch template sets it.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// Subnet to launch into.
    #[serde(default)]
    pub subnet_id: Option<String>,
    /// Security groups.
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// Instance profile, by name or ARN; it needs the SSM core policy and
    /// access to the bucket (docs/adapters/ec2.md).
    #[serde(default)]
    pub instance_profile: Option<String>,
    /// Bucket for packages, output and artifacts.
    pub bucket: String,
    /// Key prefix in the bucket; each execution gets `<prefix>/<execution_id>/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Value of the `orchestrator:managed-by` tag: which orchestrator owns
    /// an instance. Leak listing looks at this owner's instances only.
    #[serde(default = "default_owner")]
    pub owner: String,
    /// Path-style S3 addressing (S3 emulators, some S3-compatible stores).
    #[serde(default)]
    pub force_path_style: bool,
    /// Wait for the instance's SSM agent to report Online before provision
    /// returns.
    #[serde(default = "yes")]
    pub wait_for_ssm: bool,
    /// How long provision waits for running + SSM online when the context
    /// has no deadline.
    #[serde(default = "default_provision_wait")]
    pub provision_wait_seconds: u64,
    /// First poll interval (instance state, command status), milliseconds.
    #[serde(default = "default_poll_initial")]
    pub poll_initial_ms: u64,
    /// Poll interval cap, milliseconds.
    #[serde(default = "default_poll_max")]
    pub poll_max_ms: u64,
    /// How often the instance uploads the growing output for live logs.
    #[serde(default = "default_live_interval")]
    pub live_log_interval_seconds: u64,
    /// Extra time SSM gives the script beyond the test's own timeout, for
    /// fetching the package and uploading output and artifacts.
    #[serde(default = "default_upload_margin")]
    pub upload_margin_seconds: u64,
    /// The AWS CLI on the instance.
    #[serde(default = "default_aws_cli")]
    pub aws_cli: String,
    /// A warm pool; absent means every provision launches.
    #[serde(default)]
    pub pool: Option<PoolConfig>,
}

/// A launch template reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplate {
    /// Template id (`lt-...`); this or `name`.
    #[serde(default)]
    pub id: Option<String>,
    /// Template name; this or `id`.
    #[serde(default)]
    pub name: Option<String>,
    /// Version (`$Latest`, `$Default` or a number); the default version when absent.
    #[serde(default)]
    pub version: Option<String>,
}

/// Warm pool settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Pool name (the `orchestrator:pool` tag): instances of one pool are
    /// interchangeable.
    pub name: String,
    /// Ready instances the background refill keeps.
    #[serde(default)]
    pub min_ready: u32,
    /// A ready instance idle longer than this is terminated, not claimed.
    #[serde(default = "default_max_idle")]
    pub max_idle_seconds: u64,
    /// An instance that has run this many tests is terminated at teardown.
    #[serde(default = "default_max_uses")]
    pub max_uses: u32,
    /// How often the background refill looks at the pool; 0 turns it off.
    #[serde(default = "default_refill_interval")]
    pub refill_interval_seconds: u64,
}

/// The bench's `backend:` section for ec2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchBackend {
    /// Instance type for this bench (overrides the runner's).
    #[serde(default)]
    pub instance_type: Option<String>,
    /// AMI for this bench (overrides the runner's).
    #[serde(default)]
    pub image_id: Option<String>,
    /// Use the warm pool (when one is configured); default true. A bench
    /// that overrides the instance type or AMI never uses the pool.
    #[serde(default)]
    pub pool: Option<bool>,
}

fn yes() -> bool {
    true
}
fn default_prefix() -> String {
    "orchestrator".to_string()
}
fn default_owner() -> String {
    "test-orchestrator".to_string()
}
fn default_provision_wait() -> u64 {
    600
}
fn default_poll_initial() -> u64 {
    500
}
fn default_poll_max() -> u64 {
    5_000
}
fn default_live_interval() -> u64 {
    5
}
fn default_upload_margin() -> u64 {
    300
}
fn default_aws_cli() -> String {
    "aws".to_string()
}
fn default_max_idle() -> u64 {
    3_600
}
fn default_max_uses() -> u32 {
    20
}
fn default_refill_interval() -> u64 {
    30
}

impl Ec2Config {
    /// Check what serde cannot: the error is `(dotted key, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((format!("backend.{key}"), message.to_string()));
        if self.bucket.trim().is_empty() {
            return bad("bucket", "must name the S3 bucket for output and artifacts");
        }
        if self.owner.trim().is_empty() {
            return bad("owner", "must not be empty");
        }
        match &self.launch_template {
            Some(lt) if lt.id.is_none() == lt.name.is_none() => {
                return bad("launch_template", "set exactly one of `id` and `name`");
            }
            Some(_) => {}
            None => {
                if self.image_id.is_none() {
                    return bad("image_id", "required unless `launch_template` is set");
                }
                if self.instance_type.is_none() {
                    return bad("instance_type", "required unless `launch_template` is set");
                }
            }
        }
        if let Some(image) = &self.image_id
            && !image.starts_with("ami-")
        {
            return bad("image_id", "must be an AMI id (ami-...)");
        }
        if self.poll_initial_ms == 0 || self.poll_max_ms < self.poll_initial_ms {
            return bad(
                "poll_max_ms",
                "must be at least poll_initial_ms, which must be above 0",
            );
        }
        if self.live_log_interval_seconds == 0 {
            return bad("live_log_interval_seconds", "must be at least 1");
        }
        if let Some(pool) = &self.pool {
            if pool.name.trim().is_empty() {
                return bad("pool.name", "must not be empty");
            }
            if pool.max_uses == 0 {
                return bad("pool.max_uses", "must be at least 1");
            }
        }
        Ok(())
    }

    /// The key prefix of one execution, ending in `/`.
    pub fn execution_prefix(&self, execution_id: &str) -> String {
        let base = self.prefix.trim_matches('/');
        if base.is_empty() {
            format!("{execution_id}/")
        } else {
            format!("{base}/{execution_id}/")
        }
    }
}

impl BenchBackend {
    /// Check the values; the error is `(field under bench.backend, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(t) = &self.instance_type
            && (t.trim().is_empty() || t.contains(char::is_whitespace))
        {
            return Err((
                "bench.backend.instance_type".to_string(),
                format!("{t:?} is not an instance type"),
            ));
        }
        if let Some(image) = &self.image_id
            && !image.starts_with("ami-")
        {
            return Err((
                "bench.backend.image_id".to_string(),
                format!("{image:?} is not an AMI id (ami-...)"),
            ));
        }
        Ok(())
    }

    /// Whether this bench may take an instance from the pool.
    pub fn uses_pool(&self) -> bool {
        self.pool.unwrap_or(true) && self.instance_type.is_none() && self.image_id.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Ec2Config {
        serde_json::from_value(serde_json::json!({
            "bucket": "b", "image_id": "ami-1", "instance_type": "t3.micro"
        }))
        .unwrap()
    }

    #[test]
    fn validation_names_the_key() {
        assert!(base().validate().is_ok());
        let mut c = base();
        c.image_id = None;
        assert_eq!(c.validate().unwrap_err().0, "backend.image_id");
        let mut c = base();
        c.launch_template = Some(LaunchTemplate {
            id: None,
            name: None,
            version: None,
        });
        assert_eq!(c.validate().unwrap_err().0, "backend.launch_template");
        let mut c = base();
        c.bucket = " ".into();
        assert_eq!(c.validate().unwrap_err().0, "backend.bucket");
        let unknown =
            serde_json::from_value::<Ec2Config>(serde_json::json!({"bucket": "b", "bukket": 1}));
        assert!(unknown.unwrap_err().to_string().contains("bukket"));
    }

    #[test]
    fn execution_prefix_has_one_slash() {
        let mut c = base();
        c.prefix = "/runs/".into();
        assert_eq!(c.execution_prefix("k.1"), "runs/k.1/");
        c.prefix = String::new();
        assert_eq!(c.execution_prefix("k.1"), "k.1/");
    }
}
