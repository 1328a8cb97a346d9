//! The `RunnerAdapter` trait: one interface for every execution backend.
//!
//! # A minimal backend, end to end
//!
//! A backend implements the trait, exports `register`, and is created by
//! runner type from a registry; the worker then drives the lifecycle
//! (here by hand: provision, run, collect, teardown).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use runner_core::{
//!     ArtifactBundle, ArtifactError, BenchSpec, Capabilities, ExecutionError, ProvisionError,
//!     RunContext, RunnerAdapter, RunnerConfig, RunnerHandle, RunnerRegistry, TeardownError,
//!     TestPayload, TestResult, TestStatus, async_trait,
//! };
//!
//! /// Runs nothing: every test passes at once.
//! #[derive(Debug)]
//! struct Instant;
//!
//! #[async_trait]
//! impl RunnerAdapter for Instant {
//!     fn runner_type(&self) -> &str {
//!         "instant"
//!     }
//!
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::new().with_idempotent_teardown(true)
//!     }
//!
//!     async fn provision(
//!         &self,
//!         ctx: &RunContext,
//!         _bench: &BenchSpec,
//!     ) -> Result<RunnerHandle, ProvisionError> {
//!         // The handle is plain data: all that teardown will need.
//!         RunnerHandle::new("instant", ctx.execution_key(), ctx.execution_id(), &())
//!             .map_err(|e| ProvisionError::permanent(ctx, e.to_string()))
//!     }
//!
//!     async fn run_test(
//!         &self,
//!         ctx: &RunContext,
//!         handle: &RunnerHandle,
//!         payload: &TestPayload,
//!     ) -> Result<TestResult, ExecutionError> {
//!         // A handle of another backend is a permanent error, never a panic.
//!         handle.decode_in::<(), _>(ctx, "instant")?;
//!         let status = match payload.command.first().map(String::as_str) {
//!             Some("false") => TestStatus::Failed,
//!             _ => TestStatus::Passed,
//!         };
//!         Ok(TestResult::new(status, Duration::ZERO))
//!     }
//!
//!     async fn collect_artifacts(
//!         &self,
//!         _ctx: &RunContext,
//!         _handle: &RunnerHandle,
//!         _payload: &TestPayload,
//!     ) -> Result<ArtifactBundle, ArtifactError> {
//!         Ok(ArtifactBundle::default())
//!     }
//!
//!     async fn teardown(&self, _ctx: &RunContext, _handle: &RunnerHandle) -> Result<(), TeardownError> {
//!         Ok(())
//!     }
//! }
//!
//! /// What the backend crate exports.
//! pub fn register(registry: &mut RunnerRegistry) {
//!     registry.register("instant", |_config| Ok(Arc::new(Instant)));
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let registry = RunnerRegistry::with(&[register]);
//! let adapter = registry.create(&RunnerConfig::new("instant")).unwrap();
//!
//! let ctx = RunContext::new("exec-1", "corr-1").with_execution_key("key-1");
//! let handle = adapter.provision(&ctx, &BenchSpec::new()).await.unwrap();
//! let result = adapter
//!     .run_test(&ctx, &handle, &TestPayload::new(["true"]))
//!     .await
//!     .unwrap();
//! assert!(result.passed());
//! let bundle = adapter
//!     .collect_artifacts(&ctx, &handle, &TestPayload::new(["true"]))
//!     .await
//!     .unwrap();
//! assert!(bundle.artifacts.is_empty());
//! adapter.teardown(&ctx, &handle).await.unwrap();
//! // Idempotent teardown, as declared.
//! adapter.teardown(&ctx, &handle).await.unwrap();
//! assert!(adapter.list_owned(&ctx).await.unwrap().is_empty());
//! # });
//! ```
//!
//! A backend outside this workspace follows docs/adapters/writing-a-backend.md
//! and checks itself with the `runner-contract` suite.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::artifact::ArtifactBundle;
use crate::context::RunContext;
use crate::error::{ArtifactError, ExecutionError, ListOwnedError, ProvisionError, TeardownError};
use crate::handle::RunnerHandle;
use crate::result::TestResult;
use crate::spec::{BenchSpec, TestPayload};

