//! Process wiring: state, listeners, signals and the main chain.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use go_text_template::{RequestLogTemplate, RevisionInfo, DEFAULT_TEMPLATE};
use http::{Request, Response};
use knative_common::body::LocalBody;
use knative_common::breaker::{Breaker, BreakerLayer};
use knative_common::classify::is_health_check;
use knative_common::drain::{Drainer, InFlightCounter, TrackInFlightLayer};
use knative_common::env::{Env, ProcessEnv};
use knative_common::h2::IncomingBody;
use knative_common::proxy::{PeerIp, ReverseProxy, Upstream};
use knative_common::request_log::{RequestLogSettings, RequestLogger};
use knative_common::server::{
    bind_dual_stack, serve, serve_tls, BindError, Protocols, ServerLimits,
};
use knative_common::signals::Signals;
use knative_common::stats::RequestStats;
use knative_common::timeout::TimeoutLayer;
use knative_common::tls::server_tls_from_env;
use knative_telemetry::trace::export::otlp::Transport;
use knative_telemetry::trace::layer::skip_probes;
use knative_telemetry::trace::{
    self, ClientSpanLayer, ServerSpans, ServerTracing, Span, Tracer, TracingConfig, OTELHTTP_SCOPE,
};
use tokio::sync::watch;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::Config;
use crate::handler::QueueHandlerLayer;
use crate::health::HealthLayer;
use crate::metrics;
use crate::metrics::route_tag::{self, route_tag, RouteTag};
use crate::metrics::{
    AppMetricsLayer, Metrics, MetricsExporter, Resource, ServerMetrics, UrlScheme,
};
use crate::observability::{ObservabilityConfig, Protocol};
use crate::observed::ObserveLayer;
use crate::readiness::Readiness;
use crate::stats_server::PublishedStat;
use crate::{admin, stats_server};
use knative_telemetry::logging;

/// Body of the 504 the timeout layer writes.
const TIMEOUT_BODY: &str = "request timeout";
/// Upper bound on waiting for in-flight requests after the listeners closed (spec §5.3 step 3).
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections to the user container when CC = 0 (Go's `MaxIdleConns`).
const MAX_IDLE_UNLIMITED: usize = 1000;
/// Upper bound on exporting the last spans at shutdown.
const TRACE_FLUSH_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the last OTLP export of the request metrics at shutdown.
const METRICS_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// Everything the request path shares, alive for the whole process.
struct State {
    config: Config,
    upstream: Upstream,
    breaker: Option<Breaker>,
    stats: RequestStats,
    drainer: Drainer,
    in_flight: InFlightCounter,
    readiness: Readiness,
    published: PublishedStat,
    sigterm: AtomicBool,
    request_log: Option<RequestLogSettings>,
    metrics: Option<Metrics>,
    tracer: Option<&'static Tracer>,
}

/// The binary's entry point: configuration, runtime, then [`run`].
pub fn main() -> ExitCode {
    let config = match Config::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("queue-proxy: {error}");
            return ExitCode::from(1);
        }
    };
    logging::init_from_zap(
        "queueproxy",
        vec![
            (
                "knative.dev/key",
                format!("{}/{}", config.namespace, config.revision),
            ),
            ("knative.dev/pod", config.pod.clone()),
        ],
        &config.logging_config,
        &config.logging_level,
    );
    let threads = config.worker_threads.unwrap_or_else(worker_threads);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(config)),
        Err(error) => {
            eprintln!("queue-proxy: cannot start the runtime: {error}");
            ExitCode::from(1)
        }
    }
}

/// Worker threads when `QUEUE_WORKER_THREADS` does not set them: the container's CPU limit
/// (cgroup v2 `cpu.max`, rounded up and capped by the CPUs the process may run on) when it has
/// one, else one.
///
/// One thread is the sidecar's natural size (linkerd2-proxy makes the same choice): the Knative
/// controller requests 25m CPU for it, one thread proxied 42k small requests per second in the
/// load benchmark on a 2-core machine, and it costs fewer CPU microseconds per request than two
/// (no cross-thread wake-ups: half the context switches per request at CC=10, measured with
/// `perf stat`). An operator who gives the queue-proxy a CPU limit (`queueSidecarCPULimit`) gets
/// that many threads.
fn worker_threads() -> usize {
    knative_common::env::cgroup_cpu_limit().unwrap_or(1)
}

fn fatal(message: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("queue-proxy: {message}");
    ExitCode::from(1)
}

