//! `OBSERVABILITY_CONFIG` (spec §1.4): the controller's observability settings as JSON. Built-in
//! defaults, overwritten by the keys present; unknown keys ignored; durations in nanoseconds.

use serde::Deserialize;

/// Exporter protocols for traces and request metrics.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum Protocol {
    /// Nothing exported.
    #[default]
    #[serde(rename = "none")]
    None,
    /// Prometheus text exposition (request metrics only).
    #[serde(rename = "prometheus")]
    Prometheus,
    /// OTLP over gRPC.
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// Spans printed to stdout (tracing only).
    #[serde(rename = "stdout")]
    Stdout,
}

/// `tracing.*`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Tracing {
    /// Span exporter.
    pub protocol: Protocol,
    /// OTLP endpoint.
    pub endpoint: String,
    /// Sampling rate 0..1.
    #[serde(rename = "samplingRate")]
    pub sampling_rate: f64,
}

/// `requestMetrics.*`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RequestMetrics {
    /// Exporter.
    pub protocol: Protocol,
    /// OTLP URL, or `host:port` for Prometheus.
    pub endpoint: String,
    /// OTLP export interval in nanoseconds (0 = SDK default).
    #[serde(rename = "exportInterval")]
    pub export_interval_ns: u64,
}

/// `runtime.*`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Runtime {
    /// `enabled` / `disabled`.
    pub profiling: String,
}

/// The whole document.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ObservabilityConfig {
    /// Tracing settings.
    pub tracing: Tracing,
    /// Request-metrics settings.
    #[serde(rename = "requestMetrics")]
    pub request_metrics: RequestMetrics,
    /// Runtime settings.
    pub runtime: Runtime,
    /// Install the request log.
    #[serde(rename = "enableRequestLog")]
    pub enable_request_log: bool,
    /// Request-log template (Go text/template).
    #[serde(rename = "requestLogTemplate")]
    pub request_log_template: Option<String>,
    /// Also log probe requests.
    #[serde(rename = "enableProbeRequestLog")]
    pub enable_probe_request_log: bool,
}

/// `OBSERVABILITY_CONFIG` is not valid.
#[derive(Debug, thiserror::Error)]
#[error("invalid OBSERVABILITY_CONFIG {value:?}: {reason}")]
pub struct ObservabilityError {
    value: String,
    reason: String,
}

impl ObservabilityConfig {
    /// Parses the variable's value; empty means defaults.
    pub fn parse(value: &str) -> Result<Self, ObservabilityError> {
        if value.trim().is_empty() {
            return Ok(Self::default());
        }
        if !value.trim_start().starts_with('{') {
            return Err(ObservabilityError {
                value: value.to_owned(),
                reason: "expected a JSON object".into(),
            });
        }
        let config: ObservabilityConfig =
            serde_json::from_str(value).map_err(|e| ObservabilityError {
                value: value.to_owned(),
                reason: e.to_string(),
            })?;
        if config.tracing.protocol == Protocol::Prometheus {
            return Err(ObservabilityError {
                value: value.to_owned(),
                reason: "tracing.protocol \"prometheus\" is not a span exporter".into(),
            });
        }
        if config.request_metrics.protocol == Protocol::Stdout {
            return Err(ObservabilityError {
                value: value.to_owned(),
                reason: "requestMetrics.protocol \"stdout\" is not supported".into(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_controller_document() {
        let c = ObservabilityConfig::parse(
            r#"{"tracing":{},"metrics":{},"runtime":{},"requestMetrics":{}}"#,
        )
        .unwrap();
        assert_eq!(c, ObservabilityConfig::default());
    }

    #[test]
    fn fields_and_unknown_keys() {
        let c = ObservabilityConfig::parse(
            r#"{"tracing":{"protocol":"grpc","endpoint":"otel:4317","samplingRate":0.5},
                "requestMetrics":{"protocol":"prometheus","exportInterval":1000000000},
                "enableRequestLog":true,"EnableVarLogCollection":true,"LoggingURLTemplate":"x"}"#,
        )
        .unwrap();
        assert_eq!(c.tracing.protocol, Protocol::Grpc);
        assert_eq!(c.request_metrics.protocol, Protocol::Prometheus);
        assert!(c.enable_request_log);
    }

    #[test]
    fn bad_input_names_the_variable() {
        for bad in ["{", "[]", r#"{"tracing":{"protocol":"zipkin"}}"#] {
            let e = ObservabilityConfig::parse(bad).unwrap_err().to_string();
            assert!(e.contains("OBSERVABILITY_CONFIG"), "{e}");
        }
    }
}
