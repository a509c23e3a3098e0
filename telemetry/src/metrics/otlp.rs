//! OTLP metric messages and helpers shared by the queue-proxy's and the activator's OTLP metric
//! export (cumulative temporality, as the Go SDK's default). The messages carry the field numbers
//! of opentelemetry-proto's `metrics/v1/metrics.proto` and
//! `collector/metrics/v1/metrics_service.proto`; the common ones (`KeyValue`, `Resource`,
//! `InstrumentationScope`) are the trace exporter's.

use std::time::SystemTime;

use super::HistogramSnapshot;

pub use crate::trace::export::otlp::proto::KeyValue;

/// The OTLP metrics messages.
#[allow(missing_docs)]
pub mod proto {
    pub use crate::trace::export::otlp::proto::{
        any_value, AnyValue, InstrumentationScope, KeyValue, Resource,
    };

    /// `AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE`.
    pub const CUMULATIVE: i32 = 2;

    /// `ExportMetricsServiceRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportMetricsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_metrics: Vec<ResourceMetrics>,
    }

    /// `ExportMetricsServiceResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportMetricsServiceResponse {
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<ExportMetricsPartialSuccess>,
    }

    /// `ExportMetricsPartialSuccess`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportMetricsPartialSuccess {
        #[prost(int64, tag = "1")]
        pub rejected_data_points: i64,
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    /// `ResourceMetrics`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceMetrics {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_metrics: Vec<ScopeMetrics>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    /// `ScopeMetrics`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeMetrics {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    /// `Metric` (`summary`, `exponential_histogram` and `metadata` are never sent).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub description: String,
        #[prost(string, tag = "3")]
        pub unit: String,
        #[prost(oneof = "metric::Data", tags = "5, 7, 9")]
        pub data: Option<metric::Data>,
    }

    /// The `Metric.data` oneof.
    pub mod metric {
        /// See [`super::Metric`].
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Data {
            #[prost(message, tag = "5")]
            Gauge(super::Gauge),
            #[prost(message, tag = "7")]
            Sum(super::Sum),
            #[prost(message, tag = "9")]
            Histogram(super::Histogram),
        }
    }

    /// `Gauge`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Gauge {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
    }

    /// `Sum`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sum {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
        #[prost(bool, tag = "3")]
        pub is_monotonic: bool,
    }

    /// `Histogram`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<HistogramDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
    }

    /// `NumberDataPoint` (no exemplars).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NumberDataPoint {
        #[prost(message, repeated, tag = "7")]
        pub attributes: Vec<KeyValue>,
        #[prost(fixed64, tag = "2")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        #[prost(oneof = "number_data_point::Value", tags = "4, 6")]
        pub value: Option<number_data_point::Value>,
        #[prost(uint32, tag = "8")]
        pub flags: u32,
    }

    /// The `NumberDataPoint.value` oneof.
    pub mod number_data_point {
        /// See [`super::NumberDataPoint`].
        #[derive(Clone, Copy, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(double, tag = "4")]
            AsDouble(f64),
            #[prost(sfixed64, tag = "6")]
            AsInt(i64),
        }
    }

    /// `HistogramDataPoint` (no exemplars).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HistogramDataPoint {
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(fixed64, tag = "2")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "4")]
        pub count: u64,
        #[prost(double, optional, tag = "5")]
        pub sum: Option<f64>,
        #[prost(fixed64, repeated, tag = "6")]
        pub bucket_counts: Vec<u64>,
        #[prost(double, repeated, tag = "7")]
        pub explicit_bounds: Vec<f64>,
        #[prost(uint32, tag = "10")]
        pub flags: u32,
        #[prost(double, optional, tag = "11")]
        pub min: Option<f64>,
        #[prost(double, optional, tag = "12")]
        pub max: Option<f64>,
    }
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
            }),
            scope_metrics: scopes,
            schema_url: String::new(),
        }],
    }
}
