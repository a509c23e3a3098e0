//! Building blocks shared by the queue-proxy's and the activator's request metrics (queue-proxy
//! §7.1, activator §7.1): response completion metering ([`body`]), the lock-free explicit-bucket
//! histogram, the bucket bounds of the
//! `otelhttp` instruments, the Prometheus content type and the `otel_scope_*` labels.

pub mod body;
pub mod histogram;
pub mod otlp;

use std::fmt;

use prometheus_client::encoding::{EncodeLabel, LabelSetEncoder};

pub use body::{Completion, MeteredBody, MeteredFuture};
pub use histogram::{AtomicHistogram, HistogramSnapshot};

/// Bucket bounds of the duration histograms (OTel's advice for `http.server.request.duration`),
/// in seconds.
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

/// Writes one `key="value"` label.
#[inline]
pub fn label(encoder: &mut LabelSetEncoder, key: &str, value: &str) -> fmt::Result {
    (key, value).encode(encoder.encode_label())
}

/// The `otel_scope_*` labels of one instrumentation scope, as the Go OTel Prometheus exporter
/// writes them on every series.
#[derive(Clone, Copy, Debug)]
pub struct Scope {
    /// `otel_scope_name`.
    pub name: &'static str,
    /// `otel_scope_version`.
    pub version: &'static str,
}

impl Scope {
    /// Writes `otel_scope_name`, `otel_scope_schema_url` (always empty) and `otel_scope_version`.
    pub fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        label(encoder, "otel_scope_name", self.name)?;
        label(encoder, "otel_scope_schema_url", "")?;
        label(encoder, "otel_scope_version", self.version)
    }
}
