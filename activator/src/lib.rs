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
