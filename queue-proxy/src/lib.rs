//! The queue-proxy: the sidecar in front of every Knative revision's user container.
//!
//! [`app::run`] reads the configuration, builds the process-lifetime state, binds the listeners
//! and runs until SIGTERM; the main chain (outermost first) is
//! health/drain (§3.3) → in-flight tracking (§3.4) → timeouts (§3.5) → forwarded shim (§3.7) and
//! stats + breaker (§3.8), one stage ([`handler`]) → reverse proxy to the user container (§3.9).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod handler;
pub mod health;
pub mod metrics;
pub mod observability;
pub mod observed;
pub mod readiness;
pub mod stats_server;
