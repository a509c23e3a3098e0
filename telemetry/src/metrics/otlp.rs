//! OTLP metric messages and helpers shared by the queue-proxy's and the activator's OTLP metric
//! export (cumulative temporality, as the Go SDK's default). The messages are opentelemetry-proto's
//! ([`proto`]).

use std::time::SystemTime;

use super::HistogramSnapshot;

pub use crate::trace::export::otlp::proto::KeyValue;

/// The OTLP metrics messages: opentelemetry-proto's prost types. Summaries, exponential
/// histograms, exemplars and metadata are never sent.
pub mod proto {
    pub use crate::trace::export::otlp::proto::{
        any_value, AnyValue, InstrumentationScope, KeyValue, Resource,
    };
    pub use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    };
    pub use opentelemetry_proto::tonic::metrics::v1::{
        metric, number_data_point, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum,
    };

    /// `AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE`.
    pub const CUMULATIVE: i32 =
        opentelemetry_proto::tonic::metrics::v1::AggregationTemporality::Cumulative as i32;
}

fn kv(key: &str, value: proto::any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(proto::AnyValue { value: Some(value) }),
    }
}

/// A string attribute.
pub fn string_kv(key: &str, value: &str) -> KeyValue {
    kv(key, proto::any_value::Value::StringValue(value.to_owned()))
}

/// An integer attribute.
pub fn int_kv(key: &str, value: i64) -> KeyValue {
    kv(key, proto::any_value::Value::IntValue(value))
}

/// A boolean attribute.
pub fn bool_kv(key: &str, value: bool) -> KeyValue {
    kv(key, proto::any_value::Value::BoolValue(value))
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Start and end of the cumulative data points (Unix nanoseconds).
#[derive(Clone, Copy, Debug)]
pub struct Times {
    /// When recording began.
    pub start: u64,
    /// The data points' time.
    pub now: u64,
}

/// One histogram data point.
pub fn histogram_point(
    attributes: Vec<KeyValue>,
    snapshot: &HistogramSnapshot,
    times: Times,
) -> proto::HistogramDataPoint {
    proto::HistogramDataPoint {
        attributes,
        start_time_unix_nano: times.start,
        time_unix_nano: times.now,
        count: snapshot.count,
        sum: Some(snapshot.sum),
        bucket_counts: snapshot.counts.clone(),
        explicit_bounds: snapshot.bounds.to_vec(),
        exemplars: Vec::new(),
        flags: 0,
        min: None,
        max: None,
    }
}

/// A cumulative histogram metric.
pub fn histogram(
    name: &str,
    description: &str,
    unit: &str,
    data_points: Vec<proto::HistogramDataPoint>,
) -> proto::Metric {
    proto::Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: unit.to_owned(),
        metadata: Vec::new(),
        data: Some(proto::metric::Data::Histogram(proto::Histogram {
            data_points,
            aggregation_temporality: proto::CUMULATIVE,
        })),
    }
}

/// A gauge metric with one data point per attribute set.
pub fn gauge(
    name: &str,
    description: &str,
    unit: &str,
    points: Vec<(Vec<KeyValue>, proto::number_data_point::Value)>,
    times: Times,
) -> proto::Metric {
    proto::Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: unit.to_owned(),
        metadata: Vec::new(),
        data: Some(proto::metric::Data::Gauge(proto::Gauge {
            data_points: number_points(points, times),
        })),
    }
}

/// A cumulative sum metric (`monotonic`: a counter; else an up-down counter).
pub fn sum(
    name: &str,
    description: &str,
    unit: &str,
    monotonic: bool,
    points: Vec<(Vec<KeyValue>, proto::number_data_point::Value)>,
    times: Times,
) -> proto::Metric {
    proto::Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: unit.to_owned(),
        metadata: Vec::new(),
        data: Some(proto::metric::Data::Sum(proto::Sum {
            data_points: number_points(points, times),
            aggregation_temporality: proto::CUMULATIVE,
            is_monotonic: monotonic,
        })),
    }
}

fn number_points(
    points: Vec<(Vec<KeyValue>, proto::number_data_point::Value)>,
    times: Times,
) -> Vec<proto::NumberDataPoint> {
    points
        .into_iter()
        .map(|(attributes, value)| proto::NumberDataPoint {
            attributes,
            start_time_unix_nano: times.start,
            time_unix_nano: times.now,
            value: Some(value),
            exemplars: Vec::new(),
            flags: 0,
        })
        .collect()
}

/// The metrics of one instrumentation scope.
pub fn scope_metrics(
    name: &str,
    version: &str,
    metrics: Vec<proto::Metric>,
) -> proto::ScopeMetrics {
    proto::ScopeMetrics {
        scope: Some(proto::InstrumentationScope {
            name: name.to_owned(),
            version: version.to_owned(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
        }),
        metrics,
        schema_url: String::new(),
    }
}

/// The export request of `scopes` for a process described by `resource` (`key`, `value` pairs).
pub fn export_request<'a>(
    resource: impl Iterator<Item = (&'a str, &'a str)>,
    scopes: Vec<proto::ScopeMetrics>,
) -> proto::ExportMetricsServiceRequest {
    proto::ExportMetricsServiceRequest {
        resource_metrics: vec![proto::ResourceMetrics {
            resource: Some(proto::Resource {
                attributes: resource.map(|(k, v)| string_kv(k, v)).collect(),
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            }),
            scope_metrics: scopes,
            schema_url: String::new(),
        }],
    }
}
