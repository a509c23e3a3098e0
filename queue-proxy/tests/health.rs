//! Layer 3 of the main chain: health checks and network probes answered by the queue-proxy
//! itself (spec §3.2, §3.3, §4.6; checklist HC1/HC2/HC4/HC5, I1, the Drainer items of §10.14).

mod support;

use http::StatusCode;
use support::*;

async fn probe(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut builder = req(method, path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(addr, builder.body(empty()).unwrap()).await
}

fn assert_go_error(resp: &Resp, status: StatusCode, body: &str) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(resp.text(), body);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        resp.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
}

/// Every row of the §3.3 table for a ready user container, on any path and method; none of
/// these requests reaches the app.
#[tokio::test]
async fn health_checks_and_network_probes_are_answered_locally() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let addr = qp.addr();

    for (method, path) in [("GET", "/"), ("GET", "/healthz"), ("POST", "/any/path?x=1")] {
        // HC2: kubelet readiness.
        let resp = probe(
            addr,
            method,
            path,
            &[
                ("user-agent", "kube-probe/1.29"),
                ("k-network-probe", "queue"),
            ],
        )
        .await;
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (StatusCode::OK, "queue")
        );
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        // I1: the activator's probe.
        let resp = probe(
            addr,
            method,
            path,
            &[
                ("user-agent", "Knative-Activator-Probe"),
                ("k-network-probe", "queue"),
            ],
        )
        .await;
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (StatusCode::OK, "queue")
        );
        // I1: the KPA "is the activator in the path" probe must fail on a queue-proxy.
        let resp = probe(
            addr,
            method,
            path,
            &[
                ("user-agent", "Knative-Autoscaling-Probe"),
                ("k-network-probe", "activator"),
            ],
        )
        .await;
        assert_go_error(
            &resp,
            StatusCode::BAD_REQUEST,
            "unexpected probe header value: activator\n",
        );
        // HC1 / HC5.
        let resp = probe(
            addr,
            method,
            path,
            &[
                ("user-agent", "kube-probe/1.29"),
                ("k-network-probe", "test-probe"),
            ],
        )
        .await;
        assert_go_error(
            &resp,
            StatusCode::BAD_REQUEST,
            "unexpected probe header value: test-probe\n",
        );
        let resp = probe(addr, method, path, &[("user-agent", "kube-probe/1.29")]).await;
        assert_go_error(
            &resp,
            StatusCode::BAD_REQUEST,
            "unexpected probe header value: \n",
        );
        // Ingress network probes.
        let resp = probe(
            addr,
            method,
            path,
            &[("k-network-probe", "probe"), ("k-network-hash", "abc123")],
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.text(), "");
        assert_eq!(resp.header("k-network-hash").as_deref(), Some("abc123"));
        let resp = probe(addr, method, path, &[("k-network-probe", "probe")]).await;
        assert_go_error(
            &resp,
            StatusCode::BAD_REQUEST,
            "a probe request must contain a non-empty \"K-Network-Hash\" header\n",
        );
    }
    assert!(app.seen().is_empty(), "{:#?}", app.seen());

    // Other K-Network-Probe values without a probe UA are ordinary requests (§6.1).
    let resp = probe(addr, "GET", "/", &[("k-network-probe", "activator")]).await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(
        app.only_seen().header("k-network-probe").as_deref(),
        Some("activator")
    );
    qp.assert_healthy();
}

/// Health checks over h2c are answered the same way.
#[tokio::test]
async fn health_check_over_h2c() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let mut h2 = h2_connect(qp.addr()).await;
    let resp = send_h2(
        &mut h2,
        http::Request::get(format!("http://{}/", qp.addr()))
            .header("user-agent", "Knative-Activator-Probe")
            .header("k-network-probe", "queue")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (StatusCode::OK, "queue")
    );
    assert!(app.seen().is_empty());
    qp.assert_healthy();
}

/// §2 note: `OPTIONS *` is answered by the server itself with an empty 200.
#[tokio::test]
async fn options_star_is_answered_locally() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let raw = raw_exchange(
        qp.addr(),
        b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".to_vec(),
        DEADLINE,
    )
    .await;
    assert!(
        status_line(&raw).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(app.seen().is_empty());
    qp.assert_healthy();
}

/// HC4 / §4.6: with a readiness probe that fails (TCP to a closed port), the health check is
/// `503` with an empty body; with one that passes, `200 queue`.
#[tokio::test]
async fn health_check_follows_the_user_container_probe() {
    let app = App::ok().await;
    let closed = free_port();
    let probe_json = |port: u16| {
        format!(
            r#"{{"tcpSocket":{{"port":{port},"host":"127.0.0.1"}},"successThreshold":1,"periodSeconds":1,"timeoutSeconds":1,"failureThreshold":3}}"#
        )
    };
    let mut qp = QpConfig::new(app.port())
        .env("SERVING_READINESS_PROBE", probe_json(closed))
        .start();
    let resp = health_check(qp.addr()).await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{resp:?}");
    assert_eq!(resp.text(), "");
    qp.assert_healthy();

    let mut qp = QpConfig::new(app.port())
        .env("SERVING_READINESS_PROBE", probe_json(app.port()))
        .start();
    let resp = health_check(qp.addr()).await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (StatusCode::OK, "queue")
    );
    qp.assert_healthy();
}
