//! Observability end to end (spec §7, §1.3): `/metrics` with the §7.1 series, the request log of
//! §7.3, and the dynamic keys of `config-observability` / `config-logging` changed in the
//! discovery file without restart.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::{json, Value};
use support::*;

const REV: &str = "obs-00001";

/// The discovery document for `revs` plus a `configMaps` section.
fn document_with(revs: &[Rev], config_maps: Value) -> String {
    let mut doc: Value = serde_json::from_str(&document(revs)).unwrap();
    doc["configMaps"] = config_maps;
    serde_json::to_string_pretty(&doc).unwrap()
}

fn observability(data: Value) -> Value {
    json!({ "config-observability": { "data": data } })
}

async fn request(activator: SocketAddr) -> Resp {
    send(
        activator,
        rev_req("GET", "/obs?x=1", NS, REV)
            .header("user-agent", "obs-test")
            .body(empty())
            .unwrap(),
    )
    .await
}

/// Starts a pod for [`REV`], then an activator whose discovery file lists it and holds
/// `config_maps`.
async fn start(
    config_maps: Value,
    env: &[(&'static str, String)],
) -> (Activator, Pod, StatsReceiver) {
    let pod = Pod::start(App::ok().await, REV, 0).await;
    let stats = StatsReceiver::start().await;
    let revs = [Rev::new(REV, 0).ready([pod.addr()])];
    let mut config =
        ActivatorConfig::new(&stats.url()).discovery_text(&document_with(&revs, config_maps));
    for (name, value) in env {
        config = config.env(name, value);
    }
    let activator = config.start();
    activator.wait_healthy().await;
    (activator, pod, stats)
}

fn line_value<'a>(text: &'a str, prefix: &str, needle: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(prefix) && l.contains(needle))
        .and_then(|l| l.rsplit(' ').next())
}

/// `metrics-protocol: prometheus`: `/metrics` on METRICS_PROMETHEUS_PORT has the http server
/// histograms with the revision attributes, queued/active back at 0, the concurrency gauge,
/// the autoscaler connection gauge and `target_info`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_after_requests() {
    let port = free_port();
    let (activator, _pod, _stats) = start(
        observability(json!({"metrics-protocol": "prometheus"})),
        &[
            ("METRICS_PROMETHEUS_PORT", port.to_string()),
            ("METRICS_PROMETHEUS_HOST", "127.0.0.1".to_owned()),
        ],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(request(activator.addr()).await.status, StatusCode::OK);
    }
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let revision_labels = format!(
        "k8s_namespace_name=\"{NS}\",kn_configuration_name=\"\",kn_revision_name=\"{REV}\",kn_service_name=\"\""
    );
    // The concurrency gauge appears with the first reporter tick (1 s).
    let text = eventually(DEADLINE, "kn_revision_request_concurrency", || async {
        let resp = get(metrics_addr, "/metrics").await;
        let text = String::from_utf8_lossy(&resp.body).into_owned();
        text.contains("kn_revision_request_concurrency{")
            .then_some(text)
    })
    .await;
    let count = line_value(
        &text,
        "http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",",
        &revision_labels,
    );
    assert_eq!(count, Some("3"), "{text}");
    assert!(text.contains("url_scheme=\"http\""), "{text}");
    for family in ["kn_revision_request_queued", "kn_revision_request_active"] {
        let value = line_value(
            &text,
            &format!("{family}{{k8s_namespace_name=\"{NS}\",kn_revision_name=\"{REV}\","),
            "otel_scope_name=\"knative.dev/serving/pkg/activator\"",
        );
        assert_eq!(value, Some("0"), "{family}: {text}");
    }
    assert!(
        text.contains(&format!(
            "kn_revision_request_concurrency{{{revision_labels},"
        )),
        "{text}"
    );
    assert_eq!(
        line_value(
            &text,
            "kn_activator_stats_conn_reachable{",
            "peer=\"autoscaler\""
        ),
        Some("1"),
        "{text}"
    );
    assert!(text.contains("# TYPE target_info gauge"), "{text}");
    assert!(
        text.contains(&format!("k8s_pod_name=\"{POD_NAME}\"")),
        "{text}"
    );
    assert!(text.contains("service_name=\"activator\""), "{text}");
    // Kubelet probes (wait_healthy sent some) are never measured: every series has a revision.
    let server_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .collect();
    assert_eq!(server_lines.len(), 1, "{text}");
    let resp = get(metrics_addr, "/other").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
}

