//! Spans on the request path, and how spans travel with a request.
//!
//! The current span of a request is the [`CurrentSpan`] extension: [`ServerTracing::start()`]
//! sets it from the server span it starts (whose parent is the incoming `traceparent`), inner
//! stages replace it with their own spans ([`Tracer::start_in`]), and [`ClientSpanLayer`] starts
//! the client span as its child and writes the client span's context into the upstream
//! `traceparent`.
//!
//! The server span's stage is the queue-proxy's observability stage (`queue_proxy::observed`),
//! which starts the span with [`ServerTracing::start()`] and settles it with the response
//! ([`record_server_status`]). The tower layers here ([`ClientSpanLayer`], [`EndCarriedSpan`])
//! take an `Option<&'static Tracer>` or a switch; off, they call the inner service directly and
//! add nothing.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::span::{Scope, Span, SpanKind, StatusCode, Value};
use super::{SpanContext, Tracer, OTELHTTP_SCOPE};
use knative_common::body::{attach_some_guard, Guarded, ProxyBody};
use knative_common::classify::is_probe;
use knative_common::headers::X_FORWARDED_FOR;

/// The span a request is currently in (request extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentSpan(pub SpanContext);

/// A span that travels with the request until a later stage ends it, e.g. the breaker wait that
/// ends when the request is let through ([`EndCarriedSpan`]) or when the request is dropped.
/// Cloning yields an empty carrier (a request's extensions are never meant to be cloned).
#[derive(Debug, Default)]
pub struct CarriedSpan(pub Option<Span>);

impl Clone for CarriedSpan {
    fn clone(&self) -> Self {
        CarriedSpan(None)
    }
}

/// Service that ends the request's [`CarriedSpan`] as the request reaches it.
#[derive(Clone, Debug)]
pub struct EndCarriedSpan<S> {
    inner: S,
    enabled: bool,
}

impl<S> EndCarriedSpan<S> {
    /// Wraps `inner`; when `enabled` is false the request is passed on untouched.
    pub fn new(inner: S, enabled: bool) -> Self {
        EndCarriedSpan { inner, enabled }
    }
}

impl<S, B> Service<Request<B>> for EndCarriedSpan<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        if self.enabled {
            return self.call_ending(request);
        }
        // No borrow of the request before the move: no copy (see `call_ending`).
        self.inner.call(request)
    }
}

impl<S> EndCarriedSpan<S> {
    /// [`Service::call`] when enabled. Out of line and taking the request by value: a request
    /// whose address has been handed to another function (the extension's removal here) is
    /// copied when it is moved on, and with that borrow in `call` itself the copy was made for
    /// every request, enabled or not.
    #[inline(never)]
    fn call_ending<B>(&mut self, mut request: Request<B>) -> S::Future
    where
        S: Service<Request<B>>,
    {
        drop(request.extensions_mut().remove::<CarriedSpan>());
        self.inner.call(request)
    }
}

const METHODS: [(Method, &str, &str); 9] = [
    (Method::GET, "GET", "HTTP GET"),
    (Method::POST, "POST", "HTTP POST"),
    (Method::PUT, "PUT", "HTTP PUT"),
    (Method::DELETE, "DELETE", "HTTP DELETE"),
    (Method::HEAD, "HEAD", "HTTP HEAD"),
    (Method::OPTIONS, "OPTIONS", "HTTP OPTIONS"),
    (Method::PATCH, "PATCH", "HTTP PATCH"),
    (Method::CONNECT, "CONNECT", "HTTP CONNECT"),
    (Method::TRACE, "TRACE", "HTTP TRACE"),
];

/// `otelhttp`'s method normalization: a known method as is; a known method in other case →
/// upper-cased, with the original kept; anything else → `_OTHER`, with the original kept.
fn method_attributes(method: &Method) -> (&'static str, Option<Value>) {
    let text = method.as_str();
    if let Some((_, name, _)) = METHODS.iter().find(|(_, name, _)| *name == text) {
        return (name, None);
    }
    let original = Some(Value::String(text.to_owned()));
    match METHODS
        .iter()
        .find(|(_, name, _)| name.eq_ignore_ascii_case(text))
    {
        Some((_, name, _)) => (name, original),
        None => ("_OTHER", original),
    }
}

/// Server span name: the (normalized) method, `HTTP` for unknown methods.
fn server_span_name(method: &Method) -> &'static str {
    match method_attributes(method).0 {
        "_OTHER" => "HTTP",
        name => name,
    }
}

/// How a client span is named, from the request's method and target.
pub type ClientSpanName = fn(&Method, &Uri) -> Cow<'static, str>;

