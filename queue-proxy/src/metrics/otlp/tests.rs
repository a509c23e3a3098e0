use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use super::*;
use crate::metrics::{Completion, Resource, UrlScheme};

fn metrics() -> &'static Metrics {
    let env: HashMap<&str, &str> = HashMap::new();
    Box::leak(Box::new(Metrics::new(Resource::from_env(&env))))
}

fn resource() -> OtelResource {
    let mut resource = OtelResource::empty();
    resource.set("k8s.container.name", "queue-proxy");
    resource.set("service.name", "svc");
    resource
}

fn record_server(m: &Metrics, host: &str, tag: Option<&str>, status: StatusCode, bytes: u64) {
    let mut request = Request::get("/").header("host", host);
    if let Some(tag) = tag {
        request = request.header("knative-serving-tag", tag);
    }
    let request = request.body(Full::new(Bytes::from_static(b"abc"))).unwrap();
    let mut done = m.server().start(&request, UrlScheme::Http).unwrap();
    done.respond(status);
    done.complete(bytes);
}

fn metric<'a>(request: &'a proto::ExportMetricsServiceRequest, name: &str) -> &'a proto::Metric {
    request.resource_metrics[0]
        .scope_metrics
        .iter()
        .flat_map(|s| &s.metrics)
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no {name} in {request:#?}"))
}

