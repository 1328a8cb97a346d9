//! The worker's config file: queue, worker knobs and the runners it serves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runner_core::{ConfigError, RunnerConfig};
use serde::{Deserialize, Serialize};

use crate::policy::Backoff;

mod api_section;
pub use api_section::{ApiSection, TlsSection};

/// Where the queue and the store live (see [`crate::backends::open`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    /// The SQLite file (created if missing, mode 0600): queue and store of
    /// one machine, unless `postgres` is set.
    #[serde(default = "default_db")]
    pub path: PathBuf,
    /// PostgreSQL: queue and store of a fleet (or the store beside SQS).
    #[serde(default)]
    pub postgres: Option<PostgresSection>,
    /// Take tasks from Amazon SQS (fleets of workers); needs `postgres` as
    /// the store unless `single_worker` is set.
    #[serde(default)]
    pub sqs: Option<SqsSection>,
    /// Exactly one worker uses this SQS queue, so the machine-local SQLite
    /// file may be its store. Refused otherwise: a fleet has one truth.
    #[serde(default)]
    pub single_worker: bool,
}

/// The `queue.postgres` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=require]`.
    /// Absent: `ORCHESTRATOR_DATABASE_URL` (keep passwords out of files).
    #[serde(default)]
    pub url: Option<String>,
    /// Connections per process.
    #[serde(default = "d_pool")]
    pub pool_size: usize,
    /// How long to wait for a connection (and for the pool).
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Extra CA certificates (PEM) to trust, e.g. Amazon RDS's bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The variable that holds the PostgreSQL URL when the config does not.
pub const DATABASE_URL_VAR: &str = "ORCHESTRATOR_DATABASE_URL";

fn d_pool() -> usize {
    16
}
fn d_connect_timeout() -> u64 {
    10
}

impl PostgresSection {
    /// A section with just a URL.
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            pool_size: d_pool(),
            connect_timeout_seconds: d_connect_timeout(),
            ca_file: None,
        }
    }

    /// The connection string: `url`, else the environment variable.
    pub fn url(&self) -> Result<String, ConfigError> {
        self.url_or(std::env::var(DATABASE_URL_VAR).ok())
    }

    /// [`PostgresSection::url`], with `from_env` as the variable's value.
    fn url_or(&self, from_env: Option<String>) -> Result<String, ConfigError> {
        match &self.url {
            Some(url) if !url.trim().is_empty() => Ok(url.clone()),
            _ => from_env
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| ConfigError::Invalid {
                    key: "queue.postgres.url".into(),
                    message: format!("not set: give it here or set {DATABASE_URL_VAR}"),
                }),
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=1000).contains(&self.pool_size) {
            return Err(("queue.postgres.pool_size".into(), "must be 1..=1000".into()));
        }
        if !(1..=600).contains(&self.connect_timeout_seconds) {
            return Err((
                "queue.postgres.connect_timeout_seconds".into(),
                "must be 1..=600".into(),
            ));
        }
        if let Some(url) = &self.url
            && url.parse::<tokio_postgres::Config>().is_err()
        {
            return Err((
                "queue.postgres.url".into(),
                "is not a PostgreSQL connection string (postgres://USER@HOST:PORT/DATABASE)".into(),
            ));
        }
        Ok(())
    }
}
/// How FIFO message groups are chosen (ordering holds within a group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FifoGroup {
    /// One group per runner type (`ec2`, `onprem`...).
    #[default]
    Runner,
    /// One group per bench name: tasks for one bench type run in order.
    Bench,
    /// Every task in its own group (no ordering, most parallelism).
    Task,
}

/// The `queue.sqs` section of the worker config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsSection {
    /// The queue URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`).
    pub url: String,
    /// The dead-letter queue's URL. Absent: read from the queue's redrive
    /// policy.
    #[serde(default)]
    pub dlq_url: Option<String>,
    /// Long-polling wait of one receive, 0..=20 seconds.
    #[serde(default = "d_wait")]
    pub wait_seconds: i32,
    /// FIFO queues: how message groups are chosen.
    #[serde(default)]
    pub fifo_group: FifoGroup,
    /// The region (default: the SDK's chain).
    #[serde(default)]
    pub region: Option<String>,
}

fn d_wait() -> i32 {
    5
}

impl SqsSection {
    /// Check what serde cannot; errors are `(key, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return Err(("queue.sqs.url".into(), "must be the queue's URL".into()));
        }
        if !(0..=20).contains(&self.wait_seconds) {
            return Err((
                "queue.sqs.wait_seconds".into(),
                "must be 0..=20 (SQS long polling)".into(),
            ));
        }
        Ok(())
    }
}

fn default_db() -> PathBuf {
    PathBuf::from("orchestrator.sqlite3")
}

