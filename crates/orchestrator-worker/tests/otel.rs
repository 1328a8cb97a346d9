//! OpenTelemetry: one trace per execution with the four phase spans and
//! the ids as attributes, continuing the submitter's trace through the
//! SQS message's W3C trace context. Spans go to an in-process exporter.

#![cfg(all(feature = "sqs", feature = "mock"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sqs_common;
use sqs_common as common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::Value;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use orchestrator_worker::config::WorkerConfig;
use orchestrator_worker::queue::{SqliteStore, TaskQueue};
use orchestrator_worker::serve::Worker;
use orchestrator_worker::telemetry::Telemetry;
use orchestrator_worker::{Metrics, RunnerFactory};
use runner_core::CancellationToken;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Keeps every exported span.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            Value::String(s) => s.to_string(),
            other => other.to_string(),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_execution_is_one_trace_continuing_the_submitters() {
    let spans = Collect::default();
    let telemetry = Telemetry::with_exporter(spans.clone());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(telemetry.layer());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let moto = common::moto();
    let (queue, _) = common::sqs_queue(moto, "traced", 5, false).await;
    let keys = ["traced-1", "traced-2"];
    for key in keys {
        let span = tracing::info_span!("ci.pipeline", key);
        queue
            .enqueue(&common::mock_task(key, 0))
            .instrument(span)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = WorkerConfig::from_yaml_str(&format!(
        // The third provision fails (the bad task's, processed last).
        "queue: {{path: '{}'}}\nrunners: [{{type: local_mock, artifacts_dir: '{}', retries: 0, backend: {{faults: [{{phase: provision, fault: {{kind: permanent}}, every: 3}}]}}}}]\n",
        dir.path().join("journal.sqlite3").display(),
        dir.path().join("art").display()
    ))
    .unwrap();
    let store = SqliteStore::open(&config.queue.path).unwrap();
    let factory = RunnerFactory::with_builtins(Metrics::new());
    let backends = orchestrator_worker::backends::Backends {
        queue: Arc::new(queue.clone()),
        store: Arc::new(store),
    };
    let worker = Worker::with_backends(config, &factory, backends).unwrap();
    let mut processed = 0;
    let started = Instant::now();
    while processed < keys.len() {
        assert!(started.elapsed() < Duration::from_secs(30));
        if let Some(lease) = queue.lease("w", Duration::from_secs(30)).await.unwrap() {
            assert!(
                lease.attributes.contains_key("traceparent"),
                "{:?}",
                lease.attributes
            );
            worker.process(lease, CancellationToken::new()).await;
            processed += 1;
        }
    }
    // A failed phase marks its span as an error.
    let bad = common::mock_task("traced-bad", 0);
    queue.enqueue(&bad).await.unwrap();
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(30));
        if let Some(lease) = queue.lease("w", Duration::from_secs(30)).await.unwrap() {
            worker.process(lease, CancellationToken::new()).await;
            break;
        }
    }
    telemetry.shutdown();

    let spans = spans.0.lock().unwrap().clone();
    let failed: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "runner.provision")
        .filter(|s| matches!(s.status, opentelemetry::trace::Status::Error { .. }))
        .collect();
    assert_eq!(failed.len(), 1, "only the bad task's provision failed");
    assert_eq!(
        attr(failed[0], "execution_id").as_deref(),
        Some("traced-bad.1")
    );
    let ok = spans
        .iter()
        .filter(|s| s.name == "runner.run_test")
        .all(|s| !matches!(s.status, opentelemetry::trace::Status::Error { .. }));
    assert!(ok, "passing phases are not errors");
    let mut traces = std::collections::BTreeSet::new();
    for key in keys {
        let root = spans
            .iter()
            .find(|s| s.name == "ci.pipeline" && attr(s, "key").as_deref() == Some(key))
            .expect("the submitter's span");
        let trace_id = root.span_context.trace_id();
        traces.insert(trace_id.to_string());
        let in_trace: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.span_context.trace_id() == trace_id)
            .collect();
        let execution = in_trace
            .iter()
            .find(|s| s.name == "execution")
            .expect("the worker's execution span is in the submitter's trace");
        assert_eq!(execution.parent_span_id, root.span_context.span_id());
        assert!(execution.parent_span_is_remote);
        assert_eq!(attr(execution, "execution_key").as_deref(), Some(key));
        for phase in [
            "runner.provision",
            "runner.run_test",
            "runner.collect_artifacts",
            "runner.teardown",
        ] {
            let span = in_trace
                .iter()
                .find(|s| s.name == phase)
                .unwrap_or_else(|| panic!("{phase} span in the trace of {key}"));
            assert_eq!(
                attr(span, "execution_id").as_deref(),
                Some(format!("{key}.1").as_str())
            );
            assert_eq!(
                attr(span, "correlation_id").as_deref(),
                Some(format!("corr-{key}").as_str())
            );
            assert_eq!(attr(span, "backend").as_deref(), Some("local_mock"));
        }
    }
    assert_eq!(traces.len(), keys.len(), "one trace per execution");
}
