//! Response completion metering now lives in `knative_common::metrics::body` (shared with the
//! activator); re-exported here under its old path.

pub use knative_common::metrics::body::{Completion, MeteredBody, MeteredFuture};
