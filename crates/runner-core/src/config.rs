//! `RunnerConfig`: which backend, how many retries, which time limits.
//!
//! Loaded from YAML, from `(key, value)` pairs (dotted keys) or from the
//! environment (`ORCHESTRATOR_RUNNER_TYPE`, `ORCHESTRATOR_RUNNER_RETRIES`,
//! `ORCHESTRATOR_RUNNER_PHASE_TIMEOUTS__PROVISION`, `ORCHESTRATOR_RUNNER_BACKEND__IMAGE`...,
//! or the `RUNNER_*` alias, which reads this config's keys only). Every path goes through one deserializer, so
//! an unknown key or a bad value gives the same error, naming the key.

use std::path::{Path, PathBuf};
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

    /// Parse and validate YAML.
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let text = crate::doc::strip_bom(text);
        crate::doc::check_yaml(text, "config")?;
        // Syntax first, so a broken document is reported as such and not as
        // the first type mismatch the streaming deserializer happens to meet.
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).map_err(|e| ConfigError::Syntax {
            message: e.to_string(),
        })?;
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(de)
            .map_err(|e| key_error(&e.path().to_string(), e.into_inner().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and validate a YAML file; every error names the file.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::doc::read_yaml(path).map_err(|e| match e {
            crate::doc::DocError::Io { origin, message } => ConfigError::Io {
                path: origin,
                message,
            },
            other => ConfigError::Document(other),
        })?;
        Self::from_yaml_str(&text).map_err(|e| ConfigError::InFile {
            path: path.display().to_string(),
            source: Box::new(e),
        })
    }

    /// Build from dotted `(key, value)` pairs; values are read as YAML scalars,
    /// so `"5"` is a number and `"true"` a boolean.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut root = serde_json::Map::new();
        for (key, value) in pairs {
            insert_dotted(&mut root, key.as_ref(), scalar(value.as_ref()))?;
        }
        let config: Self = serde_path_to_error::deserialize(serde_json::Value::Object(root))
            .map_err(|e| key_error(&e.path().to_string(), e.into_inner().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Build from `ORCHESTRATOR_RUNNER_*` variables of this process (or
    /// their `RUNNER_*` alias).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_vars(std::env::vars())
    }

    /// Whether `vars` configure a runner: `ORCHESTRATOR_RUNNER_TYPE` or
    /// `RUNNER_TYPE` is set.
    pub fn env_has_type<'a, I>(names: I) -> bool
    where
        I: IntoIterator<Item = &'a str>,
    {
        names
            .into_iter()
            .any(|n| n == "ORCHESTRATOR_RUNNER_TYPE" || n == "RUNNER_TYPE")
    }

    /// Build from `ORCHESTRATOR_RUNNER_*` entries of `vars`:
    /// `ORCHESTRATOR_RUNNER_TIMEOUT_SECONDS` is `timeout_seconds`, a double
    /// underscore nests (`ORCHESTRATOR_RUNNER_BACKEND__IMAGE` is
    /// `backend.image`), and an unknown key is an error naming the
    /// variable. When no `ORCHESTRATOR_RUNNER_*` variable is set, the
    /// `RUNNER_*` alias is read instead, keeping only this config's own
    /// top-level keys (`RUNNER_TEMP` of a CI system is ignored).
    pub fn from_env_vars<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let full = vars.iter().any(|(n, _)| n.starts_with(ENV_PREFIX));
        let mut pairs = Vec::new();
        for (name, value) in &vars {
            let rest = if full {
                name.strip_prefix(ENV_PREFIX)
            } else {
                name.strip_prefix(ENV_ALIAS_PREFIX)
            };
            let Some(rest) = rest else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let top = key.split('.').next().unwrap_or_default();
            if !full && !KEYS.contains(&top) {
                continue;
            }
            pairs.push((key, value.clone(), name.clone()));
        }
        let mut config =
            Self::from_pairs(pairs.iter().map(|(k, v, _)| (k, v))).map_err(|err| match err {
                ConfigError::Key { key, message } | ConfigError::Invalid { key, message } => {
                    let var = pairs
                        .iter()
                        .find(|(k, _, _)| key == *k || key.starts_with(&format!("{k}.")))
                        .map(|(_, _, name)| name.clone())
                        .unwrap_or_else(|| env_name(&key, full));
                    ConfigError::Key {
                        key: format!("{key} ({var})"),
                        message,
                    }
                }
                other => other,
            })?;
        config.origins = pairs.into_iter().map(|(k, _, name)| (k, name)).collect();
        Ok(config)
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

fn key_error(path: &str, message: String) -> ConfigError {
    // serde reports an unknown or missing field at its parent; name the field itself.
    let field = extract_backticked(&message);
    let key = match (path, field) {
        (".", Some(f)) => f.to_owned(),
        (".", None) => "(document)".to_owned(),
        (p, Some(f)) if p == f || p.ends_with(&format!(".{f}")) => p.to_owned(),
        (p, Some(f))
            if message.starts_with("unknown field") || message.starts_with("missing field") =>
        {
            format!("{p}.{f}")
        }
        (p, _) => p.to_owned(),
    };
    ConfigError::Key { key, message }
}

fn extract_backticked(message: &str) -> Option<&str> {
    if !(message.starts_with("unknown field") || message.starts_with("missing field")) {
        return None;
    }
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn env_name(key: &str, full: bool) -> String {
    format!(
        "{}{}",
        if full { ENV_PREFIX } else { ENV_ALIAS_PREFIX },
        key.to_ascii_uppercase().replace('.', "__")
    )
}

fn scalar(value: &str) -> serde_json::Value {
    serde_yaml_ng::from_str::<serde_json::Value>(value)
        .ok()
        .filter(|v| !v.is_object() && !v.is_array() && !v.is_null())
        .unwrap_or_else(|| serde_json::Value::String(value.to_owned()))
}

fn insert_dotted(
    root: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    value: serde_json::Value,
) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Key {
            key: key.to_owned(),
            message: "empty key segment".into(),
        });
    }
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            node.insert((*part).to_owned(), value);
            return Ok(());
        }
        let entry = node
            .entry((*part).to_owned())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        node = match entry {
            serde_json::Value::Object(map) => map,
            _ => {
                return Err(ConfigError::Key {
                    key: key.to_owned(),
                    message: format!("`{}` is a value, not a section", parts[..=i].join(".")),
                });
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(err: ConfigError) -> String {
        match err {
            ConfigError::Key { key, .. } | ConfigError::Invalid { key, .. } => key,
            other => panic!("not a key error: {other}"),
        }
    }

    #[test]
    fn loads_yaml_with_defaults_and_phase_timeouts() {
        let c = RunnerConfig::from_yaml_str(
            "type: local\nretries: 3\ntimeout_seconds: 60\nphase_timeouts: {teardown: 5}\nbackend: {root: /tmp/w}\n",
        )
        .unwrap();
        assert_eq!(c.runner_type, "local");
        assert_eq!(c.max_attempts(), 4);
        assert_eq!(c.phase_timeout(Phase::Teardown), Duration::from_secs(5));
        assert_eq!(c.phase_timeout(Phase::Provision), Duration::from_secs(60));
        assert_eq!(c.backend["root"], "/tmp/w");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = RunnerConfig::from_yaml_str("type: local\ntimeout_secs: 5\n").unwrap_err();
        assert!(err.to_string().contains("timeout_secs"), "{err}");
        let err = RunnerConfig::from_yaml_str("type: local\nphase_timeouts: {provison: 5}\n")
            .unwrap_err();
        assert_eq!(key_of(err), "phase_timeouts.provison");
    }

    #[test]
    fn negative_and_zero_timeouts_name_the_key() {
        let err = RunnerConfig::from_yaml_str("type: local\ntimeout_seconds: -5\n").unwrap_err();
        let text = err.to_string();
        assert_eq!(key_of(err), "timeout_seconds", "{text}");
        assert!(text.contains("-5"), "{text}");
        let err = RunnerConfig::from_yaml_str("type: local\ntimeout_seconds: 0\n").unwrap_err();
        assert_eq!(key_of(err), "timeout_seconds");
        let err = RunnerConfig::from_yaml_str("type: local\nphase_timeouts: {run_test: 0}\n")
            .unwrap_err();
        assert_eq!(key_of(err), "phase_timeouts.run_test");
    }

    #[test]
    fn bad_yaml_is_a_syntax_error_with_a_position() {
        let err = RunnerConfig::from_yaml_str("type: [local\nretries: 2\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        assert!(err.to_string().contains("line"), "{err}");
    }

    #[test]
    fn missing_type_is_named() {
        let err = RunnerConfig::from_yaml_str("retries: 1\n").unwrap_err();
        assert_eq!(key_of(err), "type");
    }

    #[test]
    fn env_vars_nest_and_errors_name_the_variable() {
        let vars = [
            ("RUNNER_TYPE", "ec2"),
            ("RUNNER_RETRIES", "4"),
            ("RUNNER_BACKEND__REGION", "eu-west-1"),
            ("UNRELATED", "x"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = RunnerConfig::from_env_vars(vars).unwrap();
        assert_eq!(c.retries, 4);
        assert_eq!(c.backend["region"], "eu-west-1");

        let vars = [("RUNNER_TYPE", "ec2"), ("RUNNER_TIMEOUT_SECONDS", "-1")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let err = RunnerConfig::from_env_vars(vars).unwrap_err().to_string();
        assert!(err.contains("RUNNER_TIMEOUT_SECONDS"), "{err}");

        // Under the full prefix a misspelt key is an error naming the variable.
        let vars = [
            ("ORCHESTRATOR_RUNNER_TYPE", "ec2"),
            ("ORCHESTRATOR_RUNNER_RETRYS", "1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let err = RunnerConfig::from_env_vars(vars).unwrap_err().to_string();
        assert!(err.contains("ORCHESTRATOR_RUNNER_RETRYS"), "{err}");
        let vars = [
            ("ORCHESTRATOR_RUNNER_TYPE", "local"),
            ("ORCHESTRATOR_RUNNER_BACKEND__ROOT", "/w"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            RunnerConfig::from_env_vars(vars).unwrap().backend["root"],
            "/w"
        );
    }

    #[test]
    fn a_ci_systems_runner_variables_do_not_break_the_alias() {
        // GitHub Actions sets these on every job.
        let vars = [
            ("RUNNER_TYPE", "local"),
            ("RUNNER_TEMP", "/home/runner/work/_temp"),
            ("RUNNER_OS", "Linux"),
            ("RUNNER_TOOL_CACHE", "/opt/hostedtoolcache"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = RunnerConfig::from_env_vars(vars).unwrap();
        assert_eq!(c.runner_type, "local");
        // With the full prefix present, the alias is not read at all.
        let vars = [
            ("ORCHESTRATOR_RUNNER_TYPE", "local_mock"),
            ("RUNNER_TYPE", "local"),
            ("RUNNER_RETRIES", "nope"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = RunnerConfig::from_env_vars(vars).unwrap();
        assert_eq!((c.runner_type.as_str(), c.retries), ("local_mock", 2));
    }

    #[test]
    fn pairs_refuse_a_value_used_as_a_section() {
        let err = RunnerConfig::from_pairs([("type", "x"), ("retries", "1"), ("retries.x", "2")])
            .unwrap_err();
        assert!(err.to_string().contains("retries.x"), "{err}");
    }
}