/// Runs the queue-proxy until it has drained after SIGTERM/SIGINT.
pub async fn run(config: Config) -> ExitCode {
    // First of all, so that a SIGTERM arriving during start-up is a graceful one.
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(error) => return fatal(format!("cannot install signal handlers: {error}")),
    };
    let readiness = match Readiness::from_env(
        &config.readiness_probe,
        config.multi_container_probes,
        config.http2_auto_detection,
    ) {
        Ok(r) => r,
        Err(error) => return fatal(error),
    };
    let observability = match ObservabilityConfig::parse(&config.observability_config) {
        Ok(o) => o,
        Err(error) => return fatal(error),
    };
    let request_log = request_log_settings(&config, &observability);
    let tracer = match start_tracing(&config, &observability) {
        Ok(tracer) => tracer,
        Err(error) => return fatal(error),
    };
    let metrics_address = match metrics::listen_address(&observability.request_metrics, &ProcessEnv)
    {
        Ok(address) => address,
        Err(error) => return fatal(error),
    };
    let request_metrics = &observability.request_metrics;
    let metrics_push = match request_metrics.protocol {
        Protocol::Grpc => Some(Transport::Grpc),
        Protocol::HttpProtobuf => Some(Transport::HttpProtobuf),
        _ => None,
    };
    let metrics_push = match metrics_push
        .map(|t| metrics::otlp::exporter(t, &request_metrics.endpoint, &ProcessEnv))
        .transpose()
    {
        Ok(exporter) => exporter.map(|exporter| {
            let interval =
                metrics::otlp::export_interval(request_metrics.export_interval_ns, &ProcessEnv);
            let endpoint = exporter.endpoint().to_string();
            tracing::info!(endpoint, ?interval, "exporting request metrics over OTLP");
            (exporter, interval, trace_resource(&config))
        }),
        Err(error) => return fatal(error),
    };
    let metrics = (metrics_address.is_some() || metrics_push.is_some())
        .then(|| Metrics::new(Resource::from_env(&ProcessEnv)));
    let breaker = match config.container_concurrency {
        0 => None,
        cc => match Breaker::for_container_concurrency(cc) {
            Ok(b) => Some(b),
            Err(error) => return fatal(error),
        },
    };
    let max_idle = match config.container_concurrency {
        0 => MAX_IDLE_UNLIMITED,
        cc => cc,
    };
    let state: &'static State = Box::leak(Box::new(State {
        upstream: Upstream::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, config.user_port)),
            max_idle,
        ),
        breaker,
        stats: RequestStats::new(),
        drainer: Drainer::new(config.drain_quiet_period),
        in_flight: InFlightCounter::default(),
        readiness,
        published: PublishedStat::new(config.pod.clone()),
        sigterm: AtomicBool::new(false),
        request_log,
        metrics,
        tracer,
        config,
    }));

    let (stop_tx, stop_rx) = watch::channel(false);
    // System-internal TLS: on iff both certificate files exist (spec §8).
    let tls = match server_tls_from_env(
        &ProcessEnv,
        "QUEUE_PROXY_TLS",
        &state.config.cert_dir,
        state.config.cert_reload_period,
        stop_rx.clone(),
    ) {
        Ok(tls) => tls,
        Err(error) => return fatal(error),
    };
    let bound = (|| -> Result<_, BindError> {
        Ok((
            bind_dual_stack(state.config.serving_port)?,
            bind_dual_stack(state.config.admin_port)?,
            bind_dual_stack(state.config.stats_port)?,
            match tls {
                Some(_) => Some(bind_dual_stack(state.config.serving_tls_port)?),
                None => None,
            },
            metrics_address.as_ref().map(|a| a.bind()).transpose()?,
        ))
    })();
    let (main_listener, admin_listener, stats_listener, tls_listener, metrics_listener) =
        match bound {
            Ok(listeners) => listeners,
            Err(error) => {
                tracing::error!(%error, "Failed to bring up queue-proxy, shutting down.");
                eprintln!("queue-proxy: {error}");
                return ExitCode::from(1);
            }
        };

    let limits = state.config.limits;
    let main_server = tokio::spawn(serve(
        main_listener,
        Protocols::Http1AndH2c,
        limits,
        move |remote| main_chain(state, remote, UrlScheme::Http),
        stop_rx.clone(),
    ));
    let admin_server = tokio::spawn(serve(
        admin_listener,
        Protocols::Http1,
        limits,
        move |_| tower::service_fn(move |req| admin::handle(req, &state.drainer, &state.sigterm)),
        stop_rx.clone(),
    ));
    let stats_server = tokio::spawn(serve(
        stats_listener,
        Protocols::Http1,
        limits,
        move |_| tower::service_fn(move |req| stats_server::handle(req, &state.published)),
        stop_rx.clone(),
    ));
    let tls_server = tls.zip(tls_listener).map(|(tls, listener)| {
        tokio::spawn(serve_tls(
            listener,
            tls.acceptor,
            limits,
            move |remote| main_chain(state, remote, UrlScheme::Https),
            stop_rx.clone(),
        ))
    });
    let metrics_server = state
        .metrics
        .as_ref()
        .zip(metrics_listener)
        .map(|(m, listener)| {
            let limits = ServerLimits {
                header_read_timeout: Duration::from_secs(5),
                ..limits
            };
            tokio::spawn(serve(
                listener,
                Protocols::Http1,
                limits,
                move |_| tower::service_fn(move |req| metrics::handle(req, m)),
                stop_rx.clone(),
            ))
        });
    // OTLP push instead of the 9091 listener (requestMetrics.protocol grpc / http/protobuf).
    let metrics_exporter = state.metrics.as_ref().zip(metrics_push).map(|(m, push)| {
        let (exporter, interval, resource) = push;
        MetricsExporter::start(m, exporter, resource, interval)
    });
    tokio::spawn(state.published.run(&state.stats));
    tracing::info!(
        port = state.config.serving_port,
        user_port = state.config.user_port,
        container_concurrency = state.config.container_concurrency,
        "queue-proxy listening"
    );

    signals.next().await;
    state.sigterm.store(true, Ordering::Release);
    tracing::info!("Received TERM signal, attempting to gracefully shutdown servers.");
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("queue-proxy: second signal received, exiting immediately");
        std::process::exit(1);
    });

    state.drainer.drain().await;
    tracing::info!("Drain finished, shutting down the listeners.");
    let _ = stop_tx.send(true);
    let _ = tokio::join!(main_server, admin_server, stats_server);
    // Upstream closes the TLS listener last, and the user-metrics listener with the exporters.
    if let Some(server) = tls_server {
        let _ = server.await;
    }
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    if !state.in_flight.wait_idle(IN_FLIGHT_WAIT).await {
        tracing::warn!(
            in_flight = state.in_flight.current(),
            "in-flight requests did not finish in time"
        );
    }
    if let Some(exporter) = metrics_exporter {
        if !exporter.shutdown(METRICS_FLUSH_WAIT).await {
            tracing::warn!("the last request metrics could not be exported in time");
        }
    }
    if let Some(tracer) = state.tracer {
        if !tracer.shutdown(TRACE_FLUSH_WAIT).await {
            tracing::warn!("the last spans could not be exported in time");
        }
    }
    tracing::info!("Shutdown complete, exiting...");
    ExitCode::SUCCESS
}