impl QueueSection {
    /// The PostgreSQL section in effect: `postgres`, or one made from
    /// `ORCHESTRATOR_DATABASE_URL` when only the variable is set.
    pub fn postgres_section(&self) -> Option<PostgresSection> {
        self.postgres.clone().or_else(|| {
            std::env::var(DATABASE_URL_VAR)
                .ok()
                .filter(|u| !u.trim().is_empty())
                .map(PostgresSection::with_url)
        })
    }
}

impl Default for QueueSection {
    fn default() -> Self {
        Self {
            path: default_db(),
            postgres: None,
            sqs: None,
            single_worker: false,
        }
    }
}

/// How the worker consumes the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// Executions at once.
    #[serde(default = "d_concurrency")]
    pub concurrency: usize,
    /// Lease length; extended by a heartbeat while a test runs.
    #[serde(default = "d_visibility")]
    pub visibility_seconds: u64,
    /// On SIGTERM: how long running executions may finish before they are cancelled.
    #[serde(default = "d_grace")]
    pub drain_grace_seconds: u64,
    /// After the drain grace: how long the cancelled executions' collection
    /// and teardown may take in all (collection at most half); what is left
    /// then goes to the reaper. Keep `drain_grace_seconds +
    /// drain_cleanup_seconds` under a pod's terminationGracePeriodSeconds.
    #[serde(default = "d_cleanup")]
    pub drain_cleanup_seconds: u64,
    /// A task delivered more often than this (its workers kept dying) is
    /// dead-lettered as poison. Deliveries, not failures: a failure counts
    /// against the runner's `retries`.
    #[serde(default = "d_max_deliveries")]
    pub max_deliveries: u32,
    /// Idle polling interval.
    #[serde(default = "d_poll")]
    pub poll_ms: u64,
    /// First retry delay (doubles each attempt, with jitter).
    #[serde(default = "d_backoff_base")]
    pub backoff_base_ms: u64,
    /// Largest retry delay.
    #[serde(default = "d_backoff_max")]
    pub backoff_max_ms: u64,
    /// A worker silent this long is dead: the reaper takes its handles.
    #[serde(default = "d_stale")]
    pub stale_after_seconds: u64,
    /// A leaked resource younger than this is left alone (it may be
    /// mid-provision); one of unknown age gets it from its first sighting.
    #[serde(default = "d_leak_grace")]
    pub leak_grace_seconds: u64,
    /// `serve` reaps (and prunes old records) this often, one worker of the
    /// fleet at a time under a store lock; 0 turns it off.
    #[serde(default = "d_reap_interval")]
    pub reap_interval_seconds: u64,
    /// How often the reaper retries a failed teardown (only where the
    /// backend declares teardown idempotent).
    #[serde(default = "d_reap_teardown_attempts")]
    pub reap_teardown_attempts: u32,
    /// Settled execution records (and done tasks) are deleted after this.
    #[serde(default = "d_retention_days")]
    pub retention_days: u64,
    /// Rows of workers that stopped heartbeating are deleted after this.
    #[serde(default = "d_worker_retention")]
    pub worker_retention_hours: u64,
}

fn d_concurrency() -> usize {
    4
}
fn d_visibility() -> u64 {
    60
}
fn d_grace() -> u64 {
    30
}
fn d_cleanup() -> u64 {
    30
}
fn d_max_deliveries() -> u32 {
    10
}
fn d_poll() -> u64 {
    200
}
fn d_backoff_base() -> u64 {
    1_000
}
fn d_backoff_max() -> u64 {
    300_000
}
fn d_stale() -> u64 {
    60
}
fn d_leak_grace() -> u64 {
    300
}
fn d_reap_interval() -> u64 {
    60
}
fn d_reap_teardown_attempts() -> u32 {
    3
}
fn d_retention_days() -> u64 {
    30
}
fn d_worker_retention() -> u64 {
    24
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            concurrency: d_concurrency(),
            visibility_seconds: d_visibility(),
            drain_grace_seconds: d_grace(),
            drain_cleanup_seconds: d_cleanup(),
            max_deliveries: d_max_deliveries(),
            poll_ms: d_poll(),
            backoff_base_ms: d_backoff_base(),
            backoff_max_ms: d_backoff_max(),
            stale_after_seconds: d_stale(),
            leak_grace_seconds: d_leak_grace(),
            reap_interval_seconds: d_reap_interval(),
            reap_teardown_attempts: d_reap_teardown_attempts(),
            retention_days: d_retention_days(),
            worker_retention_hours: d_worker_retention(),
        }
    }
}

impl WorkerSection {
    /// Lease length.
    pub fn visibility(&self) -> Duration {
        Duration::from_secs(self.visibility_seconds)
    }
    /// After this silence a worker counts as dead.
    pub fn stale_after(&self) -> Duration {
        Duration::from_secs(self.stale_after_seconds)
    }
    /// Retry delays.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.backoff_base_ms),
            max: Duration::from_millis(self.backoff_max_ms),
        }
    }
}

