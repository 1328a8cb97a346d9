//! Cross-cutting concerns, one small type each, applied once by the
//! factory to every adapter ([`stack`]), in the manner of tower's layers.
//!
//! Order, outermost first, for every phase call:
//!
//! 1. [`instrument::Instrument`]: a `runner.<phase>` span with backend,
//!    correlation_id, execution_id and attempt; duration and failure
//!    metrics; a failed phase marks its span as an error. Outermost, so it
//!    sees what the caller sees, timeouts and panics included.
//! 2. [`context::ErrorContext`]: the backend name attached to every error.
//! 3. [`timeout::TimeLimit`]: the phase's limit, put on the context as its
//!    deadline so the backend sizes its own waits by it. On expiry the
//!    phase's token fires and the backend gets a grace to stop; what it
//!    returns within the grace is used. A run past its limit is a
//!    `timed_out` result, not an error.
//! 4. [`panic::PanicGuard`]: a panic inside the backend becomes a permanent
//!    error of that phase.
//!
//! Backends do none of this themselves. The per-runner concurrency limit
//! is the engine's ([`crate::engine::EngineSettings::max_concurrency`]): it
//! must hold from provision to teardown and must not eat into the provision
//! time limit.

pub mod context;
pub mod instrument;
pub mod panic;
pub mod timeout;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runner_core::{
    ArtifactBundle, ArtifactError, BenchSpec, Capabilities, ExecutionError, ListOwnedError,
    OwnedResource, PhaseMarker, ProvisionError, RunContext, RunnerAdapter, RunnerConfig,
    RunnerError, RunnerHandle, TeardownError, TestPayload, TestResult,
};

use crate::metrics::Metrics;

/// One concern around phase calls. `call` runs the inner adapter with the
/// context it is given (a concern may hand it a child context).
pub trait Around: Send + Sync + std::fmt::Debug + 'static {
    /// Around a phase call.
    fn around<P, T, F, Fut>(
        &self,
        ctx: &RunContext,
        call: F,
    ) -> impl Future<Output = Result<T, RunnerError<P>>> + Send
    where
        P: PhaseMarker,
        T: Send + 'static,
        F: FnOnce(RunContext) -> Fut + Send,
        Fut: Future<Output = Result<T, RunnerError<P>>> + Send;

    /// Around `run_test`; `payload` carries the test's own time limit.
    fn around_run<F, Fut>(
        &self,
        ctx: &RunContext,
        payload: &TestPayload,
        call: F,
    ) -> impl Future<Output = Result<TestResult, ExecutionError>> + Send
    where
        F: FnOnce(RunContext) -> Fut + Send,
        Fut: Future<Output = Result<TestResult, ExecutionError>> + Send,
    {
        let _ = payload;
        self.around(ctx, call)
    }

    /// Around `list_owned`, which is not a phase (not timed or counted as
    /// a teardown).
    fn around_list<F, Fut>(
        &self,
        ctx: &RunContext,
        call: F,
    ) -> impl Future<Output = Result<Vec<OwnedResource>, ListOwnedError>> + Send
    where
        F: FnOnce(RunContext) -> Fut + Send,
        Fut: Future<Output = Result<Vec<OwnedResource>, ListOwnedError>> + Send,
    {
        self.around(ctx, call)
    }
}

/// An adapter with one concern around it.
#[derive(Debug)]
pub struct Wrapped<L> {
    inner: Arc<dyn RunnerAdapter>,
    layer: L,
}

impl<L: Around> Wrapped<L> {
    /// `layer` around `inner`.
    pub fn new(inner: Arc<dyn RunnerAdapter>, layer: L) -> Self {
        Self { inner, layer }
    }

    /// The wrapped adapter.
    pub fn inner(&self) -> &Arc<dyn RunnerAdapter> {
        &self.inner
    }
}

#[runner_core::async_trait]
impl<L: Around> RunnerAdapter for Wrapped<L> {
    fn runner_type(&self) -> &str {
        self.inner.runner_type()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    // Checking makes nothing and calls nothing outside: no layer applies,
    // but without this the trait's accept-everything default would answer
    // for every backend.
    fn validate(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
        payload: &TestPayload,
    ) -> Result<(), ProvisionError> {
        self.inner.validate(ctx, bench, payload)
    }

    async fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        self.layer
            .around(
                ctx,
                |c| async move { self.inner.provision(&c, bench).await },
            )
            .await
    }

    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        self.layer
            .around_run(ctx, payload, |c| async move {
                self.inner.run_test(&c, handle, payload).await
            })
            .await
    }

    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        self.layer
            .around(ctx, |c| async move {
                self.inner.collect_artifacts(&c, handle, payload).await
            })
            .await
    }

    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        self.layer
            .around(
                ctx,
                |c| async move { self.inner.teardown(&c, handle).await },
            )
            .await
    }

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
        self.layer
            .around_list(ctx, |c| async move { self.inner.list_owned(&c).await })
            .await
    }
}

/// The per-phase limits the time limit applies.
#[derive(Debug, Clone, Copy)]
pub struct PhaseLimits {
    /// Provision limit.
    pub provision: Duration,
    /// Run limit (a payload's own `timeout_seconds` may be shorter).
    pub run_test: Duration,
    /// Collect limit.
    pub collect_artifacts: Duration,
    /// Teardown limit (also bounds `list_owned`).
    pub teardown: Duration,
    /// How long a backend may take to wind down after its phase ran out of
    /// time; what it returns within it is used.
    pub grace: Duration,
}

/// The grace a backend gets to stop after a phase ran out of time.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

impl PhaseLimits {
    /// The same `limit` for every phase, and `grace` to wind down.
    pub fn uniform(limit: Duration, grace: Duration) -> Self {
        Self {
            provision: limit,
            run_test: limit,
            collect_artifacts: limit,
            teardown: limit,
            grace,
        }
    }

    /// The limits of a runner config.
    pub fn from_config(config: &RunnerConfig) -> Self {
        use runner_core::Phase::*;
        Self {
            provision: config.phase_timeout(Provision),
            run_test: config.phase_timeout(RunTest),
            collect_artifacts: config.phase_timeout(CollectArtifacts),
            teardown: config.phase_timeout(Teardown),
            grace: DEFAULT_GRACE,
        }
    }
}

/// `inner` with every concern, in the documented order: the one place the
/// stack is composed.
pub fn stack(
    inner: Arc<dyn RunnerAdapter>,
    limits: PhaseLimits,
    metrics: Metrics,
) -> Arc<dyn RunnerAdapter> {
    let backend = inner.runner_type().to_owned();
    let guarded: Arc<dyn RunnerAdapter> = Arc::new(Wrapped::new(inner, panic::PanicGuard));
    let limited: Arc<dyn RunnerAdapter> =
        Arc::new(Wrapped::new(guarded, timeout::TimeLimit::new(limits)));
    let named: Arc<dyn RunnerAdapter> = Arc::new(Wrapped::new(
        limited,
        context::ErrorContext::new(backend.clone()),
    ));
    Arc::new(Wrapped::new(
        named,
        instrument::Instrument::new(metrics, backend),
    ))
}
