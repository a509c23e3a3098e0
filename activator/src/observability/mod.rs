//! The activator's observability (spec §7, §1.3, §2.4, §2.7–§2.9): metrics, request log, process
//! log level, driven by `config-observability` and `config-logging` from the discovery snapshot.
//!
//! - [`config`]: parsing of both ConfigMaps (startup-only and dynamic keys);
//! - [`metrics`]: the §7.1 instruments and their Prometheus exposition;
//! - [`listener`]: where `/metrics` listens and what it answers;
//! - [`otlp`]: the periodic OTLP push of the same metrics;
//! - [`request_log`]: the §7.3 line;
//! - [`logging`]: the JSON process log with a reloadable level;
//! - [`spans`]: the §7.2 spans and W3C propagation.
//!
//! [`Observability`] is the shared state the request path reads: metric handles (if metrics are
//! on) and the dynamic settings behind an [`ArcSwap`], replaced whole by [`Observability::watch`]
//! when the ConfigMaps change. Per request, [`Observability::observe`] returns `None` (nothing to
//! do) unless metrics or the request log are on.

pub mod config;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod request_log;
pub mod spans;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use go_text_template::RevisionInfo;
use http::{Request, StatusCode};
use knative_telemetry::metrics::Completion;
use knative_telemetry::trace::export::otlp::Transport;
use tokio::sync::watch;

use crate::discovery::{RevisionSpec, Snapshot, SystemObjects};
use crate::throttler::RevisionId;
pub use config::{
    ConfigMapError, DynamicObservability, LoggingConfig, MetricsProtocol, StartupObservability,
    TracingProtocol, DEFAULT_LOGGING_NAME, DEFAULT_OBSERVABILITY_NAME,
};
pub use metrics::{ActivatorMetrics, ActiveGuard, QueuedGuard, RevisionMetrics, ServerMeasure};
use request_log::LogLine;

/// Names of the two ConfigMaps (`CONFIG_OBSERVABILITY_NAME`, `CONFIG_LOGGING_NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapNames {
    /// The observability ConfigMap.
    pub observability: String,
    /// The logging ConfigMap.
    pub logging: String,
}

impl ConfigMapNames {
    /// `CONFIG_OBSERVABILITY_NAME` / `CONFIG_LOGGING_NAME`, defaulting when unset or empty.
    pub fn from_env(env: &dyn knative_common::env::Env) -> Self {
        let name = |var: &str, default: &str| {
            env.var(var)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        ConfigMapNames {
            observability: name("CONFIG_OBSERVABILITY_NAME", DEFAULT_OBSERVABILITY_NAME),
            logging: name("CONFIG_LOGGING_NAME", DEFAULT_LOGGING_NAME),
        }
    }
}

impl Default for ConfigMapNames {
    fn default() -> Self {
        ConfigMapNames {
            observability: DEFAULT_OBSERVABILITY_NAME.to_owned(),
            logging: DEFAULT_LOGGING_NAME.to_owned(),
        }
    }
}

/// The startup reading of both ConfigMaps.
#[derive(Debug)]
pub struct StartupConfig {
    /// Startup-only observability keys.
    pub observability: StartupObservability,
    /// Dynamic observability keys, initial values.
    pub dynamic: DynamicObservability,
    /// `config-logging`.
    pub logging: LoggingConfig,
}

/// An invalid ConfigMap at startup; names the ConfigMap and the key.
#[derive(Debug, thiserror::Error)]
#[error("ConfigMap {name}: {source}")]
pub struct StartupConfigError {
    /// The ConfigMap.
    pub name: String,
    /// What is wrong.
    #[source]
    pub source: ConfigMapError,
}

fn data_of<'a>(system: &'a SystemObjects, name: &str) -> &'a BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    system.config_map(name).unwrap_or(&EMPTY)
}

impl StartupConfig {
    /// Reads both ConfigMaps from `system`. An absent ConfigMap gives defaults (upstream's initial
    /// read tolerates not-found; the file source need not list them).
    pub fn read(
        system: &SystemObjects,
        names: &ConfigMapNames,
    ) -> Result<Self, StartupConfigError> {
        let obs = data_of(system, &names.observability);
        let error = |name: &str| {
            let name = name.to_owned();
            move |source| StartupConfigError { name, source }
        };
        Ok(StartupConfig {
            observability: StartupObservability::parse(obs).map_err(error(&names.observability))?,
            dynamic: DynamicObservability::parse(obs).map_err(error(&names.observability))?,
            logging: LoggingConfig::parse(data_of(system, &names.logging))
                .map_err(error(&names.logging))?,
        })
    }
}

