//! Optional OpenTelemetry export (`[telemetry]` in plugins.toml): one span
//! per module handling a message, posted over OTLP/HTTP to a collector.
//!
//! The span ids are the host's own ([`trace::Handling`]), not ones a tracing
//! bridge would invent: the span a collector receives for a handling has the
//! id that the handling's events carry as their `traceparent` parent. So the
//! reaction's span hangs under the command's span, across the outbox hop and
//! across hosts, and a saga shows as one tree.
//!
//! Spans are batched on the SDK's own thread and sent with a blocking HTTP
//! client there; recording one from a handler costs a channel send. When the
//! collector is down or slow the queue (2,048 spans by default,
//! `OTEL_BSP_*` variables tune it) drops spans rather than slowing messages.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags,
    TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use switchyard_model::envelope::Envelope;
use switchyard_model::manifest::{OtlpProtocol, TelemetrySettings};
use switchyard_model::outcome::Outcome;
use switchyard_model::trace;

/// How long shutdown waits for the last batch to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {source}")]
pub struct TelemetryError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The span exporter of a running host.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// One module's handling of one message, as it ended.
pub struct Handled<'a> {
    pub module: &'a str,
    pub envelope: &'a Envelope,
    pub trace: &'a trace::Handling,
    pub started: SystemTime,
    pub elapsed: Duration,
    pub outcome: &'a Outcome,
}

impl Telemetry {
    /// Starts the exporter (and its batching thread).
    pub fn start(settings: &TelemetrySettings) -> Result<Self, TelemetryError> {
        let endpoint = traces_url(&settings.otlp_endpoint);
        let protocol = match settings.otlp_protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|source| TelemetryError { endpoint, source })?;
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("switchyard");
        Ok(Self { provider, tracer })
    }

    /// Queues the span of `handled` for export.
    pub fn record(&self, handled: &Handled<'_>) {
        let Handled {
            module,
            envelope,
            trace,
            started,
            elapsed,
            outcome,
        } = *handled;
        let mut attributes = vec![
            KeyValue::new("messaging.system", "switchyard"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", envelope.topic.clone()),
            KeyValue::new("messaging.message.id", envelope.id.clone()),
            KeyValue::new(
                "messaging.message.conversation_id",
                envelope.correlation_id().to_string(),
            ),
            KeyValue::new("switchyard.module", module.to_string()),
            KeyValue::new("switchyard.subtopic", envelope.subtopic.clone()),
        ];
        let status = match outcome {
            Outcome::Processed(_) => {
                attributes.push(KeyValue::new("switchyard.outcome", "processed"));
                Status::Ok
            }
            Outcome::Duplicate(_) => {
                attributes.push(KeyValue::new("switchyard.outcome", "duplicate"));
                Status::Ok
            }
            Outcome::Failed(f) => {
                attributes.push(KeyValue::new("switchyard.outcome", f.kind.as_str()));
                attributes.push(KeyValue::new("switchyard.attempts", i64::from(f.attempts)));
                Status::error(f.message.clone())
            }
        };
        let builder =
            SpanBuilder::from_name(format!("{module} {}/{}", envelope.topic, envelope.subtopic))
                .with_kind(SpanKind::Consumer)
                .with_trace_id(TraceId::from(trace.trace_id))
                .with_span_id(SpanId::from(trace.span_id))
                .with_start_time(started)
                .with_attributes(attributes)
                .with_status(status);
        // The sender's span, as the envelope named it; its sampled flag
        // decides (a parent-based sampler) whether this span is kept.
        let parent = match trace.parent_id {
            Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(trace.trace_id),
                SpanId::from(parent),
                TraceFlags::new(trace.flags()),
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let mut span = self.tracer.build_with_context(builder, &parent);
        span.end_with_timestamp(started + elapsed);
    }

    /// Sends what is queued and stops the exporter. Blocks: call it off the
    /// async runtime.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(error = %e, "the last spans may not have reached the collector");
        }
    }
}

/// `<base>/v1/traces`, unless the URL already names that path.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_path_is_added_once() {
        assert_eq!(traces_url("http://otel:4318"), "http://otel:4318/v1/traces");
        assert_eq!(
            traces_url("http://otel:4318/"),
            "http://otel:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://otel:4318/v1/traces"),
            "http://otel:4318/v1/traces"
        );
        assert_eq!(traces_url("http://gw/otlp"), "http://gw/otlp/v1/traces");
    }
}
