//! OTLP push of the request metrics (spec §7.1, §1.3, §1.4) for `requestMetrics.protocol` `grpc`
//! or `http/protobuf`: every export interval the instruments are read and sent as one
//! `ExportMetricsServiceRequest` (cumulative temporality, as the Go SDK's default) through the
//! shared OTLP transport of `knative_telemetry::trace::export::otlp`, to `<endpoint>/v1/metrics` or
//! `opentelemetry.proto.collector.metrics.v1.MetricsService/Export`. A last export runs at
//! shutdown.
//!
//! The metrics messages are opentelemetry-proto's ([`proto`]).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use knative_common::env::Env;
use knative_telemetry::trace::config::{otlp_exporter, Signal, TraceConfigError};
use knative_telemetry::trace::export::otlp::{OtlpExporter, Transport};
use knative_telemetry::trace::Resource as OtelResource;
use prost::Message;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::histogram::HistogramSnapshot;
use super::{app_metrics, server_metrics, Metrics, Scope};

pub use knative_telemetry::trace::export::otlp::proto::KeyValue;

/// The SDK's default export interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// The OTLP metrics messages (shared with the activator, in `knative_telemetry::metrics::otlp`).
pub use knative_telemetry::metrics::otlp::proto;
pub(crate) use knative_telemetry::metrics::otlp::{bool_kv, int_kv, string_kv};
use knative_telemetry::metrics::otlp::{histogram, histogram_point, unix_nanos, Times};

fn scope_metrics(scope: &Scope, metrics: Vec<proto::Metric>) -> proto::ScopeMetrics {
    proto::ScopeMetrics {
        scope: Some(proto::InstrumentationScope {
            name: scope.name.to_owned(),
            version: scope.version.to_owned(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
        }),
        metrics,
        schema_url: String::new(),
    }
}

/// The export request for everything recorded so far (`now` is the data points' time), or `None`
/// while nothing has been recorded.
pub fn export_request(
    metrics: &Metrics,
    resource: &OtelResource,
    now: SystemTime,
) -> Option<proto::ExportMetricsServiceRequest> {
    let times = Times {
        start: unix_nanos(metrics.start),
        now: unix_nanos(now),
    };
    let mut scopes = Vec::new();

    let mut app = Vec::new();
    let invocations = metrics.app().invocations();
    if !invocations.is_empty() {
        let points = invocations
            .iter()
            .map(|(status, snapshot)| {
                let attributes = vec![int_kv("http.response.status_code", i64::from(*status))];
                histogram_point(attributes, snapshot, times)
            })
            .collect();
        app.push(histogram(
            "kn.serving.invocation.duration",
            "The duration of task execution",
            "s",
            points,
        ));
    }
    if let Some(depth) = metrics.app().queue_depth() {
        app.push(proto::Metric {
            name: "kn.serving.queue.depth".to_owned(),
            description: "Number of current requests in the queue".to_owned(),
            unit: "{request}".to_owned(),
            metadata: Vec::new(),
            data: Some(proto::metric::Data::Gauge(proto::Gauge {
                data_points: vec![proto::NumberDataPoint {
                    attributes: Vec::new(),
                    start_time_unix_nano: times.start,
                    time_unix_nano: times.now,
                    value: Some(proto::number_data_point::Value::AsInt(depth)),
                    exemplars: Vec::new(),
                    flags: 0,
                }],
            })),
        });
    }
    if !app.is_empty() {
        scopes.push(scope_metrics(&app_metrics::SCOPE, app));
    }

    let rows = metrics.server().rows();
    if !rows.is_empty() {
        type Pick = fn(&server_metrics::ServerSnapshots) -> &HistogramSnapshot;
        let families: [(&str, &str, &str, Pick); 3] = [
            (
                "http.server.request.duration",
                "Duration of HTTP server requests.",
                "s",
                |v| &v.duration,
            ),
            (
                "http.server.request.body.size",
                "Size of HTTP server request bodies.",
                "By",
                |v| &v.request_size,
            ),
            (
                "http.server.response.body.size",
                "Size of HTTP server response bodies.",
                "By",
                |v| &v.response_size,
            ),
        ];
        let attributes: Vec<Vec<KeyValue>> =
            rows.iter().map(|r| r.labels.otlp_attributes()).collect();
        let server = families
            .into_iter()
            .map(|(name, description, unit, pick)| {
                let points = rows
                    .iter()
                    .zip(&attributes)
                    .map(|(row, attributes)| {
                        histogram_point(attributes.clone(), pick(&row.values), times)
                    })
                    .collect();
                histogram(name, description, unit, points)
            })
            .collect();
        scopes.push(scope_metrics(&server_metrics::SCOPE, server));
    }

    if scopes.is_empty() {
        return None;
    }
    Some(proto::ExportMetricsServiceRequest {
        resource_metrics: vec![proto::ResourceMetrics {
            resource: Some(proto::Resource {
                attributes: resource.iter().map(|(k, v)| string_kv(k, v)).collect(),
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            }),
            scope_metrics: scopes,
            schema_url: String::new(),
        }],
    })
}

/// The request-metrics OTLP endpoint does not resolve, or the exporter cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("request metrics exporter: {0}")]
pub struct OtlpMetricsConfigError(#[from] pub TraceConfigError);

/// The export interval: `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds, positive) if set, else
/// `requestMetrics.exportInterval` (nanoseconds) if positive, else 60 s.
pub fn export_interval(configured_ns: u64, env: &dyn Env) -> Duration {
    let from_env = env
        .var("OTEL_METRIC_EXPORT_INTERVAL")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    from_env.unwrap_or(match configured_ns {
        0 => DEFAULT_INTERVAL,
        ns => Duration::from_nanos(ns),
    })
}

/// The OTLP metrics transport for `transport` and the configured endpoint (or the
/// `OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT` variables), with the trace exporter's endpoint rules.
pub fn exporter(
    transport: Transport,
    endpoint: &str,
    env: &dyn Env,
) -> Result<OtlpExporter, OtlpMetricsConfigError> {
    Ok(otlp_exporter(Signal::Metrics, transport, endpoint, env)?)
}

/// The periodic exporter task.
#[derive(Debug)]
pub struct MetricsExporter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn export_once(metrics: &Metrics, resource: &OtelResource, exporter: &mut OtlpExporter) {
    let Some(request) = export_request(metrics, resource, SystemTime::now()) else {
        return;
    };
    let message = Bytes::from(request.encode_to_vec());
    if let Err(error) = exporter.send(message).await {
        tracing::warn!(%error, "exporting request metrics failed");
    }
}

impl MetricsExporter {
    /// Starts exporting `metrics` through `exporter` every `interval` (the first export one
    /// interval from now). Must run inside a tokio runtime.
    pub fn start(
        metrics: &'static Metrics,
        mut exporter: OtlpExporter,
        resource: OtelResource,
        interval: Duration,
    ) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => export_once(metrics, &resource, &mut exporter).await,
                    _ = &mut stopped => break,
                }
            }
            export_once(metrics, &resource, &mut exporter).await;
            exporter.close();
        });
        MetricsExporter { stop, task }
    }

    /// Runs a last export and stops, waiting at most `limit`. Whether it finished in time.
    pub async fn shutdown(self, limit: Duration) -> bool {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(limit, &mut task).await {
            Ok(_) => true,
            Err(_) => {
                task.abort();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
