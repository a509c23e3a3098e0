//! The activator's metrics (spec §7.1), stored in atomics and written as Prometheus text through
//! `prometheus-client` the way the Go OTel Prometheus exporter renders them: families in
//! alphabetical order, families without data left out, `otel_scope_*` labels on every series and a
//! `target_info` series for the resource.
//!
//! Per request the cost is one lookup of the revision's [`RevisionMetrics`] handle (a `DashMap`
//! read, created once per revision), relaxed atomic adds, and at the end of the response one
//! short scan of that revision's few `http.server.*` series under a read lock. No label is
//! allocated per request: label values are owned by the handle and the series.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use http::{Method, Version};
use knative_telemetry::metrics::{
    label, AtomicHistogram, Completion, Scope, DURATION_BUCKETS, SIZE_BUCKETS,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::discovery::RevisionSpec;
use crate::reporter::AutoscalerConnection;
use crate::throttler::RevisionId;

/// Scope of the activator's own instruments.
const ACTIVATOR_SCOPE: Scope = Scope {
    name: "knative.dev/serving/pkg/activator",
    version: "",
};

/// Scope of the HTTP server instruments (Go's `otelhttp` 0.69.0).
const OTELHTTP_SCOPE: Scope = Scope {
    name: "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
    version: "0.69.0",
};

/// Most distinct `http.server.*` label sets kept per revision (method × status × host × …).
/// Past it, measurements for new label sets are dropped and counted in
/// [`ActivatorMetrics::dropped_series`] (upstream's SDK folds them into an overflow series; a
/// revision seeing this many distinct hosts or methods is pathological either way).
pub const SERIES_PER_REVISION: usize = 64;

/// `service.version` of `target_info`.
const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The four revision attributes (§2.7) plus the handle's instruments.
#[derive(Debug)]
pub struct RevisionMetrics {
    namespace: Box<str>,
    name: Box<str>,
    service: Box<str>,
    configuration: Box<str>,
    /// Whether this is the pseudo-revision of requests without a known revision (no revision
    /// labels on its series).
    anonymous: bool,
    queued: AtomicI64,
    active: AtomicI64,
    /// Whether queued/active were ever touched (upstream's series appear on first `Add`).
    requests_seen: AtomicBool,
    /// `f64` bits of the last reported concurrency.
    concurrency: AtomicU64,
    concurrency_seen: AtomicBool,
    /// Requests answered `503 pending request queue full` (ours: `kn_revision_request_refused`).
    refused: AtomicU64,
    server: RwLock<Vec<Arc<ServerSeries>>>,
}

impl RevisionMetrics {
    fn new(revision: Option<&RevisionSpec>) -> Self {
        let (namespace, name, service, configuration) = match revision {
            Some(r) => (
                r.id.namespace.as_str(),
                r.id.name.as_str(),
                r.service.as_str(),
                r.configuration.as_str(),
            ),
            None => ("", "", "", ""),
        };
        RevisionMetrics {
            namespace: namespace.into(),
            name: name.into(),
            service: service.into(),
            configuration: configuration.into(),
            anonymous: revision.is_none(),
            queued: AtomicI64::new(0),
            active: AtomicI64::new(0),
            requests_seen: AtomicBool::new(false),
            concurrency: AtomicU64::new(0),
            concurrency_seen: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            server: RwLock::new(Vec::new()),
        }
    }

    /// A request starts waiting in the throttler (`kn.revision.request.queued` += 1).
    #[inline]
    pub fn queued(self: &Arc<Self>) -> QueuedGuard {
        self.requests_seen.store(true, Ordering::Relaxed);
        self.queued.fetch_add(1, Ordering::Relaxed);
        QueuedGuard(self.clone())
    }

    /// A request was refused because the queues were full (per-revision cap, or the
    /// activator-wide cap's fair share).
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the concurrency gauge of one reporter tick.
    pub fn set_concurrency(&self, value: f64) {
        self.concurrency.store(value.to_bits(), Ordering::Relaxed);
        self.concurrency_seen.store(true, Ordering::Relaxed);
    }

    fn series(&self, key: &ServerKey<'_>) -> Option<Arc<ServerSeries>> {
        let find = |all: &[Arc<ServerSeries>]| all.iter().find(|s| s.key.view() == *key).cloned();
        if let Some(found) = find(&self.server.read().unwrap_or_else(|e| e.into_inner())) {
            return Some(found);
        }
        let mut all = self.server.write().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = find(&all) {
            return Some(found);
        }
        if all.len() >= SERIES_PER_REVISION {
            return None;
        }
        let series = Arc::new(ServerSeries {
            key: key.owned(),
            duration: AtomicHistogram::new(&DURATION_BUCKETS),
            request_size: AtomicHistogram::new(&SIZE_BUCKETS),
            response_size: AtomicHistogram::new(&SIZE_BUCKETS),
        });
        all.push(series.clone());
        Some(series)
    }

    fn encode_revision_labels(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        if self.anonymous {
            return Ok(());
        }
        label(encoder, "k8s_namespace_name", &self.namespace)?;
        label(encoder, "kn_configuration_name", &self.configuration)?;
        label(encoder, "kn_revision_name", &self.name)?;
        label(encoder, "kn_service_name", &self.service)
    }
}

/// Held while a request waits in the throttler; [`QueuedGuard::activate`] moves it to active.
#[derive(Debug)]
pub struct QueuedGuard(Arc<RevisionMetrics>);

impl QueuedGuard {
    /// The request got capacity: queued −= 1, active += 1 until the returned guard drops.
    pub fn activate(self) -> ActiveGuard {
        self.0.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.0.clone())
    }
}

