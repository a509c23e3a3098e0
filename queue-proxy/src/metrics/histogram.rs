//! The atomic explicit-bucket histogram now lives in `knative_telemetry::metrics` (shared with the
//! activator); re-exported here under its old path.

pub(crate) use knative_telemetry::metrics::histogram::{AtomicHistogram, HistogramSnapshot};
