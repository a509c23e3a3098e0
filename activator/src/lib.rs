//! The activator: buffers requests for revisions without ready pods, wakes the autoscaler, then
//! load-balances across pods with Knative's throttler. Built on `knative_common`.
//!
//! - [`throttler`]: per-revision breaker with dynamic capacity, pod trackers, subsetting and
//!   load-balancing policies (spec §3, §4);
//! - [`reporter`]: concurrency accounting per revision and the autoscaler websocket (spec §6).
#![forbid(unsafe_code)]

pub mod app;
pub mod backends;
pub mod config;
pub mod discovery;
pub mod handler;
pub mod kubernetes;
pub mod network_config;
pub mod observability;
pub mod reporter;
pub mod throttler;
pub mod tls;
pub mod worker;

/// Hasher of the maps looked up on every request (revisions by name, per-revision stats and
/// metrics, connection pools by pod address): foldhash, seeded per process. Their keys come
/// from discovery, not from requests, so SipHash's flooding resistance buys nothing there, and
/// it cost six SipHash runs per request.
pub type FastHash = foldhash::fast::RandomState;
