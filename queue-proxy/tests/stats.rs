//! Autoscaler stats end to end (spec §6; checklist H3 stats half, S1, P6, I2, I3): the
//! protobuf `metrics.Stat` on the stats port, decoded independently of the implementation.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::sync::mpsc;

/// Collects distinct reports (told apart by `process_uptime`, which differs in every report)
/// until `done` holds for the list, or `limit` passes.
async fn reports_until(
    stats: std::net::SocketAddr,
    limit: Duration,
    done: impl Fn(&[Stat]) -> bool,
) -> Vec<Stat> {
    let mut seen: BTreeMap<u64, Stat> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let stat = scrape(stats).await;
        if stat.process_uptime > 0.0 {
            seen.insert(stat.process_uptime.to_bits(), stat);
        }
        let list: Vec<Stat> = seen.values().cloned().collect();
        if done(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats never satisfied the condition within {limit:?}: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// H3 stats half and I2/I3: a request with `K-Proxy-Request: activator` shows up as
/// `proxied_request_count` in the protobuf `metrics.Stat` on the stats port within a report
/// period or two; health checks and network probes sent alongside are never counted.
#[tokio::test]
async fn proxied_request_is_counted_in_the_stats() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();

    // Before anything happened the stat only names the pod.
    let stat = scrape(qp.stats_addr()).await;
    assert_eq!(stat.pod_name, "rev-00001-deployment-abc");

    for _ in 0..3 {
        assert_eq!(health_check(qp.addr()).await.status, StatusCode::OK);
    }
    let probe = send(
        qp.addr(),
        req("GET", "/")
            .header("k-network-probe", "probe")
            .header("k-network-hash", "abc")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(probe.status, StatusCode::OK);
    let resp = send(
        qp.addr(),
        req("GET", "/")
            .header("host", "nimporte.pas")
            .header("k-original-host", "a-better-host.com")
            .header("k-proxy-request", "activator")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);

    let stats = qp.stats_addr();
    let stat = eventually(
        DEADLINE,
        "a report with the proxied request",
        || async move {
            let stat = scrape(stats).await;
            (stat.request_count > 0.0).then_some(stat)
        },
    )
    .await;
    assert_eq!(stat.pod_name, "rev-00001-deployment-abc");
    assert_eq!(stat.proxied_request_count, 1.0, "{stat:?}");
    assert_eq!(stat.request_count, 1.0, "probes are not counted: {stat:?}");
    assert!(stat.process_uptime > 0.0, "{stat:?}");
    assert_eq!(stat.timestamp, 0);
    assert_eq!(
        app.only_seen().header("host").as_deref(),
        Some("a-better-host.com")
    );
    qp.assert_healthy();
}

/// S1/I3: `/metrics` answers protobuf whatever the `Accept` header, repeatedly on one keep-alive
/// connection; other paths are `404 page not found`.
#[tokio::test]
async fn metrics_endpoint_serves_protobuf_on_keep_alive() {
    use prost::Message;
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    let stream = tokio::net::TcpStream::connect(qp.stats_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for accept in [
        None,
        Some("something-else"),
        Some("application/protobuf"),
        Some("something/else, application/protobuf"),
    ] {
        let mut builder = req("GET", "/metrics");
        if let Some(a) = accept {
            builder = builder.header("accept", a);
        }
        let resp = collect(
            sender
                .send_request(builder.body(empty()).unwrap())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/protobuf")
        );
        let stat = Stat::decode(resp.body).unwrap();
        assert_eq!(stat.pod_name, "rev-00001-deployment-abc");
    }
    let resp = get(qp.stats_addr(), "/other").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(resp.text(), "404 page not found\n");
    qp.assert_healthy();
}

/// §6.1: requests refused by the breaker and requests that only waited in its queue are
/// counted too; kubelet probes (`K-Kubelet-Probe`) are not. With CC=1, 12 concurrent requests
/// (1 refused) plus 2 kubelet probes add up to exactly 12 across the reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_queued_requests_are_counted_probes_are_not() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();
    let addr = qp.addr();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..14 {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut builder = req("GET", "/");
            if i < 2 {
                builder = builder.header("k-kubelet-probe", "1");
            }
            let _ = tx.send(send(addr, builder.body(empty()).unwrap()).await.status);
        });
    }
    for _ in 0..14 {
        let status = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
    }
    let total = |list: &[Stat]| list.iter().map(|s| s.request_count).sum::<f64>();
    let list = reports_until(qp.stats_addr(), DEADLINE, |list| total(list) >= 12.0).await;
    // One more report later, the total must not have grown past 12.
    let uptime = list.last().unwrap().process_uptime;
    let list = reports_until(qp.stats_addr(), DEADLINE, |l| {
        l.last().is_some_and(|s| s.process_uptime > uptime + 1.0)
    })
    .await;
    assert_eq!(total(&list), 12.0, "{list:#?}");
    assert!(list.iter().all(|s| s.proxied_request_count == 0.0));
    qp.assert_healthy();
}

/// §6.1: the average concurrency of a window in which two requests were in flight the whole
/// time is 2 (proxied average 1 when one of them came through the activator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn average_concurrency_reflects_requests_in_flight() {
    let gate = Gate::new();
    let g = gate.clone();
    let app = App::start(handler(move |_| {
        let g = g.clone();
        async move {
            g.wait().await;
            respond(StatusCode::OK, "ok")
        }
    }))
    .await;
    let mut qp = QpConfig::new(app.port()).start();
    let addr = qp.addr();
    let plain = tokio::spawn(async move { get(addr, "/").await });
    let proxied = tokio::spawn(async move {
        send(
            addr,
            req("GET", "/")
                .header("k-proxy-request", "activator")
                .body(empty())
                .unwrap(),
        )
        .await
    });
    eventually(DEADLINE, "both requests at the app", || async {
        (app.concurrency.current() == 2).then_some(())
    })
    .await;
    // A report whose window lies entirely inside the busy period: no arrivals in it.
    let list = reports_until(qp.stats_addr(), DEADLINE, |list| {
        list.iter()
            .any(|s| s.request_count == 0.0 && s.average_concurrent_requests > 0.0)
    })
    .await;
    let quiet = list
        .iter()
        .find(|s| s.request_count == 0.0 && s.average_concurrent_requests > 0.0)
        .unwrap();
    assert!(
        (quiet.average_concurrent_requests - 2.0).abs() < 1e-6,
        "{quiet:?}"
    );
    assert!(
        (quiet.average_proxied_concurrent_requests - 1.0).abs() < 1e-6,
        "{quiet:?}"
    );
    gate.open();
    assert_eq!(plain.await.unwrap().status, StatusCode::OK);
    assert_eq!(proxied.await.unwrap().status, StatusCode::OK);
    qp.assert_healthy();
}
