//! Request metrics (spec §7.1) exported as Prometheus text on the user-metrics port (§2, 9091)
//! or pushed over OTLP.
//!
//! - [`server_metrics`]: layer 1, the HTTP server instruments of Go's `otelhttp`
//!   (`http_server_request_duration_seconds`, `http_server_{request,response}_body_size_bytes`),
//!   recorded by the observability stage ([`crate::observed`]);
//! - [`app_metrics`]: layer 10, `kn_serving_queue_depth` and
//!   `kn_serving_invocation_duration_seconds`;
//! - [`route_tag`]: the `kn_route_tag` label (§3.6);
//! - [`listener`]: the `/metrics` handler and where it listens.
//! - [`otlp`]: the OTLP push (`requestMetrics.protocol` `grpc` / `http/protobuf`) of the same
//!   instruments, with their OTel names, units and dotted attribute keys;
//! - `histogram`: the atomic explicit-bucket histogram both exporters read.
//!
//! Names, HELP texts, label keys, bucket bounds and the `target_info` series follow the upstream
//! exposition (Go OTel Prometheus exporter). Storage and encoding are `prometheus-client`'s:
//! [`Metrics`] owns one [`Registry`] with one collector that writes the families in upstream's
//! (alphabetical) order and leaves out families without data, as upstream does.

pub mod app_metrics;
mod body;
#[cfg(test)]
mod chain_tests;
mod histogram;
pub mod listener;
pub mod otlp;
pub mod route_tag;
pub mod server_metrics;
mod status_table;

use knative_telemetry::trace::resource::parse_resource_attributes;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use knative_common::env::Env;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub use app_metrics::{AppMetricsLayer, AppMetricsService};
pub use body::{Completion, MeteredBody, MeteredFuture};
pub use listener::{handle, listen_address, ListenAddress, ListenerConfigError};
pub use otlp::{MetricsExporter, OtlpMetricsConfigError};
pub use route_tag::{route_tag, RouteTag};
pub use server_metrics::{ServerMetrics, UrlScheme};

/// Bucket bounds of the duration histograms (OTel's advice for `http.server.request.duration`,
/// also used upstream for `kn.serving.invocation.duration`), in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Bucket bounds of the body-size histograms (OTel's default explicit buckets), in bytes.
pub const SIZE_BUCKETS: [f64; 15] = [
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

/// Content type of the exposition (Prometheus text format 0.0.4, as upstream's `promhttp`).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `otel_scope_*` labels of one instrumentation scope.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scope {
    pub(crate) name: &'static str,
    pub(crate) version: &'static str,
}

impl Scope {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        label(encoder, "otel_scope_name", self.name)?;
        label(encoder, "otel_scope_schema_url", "")?;
        label(encoder, "otel_scope_version", self.version)
    }
}

/// Writes one `key="value"` label.
#[inline]
pub(crate) fn label(encoder: &mut LabelSetEncoder, key: &str, value: &str) -> fmt::Result {
    (key, value).encode(encoder.encode_label())
}

/// Resource attributes, exported as the `target_info` series (spec §7.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// Label name → value, kept sorted by name (upstream's label order).
    labels: BTreeMap<String, String>,
}

/// `service_version`: the build's commit when the build provides `QUEUE_PROXY_COMMIT`, else the
/// crate version.
const SERVICE_VERSION: &str = match option_env!("QUEUE_PROXY_COMMIT") {
    Some(commit) => commit,
    None => env!("CARGO_PKG_VERSION"),
};

impl Resource {
    /// The queue-proxy's resource, read from its environment:
    /// `container_name=queue-proxy`, `k8s_namespace_name` (`SERVING_NAMESPACE`),
    /// `k8s_pod_name` and `service_instance_id` (`POD_NAME`, else `HOSTNAME`; may be empty),
    /// `kn_{service,configuration,revision}_name` (only when non-empty), `service_name` (first
    /// non-empty of `OTEL_SERVICE_NAME`, `SERVING_SERVICE`, `SERVING_CONFIGURATION`,
    /// `SERVING_REVISION`, the pod name), `service_version`, `telemetry_sdk_*`, plus any
    /// `OTEL_RESOURCE_ATTRIBUTES` entries not set otherwise.
    pub fn from_env(env: &dyn Env) -> Self {
        let var = |name: &str| env.var(name).unwrap_or_default();
        let namespace = var("SERVING_NAMESPACE");
        let service = var("SERVING_SERVICE");
        let configuration = var("SERVING_CONFIGURATION");
        let revision = var("SERVING_REVISION");
        let pod = env
            .var("POD_NAME")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| var("HOSTNAME"));
        let service_name = [
            var("OTEL_SERVICE_NAME"),
            service.clone(),
            configuration.clone(),
            revision.clone(),
            pod.clone(),
        ]
        .into_iter()
        .find(|name| !name.is_empty())
        .unwrap_or_default();