/// Shared observability state of the request path.
pub struct Observability {
    metrics: Option<&'static ActivatorMetrics>,
    tracer: Option<&'static knative_telemetry::trace::Tracer>,
    /// The OTLP metric push, awaited at shutdown.
    exporter_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    dynamic: ArcSwap<DynamicObservability>,
    /// `dynamic.request_log_active()`, set after each store: a request with the log off (the
    /// default) does not load the settings.
    request_log: AtomicBool,
    revision_info: DashMap<RevisionId, Arc<RevisionInfo>, crate::FastHash>,
}

impl std::fmt::Debug for Observability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observability")
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Observability {
    /// Everything off.
    fn default() -> Self {
        Observability::new(None, DynamicObservability::default())
    }
}

impl Observability {
    /// State with `metrics` (if exported) and the initial dynamic settings.
    pub fn new(metrics: Option<&'static ActivatorMetrics>, dynamic: DynamicObservability) -> Self {
        Observability {
            metrics,
            tracer: None,
            exporter_task: std::sync::Mutex::new(None),
            request_log: AtomicBool::new(dynamic.request_log_active()),
            dynamic: ArcSwap::from_pointee(dynamic),
            revision_info: DashMap::default(),
        }
    }

    /// With spans from `tracer`.
    pub fn with_tracer(
        mut self,
        tracer: Option<&'static knative_telemetry::trace::Tracer>,
    ) -> Self {
        self.tracer = tracer;
        self
    }

    /// The tracer, when tracing is on.
    #[inline]
    pub fn tracer(&self) -> Option<&'static knative_telemetry::trace::Tracer> {
        self.tracer
    }

    /// The metrics, when exported.
    pub fn metrics(&self) -> Option<&'static ActivatorMetrics> {
        self.metrics
    }

    /// The dynamic settings in force.
    pub fn dynamic(&self) -> Arc<DynamicObservability> {
        self.dynamic.load_full()
    }

    /// The revision's metric handle, when metrics are on.
    #[inline]
    pub fn revision_metrics(&self, revision: &RevisionSpec) -> Option<Arc<RevisionMetrics>> {
        self.metrics.map(|m| m.revision(revision))
    }

    fn revision_info(&self, revision: &RevisionSpec) -> Arc<RevisionInfo> {
        if let Some(found) = self.revision_info.get(&revision.id) {
            return found.clone();
        }
        self.revision_info
            .entry(revision.id.clone())
            .or_insert_with(|| Arc::new(request_log::revision_info(revision)))
            .clone()
    }

    /// Starts observing a request that passed the probe stages: `http.server.*` (every request,
    /// revision labels when known) and the request log (only with a valid revision). `None` when
    /// neither is on.
    #[inline]
    pub fn observe<B: http_body::Body>(
        &'static self,
        request: &mut Request<B>,
        revision: Option<&Arc<RevisionSpec>>,
        revision_metrics: Option<Arc<RevisionMetrics>>,
        remote: SocketAddr,
    ) -> Option<Observed> {
        let log = revision.is_some() && self.request_log.load(Ordering::Acquire);
        if self.tracer.is_none() && self.metrics.is_none() && !log {
            // Nothing on: nothing built, moved and dropped.
            return None;
        }
        let span = self
            .tracer
            .map(|t| spans::server_span(t, request, revision.map(|r| &**r)));
        let measure = self.metrics.map(|m| m.start(request, revision_metrics));
        let line = revision.filter(|_| log).and_then(|revision| {
            let settings = self.dynamic.load();
            settings.request_log_active().then(|| {
                LogLine::capture(
                    Arc::clone(&settings),
                    self.revision_info(revision),
                    remote,
                    request,
                )
            })
        });
        (measure.is_some() || line.is_some() || span.is_some()).then(|| {
            Observed(Box::new(ObservedInner {
                measure,
                line,
                span,
                status: 200,
            }))
        })
    }

    /// Applies the dynamic keys of the observability ConfigMap. An invalid value keeps the
    /// previous settings and logs an error naming the key (upstream's config store does the same).
    pub fn apply_observability(&self, name: &str, data: &BTreeMap<String, String>) {
        match DynamicObservability::parse(data) {
            Ok(next) => {
                let current = self.dynamic.load();
                if current.enable_request_log != next.enable_request_log
                    || current.request_log_text != next.request_log_text
                    || current.runtime_profiling != next.runtime_profiling
                {
                    tracing::info!(
                        configmap = name,
                        request_log = next.request_log_active(),
                        "observability configuration updated"
                    );
                    let active = next.request_log_active();
                    self.dynamic.store(Arc::new(next));
                    self.request_log.store(active, Ordering::Release);
                }
            }
            Err(error) => {
                tracing::error!(
                    configmap = name,
                    %error,
                    "invalid observability configuration; keeping the previous one"
                );
            }
        }
    }

    /// Follows the discovery snapshots until `shutdown`: on every change of either ConfigMap
    /// (compared with `applied`, the objects already in force), applies the dynamic keys (log
    /// level, then request log). `fallback_level` is the level used
    /// when neither `loglevel.activator` nor the zap configuration sets one.
    pub async fn watch(
        &'static self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        names: ConfigMapNames,
        fallback_level: String,
        applied: Arc<SystemObjects>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // `applied` (the startup reading of [`Observability::start`]) is in force already.
        let system = applied;
        let mut last_obs = data_of(&system, &names.observability).clone();
        let mut last_logging = data_of(&system, &names.logging).clone();
        loop {
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
            let system = snapshots.borrow_and_update().system().clone();
            // The level first, so that it governs the messages of the other changes.
            let logging = data_of(&system, &names.logging);
            if last_logging != *logging {
                apply_logging(&names.logging, logging, &fallback_level);
                last_logging = logging.clone();
            }
            let obs = data_of(&system, &names.observability);
            if last_obs != *obs {
                self.apply_observability(&names.observability, obs);
                last_obs = obs.clone();
            }
        }
    }
}

