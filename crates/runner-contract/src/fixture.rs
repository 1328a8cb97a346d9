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
    /// The secret-across-chunks case, when the backend can run one.
    pub secret_case: Option<SecretCase>,
    /// The memory-bound case, when the backend can run one.
    pub big_case: Option<BigCase>,
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
            secret_case: None,
            big_case: None,
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

/// A payload whose output and an artifact both carry a secret placed across
/// a 64 KiB chunk boundary (the secret is a secret env value of the payload).
#[derive(Debug, Clone)]
pub struct SecretCase {
    /// The payload.
    pub payload: TestPayload,
    /// The secret value it prints and writes.
    pub secret: String,
}

/// A payload that prints a 100 MiB line without a newline and writes a
/// large artifact (1 GiB where the emulator can take it), and the bound the
/// backend keeps its memory growth under while running and collecting it.
#[derive(Debug, Clone)]
pub struct BigCase {
    /// The payload.
    pub payload: TestPayload,
    /// The most the process's peak RSS may grow, in KiB.
    pub memory_bound_kib: u64,
    /// What the payload produces, for the report (`"100 MiB line, 1 GiB artifact"`).
    pub describes: String,
}

impl Fixture {
    /// Check that a secret across a chunk boundary is redacted in logs and artifacts.
    pub fn with_secret_case(mut self, payload: TestPayload, secret: impl Into<String>) -> Self {
        self.secret_case = Some(SecretCase {
            payload,
            secret: secret.into(),
        });
        self
    }

    /// Check that a huge line and a huge artifact keep memory under a bound.
    pub fn with_big_case(
        mut self,
        payload: TestPayload,
        memory_bound_kib: u64,
        describes: impl Into<String>,
    ) -> Self {
        self.big_case = Some(BigCase {
            payload,
            memory_bound_kib,
            describes: describes.into(),
        });
        self
    }
}

/// `payload` with `name` set to `value` as a secret env value (what the
/// secret case's payloads carry).
pub fn with_secret_env(mut payload: TestPayload, name: &str, value: &str) -> TestPayload {
    payload.env.insert(
        name.into(),
        runner_core::EnvVar::Detailed {
            value: value.into(),
            secret: true,
        },
    );
    payload
}
