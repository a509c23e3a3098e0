//! The queue-proxy's configuration, read once from the environment the Knative controller injects
//! (spec §1). A missing or malformed variable stops start-up with a message naming it.

use std::time::Duration;

use knative_common::env::{
    optional_bool, optional_int, optional_port, optional_string, required_int, required_string,
    Env, EnvError,
};
use knative_common::timeout::Timeouts;

/// Default admin port (`/wait-for-drain`), hard-coded upstream.
pub const DEFAULT_ADMIN_PORT: u16 = 8022;
/// Default autoscaler-metrics port, hard-coded upstream.
pub const DEFAULT_STATS_PORT: u16 = 9090;

/// Everything the queue-proxy reads from its environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `SERVING_NAMESPACE`.
    pub namespace: String,
    /// `SERVING_SERVICE` (may be empty).
    pub service: String,
    /// `SERVING_CONFIGURATION` (may be empty).
    pub configuration: String,
    /// `SERVING_REVISION`.
    pub revision: String,
    /// `SERVING_POD`: the `pod_name` of every stat.
    pub pod: String,
    /// `SERVING_POD_IP`.
    pub pod_ip: String,
    /// `QUEUE_SERVING_PORT`: the main listener.
    pub serving_port: u16,
    /// `QUEUE_SERVING_TLS_PORT`.
    pub serving_tls_port: u16,
    /// `USER_PORT`: the user container's port on 127.0.0.1.
    pub user_port: u16,
    /// `CONTAINER_CONCURRENCY` (0 = unlimited).
    pub container_concurrency: usize,
    /// `REVISION_TIMEOUT_SECONDS`, `REVISION_RESPONSE_START_TIMEOUT_SECONDS`,
    /// `REVISION_IDLE_TIMEOUT_SECONDS`.
    pub timeouts: Timeouts,
    /// `SERVING_READINESS_PROBE` (may be empty).
    pub readiness_probe: String,
    /// `ENABLE_MULTI_CONTAINER_PROBES`.
    pub multi_container_probes: bool,
    /// `ENABLE_HTTP2_AUTO_DETECTION`.
    pub http2_auto_detection: bool,
    /// `ENABLE_HTTP_FULL_DUPLEX` (always allowed by this server; kept for completeness).
    pub http_full_duplex: bool,
    /// `SERVING_LOGGING_CONFIG`.
    pub logging_config: String,
    /// `SERVING_LOGGING_LEVEL`.
    pub logging_level: String,
    /// `OBSERVABILITY_CONFIG`.
    pub observability_config: String,
    /// Admin port (`QUEUE_ADMIN_PORT`, default 8022; an addition of ours for side-by-side runs).
    pub admin_port: u16,
    /// Autoscaler stats port (`QUEUE_STATS_PORT`, default 9090; ours).
    pub stats_port: u16,
    /// Drain quiet period (`QUEUE_DRAIN_QUIET_PERIOD_SECONDS`, default 30; ours, for tests).
    pub drain_quiet_period: Duration,
    /// Where `tls.crt`/`tls.key` are looked for (`QUEUE_CERT_DIR`, default
    /// `/var/lib/knative/certs`; ours, for tests and local runs).
    pub cert_dir: std::path::PathBuf,
    /// How often the certificate files are re-read (`QUEUE_CERT_RELOAD_MILLIS`, default 60 000;
    /// ours, for tests).
    pub cert_reload_period: Duration,
    /// Listener limits (ours): `QUEUE_HEADER_READ_TIMEOUT_SECONDS`, `QUEUE_MAX_HEADER_BYTES`,
    /// `QUEUE_MAX_HEADERS`, `QUEUE_H2_MAX_CONCURRENT_STREAMS`, `QUEUE_MAX_CONNECTIONS`.
    pub limits: knative_common::server::ServerLimits,
    /// Runtime worker threads (`QUEUE_WORKER_THREADS`; ours). `None` (unset or 0): the
    /// container's CPU limit, else one. With one, everything runs on a single thread.
    pub worker_threads: Option<usize>,
}

fn port(env: &dyn Env, name: &'static str) -> Result<u16, EnvError> {
    let text = required_string(env, name)?;
    match text.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(EnvError::Invalid {
            name,
            value: text,
            expected: "a port number (1-65535)",
        }),
    }
}