/// Client span name as `otelhttp`'s transport formats it by default: `HTTP <METHOD>` (the
/// queue-proxy's).
pub fn http_method_name(method: &Method, _uri: &Uri) -> Cow<'static, str> {
    match METHODS.iter().find(|(m, _, _)| m == method) {
        Some((_, _, name)) => Cow::Borrowed(name),
        None => Cow::Owned(format!("HTTP {}", method.as_str())),
    }
}

/// Client span name `<METHOD> <path>` (`<METHOD> /` for an empty path; the activator's).
pub fn method_path_name(method: &Method, uri: &Uri) -> Cow<'static, str> {
    let path = match uri.path() {
        "" => "/",
        path => path,
    };
    Cow::Owned(format!("{} {path}", method.as_str()))
}

/// `network.protocol.version`, as Go's `Request.Proto` after the slash.
fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        _ => "1.1",
    }
}

/// `host[:port]` → host (no brackets) and port, as `otelhttp`'s `SplitHostPort`.
fn split_host_port(hostport: &str) -> (&str, Option<u16>) {
    if let Some(rest) = hostport.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return ("", None);
        };
        let port = rest[end + 1..]
            .strip_prefix(':')
            .and_then(|p| p.parse().ok());
        return (&rest[..end], port);
    }
    match hostport.rfind(':') {
        // An IPv6 address without brackets: Go's SplitHostPort fails.
        Some(i) if hostport[..i].contains(':') => ("", None),
        Some(i) => (&hostport[..i], hostport[i + 1..].parse().ok()),
        None => (hostport, None),
    }
}

/// Requests that get no server span: probes (§3.2 IsProbe) and `OPTIONS *`, which Go's server
/// answers before any handler.
pub fn skip_probes(method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
    is_probe(headers) || (method == Method::OPTIONS && uri == "*")
}

/// How [`ServerTracing`] names and annotates server spans.
#[derive(Clone, Copy)]
pub struct ServerSpans {
    /// Scope of the server spans.
    pub scope: &'static Scope,
    /// Fixed span name; `None` names the span after the HTTP method (`HTTP` for unknown ones).
    pub name: Option<&'static str>,
    /// Requests that get no span at all.
    pub skip: fn(&Method, &Uri, &HeaderMap) -> bool,
    /// Adds per-request attributes (e.g. `kn.route.tag`) to a recording span.
    pub annotate: fn(&HeaderMap, &mut Span),
}

impl std::fmt::Debug for ServerSpans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSpans")
            .field("scope", &self.scope)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Default for ServerSpans {
    /// `otelhttp` spans named after the method, no span for probes, no extra attributes.
    fn default() -> Self {
        ServerSpans {
            scope: &OTELHTTP_SCOPE,
            name: None,
            skip: skip_probes,
            annotate: |_, _| {},
        }
    }
}

/// Server spans of one connection (queue-proxy §3.1, §7.3): the settings, and the entry point
/// ([`ServerTracing::start()`]) that extracts the incoming trace context and starts a
/// request's server span. The caller (the queue-proxy's observability stage) records the
/// response status on the span ([`record_server_status`]) and ends it when the response body
/// has been sent.
#[derive(Clone, Copy, Debug)]
pub struct ServerTracing {
    tracer: Option<&'static Tracer>,
    spans: ServerSpans,
    peer: SocketAddr,
    tls: bool,
}

impl ServerTracing {
    /// Server spans from `tracer` (`None`: off) for a connection from `peer`, over TLS or not.
    pub fn new(
        tracer: Option<&'static Tracer>,
        spans: ServerSpans,
        peer: SocketAddr,
        tls: bool,
    ) -> Self {
        ServerTracing {
            tracer,
            spans,
            peer,
            tls,
        }
    }

