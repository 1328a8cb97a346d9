//! The opaque, serializable handle a backend returns from `provision`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a handle could not be made or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The handle belongs to another backend.
    #[error("handle {handle_id} belongs to runner type `{found}`, not `{expected}`")]
    WrongRunnerType {
        /// The type the decoding backend expected.
        expected: String,
        /// The type recorded in the handle.
        found: String,
        /// The handle's id.
        handle_id: String,
    },
    /// The backend state does not decode into the backend's type.
    #[error(
        "handle {handle_id} of runner type `{runner_type}` has bad state at `{path}`: {message}"
    )]
    BadState {
        /// The runner type.
        runner_type: String,
        /// The handle's id.
        handle_id: String,
        /// The dotted path of the bad field in the state.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The handle JSON itself is malformed.
    #[error("malformed runner handle: {0}")]
    Malformed(String),
}

/// What a worker holds between phases: opaque to it, decodable only by the backend.
///
/// It serializes to JSON so the worker can journal it before use and tear the
/// resource down after a crash, from another process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerHandle {
    runner_type: String,
    handle_id: String,
    execution_id: String,
    state: serde_json::Value,
}

impl RunnerHandle {
    /// A handle for `runner_type` whose backend state is `state`.
    pub fn new<S: Serialize>(
        runner_type: impl Into<String>,
        handle_id: impl Into<String>,
        execution_id: impl Into<String>,
        state: &S,
    ) -> Result<Self, HandleError> {
        let handle_id = handle_id.into();
        let state =
            serde_json::to_value(state).map_err(|e| HandleError::Malformed(e.to_string()))?;
        Ok(Self {
            runner_type: runner_type.into(),
            handle_id,
            execution_id: execution_id.into(),
            state,
        })
    }

    /// Decode the backend state; an error (never a panic) when the handle
    /// belongs to another runner type or its state does not fit.
    pub fn decode<S: DeserializeOwned>(
        &self,
        expected_runner_type: &str,
    ) -> Result<S, HandleError> {
        if self.runner_type != expected_runner_type {
            return Err(HandleError::WrongRunnerType {
                expected: expected_runner_type.to_owned(),
                found: self.runner_type.clone(),
                handle_id: self.handle_id.clone(),
            });
        }
        serde_path_to_error::deserialize(self.state.clone()).map_err(|e| HandleError::BadState {
            runner_type: self.runner_type.clone(),
            handle_id: self.handle_id.clone(),
            path: e.path().to_string(),
            message: e.into_inner().to_string(),
        })
    }

    /// [`RunnerHandle::decode`] for use inside a phase: a foreign or
    /// malformed handle becomes a permanent error of that phase, with the
    /// context's ids.
    pub fn decode_in<S, P>(
        &self,
        ctx: &crate::RunContext,
        expected_runner_type: &str,
    ) -> Result<S, crate::RunnerError<P>>
    where
        S: DeserializeOwned,
        P: crate::PhaseMarker,
    {
        self.decode(expected_runner_type)
            .map_err(|e| crate::RunnerError::permanent(ctx, e.to_string()))
    }

    /// The backend that owns this handle.
    pub fn runner_type(&self) -> &str {
        &self.runner_type
    }

    /// The backend's id for the resource (instance id, job name, reservation id...).
    pub fn handle_id(&self) -> &str {
        &self.handle_id
    }

    /// The execution that provisioned it.
    pub fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// The handle as one JSON line, for a journal.
    pub fn to_json(&self) -> String {
        // A Value tree with string keys always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse a journaled handle.
    pub fn from_json(text: &str) -> Result<Self, HandleError> {
        serde_json::from_str(text).map_err(|e| HandleError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct State {
        dir: String,
        pid: u32,
    }

    #[test]
    fn round_trips_through_json_and_decodes_only_for_its_owner() {
        let state = State {
            dir: "/tmp/x".into(),
            pid: 42,
        };
        let handle = RunnerHandle::new("local", "h1", "e1", &state).unwrap();
        let back = RunnerHandle::from_json(&handle.to_json()).unwrap();
        assert_eq!(back, handle);
        assert_eq!(back.decode::<State>("local").unwrap(), state);
        let err = back.decode::<State>("ec2").unwrap_err();
        assert!(matches!(err, HandleError::WrongRunnerType { .. }), "{err}");
    }

    #[test]
    fn bad_state_names_the_path() {
        let handle =
            RunnerHandle::new("local", "h1", "e1", &serde_json::json!({"dir": 3})).unwrap();
        let err = handle.decode::<State>("local").unwrap_err().to_string();
        assert!(err.contains("dir"), "{err}");
        assert!(RunnerHandle::from_json("{not json").is_err());
    }
}
