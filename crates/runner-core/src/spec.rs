//! What to provision ([`BenchSpec`]) and what to run ([`TestPayload`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::redact::Redactor;

/// The JSON value type of backend sections.
pub use serde_json::Value as JsonValue;

/// A spec, payload or backend section that does not parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: field `{field}`: {message}")]
pub struct SpecError {
    /// Where the text came from (file name, `bench`, `payload`...).
    pub origin: String,
    /// Dotted path of the offending field (`.` for the document itself).
    pub field: String,
    /// What was wrong.
    pub message: String,
}

/// The environment a test runs in: which machine, bench or pod.
///
/// Common fields are typed; `backend` is the section that the chosen backend
/// decodes into its own config with [`decode_section`].
///
/// `#[non_exhaustive]`: parsed with [`BenchSpec::from_yaml`], or built
/// with [`BenchSpec::new`] and the `with_*` methods.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BenchSpec {
    /// A human name for the bench (shown in logs and reports).
    #[serde(default)]
    pub name: String,
    /// The runner type the bench needs (`onprem`, `ec2`...). The worker's
    /// factory chooses the backend by it; `submit --runner` may then be
    /// left out, and is checked against it when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// Labels for selection and tagging.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The backend's own section.
    #[serde(default)]
    pub backend: serde_json::Value,
}

/// One environment variable of a payload: a plain value, a literal secret
/// (for `run`, which stores nothing), or a reference to a secret that the
/// worker resolves where the test runs (for anything queued).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnvVar {
    /// A value that may appear in logs.
    Plain(String),
    /// A value with flags.
    Detailed {
        /// The value.
        value: String,
        /// A secret reaches the process but never a log, span or artifact.
        #[serde(default)]
        secret: bool,
    },
    /// `{secret: {env: NAME}}`, `{secret: {file: PATH}}`...: resolved by
    /// the worker at run time, never stored.
    Reference {
        /// Where the value is.
        secret: SecretRef,
    },
}

/// Where a secret's value is: exactly one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// A variable of the worker's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file on the worker (a mounted secret, `/run/secrets/...`); one
    /// trailing newline is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An AWS Secrets Manager secret id or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secretsmanager: Option<String>,
    /// An AWS SSM parameter name (decrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_ssm_parameter: Option<String>,
    /// A Kubernetes secret (the eks backend maps it to a `secretKeyRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSecret>,
    /// With `aws_secretsmanager`: a key of the secret's JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A key of a Kubernetes secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSecret {
    /// The secret's name.
    pub name: String,
    /// The key in it.
    pub key: String,
}

impl SecretRef {
    /// The source, for messages: `env HOME_TOKEN`, `file /run/secrets/x`.
    pub fn describe(&self) -> String {
        match self {
            SecretRef { env: Some(n), .. } => format!("env {n}"),
            SecretRef { file: Some(p), .. } => format!("file {p}"),
            SecretRef {
                aws_secretsmanager: Some(id),
                ..
            } => format!("aws_secretsmanager {id}"),
            SecretRef {
                aws_ssm_parameter: Some(n),
                ..
            } => format!("aws_ssm_parameter {n}"),
            SecretRef {
                kubernetes: Some(k),
                ..
            } => format!("kubernetes {}/{}", k.name, k.key),
            _ => "no source".into(),
        }
    }

    /// Exactly one source must be given; `key` only with Secrets Manager.
    pub fn check(&self) -> Result<(), String> {
        let sources = [
            self.env.is_some(),
            self.file.is_some(),
            self.aws_secretsmanager.is_some(),
            self.aws_ssm_parameter.is_some(),
            self.kubernetes.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources != 1 {
            return Err(
                "give exactly one of env, file, aws_secretsmanager, aws_ssm_parameter, kubernetes"
                    .into(),
            );
        }
        if self.key.is_some() && self.aws_secretsmanager.is_none() {
            return Err("`key` goes with aws_secretsmanager only".into());
        }
        let named = [
            ("env", self.env.as_deref()),
            ("file", self.file.as_deref()),
            ("aws_secretsmanager", self.aws_secretsmanager.as_deref()),
            ("aws_ssm_parameter", self.aws_ssm_parameter.as_deref()),
            ("key", self.key.as_deref()),
            (
                "kubernetes.name",
                self.kubernetes.as_ref().map(|k| k.name.as_str()),
            ),
            (
                "kubernetes.key",
                self.kubernetes.as_ref().map(|k| k.key.as_str()),
            ),
        ];
        if let Some((field, _)) = named
            .iter()
            .find(|(_, v)| v.is_some_and(|v| v.trim().is_empty()))
        {
            return Err(format!("`{field}` is empty"));
        }
        Ok(())
    }
}

impl EnvVar {
    /// The value to put in the process environment (empty for a reference
    /// that was not resolved: the worker resolves them before a backend
    /// sees the payload).
    pub fn value(&self) -> &str {
        match self {
            EnvVar::Plain(v) | EnvVar::Detailed { value: v, .. } => v,
            EnvVar::Reference { .. } => "",
        }
    }

