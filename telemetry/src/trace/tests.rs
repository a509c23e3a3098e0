//! Tracer, processor, exporter and layer tests: span links and propagation, sampling, the
//! bounded queue, the stdout line format, and OTLP export over HTTP, h2c gRPC and TLS gRPC to
//! local collectors that decode what they receive.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower_layer::Layer;
use tower_service::Service;

use super::context::{TRACEPARENT, TRACESTATE};
use super::export::memory::InMemoryExporter;
use super::export::otlp::{self, proto, OtlpEndpoint, OtlpExporter, Transport};
use super::export::stdout::StdoutExporter;
use super::layer::{CarriedSpan, EndCarriedSpan};
use super::*;
use knative_common::body::{GuardedFuture, LocalBody, ProxyBody};

static QUEUE_SCOPE: Scope = Scope {
    name: "knative.dev/serving/pkg/queue",
    version: "",
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn incoming(sampled: bool) -> SpanContext {
    let mut headers = HeaderMap::new();
    let flags = if sampled { "01" } else { "00" };
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_str(&format!("00-{TRACE}-{PARENT}-{flags}")).unwrap(),
    );
    headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
    SpanContext::from_headers(&headers).unwrap()
}

fn tracer_with(exporter: impl SpanExporter, sampler: Sampler) -> &'static Tracer {
    Tracer::builder(exporter)
        .sampler(sampler)
        .resource(Resource::sdk_default(&std::collections::HashMap::<
            &str,
            &str,
        >::new()))
        .build()
        .unwrap()
}

#[tokio::test]
async fn parent_child_links_and_propagation() {
    let exporter = InMemoryExporter::new();
    let tracer = tracer_with(
        exporter.clone(),
        Sampler::ParentBased(sampler::RootSampler::AlwaysOff),
    );
    let remote = incoming(true);
    let (server, server_ctx) =
        tracer.start(&OTELHTTP_SCOPE, "GET", SpanKind::Server, Some(&remote));
    assert!(server.is_recording());
    assert_eq!(server_ctx.trace_id, remote.trace_id);
    assert_ne!(server_ctx.span_id, remote.span_id);
    assert!(!server_ctx.remote && server_ctx.sampled);
    assert_eq!(server_ctx.trace_state.as_ref().unwrap(), "vendor=1");
    let (child, child_ctx) =
        tracer.start(&QUEUE_SCOPE, "child", SpanKind::Internal, Some(&server_ctx));
    child.end();
    server.end();
    tracer.force_flush().await;
    let spans = exporter.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].name, "child");
    assert_eq!(spans[0].context, child_ctx);
    assert_eq!(spans[0].parent_span_id, Some(server_ctx.span_id));
    assert!(!spans[0].parent_remote);
    assert_eq!(spans[1].parent_span_id, Some(remote.span_id));
    assert!(spans[1].parent_remote);
    assert_eq!(spans[1].kind, SpanKind::Server);

    // An unsampled remote parent: ids still propagate, nothing is recorded.
    exporter.clear();
    let (span, ctx) = tracer.start(
        &OTELHTTP_SCOPE,
        "GET",
        SpanKind::Server,
        Some(&incoming(false)),
    );
    assert!(!span.is_recording());
    assert_eq!(ctx.trace_id, remote.trace_id);
    assert!(ctx.is_valid() && !ctx.sampled);
    assert!(ctx.traceparent().to_str().unwrap().ends_with("-00"));
    drop(span);
    // No parent: a new trace, here unsampled by the root sampler.
    let (span, ctx) = tracer.start(&OTELHTTP_SCOPE, "GET", SpanKind::Server, None);
    assert!(!span.is_recording() && ctx.is_valid());
    assert_ne!(ctx.trace_id, remote.trace_id);
    drop(span);
    tracer.force_flush().await;
    assert!(exporter.spans().is_empty());
}

