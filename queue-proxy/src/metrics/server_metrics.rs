//! The HTTP server instruments of Go's `otelhttp` handler (spec §3.1, §7.1), recorded by the
//! main chain's observability stage ([`crate::observed`]) through [`ServerMetrics::start()`].
//!
//! For every request that is not a probe: `http_server_request_duration_seconds` (entry to the
//! end of the response body), `http_server_request_body_size_bytes` and
//! `http_server_response_body_size_bytes`, labelled like upstream:
//! `http_request_method` (the nine standard methods, else `_OTHER`), `http_response_status_code`,
//! `kn_route_tag` (§3.6; absent for requests the drainer answers itself, which never reach the
//! route-tag stage upstream), `network_protocol_name="http"`, `network_protocol_version`
//! (`1.0`, `1.1`, `2.0`: Go's `Request.Proto` after the slash), `server_address` (the inbound
//! host without port), `server_port` (only when the host names a port other than the scheme's
//! default), `url_scheme`, plus the `otel_scope_*` labels of `otelhttp` 0.69.0.
//!
//! Upstream differences, all deliberate:
//! - the request body size is the body's exact size hint (`Content-Length`, or 0 when unknown):
//!   the reverse proxy takes hyper's `Incoming` body, so a counting wrapper cannot be inserted
//!   here; `otelhttp` counts the bytes the handler read, which is the same for every body the
//!   proxy forwards in full with a declared length;
//! - a request whose response never completes (client gone, body aborted) records nothing, as
//!   upstream when the proxy aborts the handler; upstream would record a request abandoned
//!   before the response head with whatever status the inner stages then wrote;
//! - at most [`SERIES_LIMIT`] label sets (without the status) are kept; later ones go to one
//!   `otel_metric_overflow="true"` series, as the OTel SDK's cardinality limit does.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{OnceLock, RwLock};

use http::{Method, Request, StatusCode, Version};
use hyper::body::Body;
use knative_common::classify::ProbeHeaders;
use knative_common::headers::{KNATIVE_SERVING_DEFAULT_ROUTE, KNATIVE_SERVING_TAG};
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::MetricType;
use tokio::time::Instant;

use super::body::Completion;
use super::histogram::{AtomicHistogram, HistogramSnapshot};
use super::otlp::{bool_kv, int_kv, string_kv, KeyValue};
use super::route_tag::{route_tag_of, RouteTag};
use super::status_table::StatusTable;
use super::{label, Metrics, Scope, DURATION_BUCKETS, SIZE_BUCKETS};

/// Most distinct label sets (without the status code) kept per process.
pub const SERIES_LIMIT: usize = 2000;

pub(crate) const SCOPE: Scope = Scope {
    name: "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
    version: "0.69.0",
};

/// `url.scheme` of a listener: `http` for the plaintext ports, `https` for the TLS port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UrlScheme {
    /// Plaintext HTTP (default port 80).
    #[default]
    Http,
    /// HTTP over TLS (default port 443).
    Https,
}

impl UrlScheme {
    fn as_str(self) -> &'static str {
        match self {
            UrlScheme::Http => "http",
            UrlScheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            UrlScheme::Http => 80,
            UrlScheme::Https => 443,
        }
    }
}

/// `http.request.method`, standardized as `otelhttp` does (case-insensitive, unknown → `_OTHER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum MethodLabel {
    Connect,
    Delete,
    Get,
    Head,
    Options,
    Patch,
    Post,
    Put,
    Trace,
    Other,
}

impl MethodLabel {
    const ALL: [(MethodLabel, &'static str); 9] = [
        (MethodLabel::Get, "GET"),
        (MethodLabel::Post, "POST"),
        (MethodLabel::Put, "PUT"),
        (MethodLabel::Delete, "DELETE"),
        (MethodLabel::Head, "HEAD"),
        (MethodLabel::Options, "OPTIONS"),
        (MethodLabel::Patch, "PATCH"),
        (MethodLabel::Connect, "CONNECT"),
        (MethodLabel::Trace, "TRACE"),
    ];

    #[inline]
    fn of(method: &Method) -> Self {
        let text = method.as_str();
        Self::ALL
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(text))
            .map_or(MethodLabel::Other, |(label, _)| *label)
    }

    fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(label, _)| *label == self)
            .map_or("_OTHER", |(_, name)| name)
    }
}

/// `network.protocol.version`: Go's `Request.Proto` after `HTTP/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ProtocolVersion {
    Http09,
    Http10,
    Http11,
    Http2,
    Http3,
}

impl ProtocolVersion {
    fn of(version: Version) -> Self {
        match version {
            Version::HTTP_09 => ProtocolVersion::Http09,
            Version::HTTP_10 => ProtocolVersion::Http10,
            Version::HTTP_2 => ProtocolVersion::Http2,
            Version::HTTP_3 => ProtocolVersion::Http3,
            _ => ProtocolVersion::Http11,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::Http09 => "0.9",
            ProtocolVersion::Http10 => "1.0",
            ProtocolVersion::Http11 => "1.1",
            ProtocolVersion::Http2 => "2.0",
            ProtocolVersion::Http3 => "3.0",
        }
    }
}

/// Go's `net.SplitHostPort`: `None` where Go returns an error.
fn go_split_host_port(hostport: &str) -> Option<(&str, &str)> {
    let i = hostport.rfind(':')?;
    let (host, j, k) = if hostport.starts_with('[') {
        let end = hostport.find(']')?;
        if end + 1 != i {
            // Missing port, or too many colons.
            return None;
        }
        (&hostport[1..end], 1, end + 1)
    } else {
        let host = &hostport[..i];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if hostport[j..].contains('[') || hostport[k..].contains(']') {
        return None;
    }
    Some((host, &hostport[i + 1..]))
}

/// `otelhttp`'s `SplitHostPort`: the host without brackets and the port, if it parses.
pub(crate) fn split_host_port(hostport: &str) -> (&str, Option<u16>) {
    if hostport.starts_with('[') {
        let Some(addr_end) = hostport.rfind(']') else {
            return ("", None);
        };
        if !hostport[addr_end..].contains(':') {
            return (&hostport[1..addr_end], None);
        }
    } else if !hostport.contains(':') {
        return (hostport, None);
    }
    let Some((host, port)) = go_split_host_port(hostport) else {
        return ("", None);
    };
    let port = if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        port.parse::<u16>().ok()
    } else {
        None
    };
    (host, port)
}

/// The request-side labels of a series, borrowed from the request (lookup key: no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RequestLabels<'a> {
    method: MethodLabel,
    scheme: UrlScheme,
    host: &'a str,
    port: Option<u16>,
    version: ProtocolVersion,
    route_tag: Option<&'a str>,
}

/// [`RequestLabels`] owned by a series.
#[derive(Debug)]
struct OwnedRequestLabels {
    method: MethodLabel,
    scheme: UrlScheme,
    host: Box<str>,
    port: Option<u16>,
    version: ProtocolVersion,
    route_tag: Option<RouteTag<'static>>,
}

impl OwnedRequestLabels {
    fn view(&self) -> RequestLabels<'_> {
        RequestLabels {
            method: self.method,
            scheme: self.scheme,
            host: &self.host,
            port: self.port,
            version: self.version,
            route_tag: self.route_tag.as_ref().map(RouteTag::as_str),
        }
    }
}

/// The three histograms of one full label set.
#[derive(Debug)]
struct ServerHistograms {
    duration: AtomicHistogram,
    request_size: AtomicHistogram,
    response_size: AtomicHistogram,
}

impl ServerHistograms {
    fn new() -> Self {
        ServerHistograms {
            duration: AtomicHistogram::new(&DURATION_BUCKETS),
            request_size: AtomicHistogram::new(&SIZE_BUCKETS),
            response_size: AtomicHistogram::new(&SIZE_BUCKETS),
        }
    }

    fn snapshot(&self) -> ServerSnapshots {
        ServerSnapshots {
            duration: self.duration.snapshot(),
            request_size: self.request_size.snapshot(),
            response_size: self.response_size.snapshot(),
        }
    }
}

/// [`ServerHistograms`] at one moment.
#[derive(Clone, Debug)]
pub(crate) struct ServerSnapshots {
    pub duration: HistogramSnapshot,
    pub request_size: HistogramSnapshot,
    pub response_size: HistogramSnapshot,
}

