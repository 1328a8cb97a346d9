//! `RunnerConfig`: which backend, how many retries, which time limits.
//!
//! Loaded from YAML, from `(key, value)` pairs (dotted keys) or from the
//! environment (`ORCHESTRATOR_RUNNER_TYPE`, `ORCHESTRATOR_RUNNER_RETRIES`,
//! `ORCHESTRATOR_RUNNER_PHASE_TIMEOUTS__PROVISION`, `ORCHESTRATOR_RUNNER_BACKEND__IMAGE`...,
//! or the `RUNNER_*` alias, which reads this config's keys only). Every path goes through one deserializer, so
//! an unknown key or a bad value gives the same error, naming the key.

mod load;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::phase::Phase;

/// A config that does not load; every variant names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The text is not valid YAML.
    #[error("config is not valid YAML: {message}")]
    Syntax {
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key is unknown, missing or has a value of the wrong type.
    #[error("config key `{key}`: {message}")]
    Key {
        /// The dotted key (or environment variable) at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value parses but is out of range.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The dotted key at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A document refused before parsing (size, encoding, nesting).
    #[error(transparent)]
    Document(#[from] crate::doc::DocError),
    /// An error found in a file, naming the file.
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: String,
        /// What is wrong in it.
        source: Box<ConfigError>,
    },
    /// An unknown runner type (raised by the factory, listing the known ones).
    #[error("unknown runner type `{runner_type}`; known types: {}", known.join(", "))]
    UnknownRunnerType {
        /// The type asked for.
        runner_type: String,
        /// The registered types.
        known: Vec<String>,
    },
}

/// Per-phase time limits in seconds; an unset phase uses `timeout_seconds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseTimeouts {
    /// Limit for `provision`.
    #[serde(default)]
    pub provision: Option<u64>,
    /// Limit for `run_test` (the test's own limit may be shorter).
    #[serde(default)]
    pub run_test: Option<u64>,
    /// Limit for `collect_artifacts`.
    #[serde(default)]
    pub collect_artifacts: Option<u64>,
    /// Limit for `teardown`.
    #[serde(default)]
    pub teardown: Option<u64>,
}

/// How to run: the backend and the policy knobs the worker applies to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// The runner type: `local`, `local_mock`, `ec2`, `eks`, `onprem`, or a registered one.
    #[serde(rename = "type")]
    pub runner_type: String,
    /// How many times a retryable failure is retried (attempts = retries + 1).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The overall time limit of one phase, in seconds (must be > 0).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Where collected artifacts are written.
    #[serde(default = "default_artifacts_dir")]
    pub artifacts_dir: PathBuf,
    /// Per-phase limits.
    #[serde(default)]
    pub phase_timeouts: PhaseTimeouts,
    /// Executions of this runner at once in one worker (a bench that takes
    /// one test at a time: 1). The backend's own
    /// `Capabilities::max_concurrency` applies too; the smaller wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// The backend's own section, decoded by the backend.
    #[serde(default)]
    pub backend: serde_json::Value,
    /// What a task may run on this runner. Unset lists allow everything
    /// (today's freedom for `run`); a worker serving a shared queue should
    /// set them.
    #[serde(default, skip_serializing_if = "Allowed::is_open")]
    pub allowed: Allowed,
    /// The environment variables keys came from (dotted key → variable),
    /// so an error in the backend section names what the user typed.
    #[serde(skip)]
    pub origins: std::collections::BTreeMap<String, String>,
}

fn default_retries() -> u32 {
    2
}
fn default_timeout() -> u64 {
    3600
}
fn default_artifacts_dir() -> PathBuf {
    PathBuf::from("artifacts")
}

/// Retries above this are refused as a likely typo.
pub const MAX_RETRIES: u32 = 100;

/// The longest time limit of a phase or a test: 7 days. Longer ones are
/// refused as a likely typo (and would overflow deadline arithmetic).
pub const MAX_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;

/// The most executions of one runner at once in one worker.
pub const MAX_CONCURRENCY: usize = 10_000;

/// The environment variable prefix read by [`RunnerConfig::from_env`].
pub const ENV_PREFIX: &str = "ORCHESTRATOR_RUNNER_";

/// The short alias of [`ENV_PREFIX`]. CI systems set variables of their own
/// under it (GitHub Actions' `RUNNER_TEMP`, `RUNNER_OS`...), so through the
/// alias only this config's own keys are read and the rest is ignored.
pub const ENV_ALIAS_PREFIX: &str = "RUNNER_";

/// The top-level keys of a runner config.
const KEYS: &[&str] = &[
    "type",
    "retries",
    "timeout_seconds",
    "artifacts_dir",
    "phase_timeouts",
    "max_concurrency",
    "backend",
    "allowed",
];

