//! Spans and metrics around every phase call.

use std::future::Future;
use std::time::Instant;

use runner_core::{ListOwnedError, OwnedResource, Phase, PhaseMarker, RunContext, RunnerError};
use tracing::Instrument as _;

use super::Around;
use crate::metrics::{FailureLabels, Metrics, PhaseLabels};

/// A `runner.<phase>` span around each call, its duration and, on failure,
/// its kind in the metrics; a failed call marks its span as an error
/// (`otel.status_code`), so traces show failures.
#[derive(Debug, Clone)]
pub struct Instrument {
    metrics: Metrics,
    backend: String,
}

impl Instrument {
    /// For `backend`, recording into `metrics`.
    pub fn new(metrics: Metrics, backend: impl Into<String>) -> Self {
        Self {
            metrics,
            backend: backend.into(),
        }
    }
}

/// The span of one call (span names are static in tracing, hence the arms).
fn span(name: Option<Phase>, backend: &str, ctx: &RunContext) -> tracing::Span {
    macro_rules! phase_span {
        ($name:literal) => {
            tracing::info_span!(
                $name,
                backend,
                correlation_id = ctx.correlation_id(),
                execution_id = ctx.execution_id(),
                attempt = ctx.attempt(),
                otel.status_code = tracing::field::Empty,
                otel.status_message = tracing::field::Empty,
            )
        };
    }
    match name {
        Some(Phase::Provision) => phase_span!("runner.provision"),
        Some(Phase::RunTest) => phase_span!("runner.run_test"),
        Some(Phase::CollectArtifacts) => phase_span!("runner.collect_artifacts"),
        Some(Phase::Teardown) => phase_span!("runner.teardown"),
        None => phase_span!("runner.list_owned"),
    }
}

fn mark_failed(span: &tracing::Span, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_message", message);
}

impl Around for Instrument {
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
        let span = span(Some(P::PHASE), &self.backend, ctx);
        let fut = call(ctx.clone());
        async move {
            let phase = P::PHASE.as_str();
            let started = Instant::now();
            let result = fut.instrument(span.clone()).await;
            let labels = PhaseLabels {
                backend: self.backend.clone(),
                phase: phase.to_owned(),
            };
            self.metrics
                .phase_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            if let Err(err) = &result {
                self.metrics
                    .failures
                    .get_or_create(&FailureLabels {
                        backend: self.backend.clone(),
                        phase: phase.to_owned(),
                        kind: err.kind().as_str().to_owned(),
                    })
                    .inc();
                mark_failed(&span, &err.detail());
                span.in_scope(
                    || tracing::warn!(kind = %err.kind(), error = %err.detail(), "phase failed"),
                );
            }
            result
        }
    }

    fn around_list<F, Fut>(
        &self,
        ctx: &RunContext,
        call: F,
    ) -> impl Future<Output = Result<Vec<OwnedResource>, ListOwnedError>> + Send
    where
        F: FnOnce(RunContext) -> Fut + Send,
        Fut: Future<Output = Result<Vec<OwnedResource>, ListOwnedError>> + Send,
    {
        let span = span(None, &self.backend, ctx);
        let fut = call(ctx.clone());
        async move {
            let result = fut.instrument(span.clone()).await;
            if let Err(err) = &result {
                mark_failed(&span, &err.detail());
            }
            result
        }
    }
}