/// One exported series: its full label set and values.
#[derive(Debug)]
pub(crate) struct ServerRow {
    pub labels: ServerLabelSet,
    pub values: ServerSnapshots,
}

/// Every status code seen for one set of request labels (`key: None` is the overflow series).
#[derive(Debug)]
pub(crate) struct RequestSeries {
    key: Option<OwnedRequestLabels>,
    statuses: StatusTable<ServerHistograms>,
}

/// A hasher for keys that already are hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
struct SeriesIndex {
    by_hash: HashMap<u64, Vec<&'static RequestSeries>, BuildHasherDefault<Prehashed>>,
    all: Vec<&'static RequestSeries>,
}

/// Request label sets → series. Series live as long as the process (they are never removed, as
/// with upstream's cumulative instruments), so they are leaked and handed out as `&'static`.
pub(crate) struct ServerInstruments {
    hasher: RandomState,
    limit: usize,
    index: RwLock<SeriesIndex>,
    overflow: OnceLock<&'static RequestSeries>,
}

impl fmt::Debug for ServerInstruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerInstruments")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

fn leak(series: RequestSeries) -> &'static RequestSeries {
    Box::leak(Box::new(series))
}

impl ServerInstruments {
    pub(crate) fn new(limit: usize) -> Self {
        ServerInstruments {
            hasher: RandomState::new(),
            limit,
            index: RwLock::new(SeriesIndex::default()),
            overflow: OnceLock::new(),
        }
    }

    /// The series for `labels`, created on first use (or the overflow series past the limit).
    fn series(
        &self,
        labels: &RequestLabels<'_>,
        tag: Option<&RouteTag<'_>>,
    ) -> &'static RequestSeries {
        let hash = self.hasher.hash_one(labels);
        let find = |index: &SeriesIndex| {
            index.by_hash.get(&hash).and_then(|bucket| {
                bucket
                    .iter()
                    .copied()
                    .find(|s| s.key.as_ref().is_some_and(|k| k.view() == *labels))
            })
        };
        if let Some(series) = find(&self.index.read().unwrap_or_else(|e| e.into_inner())) {
            return series;
        }
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = find(&index) {
            return series;
        }
        if index.all.len() >= self.limit {
            return self.overflow.get_or_init(|| {
                leak(RequestSeries {
                    key: None,
                    statuses: StatusTable::default(),
                })
            });
        }
        let series = leak(RequestSeries {
            key: Some(OwnedRequestLabels {
                method: labels.method,
                scheme: labels.scheme,
                host: labels.host.into(),
                port: labels.port,
                version: labels.version,
                route_tag: tag.map(|t| t.clone().into_owned()),
            }),
            statuses: StatusTable::default(),
        });
        index.by_hash.entry(hash).or_default().push(series);
        index.all.push(series);
        series
    }

    /// Starts measuring `request`, unless upstream's `otelhttp` would not see it (probes, and
    /// `OPTIONS *`, which Go's server answers before any handler).
    pub(crate) fn start<B: Body>(
        &self,
        request: &Request<B>,
        scheme: UrlScheme,
    ) -> Option<ServerCompletion> {
        let headers = request.headers();
        // One pass over the names for the probe questions and the route tag's two headers.
        let (mut tag, mut default_route) = (None, None);
        let probe = ProbeHeaders::scan_with(headers, |name, value| {
            if *name == KNATIVE_SERVING_TAG {
                tag.get_or_insert(value);
            } else if *name == KNATIVE_SERVING_DEFAULT_ROUTE {
                default_route.get_or_insert(value);
            }
        });
        if probe.is_probe() || (request.method() == Method::OPTIONS && request.uri() == "*") {
            return None;
        }
        let start = Instant::now();
        // Health checks are answered by the drainer, before the route-tag stage.
        let tag = (!probe.is_health_check()).then(|| route_tag_of(tag, default_route));
        let host = match request.uri().authority() {
            Some(authority) => authority.as_str(),
            None => headers
                .get(http::header::HOST)
                .and_then(|h| std::str::from_utf8(h.as_bytes()).ok())
                .unwrap_or(""),
        };
        let (host, port) = split_host_port(host);
        let labels = RequestLabels {
            method: MethodLabel::of(request.method()),
            scheme,
            host,
            port: port.filter(|p| *p != scheme.default_port() && *p > 0),
            version: ProtocolVersion::of(request.version()),
            route_tag: tag.as_ref().map(RouteTag::as_str),
        };
        Some(ServerCompletion {
            series: self.series(&labels, tag.as_ref()),
            start,
            request_bytes: request.body().size_hint().exact().unwrap_or(0),
            status: 200,
        })
    }

    /// Every series with its values, in exposition order (overflow last).
    pub(crate) fn rows(&self) -> Vec<ServerRow> {
        let mut series: Vec<&'static RequestSeries> = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .clone();
        series.extend(self.overflow.get().copied());
        let mut rows: Vec<ServerRow> = Vec::new();
        for s in series {
            let _ = s.statuses.for_each::<()>(|status, histograms| {
                rows.push(ServerRow {
                    labels: ServerLabelSet {
                        key: s.key.as_ref(),
                        status,
                    },
                    values: histograms.snapshot(),
                });
                Ok(())
            });
        }
        rows.sort_by(|a, b| a.labels.sort_key().cmp(&b.labels.sort_key()));
        rows
    }

    /// Writes the three `http_server_*` families (omitted while empty).
    pub(crate) fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let rows = self.rows();
        if rows.is_empty() {
            return Ok(());
        }
        type Pick = fn(&ServerSnapshots) -> &HistogramSnapshot;
        let families: [(&str, &str, Pick); 3] = [
            (
                "http_server_request_body_size_bytes",
                "Size of HTTP server request bodies.",
                |h| &h.request_size,
            ),
            (
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests.",
                |h| &h.duration,
            ),
            (
                "http_server_response_body_size_bytes",
                "Size of HTTP server response bodies.",
                |h| &h.response_size,
            ),
        ];
        for (name, help, pick) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for row in &rows {
                pick(&row.values).encode(family.encode_family(&row.labels)?)?;
            }
        }
        Ok(())
    }
}