        let mut labels = BTreeMap::new();
        for (key, value) in parse_resource_attributes(&var("OTEL_RESOURCE_ATTRIBUTES")) {
            labels.insert(sanitize_label_name(&key), value);
        }
        let mut set = |key: &str, value: String| {
            labels.insert(key.to_owned(), value);
        };
        set("container_name", "queue-proxy".into());
        set("k8s_namespace_name", namespace);
        set("k8s_pod_name", pod.clone());
        set("service_instance_id", pod);
        set("service_name", service_name);
        set("service_version", SERVICE_VERSION.into());
        set("telemetry_sdk_language", "rust".into());
        set("telemetry_sdk_name", "prometheus-client".into());
        set("telemetry_sdk_version", "0.25".into());
        for (key, value) in [
            ("kn_service_name", service),
            ("kn_configuration_name", configuration),
            ("kn_revision_name", revision),
        ] {
            if !value.is_empty() {
                set(key, value);
            }
        }
        Resource { labels }
    }

    /// The labels of `target_info`, sorted by name.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl EncodeLabelSet for Resource {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        for (key, value) in self.labels() {
            label(encoder, key, value)?;
        }
        Ok(())
    }
}

/// A Prometheus label name for an attribute key: invalid characters become `_`, a leading digit
/// gets a `key_` prefix.
fn sanitize_label_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "key_");
    }
    name
}

/// Everything recorded, and the collector that writes it out.
struct Instruments {
    server: server_metrics::ServerInstruments,
    app: app_metrics::AppInstruments,
    resource: Resource,
}

impl fmt::Debug for Instruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instruments")
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl Collector for Instruments {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.server.encode(&mut encoder)?;
        self.app.encode(&mut encoder)?;
        let mut target =
            encoder.encode_descriptor("target_info", "Target metadata", None, MetricType::Gauge)?;
        ConstGauge::new(1i64).encode(target.encode_family(&self.resource)?)
    }
}

/// The request-metrics state of the process: recorded by the layers, encoded by [`handle`].
#[derive(Debug)]
pub struct Metrics {
    instruments: Arc<Instruments>,
    registry: Registry,
    /// When recording began (start time of the cumulative OTLP data points).
    start: std::time::SystemTime,
}

impl Metrics {
    /// Empty instruments describing `resource`.
    pub fn new(resource: Resource) -> Self {
        Self::with_series_limit(resource, server_metrics::SERIES_LIMIT)
    }

