//! Stats reporting to the autoscaler (spec §6).
//!
//! Two halves, wired together by the binary:
//!
//! - [`ConcurrencyReporter`] ([`concurrency`]): per-revision request accounting. The request path
//!   calls [`ConcurrencyReporter::handle_in`] once per request (after the revision is known, §2.10)
//!   and keeps the returned [`InFlightReport`] guard until the request is completely done; dropping
//!   it records the "out" event. The first request a revision sees (or the first after an idle
//!   window) sends the "poke" batch immediately; [`ConcurrencyReporter::run`] cuts one batch every
//!   second with the first-request adjustment of §6.1.
//! - [`AutoscalerConnection`] ([`connection`]): the durable websocket client to
//!   `ws://autoscaler.<ns>.svc.<domain>:8080` (§6.4, §6.5). Every batch becomes one binary message
//!   holding an encoded [`WireStatMessages`]; while disconnected, batches are logged and dropped.
//!   [`AutoscalerConnection::is_connected`] is the autoscaler half of the health check (§2.1).
//!
//! ```no_run
//! # async fn wire() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use activator::reporter::{
//!     autoscaler_url, discover_cluster_domain, AutoscalerConnection, ConcurrencyReporter,
//!     REPORT_INTERVAL,
//! };
//!
//! let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
//! let url = autoscaler_url("knative-serving", &discover_cluster_domain());
//! let conn = AutoscalerConnection::spawn(url, shutdown_rx);
//! let sink = Arc::clone(&conn);
//! let reporter = Arc::new(ConcurrencyReporter::new("activator-pod", move |batch| {
//!     sink.send(batch);
//! }));
//! tokio::spawn(Arc::clone(&reporter).run(REPORT_INTERVAL));
//! # let _ = Duration::ZERO;
//! # }
//! ```

pub mod concurrency;
pub mod connection;
pub mod endpoint;

pub use concurrency::{ConcurrencyReporter, InFlightReport, REPORT_INTERVAL};
pub use connection::{AutoscalerConnection, Backoff, ConnectionConfig, SendError};
pub use endpoint::{
    autoscaler_url, cluster_domain_from, discover_cluster_domain, AUTOSCALER_PORT,
    DEFAULT_CLUSTER_DOMAIN,
};
pub use knative_common::stats::{Stat, WireStatMessage, WireStatMessages};

/// A revision's identity, `namespace/name` (shared with the throttler); its `Display` form is
/// the autoscaler's key for the revision.
pub use crate::throttler::RevisionId;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_id_displays_as_namespace_slash_name() {
        assert_eq!(RevisionId::new("ns", "rev-1").to_string(), "ns/rev-1");
    }
}