/// Default `metrics-protocol: none`: no metrics listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_metrics_listener_by_default() {
    let port = free_port();
    let (activator, _pod, _stats) = start(
        json!({}),
        &[
            ("METRICS_PROMETHEUS_PORT", port.to_string()),
            ("METRICS_PROMETHEUS_HOST", "127.0.0.1".to_owned()),
        ],
    )
    .await;
    assert_eq!(request(activator.addr()).await.status, StatusCode::OK);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// An invalid startup key is fatal and named.
#[test]
fn invalid_startup_key_is_fatal() {
    let doc = document_with(&[], observability(json!({"metrics-protocol": "statsd"})));
    let exited = ActivatorConfig::new("ws://127.0.0.1:9")
        .discovery_text(&doc)
        .run_to_exit();
    exited.assert_failed();
    let all = format!("{}{}", exited.stdout, exited.stderr);
    assert!(
        all.contains("metrics-protocol") && all.contains("statsd"),
        "{all}"
    );
    let doc = document_with(
        &[],
        observability(json!({"metrics-protocol": "prometheus"})),
    );
    let exited = ActivatorConfig::new("ws://127.0.0.1:9")
        .discovery_text(&doc)
        .env("METRICS_PROMETHEUS_PORT", "80")
        .run_to_exit();
    exited.assert_failed();
    assert!(
        exited.stderr.contains("METRICS_PROMETHEUS_PORT"),
        "{}",
        exited.stderr
    );
}

