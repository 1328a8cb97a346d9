#![doc = include_str!("../README.md")]
// Public API: every public item documented (`cargo xtask ci` runs rustdoc
// with `-D warnings`, as well as clippy).
#![warn(missing_docs)]

pub mod adapter;
pub mod artifact;
pub mod backoff;
pub mod blocking;
pub mod config;
pub mod context;
pub mod doc;
pub mod error;
pub mod handle;
pub mod kit;
pub mod phase;
pub mod redact;
pub mod registry;
pub mod result;
pub mod safe_path;
pub mod spec;

pub use adapter::{Capabilities, DynRunnerAdapter, OwnedResource, RunnerAdapter};
pub use artifact::{Artifact, ArtifactBundle, ArtifactKind, ArtifactLocation};
pub use backoff::Backoff;
pub use config::{ConfigError, PhaseTimeouts, RunnerConfig};
pub use context::{LogBatch, LogLine, LogReceiver, LogSink, LogStream, RunContext};
pub use error::{
    ArtifactError, ErrorKind, ExecutionError, ListOwnedError, ProvisionError, RunnerError,
    TeardownError,
};
pub use handle::{HandleError, RunnerHandle};
pub use phase::{Phase, PhaseMarker};
pub use redact::Redactor;
pub use registry::{Constructor, Register, RunnerRegistry};
pub use result::{Diagnosis, TestCounts, TestResult, TestStatus};
pub use spec::{
    BenchSpec, EnvVar, KubernetesSecret, SecretRef, SpecError, TestPayload, decode_section,
    decode_spec,
};

/// Re-exported so backends implement the trait with the same macro version.
pub use async_trait::async_trait;
/// Re-exported so every crate shares one cancellation token type.
pub use tokio_util::sync::CancellationToken;
