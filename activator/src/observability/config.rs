//! Parsing of the two ConfigMaps that shape the activator's observability (spec §1.3):
//! `config-observability` and `config-logging`.
//!
//! Startup-only keys are read once ([`StartupObservability`]); the dynamic keys
//! ([`DynamicObservability`], [`LoggingConfig::level`]) are re-read on every change of the
//! ConfigMap. A value that does not parse is an error naming the key: fatal at startup, and
//! "keep the previous settings" afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use go_text_template::{RequestLogTemplate, TemplateError};

use crate::backends::parse_go_duration;

/// Default name of the observability ConfigMap.
pub const DEFAULT_OBSERVABILITY_NAME: &str = "config-observability";
/// Default name of the logging ConfigMap.
pub const DEFAULT_LOGGING_NAME: &str = "config-logging";
/// Key of the activator's dynamic log level in `config-logging`.
pub const ACTIVATOR_LEVEL_KEY: &str = "loglevel.activator";
/// Key of the zap configuration in `config-logging`.
pub const ZAP_CONFIG_KEY: &str = "zap-logger-config";

/// Metric exporters (`metrics-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetricsProtocol {
    /// Nothing exported (default).
    #[default]
    None,
    /// `/metrics` on `METRICS_PROMETHEUS_HOST:METRICS_PROMETHEUS_PORT`.
    Prometheus,
    /// OTLP over gRPC.
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
}

/// Span exporters (`tracing-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TracingProtocol {
    /// No spans (default).
    #[default]
    None,
    /// OTLP over gRPC.
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
    /// Spans printed to stdout.
    Stdout,
}

/// A ConfigMap value that does not parse; names the ConfigMap key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigMapError {
    /// The value is not one of the accepted ones.
    #[error("invalid {key} {value:?}: expected {expected}")]
    Invalid {
        /// The ConfigMap key.
        key: &'static str,
        /// What it held.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// `logging.request-log-template` does not parse.
    #[error("invalid logging.request-log-template: {0}")]
    Template(#[from] TemplateError),
}

/// The startup-only keys of `config-observability`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StartupObservability {
    /// `metrics-protocol`.
    pub metrics_protocol: MetricsProtocol,
    /// `metrics-endpoint` (OTLP URL; for Prometheus an optional `host:port`).
    pub metrics_endpoint: String,
    /// `metrics-export-interval` (Go duration; `None` = SDK default).
    pub metrics_export_interval: Option<Duration>,
    /// `tracing-protocol`.
    pub tracing_protocol: TracingProtocol,
    /// `tracing-endpoint`.
    pub tracing_endpoint: String,
    /// `tracing-sampling-rate` (0..=1).
    pub tracing_sampling_rate: f64,
}

/// The keys of `config-observability` applied without restart.
#[derive(Debug)]
pub struct DynamicObservability {
    /// `logging.enable-request-log`.
    pub enable_request_log: bool,
    /// `logging.request-log-template`, parsed (`None` or empty: no lines).
    pub request_log_template: Option<RequestLogTemplate>,
    /// The template's text (to tell changes apart).
    pub request_log_text: String,
    /// `runtime-profiling: enabled`.
    pub runtime_profiling: bool,
}

impl Default for DynamicObservability {
    /// Everything off.
    fn default() -> Self {
        DynamicObservability {
            enable_request_log: false,
            request_log_template: None,
            request_log_text: String::new(),
            runtime_profiling: false,
        }
    }
}

impl DynamicObservability {
    /// Whether request-log lines are written: enabled **and** a non-empty template (§7.3).
    pub fn request_log_active(&self) -> bool {
        self.enable_request_log
            && self
                .request_log_template
                .as_ref()
                .is_some_and(|t| !t.is_empty())
    }
}

fn get<'a>(data: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    data.get(key).map_or("", |v| v.trim())
}

/// Go's `strconv.ParseBool`.
fn go_bool(key: &'static str, value: &str) -> Result<bool, ConfigMapError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ConfigMapError::Invalid {
            key,
            value: value.to_owned(),
            expected: "a boolean (true/false)",
        }),
    }
}

