//! Prometheus metrics of the worker and the backends it drives.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a phase observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Runner type.
    pub backend: String,
    /// Phase name.
    pub phase: String,
}

/// Labels of a failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Runner type.
    pub backend: String,
    /// Phase name.
    pub phase: String,
    /// Error kind.
    pub kind: String,
}

/// Labels of an execution's end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Runner type (`unknown` for tasks that never reached one).
    pub backend: String,
    /// `ack`, `requeue`, `release` or `dead_letter`.
    pub outcome: String,
}

/// Labels naming a backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Runner type.
    pub backend: String,
}

/// Labels of a queue gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `ready`, `leased`, `delayed` or `dead`.
    pub state: String,
}

/// Every metric the worker exports. Cheap to clone; clones share values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Phase durations in seconds.
    pub phase_duration: Family<PhaseLabels, Histogram>,
    /// Phase failures by kind.
    pub failures: Family<FailureLabels, Counter>,
    /// Executions by final disposition.
    pub executions: Family<OutcomeLabels, Counter>,
    /// Executions running now.
    pub in_flight: Family<BackendLabels, Gauge<i64, AtomicI64>>,
    /// Tasks in the queue by state.
    pub queue_depth: Family<QueueLabels, Gauge<i64, AtomicI64>>,
    /// Teardowns that failed (handles left for the reaper).
    pub teardown_failures: Family<BackendLabels, Counter>,
    /// Leaked resources found by the reaper.
    pub leaked_handles: Family<BackendLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn duration_histogram() -> Histogram {
    // 1 ms to ~4.6 h in 12 steps of x4.
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orchestrator");
        let phase_duration = Family::<PhaseLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let failures = Family::<FailureLabels, Counter>::default();
        let executions = Family::<OutcomeLabels, Counter>::default();
        let in_flight = Family::<BackendLabels, Gauge<i64, AtomicI64>>::default();
        let queue_depth = Family::<QueueLabels, Gauge<i64, AtomicI64>>::default();
        let teardown_failures = Family::<BackendLabels, Counter>::default();
        let leaked_handles = Family::<BackendLabels, Counter>::default();
        registry.register(
            "phase_duration_seconds",
            "Duration of each lifecycle phase",
            phase_duration.clone(),
        );
        registry.register("phase_failures", "Phase failures by kind", failures.clone());
        registry.register(
            "executions",
            "Executions by final disposition of their attempt",
            executions.clone(),
        );
        registry.register("in_flight", "Executions running now", in_flight.clone());
        registry.register(
            "queue_depth",
            "Tasks in the queue by state",
            queue_depth.clone(),
        );
        registry.register(
            "teardown_failures",
            "Teardowns that failed; the handle went to the reaper",
            teardown_failures.clone(),
        );
        registry.register(
            "leaked_handles",
            "Resources the reaper found without a live owner",
            leaked_handles.clone(),
        );
        Self {
            registry: Arc::new(registry),
            phase_duration,
            failures,
            executions,
            in_flight,
            queue_depth,
            teardown_failures,
            leaked_handles,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Count an execution's end.
    pub fn execution(&self, backend: &str, outcome: &str) {
        self.executions
            .get_or_create(&OutcomeLabels {
                backend: backend.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// Sum the samples of `metric` whose label set contains `label`.
pub fn sum_samples(text: &str, metric: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
