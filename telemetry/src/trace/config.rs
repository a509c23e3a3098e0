//! From configuration to a [`Tracer`]: the exporter per `tracing.protocol`, the endpoint rules of
//! Knative's `endpointFor` and of the Go SDK's `OTEL_EXPORTER_OTLP_*` handling, the sampler
//! ([`select_sampler`]) and the batch processor's `OTEL_BSP_*` settings.

use std::str::FromStr;
use std::time::Duration;

use http::HeaderMap;

use super::export::otlp::{self, OtlpEndpoint, OtlpExporter, Transport};
use super::export::stdout::StdoutExporter;
use super::export::ExportError;
use super::resource::Resource;
use super::sampler::{select_sampler, Sampler, SamplerArgError};
use super::url::{self, GoUrl};
use super::Tracer;
use knative_common::env::Env;

/// `tracing.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// No tracing (the default): no spans, context passes through untouched.
    #[default]
    None,
    /// OTLP over gRPC.
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
    /// JSON lines on standard output.
    Stdout,
}

/// A protocol name that is not one of `none`, `grpc`, `http/protobuf`, `stdout`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported tracing protocol {0:?}")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Protocol::None),
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "stdout" => Ok(Protocol::Stdout),
            other => Err(UnknownProtocol(other.to_owned())),
        }
    }
}

/// The `tracing.*` settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TracingConfig {
    /// Exporter.
    pub protocol: Protocol,
    /// OTLP endpoint (`host:port` is taken as `https://host:port`).
    pub endpoint: String,
    /// Sampling rate 0..1.
    pub sampling_rate: f64,
}

/// Why tracing cannot be set up (fatal at start-up).
#[derive(Debug, thiserror::Error)]
pub enum TraceConfigError {
    /// `tracing.endpoint` does not parse as a URL.
    #[error("unable to process traces endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The configured value.
        endpoint: String,
        /// Go's parse error.
        reason: String,
    },
    /// `OTEL_TRACES_SAMPLER_ARG` does not parse.
    #[error(transparent)]
    SamplerArg(#[from] SamplerArgError),
    /// The exporter could not be created.
    #[error("error creating tracer exporter: {0}")]
    Exporter(#[from] ExportError),
    /// Not called inside a tokio runtime.
    #[error("tracing must be started inside a tokio runtime")]
    NoRuntime,
}

/// Which OTLP signal an exporter carries: picks the `OTEL_EXPORTER_OTLP_<SIGNAL>_*` variables,
/// the default HTTP path and the gRPC method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Signal {
    /// Spans (`/v1/traces`, `TraceService/Export`).
    #[default]
    Traces,
    /// Metrics (`/v1/metrics`, `MetricsService/Export`).
    Metrics,
}

impl Signal {
    /// The default OTLP/HTTP path.
    pub fn default_http_path(self) -> &'static str {
        match self {
            Signal::Traces => otlp::DEFAULT_HTTP_PATH,
            Signal::Metrics => otlp::DEFAULT_METRICS_HTTP_PATH,
        }
    }

    /// The gRPC `Export` method.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => otlp::GRPC_EXPORT_PATH,
            Signal::Metrics => otlp::GRPC_METRICS_EXPORT_PATH,
        }
    }

    fn var(self, suffix: &str) -> String {
        let signal = match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        };
        format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}")
    }
}

/// Batch span processor settings (Go SDK defaults; `OTEL_BSP_*` in milliseconds or counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Spans queued before new ones are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048).
    pub max_queue_size: usize,
    /// Spans per export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512; at most the queue size).
    pub max_export_batch_size: usize,
    /// Longest time a span waits before export (`OTEL_BSP_SCHEDULE_DELAY`, 5 s).
    pub schedule_delay: Duration,
    /// Limit for one export (`OTEL_BSP_EXPORT_TIMEOUT`, 30 s).
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            schedule_delay: Duration::from_millis(5000),
            export_timeout: Duration::from_millis(30_000),
        }
    }
}

fn positive_env(env: &dyn Env, name: &str) -> Option<u64> {
    env.var(name)?.trim().parse::<u64>().ok().filter(|v| *v > 0)
}