impl Drop for QueuedGuard {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held while a request is proxied (until the whole response was sent).
#[derive(Debug)]
pub struct ActiveGuard(Arc<RevisionMetrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `http.request.method` as `otelhttp` standardizes it (unknown → `_OTHER`).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method.as_str()))
        .copied()
        .unwrap_or("_OTHER")
}

fn version_label(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        Version::HTTP_09 => "0.9",
        _ => "1.1",
    }
}

/// Host and port of a `Host` value (IPv6 brackets removed), as `otelhttp`'s `server.address` and
/// `server.port`.
fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (host, None),
    }
}

/// The request-side labels of one `http.server.*` series (borrowed: lookup key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ServerKey<'a> {
    method: &'static str,
    status: u16,
    version: &'static str,
    host: &'a str,
    port: Option<u16>,
}

#[derive(Debug)]
struct OwnedServerKey {
    method: &'static str,
    status: u16,
    version: &'static str,
    host: Box<str>,
    port: Option<u16>,
}

impl ServerKey<'_> {
    fn owned(self) -> OwnedServerKey {
        OwnedServerKey {
            method: self.method,
            status: self.status,
            version: self.version,
            host: self.host.into(),
            port: self.port,
        }
    }
}

impl OwnedServerKey {
    fn view(&self) -> ServerKey<'_> {
        ServerKey {
            method: self.method,
            status: self.status,
            version: self.version,
            host: &self.host,
            port: self.port,
        }
    }
}

/// The three histograms of one label set.
#[derive(Debug)]
struct ServerSeries {
    key: OwnedServerKey,
    duration: AtomicHistogram,
    request_size: AtomicHistogram,
    response_size: AtomicHistogram,
}

/// A running `http.server.*` measurement; settled by the response's end.
#[derive(Debug)]
pub struct ServerMeasure {
    metrics: &'static ActivatorMetrics,
    revision: Arc<RevisionMetrics>,
    method: &'static str,
    version: &'static str,
    host: Box<str>,
    port: Option<u16>,
    request_bytes: u64,
    start: Instant,
    status: u16,
}

