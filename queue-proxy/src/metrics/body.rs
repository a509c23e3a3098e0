//! Response completion metering now lives in `knative_telemetry::metrics::body` (shared with the
//! activator); re-exported here under its old path.

pub use knative_telemetry::metrics::body::{Completion, MeteredBody, MeteredFuture};
