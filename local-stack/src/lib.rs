//! `local-stack`: a **local harness, not a product component**. It runs the whole Knative data
//! plane on loopback without a cluster, on the real binaries:
//!
//! - the `activator` with the file discovery source (the discovery file stands in for the
//!   revision's Endpoints);
//! - an autoscaler stand-in ([`autoscaler`]) that receives the activator's websocket stats,
//!   scrapes each queue-proxy's stats port, and scales the sample revision between 0 and N
//!   instances by rewriting the discovery file;
//! - per instance, the `sample-app` and a real `queue-proxy` with the Knative environment.
//!
//! The binary `knative-local` wraps [`Stack`] with a build step, printed instructions, Ctrl-C
//! handling and a scripted `--demo` ([`demo`]). The end-to-end tests start [`Stack`] directly.

pub mod autoscaler;
pub mod client;
pub mod demo;
pub mod process;
pub mod stack;

pub use autoscaler::ScalingConfig;
pub use stack::{Event, EventKind, InstanceInfo, Phase, Stack, StackConfig, StackError};