impl ServerMeasure {
    pub(super) fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub(super) fn finish(self, response_bytes: u64) {
        let key = ServerKey {
            method: self.method,
            status: self.status,
            version: self.version,
            host: &self.host,
            port: self.port,
        };
        match self.revision.series(&key) {
            Some(series) => {
                series.duration.observe(self.start.elapsed().as_secs_f64());
                series.request_size.observe(self.request_bytes as f64);
                series.response_size.observe(response_bytes as f64);
            }
            None => {
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Completion for ServerMeasure {
    fn respond(&mut self, status: http::StatusCode) {
        self.status = status.as_u16();
    }
    fn complete(self, response_bytes: u64) {
        self.finish(response_bytes);
    }
    fn abort(self, _responded: bool) {}
}

/// Everything the activator measures, and its Prometheus registry.
pub struct ActivatorMetrics {
    revisions: DashMap<RevisionId, Arc<RevisionMetrics>, crate::FastHash>,
    anonymous: Arc<RevisionMetrics>,
    autoscaler: RwLock<Option<Arc<AutoscalerConnection>>>,
    /// `target_info` labels, sorted.
    resource: BTreeMap<&'static str, String>,
    dropped: AtomicU64,
    /// When recording began (start of the cumulative OTLP data points).
    start: std::time::SystemTime,
}

impl fmt::Debug for ActivatorMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivatorMetrics")
            .field("revisions", &self.revisions.len())
            .finish_non_exhaustive()
    }
}

impl ActivatorMetrics {
    /// Empty instruments for the activator pod `pod_name` in `system_namespace`; `service_name`
    /// is `OTEL_SERVICE_NAME` or `activator`.
    pub fn new(pod_name: &str, system_namespace: &str, service_name: &str) -> Self {
        let mut resource = BTreeMap::new();
        resource.insert("k8s_namespace_name", system_namespace.to_owned());
        resource.insert("k8s_pod_name", pod_name.to_owned());
        resource.insert("service_instance_id", pod_name.to_owned());
        resource.insert("service_name", service_name.to_owned());
        resource.insert("service_version", SERVICE_VERSION.to_owned());
        resource.insert("telemetry_sdk_language", "rust".to_owned());
        resource.insert("telemetry_sdk_name", "prometheus-client".to_owned());
        resource.insert("telemetry_sdk_version", "0.25".to_owned());
        ActivatorMetrics {
            revisions: DashMap::default(),
            anonymous: Arc::new(RevisionMetrics::new(None)),
            autoscaler: RwLock::new(None),
            resource,
            dropped: AtomicU64::new(0),
            start: std::time::SystemTime::now(),
        }
    }

    /// Reads `kn.activator.stats.conn.*` from this connection at scrape time.
    pub fn watch_autoscaler(&self, connection: Arc<AutoscalerConnection>) {
        *self.autoscaler.write().unwrap_or_else(|e| e.into_inner()) = Some(connection);
    }

    /// The handle of `revision`, created on first use.
    #[inline]
    pub fn revision(&self, revision: &RevisionSpec) -> Arc<RevisionMetrics> {
        if let Some(found) = self.revisions.get(&revision.id) {
            return found.clone();
        }
        self.revisions
            .entry(revision.id.clone())
            .or_insert_with(|| Arc::new(RevisionMetrics::new(Some(revision))))
            .clone()
    }

    /// The existing handle of `id`, if any request for it was measured.
    pub fn existing(&self, id: &RevisionId) -> Option<Arc<RevisionMetrics>> {
        self.revisions.get(id).map(|r| r.clone())
    }

    /// Measurements dropped past [`SERIES_PER_REVISION`].
    pub fn dropped_series(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Starts an `http.server.*` measurement of `request` for `revision` (`None`: unknown
    /// revision, recorded without revision labels).
    pub fn start<B: http_body::Body>(
        &'static self,
        request: &http::Request<B>,
        revision: Option<Arc<RevisionMetrics>>,
    ) -> ServerMeasure {
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let (host, port) = split_host_port(host);
        ServerMeasure {
            metrics: self,
            revision: revision.unwrap_or_else(|| self.anonymous.clone()),
            method: method_label(request.method()),
            version: version_label(request.version()),
            host: host.into(),
            // `server.port` only when it differs from the scheme's default (plaintext here).
            port: port.filter(|p| *p != 80 && *p > 0),
            request_bytes: request.body().size_hint().exact().unwrap_or(0),
            start: Instant::now(),
            status: 200,
        }
    }

    /// A registry whose only collector writes these metrics.
    pub fn registry(&'static self) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(self)));
        registry
    }

    /// The Prometheus text exposition.
    pub fn encode(&'static self) -> String {
        let mut text = String::with_capacity(4096);
        if let Err(error) =
            prometheus_client::encoding::text::encode_registry(&mut text, &self.registry())
        {
            tracing::warn!(%error, "encoding metrics failed");
        }
        text
    }

    fn sorted_revisions(&self) -> Vec<Arc<RevisionMetrics>> {
        let mut all: Vec<Arc<RevisionMetrics>> =
            self.revisions.iter().map(|r| r.value().clone()).collect();
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all.insert(0, self.anonymous.clone());
        all
    }
}

/// OTLP push (spec §7.1 with `metrics-protocol` `grpc` / `http/protobuf`): the same
/// instruments with their OTel names, units and dotted attribute keys, cumulative.
impl ActivatorMetrics {
    /// The export request for everything recorded so far (`now`: the data points' time).
    pub fn otlp_request(
        &self,
        now: std::time::SystemTime,
    ) -> knative_telemetry::metrics::otlp::proto::ExportMetricsServiceRequest {
        use knative_telemetry::metrics::otlp::{
            export_request, gauge, histogram, histogram_point, int_kv, proto, scope_metrics,
            string_kv, sum, unix_nanos, Times,
        };
        use proto::number_data_point::Value;
        let times = Times {
            start: unix_nanos(self.start),
            now: unix_nanos(now),
        };
        let revisions = self.sorted_revisions();
        let revision_kvs = |r: &RevisionMetrics, short: bool| {
            let mut kvs = Vec::with_capacity(4);
            if r.anonymous {
                return kvs;
            }
            kvs.push(string_kv("k8s.namespace.name", &r.namespace));
            if !short {
                kvs.push(string_kv("kn.configuration.name", &r.configuration));
            }
            kvs.push(string_kv("kn.revision.name", &r.name));
            if !short {
                kvs.push(string_kv("kn.service.name", &r.service));
            }
            kvs
        };
        let mut server_rows = Vec::new();
        for r in &revisions {
            for s in r.server.read().unwrap_or_else(|e| e.into_inner()).iter() {
                let mut kvs = revision_kvs(r, false);
                kvs.push(string_kv("http.request.method", s.key.method));
                kvs.push(int_kv("http.response.status_code", i64::from(s.key.status)));
                kvs.push(string_kv("network.protocol.name", "http"));
                kvs.push(string_kv("network.protocol.version", s.key.version));
                kvs.push(string_kv("server.address", &s.key.host));
                if let Some(port) = s.key.port {
                    kvs.push(int_kv("server.port", i64::from(port)));
                }
                kvs.push(string_kv("url.scheme", "http"));
                server_rows.push((kvs, s.clone()));
            }
        }
        let mut scopes = Vec::new();
        if !server_rows.is_empty() {
            type Pick = fn(&ServerSeries) -> &AtomicHistogram;
            let families: [(&str, &str, &str, Pick); 3] = [
                (
                    "http.server.request.duration",
                    "Duration of HTTP server requests.",
                    "s",
                    |s| &s.duration,
                ),
                (
                    "http.server.request.body.size",
                    "Size of HTTP server request bodies.",
                    "By",
                    |s| &s.request_size,
                ),
                (
                    "http.server.response.body.size",
                    "Size of HTTP server response bodies.",
                    "By",
                    |s| &s.response_size,
                ),
            ];
            let metrics = families
                .into_iter()
                .map(|(name, description, unit, pick)| {
                    let points = server_rows
                        .iter()
                        .map(|(kvs, s)| histogram_point(kvs.clone(), &pick(s).snapshot(), times))
                        .collect();
                    histogram(name, description, unit, points)
                })
                .collect();
            scopes.push(scope_metrics(
                OTELHTTP_SCOPE.name,
                OTELHTTP_SCOPE.version,
                metrics,
            ));
        }
        let mut own = Vec::new();
        let named: Vec<&Arc<RevisionMetrics>> = revisions.iter().filter(|r| !r.anonymous).collect();
        let concurrency: Vec<_> = named
            .iter()
            .filter(|r| r.concurrency_seen.load(Ordering::Relaxed))
            .map(|r| {
                let value = f64::from_bits(r.concurrency.load(Ordering::Relaxed));
                (revision_kvs(r, false), Value::AsDouble(value))
            })
            .collect();
        if !concurrency.is_empty() {
            own.push(gauge(
                "kn.revision.request.concurrency",
                "Concurrent requests that are routed to Activator",
                "{request}",
                concurrency,
                times,
            ));
        }
        let seen: Vec<&&Arc<RevisionMetrics>> = named
            .iter()
            .filter(|r| r.requests_seen.load(Ordering::Relaxed))
            .collect();
        if !seen.is_empty() {
            for (name, description, pick) in [
                (
                    "kn.revision.request.queued",
                    "Number of requests currently queued in the activator waiting for capacity",
                    (|r: &RevisionMetrics| &r.queued) as fn(&RevisionMetrics) -> &AtomicI64,
                ),
                (
                    "kn.revision.request.active",
                    "Number of requests currently being proxied by the activator",
                    |r: &RevisionMetrics| &r.active,
                ),
            ] {
                let points = seen
                    .iter()
                    .map(|r| {
                        (
                            revision_kvs(r, true),
                            Value::AsInt(pick(r).load(Ordering::Relaxed)),
                        )
                    })
                    .collect();
                own.push(sum(name, description, "{request}", false, points, times));
            }
        }
        let refused: Vec<_> = named
            .iter()
            .filter(|r| r.refused.load(Ordering::Relaxed) > 0)
            .map(|r| {
                let value = i64::try_from(r.refused.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
                (revision_kvs(r, true), Value::AsInt(value))
            })
            .collect();
        if !refused.is_empty() {
            own.push(sum(
                "kn.revision.request.refused",
                "Requests refused by the activator because its queues were full",
                "{request}",
                true,
                refused,
                times,
            ));
        }
        let connection = self
            .autoscaler
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(conn) = connection {
            let peer = || vec![string_kv("peer", "autoscaler")];
            if conn.errors() > 0 || conn.reachable() != 0 {
                own.push(gauge(
                    "kn.activator.stats.conn.reachable",
                    "Whether a peer is reachable from the activator (1 = reachable, 0 = not reachable)",
                    "{reachable}",
                    vec![(peer(), Value::AsInt(conn.reachable()))],
                    times,
                ));
            }
            if conn.errors() > 0 {
                own.push(sum(
                    "kn.activator.stats.conn.errors",
                    "Number of connection errors from the activator",
                    "{error}",
                    true,
                    vec![(
                        peer(),
                        Value::AsInt(i64::try_from(conn.errors()).unwrap_or(i64::MAX)),
                    )],
                    times,
                ));
            }
        }
        if !own.is_empty() {
            scopes.push(scope_metrics(
                ACTIVATOR_SCOPE.name,
                ACTIVATOR_SCOPE.version,
                own,
            ));
        }
        let resource: Vec<(String, &str)> = self
            .resource
            .iter()
            .map(|(k, v)| (k.replace('_', "."), v.as_str()))
            .collect();
        export_request(resource.iter().map(|(k, v)| (k.as_str(), *v)), scopes)
    }
}

/// Labels of one series: the revision's (if any), a scope, and extra pairs.
struct Labels<'a> {
    revision: Option<&'a RevisionMetrics>,
    /// Only `k8s_namespace_name` and `kn_revision_name` (queued / active).
    short: bool,
    server: Option<&'a OwnedServerKey>,
    scope: Scope,
    peer: bool,
}

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        // Alphabetical order, as the Go exporter writes them.
        if let Some(s) = self.server {
            label(encoder, "http_request_method", s.method)?;
            let mut status = itoa_buf();
            label(
                encoder,
                "http_response_status_code",
                fmt_u16(&mut status, s.status),
            )?;
        }
        if let Some(r) = self.revision {
            if self.short {
                label(encoder, "k8s_namespace_name", &r.namespace)?;
                label(encoder, "kn_revision_name", &r.name)?;
            } else {
                r.encode_revision_labels(encoder)?;
            }
        }
        if let Some(s) = self.server {
            label(encoder, "network_protocol_name", "http")?;
            label(encoder, "network_protocol_version", s.version)?;
        }
        self.scope.encode(encoder)?;
        if self.peer {
            label(encoder, "peer", "autoscaler")?;
        }
        if let Some(s) = self.server {
            label(encoder, "server_address", &s.host)?;
            if let Some(port) = s.port {
                let mut buf = itoa_buf();
                label(encoder, "server_port", fmt_u16(&mut buf, port))?;
            }
            label(encoder, "url_scheme", "http")?;
        }
        Ok(())
    }
}

fn itoa_buf() -> [u8; 5] {
    [0; 5]
}

fn fmt_u16(buf: &mut [u8; 5], mut n: u16) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

struct Resource<'a>(&'a BTreeMap<&'static str, String>);

impl EncodeLabelSet for Resource<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        for (k, v) in self.0 {
            label(encoder, k, v)?;
        }
        Ok(())
    }
}