    /// Whether the value is secret.
    pub fn is_secret(&self) -> bool {
        matches!(
            self,
            EnvVar::Detailed { secret: true, .. } | EnvVar::Reference { .. }
        )
    }

    /// Whether this is a literal secret value (which must not be queued).
    pub fn is_literal_secret(&self) -> bool {
        matches!(self, EnvVar::Detailed { secret: true, .. })
    }

    /// The reference, when it is one.
    pub fn reference(&self) -> Option<&SecretRef> {
        match self {
            EnvVar::Reference { secret } => Some(secret),
            _ => None,
        }
    }
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvVar::Reference { secret } => write!(f, "EnvVar(secret {})", secret.describe()),
            _ if self.is_secret() => f.write_str("EnvVar(***)"),
            _ => write!(f, "EnvVar({:?})", self.value()),
        }
    }
}

/// What to run: a command, its environment, its time limit and what to keep.
///
/// `#[non_exhaustive]`: parsed with [`TestPayload::from_yaml`], or built
/// with [`TestPayload::new`] and the `with_*` methods:
///
/// ```
/// use runner_core::{EnvVar, TestPayload};
///
/// let payload = TestPayload::new(["cargo", "test"])
///     .with_name("unit")
///     .with_env("RUST_LOG", EnvVar::Plain("debug".into()))
///     .with_timeout_seconds(600)
///     .with_artifacts(["target/*.xml"]);
/// assert_eq!(payload.command, ["cargo", "test"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TestPayload {
    /// A name for reports (JUnit test name).
    #[serde(default)]
    pub name: String,
    /// The command as argv; `command[0]` is the program.
    #[serde(default)]
    pub command: Vec<String>,
    /// Run `command` joined with spaces through `sh -c` instead of exec'ing argv.
    #[serde(default)]
    pub shell: bool,
    /// Environment variables added to the process.
    #[serde(default)]
    pub env: BTreeMap<String, EnvVar>,
    /// A test package (a directory or archive path, or a URI the backend understands).
    #[serde(default)]
    pub package: Option<String>,
    /// Working directory relative to the package root.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The test's own time limit; the run phase timeout applies when absent.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Glob patterns, relative to the working directory, of files to keep.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// The backend's own section.
    #[serde(default)]
    pub backend: serde_json::Value,
}

impl TestPayload {
    /// A payload running `command` (argv; `command[0]` is the program),
    /// everything else empty.
    pub fn new<S: Into<String>>(command: impl IntoIterator<Item = S>) -> Self {
        Self {
            command: command.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Replace the command.
    pub fn with_command<S: Into<String>>(mut self, command: impl IntoIterator<Item = S>) -> Self {
        self.command = command.into_iter().map(Into::into).collect();
        self
    }

    /// Name it (the JUnit test name).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Run the command joined with spaces through `sh -c`.
    pub fn with_shell(mut self, shell: bool) -> Self {
        self.shell = shell;
        self
    }

    /// Add (or replace) the environment variable `name`.
    pub fn with_env(mut self, name: impl Into<String>, value: EnvVar) -> Self {
        self.env.insert(name.into(), value);
        self
    }

    /// Add (or replace) several environment variables.
    pub fn with_env_vars<K: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, EnvVar)>,
    ) -> Self {
        self.env
            .extend(vars.into_iter().map(|(name, value)| (name.into(), value)));
        self
    }

    /// The test package (a directory or archive path, or a URI).
    pub fn with_package(mut self, package: impl Into<String>) -> Self {
        self.package = Some(package.into());
        self
    }

    /// The working directory, relative to the package root.
    pub fn with_working_dir(mut self, dir: impl Into<String>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// The test's own time limit.
    pub fn with_timeout_seconds(mut self, seconds: u64) -> Self {
        self.timeout_seconds = Some(seconds);
        self
    }

    /// Add glob patterns of files to keep.
    pub fn with_artifacts<S: Into<String>>(mut self, globs: impl IntoIterator<Item = S>) -> Self {
        self.artifacts.extend(globs.into_iter().map(Into::into));
        self
    }

    /// The backend's own section.
    pub fn with_backend(mut self, section: serde_json::Value) -> Self {
        self.backend = section;
        self
    }

    /// A redactor for every secret value in `env`.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(
            self.env
                .values()
                .filter(|v| v.is_secret())
                .map(|v| v.value().to_owned()),
        )
    }
}