/// What a backend can do; the worker and the contract suite choose by it.
///
/// `#[non_exhaustive]`: a backend outside this crate builds it with
/// [`Capabilities::new`] and the `with_*` methods, so a capability added
/// later (off by default) does not break it:
///
/// ```
/// use runner_core::Capabilities;
///
/// let caps = Capabilities::new()
///     .with_live_logs(true)
///     .with_idempotent_teardown(true)
///     .with_max_concurrency(4);
/// assert!(caps.live_logs && !caps.warm_pool);
/// assert_eq!(caps.max_concurrency, Some(4));
/// ```
///
/// A struct literal does not compile outside this crate:
///
/// ```compile_fail,E0639
/// let caps = runner_core::Capabilities {
///     warm_pool: false,
///     live_logs: true,
///     idempotent_teardown: true,
///     leak_listing: false,
///     max_concurrency: None,
/// };
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// `provision` may claim a pre-started environment.
    pub warm_pool: bool,
    /// `run_test` streams output to the log sink while the test runs.
    pub live_logs: bool,
    /// `teardown` may be called again on a released handle and succeeds.
    pub idempotent_teardown: bool,
    /// `list_owned` reports the resources this backend holds.
    pub leak_listing: bool,
    /// How many executions the backend supports at once, if limited.
    pub max_concurrency: Option<usize>,
}

impl Capabilities {
    /// Nothing declared: no warm pool, no live logs, teardown not
    /// idempotent, no leak listing, no concurrency limit.
    pub const fn new() -> Self {
        Self {
            warm_pool: false,
            live_logs: false,
            idempotent_teardown: false,
            leak_listing: false,
            max_concurrency: None,
        }
    }

    /// Whether `provision` may claim a pre-started environment.
    pub const fn with_warm_pool(mut self, yes: bool) -> Self {
        self.warm_pool = yes;
        self
    }

    /// Whether `run_test` streams output while the test runs.
    pub const fn with_live_logs(mut self, yes: bool) -> Self {
        self.live_logs = yes;
        self
    }

    /// Whether `teardown` of a released handle succeeds.
    pub const fn with_idempotent_teardown(mut self, yes: bool) -> Self {
        self.idempotent_teardown = yes;
        self
    }

    /// Whether `list_owned` reports what the backend holds.
    pub const fn with_leak_listing(mut self, yes: bool) -> Self {
        self.leak_listing = yes;
        self
    }

    /// At most `limit` executions at once.
    pub const fn with_max_concurrency(mut self, limit: usize) -> Self {
        self.max_concurrency = Some(limit);
        self
    }
}

/// A resource a backend holds, as reported by [`RunnerAdapter::list_owned`].
///
/// Built with [`OwnedResource::new`] and the `with_*` methods, so a field
/// added later does not break backends outside this workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OwnedResource {
    /// The backend's id of it.
    pub resource_id: String,
    /// The execution it was made for, when tagged.
    pub execution_id: Option<String>,
    /// The execution key it was made for, when tagged.
    pub execution_key: Option<String>,
    /// The worker that made it, when tagged ([`RunContext::worker_id`]).
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Age in seconds, when known.
    pub age_seconds: Option<u64>,
    /// A handle that `teardown` accepts for it.
    pub handle: RunnerHandle,
}

impl OwnedResource {
    /// A resource with id `resource_id` that `handle` tears down; nothing
    /// else known yet.
    pub fn new(resource_id: impl Into<String>, handle: RunnerHandle) -> Self {
        Self {
            resource_id: resource_id.into(),
            execution_id: None,
            execution_key: None,
            worker_id: None,
            age_seconds: None,
            handle,
        }
    }

    /// The execution key it was made for.
    pub fn with_execution_key(mut self, key: impl Into<String>) -> Self {
        self.execution_key = Some(key.into());
        self
    }

    /// The execution id it was made for.
    pub fn with_execution_id(mut self, id: impl Into<String>) -> Self {
        self.execution_id = Some(id.into());
        self
    }

    /// The worker that made it; an empty id (no worker) is left out.
    pub fn with_worker(mut self, worker_id: impl Into<String>) -> Self {
        let worker_id = worker_id.into();
        self.worker_id = (!worker_id.is_empty()).then_some(worker_id);
        self
    }

    /// Its age.
    pub fn with_age_seconds(mut self, age: u64) -> Self {
        self.age_seconds = Some(age);
        self
    }
}

