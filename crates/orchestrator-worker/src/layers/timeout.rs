//! Per-phase time limits: the limit is the context's deadline, so the
//! backend sizes its own waits by it; on expiry the backend is cancelled
//! and given a grace to stop, and what it returns within the grace is used.

use std::future::Future;
use std::time::Duration;

use runner_core::{
    Diagnosis, ExecutionError, Phase, PhaseMarker, RunContext, RunnerError, RunnerHandle,
    TestPayload, TestResult, TestStatus,
};

use super::{Around, PhaseLimits};

/// Applies [`PhaseLimits`].
#[derive(Debug, Clone, Copy)]
pub struct TimeLimit {
    limits: PhaseLimits,
}

impl TimeLimit {
    /// With `limits`.
    pub fn new(limits: PhaseLimits) -> Self {
        Self { limits }
    }

    fn limit(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Provision => self.limits.provision,
            Phase::RunTest => self.limits.run_test,
            Phase::CollectArtifacts => self.limits.collect_artifacts,
            Phase::Teardown => self.limits.teardown,
        }
    }
}

/// What the limited call came to.
enum Limited<T> {
    /// It ended in time.
    InTime(T),
    /// It ran out of time; this is what it returned within the grace.
    Late(Option<T>),
}

/// Run `call` with `limit` as its context's deadline (never past the
/// caller's); on expiry fire its token and wait up to `grace` for it.
async fn limited<T, F, Fut>(
    ctx: &RunContext,
    limit: Duration,
    grace: Duration,
    call: F,
) -> (Limited<T>, Duration)
where
    F: FnOnce(RunContext) -> Fut,
    Fut: Future<Output = T>,
{
    let limit = ctx.remaining().map_or(limit, |left| left.min(limit));
    let phase_ctx = ctx.child().with_timeout(limit);
    let token = phase_ctx.cancel_token().clone();
    let fut = call(phase_ctx);
    tokio::pin!(fut);
    match tokio::time::timeout(limit, &mut fut).await {
        Ok(result) => (Limited::InTime(result), limit),
        Err(_) => {
            token.cancel();
            (
                Limited::Late(tokio::time::timeout(grace, &mut fut).await.ok()),
                limit,
            )
        }
    }
}

impl Around for TimeLimit {
    fn around<P, T, F, Fut>(
        &self,
        ctx: &RunContext,
        call: F,
    ) -> impl Future<Output = Result<T, RunnerError<P>>> + Send
    where
        P: PhaseMarker,
        T: Send + 'static,
        F: FnOnce(RunContext) -> Fut + Send,
        Fut: Future<Output = Result<T, RunnerError<P>>> + Send,
    {
        let ctx = ctx.clone();
        let (limit, grace) = (self.limit(P::PHASE), self.limits.grace);
        async move {
            match limited(&ctx, limit, grace, call).await {
                (Limited::InTime(result), _) => result,
                (Limited::Late(late), limit) => {
                    let err = RunnerError::timeout(
                        &ctx,
                        format!("{} exceeded its limit of {limit:.1?}", P::NAME),
                    );
                    // A provision that finished in the grace made something:
                    // hand its handle on, so it is journaled and torn down.
                    Err(match late.and_then(late_handle::<P, T>) {
                        Some(handle) => err.with_handle(handle),
                        None => err,
                    })
                }
            }
        }
    }

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
        let ctx = ctx.clone();
        let runner_limit = self.limits.run_test;
        let payload_limit = payload
            .timeout_seconds
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        // The smaller limit wins; say which one a timed-out test hit.
        let (limit, which) = match payload_limit {
            Some(p) if p < runner_limit => (p, "the payload's timeout_seconds"),
            _ => (runner_limit, "the runner's run limit"),
        };
        let grace = self.limits.grace;
        async move {
            match limited(&ctx, limit, grace, call).await {
                (Limited::InTime(result), _) => result,
                (Limited::Late(late), limit) => {
                    let message = format!("the run exceeded its limit of {limit:.1?} ({which})");
                    // A run past its limit is a timed-out test, whatever
                    // the backend made of being stopped; its output and
                    // artifacts are kept.
                    Ok(match late {
                        Some(Ok(mut result)) => {
                            if result.status != TestStatus::TimedOut {
                                result.status = TestStatus::TimedOut;
                                result.diagnosis = Some(Diagnosis::new("worker", message));
                            }
                            result
                        }
                        Some(Err(e)) => timed_out(
                            limit,
                            format!("{message}; stopping it failed: {}", e.detail()),
                        ),
                        None => timed_out(
                            limit,
                            format!("{message}; the backend did not stop within {grace:.1?}"),
                        ),
                    })
                }
            }
        }
    }
}

fn timed_out(limit: Duration, message: String) -> TestResult {
    TestResult::new(TestStatus::TimedOut, limit).with_diagnosis("worker", message)
}

/// The handle in a late provision's outcome, if there is one.
fn late_handle<P: PhaseMarker, T: 'static>(
    late: Result<T, RunnerError<P>>,
) -> Option<RunnerHandle> {
    match late {
        Ok(value) => {
            let any: Box<dyn std::any::Any> = Box::new(value);
            any.downcast::<RunnerHandle>().ok().map(|h| *h)
        }
        Err(e) => e.handle().cloned(),
    }
}