fn points(metric: &proto::Metric) -> &[proto::HistogramDataPoint] {
    match &metric.data {
        Some(proto::metric::Data::Histogram(h)) => {
            assert_eq!(h.aggregation_temporality, proto::CUMULATIVE);
            &h.data_points
        }
        other => panic!("{} is not a histogram: {other:?}", metric.name),
    }
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a proto::any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string(s: &str) -> proto::any_value::Value {
    proto::any_value::Value::StringValue(s.into())
}

fn int(n: i64) -> proto::any_value::Value {
    proto::any_value::Value::IntValue(n)
}

#[test]
fn nothing_recorded_nothing_exported() {
    assert_eq!(
        export_request(metrics(), &resource(), SystemTime::now()),
        None
    );
}

#[test]
fn request_carries_names_units_scopes_attributes_and_buckets() {
    let m = metrics();
    record_server(m, "svc.ns:8080", Some("blue"), StatusCode::OK, 7);
    record_server(m, "svc.ns:8080", Some("blue"), StatusCode::OK, 2000);
    record_server(m, "svc.ns", None, StatusCode::NOT_FOUND, 0);
    m.app().record(200, 0.02);
    m.app().record(200, 3.0);
    m.app().record(503, 0.001);
    m.app().set_queue_depth(4);

    let now = SystemTime::now();
    let request = export_request(m, &resource(), now).unwrap();
    assert_eq!(request.resource_metrics.len(), 1);
    let rm = &request.resource_metrics[0];
    let res = rm.resource.as_ref().unwrap();
    assert_eq!(
        attr(&res.attributes, "k8s.container.name"),
        Some(&string("queue-proxy"))
    );
    let scopes: Vec<(&str, &str)> = rm
        .scope_metrics
        .iter()
        .map(|s| {
            let scope = s.scope.as_ref().unwrap();
            (scope.name.as_str(), scope.version.as_str())
        })
        .collect();
    assert_eq!(
        scopes,
        [
            ("knative.dev/serving/pkg/queue", ""),
            (
                "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
                "0.69.0"
            ),
        ]
    );

    let units: Vec<(&str, &str)> = rm
        .scope_metrics
        .iter()
        .flat_map(|s| &s.metrics)
        .map(|m| (m.name.as_str(), m.unit.as_str()))
        .collect();
    assert_eq!(
        units,
        [
            ("kn.serving.invocation.duration", "s"),
            ("kn.serving.queue.depth", "{request}"),
            ("http.server.request.duration", "s"),
            ("http.server.request.body.size", "By"),
            ("http.server.response.body.size", "By"),
        ]
    );

    let invocations = points(metric(&request, "kn.serving.invocation.duration"));
    assert_eq!(invocations.len(), 2);
    let ok = &invocations[0];
    assert_eq!(
        attr(&ok.attributes, "http.response.status_code"),
        Some(&int(200))
    );
    assert_eq!(ok.count, 2);
    assert_eq!(ok.sum, Some(3.02));
    assert_eq!(ok.explicit_bounds, crate::metrics::DURATION_BUCKETS);
    let mut expected = vec![0u64; 15];
    expected[2] = 1; // 0.02 ≤ 0.025
    expected[11] = 1; // 3.0 ≤ 5
    assert_eq!(ok.bucket_counts, expected);
    assert_eq!(ok.time_unix_nano, unix_nanos(now));
    assert!(ok.start_time_unix_nano <= ok.time_unix_nano && ok.start_time_unix_nano > 0);
    assert_eq!(
        attr(&invocations[1].attributes, "http.response.status_code"),
        Some(&int(503))
    );

    match &metric(&request, "kn.serving.queue.depth").data {
        Some(proto::metric::Data::Gauge(g)) => {
            assert_eq!(
                g.data_points[0].value,
                Some(proto::number_data_point::Value::AsInt(4))
            );
            assert!(g.data_points[0].attributes.is_empty());
        }
        other => panic!("not a gauge: {other:?}"),
    }

    let sizes = points(metric(&request, "http.server.response.body.size"));
    assert_eq!(sizes.len(), 2);
    let blue = sizes
        .iter()
        .find(|p| attr(&p.attributes, "kn.route.tag") == Some(&string("blue")))
        .unwrap();
    assert_eq!(blue.count, 2);
    assert_eq!(blue.sum, Some(2007.0));
    assert_eq!(blue.explicit_bounds, crate::metrics::SIZE_BUCKETS);
    assert_eq!(blue.bucket_counts[2], 1); // 7 ≤ 10
    assert_eq!(blue.bucket_counts[11], 1); // 2000 ≤ 2500
    for (key, value) in [
        ("http.request.method", string("GET")),
        ("http.response.status_code", int(200)),
        ("network.protocol.name", string("http")),
        ("network.protocol.version", string("1.1")),
        ("server.address", string("svc.ns")),
        ("server.port", int(8080)),
        ("url.scheme", string("http")),
    ] {
        assert_eq!(attr(&blue.attributes, key), Some(&value), "{key}");
    }
    let request_sizes = points(metric(&request, "http.server.request.body.size"));
    assert!(request_sizes
        .iter()
        .all(|p| p.sum == Some(3.0 * p.count as f64)));
    let not_found = sizes
        .iter()
        .find(|p| attr(&p.attributes, "http.response.status_code") == Some(&int(404)))
        .unwrap();
    assert_eq!(attr(&not_found.attributes, "server.port"), None);

    // The encoding round-trips.
    let bytes = request.encode_to_vec();
    assert_eq!(
        proto::ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap(),
        request
    );
}

#[test]
fn interval_precedence() {
    let none: HashMap<&str, &str> = HashMap::new();
    assert_eq!(export_interval(0, &none), DEFAULT_INTERVAL);
    assert_eq!(
        export_interval(200_000_000, &none),
        Duration::from_millis(200)
    );
    let env: HashMap<&str, &str> = [("OTEL_METRIC_EXPORT_INTERVAL", "1500")].into();
    assert_eq!(
        export_interval(200_000_000, &env),
        Duration::from_millis(1500)
    );
    let bad: HashMap<&str, &str> = [("OTEL_METRIC_EXPORT_INTERVAL", "x")].into();
    assert_eq!(export_interval(0, &bad), DEFAULT_INTERVAL);
}

/// An h2c gRPC collector: sends (path, decoded request) for every call, answers status 0.
async fn grpc_collector() -> (
    u16,
    mpsc::UnboundedReceiver<(String, proto::ExportMetricsServiceRequest)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let path = request.uri().path().to_owned();
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let message = proto::ExportMetricsServiceRequest::decode(&body[5..]).unwrap();
                    let _ = tx.send((path, message));
                    let response = Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn grpc_periodic_export_and_final_flush() {
    let (port, mut rx) = grpc_collector().await;
    let env: HashMap<&str, &str> = HashMap::new();
    let exporter = exporter(Transport::Grpc, &format!("http://127.0.0.1:{port}"), &env).unwrap();
    let m = metrics();
    m.app().record(200, 0.2);
    let running = MetricsExporter::start(m, exporter, resource(), Duration::from_millis(50));
    let (path, first) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        path,
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
    );
    assert_eq!(
        points(metric(&first, "kn.serving.invocation.duration"))[0].count,
        1
    );

    m.app().record(200, 0.3);
    assert!(running.shutdown(Duration::from_secs(10)).await);
    // The last request received is the final flush, with both observations.
    let mut last = None;
    while let Ok((_, request)) = rx.try_recv() {
        last = Some(request);
    }
    let last = last.expect("a final export");
    assert_eq!(
        points(metric(&last, "kn.serving.invocation.duration"))[0].count,
        2
    );
}