    /// The tracer (`None`: tracing off).
    #[inline]
    pub fn tracer(&self) -> Option<&'static Tracer> {
        self.tracer
    }

    /// Starts the server span of `request` (`None` for a request that gets none) and makes it
    /// the request's [`CurrentSpan`]. The span is to end when the response body has been sent.
    pub fn start<B>(&self, tracer: &'static Tracer, request: &mut Request<B>) -> Option<Span> {
        let headers = request.headers();
        if (self.spans.skip)(request.method(), request.uri(), headers) {
            return None;
        }
        let parent = SpanContext::from_headers(headers);
        let name: Cow<'static, str> = match self.spans.name {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Borrowed(server_span_name(request.method())),
        };
        let (mut span, context) =
            tracer.start(self.spans.scope, name, SpanKind::Server, parent.as_ref());
        if span.is_recording() {
            self.annotate(&mut span, request);
        }
        request.extensions_mut().insert(CurrentSpan(context));
        Some(span)
    }

    /// The standard HTTP server attributes of `otelhttp`.
    fn annotate<B>(&self, span: &mut Span, request: &Request<B>) {
        let headers = request.headers();
        let host = match request.uri().authority() {
            Some(authority) => authority.as_str(),
            None => headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
        };
        let (host, port) = split_host_port(host);
        let (method, original) = method_attributes(request.method());
        span.set_attribute("server.address", host.to_owned());
        span.set_attribute("http.request.method", method);
        span.set_attribute("url.scheme", if self.tls { "https" } else { "http" });
        let default_port = if self.tls { 443 } else { 80 };
        if let Some(port) = port.filter(|p| *p != default_port && *p > 0) {
            span.set_attribute("server.port", i64::from(port));
        }
        if let Some(original) = original {
            span.set_attribute("http.request.method_original", original);
        }
        span.set_attribute("network.peer.address", self.peer.ip());
        span.set_attribute("network.peer.port", i64::from(self.peer.port()));
        if let Some(ua) = headers
            .get(http::header::USER_AGENT)
            .filter(|ua| !ua.is_empty())
        {
            span.set_attribute("user_agent.original", ua.clone());
        }
        let forwarded_client = headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim())
            .filter(|v| !v.is_empty());
        match forwarded_client {
            Some(client) => span.set_attribute("client.address", client.to_owned()),
            None => span.set_attribute("client.address", self.peer.ip()),
        }
        if let Some(pq) = request.uri().path_and_query() {
            if !pq.path().is_empty() {
                span.set_attribute("url.path", Value::Path(pq.clone()));
            }
        }
        span.set_attribute(
            "network.protocol.version",
            protocol_version(request.version()),
        );
        (self.spans.annotate)(headers, span);
    }
}

/// Records the response status: server spans are errors from 500 up, client spans from 400 up
/// (`otelhttp`'s rules).
fn record_status(span: &mut Span, kind: SpanKind, status: http::StatusCode) {
    if !span.is_recording() {
        return;
    }
    let code = status.as_u16();
    span.set_attribute("http.response.status_code", i64::from(code));
    let error_from = if kind == SpanKind::Client { 400 } else { 500 };
    if code >= error_from {
        span.set_status(StatusCode::Error, "");
    }
}

/// Records a server span's response `status` (an error from 500 up, as `otelhttp`).
pub fn record_server_status(span: &mut Span, status: http::StatusCode) {
    record_status(span, SpanKind::Server, status);
}

/// The client span (queue-proxy §7.3 item 4): a child of the request's [`CurrentSpan`] (a root
/// span when there is none, e.g. kubelet probes) around the upstream call, ending with the
/// upstream response body. Its context replaces the request's `traceparent`.
#[derive(Clone, Copy)]
pub struct ClientSpanLayer {
    tracer: Option<&'static Tracer>,
    target: SocketAddr,
    name: ClientSpanName,
}

impl std::fmt::Debug for ClientSpanLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSpanLayer")
            .field("enabled", &self.tracer.is_some())
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl ClientSpanLayer {
    /// Client spans from `tracer` (`None`: off) for requests sent to `target`, named
    /// `HTTP <METHOD>`.
    pub fn new(tracer: Option<&'static Tracer>, target: SocketAddr) -> Self {
        ClientSpanLayer {
            tracer,
            target,
            name: http_method_name,
        }
    }

    /// Names the spans with `name` instead.
    pub fn with_name(mut self, name: ClientSpanName) -> Self {
        self.name = name;
        self
    }
}

impl<S> Layer<S> for ClientSpanLayer {
    type Service = ClientSpanService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientSpanService {
            inner,
            layer: *self,
        }
    }
}

/// See [`ClientSpanLayer`].
#[derive(Clone, Debug)]
pub struct ClientSpanService<S> {
    inner: S,
    layer: ClientSpanLayer,
}