/// Counts stdout lines starting with `prefix`.
fn lines_with(activator: &Activator, prefix: &str) -> usize {
    activator
        .stdout_text()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

/// Sends requests until a request-log line starting with `prefix` shows up.
async fn wait_request_line(activator: &Activator, prefix: &str) {
    let addr = activator.addr();
    eventually(
        DEADLINE,
        &format!("a request-log line {prefix:?}"),
        || async move {
            assert_eq!(request(addr).await.status, StatusCode::OK);
            (lines_with(activator, prefix) > 0).then_some(())
        },
    )
    .await
}

/// The default template's line (§7.3), then a template change in the discovery file taking
/// effect without restart, then an invalid template keeping the previous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_default_shape_and_dynamic_template() {
    let default_template = go_text_template::DEFAULT_TEMPLATE;
    let obs = |template: &str| {
        observability(json!({
            "logging.enable-request-log": "true",
            "logging.request-log-template": template,
        }))
    };
    let (activator, pod, _stats) = start(obs(default_template), &[]).await;
    assert_eq!(request(activator.addr()).await.status, StatusCode::OK);
    activator.wait_log("\"httpRequest\"", 1).await;
    let stdout = activator.stdout_text();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("{\"httpRequest\""))
        .unwrap();
    let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let http = &value["httpRequest"];
    assert_eq!(http["requestMethod"], "GET");
    assert_eq!(http["requestUrl"], "/obs?x=1");
    assert_eq!(http["requestSize"], "0");
    assert_eq!(http["status"], 200);
    assert_eq!(http["userAgent"], "obs-test");
    assert!(http["remoteIp"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(http["serverIp"], "");
    assert_eq!(http["protocol"], "HTTP/1.1");
    let latency = http["latency"].as_str().unwrap();
    assert!(
        latency.strip_suffix('s').unwrap().parse::<f64>().is_ok(),
        "{latency}"
    );
    assert_eq!(value["traceId"], "");
    // Probes and unknown revisions are never logged.
    let before = lines_with(&activator, "{\"httpRequest\"");
    assert_eq!(kubelet_probe(activator.addr()).await.status, StatusCode::OK);
    let unknown = send(
        activator.addr(),
        rev_req("GET", "/", NS, "missing").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(lines_with(&activator, "{\"httpRequest\""), before);

    // A new template applies without restart.
    let revs = [Rev::new(REV, 0).ready([pod.addr()])];
    let template =
        "RL {{.Request.Method}} {{.Revision.Namespace}}/{{.Revision.Name}} {{.Response.Code}}";
    activator.set_discovery_text(&document_with(&revs, obs(template)));
    wait_request_line(&activator, "RL GET").await;
    assert!(
        activator
            .stdout_text()
            .contains(&format!("RL GET {NS}/{REV} 200\n")),
        "{}",
        activator.stdout_text()
    );
    // An invalid template is refused; the previous one stays.
    activator.set_discovery_text(&document_with(&revs, obs("{{}}")));
    activator
        .wait_log("invalid observability configuration", 1)
        .await;
    let before = lines_with(&activator, "RL GET");
    assert_eq!(request(activator.addr()).await.status, StatusCode::OK);
    eventually(DEADLINE, "one more RL line", || {
        std::future::ready((lines_with(&activator, "RL GET") > before).then_some(()))
    })
    .await;
    // Disabled: no more lines.
    activator.set_discovery_text(&document_with(
        &revs,
        observability(json!({"logging.enable-request-log": "false",
                             "logging.request-log-template": template})),
    ));
    activator
        .wait_log("observability configuration updated", 2)
        .await;
    let before = lines_with(&activator, "RL GET");
    assert_eq!(request(activator.addr()).await.status, StatusCode::OK);
    assert_eq!(request(activator.addr()).await.status, StatusCode::OK);
    assert_eq!(lines_with(&activator, "RL GET"), before);
}

/// `loglevel.activator` changes the process log level without restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_changes_without_restart() {
    let maps = |level: &str, template: &str| {
        json!({
            "config-logging": {"data": {"loglevel.activator": level}},
            "config-observability": {"data": {
                "logging.enable-request-log": "true",
                "logging.request-log-template": template,
            }},
        })
    };
    let (activator, pod, _stats) = start(maps("info", "A1 {{.Request.Method}}"), &[]).await;
    activator.wait_log("log level set", 1).await;
    let revs = [Rev::new(REV, 0).ready([pod.addr()])];
    // At `error`, the info lines of the next changes are not written.
    activator.set_discovery_text(&document_with(
        &revs,
        maps("error", "A2 {{.Request.Method}}"),
    ));
    wait_request_line(&activator, "A2 GET").await;
    let text = activator.stdout_text();
    assert_eq!(text.matches("log level set").count(), 1, "{text}");
    assert!(
        !text.contains("observability configuration updated"),
        "{text}"
    );
    // Back to `debug`: logged again.
    activator.set_discovery_text(&document_with(
        &revs,
        maps("debug", "A2 {{.Request.Method}}"),
    ));
    activator.wait_log("log level set", 2).await;
    assert!(activator.stdout_text().contains("\"level\":\"debug\""));
}

/// `tracing-protocol: stdout` with sampling 1: the spans of §7.2 (`handle`, `throttler_try`,
/// the client span, `activator_proxy`) share the incoming trace id, and the queue-proxy (hence
/// the app) receives a `traceparent` of that trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_propagation() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (activator, pod, _stats) = start(
        observability(json!({"tracing-protocol": "stdout", "tracing-sampling-rate": "1"})),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned())],
    )
    .await;
    let resp = send(
        activator.addr(),
        rev_req("GET", "/obs", NS, REV)
            .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let seen = pod.app.only_seen();
    let traceparent = seen.header("traceparent").expect("traceparent at the app");
    assert!(traceparent.contains(TRACE), "{traceparent}");
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "a new parent span: {traceparent}"
    );
    let names = [
        "\"handle\"",
        "\"throttler_try\"",
        "\"GET /obs\"",
        "\"activator_proxy\"",
    ];
    eventually(DEADLINE, "the four spans on stdout", || {
        let text = activator.stdout_text();
        let spans: Vec<&str> = text.lines().filter(|l| l.contains(TRACE)).collect();
        let all = names
            .iter()
            .all(|n| spans.iter().any(|l| l.contains(&format!("\"Name\":{n}"))));
        std::future::ready(all.then_some(()))
    })
    .await;
}