/// An execution backend: provision an environment, run a test in it, collect
/// what it produced, release it.
///
/// # Contract
///
/// - Every method takes a [`RunContext`]; every error it returns carries the
///   context's correlation and execution ids and a [`crate::ErrorKind`]. The
///   backend classifies failures; the worker decides what to retry.
/// - Methods observe `ctx.cancel_token()`: once it fires, the method stops
///   what it is doing (killing processes, cancelling remote commands) and
///   returns promptly, with a `cancelled` result or error.
/// - Deadlines (`ctx.deadline()`) are enforced by the worker's timeout
///   wrapper; a backend uses them to size its own waits, not to race them.
/// - A failing test is `Ok(TestResult)` with a failed status, never an error.
///   Errors are for the infrastructure.
/// - Cross-cutting work (retries, timeouts, spans, metrics, error context)
///   is done once by the worker's wrappers; backends do not repeat it.
/// - A [`RunnerHandle`] is plain data: it may be journaled, read back in
///   another process and torn down there. Backends keep nothing that
///   `teardown` needs only in memory.
/// - An invalid bench spec or payload is an `invalid_spec` error naming the
///   field (`bench.backend.image`), raised before any resource is made.
/// - Artifact names are relative and stay below the artifacts directory
///   (see [`crate::safe_path`]); sizes and sha256 are of the stored bytes.
/// - Secret payload environment values never appear in a log line, an error
///   message or an artifact.
#[crate::async_trait]
pub trait RunnerAdapter: Send + Sync + Debug + 'static {
    /// The runner type name this adapter answers to (`local`, `ec2`...).
    fn runner_type(&self) -> &str;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Check `bench` and `payload` for this backend without making anything:
    /// its own sections decoded (unknown keys refused), its rules applied.
    /// The worker calls it before a task is queued (`submit`, `validate`)
    /// and before provisioning; the first problem is an `invalid_spec`
    /// error naming the field.
    ///
    /// # Behavior
    /// - Makes no call to the outside and creates nothing.
    /// - The default accepts everything; `provision` still checks.
    fn validate(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
        payload: &TestPayload,
    ) -> Result<(), ProvisionError> {
        let _ = (ctx, bench, payload);
        Ok(())
    }

    /// Acquire an execution environment for `bench`.
    ///
    /// # Behavior
    /// - Validates the bench's backend section first; an invalid one is an
    ///   `invalid_spec` error and nothing is created.
    /// - Idempotent per `ctx.execution_key()` where the backend can be: a
    ///   retried or redelivered provision adopts what an earlier attempt made.
    /// - On failure it releases anything it made half-way before returning.
    /// - On cancellation it releases what it made and returns `cancelled`.
    async fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError>;

    /// Run `payload` in the environment behind `handle`.
    ///
    /// # Behavior
    /// - Streams output to `ctx.logs()` when `live_logs` is declared.
    /// - Returns `Ok` with status passed or failed when the test ran; timed_out
    ///   when the payload's own time limit ran out; cancelled when the token fired.
    /// - A handle of another runner type is a permanent error, never a panic.
    /// - Not idempotent: calling it twice runs the test twice.
    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError>;

    /// Gather the run's logs and the files matching `payload.artifacts`.
    ///
    /// # Behavior
    /// - Works after a failed, timed-out or cancelled run, and after none.
    /// - Idempotent: a second call returns the same bundle.
    /// - Refuses names that would leave the artifacts directory.
    /// - Takes the payload (a change from the first design) because the
    ///   backend needs its globs, and a handle is fixed before the payload is known.
    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError>;

    /// Release the environment behind `handle`.
    ///
    /// # Behavior
    /// - Stops anything still running in it first.
    /// - With `idempotent_teardown`, a handle already released (or whose
    ///   resource is gone) is success. Without it, a second call may fail,
    ///   but with a non-retryable error and never a panic.
    /// - Works on a handle read back from a journal in another process.
    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError>;

    /// The resources this backend holds for this orchestrator, live or leaked.
    ///
    /// # Behavior
    /// - Backends without `leak_listing` return an empty list.
    /// - Each entry carries a handle that `teardown` accepts.
    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
        let _ = ctx;
        Ok(Vec::new())
    }
}

/// The form the factory hands out.
pub type DynRunnerAdapter = dyn RunnerAdapter;
