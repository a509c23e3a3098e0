//! The activator's configuration (spec §1.1), read once from the environment. Unknown
//! command-line flags (klog style) are ignored, as upstream accepts them.

use std::path::PathBuf;
use std::time::Duration;

use knative_common::env::{
    optional_int, optional_port, optional_string, required_string, Env, EnvError,
};

use crate::backends::parse_go_duration;

/// Default plaintext HTTP/1.1 + h2c port.
pub const DEFAULT_HTTP1_PORT: u16 = 8012;
/// Default h2c port (same chain).
pub const DEFAULT_H2C_PORT: u16 = 8013;
/// Default TLS port (ours and the queue-proxies', upstream's `BackendHTTPSPort`).
pub const DEFAULT_HTTPS_PORT: u16 = 8112;
/// Upstream sleeps this long after SIGTERM so endpoints and ingresses stop routing here.
pub const DEFAULT_DRAIN_SLEEP: Duration = Duration::from_secs(45);
/// Upper bound on waiting for in-flight requests after the listeners closed (the Deployment's
/// termination grace period).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Everything the activator reads from its environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `POD_NAME`: the `pod_name` of every stat.
    pub pod_name: String,
    /// `POD_IP`: this activator's IP, for subsetting.
    pub pod_ip: String,
    /// `SYSTEM_NAMESPACE`.
    pub system_namespace: String,
    /// `PROBE_TIMEOUT` (Go duration, default 300 ms).
    pub probe_timeout: Duration,
    /// `PROBE_FREQUENCY` (Go duration, default 200 ms).
    pub probe_frequency: Duration,
    /// `MAX_IDLE_PROXY_CONNS_PER_HOST` (default 100).
    pub max_idle_per_host: usize,
    /// `CLUSTER_DOMAIN` or the resolv.conf search domain.
    pub cluster_domain: String,
    /// `ACTIVATOR_HTTP1_PORT` (ours; default 8012).
    pub http1_port: u16,
    /// `ACTIVATOR_H2C_PORT` (ours; default 8013).
    pub h2c_port: u16,
    /// `ACTIVATOR_AUTOSCALER_URL` (ours; default `ws://autoscaler.<ns>.svc.<domain>:8080`).
    pub autoscaler_url: String,
    /// `ACTIVATOR_DISCOVERY_FILE` (ours): the file discovery source.
    pub discovery_file: Option<PathBuf>,
    /// How often the discovery file is checked for changes (ours:
    /// `ACTIVATOR_DISCOVERY_POLL_MILLIS`, default 100 ms; at least 1 ms).
    pub discovery_poll: Duration,
    /// `ACTIVATOR_DRAIN_SLEEP_SECONDS` (ours; default 45).
    pub drain_sleep: Duration,
    /// `ACTIVATOR_MAX_QUEUED_PER_REVISION` (ours; unset = unbounded, as upstream).
    pub max_queued_per_revision: Option<usize>,
    /// `ACTIVATOR_MAX_CONCURRENT_PROBES` (ours; default
    /// [`crate::backends::DEFAULT_MAX_CONCURRENT_PROBES`], 0 = unbounded): pod probes in flight
    /// across all revisions.
    pub max_concurrent_probes: usize,
    /// `ACTIVATOR_REVISION_IDLE_TIMEOUT` (ours; Go duration, default
    /// [`DEFAULT_REVISION_IDLE_TIMEOUT`]; `0` = `None`): a revision's throttler and pod watcher
    /// are created by its first request and dropped after this long without one. `None` keeps
    /// them for every known revision from startup (Knative's behaviour).
    pub revision_idle_timeout: Option<Duration>,
    /// `ACTIVATOR_HTTPS_PORT` (ours; default 8112): the TLS listener, in system-internal TLS
    /// mode only.
    pub https_port: u16,
    /// `ACTIVATOR_QUEUE_TLS_PORT` (ours; default 8112): the queue-proxies' TLS port that pod
    /// dests are rewritten to in TLS mode (tests point it at a free port).
    pub queue_tls_port: u16,
    /// Kubernetes discovery settings (`KUBECONFIG`, `KUBERNETES_MIN_VERSION`...).
    pub kube: crate::kubernetes::KubeSettings,
    /// `ACTIVATOR_MAX_QUEUED_TOTAL` (ours; default [`DEFAULT_MAX_QUEUED_TOTAL`], 0 = unbounded):
    /// requests waiting for a slot across all revisions; beyond it 503 `pending request queue
    /// full`. Bounds the memory parked requests can take.
    pub max_queued_total: Option<usize>,
    /// Listener limits (ours): `ACTIVATOR_HEADER_READ_TIMEOUT_SECONDS`,
    /// `ACTIVATOR_MAX_HEADER_BYTES`, `ACTIVATOR_MAX_HEADERS`, `ACTIVATOR_H2_MAX_CONCURRENT_STREAMS`,
    /// `ACTIVATOR_MAX_CONNECTIONS`.
    pub limits: knative_common::server::ServerLimits,
    /// Runtime worker threads (`ACTIVATOR_WORKER_THREADS`; ours). `None` (unset or 0): the
    /// container's CPU limit, else every CPU. With one, everything runs on a single thread.
    pub worker_threads: Option<usize>,
}

