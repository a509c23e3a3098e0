//! OTLP push of the request metrics on the real binary (spec §7.1, §1.4): with
//! `requestMetrics.protocol` `http/protobuf` the queue-proxy posts `ExportMetricsServiceRequest`s
//! to `<endpoint>/v1/metrics` every `exportInterval`, does not listen on the user-metrics port, and
//! flushes once more at shutdown.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::*;
use tokio::sync::mpsc;

/// The OTLP messages, as opentelemetry-proto declares them.
mod proto {
    pub use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    pub use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
    pub use opentelemetry_proto::tonic::metrics::v1::{
        metric, number_data_point, HistogramDataPoint, Metric,
    };
    /// `AGGREGATION_TEMPORALITY_CUMULATIVE`.
    pub const CUMULATIVE: i32 =
        opentelemetry_proto::tonic::metrics::v1::AggregationTemporality::Cumulative as i32;
}

/// One export request as received.
type Export = test_support::otlp::Export<proto::ExportMetricsServiceRequest>;

/// An OTLP collector on 127.0.0.1 built from the OpenTelemetry crates (it decodes
/// opentelemetry-proto's messages).
async fn collector() -> (SocketAddr, mpsc::UnboundedReceiver<Export>) {
    let collector = test_support::otlp::OtlpCollector::start().await;
    (collector.addr(), collector.metrics)
}

fn observability(protocol: &str, endpoint: &str, interval_ns: u64) -> String {
    format!(
        r#"{{"tracing":{{}},"metrics":{{}},"runtime":{{}},"requestMetrics":{{"protocol":"{protocol}","endpoint":"{endpoint}","exportInterval":{interval_ns}}}}}"#
    )
}

fn metrics(export: &Export) -> Vec<&proto::Metric> {
    export
        .request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .collect()
}

fn metric<'a>(export: &'a Export, name: &str) -> Option<&'a proto::Metric> {
    metrics(export).into_iter().find(|m| m.name == name)
}

fn histogram_points(metric: &proto::Metric) -> &[proto::HistogramDataPoint] {
    match &metric.data {
        Some(proto::metric::Data::Histogram(h)) => {
            assert_eq!(h.aggregation_temporality, proto::CUMULATIVE);
            &h.data_points
        }
        other => panic!("{} is not a histogram: {other:?}", metric.name),
    }
}

fn value<'a>(attributes: &'a [proto::KeyValue], key: &str) -> Option<&'a proto::any_value::Value> {
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

/// Waits for an export that satisfies `done`.
async fn export_where(
    rx: &mut mpsc::UnboundedReceiver<Export>,
    done: impl Fn(&Export) -> bool,
) -> Export {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(export)) if done(&export) => return export,
            Ok(Some(_)) => {}
            _ => panic!("no matching metrics export in time"),
        }
    }
}