fn seconds(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

impl Config {
    /// Reads and validates the configuration.
    pub fn from_env(env: &dyn Env) -> Result<Config, EnvError> {
        const SECS: &str = "a non-negative integer number of seconds";
        let total: u64 = required_int(env, "REVISION_TIMEOUT_SECONDS", SECS)?;
        if total == 0 {
            // Go would time out every request at once; the webhook never lets 0 through.
            return Err(EnvError::Invalid {
                name: "REVISION_TIMEOUT_SECONDS",
                value: "0".into(),
                expected: "a positive integer number of seconds",
            });
        }
        Ok(Config {
            namespace: required_string(env, "SERVING_NAMESPACE")?,
            service: optional_string(env, "SERVING_SERVICE"),
            configuration: required_string(env, "SERVING_CONFIGURATION")?,
            revision: required_string(env, "SERVING_REVISION")?,
            pod: required_string(env, "SERVING_POD")?,
            pod_ip: required_string(env, "SERVING_POD_IP")?,
            serving_port: port(env, "QUEUE_SERVING_PORT")?,
            serving_tls_port: port(env, "QUEUE_SERVING_TLS_PORT")?,
            user_port: port(env, "USER_PORT")?,
            container_concurrency: required_int(
                env,
                "CONTAINER_CONCURRENCY",
                "a non-negative integer",
            )?,
            timeouts: Timeouts {
                total: Duration::from_secs(total),
                response_start: seconds(optional_int(
                    env,
                    "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
                    0,
                    SECS,
                )?),
                idle: seconds(optional_int(env, "REVISION_IDLE_TIMEOUT_SECONDS", 0, SECS)?),
            },
            readiness_probe: optional_string(env, "SERVING_READINESS_PROBE"),
            multi_container_probes: optional_bool(env, "ENABLE_MULTI_CONTAINER_PROBES", false)?,
            http2_auto_detection: optional_bool(env, "ENABLE_HTTP2_AUTO_DETECTION", false)?,
            http_full_duplex: optional_bool(env, "ENABLE_HTTP_FULL_DUPLEX", false)?,
            logging_config: required_string(env, "SERVING_LOGGING_CONFIG")?,
            logging_level: required_string(env, "SERVING_LOGGING_LEVEL")?,
            observability_config: optional_string(env, "OBSERVABILITY_CONFIG"),
            admin_port: optional_port(env, "QUEUE_ADMIN_PORT", DEFAULT_ADMIN_PORT)?,
            stats_port: optional_port(env, "QUEUE_STATS_PORT", DEFAULT_STATS_PORT)?,
            drain_quiet_period: Duration::from_secs(optional_int(
                env,
                "QUEUE_DRAIN_QUIET_PERIOD_SECONDS",
                30,
                SECS,
            )?),
            cert_dir: env
                .var("QUEUE_CERT_DIR")
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| knative_common::tls::CERT_DIR.to_owned())
                .into(),
            cert_reload_period: Duration::from_millis(optional_int(
                env,
                "QUEUE_CERT_RELOAD_MILLIS",
                knative_common::tls::DEFAULT_RELOAD_PERIOD.as_millis() as u64,
                "a positive number of milliseconds",
            )?),
            limits: knative_common::server::ServerLimits::from_env(
                env,
                &knative_common::limit_vars!("QUEUE_"),
            )?,
            worker_threads: match optional_int(
                env,
                "QUEUE_WORKER_THREADS",
                0usize,
                "a non-negative integer (0: automatic)",
            )? {
                0 => None,
                n => Some(n),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, &'static str> {
        [
            ("ENABLE_HTTP2_AUTO_DETECTION", "true"),
            ("CONTAINER_CONCURRENCY", "10"),
            ("QUEUE_SERVING_PORT", "8080"),
            ("QUEUE_SERVING_TLS_PORT", "443"),
            ("REVISION_TIMEOUT_SECONDS", "1000"),
            ("USER_PORT", "8081"),
            ("SERVING_LOGGING_CONFIG", ""),
            ("SERVING_LOGGING_LEVEL", "info"),
            ("SERVING_NAMESPACE", "knative-serving"),
            ("SERVING_CONFIGURATION", ""),
            ("SERVING_REVISION", "rev"),
            ("SERVING_POD", "pod"),
            ("SERVING_POD_IP", "1.1.1.1"),
        ]
        .into_iter()
        .collect()
    }

    /// Spec SM2.
    #[test]
    fn parses_the_upstream_example() {
        let c = Config::from_env(&base()).unwrap();
        assert!(c.http2_auto_detection);
        assert_eq!(c.container_concurrency, 10);
        assert_eq!(
            (c.serving_port, c.serving_tls_port, c.user_port),
            (8080, 443, 8081)
        );
        assert_eq!(c.timeouts.total, Duration::from_secs(1000));
        assert_eq!((c.timeouts.response_start, c.timeouts.idle), (None, None));
        assert_eq!(c.logging_config, "");
        assert_eq!(c.logging_level, "info");
        assert_eq!(c.namespace, "knative-serving");
        assert_eq!(c.configuration, "");
        assert_eq!(
            (c.revision.as_str(), c.pod.as_str(), c.pod_ip.as_str()),
            ("rev", "pod", "1.1.1.1")
        );
        assert_eq!((c.admin_port, c.stats_port), (8022, 9090));
    }

    #[test]
    fn errors_name_the_variable_and_value() {
        let mut env = base();
        env.insert("CONTAINER_CONCURRENCY", "-1");
        let e = Config::from_env(&env).unwrap_err().to_string();
        assert!(
            e.contains("CONTAINER_CONCURRENCY") && e.contains("\"-1\""),
            "{e}"
        );

        let mut env = base();
        env.remove("SERVING_POD");
        let e = Config::from_env(&env).unwrap_err().to_string();
        assert!(e.contains("SERVING_POD"), "{e}");

        let mut env = base();
        env.insert("ENABLE_HTTP_FULL_DUPLEX", "");
        assert!(Config::from_env(&env)
            .unwrap_err()
            .to_string()
            .contains("ENABLE_HTTP_FULL_DUPLEX"));

        let mut env = base();
        env.insert("USER_PORT", "70000");
        assert!(Config::from_env(&env)
            .unwrap_err()
            .to_string()
            .contains("USER_PORT"));

        let mut env = base();
        env.insert("QUEUE_WORKER_THREADS", "two");
        let e = Config::from_env(&env).unwrap_err().to_string();
        assert!(
            e.contains("QUEUE_WORKER_THREADS") && e.contains("\"two\""),
            "{e}"
        );
    }

    #[test]
    fn worker_threads_default_to_automatic() {
        let mut env = base();
        assert_eq!(Config::from_env(&env).unwrap().worker_threads, None);
        env.insert("QUEUE_WORKER_THREADS", "0");
        assert_eq!(Config::from_env(&env).unwrap().worker_threads, None);
        env.insert("QUEUE_WORKER_THREADS", "3");
        assert_eq!(Config::from_env(&env).unwrap().worker_threads, Some(3));
    }
}