/// Default for `ACTIVATOR_REVISION_IDLE_TIMEOUT`.
pub const DEFAULT_REVISION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default for `ACTIVATOR_MAX_QUEUED_TOTAL`.
pub const DEFAULT_MAX_QUEUED_TOTAL: usize = 100_000;

fn duration(env: &dyn Env, name: &'static str, default: Duration) -> Result<Duration, EnvError> {
    match env.var(name) {
        None => Ok(default),
        Some(text) => parse_go_duration(&text).map_err(|_| EnvError::Invalid {
            name,
            value: text,
            expected: "a Go duration such as 300ms or 1s",
        }),
    }
}

impl Config {
    /// Reads and validates the configuration; `cluster_domain` is the discovered domain.
    pub fn from_env(env: &dyn Env, cluster_domain: String) -> Result<Config, EnvError> {
        let system_namespace = required_string(env, "SYSTEM_NAMESPACE")?;
        let autoscaler_url = match optional_string(env, "ACTIVATOR_AUTOSCALER_URL") {
            url if url.is_empty() => {
                crate::reporter::autoscaler_url(&system_namespace, &cluster_domain)
            }
            url => url,
        };
        let max_queued: usize = optional_int(
            env,
            "ACTIVATOR_MAX_QUEUED_PER_REVISION",
            0,
            "a non-negative integer",
        )?;
        Ok(Config {
            pod_name: required_string(env, "POD_NAME")?,
            pod_ip: required_string(env, "POD_IP")?,
            probe_timeout: duration(env, "PROBE_TIMEOUT", Duration::from_millis(300))?,
            probe_frequency: duration(env, "PROBE_FREQUENCY", Duration::from_millis(200))?,
            max_idle_per_host: optional_int(
                env,
                "MAX_IDLE_PROXY_CONNS_PER_HOST",
                100,
                "a non-negative integer",
            )?,
            http1_port: optional_port(env, "ACTIVATOR_HTTP1_PORT", DEFAULT_HTTP1_PORT)?,
            h2c_port: optional_port(env, "ACTIVATOR_H2C_PORT", DEFAULT_H2C_PORT)?,
            discovery_file: env
                .var("ACTIVATOR_DISCOVERY_FILE")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            discovery_poll: Duration::from_millis(
                optional_int(
                    env,
                    "ACTIVATOR_DISCOVERY_POLL_MILLIS",
                    100,
                    "a whole number of milliseconds",
                )?
                .max(1),
            ),
            drain_sleep: Duration::from_secs(optional_int(
                env,
                "ACTIVATOR_DRAIN_SLEEP_SECONDS",
                DEFAULT_DRAIN_SLEEP.as_secs(),
                "a non-negative integer number of seconds",
            )?),
            max_queued_per_revision: (max_queued > 0).then_some(max_queued),
            max_concurrent_probes: optional_int(
                env,
                "ACTIVATOR_MAX_CONCURRENT_PROBES",
                crate::backends::DEFAULT_MAX_CONCURRENT_PROBES,
                "a non-negative integer",
            )?,
            revision_idle_timeout: Some(duration(
                env,
                "ACTIVATOR_REVISION_IDLE_TIMEOUT",
                DEFAULT_REVISION_IDLE_TIMEOUT,
            )?)
            .filter(|idle| !idle.is_zero()),
            https_port: optional_port(env, "ACTIVATOR_HTTPS_PORT", DEFAULT_HTTPS_PORT)?,
            queue_tls_port: optional_port(env, "ACTIVATOR_QUEUE_TLS_PORT", DEFAULT_HTTPS_PORT)?,
            max_queued_total: Some(optional_int(
                env,
                "ACTIVATOR_MAX_QUEUED_TOTAL",
                DEFAULT_MAX_QUEUED_TOTAL,
                "a non-negative integer",
            )?)
            .filter(|&total| total > 0),
            limits: knative_common::server::ServerLimits::from_env(
                env,
                &knative_common::limit_vars!("ACTIVATOR_"),
            )?,
            kube: crate::kubernetes::KubeSettings::from_env(env)?,
            worker_threads: Some(optional_int(
                env,
                "ACTIVATOR_WORKER_THREADS",
                0usize,
                "a non-negative integer (0 = one per CPU)",
            )?)
            .filter(|&threads| threads > 0),
            system_namespace,
            autoscaler_url,
            cluster_domain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, &'static str> {
        [
            ("POD_NAME", "activator-1"),
            ("POD_IP", "10.0.0.7"),
            ("SYSTEM_NAMESPACE", "knative-serving"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::from_env(&base(), "cluster.local".into()).unwrap();
        assert_eq!(c.probe_timeout, Duration::from_millis(300));
        assert_eq!(c.probe_frequency, Duration::from_millis(200));
        assert_eq!((c.http1_port, c.h2c_port), (8012, 8013));
        assert_eq!((c.https_port, c.queue_tls_port), (8112, 8112));
        assert_eq!(
            c.autoscaler_url,
            "ws://autoscaler.knative-serving.svc.cluster.local:8080"
        );
        assert_eq!(c.max_idle_per_host, 100);
        assert_eq!(c.drain_sleep, DEFAULT_DRAIN_SLEEP);
        assert_eq!(c.max_queued_per_revision, None);
        assert_eq!(c.worker_threads, None);
        assert_eq!(c.revision_idle_timeout, Some(Duration::from_secs(60)));
    }

    #[test]
    fn revision_idle_timeout_zero_keeps_every_revision() {
        let mut env = base();
        env.insert("ACTIVATOR_REVISION_IDLE_TIMEOUT", "0");
        let c = Config::from_env(&env, "cluster.local".into()).unwrap();
        assert_eq!(c.revision_idle_timeout, None);
        env.insert("ACTIVATOR_REVISION_IDLE_TIMEOUT", "90s");
        let c = Config::from_env(&env, "cluster.local".into()).unwrap();
        assert_eq!(c.revision_idle_timeout, Some(Duration::from_secs(90)));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("PROBE_TIMEOUT", "soon"),
            ("ACTIVATOR_REVISION_IDLE_TIMEOUT", "a minute"),
            ("ACTIVATOR_HTTP1_PORT", "0"),
            ("MAX_IDLE_PROXY_CONNS_PER_HOST", "-1"),
            ("ACTIVATOR_WORKER_THREADS", "two"),
        ] {
            let mut env = base();
            env.insert(name, value);
            let e = Config::from_env(&env, "cluster.local".into())
                .unwrap_err()
                .to_string();
            assert!(e.contains(name) && e.contains(value), "{e}");
        }
        let mut env = base();
        env.remove("POD_NAME");
        assert!(Config::from_env(&env, "cluster.local".into())
            .unwrap_err()
            .to_string()
            .contains("POD_NAME"));
    }
}