impl BatchConfig {
    /// Defaults overridden by the `OTEL_BSP_*` variables (values that are not positive integers
    /// are ignored).
    pub fn from_env(env: &dyn Env) -> Self {
        let mut config = BatchConfig::default();
        if let Some(v) = positive_env(env, "OTEL_BSP_MAX_QUEUE_SIZE") {
            config.max_queue_size = usize::try_from(v).unwrap_or(usize::MAX).min(1 << 20);
        }
        if let Some(v) = positive_env(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
            config.max_export_batch_size = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = positive_env(env, "OTEL_BSP_SCHEDULE_DELAY") {
            config.schedule_delay = Duration::from_millis(v);
        }
        if let Some(v) = positive_env(env, "OTEL_BSP_EXPORT_TIMEOUT") {
            config.export_timeout = Duration::from_millis(v);
        }
        config.normalized()
    }

    /// Every value usable: non-zero, batch no larger than the queue.
    pub fn normalized(mut self) -> Self {
        self.max_queue_size = self.max_queue_size.max(1);
        self.max_export_batch_size = self.max_export_batch_size.clamp(1, self.max_queue_size);
        if self.schedule_delay.is_zero() {
            self.schedule_delay = BatchConfig::default().schedule_delay;
        }
        if self.export_timeout.is_zero() {
            self.export_timeout = BatchConfig::default().export_timeout;
        }
        self
    }
}

/// The exporter a configuration asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum ExporterPlan {
    /// JSON lines on stdout.
    Stdout,
    /// OTLP.
    Otlp {
        /// Transport.
        transport: Transport,
        /// Where to.
        endpoint: OtlpEndpoint,
        /// Extra request headers (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`).
        headers: HeaderMap,
        /// Per-export limit (`OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, default 10 s).
        timeout: Duration,
    },
}

/// Everything needed to build the tracer.
#[derive(Clone, Debug, PartialEq)]
pub struct TracerPlan {
    /// Exporter.
    pub exporter: ExporterPlan,
    /// Sampler.
    pub sampler: Sampler,
    /// Batch processor settings.
    pub batch: BatchConfig,
}

/// Go's `path.Clean`.
fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// The exporter's `cleanPath`: trimmed and cleaned, absolute; empty → `default`.
fn otlp_path(path: &str, default: &str) -> String {
    let cleaned = clean_path(path.trim());
    if cleaned == "." {
        return default.to_owned();
    }
    if cleaned.starts_with('/') {
        cleaned
    } else {
        format!("/{cleaned}")
    }
}

fn default_port(transport: Transport, tls: bool) -> u16 {
    match transport {
        // grpc-go's default port.
        Transport::Grpc => 443,
        Transport::HttpProtobuf if tls => 443,
        Transport::HttpProtobuf => 80,
    }
}

/// The SDK's default endpoint (`localhost:4317` / `localhost:4318/v1/<signal>`, TLS).
fn sdk_default_endpoint(signal: Signal, transport: Transport) -> OtlpEndpoint {
    OtlpEndpoint {
        tls: true,
        host: "localhost".into(),
        port: match transport {
            Transport::Grpc => 4317,
            Transport::HttpProtobuf => 4318,
        },
        path: signal.default_http_path().into(),
    }
}

fn endpoint_from_url(transport: Transport, url: &GoUrl, tls: bool, path: String) -> OtlpEndpoint {
    let host = match url.hostname() {
        "" => "localhost".to_owned(),
        h => h.to_owned(),
    };
    OtlpEndpoint {
        tls,
        host,
        port: url.port().unwrap_or_else(|| default_port(transport, tls)),
        path,
    }
}

/// The endpoint from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is, empty path → `/`) or else
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base: `/v1/traces` appended); scheme `http`/`unix` is
/// plaintext, anything else TLS. A value that does not parse is ignored with a warning, as the SDK
/// does, leaving the SDK default. (`TRACES`/`/v1/traces` stand for the signal's names.)
fn endpoint_from_env(signal: Signal, transport: Transport, env: &dyn Env) -> OtlpEndpoint {
    let parsed = |name: &str| -> Option<GoUrl> {
        let value = env.var(name).filter(|v| !v.is_empty())?;
        match url::parse(&value) {
            Ok(u) => Some(u),
            Err(error) => {
                tracing::warn!(
                    variable = name,
                    value,
                    error,
                    "ignoring an invalid OTLP endpoint"
                );
                None
            }
        }
    };
    let tls_of = |u: &GoUrl| !matches!(u.scheme.as_str(), "http" | "unix");
    if let Some(u) = parsed(&signal.var("ENDPOINT")) {
        let path = if u.path.is_empty() {
            "/".to_owned()
        } else {
            u.path.clone()
        };
        return endpoint_from_url(transport, &u, tls_of(&u), path);
    }
    if let Some(u) = parsed("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let path = clean_path(&format!("{}/{}", u.path, signal.default_http_path()));
        return endpoint_from_url(transport, &u, tls_of(&u), path);
    }
    sdk_default_endpoint(signal, transport)
}

