//! OpenTelemetry: the worker's spans exported through OTLP, and W3C trace
//! context carried in queue messages.
//!
//! Export is on only when the standard variables ask for it:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! (HTTP/protobuf, e.g. `http://127.0.0.1:4318`), with the SDK's own
//! handling of `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`,
//! `OTEL_SERVICE_NAME` (default `orchestrator-worker`) and
//! `OTEL_RESOURCE_ATTRIBUTES`. `OTEL_SDK_DISABLED=true` turns it off.
//! Without them nothing is exported and no exporter is built.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The default `service.name`.
pub const SERVICE_NAME: &str = "orchestrator-worker";

/// Whether the environment asks for OTLP export.
pub fn otlp_requested() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Keeps the exporter; dropping it (or [`Telemetry::shutdown`]) flushes the
/// spans still batched.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// A pipeline over any span exporter (tests use the SDK's in-memory one).
    pub fn with_exporter<E>(exporter: E) -> Telemetry
    where
        E: opentelemetry_sdk::trace::SpanExporter + 'static,
    {
        Telemetry {
            provider: SdkTracerProvider::builder()
                .with_simple_exporter(exporter)
                .with_resource(resource())
                .build(),
        }
    }

    /// The OTLP pipeline the environment asks for, if it asks for one.
    pub fn from_env() -> Result<Option<Telemetry>, String> {
        if !otlp_requested() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        Ok(Some(Telemetry {
            provider: SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource())
                .build(),
        }))
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer(SERVICE_NAME))
    }

    /// Export what is batched and stop.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing spans failed");
        }
        let _ = self.provider.shutdown();
    }
}

fn resource() -> opentelemetry_sdk::Resource {
    // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES;
    // without a service name the SDK says `unknown_service`.
    let builder = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty()) {
        builder.build()
    } else {
        builder.with_service_name(SERVICE_NAME).build()
    }
}

/// The current span's W3C trace context (`traceparent`, `tracestate`), to
/// travel with a task; empty when there is no OpenTelemetry span.
pub fn inject_current() -> BTreeMap<String, String> {
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.into_iter().collect()
}

/// Make `span` a child of the trace context in `attributes` (a submitter's
/// span), when there is one.
pub fn continue_trace(span: &tracing::Span, attributes: &BTreeMap<String, String>) {
    if !attributes.contains_key("traceparent") {
        return;
    }
    let carrier: HashMap<String, String> = attributes.clone().into_iter().collect();
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}
