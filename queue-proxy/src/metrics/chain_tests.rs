//! End to end over real sockets: the metering layers composed with the real request-path stages
//! (breaker, timeouts, forwarded shim, reverse proxy) as the main chain composes them, and the
//! `/metrics` listener serving the result.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use knative_common::body::LocalBody;
use knative_common::breaker::{Breaker, BreakerLayer};
use knative_common::proxy::{PeerIp, ReverseProxy, Upstream};
use knative_common::server::{bind_addr, serve, Protocols, ServerLimits};
use knative_common::stats::RequestStats;
use knative_common::timeout::{TimeoutLayer, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_layer::Layer;
use tower_service::Service;

use super::{handle, AppMetricsLayer, Metrics, Resource, UrlScheme};
use crate::handler::QueueHandlerLayer;
use crate::observed::ObserveLayer;

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

fn loopback() -> TcpListener {
    bind_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap()
}

/// The user container: `hello` for everything.
async fn user_container() -> SocketAddr {
    let listener = loopback();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Pod {
    upstream: Upstream,
    breaker: Option<Breaker>,
    stats: RequestStats,
    metrics: Metrics,
}

/// Layers 1 and 7–11 of the main chain, metering included.
fn chain(
    pod: &'static Pod,
    remote: SocketAddr,
) -> impl Service<
    Request<knative_common::h2::IncomingBody>,
    Response = Response<impl LocalBody>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let metrics = Some(&pod.metrics);
    let proxy = ReverseProxy::new(&pod.upstream, PeerIp::new(remote));
    let chain = AppMetricsLayer::new(metrics, pod.breaker.as_ref()).layer(proxy);
    let chain =
        QueueHandlerLayer::new(&pod.stats, BreakerLayer::new(pod.breaker.as_ref())).layer(chain);
    let timeouts = Timeouts {
        total: Duration::from_secs(30),
        response_start: None,
        idle: None,
    };
    let chain = TimeoutLayer::new(timeouts, "request timeout").layer(chain);
    ObserveLayer::metrics_only(metrics, UrlScheme::Http, remote).layer(chain)
}

async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn metered_main_chain_and_listener() {
    let upstream_addr = user_container().await;
    let env: std::collections::HashMap<&str, &str> = [
        ("SERVING_NAMESPACE", "default"),
        ("SERVING_REVISION", "rev-1"),
    ]
    .into_iter()
    .collect();
    let pod: &'static Pod = leak(Pod {
        upstream: Upstream::new(upstream_addr, 4),
        breaker: Some(Breaker::for_container_concurrency(2).unwrap()),
        stats: RequestStats::new(),
        metrics: Metrics::new(Resource::from_env(&env)),
    });
    let (_stop_tx, stop_rx) = watch::channel(false);

    let main = loopback();
    let main_addr = main.local_addr().unwrap();
    tokio::spawn(serve(
        main,
        Protocols::Http1AndH2c,
        ServerLimits::default(),
        move |remote| chain(pod, remote),
        stop_rx.clone(),
    ));
    let user_metrics = loopback();
    let metrics_addr = user_metrics.local_addr().unwrap();
    tokio::spawn(serve(
        user_metrics,
        Protocols::Http1,
        ServerLimits {
            header_read_timeout: Duration::from_secs(5),
            ..ServerLimits::default()
        },
        move |_| tower::service_fn(move |req| handle(req, &pod.metrics)),
        stop_rx,
    ));

    for request in [
        "GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:18013\r\nConnection: close\r\n\r\n",
        "GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:18013\r\nConnection: close\r\n\r\n",
        "HEAD / HTTP/1.1\r\nHost: 127.0.0.1:18013\r\nConnection: close\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:18013\r\nKnative-Serving-Tag: t1\r\n\
         Content-Length: 7\r\nConnection: close\r\n\r\npayload",
        // A probe goes all the way through here (no drainer), but is not measured.
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:18013\r\nK-Network-Probe: probe\r\n\
         Connection: close\r\n\r\n",
    ] {
        let response = exchange(main_addr, request).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }

    let scrape = exchange(
        metrics_addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
    assert!(
        scrape.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{scrape}"
    );
    let base = "http_response_status_code=\"200\",kn_route_tag=\"kn:disabled\",\
network_protocol_name=\"http\",network_protocol_version=\"1.1\",\
otel_scope_name=\"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp\",\
otel_scope_schema_url=\"\",otel_scope_version=\"0.69.0\",server_address=\"127.0.0.1\",\
server_port=\"18013\",url_scheme=\"http\"}";
    for expected in [
        format!("http_server_response_body_size_bytes_sum{{http_request_method=\"GET\",{base} 10.0"),
        format!("http_server_request_duration_seconds_count{{http_request_method=\"GET\",{base} 2"),
        // HEAD: nothing sent back, and it completes although hyper never polls the body.
        format!("http_server_response_body_size_bytes_sum{{http_request_method=\"HEAD\",{base} 0.0"),
        format!("http_server_request_duration_seconds_count{{http_request_method=\"HEAD\",{base} 1"),
        "http_server_request_body_size_bytes_sum{http_request_method=\"POST\",\
http_response_status_code=\"200\",kn_route_tag=\"t1\","
            .to_owned(),
        "kn_serving_invocation_duration_seconds_count{http_response_status_code=\"200\",\
otel_scope_name=\"knative.dev/serving/pkg/queue\",otel_scope_schema_url=\"\",otel_scope_version=\"\"} 4"
            .to_owned(),
        "kn_serving_queue_depth{otel_scope_name=\"knative.dev/serving/pkg/queue\",\
otel_scope_schema_url=\"\",otel_scope_version=\"\"} 1"
            .to_owned(),
        "k8s_namespace_name=\"default\"".to_owned(),
        "kn_revision_name=\"rev-1\"".to_owned(),
    ] {
        assert!(scrape.contains(&expected), "missing {expected} in:\n{scrape}");
    }
    let post = scrape
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_body_size_bytes_sum{http_request_method=\"POST\"")
        })
        .unwrap();
    assert!(post.ends_with(" 7.0"), "{post}");
    assert!(!scrape.contains("K-Network-Probe"));
    // Five requests went through; the probe is in neither histogram.
    assert_eq!(pod.breaker.as_ref().unwrap().pending(), 0);

    let not_found = exchange(
        metrics_addr,
        "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        not_found.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{not_found}"
    );
    assert!(not_found.ends_with("404 page not found\n"), "{not_found}");
    let not_allowed = exchange(
        metrics_addr,
        "DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        not_allowed.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{not_allowed}"
    );
    assert!(
        not_allowed.contains("Allow: GET, HEAD\r\n"),
        "{not_allowed}"
    );
}
