//! The outcome of a test run. A failing test is a result, not an error.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the test ended.
///
/// Exhaustive on purpose (unlike the structs here): every consumer decides
/// what each status means (ack, requeue, exit code), so a new status must
/// break their `match`es rather than fall into a wildcard.
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
///
/// Built with [`TestCounts::new`] (`#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TestCounts {
    /// Cases that passed.
    pub passed: u32,
    /// Cases that failed.
    pub failed: u32,
    /// Cases skipped.
    pub skipped: u32,
}

impl TestCounts {
    /// Counts of passed, failed and skipped cases.
    pub const fn new(passed: u32, failed: u32, skipped: u32) -> Self {
        Self {
            passed,
            failed,
            skipped,
        }
    }
}

/// A short explanation of a non-passing result, from the layer that failed.
///
/// Built with [`Diagnosis::new`] (`#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Diagnosis {
    /// The layer: `test` (the test itself), `runner`, `infrastructure`, `timeout`...
    pub layer: String,
    /// One or two lines; safe to log.
    pub message: String,
}

impl Diagnosis {
    /// A diagnosis from `layer` (`test`, `runner`, `infrastructure`,
    /// `timeout`...) saying `message`.
    pub fn new(layer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            layer: layer.into(),
            message: message.into(),
        }
    }
}

/// What `run_test` returns when the test ran, whatever its outcome.
///
/// `#[non_exhaustive]`: built with [`TestResult::new`] or
/// [`TestResult::from_exit_code`] and the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use runner_core::{TestCounts, TestResult, TestStatus};
///
/// let result = TestResult::new(TestStatus::Failed, Duration::from_secs(3))
///     .with_exit_code(2)
///     .with_counts(TestCounts::new(9, 1, 0))
///     .with_diagnosis("test", "1 case failed");
/// assert_eq!(result.exit_code, Some(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
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
            result.diagnosis = Some(Diagnosis::new(
                "test",
                format!("test exited with code {code}"),
            ));
        }
        result
    }

    /// Add a diagnosis.
    pub fn with_diagnosis(mut self, layer: impl Into<String>, message: impl Into<String>) -> Self {
        self.diagnosis = Some(Diagnosis::new(layer, message));
        self
    }

    /// Set the process exit code (the status is left as it is).
    pub fn with_exit_code(mut self, code: i32) -> Self {
        self.exit_code = Some(code);
        self
    }

    /// Set the case counts.
    pub fn with_counts(mut self, counts: TestCounts) -> Self {
        self.counts = Some(counts);
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