/// The main chain for one connection from `remote`.
fn main_chain(
    state: &'static State,
    remote: SocketAddr,
    scheme: UrlScheme,
) -> impl Service<
    Request<IncomingBody>,
    Response = Response<impl LocalBody>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let metrics = state.metrics.as_ref();
    let tracer = state.tracer;
    let proxy = ReverseProxy::new(&state.upstream, PeerIp::new(remote));
    let user_container = SocketAddr::from((Ipv4Addr::LOCALHOST, state.config.user_port));
    let proxy = ClientSpanLayer::new(tracer, user_container).layer(proxy);
    let chain = AppMetricsLayer::new(metrics, state.breaker.as_ref()).layer(proxy);
    let handler = QueueHandlerLayer::new(&state.stats, BreakerLayer::new(state.breaker.as_ref()))
        .with_tracer(tracer);
    let chain = handler.layer(chain);
    let chain = TimeoutLayer::new(state.config.timeouts, TIMEOUT_BODY).layer(chain);
    let chain = TrackInFlightLayer::new(&state.in_flight).layer(chain);
    let chain = HealthLayer::new(&state.drainer, &state.readiness).layer(chain);
    ObserveLayer::new(
        ServerTracing::new(tracer, SERVER_SPANS, remote, scheme == UrlScheme::Https),
        ServerMetrics::new(metrics, scheme),
        RequestLogger::new(state.request_log.as_ref(), remote),
    )
    .layer(chain)
}