/// Starts a client span named by `name` for `request`, sent to `target`, as a child of the
/// request's [`CurrentSpan`] (a root span if there is none), and writes its context into the
/// request's `traceparent`.
pub fn start_client_span<B>(
    tracer: &'static Tracer,
    request: &mut Request<B>,
    target: SocketAddr,
    name: ClientSpanName,
) -> Span {
    let parent = request.extensions().get::<CurrentSpan>().map(|c| &c.0);
    let (mut span, context) = tracer.start(
        &OTELHTTP_SCOPE,
        name(request.method(), request.uri()),
        SpanKind::Client,
        parent,
    );
    context.inject(request.headers_mut());
    if span.is_recording() {
        let (method, original) = method_attributes(request.method());
        span.set_attribute("http.request.method", method);
        if let Some(original) = original {
            span.set_attribute("http.request.method_original", original);
        }
        let target_text = match target {
            SocketAddr::V4(v4) => v4.to_string(),
            SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
        };
        let pq = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        span.set_attribute("url.full", format!("http://{target_text}{pq}"));
        span.set_attribute("server.address", target.ip());
        if target.port() != 80 {
            span.set_attribute("server.port", i64::from(target.port()));
        }
        span.set_attribute(
            "network.protocol.version",
            protocol_version(request.version()),
        );
    }
    span
}

impl<S, ReqB> Service<Request<ReqB>> for ClientSpanService<S>
where
    S: Service<Request<ReqB>, Response = Response<ProxyBody>>,
{
    type Response = Response<Guarded<ProxyBody, Span>>;
    type Error = S::Error;
    type Future = ClientSpanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        match self.layer.tracer {
            Some(tracer) => self.call_traced(tracer, request),
            // No borrow of the request before the move: no copy (see `call_traced`).
            None => ClientSpanFuture {
                future: self.inner.call(request),
                span: None,
            },
        }
    }
}

impl<S> ClientSpanService<S> {
    /// [`Service::call`] with tracing on, out of line for the reason given at
    /// `EndCarriedSpan::call_ending`.
    #[inline(never)]
    fn call_traced<ReqB>(
        &mut self,
        tracer: &'static Tracer,
        mut request: Request<ReqB>,
    ) -> ClientSpanFuture<S::Future>
    where
        S: Service<Request<ReqB>, Response = Response<ProxyBody>>,
    {
        let span = start_client_span(tracer, &mut request, self.layer.target, self.layer.name);
        ClientSpanFuture {
            future: self.inner.call(request),
            span: Some(span),
        }
    }
}

pin_project! {
    /// Response future of [`ClientSpanService`]. A `502` the proxy generated itself (no upstream
    /// response) marks the span failed with the error text.
    pub struct ClientSpanFuture<F> {
        #[pin]
        future: F,
        span: Option<Span>,
    }
}

impl<F, E> Future for ClientSpanFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
{
    type Output = Result<Response<Guarded<ProxyBody, Span>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.future.poll(cx))?;
        let span = this.span.take().map(|mut span| {
            match response.body() {
                // Generated by the proxy: there is no upstream response, the exchange failed.
                ProxyBody::Full { bytes } if response.status() == http::StatusCode::BAD_GATEWAY => {
                    if span.is_recording() {
                        let text = bytes
                            .as_ref()
                            .map(|b| String::from_utf8_lossy(b).trim_end().to_owned())
                            .unwrap_or_default();
                        span.set_status(StatusCode::Error, text);
                        span.set_attribute("error.type", "proxy_error");
                    }
                }
                _ => record_status(&mut span, SpanKind::Client, response.status()),
            }
            span
        });
        // One place makes the output (see `attach_some_guard`).
        Poll::Ready(Ok(attach_some_guard(response, span)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_methods() {
        assert_eq!(server_span_name(&Method::GET), "GET");
        assert_eq!(
            server_span_name(&Method::from_bytes(b"get").unwrap()),
            "GET"
        );
        assert_eq!(
            server_span_name(&Method::from_bytes(b"PURGE").unwrap()),
            "HTTP"
        );
        let root = Uri::from_static("/");
        assert_eq!(http_method_name(&Method::POST, &root), "HTTP POST");
        assert_eq!(
            http_method_name(&Method::from_bytes(b"PURGE").unwrap(), &root),
            "HTTP PURGE"
        );
        assert_eq!(
            method_path_name(&Method::GET, &Uri::from_static("/a/b?c=d")),
            "GET /a/b"
        );
        assert_eq!(
            method_path_name(&Method::GET, &Uri::from_static("http://h")),
            "GET /"
        );
        let (m, original) = method_attributes(&Method::from_bytes(b"Patch").unwrap());
        assert_eq!(m, "PATCH");
        assert_eq!(original, Some(Value::String("Patch".into())));
        assert_eq!(method_attributes(&Method::DELETE), ("DELETE", None));
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(
            split_host_port("example.com:8080"),
            ("example.com", Some(8080))
        );
        assert_eq!(split_host_port("example.com"), ("example.com", None));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host_port("[::1"), ("", None));
        assert_eq!(split_host_port("::1"), ("", None));
        assert_eq!(split_host_port("h:x"), ("h", None));
    }
}
