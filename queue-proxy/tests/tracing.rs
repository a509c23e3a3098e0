//! Tracing on the real binary (spec §7.3, §1.3, §1.4): trace-context propagation to the user
//! container with tracing on and off, spans exported over OTLP `http/protobuf` and `grpc` to a
//! local collector that decodes them, the `stdout` exporter, the flush at shutdown, and fatal
//! configuration errors.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::*;
use tokio::sync::mpsc;

/// The OTLP messages, as opentelemetry-proto declares them.
mod proto {
    pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    pub use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
    pub use opentelemetry_proto::tonic::trace::v1::Span;
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn incoming_traceparent() -> String {
    format!("00-{TRACE}-{PARENT}-01")
}

/// `GET /traced` with a W3C context and baggage.
fn traced_request() -> Request<TestBody> {
    req("GET", "/traced")
        .header("traceparent", incoming_traceparent())
        .header("tracestate", "vendor=opaque")
        .header("baggage", "user=42,tier=gold")
        .body(empty())
        .unwrap()
}

/// What the collector received in one export request.
type Export = test_support::otlp::Export<proto::ExportTraceServiceRequest>;

/// An OTLP collector on 127.0.0.1 built from the OpenTelemetry crates (opentelemetry-proto's tonic
/// `TraceService` for `grpc`, its messages for `http/protobuf`).
async fn collector() -> (SocketAddr, mpsc::UnboundedReceiver<Export>) {
    let collector = test_support::otlp::OtlpCollector::start().await;
    (collector.addr(), collector.traces)
}

/// Collects exported spans until `done(spans)` holds (or the deadline passes).
async fn spans_until(
    rx: &mut mpsc::UnboundedReceiver<Export>,
    done: impl Fn(&[proto::Span]) -> bool,
) -> (Vec<proto::Span>, Vec<Export>) {
    let deadline = Instant::now() + DEADLINE;
    let mut spans = Vec::new();
    let mut exports = Vec::new();
    while !done(&spans) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(export)) => {
                for rs in &export.request.resource_spans {
                    for ss in &rs.scope_spans {
                        spans.extend(ss.spans.iter().cloned());
                    }
                }
                exports.push(export);
            }
            _ => panic!("spans did not arrive in time; got {spans:#?}"),
        }
    }
    (spans, exports)
}

