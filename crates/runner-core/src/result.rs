//! The outcome of a test run. A failing test is a result, not an error.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    /// The test ran and passed.
    Passed,
    /// The test ran and failed.
    Failed,
    /// The test could not be judged (harness crash, bad output).
    Error,
    /// The test exceeded its time limit and was stopped.
    TimedOut,
    /// The run was cancelled before it finished.
    Cancelled,
}

impl TestStatus {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "passed",
            TestStatus::Failed => "failed",
            TestStatus::Error => "error",
            TestStatus::TimedOut => "timed_out",
            TestStatus::Cancelled => "cancelled",
        }
    }
}

/// Test case counts, where the backend knows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCounts {
    /// Cases that passed.
    pub passed: u32,
    /// Cases that failed.
    pub failed: u32,
    /// Cases skipped.
    pub skipped: u32,
}

/// A short explanation of a non-passing result, from the layer that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The layer: `test` (the test itself), `runner`, `infrastructure`, `timeout`...
    pub layer: String,
    /// One or two lines; safe to log.
    pub message: String,
}

/// What `run_test` returns when the test ran, whatever its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    /// How it ended.
    pub status: TestStatus,
    /// The process exit code, where there was one.
    pub exit_code: Option<i32>,
    /// Wall time of the run.
    #[serde(with = "duration_ms")]
    pub duration: Duration,
    /// Case counts, where known.
    #[serde(default)]
    pub counts: Option<TestCounts>,
    /// Why it did not pass, where it did not.
    #[serde(default)]
    pub diagnosis: Option<Diagnosis>,
}

impl TestResult {
    /// A result with just a status and duration.
    pub fn new(status: TestStatus, duration: Duration) -> Self {
        Self {
            status,
            exit_code: None,
            duration,
            counts: None,
            diagnosis: None,
        }
    }

    /// Passed on exit code 0, failed otherwise.
    pub fn from_exit_code(code: i32, duration: Duration) -> Self {
        let mut result = Self::new(
            if code == 0 {
                TestStatus::Passed
            } else {
                TestStatus::Failed
            },
            duration,
        );
        result.exit_code = Some(code);
        if code != 0 {
            result.diagnosis = Some(Diagnosis {
                layer: "test".into(),
                message: format!("test exited with code {code}"),
            });
        }
        result
    }

    /// Add a diagnosis.
    pub fn with_diagnosis(mut self, layer: impl Into<String>, message: impl Into<String>) -> Self {
        self.diagnosis = Some(Diagnosis {
            layer: layer.into(),
            message: message.into(),
        });
        self
    }

    /// Whether the test passed.
    pub fn passed(&self) -> bool {
        self.status == TestStatus::Passed
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
