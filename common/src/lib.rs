//! The shared core of the Rust Knative data plane: everything the queue-proxy and the activator
//! both need on the request path and around it.
//!
//! - [`headers`], [`classify`]: Knative header names and request predicates;
//! - [`body`]: response bodies and per-request guards;
//! - [`breaker`], [`timeout`], [`forwarded`]: request-path stages as tower layers;
//! - [`proxy`]: the pooled reverse proxy with upgrades;
//! - [`drain`], [`stats`], [`server`], [`env`](mod@env): lifecycle, accounting, listeners, configuration;
//! - [`tls`]: system-internal TLS on the server side (settings, certificate reload, rustls config);
//! - [`request_log`]: the request-log stage;
//! - [`worker`]: which request-serving worker thread runs the current code.
//!
//! Telemetry (tracing, metrics, JSON process logs) is in the `knative-telemetry` crate, the
//! request-log template engine in `go-text-template`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod breaker;
pub mod classify;
pub mod drain;
pub mod env;
pub mod forwarded;
pub mod go_answers;
pub mod h2;
pub mod h2c_upgrade;
pub mod header_scan;
pub mod headers;
pub mod informational;
pub mod park;
pub mod proxy;
pub mod request_log;
pub mod server;
pub mod signals;
pub mod stats;
pub mod timeout;
pub mod tls;
pub mod worker;