/// The full label set of one exported series.
#[derive(Debug)]
pub(crate) struct ServerLabelSet {
    key: Option<&'static OwnedRequestLabels>,
    status: u16,
}

impl ServerLabelSet {
    /// Label values in exposition order (overflow last).
    #[allow(clippy::type_complexity)]
    fn sort_key(&self) -> Option<(&str, u16, Option<&str>, &str, &str, Option<u16>, &str)> {
        let v = self.key?.view();
        Some((
            v.method.as_str(),
            self.status,
            v.route_tag,
            v.version.as_str(),
            v.host,
            v.port,
            v.scheme.as_str(),
        ))
    }
}

impl ServerLabelSet {
    /// The OTel attributes of the series (dotted keys; status code and port as integers, as
    /// `otelhttp` records them).
    pub(crate) fn otlp_attributes(&self) -> Vec<KeyValue> {
        let Some(key) = self.key else {
            return vec![bool_kv("otel.metric.overflow", true)];
        };
        let mut attributes = vec![
            string_kv("http.request.method", key.method.as_str()),
            int_kv("http.response.status_code", i64::from(self.status)),
        ];
        if let Some(tag) = &key.route_tag {
            attributes.push(string_kv("kn.route.tag", tag.as_str()));
        }
        attributes.push(string_kv("network.protocol.name", "http"));
        attributes.push(string_kv("network.protocol.version", key.version.as_str()));
        attributes.push(string_kv("server.address", &key.host));
        if let Some(port) = key.port {
            attributes.push(int_kv("server.port", i64::from(port)));
        }
        attributes.push(string_kv("url.scheme", key.scheme.as_str()));
        attributes
    }
}

