//! Spans and metrics around every phase call.

use std::future::Future;
use std::time::Instant;

use runner_core::{Phase, PhaseMarker, RunContext, RunnerError};
use tracing::Instrument;

use crate::metrics::{FailureLabels, Metrics, PhaseLabels};

/// Run `fut` inside a `runner.<phase>` span, recording its duration and, on
/// failure, its kind.
pub async fn instrumented<P: PhaseMarker, T>(
    metrics: &Metrics,
    backend: &str,
    ctx: &RunContext,
    fut: impl Future<Output = Result<T, RunnerError<P>>>,
) -> Result<T, RunnerError<P>> {
    let phase = P::PHASE.as_str();
    // Span names are static in tracing, hence one arm per phase.
    macro_rules! phase_span {
        ($name:literal) => {
            tracing::info_span!(
                $name,
                backend,
                correlation_id = ctx.correlation_id(),
                execution_id = ctx.execution_id(),
                attempt = ctx.attempt(),
            )
        };
    }
    let span = match P::PHASE {
        Phase::Provision => phase_span!("runner.provision"),
        Phase::RunTest => phase_span!("runner.run_test"),
        Phase::CollectArtifacts => phase_span!("runner.collect_artifacts"),
        Phase::Teardown => phase_span!("runner.teardown"),
    };
    let started = Instant::now();
    let result = fut.instrument(span.clone()).await;
    let labels = PhaseLabels {
        backend: backend.to_owned(),
        phase: phase.to_owned(),
    };
    metrics
        .phase_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    if let Err(err) = &result {
        metrics
            .failures
            .get_or_create(&FailureLabels {
                backend: backend.to_owned(),
                phase: phase.to_owned(),
                kind: err.kind().as_str().to_owned(),
            })
            .inc();
        span.in_scope(|| tracing::warn!(kind = %err.kind(), error = %err, "phase failed"));
    }
    result
}