#[tokio::test]
async fn always_sampler_overrides_parents() {
    let exporter = InMemoryExporter::new();
    let on = tracer_with(exporter.clone(), Sampler::ALWAYS_ON);
    let (span, ctx) = on.start(
        &QUEUE_SCOPE,
        "x",
        SpanKind::Internal,
        Some(&incoming(false)),
    );
    assert!(span.is_recording() && ctx.sampled);
    drop(span);
    let off = tracer_with(exporter.clone(), Sampler::ALWAYS_OFF);
    let (span, ctx) = off.start(&QUEUE_SCOPE, "y", SpanKind::Internal, Some(&incoming(true)));
    assert!(!span.is_recording() && !ctx.sampled);
    drop(span);
    on.force_flush().await;
    off.force_flush().await;
    let names: Vec<String> = exporter.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["x"]);
}

#[tokio::test]
async fn full_queue_drops_and_never_blocks() {
    let exporter = InMemoryExporter::new();
    let tracer = Tracer::builder(exporter.clone())
        .batch(BatchConfig {
            max_queue_size: 4,
            max_export_batch_size: 2,
            schedule_delay: Duration::from_secs(3600),
            export_timeout: Duration::from_secs(5),
        })
        .build()
        .unwrap();
    // The export task cannot run while this (current-thread) test does not yield.
    for i in 0..100 {
        let (mut span, _) = tracer.start(&QUEUE_SCOPE, "s", SpanKind::Internal, None);
        span.set_attribute("i", i64::from(i));
        span.end();
    }
    assert_eq!(tracer.pending_dropped(), 96);
    tracer.force_flush().await;
    let spans = exporter.spans();
    assert_eq!(spans.len(), 4);
    // FIFO: the first four survive.
    let order: Vec<&str> = spans.iter().map(|s| s.attribute("i").unwrap()).collect();
    assert_eq!(order, ["0", "1", "2", "3"]);
    assert_eq!(tracer.pending_dropped(), 0);
    // After shutdown nothing more is queued.
    assert!(tracer.shutdown(Duration::from_secs(5)).await);
    let (span, _) = tracer.start(&QUEUE_SCOPE, "late", SpanKind::Internal, None);
    drop(span);
    assert_eq!(tracer.queue.len(), 0);
}

#[tokio::test]
async fn attributes_are_bounded_and_replaced() {
    let exporter = InMemoryExporter::new();
    let tracer = tracer_with(exporter.clone(), Sampler::ALWAYS_ON);
    let (mut span, _) = tracer.start(&QUEUE_SCOPE, "a", SpanKind::Internal, None);
    const KEYS: [&str; 20] = [
        "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "k11", "k12", "k13",
        "k14", "k15", "k16", "k17", "k18", "k19",
    ];
    for key in KEYS {
        span.set_attribute(key, "v");
    }
    span.set_attribute("k0", 7i64);
    span.set_status(span::StatusCode::Error, "boom");
    drop(span);
    tracer.force_flush().await;
    let span = &exporter.spans()[0];
    assert_eq!(span.attributes.len(), span::MAX_ATTRIBUTES);
    assert_eq!(span.attribute("k0"), Some("7"));
    assert_eq!(span.attribute("k19"), None);
    assert_eq!(span.status.code, span::StatusCode::Error);
    assert_eq!(span.status.message, "boom");
}