/// Layer 1's server spans: named after the method, none for probes, `kn.route.tag` (§3.6) on
/// everything but health checks (which the drainer answers before the route-tag stage).
const SERVER_SPANS: ServerSpans = ServerSpans {
    scope: &OTELHTTP_SCOPE,
    name: None,
    skip: skip_probes,
    annotate: annotate_server_span,
};

fn annotate_server_span(headers: &http::HeaderMap, span: &mut Span) {
    if is_health_check(headers) {
        return;
    }
    let tag: &'static str = match route_tag(headers) {
        RouteTag::Tag(tag) => return span.set_attribute("kn.route.tag", tag.into_owned()),
        RouteTag::Disabled => route_tag::DISABLED,
        RouteTag::Default => route_tag::DEFAULT,
        RouteTag::Undefined => route_tag::UNDEFINED,
    };
    span.set_attribute("kn.route.tag", tag);
}

/// `service.version` of exported spans: the build's commit when the build provides
/// `QUEUE_PROXY_COMMIT`, else the crate version.
const SERVICE_VERSION: &str = match option_env!("QUEUE_PROXY_COMMIT") {
    Some(commit) => commit,
    None => env!("CARGO_PKG_VERSION"),
};

/// The tracer per `tracing.*` and the `OTEL_*` variables (spec §1.3, §7.3), or `None` for
/// protocol `none`. A bad endpoint or sampler argument is fatal.
fn start_tracing(
    config: &Config,
    observability: &ObservabilityConfig,
) -> Result<Option<&'static Tracer>, trace::TraceConfigError> {
    let settings = &observability.tracing;
    let protocol = match settings.protocol {
        Protocol::None | Protocol::Prometheus => trace::Protocol::None,
        Protocol::Grpc => trace::Protocol::Grpc,
        Protocol::HttpProtobuf => trace::Protocol::HttpProtobuf,
        Protocol::Stdout => trace::Protocol::Stdout,
    };
    let tracing_config = TracingConfig {
        protocol,
        endpoint: settings.endpoint.clone(),
        sampling_rate: settings.sampling_rate,
    };
    let tracer = trace::build_tracer(&tracing_config, &ProcessEnv, trace_resource(config))?;
    if let Some(tracer) = tracer {
        tracing::info!(protocol = ?protocol, sampler = %tracer.sampler(), "tracing enabled");
    }
    Ok(tracer)
}

/// Resource attributes of exported spans (spec §7.1).
fn trace_resource(config: &Config) -> trace::Resource {
    let env = &ProcessEnv;
    let var = |name: &str| env.var(name).unwrap_or_default();
    let pod = Some(var("POD_NAME"))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| var("HOSTNAME"));
    let service_name = [
        var("OTEL_SERVICE_NAME"),
        config.service.clone(),
        config.configuration.clone(),
        config.revision.clone(),
        pod.clone(),
    ]
    .into_iter()
    .find(|name| !name.is_empty())
    .unwrap_or_default();
    let mut resource = trace::Resource::sdk_default(env);
    resource.set("k8s.container.name", "queue-proxy");
    resource.set("k8s.namespace.name", config.namespace.as_str());
    resource.set("k8s.pod.name", pod.as_str());
    resource.set("service.instance.id", pod);
    resource.set("service.version", SERVICE_VERSION);
    resource.set("service.name", service_name);
    for (key, value) in [
        ("kn.service.name", &config.service),
        ("kn.configuration.name", &config.configuration),
        ("kn.revision.name", &config.revision),
    ] {
        if !value.is_empty() {
            resource.set(key, value.as_str());
        }
    }
    resource
}

/// The request-log settings, when `enableRequestLog` asks for them. A template that does not
/// parse disables request logging with one error line; serving goes on (spec §7.2).
fn request_log_settings(
    config: &Config,
    observability: &ObservabilityConfig,
) -> Option<RequestLogSettings> {
    if !observability.enable_request_log {
        return None;
    }
    let text = observability
        .request_log_template
        .as_deref()
        .unwrap_or(DEFAULT_TEMPLATE);
    let template = match RequestLogTemplate::parse(text) {
        Ok(t) => t,
        Err(error) => {
            tracing::error!(%error, "Failed to parse the request log template; request logging is disabled");
            return None;
        }
    };
    Some(RequestLogSettings {
        template,
        revision: RevisionInfo {
            name: config.revision.clone(),
            namespace: config.namespace.clone(),
            service: config.service.clone(),
            configuration: config.configuration.clone(),
            pod_name: config.pod.clone(),
            pod_ip: config.pod_ip.clone(),
        },
        log_probes: observability.enable_probe_request_log,
    })
}