/// The whole worker config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The queue.
    #[serde(default)]
    pub queue: QueueSection,
    /// The worker.
    #[serde(default)]
    pub worker: WorkerSection,
    /// The runners tasks may name (one per type).
    #[serde(default)]
    pub runners: Vec<RunnerConfig>,
    /// The HTTP API and dashboard (`orchestrator api`); workers ignore it.
    #[serde(default)]
    pub api: Option<ApiSection>,
}

impl WorkerConfig {
    /// Parse and validate YAML; errors name the key.
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Self =
            runner_core::spec::from_yaml_str(text, "worker config").map_err(|e| {
                ConfigError::Key {
                    key: if e.field == "." {
                        "(document)".into()
                    } else {
                        e.field
                    },
                    message: e.message,
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Read a YAML file; relative paths in it are relative to the file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = runner_core::doc::read_yaml(path).map_err(|e| match e {
            runner_core::doc::DocError::Io { origin, message } => ConfigError::Io {
                path: origin,
                message,
            },
            other => ConfigError::Document(other),
        })?;
        let mut config = Self::from_yaml_str(&text).map_err(|e| ConfigError::InFile {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        if let Some(base) = path.parent() {
            if config.queue.path.is_relative() {
                config.queue.path = base.join(&config.queue.path);
            }
            for runner in &mut config.runners {
                if runner.artifacts_dir.is_relative() {
                    runner.artifacts_dir = base.join(&runner.artifacts_dir);
                }
            }
        }
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if let Some(sqs) = &self.queue.sqs {
            sqs.validate()
                .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        }
        if let Some(pg) = &self.queue.postgres {
            pg.validate()
                .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        }
        if self.worker.stale_after_seconds == 0 {
            return Err(invalid("worker.stale_after_seconds", "must be at least 1"));
        }
        if self.worker.retention_days == 0 {
            return Err(invalid("worker.retention_days", "must be at least 1"));
        }
        if self.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1"));
        }
        if self.worker.concurrency > runner_core::config::MAX_CONCURRENCY {
            return Err(invalid(
                "worker.concurrency",
                &format!(
                    "{} is more than the maximum of {}",
                    self.worker.concurrency,
                    runner_core::config::MAX_CONCURRENCY
                ),
            ));
        }
        if self.worker.visibility_seconds == 0 {
            return Err(invalid(
                "worker.visibility_seconds",
                "must be greater than 0",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, runner) in self.runners.iter().enumerate() {
            runner.validate().map_err(|e| match e {
                ConfigError::Invalid { key, message } | ConfigError::Key { key, message } => {
                    ConfigError::Invalid {
                        key: format!("runners[{i}].{key}"),
                        message,
                    }
                }
                other => other,
            })?;
            if !seen.insert(runner.runner_type.clone()) {
                return Err(invalid(
                    &format!("runners[{i}].type"),
                    &format!("runner type `{}` is configured twice", runner.runner_type),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PostgreSQL section without a URL is a config error naming the
    /// key and the variable that could give it.
    #[test]
    fn a_postgres_section_without_a_url_names_the_key() {
        let given = PostgresSection::with_url("postgres:///x");
        assert_eq!(given.url_or(None).unwrap(), "postgres:///x");
        let blank = PostgresSection::with_url("  ");
        assert_eq!(
            blank.url_or(Some("postgres:///env".into())).unwrap(),
            "postgres:///env"
        );
        for section in [
            PostgresSection {
                url: None,
                ..PostgresSection::with_url("")
            },
            blank,
        ] {
            for from_env in [None, Some(" ".to_owned())] {
                let err = section.url_or(from_env).unwrap_err();
                assert!(
                    matches!(&err, ConfigError::Invalid { key, .. } if key == "queue.postgres.url"),
                    "{err:?}"
                );
                assert_eq!(
                    err.to_string(),
                    format!(
                        "config key `queue.postgres.url`: not set: give it here or set {DATABASE_URL_VAR}"
                    )
                );
            }
        }
    }

    #[test]
    fn errors_name_nested_keys() {
        let err = WorkerConfig::from_yaml_str("worker: {concurency: 3}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");
        let err = WorkerConfig::from_yaml_str("runners:\n  - {type: local, timeout_seconds: -1}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("runners[0].timeout_seconds"), "{err}");
        let err = WorkerConfig::from_yaml_str("runners: [{type: local}, {type: local}]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("runners[1].type"), "{err}");
        let ok = WorkerConfig::from_yaml_str("runners: [{type: local_mock}]\n").unwrap();
        assert_eq!(ok.worker.concurrency, 4);
    }

    #[test]
    fn the_section_is_checked() {
        let ok: SqsSection = serde_json::from_value(
            serde_json::json!({"url": "https://sqs.eu-west-1.amazonaws.com/1/q"}),
        )
        .unwrap();
        assert_eq!(ok.validate(), Ok(()));
        let bad = SqsSection {
            wait_seconds: 30,
            ..ok
        };
        assert_eq!(bad.validate().unwrap_err().0, "queue.sqs.wait_seconds");
    }
}