#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn stdout_lines_follow_go_stdouttrace() {
    let buffer = SharedBuffer::default();
    let mut resource = Resource::empty();
    resource.set("service.name", "svc");
    resource.set("k8s.namespace.name", "ns");
    let tracer = Tracer::builder(StdoutExporter::to_writer(Box::new(buffer.clone())))
        .resource(resource)
        .build()
        .unwrap();
    let remote = incoming(true);
    let (mut server, server_ctx) =
        tracer.start(&OTELHTTP_SCOPE, "POST", SpanKind::Server, Some(&remote));
    server.set_attribute("http.response.status_code", 200i64);
    server.set_attribute("kn.route.tag", "kn:disabled");
    let (root, root_ctx) = tracer.start(&QUEUE_SCOPE, "root", SpanKind::Internal, None);
    drop(root);
    drop(server);
    tracer.force_flush().await;
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(text.ends_with('\n'));
    let root: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let server: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    let keys: Vec<&String> = server.as_object().unwrap().keys().collect();
    for key in [
        "Name",
        "SpanContext",
        "Parent",
        "SpanKind",
        "StartTime",
        "EndTime",
        "Attributes",
        "Events",
        "Links",
        "Status",
        "DroppedAttributes",
        "DroppedEvents",
        "DroppedLinks",
        "ChildSpanCount",
        "Resource",
        "InstrumentationScope",
        "InstrumentationLibrary",
    ] {
        assert!(keys.iter().any(|k| *k == key), "{key} missing: {server}");
    }
    assert_eq!(server["Name"], "POST");
    assert_eq!(server["SpanKind"], 2);
    assert_eq!(server["SpanContext"]["TraceID"], TRACE);
    assert_eq!(
        server["SpanContext"]["SpanID"],
        server_ctx.span_id.to_string()
    );
    assert_eq!(server["SpanContext"]["TraceFlags"], "01");
    assert_eq!(server["SpanContext"]["TraceState"], "vendor=1");
    assert_eq!(server["Parent"]["SpanID"], PARENT);
    assert_eq!(server["Parent"]["Remote"], true);
    assert_eq!(
        server["Attributes"][0],
        serde_json::json!({"Key": "http.response.status_code", "Value": {"Type": "INT64", "Value": 200}})
    );
    assert_eq!(
        server["Attributes"][1],
        serde_json::json!({"Key": "kn.route.tag", "Value": {"Type": "STRING", "Value": "kn:disabled"}})
    );
    assert_eq!(
        server["Status"],
        serde_json::json!({"Code": "Unset", "Description": ""})
    );
    // Resource sorted by key, as Go's attribute sets.
    assert_eq!(server["Resource"][0]["Key"], "k8s.namespace.name");
    assert_eq!(server["Resource"][1]["Value"]["Value"], "svc");
    assert_eq!(server["InstrumentationScope"]["Name"], OTELHTTP_SCOPE.name);
    assert!(server["StartTime"].as_str().unwrap().ends_with('Z'));
    // A root span: zero parent, no attributes.
    assert_eq!(root["Parent"]["TraceID"], "0".repeat(32));
    assert_eq!(root["Parent"]["SpanID"], "0".repeat(16));
    assert_eq!(
        root["SpanContext"]["TraceID"],
        root_ctx.trace_id.to_string()
    );
    assert_eq!(root["Attributes"], serde_json::Value::Null);
    assert_eq!(root["SpanKind"], 1);
}

/// A request a collector received.
#[derive(Debug)]
struct Captured {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A response body of fixed frames (data and trailers).
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

type Responder = fn() -> Response<Frames>;

fn grpc_ok() -> Response<Frames> {
    let message = proto::ExportTraceServiceResponse::default().encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = Response::new(Frames(VecDeque::from([
        Frame::data(Bytes::from(framed)),
        Frame::trailers(trailers),
    ])));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

fn grpc_unavailable() -> Response<Frames> {
    let mut response = Response::new(Frames(VecDeque::new()));
    response
        .headers_mut()
        .insert("grpc-status", HeaderValue::from_static("14"));
    response
        .headers_mut()
        .insert("grpc-message", HeaderValue::from_static("no%20capacity"));
    response
}

fn http_ok() -> Response<Frames> {
    Response::new(Frames(VecDeque::from([Frame::data(Bytes::from(
        proto::ExportTraceServiceResponse::default().encode_to_vec(),
    ))])))
}

fn http_unavailable() -> Response<Frames> {
    let mut response = Response::new(Frames(VecDeque::from([Frame::data(Bytes::from_static(
        b"busy",
    ))])));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}

#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Http1,
    H2c,
    H2Tls,
}

/// A collector on 127.0.0.1:<ephemeral> answering every request with `respond()`.
async fn collector(
    wire: Wire,
    respond: Responder,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Captured>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let headers = request.headers().clone();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let _ = tx.send(Captured {
                            path,
                            headers,
                            body,
                        });
                        Ok::<_, Infallible>(respond())
                    }
                });
                match (wire, tls) {
                    (Wire::Http1, _) => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    (Wire::H2c, _) => {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    (Wire::H2Tls, Some(acceptor)) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    (Wire::H2Tls, None) => {}
                }
            });
        }
    });
    (addr, rx)
}

