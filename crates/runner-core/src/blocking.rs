//! A shim so a backend written with synchronous code plugs in.
//!
//! Implement [`BlockingRunnerAdapter`] and wrap it in [`Blocking`]: each call
//! runs on tokio's blocking pool. Cancellation is cooperative: the blocking
//! code checks `ctx.is_cancelled()` in its loops.

use std::fmt::Debug;
use std::sync::Arc;

use crate::adapter::{Capabilities, OwnedResource, RunnerAdapter};
use crate::artifact::ArtifactBundle;
use crate::context::RunContext;
use crate::error::{
    ArtifactError, ExecutionError, ListOwnedError, ProvisionError, RunnerError, TeardownError,
};
use crate::handle::RunnerHandle;
use crate::phase::PhaseMarker;
use crate::result::TestResult;
use crate::spec::{BenchSpec, TestPayload};

/// The synchronous form of [`RunnerAdapter`]; see it for the contract.
pub trait BlockingRunnerAdapter: Send + Sync + Debug + 'static {
    /// See [`RunnerAdapter::runner_type`].
    fn runner_type(&self) -> &str;
    /// See [`RunnerAdapter::capabilities`].
    fn capabilities(&self) -> Capabilities;
    /// See [`RunnerAdapter::provision`].
    fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError>;
    /// See [`RunnerAdapter::run_test`].
    fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError>;
    /// See [`RunnerAdapter::collect_artifacts`].
    fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError>;
    /// See [`RunnerAdapter::teardown`].
    fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError>;
    /// See [`RunnerAdapter::list_owned`].
    fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
        let _ = ctx;
        Ok(Vec::new())
    }
}

/// Adapts a [`BlockingRunnerAdapter`] to the async trait.
#[derive(Debug)]
pub struct Blocking<B> {
    inner: Arc<B>,
}

impl<B: BlockingRunnerAdapter> Blocking<B> {
    /// Wrap a synchronous backend.
    pub fn new(inner: B) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

async fn on_pool<B, T, P, F>(inner: &Arc<B>, ctx: &RunContext, f: F) -> Result<T, RunnerError<P>>
where
    B: BlockingRunnerAdapter,
    T: Send + 'static,
    P: PhaseMarker,
    F: FnOnce(&B, &RunContext) -> Result<T, RunnerError<P>> + Send + 'static,
{
    let inner = Arc::clone(inner);
    let task_ctx = ctx.clone();
    match tokio::task::spawn_blocking(move || f(&inner, &task_ctx)).await {
        Ok(result) => result,
        // Re-raise a panic so the worker's panic guard treats it like any other.
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => Err(RunnerError::cancelled(ctx, "blocking task was cancelled")),
    }
}

#[crate::async_trait]
impl<B: BlockingRunnerAdapter> RunnerAdapter for Blocking<B> {
    fn runner_type(&self) -> &str {
        self.inner.runner_type()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn provision(
        &self,
        ctx: &RunContext,
        bench: &BenchSpec,
    ) -> Result<RunnerHandle, ProvisionError> {
        let bench = bench.clone();
        on_pool(&self.inner, ctx, move |b, ctx| b.provision(ctx, &bench)).await
    }

    async fn run_test(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<TestResult, ExecutionError> {
        let (handle, payload) = (handle.clone(), payload.clone());
        on_pool(&self.inner, ctx, move |b, ctx| {
            b.run_test(ctx, &handle, &payload)
        })
        .await
    }

    async fn collect_artifacts(
        &self,
        ctx: &RunContext,
        handle: &RunnerHandle,
        payload: &TestPayload,
    ) -> Result<ArtifactBundle, ArtifactError> {
        let (handle, payload) = (handle.clone(), payload.clone());
        on_pool(&self.inner, ctx, move |b, ctx| {
            b.collect_artifacts(ctx, &handle, &payload)
        })
        .await
    }

    async fn teardown(&self, ctx: &RunContext, handle: &RunnerHandle) -> Result<(), TeardownError> {
        let handle = handle.clone();
        on_pool(&self.inner, ctx, move |b, ctx| b.teardown(ctx, &handle)).await
    }

    async fn list_owned(&self, ctx: &RunContext) -> Result<Vec<OwnedResource>, ListOwnedError> {
        on_pool(&self.inner, ctx, |b, ctx| b.list_owned(ctx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::result::TestStatus;

    #[derive(Debug)]
    struct Sync1;

    impl BlockingRunnerAdapter for Sync1 {
        fn runner_type(&self) -> &str {
            "sync1"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn provision(
            &self,
            ctx: &RunContext,
            _: &BenchSpec,
        ) -> Result<RunnerHandle, ProvisionError> {
            RunnerHandle::new("sync1", "h", ctx.execution_id(), &())
                .map_err(|e| ProvisionError::permanent(ctx, e.to_string()))
        }
        fn run_test(
            &self,
            ctx: &RunContext,
            _: &RunnerHandle,
            _: &TestPayload,
        ) -> Result<TestResult, ExecutionError> {
            if ctx.attempt() > 1 {
                panic!("boom");
            }
            std::thread::sleep(Duration::from_millis(1));
            Ok(TestResult::new(
                TestStatus::Passed,
                Duration::from_millis(1),
            ))
        }
        fn collect_artifacts(
            &self,
            _: &RunContext,
            _: &RunnerHandle,
            _: &TestPayload,
        ) -> Result<ArtifactBundle, ArtifactError> {
            Ok(ArtifactBundle::default())
        }
        fn teardown(&self, ctx: &RunContext, _: &RunnerHandle) -> Result<(), TeardownError> {
            Err(TeardownError::transient(ctx, "busy"))
        }
    }

    #[tokio::test]
    async fn blocking_backend_runs_on_the_pool_and_keeps_errors_and_panics() {
        let adapter: Arc<dyn RunnerAdapter> = Arc::new(Blocking::new(Sync1));
        let ctx = RunContext::new("e1", "c1");
        let handle = adapter
            .provision(&ctx, &BenchSpec::default())
            .await
            .unwrap();
        let result = adapter
            .run_test(&ctx, &handle, &TestPayload::default())
            .await
            .unwrap();
        assert!(result.passed());
        let err = adapter.teardown(&ctx, &handle).await.unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.execution_id(), "e1");

        let ctx2 = ctx.clone().with_attempt(2);
        let a2 = Arc::clone(&adapter);
        let h2 = handle.clone();
        let joined =
            tokio::spawn(async move { a2.run_test(&ctx2, &h2, &TestPayload::default()).await })
                .await;
        assert!(joined.unwrap_err().is_panic());
    }
}
