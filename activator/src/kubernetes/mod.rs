//! Kubernetes discovery (spec §1.4, §3.7, §3.8, §5.1–§5.3, §10): the activator learns revisions,
//! their pods, their activators, their private Services and its ConfigMaps and Secrets from the
//! API server, through kube-rs watchers, and publishes them as discovery
//! [`Snapshot`](crate::discovery::Snapshot)s like the file source does.
//!
//! - [`client`]: client configuration (flags, `KUBECONFIG`, in-cluster);
//! - [`version`]: the startup `/version` check;
//! - [`convert`]: API objects → discovery data;
//! - `state`, `reflect`: the watch tasks, their stores and the debounced publisher;
//! - [`KubeSource`] and [`start_discovery`] (source selection and startup).

pub mod client;
pub mod convert;
mod reflect;
mod source;
mod state;
pub mod version;

#[cfg(test)]
mod tests;

use std::time::Duration;

use knative_common::env::{optional_int, optional_string, Env, EnvError};

pub use client::{ClientSource, KubeFlags};
pub use reflect::DEBOUNCE;
pub use source::{missing_config_maps, start_discovery, KubeSource};
pub use state::{Item, Stores, WatchKind};
pub use version::{KubeVersion, DEFAULT_MIN_VERSION, DEFAULT_VERSION_WAIT};

/// The environment of Kubernetes discovery.
#[derive(Clone, Debug, PartialEq)]
pub struct KubeSettings {
    /// `KUBECONFIG` (one path or a `:`-separated list).
    pub kubeconfig: Option<String>,
    /// Whether `KUBERNETES_SERVICE_HOST` is set (running in a pod).
    pub in_cluster: bool,
    /// `KUBERNETES_MIN_VERSION` (default [`DEFAULT_MIN_VERSION`]).
    pub min_version: KubeVersion,
    /// `ACTIVATOR_KUBE_VERSION_WAIT_SECONDS` (ours; default 60): how long the API server version
    /// check retries.
    pub version_wait: Duration,
    /// `CONFIG_LOGGING_NAME` (default `config-logging`).
    pub config_logging_name: String,
    /// `CONFIG_OBSERVABILITY_NAME` (default `config-observability`).
    pub config_observability_name: String,
    /// `KUBE_API_QPS` (accepted, validated, not enforced; see [`client`]).
    pub api_qps: Option<f64>,
    /// `KUBE_API_BURST` (accepted, validated, not enforced).
    pub api_burst: Option<u32>,
}

fn non_empty(env: &dyn Env, name: &'static str, default: &str) -> String {
    match optional_string(env, name) {
        value if value.is_empty() => default.to_owned(),
        value => value,
    }
}

impl KubeSettings {
    /// Reads and validates the variables.
    pub fn from_env(env: &dyn Env) -> Result<KubeSettings, EnvError> {
        let min_text = non_empty(env, "KUBERNETES_MIN_VERSION", DEFAULT_MIN_VERSION);
        let min_version = KubeVersion::parse(&min_text).map_err(|_| EnvError::Invalid {
            name: "KUBERNETES_MIN_VERSION",
            value: min_text.clone(),
            expected: "a semantic version such as v1.34.0",
        })?;
        let api_qps = match env.var("KUBE_API_QPS").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(text) => Some(
                text.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|q| q.is_finite() && *q >= 0.0)
                    .ok_or(EnvError::Invalid {
                        name: "KUBE_API_QPS",
                        value: text,
                        expected: "a non-negative number",
                    })?,
            ),
        };
        let api_burst = match env.var("KUBE_API_BURST").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(_) => Some(optional_int(
                env,
                "KUBE_API_BURST",
                0,
                "a non-negative integer",
            )?),
        };
        Ok(KubeSettings {
            kubeconfig: env.var("KUBECONFIG").filter(|v| !v.is_empty()),
            in_cluster: env
                .var("KUBERNETES_SERVICE_HOST")
                .is_some_and(|v| !v.is_empty()),
            min_version,
            version_wait: Duration::from_secs(optional_int(
                env,
                "ACTIVATOR_KUBE_VERSION_WAIT_SECONDS",
                DEFAULT_VERSION_WAIT.as_secs(),
                "a non-negative integer number of seconds",
            )?),
            config_logging_name: non_empty(env, "CONFIG_LOGGING_NAME", "config-logging"),
            config_observability_name: non_empty(
                env,
                "CONFIG_OBSERVABILITY_NAME",
                "config-observability",
            ),
            api_qps,
            api_burst,
        })
    }
}