fn endpoint(addr: SocketAddr, tls: bool) -> OtlpEndpoint {
    OtlpEndpoint {
        tls,
        host: if tls {
            "localhost".into()
        } else {
            addr.ip().to_string()
        },
        port: addr.port(),
        path: "/v1/traces".into(),
    }
}

/// The user container: records the headers it got, answers `ok`.
#[derive(Clone, Default)]
struct App(Arc<Mutex<Vec<HeaderMap>>>);

impl Service<Request<()>> for App {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<ProxyBody>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<()>) -> Self::Future {
        self.0.lock().unwrap().push(request.headers().clone());
        ready(Ok(Response::new(ProxyBody::full(Bytes::from_static(
            b"ok",
        )))))
    }
}

/// The proxy handler's span (a stand-in for queue-proxy layer 9), optionally with a wait span
/// carried to the [`EndCarriedSpan`] stage.
#[derive(Clone)]
struct ProxyStage<S> {
    inner: S,
    tracer: &'static Tracer,
    wait: bool,
}

impl<S, B> Service<Request<()>> for ProxyStage<S>
where
    S: Service<Request<()>, Response = Response<B>>,
    B: Send + 'static,
{
    type Response = Response<knative_common::body::Guarded<B, Span>>;
    type Error = S::Error;
    type Future = GuardedFuture<S::Future, Span>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, mut request: Request<()>) -> Self::Future {
        if knative_common::classify::is_probe(request.headers()) {
            return GuardedFuture::new(self.inner.call(request), None);
        }
        let span = self.tracer.start_in(
            request.extensions_mut(),
            &QUEUE_SCOPE,
            "kn.queueproxy.proxy",
            SpanKind::Internal,
        );
        if self.wait {
            let wait = self.tracer.start_in(
                request.extensions_mut(),
                &QUEUE_SCOPE,
                "kn.queueproxy.wait",
                SpanKind::Internal,
            );
            request.extensions_mut().insert(CarriedSpan(Some(wait)));
        }
        GuardedFuture::new(self.inner.call(request), Some(span))
    }
}

async fn drive<S, B>(service: &mut S, request: Request<()>) -> Bytes
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.call(request).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

/// [`drive`] with a server span from `spans`, as the queue-proxy's observability stage carries
/// it: started as the request enters, its status recorded with the response, ended once the
/// response body has been sent.
async fn drive_served<S, B>(
    spans: &ServerTracing,
    service: &mut S,
    mut request: Request<()>,
) -> Bytes
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut span = spans
        .tracer()
        .and_then(|tracer| spans.start(tracer, &mut request));
    let response = service.call(request).await.unwrap();
    if let Some(span) = span.as_mut() {
        layer::record_server_status(span, response.status());
    }
    let body = response.into_body().collect().await.unwrap().to_bytes();
    drop(span);
    body
}

fn span_by_name<'a>(spans: &'a [proto::Span], name: &str) -> &'a proto::Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

