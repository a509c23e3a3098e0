//! Telemetry of the Rust Knative data plane, shared by the queue-proxy and the activator. Nothing
//! here decides how a request is routed or answered; it observes requests and reports on them.
//!
//! - [`trace`]: W3C trace context, spans, sampling, the server/client span layers and the span
//!   exporters (stdout, OTLP);
//! - [`metrics`]: response completion metering, histograms, Prometheus exposition helpers and the
//!   OTLP metrics messages;
//! - [`logging`]: process logs as JSON lines in Knative's (zap's) format.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod logging;
pub mod metrics;
pub mod trace;