impl EncodeLabelSet for ServerLabelSet {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        let Some(key) = self.key else {
            label(encoder, "otel_metric_overflow", "true")?;
            return SCOPE.encode(encoder);
        };
        let status = StatusCode::from_u16(self.status).map_err(|_| fmt::Error)?;
        label(encoder, "http_request_method", key.method.as_str())?;
        label(encoder, "http_response_status_code", status.as_str())?;
        if let Some(tag) = &key.route_tag {
            label(encoder, "kn_route_tag", tag.as_str())?;
        }
        label(encoder, "network_protocol_name", "http")?;
        label(encoder, "network_protocol_version", key.version.as_str())?;
        SCOPE.encode(encoder)?;
        label(encoder, "server_address", &key.host)?;
        if let Some(port) = key.port {
            label(encoder, "server_port", &port.to_string())?;
        }
        label(encoder, "url_scheme", key.scheme.as_str())
    }
}

/// A layer-1 measurement in progress.
#[derive(Debug)]
pub struct ServerCompletion {
    series: &'static RequestSeries,
    start: Instant,
    request_bytes: u64,
    status: u16,
}

impl Completion for ServerCompletion {
    fn respond(&mut self, status: StatusCode) {
        self.status = status.as_u16();
    }

    fn complete(self, response_bytes: u64) {
        let seconds = self.start.elapsed().as_secs_f64();
        // The overflow series is not split by status.
        let status = if self.series.key.is_some() {
            self.status
        } else {
            0
        };
        self.series
            .statuses
            .with(status, ServerHistograms::new, |h| {
                h.duration.observe(seconds);
                h.request_size.observe(self.request_bytes as f64);
                h.response_size.observe(response_bytes as f64);
            });
    }

    fn abort(self, _responded: bool) {}
}

/// The server metrics of one listener's connection: where they are recorded (`None`: request
/// metrics off) and the entry point that starts a request's measurement
/// ([`ServerMetrics::start()`]; the observability stage completes it with the response).
#[derive(Clone, Copy, Debug)]
pub struct ServerMetrics {
    metrics: Option<&'static Metrics>,
    scheme: UrlScheme,
}

impl ServerMetrics {
    /// Records into `metrics` for a listener serving `scheme`.
    pub fn new(metrics: Option<&'static Metrics>, scheme: UrlScheme) -> Self {
        ServerMetrics { metrics, scheme }
    }

    /// Starts measuring `request` (`None`: metrics off, or a request not measured); the
    /// measurement is recorded when completed, once the response body has been sent.
    #[inline]
    pub fn start<B: Body>(&self, request: &Request<B>) -> Option<ServerCompletion> {
        self.metrics
            .and_then(|m| m.server().start(request, self.scheme))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use http::Response;
    use http_body_util::{BodyExt, Full};
    use knative_common::body::{LocalBody, ProxyBody};
    use tower_layer::Layer;
    use tower_service::Service;

    use crate::metrics::tests::{golden, header_lines, label_keys};
    use crate::metrics::Resource;
    use crate::observed::{Observe, ObserveLayer, ObservedBody};

    fn metrics() -> &'static Metrics {
        let env: HashMap<&str, &str> = [("SERVING_NAMESPACE", "default")].into_iter().collect();
        Box::leak(Box::new(Metrics::new(Resource::from_env(&env))))
    }