/// Why observability could not start; the message names the ConfigMap key or variable.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A ConfigMap value is invalid.
    #[error(transparent)]
    Config(#[from] StartupConfigError),
    /// `METRICS_PROMETHEUS_*` is invalid.
    #[error(transparent)]
    Env(#[from] knative_common::env::EnvError),
    /// Tracing cannot be set up.
    #[error(transparent)]
    Trace(#[from] knative_telemetry::trace::TraceConfigError),
    /// The metrics listener cannot be bound.
    #[error("cannot listen for metrics on {address}: {source}")]
    Bind {
        /// `host:port`.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

impl Observability {
    /// Startup (spec §1.4 steps 2–3, §1.5): reads both ConfigMaps from the current snapshot,
    /// applies the zap configuration and level, creates the metrics and, with
    /// `metrics-protocol: prometheus`, serves `/metrics` until `listeners_stop`; then follows
    /// the ConfigMaps until `background_stop`.
    pub fn start(
        pod_name: &str,
        system_namespace: &str,
        env: &dyn knative_common::env::Env,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        listeners_stop: watch::Receiver<bool>,
        background_stop: watch::Receiver<bool>,
    ) -> Result<&'static Observability, StartError> {
        let names = ConfigMapNames::from_env(env);
        let system = snapshots.borrow_and_update().system().clone();
        let startup = StartupConfig::read(&system, &names)?;
        let fallback_level = env.var("ACTIVATOR_LOG_LEVEL").unwrap_or_default();
        logging::apply_zap_config(&startup.logging.zap_config);
        apply_logging(
            &names.logging,
            data_of(&system, &names.logging),
            &fallback_level,
        );
        let observability = &startup.observability;
        let push = match observability.metrics_protocol {
            MetricsProtocol::Grpc => Some(Transport::Grpc),
            MetricsProtocol::HttpProtobuf => Some(Transport::HttpProtobuf),
            MetricsProtocol::None | MetricsProtocol::Prometheus => None,
        };
        let push = push
            .map(|t| otlp::exporter(t, &observability.metrics_endpoint, env))
            .transpose()?;
        let metrics: Option<&'static ActivatorMetrics> =
            (observability.metrics_protocol != MetricsProtocol::None).then(|| {
                let service = env
                    .var("OTEL_SERVICE_NAME")
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "activator".to_owned());
                &*Box::leak(Box::new(ActivatorMetrics::new(
                    pod_name,
                    system_namespace,
                    &service,
                )))
            });
        let exporter_task = match (metrics, push) {
            (Some(metrics), Some(exporter)) => {
                let interval = otlp::export_interval(observability.metrics_export_interval, env);
                tracing::info!(?interval, protocol = ?observability.metrics_protocol, "exporting metrics over OTLP");
                Some(otlp::spawn(
                    metrics,
                    exporter,
                    interval,
                    background_stop.clone(),
                ))
            }
            _ => None,
        };
        let tracer = spans::build(observability, env, pod_name, system_namespace)?;
        if let Some(tracer) = tracer {
            tracing::info!(protocol = ?observability.tracing_protocol, sampler = %tracer.sampler(), "tracing enabled");
        }
        if let Some(metrics) = metrics.filter(|_| exporter_task.is_none()) {
            let (host, port) = listener::listen_address(env)?;
            let address = format!("{host}:{port}");
            let bind_error = |source| StartError::Bind {
                address: address.clone(),
                source,
            };
            let socket = match listener::resolve(&host, port).map_err(bind_error)? {
                None => knative_common::server::bind_dual_stack(port),
                Some(addr) => knative_common::server::bind_addr(addr),
            }
            .map_err(|e| bind_error(std::io::Error::other(e.to_string())))?;
            let limits = knative_common::server::ServerLimits {
                header_read_timeout: std::time::Duration::from_secs(5),
                ..Default::default()
            };
            tracing::info!(%address, "serving metrics on /metrics");
            tokio::spawn(knative_common::server::serve(
                socket,
                knative_common::server::Protocols::Http1,
                limits,
                move |_| listener::MetricsService(metrics),
                listeners_stop,
            ));
        }
        let this: &'static Observability = Box::leak(Box::new(
            Observability::new(metrics, startup.dynamic).with_tracer(tracer),
        ));
        *this.exporter_task.lock().unwrap_or_else(|e| e.into_inner()) = exporter_task;
        tokio::spawn(this.watch(snapshots, names, fallback_level, system, background_stop));
        Ok(this)
    }

    /// Waits for the last metric export (it starts when the background stop signal is sent) and
    /// flushes the spans still queued (spec §8 step 4: 10 s budget each).
    pub async fn shutdown(&self) {
        let task = self
            .exporter_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut task) = task {
            if tokio::time::timeout(std::time::Duration::from_secs(10), &mut task)
                .await
                .is_err()
            {
                task.abort();
                tracing::warn!("the last metrics could not be exported in time");
            }
        }
        if let Some(tracer) = self.tracer {
            if !tracer.shutdown(std::time::Duration::from_secs(10)).await {
                tracing::warn!("the last spans could not be exported in time");
            }
        }
    }

    /// Reads `kn.activator.stats.conn.*` from the autoscaler connection.
    pub fn watch_autoscaler(&self, connection: &Arc<crate::reporter::AutoscalerConnection>) {
        if let Some(m) = self.metrics {
            m.watch_autoscaler(connection.clone());
        }
    }

    /// Records one reporter tick's `kn.revision.request.concurrency` for `revision` (skipped
    /// by the caller when the revision is no longer known, §6.1).
    pub fn record_concurrency(&self, revision: &RevisionSpec, concurrency: f64) {
        if let Some(m) = self.metrics {
            m.revision(revision).set_concurrency(concurrency);
        }
    }
}