fn string_attr<'a>(attrs: &'a [proto::KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            proto::any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

#[tokio::test]
async fn otlp_http_export_through_the_layers() {
    let (addr, mut received) = collector(Wire::Http1, http_ok, None).await;
    let exporter = OtlpExporter::new(
        Transport::HttpProtobuf,
        endpoint(addr, false),
        otlp::parse_headers("x-api-key=secret"),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut resource = Resource::empty();
    resource.set("service.name", "rev-1");
    let tracer = Tracer::builder(exporter)
        .resource(resource)
        .build()
        .unwrap();

    let app = App::default();
    let upstream: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let peer: SocketAddr = "10.0.0.7:51000".parse().unwrap();
    let spans = ServerSpans {
        annotate: |_, span| span.set_attribute("kn.route.tag", "kn:disabled"),
        ..ServerSpans::default()
    };
    let client = ClientSpanLayer::new(Some(tracer), upstream).layer(app.clone());
    let mut chain = ProxyStage {
        inner: EndCarriedSpan::new(client, true),
        tracer,
        wait: true,
    };
    let server = ServerTracing::new(Some(tracer), spans, peer, false);

    let request = Request::post("/orders?id=1")
        .header("host", "svc.example.com:8080")
        .header("user-agent", "curl/8")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("tracestate", "vendor=1")
        .header("baggage", "user=42")
        .body(())
        .unwrap();
    assert_eq!(&drive_served(&server, &mut chain, request).await[..], b"ok");
    // A probe: no server span, no context; the client span is a root.
    let probe = Request::get("/")
        .header("k-network-probe", "probe")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(())
        .unwrap();
    drive_served(&server, &mut chain, probe).await;
    tracer.force_flush().await;

    let captured = received.recv().await.unwrap();
    assert_eq!(captured.path, "/v1/traces");
    assert_eq!(captured.headers["content-type"], "application/x-protobuf");
    assert_eq!(captured.headers["x-api-key"], "secret");
    let request = proto::ExportTraceServiceRequest::decode(captured.body).unwrap();
    assert_eq!(request.resource_spans.len(), 1);
    let rs = &request.resource_spans[0];
    assert_eq!(
        string_attr(&rs.resource.as_ref().unwrap().attributes, "service.name"),
        Some("rev-1")
    );
    // Spans grouped by scope, in order of first appearance.
    let scopes: Vec<&str> = rs
        .scope_spans
        .iter()
        .map(|s| s.scope.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(scopes, [QUEUE_SCOPE.name, OTELHTTP_SCOPE.name]);
    let all: Vec<proto::Span> = rs
        .scope_spans
        .iter()
        .flat_map(|s| s.spans.clone())
        .collect();
    assert_eq!(all.len(), 5, "{all:#?}");
    let names: Vec<&str> = rs.scope_spans[1]
        .spans
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    // End order within the otelhttp scope: client, server, then the probe's client span.
    assert_eq!(names, ["HTTP POST", "POST", "HTTP GET"]);

    let trace = hex(TRACE);
    let server = span_by_name(&all, "POST");
    let proxy = span_by_name(&all, "kn.queueproxy.proxy");
    let wait = span_by_name(&all, "kn.queueproxy.wait");
    let client = span_by_name(&all, "HTTP POST");
    for span in [server, proxy, wait, client] {
        assert_eq!(span.trace_id, trace, "{}", span.name);
        assert_eq!(span.trace_state, "vendor=1");
        assert_eq!(span.flags & 0x1ff, 0x101, "{}", span.name);
    }
    assert_eq!(server.parent_span_id, hex(PARENT));
    assert_eq!(server.flags & 0x200, 0x200, "remote parent");
    assert_eq!(server.kind, 2);
    assert_eq!(proxy.parent_span_id, server.span_id);
    assert_eq!(proxy.flags & 0x200, 0);
    assert_eq!(wait.parent_span_id, proxy.span_id);
    // As upstream: the client span is a child of the (already ended) wait span.
    assert_eq!(client.parent_span_id, wait.span_id);
    assert_eq!(client.kind, 3);
    assert!(wait.end_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= proxy.end_time_unix_nano);
    assert!(proxy.end_time_unix_nano <= server.end_time_unix_nano);
    let sattr = |key| string_attr(&server.attributes, key);
    assert_eq!(sattr("http.request.method"), Some("POST"));
    assert_eq!(sattr("server.address"), Some("svc.example.com"));
    assert_eq!(sattr("url.path"), Some("/orders"));
    assert_eq!(sattr("url.scheme"), Some("http"));
    assert_eq!(sattr("user_agent.original"), Some("curl/8"));
    assert_eq!(sattr("client.address"), Some("10.0.0.7"));
    assert_eq!(sattr("network.protocol.version"), Some("1.1"));
    assert_eq!(sattr("kn.route.tag"), Some("kn:disabled"));
    assert_eq!(
        string_attr(&client.attributes, "url.full"),
        Some("http://127.0.0.1:8080/orders?id=1")
    );
    let status = |s: &proto::Span| {
        s.attributes
            .iter()
            .find(|kv| kv.key == "http.response.status_code")
            .and_then(|kv| kv.value.clone())
    };
    assert_eq!(
        status(server),
        Some(proto::AnyValue {
            value: Some(proto::any_value::Value::IntValue(200))
        })
    );
    assert_eq!(status(client), status(server));

    // What the app received: same trace, the client span as parent; the rest untouched.
    let seen = app.0.lock().unwrap().clone();
    let tp = seen[0]["traceparent"].to_str().unwrap().to_owned();
    assert_eq!(tp, format!("00-{TRACE}-{}-01", hex_string(&client.span_id)));
    assert_eq!(seen[0]["tracestate"], "vendor=1");
    assert_eq!(seen[0]["baggage"], "user=42");
    // The probe's client span is a new root trace, injected over the incoming traceparent.
    let probe_client = span_by_name(&all, "HTTP GET");
    assert!(probe_client.parent_span_id.is_empty());
    assert_ne!(probe_client.trace_id, trace);
    assert_eq!(
        seen[1]["traceparent"].to_str().unwrap(),
        format!(
            "00-{}-{}-01",
            hex_string(&probe_client.trace_id),
            hex_string(&probe_client.span_id)
        )
    );
}

#[tokio::test]
async fn disabled_layers_pass_everything_through() {
    let app = App::default();
    let upstream: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let peer: SocketAddr = "10.0.0.7:51000".parse().unwrap();
    let client = ClientSpanLayer::new(None, upstream).layer(app.clone());
    let server = ServerTracing::new(None, ServerSpans::default(), peer, false);
    assert!(server.tracer().is_none());
    let mut chain = EndCarriedSpan::new(client, false);
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let request = Request::get("/")
        .header("traceparent", incoming.as_str())
        .header("tracestate", "a=b")
        .body(())
        .unwrap();
    drive_served(&server, &mut chain, request).await;
    let seen = app.0.lock().unwrap().clone();
    assert_eq!(seen[0]["traceparent"], incoming.as_str());
    assert_eq!(seen[0]["tracestate"], "a=b");
}

#[tokio::test]
async fn proxy_errors_mark_the_client_span() {
    let exporter = InMemoryExporter::new();
    let tracer = tracer_with(exporter.clone(), Sampler::ALWAYS_ON);
    let failing = tower_service_fn(|_req: Request<()>| {
        knative_common::proxy::bad_gateway(&knative_common::proxy::ProxyError::InvalidRequest(
            "dial tcp 127.0.0.1:1: connect: connection refused",
        ))
    });
    let mut chain =
        ClientSpanLayer::new(Some(tracer), "127.0.0.1:1".parse().unwrap()).layer(failing);
    drive(&mut chain, Request::get("/").body(()).unwrap()).await;
    let not_found = tower_service_fn(|_req: Request<()>| {
        let mut r = Response::new(ProxyBody::empty());
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    });
    let mut chain =
        ClientSpanLayer::new(Some(tracer), "127.0.0.1:1".parse().unwrap()).layer(not_found);
    drive(&mut chain, Request::get("/").body(()).unwrap()).await;
    tracer.force_flush().await;
    let spans = exporter.spans();
    assert_eq!(spans[0].status.code, span::StatusCode::Error);
    assert!(spans[0].status.message.contains("connection refused"));
    assert_eq!(spans[0].attribute("http.response.status_code"), None);
    assert_eq!(spans[1].status.code, span::StatusCode::Error);
    assert_eq!(spans[1].attribute("http.response.status_code"), Some("404"));
}

/// A service answering with `f(request)`.
fn tower_service_fn<F>(f: F) -> FnService<F>
where
    F: Fn(Request<()>) -> Response<ProxyBody>,
{
    FnService(f)
}

#[derive(Clone)]
struct FnService<F>(F);

impl<F> Service<Request<()>> for FnService<F>
where
    F: Fn(Request<()>) -> Response<ProxyBody>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<ProxyBody>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<()>) -> Self::Future {
        ready(Ok((self.0)(request)))
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// Exporters get the queue's boxes as they are.
#[allow(clippy::vec_box)]
fn test_batch() -> (Vec<Box<SpanData>>, Resource) {
    let ctx = SpanContext {
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        sampled: true,
        remote: false,
        trace_state: None,
    };
    let span = SpanData::new(&QUEUE_SCOPE, "direct".into(), SpanKind::Internal, ctx, None);
    let mut resource = Resource::empty();
    resource.set("service.name", "s");
    (vec![Box::new(span)], resource)
}

#[tokio::test]
async fn otlp_grpc_over_h2c() {
    let (addr, mut received) = collector(Wire::H2c, grpc_ok, None).await;
    let mut exporter = OtlpExporter::new(
        Transport::Grpc,
        endpoint(addr, false),
        HeaderMap::new(),
        Duration::from_secs(5),
    )
    .unwrap();
    let (batch, resource) = test_batch();
    exporter.export(&batch, &resource).await.unwrap();
    // The connection is reused.
    exporter.export(&batch, &resource).await.unwrap();
    for _ in 0..2 {
        let captured = received.recv().await.unwrap();
        assert_eq!(captured.path, otlp::GRPC_EXPORT_PATH);
        assert_eq!(captured.headers["content-type"], "application/grpc");
        assert_eq!(captured.headers["te"], "trailers");
        let body = captured.body;
        assert_eq!(body[0], 0, "uncompressed");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert_eq!(len, body.len() - 5);
        let request = proto::ExportTraceServiceRequest::decode(&body[5..]).unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "direct");
        assert_eq!(span.trace_id, batch[0].context.trace_id.0.to_vec());
        assert!(span.parent_span_id.is_empty());
    }
}

#[tokio::test]
async fn otlp_errors_are_reported() {
    let (batch, resource) = test_batch();
    let (addr, _rx) = collector(Wire::H2c, grpc_unavailable, None).await;
    let mut grpc = OtlpExporter::new(
        Transport::Grpc,
        endpoint(addr, false),
        HeaderMap::new(),
        Duration::from_secs(5),
    )
    .unwrap();
    let error = grpc.export(&batch, &resource).await.unwrap_err();
    assert!(error.0.contains("grpc-status 14: no capacity"), "{error}");

    let (addr, _rx) = collector(Wire::Http1, http_unavailable, None).await;
    let mut http = OtlpExporter::new(
        Transport::HttpProtobuf,
        endpoint(addr, false),
        HeaderMap::new(),
        Duration::from_secs(5),
    )
    .unwrap();
    let error = http.export(&batch, &resource).await.unwrap_err();
    assert!(error.0.contains("503"), "{error}");
    assert!(error.0.contains("busy"), "{error}");

    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut http = OtlpExporter::new(
        Transport::HttpProtobuf,
        endpoint(addr, false),
        HeaderMap::new(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(http.export(&batch, &resource).await.is_err());
    // A failing exporter does not stop the tracer.
    let tracer = Tracer::builder(http).build().unwrap();
    let (span, _) = tracer.start(&QUEUE_SCOPE, "x", SpanKind::Internal, None);
    drop(span);
    tracer.force_flush().await;
    assert!(tracer.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn otlp_grpc_over_tls() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let (addr, mut received) = collector(Wire::H2Tls, grpc_ok, Some(acceptor)).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut exporter = OtlpExporter::with_roots(
        Transport::Grpc,
        endpoint(addr, true),
        HeaderMap::new(),
        Duration::from_secs(5),
        roots,
    )
    .unwrap();
    let (batch, resource) = test_batch();
    exporter.export(&batch, &resource).await.unwrap();
    let captured = received.recv().await.unwrap();
    assert_eq!(captured.path, otlp::GRPC_EXPORT_PATH);
    // Without the test root the handshake fails.
    let mut untrusting = OtlpExporter::with_roots(
        Transport::Grpc,
        endpoint(addr, true),
        HeaderMap::new(),
        Duration::from_secs(5),
        rustls::RootCertStore::empty(),
    )
    .unwrap();
    let error = untrusting.export(&batch, &resource).await.unwrap_err();
    assert!(error.0.contains("TLS"), "{error}");
}

/// Junk never panics the parsers and the configuration.
#[test]
fn junk_input_never_panics() {
    let alphabet: &[u8] = b"0123456789abcdefABCDEF-:/[]%@?#. \x00\x7f\xc3\xa9hx";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let env = std::collections::HashMap::<&str, &str>::new();
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 60) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|i| alphabet[((state >> (i % 50)) as usize + i * 7) % alphabet.len()])
            .collect();
        let _ = context::parse_traceparent(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = url::parse(&text);
        let _ = config::resolve_endpoint(otlp::Transport::HttpProtobuf, &text, &env);
        let _ = otlp::parse_headers(&text);
        let _ = sampler::sampler_from_env(&text, Some(text.to_string()));
    }
}

/// Drops every batch.
struct NullExporter;

impl SpanExporter for NullExporter {
    fn export<'a>(
        &'a mut self,
        _batch: &'a [Box<SpanData>],
        _resource: &'a Resource,
    ) -> export::ExportFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// Per-request cost of the spans with tracing on (server, proxy, wait, client; sampled or not):
/// `cargo test -p knative-common --lib trace::tests::per_request_cost -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn per_request_cost() {
    let n = 20_000u32;
    let started = std::time::Instant::now();
    for _ in 0..n {
        let request = Request::get("/path?q=1")
            .header("host", "svc.example.com")
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .body(())
            .unwrap();
        drop(std::hint::black_box(request));
    }
    println!(
        "baseline (building the request): {:?}",
        started.elapsed() / n
    );
    for (label, sampler) in [
        ("sampled", Sampler::ALWAYS_ON),
        ("unsampled", Sampler::ALWAYS_OFF),
    ] {
        let tracer = Tracer::builder(NullExporter)
            .sampler(sampler)
            .batch(BatchConfig {
                max_queue_size: 1 << 16,
                ..BatchConfig::default()
            })
            .build()
            .unwrap();
        let spans = ServerTracing::new(
            Some(tracer),
            ServerSpans::default(),
            "10.0.0.1:1234".parse().unwrap(),
            false,
        );
        let started = std::time::Instant::now();
        for _ in 0..n {
            let mut request = Request::get("/path?q=1")
                .header("host", "svc.example.com")
                .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
                .body(())
                .unwrap();
            let server = spans.start(tracer, &mut request);
            let proxy = tracer.start_in(
                request.extensions_mut(),
                &QUEUE_SCOPE,
                "p",
                SpanKind::Internal,
            );
            let wait = tracer.start_in(
                request.extensions_mut(),
                &QUEUE_SCOPE,
                "w",
                SpanKind::Internal,
            );
            request.extensions_mut().insert(CarriedSpan(Some(wait)));
            drop(request.extensions_mut().remove::<CarriedSpan>());
            let client = layer::start_client_span(
                tracer,
                &mut request,
                "127.0.0.1:8080".parse().unwrap(),
                layer::http_method_name,
            );
            drop((client, proxy, server));
            if tracer.queue.len() > 60_000 {
                tracer.force_flush().await;
            }
        }
        println!("{label}: {:?} per request (4 spans)", started.elapsed() / n);
        tracer.force_flush().await;
    }
}