/// The collector registered in the registry.
#[derive(Debug)]
struct Exposition(&'static ActivatorMetrics);

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let m = self.0;
        let revisions = m.sorted_revisions();
        let server: Vec<(Arc<RevisionMetrics>, Vec<Arc<ServerSeries>>)> = revisions
            .iter()
            .map(|r| {
                let series = r.server.read().unwrap_or_else(|e| e.into_inner()).clone();
                (r.clone(), series)
            })
            .filter(|(_, s)| !s.is_empty())
            .collect();
        type Pick = fn(&ServerSeries) -> &AtomicHistogram;
        let families: [(&str, &str, Option<prometheus_client::registry::Unit>, Pick); 3] = [
            (
                "http_server_request_body_size",
                "Size of HTTP server request bodies.",
                Some(prometheus_client::registry::Unit::Bytes),
                |s| &s.request_size,
            ),
            (
                "http_server_request_duration",
                "Duration of HTTP server requests.",
                Some(prometheus_client::registry::Unit::Seconds),
                |s| &s.duration,
            ),
            (
                "http_server_response_body_size",
                "Size of HTTP server response bodies.",
                Some(prometheus_client::registry::Unit::Bytes),
                |s| &s.response_size,
            ),
        ];
        if !server.is_empty() {
            for (name, help, unit, pick) in families {
                let mut family =
                    encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
                for (revision, series) in &server {
                    for s in series {
                        let labels = Labels {
                            revision: Some(revision),
                            short: false,
                            server: Some(&s.key),
                            scope: OTELHTTP_SCOPE,
                            peer: false,
                        };
                        pick(s).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let connection = m
            .autoscaler
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(conn) = &connection {
            let peer = Labels {
                revision: None,
                short: false,
                server: None,
                scope: ACTIVATOR_SCOPE,
                peer: true,
            };
            if conn.errors() > 0 {
                let mut family = encoder.encode_descriptor(
                    "kn_activator_stats_conn_errors",
                    "Number of connection errors from the activator",
                    None,
                    MetricType::Counter,
                )?;
                ConstCounter::new(conn.errors()).encode(family.encode_family(&peer)?)?;
            }
            // Upstream records the gauge on the first connect; before that there is no series.
            if conn.errors() > 0 || conn.reachable() != 0 {
                let mut family = encoder.encode_descriptor(
                    "kn_activator_stats_conn_reachable",
                    "Whether a peer is reachable from the activator (1 = reachable, 0 = not reachable)",
                    None,
                    MetricType::Gauge,
                )?;
                ConstGauge::new(conn.reachable()).encode(family.encode_family(&peer)?)?;
            }
        }
        let named: Vec<&Arc<RevisionMetrics>> = revisions.iter().filter(|r| !r.anonymous).collect();
        let seen: Vec<&&Arc<RevisionMetrics>> = named
            .iter()
            .filter(|r| r.requests_seen.load(Ordering::Relaxed))
            .collect();
        fn short(r: &RevisionMetrics) -> Labels<'_> {
            Labels {
                revision: Some(r),
                short: true,
                server: None,
                scope: ACTIVATOR_SCOPE,
                peer: false,
            }
        }
        if !seen.is_empty() {
            let mut family = encoder.encode_descriptor(
                "kn_revision_request_active",
                "Number of requests currently being proxied by the activator",
                None,
                MetricType::Gauge,
            )?;
            for r in &seen {
                ConstGauge::new(r.active.load(Ordering::Relaxed))
                    .encode(family.encode_family(&short(r))?)?;
            }
        }
        let with_concurrency: Vec<&&Arc<RevisionMetrics>> = named
            .iter()
            .filter(|r| r.concurrency_seen.load(Ordering::Relaxed))
            .collect();
        if !with_concurrency.is_empty() {
            let mut family = encoder.encode_descriptor(
                "kn_revision_request_concurrency",
                "Concurrent requests that are routed to Activator",
                None,
                MetricType::Gauge,
            )?;
            for r in with_concurrency {
                let labels = Labels {
                    revision: Some(r),
                    short: false,
                    server: None,
                    scope: ACTIVATOR_SCOPE,
                    peer: false,
                };
                ConstGauge::new(f64::from_bits(r.concurrency.load(Ordering::Relaxed)))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        if !seen.is_empty() {
            let mut family = encoder.encode_descriptor(
                "kn_revision_request_queued",
                "Number of requests currently queued in the activator waiting for capacity",
                None,
                MetricType::Gauge,
            )?;
            for r in &seen {
                ConstGauge::new(r.queued.load(Ordering::Relaxed))
                    .encode(family.encode_family(&short(r))?)?;
            }
        }
        let refused: Vec<&&Arc<RevisionMetrics>> = named
            .iter()
            .filter(|r| r.refused.load(Ordering::Relaxed) > 0)
            .collect();
        if !refused.is_empty() {
            let mut family = encoder.encode_descriptor(
                "kn_revision_request_refused",
                "Requests refused by the activator because its queues were full",
                None,
                MetricType::Counter,
            )?;
            for r in refused {
                ConstCounter::new(r.refused.load(Ordering::Relaxed))
                    .encode(family.encode_family(&short(r))?)?;
            }
        }
        let mut target =
            encoder.encode_descriptor("target_info", "Target metadata", None, MetricType::Gauge)?;
        ConstGauge::new(1i64).encode(target.encode_family(&Resource(&m.resource))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ns: &str, name: &str) -> RevisionSpec {
        let mut s = RevisionSpec::new(RevisionId::new(ns.to_owned(), name.to_owned()));
        s.service = "svc".into();
        s.configuration = "cfg".into();
        s
    }

    fn metrics() -> &'static ActivatorMetrics {
        Box::leak(Box::new(ActivatorMetrics::new(
            "act-0",
            "knative-serving",
            "activator",
        )))
    }

    fn encode(m: &'static ActivatorMetrics) -> String {
        m.encode()
    }

    #[test]
    fn empty_exposes_only_target_info() {
        let text = encode(metrics());
        assert!(
            text.starts_with("# HELP target_info Target metadata\n"),
            "{text}"
        );
        assert!(text.contains("k8s_pod_name=\"act-0\""), "{text}");
        assert!(text.contains("service_name=\"activator\""), "{text}");
        assert!(!text.contains("kn_revision"), "{text}");
    }

    #[test]
    fn refused_requests_are_counted_per_revision() {
        let m = metrics();
        let noisy = m.revision(&spec("ns", "noisy"));
        let _quiet = m.revision(&spec("ns", "quiet"));
        assert!(!encode(m).contains("kn_revision_request_refused"));
        noisy.refused();
        noisy.refused();
        let text = encode(m);
        assert!(
            text.contains("# TYPE kn_revision_request_refused counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "kn_revision_request_refused_total{k8s_namespace_name=\"ns\",kn_revision_name=\"noisy\","
            ),
            "{text}"
        );
        assert!(!text.contains("kn_revision_name=\"quiet\""), "{text}");
        let otlp = format!("{:?}", m.otlp_request(std::time::SystemTime::now()));
        assert!(otlp.contains("kn.revision.request.refused"), "{otlp}");
    }

    #[test]
    fn queued_active_and_concurrency() {
        let m = metrics();
        let rev = m.revision(&spec("ns", "rev-1"));
        let q1 = rev.queued();
        let q2 = rev.queued();
        let active = q1.activate();
        rev.set_concurrency(2.5);
        let text = encode(m);
        assert!(
            text.contains(
                "kn_revision_request_queued{k8s_namespace_name=\"ns\",kn_revision_name=\"rev-1\",\
                 otel_scope_name=\"knative.dev/serving/pkg/activator\",otel_scope_schema_url=\"\",\
                 otel_scope_version=\"\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kn_revision_request_active{k8s_namespace_name=\"ns\",kn_revision_name=\"rev-1\","
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kn_revision_request_concurrency{k8s_namespace_name=\"ns\",kn_configuration_name=\"cfg\",\
                 kn_revision_name=\"rev-1\",kn_service_name=\"svc\",\
                 otel_scope_name=\"knative.dev/serving/pkg/activator\",otel_scope_schema_url=\"\",\
                 otel_scope_version=\"\"} 2.5\n"
            ),
            "{text}"
        );
        drop((q2, active));
        let text = encode(m);
        assert!(text.contains("kn_revision_request_queued{") && text.contains("} 0\n"));
        assert_eq!(rev.queued.load(Ordering::Relaxed), 0);
        assert_eq!(rev.active.load(Ordering::Relaxed), 0);
        // Same handle for the same revision.
        assert!(Arc::ptr_eq(&rev, &m.revision(&spec("ns", "rev-1"))));
    }

    #[test]
    fn server_series_carry_revision_and_semconv_labels() {
        let m = metrics();
        let rev = m.revision(&spec("ns", "rev-1"));
        let request = http::Request::builder()
            .method("POST")
            .uri("/x")
            .header("host", "rev-1.ns.svc.cluster.local:8012")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"abc")))
            .unwrap();
        let mut measure = m.start(&request, Some(rev));
        measure.set_status(201);
        measure.finish(7);
        let unknown = http::Request::builder()
            .uri("/")
            .header("host", "example.com")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let mut measure = m.start(&unknown, None);
        measure.set_status(404);
        measure.finish(10);
        let text = encode(m);
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(
                    "http_server_request_duration_seconds_count{http_request_method=\"POST\"",
                )
            })
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(
            line,
            "http_server_request_duration_seconds_count{http_request_method=\"POST\",\
             http_response_status_code=\"201\",k8s_namespace_name=\"ns\",\
             kn_configuration_name=\"cfg\",kn_revision_name=\"rev-1\",kn_service_name=\"svc\",\
             network_protocol_name=\"http\",network_protocol_version=\"1.1\",\
             otel_scope_name=\"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp\",\
             otel_scope_schema_url=\"\",otel_scope_version=\"0.69.0\",\
             server_address=\"rev-1.ns.svc.cluster.local\",server_port=\"8012\",url_scheme=\"http\"} 1"
        );
        assert!(
            text.contains("http_server_request_body_size_bytes_sum{http_request_method=\"POST\"")
        );
        assert!(
            text.contains(
                "http_server_response_body_size_bytes_count{http_request_method=\"GET\",\
             http_response_status_code=\"404\",network_protocol_name=\"http\""
            ),
            "{text}"
        );
        // Family order is alphabetical, target_info last.
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut sorted = families.clone();
        sorted.sort();
        assert_eq!(families, sorted);
    }

    #[test]
    fn otlp_request_has_dotted_names_and_attributes() {
        use knative_telemetry::metrics::otlp::proto::{any_value, metric::Data};
        let m = metrics();
        let rev = m.revision(&spec("ns", "rev-1"));
        let active = rev.queued().activate();
        rev.set_concurrency(1.5);
        let request = http::Request::builder()
            .uri("/")
            .header("host", "rev-1.ns.svc.cluster.local")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        m.start(&request, Some(rev)).finish(5);
        let req = m.otlp_request(std::time::SystemTime::now());
        let rm = &req.resource_metrics[0];
        let resource: Vec<&str> = rm
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert!(
            resource.contains(&"k8s.pod.name") && resource.contains(&"service.name"),
            "{resource:?}"
        );
        let names: Vec<&str> = rm
            .scope_metrics
            .iter()
            .flat_map(|s| s.metrics.iter().map(|m| m.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                "http.server.request.duration",
                "http.server.request.body.size",
                "http.server.response.body.size",
                "kn.revision.request.concurrency",
                "kn.revision.request.queued",
                "kn.revision.request.active",
            ]
        );
        let active_metric = &rm.scope_metrics[1].metrics[2];
        let Some(Data::Sum(sum)) = &active_metric.data else {
            panic!("active is a sum")
        };
        assert!(!sum.is_monotonic);
        let point = &sum.data_points[0];
        let keys: Vec<&str> = point.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["k8s.namespace.name", "kn.revision.name"]);
        assert_eq!(
            point.value,
            Some(knative_telemetry::metrics::otlp::proto::number_data_point::Value::AsInt(1))
        );
        let Some(Data::Histogram(h)) = &rm.scope_metrics[0].metrics[0].data else {
            panic!()
        };
        let status = h.data_points[0]
            .attributes
            .iter()
            .find(|kv| kv.key == "http.response.status_code")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.clone());
        assert_eq!(status, Some(any_value::Value::IntValue(200)));
        assert_eq!(h.data_points[0].count, 1);
        drop(active);
    }

    #[test]
    fn series_per_revision_are_bounded() {
        let m = metrics();
        let rev = m.revision(&spec("ns", "many"));
        for i in 0..(SERIES_PER_REVISION + 5) {
            let request = http::Request::builder()
                .uri("/")
                .header("host", format!("h{i}.example"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            m.start(&request, Some(rev.clone())).finish(0);
        }
        assert_eq!(rev.server.read().unwrap().len(), SERIES_PER_REVISION);
        assert_eq!(m.dropped_series(), 5);
    }

    #[test]
    fn host_port_and_labels() {
        assert_eq!(split_host_port("a.b:81"), ("a.b", Some(81)));
        assert_eq!(split_host_port("[::1]:8012"), ("::1", Some(8012)));
        assert_eq!(split_host_port("a.b"), ("a.b", None));
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").unwrap()),
            "_OTHER"
        );
        assert_eq!(method_label(&Method::GET), "GET");
        let mut buf = itoa_buf();
        assert_eq!(fmt_u16(&mut buf, 65535), "65535");
        let mut buf = itoa_buf();
        assert_eq!(fmt_u16(&mut buf, 0), "0");
    }
}