/// Applies `loglevel.activator` (dynamic). An invalid level keeps the previous one.
pub fn apply_logging(name: &str, data: &BTreeMap<String, String>, fallback_level: &str) {
    match LoggingConfig::parse(data) {
        Ok(config) => {
            let level = logging::effective_level(&config.level, &config.zap_config, fallback_level);
            if logging::set_level(&level) {
                tracing::info!(configmap = name, level = %level, "log level set");
            }
        }
        Err(error) => {
            tracing::error!(configmap = name, %error, "invalid logging configuration; keeping the previous level");
        }
    }
}

/// One request being observed: settled when its response is over (see
/// [`knative_telemetry::metrics::MeteredFuture`]).
///
/// Boxed: every request waiting in the throttler carries its response future, and with it this
/// value; one pointer keeps the requests that observe nothing as small as before.
#[derive(Debug)]
pub struct Observed(Box<ObservedInner>);

#[derive(Debug)]
struct ObservedInner {
    measure: Option<ServerMeasure>,
    line: Option<LogLine>,
    /// The server span; ends when this is settled (dropped).
    span: Option<knative_telemetry::trace::Span>,
    status: u16,
}

impl Completion for Observed {
    fn respond(&mut self, status: StatusCode) {
        let this = &mut *self.0;
        this.status = status.as_u16();
        if let Some(m) = this.measure.as_mut() {
            m.set_status(this.status);
        }
        if let Some(span) = this.span.as_mut() {
            spans::record_server_status(span, this.status);
        }
    }

