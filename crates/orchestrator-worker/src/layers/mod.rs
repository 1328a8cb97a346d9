//! Cross-cutting concerns, applied once by the factory to every adapter.
//!
//! Order, outermost first, for every phase call:
//!
//! 1. [`instrument`]: a `runner.<phase>` span with backend, correlation_id,
//!    execution_id and attempt; duration and failure metrics. Outermost, so
//!    it sees what the caller sees, timeouts and panics included.
//! 2. [`context`]: the backend name attached to every error.
//! 3. [`timeout`]: the phase's limit; on expiry the phase's token fires, the
//!    backend gets a short grace to clean up, then the call ends with a
//!    `timeout` error.
//! 4. [`panic`]: a panic inside the backend becomes a permanent error of
//!    that phase.
//!
//! Backends do none of this themselves.

pub mod context;
pub mod instrument;
pub mod panic;
pub mod timeout;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runner_core::{
    ArtifactBundle, ArtifactError, BenchSpec, Capabilities, ExecutionError, OwnedResource,
    PhaseMarker, ProvisionError, RunContext, RunnerAdapter, RunnerConfig, RunnerError,
    RunnerHandle, TeardownError, TestPayload, TestResult,
};

use crate::metrics::Metrics;

/// An adapter wrapped in every cross-cutting layer.
#[derive(Debug)]
pub struct Layered {
    inner: Arc<dyn RunnerAdapter>,
    backend: String,
    timeouts: PhaseLimits,
    metrics: Metrics,
}

/// The per-phase limits the timeout layer applies.
#[derive(Debug, Clone, Copy)]
pub struct PhaseLimits {
    /// Provision limit.
    pub provision: Duration,
    /// Run limit.
    pub run_test: Duration,
    /// Collect limit.
    pub collect_artifacts: Duration,
    /// Teardown limit.
    pub teardown: Duration,
    /// How long a backend may take to wind down after its phase timed out.
    pub grace: Duration,
}

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
            grace: Duration::from_secs(5),
        }
    }
}

impl Layered {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn RunnerAdapter>, timeouts: PhaseLimits, metrics: Metrics) -> Self {
        Self {
            backend: inner.runner_type().to_owned(),
            inner,
            timeouts,
            metrics,
        }
    }

    /// The wrapped adapter.
    pub fn inner(&self) -> &Arc<dyn RunnerAdapter> {
        &self.inner
    }

    async fn guard<P, T, F, Fut>(
        &self,
        limit: Duration,
        ctx: &RunContext,
        call: F,
    ) -> Result<T, RunnerError<P>>
    where
        P: PhaseMarker,
        F: FnOnce(RunContext) -> Fut,
        Fut: Future<Output = Result<T, RunnerError<P>>>,
    {
        let phase_ctx = ctx.child();
        let token = phase_ctx.cancel_token().clone();
        let fut = call(phase_ctx);
        instrument::instrumented(
            &self.metrics,
            &self.backend,
            ctx,
            context::with_backend(
                &self.backend,
                timeout::with_timeout(
                    limit,
                    self.timeouts.grace,
                    ctx,
                    token,
                    panic::catch_panic(ctx, fut),
                ),
            ),
        )
        .await
    }
}

#[runner_core::async_trait]
impl RunnerAdapter for Layered {
    fn runner_type(&self) -> &str {
        &self.backend
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        self.guard(self.timeouts.provision, ctx, |c| async move {
            self.inner.provision(&c, bench).await
        })
        .await
    }

    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        self.guard(self.timeouts.run_test, ctx, |c| async move {
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
        self.guard(self.timeouts.collect_artifacts, ctx, |c| async move {
            self.inner.collect_artifacts(&c, handle, payload).await
        })
        .await
    }

    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        self.guard(self.timeouts.teardown, ctx, |c| async move {
            self.inner.teardown(&c, handle).await
        })
        .await
    }

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, TeardownError> {
        self.guard(self.timeouts.teardown, ctx, |c| async move {
            self.inner.list_owned(&c).await
        })
        .await
    }
}
