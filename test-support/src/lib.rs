//! The test harness the integration tests of the queue-proxy, the activator and the local stack
//! share: in-process user containers that record what they receive ([`app`]) and small HTTP/1.1,
//! h2c and raw-TCP clients ([`client`]), an OTLP collector ([`otlp`]), process helpers
//! ([`process`]), plus log capture that parallel tests cannot switch off ([`logs`]).
//!
//! It is a dev-dependency only; nothing here is part of a product binary.

pub mod app;
pub mod attack;
pub mod client;
pub mod conn_memory;
pub mod edges;
pub mod logs;
pub mod otlp;
pub mod process;

pub use app::*;
pub use client::*;
pub use process::*;