impl StartupObservability {
    /// Reads the startup keys; absent keys (or an absent ConfigMap: `data` empty) give defaults.
    pub fn parse(data: &BTreeMap<String, String>) -> Result<Self, ConfigMapError> {
        let metrics_protocol = match get(data, "metrics-protocol") {
            "" | "none" => MetricsProtocol::None,
            "prometheus" => MetricsProtocol::Prometheus,
            "grpc" => MetricsProtocol::Grpc,
            "http/protobuf" => MetricsProtocol::HttpProtobuf,
            other => {
                return Err(ConfigMapError::Invalid {
                    key: "metrics-protocol",
                    value: other.to_owned(),
                    expected: "none, prometheus, grpc or http/protobuf",
                })
            }
        };
        let tracing_protocol = match get(data, "tracing-protocol") {
            "" | "none" => TracingProtocol::None,
            "grpc" => TracingProtocol::Grpc,
            "http/protobuf" => TracingProtocol::HttpProtobuf,
            "stdout" => TracingProtocol::Stdout,
            other => {
                return Err(ConfigMapError::Invalid {
                    key: "tracing-protocol",
                    value: other.to_owned(),
                    expected: "none, grpc, http/protobuf or stdout",
                })
            }
        };
        let metrics_export_interval = match get(data, "metrics-export-interval") {
            "" => None,
            text => Some(
                parse_go_duration(text).map_err(|_| ConfigMapError::Invalid {
                    key: "metrics-export-interval",
                    value: text.to_owned(),
                    expected: "a Go duration such as 30s",
                })?,
            ),
        };
        let tracing_sampling_rate = match get(data, "tracing-sampling-rate") {
            "" => 0.0,
            text => text
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| ConfigMapError::Invalid {
                    key: "tracing-sampling-rate",
                    value: text.to_owned(),
                    expected: "a number between 0 and 1",
                })?,
        };
        Ok(StartupObservability {
            metrics_protocol,
            metrics_endpoint: get(data, "metrics-endpoint").to_owned(),
            metrics_export_interval,
            tracing_protocol,
            tracing_endpoint: get(data, "tracing-endpoint").to_owned(),
            tracing_sampling_rate,
        })
    }
}

impl DynamicObservability {
    /// Reads the dynamic keys; any invalid value fails the whole parse (the caller keeps the
    /// previous settings, as upstream's config store does).
    pub fn parse(data: &BTreeMap<String, String>) -> Result<Self, ConfigMapError> {
        let enable_request_log = match get(data, "logging.enable-request-log") {
            "" => false,
            text => go_bool("logging.enable-request-log", text)?,
        };
        // The template is taken verbatim (no trimming): whitespace is part of the line.
        let text = data
            .get("logging.request-log-template")
            .cloned()
            .unwrap_or_default();
        let request_log_template = RequestLogTemplate::parse(&text)?;
        let runtime_profiling = match get(data, "runtime-profiling") {
            "" | "disabled" => false,
            "enabled" => true,
            other => {
                return Err(ConfigMapError::Invalid {
                    key: "runtime-profiling",
                    value: other.to_owned(),
                    expected: "enabled or disabled",
                })
            }
        };
        Ok(DynamicObservability {
            enable_request_log,
            request_log_template: Some(request_log_template),
            request_log_text: text,
            runtime_profiling,
        })
    }
}

/// `config-logging`: the zap configuration (startup) and the activator's level (dynamic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoggingConfig {
    /// `zap-logger-config` (empty: zap's production defaults).
    pub zap_config: String,
    /// `loglevel.activator` (empty: the zap configuration's level).
    pub level: String,
}

/// Levels zap accepts for `loglevel.<component>`.
const LEVELS: [&str; 7] = ["debug", "info", "warn", "error", "dpanic", "panic", "fatal"];