/// The trust boundary of a runner: what a queued task may ask it to run.
/// Each list, when set, is a whitelist; a task outside it is refused at
/// submit and again by the worker, naming the rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowed {
    /// Programs (`command[0]`, or `sh` for a shell payload) as names or
    /// globs (`pytest`, `/opt/tests/*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<Vec<String>>,
    /// Environment variable names a payload may set (globs: `TEST_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Directories the local runner may copy a package from. Unset: only
    /// packages given as URIs the backend fetches; an empty list: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_roots: Option<Vec<PathBuf>>,
    /// Images (eks, container) as names or globs (`registry.example/tests/*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
}

impl Allowed {
    /// Whether no list is set.
    pub fn is_open(&self) -> bool {
        self == &Self::default()
    }
}

impl RunnerConfig {
    /// A config for `runner_type` with every default.
    pub fn new(runner_type: impl Into<String>) -> Self {
        Self {
            runner_type: runner_type.into(),
            retries: default_retries(),
            timeout_seconds: default_timeout(),
            artifacts_dir: default_artifacts_dir(),
            phase_timeouts: PhaseTimeouts::default(),
            max_concurrency: None,
            backend: serde_json::Value::Null,
            allowed: Allowed::default(),
            origins: Default::default(),
        }
    }

    /// Check ranges that types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.runner_type.trim().is_empty() {
            return Err(invalid("type", "must name a runner type"));
        }
        if self.timeout_seconds == 0 {
            return Err(invalid("timeout_seconds", "must be greater than 0"));
        }
        if self.timeout_seconds > MAX_TIMEOUT_SECONDS {
            return Err(invalid(
                "timeout_seconds",
                &format!(
                    "{} is more than the maximum of {MAX_TIMEOUT_SECONDS} (7 days)",
                    self.timeout_seconds
                ),
            ));
        }
        if self.retries > MAX_RETRIES {
            return Err(invalid(
                "retries",
                &format!("{} is more than the maximum of {MAX_RETRIES}", self.retries),
            ));
        }
        if self.artifacts_dir.as_os_str().is_empty() {
            return Err(invalid("artifacts_dir", "must not be empty"));
        }
        if self.max_concurrency == Some(0) {
            return Err(invalid("max_concurrency", "must be at least 1"));
        }
        if let Some(n) = self.max_concurrency.filter(|n| *n > MAX_CONCURRENCY) {
            return Err(invalid(
                "max_concurrency",
                &format!("{n} is more than the maximum of {MAX_CONCURRENCY}"),
            ));
        }
        for phase in Phase::ALL {
            match self.phase_timeouts.get(phase) {
                Some(0) => {
                    return Err(invalid(
                        &format!("phase_timeouts.{phase}"),
                        "must be greater than 0",
                    ));
                }
                Some(n) if n > MAX_TIMEOUT_SECONDS => {
                    return Err(invalid(
                        &format!("phase_timeouts.{phase}"),
                        &format!("{n} is more than the maximum of {MAX_TIMEOUT_SECONDS} (7 days)"),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Decode the `backend` section into a backend's typed config; an
    /// unknown or bad field is an error naming `backend.<field>`.
    pub fn backend_section<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        crate::spec::decode_section(&self.backend, "backend")
            .map_err(|e| self.key_error(e.field, e.message))
    }

    /// A key error for `key`, naming the environment variable it came from
    /// when it came from one.
    pub fn key_error(&self, key: String, message: String) -> ConfigError {
        let var = self
            .origins
            .iter()
            .find(|(k, _)| key == **k || key.starts_with(&format!("{k}.")))
            .map(|(_, v)| v.clone())
            .or_else(|| {
                // An unknown key is reported at its own path, which the
                // variable spelt: match by the variable's spelling.
                self.origins
                    .values()
                    .find(|v| v.to_ascii_lowercase().ends_with(&key.replace('.', "__")))
                    .cloned()
            });
        match var {
            Some(var) => ConfigError::Key {
                key: format!("{key} ({var})"),
                message,
            },
            None => ConfigError::Key { key, message },
        }
    }

    /// The time limit of `phase`.
    pub fn phase_timeout(&self, phase: Phase) -> Duration {
        Duration::from_secs(
            self.phase_timeouts
                .get(phase)
                .unwrap_or(self.timeout_seconds),
        )
    }

    /// Attempts in all: the first plus `retries`.
    pub fn max_attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }
}

impl PhaseTimeouts {
    /// The configured limit of `phase`, in seconds.
    pub fn get(&self, phase: Phase) -> Option<u64> {
        match phase {
            Phase::Provision => self.provision,
            Phase::RunTest => self.run_test,
            Phase::CollectArtifacts => self.collect_artifacts,
            Phase::Teardown => self.teardown,
        }
    }
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.to_owned(),
    }
}