fn invocation_count(export: &Export, status: i64) -> u64 {
    metric(export, "kn.serving.invocation.duration")
        .map(|m| {
            histogram_points(m)
                .iter()
                .filter(|p| value(&p.attributes, "http.response.status_code") == Some(&int(status)))
                .map(|p| p.count)
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_of_request_metrics() {
    let (collector_addr, mut exports) = collector().await;
    let app = App::ok().await;
    let metrics_port = free_port();
    let mut qp = QpConfig::new(app.port())
        .cc(2)
        .env(
            "OBSERVABILITY_CONFIG",
            observability(
                "http/protobuf",
                &format!("http://{collector_addr}"),
                200_000_000,
            ),
        )
        .env("METRICS_PROMETHEUS_PORT", metrics_port)
        .env("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 1)
        .start();

    for _ in 0..3 {
        let resp = send(
            qp.addr(),
            Request::post("/work")
                .header("host", "svc.default.example.com:8080")
                .header("knative-serving-tag", "blue")
                .body(full("hello"))
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    // Probes are not recorded.
    assert_eq!(health_check(qp.addr()).await.status, StatusCode::OK);

    let export = export_where(&mut exports, |e| invocation_count(e, 200) == 3).await;
    assert_eq!(export.path, "/v1/metrics");
    assert_eq!(export.headers["content-type"], "application/x-protobuf");

    // Resource.
    let rm = &export.request.resource_metrics[0];
    let resource = &rm.resource.as_ref().unwrap().attributes;
    for (key, expected) in [
        ("k8s.container.name", "queue-proxy"),
        ("k8s.namespace.name", "default"),
        ("kn.configuration.name", "cfg"),
        ("kn.revision.name", "rev-00001"),
        ("service.name", "cfg"),
    ] {
        assert_eq!(value(resource, key), Some(&string(expected)), "{key}");
    }

    // Scopes, names and units.
    let scope_of = |name: &str| {
        rm.scope_metrics
            .iter()
            .find(|sm| sm.metrics.iter().any(|m| m.name == name))
            .and_then(|sm| sm.scope.as_ref())
            .map(|s| s.name.clone())
            .unwrap()
    };
    assert_eq!(
        scope_of("kn.serving.invocation.duration"),
        "knative.dev/serving/pkg/queue"
    );
    assert_eq!(
        scope_of("http.server.request.duration"),
        "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
    );
    let units: Vec<(String, String)> = metrics(&export)
        .iter()
        .map(|m| (m.name.clone(), m.unit.clone()))
        .collect();
    for (name, unit) in [
        ("kn.serving.invocation.duration", "s"),
        ("kn.serving.queue.depth", "{request}"),
        ("http.server.request.duration", "s"),
        ("http.server.request.body.size", "By"),
        ("http.server.response.body.size", "By"),
    ] {
        assert!(
            units.contains(&(name.to_owned(), unit.to_owned())),
            "{name} [{unit}] missing from {units:?}"
        );
    }

    // The invocation histogram: 3 observations, bucket counts add up, OTel's bounds.
    let invocation =
        &histogram_points(metric(&export, "kn.serving.invocation.duration").unwrap())[0];
    assert_eq!(invocation.count, 3);
    assert_eq!(
        invocation.bucket_counts.len(),
        invocation.explicit_bounds.len() + 1
    );
    assert_eq!(invocation.bucket_counts.iter().sum::<u64>(), 3);
    assert_eq!(invocation.explicit_bounds.len(), 14);
    assert!(invocation.sum.unwrap() > 0.0);

    // The queue depth gauge (CC 2: a breaker exists).
    match &metric(&export, "kn.serving.queue.depth").unwrap().data {
        Some(proto::metric::Data::Gauge(g)) => assert_eq!(
            g.data_points[0].value,
            Some(proto::number_data_point::Value::AsInt(1))
        ),
        other => panic!("queue depth is not a gauge: {other:?}"),
    }

    // The HTTP server histograms, with the dotted attributes.
    let requests = histogram_points(metric(&export, "http.server.request.body.size").unwrap());
    let blue = requests
        .iter()
        .find(|p| value(&p.attributes, "kn.route.tag") == Some(&string("blue")))
        .expect("the tagged series");
    assert_eq!(blue.count, 3);
    assert_eq!(blue.sum, Some(15.0));
    // "hello" is 5 bytes: bucket (0, 5].
    assert_eq!(blue.bucket_counts[1], 3);
    for (key, expected) in [
        ("http.request.method", string("POST")),
        ("http.response.status_code", int(200)),
        ("network.protocol.name", string("http")),
        ("network.protocol.version", string("1.1")),
        ("server.address", string("svc.default.example.com")),
        ("server.port", int(8080)),
        ("url.scheme", string("http")),
    ] {
        assert_eq!(value(&blue.attributes, key), Some(&expected), "{key}");
    }
    let durations = histogram_points(metric(&export, "http.server.request.duration").unwrap());
    assert_eq!(durations.iter().map(|p| p.count).sum::<u64>(), 3);

    // Nothing listens on the Prometheus port.
    assert!(std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_err());

    // One more request, then shutdown: the final flush carries it.
    send(qp.addr(), get_req("/last")).await;
    qp.sigterm();
    let status = qp.wait_exit(DEADLINE).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    export_where(&mut exports, |e| invocation_count(e, 200) == 4).await;
}

/// A request-metrics endpoint that does not parse is fatal, as for tracing.
#[test]
fn bad_metrics_endpoint_exits_1() {
    let exited = QpConfig::new(free_port())
        .env(
            "OBSERVABILITY_CONFIG",
            observability("grpc", "127.0.0.1:4317", 0),
        )
        .run_to_exit();
    assert_eq!(exited.status.code(), Some(1), "{}", exited.stderr);
    assert!(!exited.stderr.contains("panicked"), "{}", exited.stderr);
}

/// Export interval from the configuration in nanoseconds: nothing before it elapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_wait_for_the_interval() {
    let (collector_addr, mut exports) = collector().await;
    let app = App::ok().await;
    let qp = QpConfig::new(app.port())
        .env(
            "OBSERVABILITY_CONFIG",
            observability(
                "http/protobuf",
                &format!("http://{collector_addr}"),
                60_000_000_000,
            ),
        )
        .start();
    send(qp.addr(), get_req("/")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        exports.try_recv().is_err(),
        "nothing exported within the interval"
    );
}