    /// As [`Metrics::new`], with at most `limit` distinct HTTP server label sets before further
    /// ones are folded into one `otel_metric_overflow="true"` series.
    pub fn with_series_limit(resource: Resource, limit: usize) -> Self {
        let instruments = Arc::new(Instruments {
            server: server_metrics::ServerInstruments::new(limit),
            app: app_metrics::AppInstruments::default(),
            resource,
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(instruments.clone()));
        Metrics {
            instruments,
            registry,
            start: std::time::SystemTime::now(),
        }
    }

    /// The Prometheus text exposition of everything recorded so far.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(4096);
        if let Err(error) =
            prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)
        {
            tracing::warn!(%error, "encoding request metrics failed");
        }
        text
    }

    pub(crate) fn server(&self) -> &server_metrics::ServerInstruments {
        &self.instruments.server
    }

    pub(crate) fn app(&self) -> &app_metrics::AppInstruments {
        &self.instruments.app
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The golden upstream exposition.
    pub(crate) fn golden() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/spec/golden/queue-proxy-9091-prometheus.txt"
        );
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The `# HELP` and `# TYPE` lines of `family` in `text`.
    pub(crate) fn header_lines(text: &str, family: &str) -> Vec<String> {
        text.lines()
            .filter(|l| {
                l.strip_prefix("# HELP ")
                    .or_else(|| l.strip_prefix("# TYPE "))
                    .is_some_and(|rest| rest.split(' ').next() == Some(family))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The label keys of the first sample line starting with `sample{`, in order, without `le`
    /// (prometheus-client writes `le` first, Go last; label order carries no meaning).
    pub(crate) fn label_keys(text: &str, sample: &str) -> Vec<String> {
        let prefix = format!("{sample}{{");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {sample} line in:\n{text}"));
        let labels = &line[prefix.len()..line.rfind('}').unwrap()];
        labels
            .split("\",")
            .map(|pair| pair.split('=').next().unwrap().to_owned())
            .filter(|key| key != "le")
            .collect()
    }

    fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn resource_matches_upstream_labels() {
        let resource = Resource::from_env(&env(&[
            ("SERVING_NAMESPACE", "default"),
            ("SERVING_SERVICE", "svc"),
            ("SERVING_CONFIGURATION", "cfg"),
            ("SERVING_REVISION", "rev-1"),
        ]));
        let keys: Vec<&str> = resource.labels().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "container_name",
                "k8s_namespace_name",
                "k8s_pod_name",
                "kn_configuration_name",
                "kn_revision_name",
                "kn_service_name",
                "service_instance_id",
                "service_name",
                "service_version",
                "telemetry_sdk_language",
                "telemetry_sdk_name",
                "telemetry_sdk_version",
            ]
        );
        let get = |k: &str| resource.labels().find(|(key, _)| *key == k).unwrap().1;
        assert_eq!(get("container_name"), "queue-proxy");
        assert_eq!(get("service_name"), "svc");
        assert_eq!(get("k8s_pod_name"), "");
        assert_eq!(get("telemetry_sdk_language"), "rust");

        // The golden target_info has the same keys (values differ: SDK, version).
        let golden = golden();
        if !golden.is_empty() {
            assert_eq!(label_keys(&golden, "target_info"), keys);
        }
    }

    #[test]
    fn service_name_precedence_and_optional_kn_labels() {
        let get = |e: &[(&'static str, &'static str)], k: &str| {
            Resource::from_env(&env(e))
                .labels()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_owned())
        };
        let base = [
            ("SERVING_NAMESPACE", "ns"),
            ("SERVING_SERVICE", ""),
            ("SERVING_CONFIGURATION", ""),
            ("SERVING_REVISION", "rev"),
            ("HOSTNAME", "pod-h"),
        ];
        assert_eq!(get(&base, "service_name").unwrap(), "rev");
        assert_eq!(get(&base, "k8s_pod_name").unwrap(), "pod-h");
        assert_eq!(get(&base, "service_instance_id").unwrap(), "pod-h");
        assert_eq!(get(&base, "kn_service_name"), None);
        assert_eq!(get(&base, "kn_configuration_name"), None);
        let mut more = base.to_vec();
        more.push(("OTEL_SERVICE_NAME", "custom"));
        more.push(("POD_NAME", "pod-p"));
        more.push(("OTEL_RESOURCE_ATTRIBUTES", "team=a%20b,service.name=x,bad"));
        assert_eq!(get(&more, "service_name").unwrap(), "custom");
        assert_eq!(get(&more, "k8s_pod_name").unwrap(), "pod-p");
        assert_eq!(get(&more, "team").unwrap(), "a b");
        let only_pod = [("SERVING_REVISION", ""), ("POD_NAME", "p")];
        assert_eq!(get(&only_pod, "service_name").unwrap(), "p");
    }

    #[test]
    fn empty_metrics_expose_only_target_info() {
        let metrics = Metrics::new(Resource::from_env(&env(&[("SERVING_NAMESPACE", "ns")])));
        let text = metrics.encode();
        assert_eq!(
            header_lines(&text, "target_info"),
            [
                "# HELP target_info Target metadata",
                "# TYPE target_info gauge"
            ]
        );
        assert!(text.contains("container_name=\"queue-proxy\""));
        assert!(text.trim_end().ends_with("} 1"), "{text}");
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("kn_serving"), "no data, no family: {text}");
        assert!(!text.contains("http_server"), "no data, no family: {text}");
        let golden = golden();
        if !golden.is_empty() {
            assert_eq!(
                header_lines(&golden, "target_info"),
                header_lines(&text, "target_info")
            );
        }
    }

    #[test]
    fn label_names_are_sanitized() {
        assert_eq!(
            sanitize_label_name("deployment.environment"),
            "deployment_environment"
        );
        assert_eq!(sanitize_label_name("1x"), "key_1x");
    }
}