/// Knative's `endpointFor`: if either `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is non-empty the configured endpoint is ignored and the SDK
/// reads the environment ([`endpoint_from_env`]). Otherwise the configured endpoint must parse as
/// a URL (else a fatal error); an opaque `host:port` form becomes `https://host:port`; the scheme
/// decides TLS (`https`) or plaintext (anything else); the path is used as is, an empty one
/// meaning `/v1/traces` (`http/protobuf` only — gRPC ignores it).
pub fn resolve_endpoint(
    transport: Transport,
    configured: &str,
    env: &dyn Env,
) -> Result<OtlpEndpoint, TraceConfigError> {
    resolve_signal_endpoint(Signal::Traces, transport, configured, env)
}

/// [`resolve_endpoint`] for any signal: `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT` and the signal's
/// default path (`/v1/metrics` for metrics).
pub fn resolve_signal_endpoint(
    signal: Signal,
    transport: Transport,
    configured: &str,
    env: &dyn Env,
) -> Result<OtlpEndpoint, TraceConfigError> {
    let overridden = [
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        signal.var("ENDPOINT"),
    ]
    .iter()
    .any(|name| env.var(name).is_some_and(|v| !v.is_empty()));
    if overridden {
        return Ok(endpoint_from_env(signal, transport, env));
    }
    let invalid = |reason: String| TraceConfigError::Endpoint {
        endpoint: configured.to_owned(),
        reason,
    };
    let mut parsed = url::parse(configured).map_err(invalid)?;
    if !parsed.opaque.is_empty() {
        parsed = url::parse(&format!("https://{configured}")).map_err(invalid)?;
    }
    let tls = parsed.scheme == "https";
    let path = otlp_path(&parsed.path, signal.default_http_path());
    if parsed.host.is_empty() {
        tracing::warn!(
            endpoint = configured,
            ?signal,
            "the OTLP endpoint names no host; exporting to the OTLP default port on localhost"
        );
        return Ok(OtlpEndpoint {
            tls,
            path,
            ..sdk_default_endpoint(signal, transport)
        });
    }
    Ok(endpoint_from_url(transport, &parsed, tls, path))
}

/// Extra headers: `OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS` if set, else `OTEL_EXPORTER_OTLP_HEADERS`.
fn headers_from_env(signal: Signal, env: &dyn Env) -> HeaderMap {
    env.var(&signal.var("HEADERS"))
        .or_else(|| env.var("OTEL_EXPORTER_OTLP_HEADERS"))
        .map(|text| otlp::parse_headers(&text))
        .unwrap_or_default()
}