    fn complete(self, response_bytes: u64) {
        let this = *self.0;
        if let Some(m) = this.measure {
            m.finish(response_bytes);
        }
        if let Some(line) = this.line {
            line.write(this.status, response_bytes);
        }
    }

    fn abort(self, responded: bool) {
        // Upstream logs every request once the handler returns; a response cut short is logged
        // with its status if one was written (else Go's default 200 never written: 500 here, as
        // the client saw a failure). No metric: otelhttp is skipped when the handler aborts.
        let this = *self.0;
        if let Some(line) = this.line {
            line.write(if responded { this.status } else { 500 }, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::ConfigMapObject;
    use crate::throttler::RevisionId;

    fn system(name: &str, pairs: &[(&str, &str)]) -> SystemObjects {
        let mut s = SystemObjects::default();
        s.config_maps.insert(
            name.to_owned(),
            ConfigMapObject {
                labels: BTreeMap::new(),
                data: pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            },
        );
        s
    }

    #[test]
    fn startup_reads_named_config_maps_and_names_bad_ones() {
        let names = ConfigMapNames {
            observability: "obs".into(),
            logging: "log".into(),
        };
        let ok = StartupConfig::read(
            &system("obs", &[("metrics-protocol", "prometheus")]),
            &names,
        )
        .unwrap();
        assert_eq!(
            ok.observability.metrics_protocol,
            MetricsProtocol::Prometheus
        );
        // Absent ConfigMaps: defaults.
        let none = StartupConfig::read(&SystemObjects::default(), &names).unwrap();
        assert_eq!(none.observability.metrics_protocol, MetricsProtocol::None);
        let e = StartupConfig::read(&system("obs", &[("metrics-protocol", "x")]), &names)
            .unwrap_err()
            .to_string();
        assert!(e.contains("obs") && e.contains("metrics-protocol"), "{e}");
        let e = StartupConfig::read(&system("log", &[("loglevel.activator", "loud")]), &names)
            .unwrap_err()
            .to_string();
        assert!(e.contains("log") && e.contains("loglevel.activator"), "{e}");
    }

    #[test]
    fn invalid_dynamic_update_keeps_previous_template() {
        let data = |t: &str| -> BTreeMap<String, String> {
            [
                ("logging.enable-request-log".to_owned(), "true".to_owned()),
                ("logging.request-log-template".to_owned(), t.to_owned()),
            ]
            .into_iter()
            .collect()
        };
        let obs = Observability::default();
        obs.apply_observability("config-observability", &data("{{.Request.Method}}"));
        assert_eq!(obs.dynamic().request_log_text, "{{.Request.Method}}");
        obs.apply_observability("config-observability", &data("{{}}"));
        assert_eq!(obs.dynamic().request_log_text, "{{.Request.Method}}");
        assert!(obs.dynamic().request_log_active());
        obs.apply_observability("config-observability", &BTreeMap::new());
        assert!(!obs.dynamic().request_log_active());
    }

    #[test]
    fn nothing_to_observe_when_off() {
        let obs: &'static Observability = Box::leak(Box::default());
        let spec = Arc::new(RevisionSpec::new(RevisionId::new("ns", "r")));
        let mut request = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
        assert!(obs
            .observe(
                &mut request,
                Some(&spec),
                None,
                "127.0.0.1:1".parse().unwrap()
            )
            .is_none());
    }
}