/// `metrics-protocol: http/protobuf`: the metrics are pushed to `metrics-endpoint` as OTLP
/// `ExportMetricsServiceRequest`s with the OTel names and dotted attributes; no `/metrics`
/// listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_push() {
    let mut collector = test_support::otlp::OtlpCollector::start().await;
    let port = free_port();
    let (activator, _pod, _stats) = start(
        observability(json!({
            "metrics-protocol": "http/protobuf",
            "metrics-endpoint": collector.endpoint(),
        })),
        &[
            ("OTEL_METRIC_EXPORT_INTERVAL", "100".to_owned()),
            ("METRICS_PROMETHEUS_PORT", port.to_string()),
            ("METRICS_PROMETHEUS_HOST", "127.0.0.1".to_owned()),
        ],
    )
    .await;
    assert_eq!(request(activator.addr()).await.status, StatusCode::OK);
    let deadline = std::time::Instant::now() + DEADLINE;
    let (path, message) = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(Some(export)) = tokio::time::timeout(left, collector.metrics.recv()).await else {
            panic!("no export with the request metrics in time");
        };
        let names: Vec<&str> = export.request.resource_metrics[0]
            .scope_metrics
            .iter()
            .flat_map(|s| s.metrics.iter().map(|m| m.name.as_str()))
            .collect();
        let complete = ["kn.revision.request.active", "http.server.request.duration"]
            .iter()
            .all(|n| names.contains(n));
        if complete {
            break (export.path, export.request);
        }
    };
    assert_eq!(path, "/v1/metrics");
    let names: Vec<&str> = message.resource_metrics[0]
        .scope_metrics
        .iter()
        .flat_map(|s| s.metrics.iter().map(|m| m.name.as_str()))
        .collect();
    for name in [
        "http.server.request.duration",
        "kn.revision.request.queued",
        "kn.activator.stats.conn.reachable",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// Spans end to end over OTLP `grpc`, into a collector built from opentelemetry-proto's tonic
/// `TraceService`: the activator's and the queue-proxy's spans form one trace rooted at the
/// incoming context, the queue-proxy's server span is the child of the activator's client span,
/// and the app's `traceparent` names the queue-proxy's client span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_spans_link_activator_queue_proxy_and_app() {
    use opentelemetry_proto::tonic::trace::v1::Span;
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
    }

    let mut collector = test_support::otlp::OtlpCollector::start().await;
    let qp_observability = format!(
        r#"{{"tracing":{{"protocol":"grpc","endpoint":"{}","samplingRate":1}},"metrics":{{}},"runtime":{{}},"requestMetrics":{{}}}}"#,
        collector.endpoint()
    );
    let pod = Pod::start_with_env(
        App::ok().await,
        REV,
        0,
        vec![
            ("OBSERVABILITY_CONFIG", qp_observability),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ],
    )
    .await;
    let stats = StatsReceiver::start().await;
    let revs = [Rev::new(REV, 0).ready([pod.addr()])];
    let config_maps = observability(json!({
        "tracing-protocol": "grpc",
        "tracing-endpoint": collector.endpoint(),
        "tracing-sampling-rate": "1",
    }));
    let activator = ActivatorConfig::new(&stats.url())
        .discovery_text(&document_with(&revs, config_maps))
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .start();
    activator.wait_healthy().await;
    let resp = send(
        activator.addr(),
        rev_req("GET", "/obs", NS, REV)
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);

    // The activator's four spans and the queue-proxy's three (CC 0: no wait span).
    let wanted = [
        "handle",
        "throttler_try",
        "activator_proxy",
        "GET /obs",
        "GET",
        "kn.queueproxy.proxy",
        "HTTP GET",
    ];
    let mut spans: Vec<Span> = Vec::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    while !wanted.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, collector.traces.recv()).await {
            Ok(Some(export)) => {
                assert!(export.grpc);
                for rs in export.request.resource_spans {
                    for ss in rs.scope_spans {
                        spans.extend(ss.spans.into_iter().filter(|s| hex(&s.trace_id) == TRACE));
                    }
                }
            }
            _ => panic!("spans did not arrive in time; got {spans:#?}"),
        }
    }
    // One tree: the activator's server span is the only child of the incoming context, every
    // other span's parent is a span of the same trace.
    let handle = named(&spans, "handle");
    assert_eq!(hex(&handle.parent_span_id), PARENT);
    assert_eq!(handle.kind, 2);
    for span in &spans {
        if span.name != "handle" {
            assert!(
                spans.iter().any(|p| p.span_id == span.parent_span_id),
                "{} has a parent outside the trace: {spans:#?}",
                span.name
            );
        }
    }
    let activator_client = named(&spans, "GET /obs");
    assert_eq!(activator_client.kind, 3);
    let qp_server = named(&spans, "GET");
    assert_eq!(qp_server.kind, 2);
    assert_eq!(qp_server.parent_span_id, activator_client.span_id);
    let qp_client = named(&spans, "HTTP GET");
    assert_eq!(qp_client.kind, 3);
    let traceparent = pod.app.only_seen().header("traceparent").unwrap();
    assert_eq!(
        traceparent,
        format!("00-{TRACE}-{}-01", hex(&qp_client.span_id))
    );
}