/// Export timeout: `OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT` (ms),
/// else 10 s.
fn timeout_from_env(signal: Signal, env: &dyn Env) -> Duration {
    positive_env(env, &signal.var("TIMEOUT"))
        .or_else(|| positive_env(env, "OTEL_EXPORTER_OTLP_TIMEOUT"))
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

impl TracingConfig {
    /// What to build, or `None` when the protocol is `none`. Fails on an endpoint that does not
    /// parse or an `OTEL_TRACES_SAMPLER_ARG` that is not a number.
    pub fn plan(&self, env: &dyn Env) -> Result<Option<TracerPlan>, TraceConfigError> {
        let transport = match self.protocol {
            Protocol::None => return Ok(None),
            Protocol::Stdout => None,
            Protocol::Grpc => Some(Transport::Grpc),
            Protocol::HttpProtobuf => Some(Transport::HttpProtobuf),
        };
        let exporter = match transport {
            None => ExporterPlan::Stdout,
            Some(transport) => ExporterPlan::Otlp {
                transport,
                endpoint: resolve_endpoint(transport, &self.endpoint, env)?,
                headers: headers_from_env(Signal::Traces, env),
                timeout: timeout_from_env(Signal::Traces, env),
            },
        };
        let sampler = select_sampler(self.protocol, self.sampling_rate, env)?;
        Ok(Some(TracerPlan {
            exporter,
            sampler,
            batch: BatchConfig::from_env(env),
        }))
    }
}

/// An OTLP exporter for `signal` per the same rules as the span exporter: endpoint from
/// `configured` or the `OTEL_EXPORTER_OTLP_*` variables ([`resolve_signal_endpoint`]), headers and
/// timeout from `OTEL_EXPORTER_OTLP_[<SIGNAL>_]{HEADERS,TIMEOUT}`, the signal's gRPC method.
pub fn otlp_exporter(
    signal: Signal,
    transport: Transport,
    configured: &str,
    env: &dyn Env,
) -> Result<OtlpExporter, TraceConfigError> {
    let endpoint = resolve_signal_endpoint(signal, transport, configured, env)?;
    let exporter = OtlpExporter::new(
        transport,
        endpoint,
        headers_from_env(signal, env),
        timeout_from_env(signal, env),
    )?;
    Ok(exporter.with_grpc_path(signal.grpc_path()))
}

/// Builds the process tracer for `config` (none for protocol `none`), describing the process
/// with `resource`. Must run inside a tokio runtime (it starts the export task).
pub fn build_tracer(
    config: &TracingConfig,
    env: &dyn Env,
    resource: Resource,
) -> Result<Option<&'static Tracer>, TraceConfigError> {
    let Some(plan) = config.plan(env)? else {
        return Ok(None);
    };
    let builder = match plan.exporter {
        ExporterPlan::Stdout => Tracer::builder(StdoutExporter::new()),
        ExporterPlan::Otlp {
            transport,
            endpoint,
            headers,
            timeout,
        } => Tracer::builder(OtlpExporter::new(transport, endpoint, headers, timeout)?),
    };
    let tracer = builder
        .sampler(plan.sampler)
        .resource(resource)
        .batch(plan.batch)
        .build()?;
    Ok(Some(tracer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    fn ep(tls: bool, host: &str, port: u16, path: &str) -> OtlpEndpoint {
        OtlpEndpoint {
            tls,
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    fn resolve(t: Transport, configured: &str, e: &[(&'static str, &'static str)]) -> OtlpEndpoint {
        resolve_endpoint(t, configured, &env(e)).unwrap()
    }

    #[test]
    fn configured_endpoint_rules() {
        use Transport::*;
        // host:port (opaque) → https.
        assert_eq!(
            resolve(Grpc, "otel-collector.observability:4317", &[]),
            ep(true, "otel-collector.observability", 4317, "/v1/traces")
        );
        assert_eq!(
            resolve(HttpProtobuf, "collector:4318", &[]),
            ep(true, "collector", 4318, "/v1/traces")
        );
        // Explicit schemes; the http path is used as is, empty → /v1/traces.
        assert_eq!(
            resolve(HttpProtobuf, "http://collector:4318/v1/traces", &[]),
            ep(false, "collector", 4318, "/v1/traces")
        );
        assert_eq!(
            resolve(HttpProtobuf, "http://collector:4318", &[]),
            ep(false, "collector", 4318, "/v1/traces")
        );
        assert_eq!(
            resolve(HttpProtobuf, "http://collector:4318/", &[]),
            ep(false, "collector", 4318, "/")
        );
        assert_eq!(
            resolve(HttpProtobuf, "https://collector/custom//path/", &[]),
            ep(true, "collector", 443, "/custom/path")
        );
        assert_eq!(
            resolve(HttpProtobuf, "http://collector", &[]),
            ep(false, "collector", 80, "/v1/traces")
        );
        assert_eq!(
            resolve(Grpc, "http://[::1]:4317", &[]),
            ep(false, "::1", 4317, "/v1/traces")
        );
        assert_eq!(
            resolve(Grpc, "http://[::1]:4317", &[]).authority(),
            "[::1]:4317"
        );
        // Anything but https is plaintext.
        assert!(!resolve(Grpc, "grpc://collector:4317/", &[]).tls);
        // Empty → localhost.
        assert_eq!(
            resolve(Grpc, "", &[]),
            ep(false, "localhost", 4317, "/v1/traces")
        );
        assert_eq!(
            resolve(HttpProtobuf, "", &[]),
            ep(false, "localhost", 4318, "/v1/traces")
        );
        // Go's parse errors are fatal.
        for bad in [
            "127.0.0.1:4317",
            "http://[::1",
            "http://host:port",
            ":4317",
            "http://a b",
        ] {
            let e = resolve_endpoint(Grpc, bad, &env(&[])).unwrap_err();
            assert!(matches!(e, TraceConfigError::Endpoint { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn env_endpoints_override() {
        use Transport::*;
        // Any override ignores the configured endpoint, even one that does not parse.
        assert_eq!(
            resolve(
                HttpProtobuf,
                "127.0.0.1:4317",
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318/base/")]
            ),
            ep(false, "env", 4318, "/base/v1/traces")
        );
        assert_eq!(
            resolve(
                HttpProtobuf,
                "x:1",
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:4318")
                ]
            ),
            ep(true, "traces", 4318, "/")
        );
        assert_eq!(
            resolve(
                Grpc,
                "x:1",
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")]
            ),
            ep(false, "traces", 4317, "/")
        );
        // An unparsable env value leaves the SDK default.
        assert_eq!(
            resolve(
                Grpc,
                "x:1",
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[bad")]
            ),
            ep(true, "localhost", 4317, "/v1/traces")
        );
        // Empty values do not count as overrides.
        assert_eq!(
            resolve(Grpc, "x:1", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]),
            ep(true, "x", 1, "/v1/traces")
        );
    }

    #[test]
    fn metrics_signal_endpoints() {
        use Transport::*;
        let metrics = |t, configured: &str, e: &[(&'static str, &'static str)]| {
            resolve_signal_endpoint(Signal::Metrics, t, configured, &env(e)).unwrap()
        };
        assert_eq!(
            metrics(HttpProtobuf, "http://c:4318", &[]),
            ep(false, "c", 4318, "/v1/metrics")
        );
        assert_eq!(
            metrics(HttpProtobuf, "c:4318", &[]),
            ep(true, "c", 4318, "/v1/metrics")
        );
        // The traces variable does not apply to metrics, the metrics one does.
        assert_eq!(
            metrics(
                HttpProtobuf,
                "http://c:4318",
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1")]
            ),
            ep(false, "c", 4318, "/v1/metrics")
        );
        assert_eq!(
            metrics(
                HttpProtobuf,
                "http://c:4318",
                &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:2/x")]
            ),
            ep(false, "m", 2, "/x")
        );
        assert_eq!(
            metrics(
                Grpc,
                "",
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:3/p")]
            ),
            ep(false, "base", 3, "/p/v1/metrics")
        );
        let exporter = otlp_exporter(Signal::Metrics, Grpc, "http://c:4317", &env(&[])).unwrap();
        assert_eq!(exporter.endpoint(), &ep(false, "c", 4317, "/v1/metrics"));
    }

    #[test]
    fn plans() {
        let c = |protocol, endpoint: &str, rate| TracingConfig {
            protocol,
            endpoint: endpoint.into(),
            sampling_rate: rate,
        };
        assert_eq!(
            c(Protocol::None, "junk[", 1.0).plan(&env(&[])).unwrap(),
            None
        );
        let plan = c(Protocol::Stdout, "", 0.0)
            .plan(&env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(plan.exporter, ExporterPlan::Stdout);
        assert_eq!(plan.sampler, Sampler::ALWAYS_ON);
        let plan = c(Protocol::HttpProtobuf, "http://c:4318/v1/traces", 0.5)
            .plan(&env(&[
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,bad"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "50"),
                ("OTEL_BSP_EXPORT_TIMEOUT", "-1"),
            ]))
            .unwrap()
            .unwrap();
        let ExporterPlan::Otlp {
            headers, timeout, ..
        } = &plan.exporter
        else {
            panic!("{plan:?}")
        };
        assert_eq!(headers["api-key"], "a b");
        assert_eq!(headers.len(), 1);
        assert_eq!(*timeout, Duration::from_millis(2500));
        assert_eq!(plan.batch.schedule_delay, Duration::from_millis(100));
        assert_eq!(plan.batch.max_queue_size, 10);
        assert_eq!(plan.batch.max_export_batch_size, 10);
        assert_eq!(plan.batch.export_timeout, Duration::from_secs(30));
        assert!(matches!(
            c(Protocol::Grpc, "c:4317", 0.5).plan(&env(&[("OTEL_TRACES_SAMPLER_ARG", "x")])),
            Err(TraceConfigError::SamplerArg(_))
        ));
        assert!(matches!(
            c(Protocol::Grpc, "127.0.0.1:4317", 0.5).plan(&env(&[])),
            Err(TraceConfigError::Endpoint { .. })
        ));
        assert_eq!("http/protobuf".parse(), Ok(Protocol::HttpProtobuf));
        assert!("zipkin".parse::<Protocol>().is_err());
    }

    #[test]
    fn go_path_clean() {
        for (input, want) in [
            ("", "."),
            ("/", "/"),
            ("a/b/../c", "a/c"),
            ("/../a", "/a"),
            ("../a", "../a"),
            ("//a//b/", "/a/b"),
            ("/a/./b/.", "/a/b"),
        ] {
            assert_eq!(clean_path(input), want, "{input:?}");
        }
    }
}