fn named<'a>(spans: &'a [proto::Span], name: &str) -> &'a proto::Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(attributes: &'a [proto::KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            proto::any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn observability(protocol: &str, endpoint: &str, rate: f64) -> String {
    format!(
        r#"{{"tracing":{{"protocol":"{protocol}","endpoint":"{endpoint}","samplingRate":{rate}}},"metrics":{{}},"runtime":{{}},"requestMetrics":{{}}}}"#
    )
}

/// The traceparent the app received, split into (trace id, parent span id, flags).
fn app_traceparent(seen: &Seen) -> (String, String, String) {
    let tp = seen
        .header("traceparent")
        .expect("the app got a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// Tracing off (the default): the app receives the incoming context exactly as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_tracing_forwards_the_context_unchanged() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();
    let resp = send(qp.addr(), traced_request()).await;
    assert_eq!(resp.status, StatusCode::OK);
    let seen = app.only_seen();
    assert_eq!(
        seen.header("traceparent").as_deref(),
        Some(incoming_traceparent().as_str())
    );
    assert_eq!(seen.header("tracestate").as_deref(), Some("vendor=opaque"));
    assert_eq!(seen.header("baggage").as_deref(), Some("user=42,tier=gold"));
    // Without an incoming context nothing is invented.
    get(qp.addr(), "/plain").await;
    assert!(app.seen()[1].header("traceparent").is_none());
    qp.assert_healthy();
}

/// `http/protobuf` with CC 1: the app's traceparent continues the incoming trace with the
/// client span as parent; the collector receives server, proxy, wait and client spans linked
/// parent → child, with the queue-proxy's resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_exports_linked_spans_and_propagates() {
    let (collector_addr, mut exports) = collector().await;
    let app = App::ok().await;
    let endpoint = format!("http://{collector_addr}/v1/traces");
    let mut qp = QpConfig::new(app.port())
        .cc(1)
        .env(
            "OBSERVABILITY_CONFIG",
            observability("http/protobuf", &endpoint, 1.0),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", 50)
        .start();
    // A health check and a network probe: no spans at all.
    assert_eq!(health_check(qp.addr()).await.status, StatusCode::OK);
    let probe = send(
        qp.addr(),
        req("GET", "/")
            .header("k-network-probe", "probe")
            .header("k-network-hash", "h")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(probe.status, StatusCode::OK);
    let resp = send(qp.addr(), traced_request()).await;
    assert_eq!(resp.status, StatusCode::OK);

    let seen = app.only_seen();
    let (trace, parent, flags) = app_traceparent(&seen);
    assert_eq!(trace, TRACE);
    assert_ne!(
        parent, PARENT,
        "the queue-proxy's client span is the new parent"
    );
    assert_eq!(flags, "01");
    assert_eq!(seen.header("tracestate").as_deref(), Some("vendor=opaque"));
    assert_eq!(seen.header("baggage").as_deref(), Some("user=42,tier=gold"));

    let (spans, received) = spans_until(&mut exports, |s| s.len() >= 4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_eq!(received[0].path, "/v1/traces");
    assert!(!received[0].grpc);
    let server = named(&spans, "GET");
    let proxy = named(&spans, "kn.queueproxy.proxy");
    let wait = named(&spans, "kn.queueproxy.wait");
    let client = named(&spans, "HTTP GET");
    for span in &spans {
        assert_eq!(hex(&span.trace_id), TRACE, "{}", span.name);
    }
    assert_eq!(hex(&server.parent_span_id), PARENT);
    assert_eq!(server.kind, 2);
    assert_eq!(proxy.parent_span_id, server.span_id);
    assert_eq!(wait.parent_span_id, proxy.span_id);
    assert_eq!(client.parent_span_id, wait.span_id);
    assert_eq!(client.kind, 3);
    assert_eq!(hex(&client.span_id), parent);
    assert_eq!(
        attr(&server.attributes, "kn.route.tag"),
        Some("kn:disabled")
    );
    assert_eq!(attr(&server.attributes, "url.path"), Some("/traced"));
    assert_eq!(
        attr(&client.attributes, "url.full"),
        Some(format!("http://127.0.0.1:{}/traced", app.port()).as_str())
    );
    let resource = received[0].request.resource_spans[0]
        .resource
        .clone()
        .unwrap();
    assert_eq!(attr(&resource.attributes, "service.name"), Some("cfg"));
    assert_eq!(
        attr(&resource.attributes, "k8s.container.name"),
        Some("queue-proxy")
    );
    assert_eq!(
        attr(&resource.attributes, "k8s.namespace.name"),
        Some("default")
    );
    assert_eq!(
        attr(&resource.attributes, "kn.revision.name"),
        Some("rev-00001")
    );

    // A request without context starts a new trace; the app sees it.
    get(qp.addr(), "/fresh").await;
    let (spans, _) = spans_until(&mut exports, |s| s.len() >= 4).await;
    let fresh = &app.seen()[1];
    let (trace, parent, _) = app_traceparent(fresh);
    assert_ne!(trace, TRACE);
    assert_eq!(hex(&named(&spans, "HTTP GET").span_id), parent);
    assert!(named(&spans, "GET").parent_span_id.is_empty());
    qp.assert_healthy();
}

/// `grpc` (h2c, since the endpoint says `http`), CC 0: no wait span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exports_spans() {
    let (collector_addr, mut exports) = collector().await;
    let app = App::ok().await;
    let endpoint = format!("http://{collector_addr}");
    let mut qp = QpConfig::new(app.port())
        .env(
            "OBSERVABILITY_CONFIG",
            observability("grpc", &endpoint, 1.0),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", 50)
        .start();
    send(qp.addr(), traced_request()).await;
    let (spans, received) = spans_until(&mut exports, |s| s.len() >= 3).await;
    assert!(received[0].grpc);
    assert_eq!(
        received[0].path,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(!names.contains(&"kn.queueproxy.wait"));
    let client = named(&spans, "HTTP GET");
    assert_eq!(
        client.parent_span_id,
        named(&spans, "kn.queueproxy.proxy").span_id
    );
    let (_, parent, _) = app_traceparent(&app.only_seen());
    assert_eq!(hex(&client.span_id), parent);
    qp.assert_healthy();
}

/// Sampling rate 0 with tracing on: nothing is recorded, but the app still gets the trace id
/// with the queue-proxy's (unsampled) client span as parent — as upstream's `NeverSample`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_still_get_a_new_parent() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port())
        .env(
            "OBSERVABILITY_CONFIG",
            observability("grpc", "http://127.0.0.1:9", 0.0),
        )
        .start();
    send(qp.addr(), traced_request()).await;
    let (trace, parent, flags) = app_traceparent(&app.only_seen());
    assert_eq!(trace, TRACE);
    assert_ne!(parent, PARENT);
    assert_eq!(flags, "00");
    qp.assert_healthy();
}

/// `stdout`: one JSON object per span per line on standard output (always sampled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_exporter_writes_json_lines() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port())
        .env("OBSERVABILITY_CONFIG", observability("stdout", "", 0.0))
        .env("OTEL_BSP_SCHEDULE_DELAY", 50)
        .start();
    send(qp.addr(), traced_request()).await;
    let deadline = Instant::now() + DEADLINE;
    let spans = loop {
        let spans: Vec<serde_json::Value> = qp
            .stdout_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("SpanContext").is_some())
            .collect();
        if spans.len() >= 3 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "no spans on stdout:\n{}",
            qp.stdout_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = spans.iter().map(|s| s["Name"].as_str().unwrap()).collect();
    assert_eq!(names, ["HTTP GET", "kn.queueproxy.proxy", "GET"]);
    for span in &spans {
        assert_eq!(span["SpanContext"]["TraceID"], TRACE);
    }
    assert_eq!(spans[2]["Parent"]["SpanID"], PARENT);
    assert_eq!(spans[2]["Parent"]["Remote"], true);
    qp.assert_healthy();
}

/// Spans still queued at SIGTERM are exported before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_spans_are_flushed_at_shutdown() {
    let (collector_addr, mut exports) = collector().await;
    let app = App::ok().await;
    let endpoint = format!("http://{collector_addr}/v1/traces");
    let mut qp = QpConfig::new(app.port())
        .env(
            "OBSERVABILITY_CONFIG",
            observability("http/protobuf", &endpoint, 1.0),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", 600_000)
        .env("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 1)
        .start();
    send(qp.addr(), traced_request()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        exports.try_recv().is_err(),
        "nothing exported before shutdown"
    );
    qp.sigterm();
    let status = qp.wait_exit(DEADLINE).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let (spans, _) = spans_until(&mut exports, |s| s.len() >= 3).await;
    assert_eq!(spans.len(), 3);
}

/// Bad tracing configuration is fatal: exit 1, no panic.
#[test]
fn bad_tracing_configuration_exits_1() {
    for (config, extra) in [
        (observability("zipkin", "", 0.5), None),
        (observability("grpc", "127.0.0.1:4317", 0.5), None),
        (observability("http/protobuf", "http://[::1", 0.5), None),
        (
            observability("grpc", "collector:4317", 0.5),
            Some(("OTEL_TRACES_SAMPLER_ARG", "half")),
        ),
    ] {
        let mut qp = QpConfig::new(free_port()).env("OBSERVABILITY_CONFIG", &config);
        if let Some((name, value)) = extra {
            qp = qp.env(name, value);
        }
        let exited = qp.run_to_exit();
        exited.assert_failed();
        assert!(
            exited.stderr.contains("OBSERVABILITY_CONFIG")
                || exited.stderr.contains("endpoint")
                || exited.stderr.contains("OTEL_TRACES_SAMPLER_ARG"),
            "{config}: {exited:#?}"
        );
    }
}
