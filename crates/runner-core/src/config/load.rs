//! Loading a `RunnerConfig`: YAML, dotted `(key, value)` pairs and the
//! environment, all through one deserializer so errors name the key.

use std::path::Path;

use crate::config::{ConfigError, ENV_ALIAS_PREFIX, ENV_PREFIX, KEYS, RunnerConfig};

impl RunnerConfig {
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
