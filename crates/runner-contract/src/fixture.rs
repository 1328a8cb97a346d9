//! What a backend supplies to be checked: specs and payloads it can run.

use std::path::PathBuf;
use std::time::Duration;

use runner_core::{BenchSpec, TestPayload};

/// The inputs the contract checks need from a backend.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// A bench the backend can provision.
    pub bench: BenchSpec,
    /// A bench whose backend section is invalid.
    pub invalid_bench: BenchSpec,
    /// The dotted field `invalid_bench` gets wrong; the error must name it.
    pub invalid_field: String,
    /// A payload that passes.
    pub passing: TestPayload,
    /// A payload that fails (a failed result, not an error).
    pub failing: TestPayload,
    /// A payload that runs far longer than `cancel_bound` unless cancelled.
    pub long_running: TestPayload,
    /// How long after cancellation `run_test` may take to return.
    pub cancel_bound: Duration,
    /// Local artifacts must lie below this directory, when set.
    pub artifacts_root: Option<PathBuf>,
}

impl Fixture {
    /// A fixture with a 10-second cancellation bound and no artifacts root.
    pub fn new(
        bench: BenchSpec,
        invalid_bench: BenchSpec,
        invalid_field: impl Into<String>,
        passing: TestPayload,
        failing: TestPayload,
        long_running: TestPayload,
    ) -> Self {
        Self {
            bench,
            invalid_bench,
            invalid_field: invalid_field.into(),
            passing,
            failing,
            long_running,
            cancel_bound: Duration::from_secs(10),
            artifacts_root: None,
        }
    }

    /// Set the cancellation bound.
    pub fn with_cancel_bound(mut self, bound: Duration) -> Self {
        self.cancel_bound = bound;
        self
    }

    /// Require local artifacts to lie below `root`.
    pub fn with_artifacts_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.artifacts_root = Some(root.into());
        self
    }
}