/// Parse YAML (or JSON, which is YAML) into `T`, naming the bad field on
/// error. A leading byte-order mark is skipped; nesting is bounded.
pub fn from_yaml_str<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, SpecError> {
    let text = crate::doc::strip_bom(text);
    crate::doc::check_yaml(text, origin).map_err(|e| SpecError {
        origin: origin.to_owned(),
        field: ".".into(),
        message: e.to_string(),
    })?;
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| SpecError {
        origin: origin.to_owned(),
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// Read and parse a YAML file into `T` (size, encoding and nesting checked
/// first, see [`crate::doc`]).
pub fn from_yaml_file<T: DeserializeOwned>(path: &Path) -> Result<T, SpecError> {
    let origin = path.display().to_string();
    let text = crate::doc::read_yaml(path).map_err(|e| SpecError {
        origin: origin.clone(),
        field: ".".into(),
        message: match e {
            crate::doc::DocError::Io { message, .. } => format!("cannot read: {message}"),
            other => other.to_string(),
        },
    })?;
    from_yaml_str(&text, &origin)
}

impl BenchSpec {
    /// An empty bench: no name, no runner, no labels, no backend section.
    pub fn new() -> Self {
        Self::default()
    }

    /// Name it (shown in logs and reports).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The runner type it needs.
    pub fn with_runner(mut self, runner: impl Into<String>) -> Self {
        self.runner = Some(runner.into());
        self
    }

    /// Add (or replace) the label `key`.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The backend's own section.
    pub fn with_backend(mut self, section: serde_json::Value) -> Self {
        self.backend = section;
        self
    }

    /// Parse a bench spec from YAML.
    pub fn from_yaml(text: &str) -> Result<Self, SpecError> {
        from_yaml_str(text, "bench")
    }
}

impl TestPayload {
    /// Parse a payload from YAML.
    pub fn from_yaml(text: &str) -> Result<Self, SpecError> {
        from_yaml_str(text, "payload")
    }
}

/// Decode a backend section into the backend's typed config.
///
/// `prefix` names the section in errors (`bench.backend`), so a bad field
/// comes out as `bench.backend.image`. A missing (null) section decodes as an
/// empty mapping, so configs whose fields all have defaults need none.
pub fn decode_section<T: DeserializeOwned>(
    section: &serde_json::Value,
    prefix: &str,
) -> Result<T, SpecError> {
    let value = match section {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        other => other.clone(),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        SpecError {
            origin: prefix.to_owned(),
            field: if path == "." {
                prefix.to_owned()
            } else {
                format!("{prefix}.{path}")
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// [`decode_section`] for use inside a phase: a bad section is an
/// `invalid_spec` error of that phase naming the field, with the context's ids.
pub fn decode_spec<T, P>(
    ctx: &crate::RunContext,
    section: &serde_json::Value,
    prefix: &str,
) -> Result<T, crate::RunnerError<P>>
where
    T: DeserializeOwned,
    P: crate::PhaseMarker,
{
    decode_section(section, prefix)
        .map_err(|e| crate::RunnerError::invalid_spec(ctx, e.field, e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        image: String,
        #[serde(default)]
        cpus: u32,
    }

    #[test]
    fn payload_parses_secret_env_and_hides_it_in_debug() {
        let p = TestPayload::from_yaml(
            "command: [echo, hi]\nenv:\n  A: plain\n  TOKEN: {value: s3cr3t, secret: true}\n",
        )
        .unwrap();
        assert_eq!(p.env["TOKEN"].value(), "s3cr3t");
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert_eq!(p.redactor().redact("x=s3cr3t"), "x=***");
    }

    #[test]
    fn unknown_payload_key_is_named() {
        let err = TestPayload::from_yaml("comand: [x]\n").unwrap_err();
        assert!(err.to_string().contains("comand"), "{err}");
    }

    #[test]
    fn decode_spec_gives_a_phase_error_naming_the_field() {
        let ctx = crate::RunContext::new("e1", "c1");
        let err = decode_spec::<Section, crate::phase::ProvisionPhase>(
            &ctx,
            &serde_json::json!({"image": 5}),
            "bench.backend",
        )
        .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidSpec);
        assert_eq!(err.field(), Some("bench.backend.image"));
        assert_eq!(err.execution_id(), "e1");
    }

    #[test]
    fn section_errors_carry_the_prefixed_field() {
        let err = decode_section::<Section>(
            &serde_json::json!({"image": "x", "cpus": -1}),
            "bench.backend",
        )
        .unwrap_err();
        assert_eq!(err.field, "bench.backend.cpus");
        let err = decode_section::<Section>(&serde_json::Value::Null, "bench.backend").unwrap_err();
        assert!(err.message.contains("image"), "{err}");
    }
}
