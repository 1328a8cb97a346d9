//! The unit of work in a queue: which runner, which bench, which payload.

use std::collections::BTreeMap;

use runner_core::{BenchSpec, TestPayload};
use serde::{Deserialize, Serialize};

/// A test task as it travels through a queue (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// The idempotency key: a redelivered task with the same key reuses its
    /// resources instead of provisioning twice.
    pub execution_key: String,
    /// Ties the execution to whatever asked for it (a CI pipeline, a PR).
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// The runner type to execute on.
    pub runner: String,
    /// Where to run.
    #[serde(default)]
    pub bench: BenchSpec,
    /// What to run.
    pub payload: TestPayload,
    /// Free labels given at submit (kept in the execution record).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Who submitted it (user@host, a CI job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
}

/// A task body that could not be read as a [`Task`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad task: {0}")]
pub struct BadTask(pub String);

impl Task {
    /// A task with no correlation id, labels or submitter.
    pub fn new(
        execution_key: impl Into<String>,
        runner: impl Into<String>,
        bench: BenchSpec,
        payload: TestPayload,
    ) -> Self {
        Self {
            execution_key: execution_key.into(),
            correlation_id: None,
            runner: runner.into(),
            bench,
            payload,
            labels: BTreeMap::new(),
            submitted_by: None,
        }
    }

    /// Parse a queue message body.
    pub fn parse(body: &str) -> Result<Self, BadTask> {
        // The same size limit as a file (serde_json bounds nesting itself).
        let limit = runner_core::doc::max_bytes();
        if body.len() > limit {
            return Err(BadTask(format!(
                "the body is larger than the limit of {limit} bytes (set {} to change it)",
                runner_core::doc::MAX_BYTES_ENV
            )));
        }
        let mut de = serde_json::Deserializer::from_str(body);
        let task: Task = parse_strict(&mut de)?;
        if task.execution_key.trim().is_empty() {
            return Err(BadTask("field `execution_key` must not be empty".into()));
        }
        if task.runner.trim().is_empty() {
            return Err(BadTask("field `runner` must not be empty".into()));
        }
        Ok(task)
    }

    /// The correlation id, defaulting to the execution key.
    pub fn correlation(&self) -> &str {
        self.correlation_id
            .as_deref()
            .unwrap_or(&self.execution_key)
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn parse_strict(
    de: &mut serde_json::Deserializer<serde_json::de::StrRead<'_>>,
) -> Result<Task, BadTask> {
    let task = Task::deserialize(&mut *de).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            BadTask(format!("body is not valid JSON: {e}"))
        } else {
            BadTask(e.to_string())
        }
    })?;
    de.end()
        .map_err(|e| BadTask(format!("trailing data after the task: {e}")))?;
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let not_json = Task::parse("{oops").unwrap_err().to_string();
        assert!(not_json.contains("not valid JSON"), "{not_json}");
        let missing = Task::parse(r#"{"execution_key": "k", "runner": "local"}"#)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("payload"), "{missing}");
        let empty = Task::parse(r#"{"execution_key": "", "runner": "x", "payload": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(empty.contains("execution_key"), "{empty}");
        let ok = Task::parse(r#"{"execution_key": "k", "runner": "x", "payload": {}}"#).unwrap();
        assert_eq!(ok.correlation(), "k");
    }
}