impl LoggingConfig {
    /// Reads `config-logging`; an unknown level name is an error naming the key.
    pub fn parse(data: &BTreeMap<String, String>) -> Result<Self, ConfigMapError> {
        let level = get(data, ACTIVATOR_LEVEL_KEY).to_ascii_lowercase();
        if !level.is_empty() && !LEVELS.contains(&level.as_str()) {
            return Err(ConfigMapError::Invalid {
                key: ACTIVATOR_LEVEL_KEY,
                value: level,
                expected: "debug, info, warn, error, dpanic, panic or fatal",
            });
        }
        Ok(LoggingConfig {
            zap_config: data.get(ZAP_CONFIG_KEY).cloned().unwrap_or_default(),
            level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_when_empty() {
        let s = StartupObservability::parse(&data(&[])).unwrap();
        assert_eq!(s, StartupObservability::default());
        let d = DynamicObservability::parse(&data(&[])).unwrap();
        assert!(!d.request_log_active());
        assert!(!d.runtime_profiling);
        assert_eq!(LoggingConfig::parse(&data(&[])).unwrap().level, "");
    }

    #[test]
    fn startup_keys() {
        let s = StartupObservability::parse(&data(&[
            ("metrics-protocol", "prometheus"),
            ("metrics-export-interval", "30s"),
            ("tracing-protocol", "http/protobuf"),
            ("tracing-endpoint", "http://otel:4318/v1/traces"),
            ("tracing-sampling-rate", "0.25"),
            ("_example", "ignored"),
        ]))
        .unwrap();
        assert_eq!(s.metrics_protocol, MetricsProtocol::Prometheus);
        assert_eq!(s.metrics_export_interval, Some(Duration::from_secs(30)));
        assert_eq!(s.tracing_protocol, TracingProtocol::HttpProtobuf);
        assert_eq!(s.tracing_sampling_rate, 0.25);
        for (p, want) in [
            ("grpc", MetricsProtocol::Grpc),
            ("http/protobuf", MetricsProtocol::HttpProtobuf),
            ("none", MetricsProtocol::None),
        ] {
            let s = StartupObservability::parse(&data(&[("metrics-protocol", p)])).unwrap();
            assert_eq!(s.metrics_protocol, want);
        }
    }

    #[test]
    fn bad_startup_values_name_the_key() {
        for (key, value) in [
            ("metrics-protocol", "statsd"),
            ("tracing-protocol", "zipkin"),
            ("metrics-export-interval", "soon"),
            ("tracing-sampling-rate", "1.5"),
            ("tracing-sampling-rate", "x"),
        ] {
            let e = StartupObservability::parse(&data(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(value), "{e}");
        }
    }

    #[test]
    fn dynamic_keys() {
        let d = DynamicObservability::parse(&data(&[
            ("logging.enable-request-log", "true"),
            ("logging.request-log-template", "{{.Request.Method}}"),
            ("runtime-profiling", "enabled"),
        ]))
        .unwrap();
        assert!(d.request_log_active());
        assert!(d.runtime_profiling);
        // Enabled without a template, or a template without enabling: no lines (§7.3, §11.70).
        let d =
            DynamicObservability::parse(&data(&[("logging.enable-request-log", "true")])).unwrap();
        assert!(!d.request_log_active());
        let d = DynamicObservability::parse(&data(&[
            ("logging.enable-request-log", "false"),
            ("logging.request-log-template", "x"),
        ]))
        .unwrap();
        assert!(!d.request_log_active());
    }

    #[test]
    fn bad_dynamic_values_are_errors() {
        for (key, value) in [
            ("logging.enable-request-log", "yes"),
            ("logging.request-log-template", "{{}}"),
            ("runtime-profiling", "on"),
        ] {
            let e = DynamicObservability::parse(&data(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn logging_level() {
        let l = LoggingConfig::parse(&data(&[
            ("loglevel.activator", "DEBUG"),
            ("zap-logger-config", "{}"),
        ]))
        .unwrap();
        assert_eq!((l.level.as_str(), l.zap_config.as_str()), ("debug", "{}"));
        let e = LoggingConfig::parse(&data(&[("loglevel.activator", "loud")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("loglevel.activator"), "{e}");
    }
}
