//! The atomic explicit-bucket histogram now lives in `knative_common::metrics` (shared with the
//! activator); re-exported here under its old path.

pub(crate) use knative_common::metrics::histogram::{AtomicHistogram, HistogramSnapshot};
