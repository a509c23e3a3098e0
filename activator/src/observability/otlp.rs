//! OTLP push of the activator's metrics (`metrics-protocol` `grpc` / `http/protobuf`): every
//! export interval one `ExportMetricsServiceRequest` goes through the shared OTLP transport of
//! `knative_telemetry::trace::export::otlp` to `metrics-endpoint` (or the
//! `OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT` variables); a last export runs at shutdown.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use knative_common::env::Env;
use knative_telemetry::trace::config::{otlp_exporter, Signal, TraceConfigError};
use knative_telemetry::trace::export::otlp::{OtlpExporter, Transport};
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::ActivatorMetrics;

/// The Go SDK's default export interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds, positive) if set, else `metrics-export-interval`
/// if positive, else 60 s.
pub fn export_interval(configured: Option<Duration>, env: &dyn Env) -> Duration {
    env.var("OTEL_METRIC_EXPORT_INTERVAL")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .or(configured.filter(|d| !d.is_zero()))
        .unwrap_or(DEFAULT_INTERVAL)
}

/// The metrics exporter for `transport` and `endpoint`.
pub fn exporter(
    transport: Transport,
    endpoint: &str,
    env: &dyn Env,
) -> Result<OtlpExporter, TraceConfigError> {
    otlp_exporter(Signal::Metrics, transport, endpoint, env)
}

async fn export_once(metrics: &ActivatorMetrics, exporter: &mut OtlpExporter) {
    let message = Bytes::from(metrics.otlp_request(SystemTime::now()).encode_to_vec());
    if let Err(error) = exporter.send(message).await {
        tracing::warn!(%error, "exporting metrics failed");
    }
}

/// Exports `metrics` every `interval` (first one interval from now) until `stop`, then once more.
pub fn spawn(
    metrics: &'static ActivatorMetrics,
    mut exporter: OtlpExporter,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => export_once(metrics, &mut exporter).await,
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
            }
        }
        export_once(metrics, &mut exporter).await;
        exporter.close();
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn interval_precedence() {
        let none: HashMap<&str, &str> = HashMap::new();
        assert_eq!(export_interval(None, &none), DEFAULT_INTERVAL);
        assert_eq!(
            export_interval(Some(Duration::from_secs(5)), &none),
            Duration::from_secs(5)
        );
        let env: HashMap<&str, &str> = [("OTEL_METRIC_EXPORT_INTERVAL", "250")].into();
        assert_eq!(
            export_interval(Some(Duration::from_secs(5)), &env),
            Duration::from_millis(250)
        );
    }
}