    /// An app answering `body` after `delay`.
    fn app(
        body: &'static str,
        delay: Duration,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_req: Request<Full<Bytes>>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Response::new(ProxyBody::full(Bytes::from_static(
                body.as_bytes(),
            ))))
        })
    }

    /// The main chain's observability stage around `app`, with only these metrics on.
    fn stage<S>(metrics: Option<&'static Metrics>, scheme: UrlScheme, app: S) -> Observe<S> {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        ObserveLayer::metrics_only(metrics, scheme, peer).layer(app)
    }

    fn get(host: &str) -> http::request::Builder {
        Request::get("/x?y=1").header("host", host)
    }

    async fn exchange<S>(service: &mut S, request: Request<Full<Bytes>>) -> Bytes
    where
        S: Service<
            Request<Full<Bytes>>,
            Response = Response<ObservedBody<ProxyBody>>,
            Error = Infallible,
        >,
    {
        let response = service.call(request).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix} in:\n{text}"))
    }

    #[tokio::test(start_paused = true)]
    async fn golden_labels_buckets_and_sizes() {
        let m = metrics();
        let mut svc = stage(
            Some(m),
            UrlScheme::Http,
            app("nineteen bytes body", Duration::from_millis(3)),
        );
        for _ in 0..3 {
            let body = exchange(
                &mut svc,
                get("127.0.0.1:18013").body(Full::default()).unwrap(),
            )
            .await;
            assert_eq!(body.len(), 19);
        }
        let text = m.encode();
        let golden = golden();
        for family in [
            "http_server_request_body_size_bytes",
            "http_server_request_duration_seconds",
            "http_server_response_body_size_bytes",
        ] {
            let ours = header_lines(&text, family);
            assert_eq!(ours.len(), 2, "{text}");
            if !golden.is_empty() {
                assert_eq!(ours, header_lines(&golden, family));
                for suffix in ["_bucket", "_sum", "_count"] {
                    let sample = format!("{family}{suffix}");
                    assert_eq!(label_keys(&text, &sample), label_keys(&golden, &sample));
                }
            }
        }
        // The exact label values of the golden capture.
        let labels = "{http_request_method=\"GET\",http_response_status_code=\"200\",\
kn_route_tag=\"kn:disabled\",network_protocol_name=\"http\",network_protocol_version=\"1.1\",\
otel_scope_name=\"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp\",\
otel_scope_schema_url=\"\",otel_scope_version=\"0.69.0\",server_address=\"127.0.0.1\",\
server_port=\"18013\",url_scheme=\"http\"}";
        let count = |family: &str| {
            line(&text, &format!("{family}_count{labels}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(count("http_server_request_duration_seconds"), "3");
        assert_eq!(
            line(
                &text,
                &format!("http_server_response_body_size_bytes_sum{labels}")
            ),
            format!("http_server_response_body_size_bytes_sum{labels} 57.0")
        );
        let inner = &labels[1..labels.len() - 1];
        let bucket =
            |family: &str, le: &str, n: u32| format!("{family}_bucket{{le=\"{le}\",{inner}}} {n}");
        assert!(text.contains(&bucket("http_server_request_body_size_bytes", "0.0", 3)));
        // 3 ms each: all in the first duration bucket.
        assert!(text.contains(&bucket("http_server_request_duration_seconds", "0.005", 3)));
        // Response of 19 bytes: (10, 25].
        assert!(text.contains(&bucket("http_server_response_body_size_bytes", "10.0", 0)));
        assert!(text.contains(&bucket("http_server_response_body_size_bytes", "25.0", 3)));
    }

    #[tokio::test]
    async fn probes_and_options_star_are_not_recorded() {
        let m = metrics();
        let mut svc = stage(Some(m), UrlScheme::Http, app("ok", Duration::ZERO));
        for request in [
            get("h").header("k-network-probe", "queue"),
            get("h").header("user-agent", "kube-probe/1.30"),
            get("h").header("k-kubelet-probe", "1"),
            Request::options("*").header("host", "h"),
        ] {
            exchange(&mut svc, request.body(Full::default()).unwrap()).await;
        }
        assert!(!m.encode().contains("http_server"));
    }

    #[tokio::test]
    async fn labels_follow_the_request() {
        let m = metrics();
        let mut svc = stage(Some(m), UrlScheme::Https, app("ok", Duration::ZERO));
        let request = Request::builder()
            .method("PURGE")
            .uri("/")
            .header("host", "svc.example.com:443")
            .header("knative-serving-tag", "t1")
            .body(Full::new(Bytes::from_static(b"12345")))
            .unwrap();
        exchange(&mut svc, request).await;
        let request = Request::post("/")
            .version(Version::HTTP_2)
            .uri("http://[::1]:8013/")
            .header("user-agent", "Knative-Activator-Probe")
            .body(Full::default())
            .unwrap();
        exchange(&mut svc, request).await;
        let text = m.encode();
        assert!(
            text.contains(
                "http_server_request_body_size_bytes_sum{http_request_method=\"_OTHER\",\
http_response_status_code=\"200\",kn_route_tag=\"t1\",network_protocol_name=\"http\",\
network_protocol_version=\"1.1\",otel_scope_name=\"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp\",\
otel_scope_schema_url=\"\",otel_scope_version=\"0.69.0\",server_address=\"svc.example.com\",\
url_scheme=\"https\"} 5.0"
            ),
            "{text}"
        );
        // A health check that is not a probe reaches the drainer only: no route tag.
        assert!(
            text.contains(
                "{http_request_method=\"POST\",http_response_status_code=\"200\",\
network_protocol_name=\"http\",network_protocol_version=\"2.0\","
            ),
            "{text}"
        );
        assert!(text.contains("server_address=\"::1\",server_port=\"8013\",url_scheme=\"https\""));
    }

    #[tokio::test]
    async fn disabled_metrics_pass_through() {
        let mut svc = stage(None, UrlScheme::Http, app("ok", Duration::ZERO));
        let body = exchange(&mut svc, get("h").body(Full::default()).unwrap()).await;
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn aborted_response_records_nothing() {
        let m = metrics();
        let mut svc = stage(
            Some(m),
            UrlScheme::Http,
            app("ok", Duration::from_secs(3600)),
        );
        let future = svc.call(get("h").body(Full::default()).unwrap());
        drop(future);
        assert!(!m.encode().contains("http_server"));
    }

    #[tokio::test]
    async fn overflow_series_past_the_limit() {
        let env: HashMap<&str, &str> = HashMap::new();
        let m: &'static Metrics = Box::leak(Box::new(Metrics::with_series_limit(
            Resource::from_env(&env),
            2,
        )));
        let mut svc = stage(Some(m), UrlScheme::Http, app("ok", Duration::ZERO));
        for host in ["a", "b", "c", "d", "a"] {
            exchange(&mut svc, get(host).body(Full::default()).unwrap()).await;
        }
        let text = m.encode();
        assert!(text.contains(
            "http_server_request_duration_seconds_count{otel_metric_overflow=\"true\",\
otel_scope_name=\"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp\",\
otel_scope_schema_url=\"\",otel_scope_version=\"0.69.0\"} 2"
        ));
        assert!(text.contains("server_address=\"a\""));
        assert!(!text.contains("server_address=\"c\""));
    }

    #[test]
    fn host_port_splitting_matches_otelhttp() {
        assert_eq!(
            split_host_port("127.0.0.1:18013"),
            ("127.0.0.1", Some(18013))
        );
        assert_eq!(split_host_port("example.com"), ("example.com", None));
        assert_eq!(split_host_port("example.com:"), ("example.com", None));
        assert_eq!(split_host_port("example.com:http"), ("example.com", None));
        assert_eq!(split_host_port("example.com:70000"), ("example.com", None));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("[::1"), ("", None));
        assert_eq!(split_host_port("::1"), ("", None));
        assert_eq!(split_host_port(""), ("", None));
    }

    #[test]
    fn methods_are_standardized() {
        assert_eq!(MethodLabel::of(&Method::GET).as_str(), "GET");
        assert_eq!(
            MethodLabel::of(&Method::from_bytes(b"get").unwrap()).as_str(),
            "GET"
        );
        assert_eq!(MethodLabel::of(&Method::PATCH).as_str(), "PATCH");
        assert_eq!(
            MethodLabel::of(&Method::from_bytes(b"PROPFIND").unwrap()).as_str(),
            "_OTHER"
        );
    }

    /// Per-request cost of layer 1 (lookup + three histogram observations) on this machine:
    /// `cargo test -p queue-proxy --lib per_request_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn per_request_cost() {
        let m = metrics();
        let request = get("svc.ns.svc.cluster.local")
            .header("knative-serving-tag", "blue")
            .body(Full::<Bytes>::default())
            .unwrap();
        let n = 1_000_000u32;
        let mut starting = std::time::Duration::ZERO;
        let started = std::time::Instant::now();
        for _ in 0..n {
            let t = std::time::Instant::now();
            let mut done = m.server().start(&request, UrlScheme::Http).unwrap();
            starting += t.elapsed();
            done.respond(StatusCode::OK);
            done.complete(42);
        }
        let per = started.elapsed() / n;
        println!(
            "layer 1 start (labels + series lookup): {:?} per request",
            starting / n
        );
        println!("layer 1 start+complete: {per:?} per request");
    }
}
