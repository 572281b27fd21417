//! Logging and traces. Logs: `tracing` to stderr as text or JSON lines; the level from
//! `RUST_LOG` (default `info`). Traces: with `--otlp-endpoint`, the request and attempt spans
//! (`trace`) exported by OTLP over gRPC; without it, no exporter and no spans. Keys never
//! reach a log or a span: only key ids and fingerprints are ever recorded.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::trace::TARGET;

/// Why traces cannot be exported; the gateway does not start without what it was asked for.
#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint `{endpoint}`: {reason}")]
pub struct TelemetryError {
    endpoint: String,
    reason: String,
}

/// What `init` set up; [`Telemetry::shutdown`] sends the spans still buffered.
#[must_use = "dropping it loses the spans not yet exported: call shutdown at exit"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter (blocking: call it from a blocking
    /// context or a multi-threaded runtime).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "exporting the last spans failed");
            }
        }
    }
}

/// Installs logging, and with `otlp_endpoint` (`http://host:4317`, OTLP/gRPC) the span export.
/// The exporter needs a tokio runtime: call it inside one.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The trace spans are for the exporter alone: they would put every request's span on each
    // log line inside it.
    let filter = filter.add_directive(format!("{TARGET}=off").parse().expect("a valid directive"));
    // Colour codes only where a person reads them: a file or a pipe gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    let (otel, provider) = match otlp_endpoint {
        Some(endpoint) => {
            let provider = provider(endpoint)?;
            let tracer = provider.tracer("megallm-gateway");
            // The spans carry what an operator asks about; code locations, threads and busy
            // times would only make every span heavier.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_filter(Targets::new().with_target(TARGET, LevelFilter::TRACE));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    // Spans are made only when a layer takes them (a second `init`, as in tests, keeps the
    // first subscriber; then the spans go to it only if it has the exporter).
    if installed && provider.is_some() {
        crate::trace::enable();
    }
    Ok(Telemetry { provider })
}

fn provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("megallm-gateway")
                .build(),
        )
        .build())
}
