//! Process lifecycle: health vs the autoscaler connection (spec §2.1, §6.5), SIGTERM drain
//! (spec §8), bad configuration and discovery input, pods dying mid-request (spec §2.14, §5.6).

mod support;

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use support::*;

/// An app answering `ok` after the delay given in the `x-delay-ms` header (default none).
async fn delay_app() -> App {
    App::start(handler(|req: Request<Incoming>| async move {
        let ms: u64 = req
            .headers()
            .get("x-delay-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        respond(StatusCode::OK, "ok")
    }))
    .await
}

/// §2.1, §6.5: a kubelet probe gets 200 and an empty body while the autoscaler websocket is up;
/// with the autoscaler unreachable it gets `500 connection has not yet been established\n`
/// while regular requests are still served; once the autoscaler appears the activator connects
/// (backoff) and turns healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_autoscaler_connection() {
    let app = delay_app().await;
    let revs = [Rev::new("health-00001", 0).ready([app.addr])];

    let stats = StatsReceiver::start().await;
    let up = ActivatorConfig::new(&stats.url()).revisions(&revs).start();
    up.wait_healthy().await;
    let resp = kubelet_probe(up.addr()).await;
    assert_eq!((resp.status, resp.text()), (StatusCode::OK, String::new()));
    assert_eq!(stats.connections(), 1);

    let port = free_port();
    let down = ActivatorConfig::new(&format!("ws://127.0.0.1:{port}"))
        .revisions(&revs)
        .start();
    for _ in 0..3 {
        let resp = kubelet_probe(down.addr()).await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.text(), "connection has not yet been established\n");
        let resp = send(down.addr(), rev_get("/", NS, "health-00001")).await;
        assert_eq!(
            (resp.status, resp.text()),
            (StatusCode::OK, "ok".to_owned())
        );
    }
    let late = StatsReceiver::start_on(port).await;
    let since = Instant::now();
    down.wait_healthy().await;
    println!(
        "turned healthy {:?} after the autoscaler came up",
        since.elapsed()
    );
    assert_eq!(late.connections(), 1);
}

/// §8: SIGTERM flips health to `500 received SIGTERM from kubelet\n` at once; regular requests
/// (new connections and keep-alive ones) are served during the drain sleep (1 s); a request in
/// flight when the listeners close completes; then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_zero() {
    let stats = StatsReceiver::start().await;
    let app = delay_app().await;
    let mut activator = ActivatorConfig::new(&stats.url())
        .env("ACTIVATOR_DRAIN_SLEEP_SECONDS", 1)
        .revisions(&[Rev::new("drain-00001", 0).ready([app.addr])])
        .start();
    activator.wait_healthy().await;
    let addr = activator.addr();
    let mut keep_alive = h1_connect(addr).await.unwrap();
    let resp = collect(
        keep_alive
            .send_request(rev_get("/", NS, "drain-00001"))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    // In flight across the end of the drain sleep.
    let slow = tokio::spawn(send(
        addr,
        rev_req("GET", "/slow", NS, "drain-00001")
            .header("x-delay-ms", "1600")
            .body(empty())
            .unwrap(),
    ));
    eventually(DEADLINE, "the slow request to reach the app", || {
        std::future::ready((app.concurrency.current() == 1).then_some(()))
    })
    .await;

    let signalled = Instant::now();
    activator.sigterm();
    let flipped = eventually(DEADLINE, "health to fail after SIGTERM", || async {
        let resp = kubelet_probe(addr).await;
        (resp.status == StatusCode::INTERNAL_SERVER_ERROR).then_some(resp)
    })
    .await;
    let flip = signalled.elapsed();
    assert_eq!(flipped.text(), "received SIGTERM from kubelet\n");
    assert!(
        flip < Duration::from_millis(500),
        "health flipped after {flip:?}"
    );

    // Still serving during the sleep.
    let resp = send(addr, rev_get("/", NS, "drain-00001")).await;
    assert_eq!(resp.status, StatusCode::OK);
    keep_alive
        .ready()
        .await
        .expect("keep-alive connection kept");
    let resp = collect(
        keep_alive
            .send_request(rev_get("/", NS, "drain-00001"))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "the checks above ran past the drain sleep"
    );

    let status = tokio::task::block_in_place(|| activator.wait_exit(DEADLINE))
        .expect("the activator exits after draining");
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", activator.stderr_text());
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK, "in-flight request drained");
    println!("SIGTERM: health flipped after {flip:?}, exited 0 after {exited:?}");
    assert!(
        exited >= Duration::from_millis(1000),
        "exited after {exited:?}, before the 1 s drain sleep ended"
    );
}

/// §8: a second SIGTERM during the drain sleep exits at once with code 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_exits_one() {
    let stats = StatsReceiver::start().await;
    let mut activator = ActivatorConfig::new(&stats.url())
        .env("ACTIVATOR_DRAIN_SLEEP_SECONDS", 60)
        .start();
    activator.wait_healthy().await;
    let addr = activator.addr();
    activator.sigterm();
    eventually(DEADLINE, "health to fail after SIGTERM", || async move {
        let resp = kubelet_probe(addr).await;
        (resp.status == StatusCode::INTERNAL_SERVER_ERROR).then_some(())
    })
    .await;
    let second = Instant::now();
    activator.sigterm();
    let status = tokio::task::block_in_place(|| activator.wait_exit(Duration::from_secs(5)))
        .expect("the second SIGTERM ends the process");
    assert_eq!(status.code(), Some(1));
    println!("second SIGTERM: exited 1 after {:?}", second.elapsed());
}

/// Startup errors exit 1 with a message naming the culprit: an invalid discovery file (file and
/// field), a missing one, unparsable JSON, a missing `POD_NAME`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_input_exits_one() {
    let url = "ws://127.0.0.1:9";
    let exited = ActivatorConfig::new(url)
        .discovery_text(
            r#"{"revisions": [{"namespace": "default", "name": "bad-00001",
                "containerConcurrency": "two"}]}"#,
        )
        .run_to_exit();
    exited.assert_failed();
    let file = exited.discovery_file.display().to_string();
    for needle in [file.as_str(), "default/bad-00001", "containerConcurrency"] {
        assert!(
            exited.stderr.contains(needle),
            "{needle}: {}",
            exited.stderr
        );
    }

    let exited = ActivatorConfig::new(url)
        .discovery_text("{\"revisions\": [")
        .run_to_exit();
    exited.assert_failed();
    let file = exited.discovery_file.display().to_string();
    assert!(exited.stderr.contains(&file), "{}", exited.stderr);
    assert!(exited.stderr.contains("JSON"), "{}", exited.stderr);

    let missing = format!("{}/no-such-discovery.json", env!("CARGO_TARGET_TMPDIR"));
    let exited = ActivatorConfig::new(url)
        .env("ACTIVATOR_DISCOVERY_FILE", &missing)
        .run_to_exit();
    exited.assert_failed();
    assert!(exited.stderr.contains(&missing), "{}", exited.stderr);

    for var in ["POD_NAME", "POD_IP", "SYSTEM_NAMESPACE"] {
        let exited = ActivatorConfig::new(url).without(var).run_to_exit();
        exited.assert_failed();
        assert!(exited.stderr.contains(var), "{var}: {}", exited.stderr);
    }
    let exited = ActivatorConfig::new(url)
        .env("PROBE_TIMEOUT", "soon")
        .run_to_exit();
    exited.assert_failed();
    assert!(exited.stderr.contains("PROBE_TIMEOUT"), "{}", exited.stderr);
}

/// An invalid rewrite of the discovery file while running is logged and ignored: the previous
/// revisions keep being served; a later valid rewrite is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rewrite_keeps_the_previous_state() {
    let stats = StatsReceiver::start().await;
    let app = delay_app().await;
    let mut activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new("keep-00001", 0).ready([app.addr])])
        .start();
    let addr = activator.addr();
    let ok = send(addr, rev_get("/", NS, "keep-00001")).await;
    assert_eq!(ok.status, StatusCode::OK);

    activator.set_discovery_text(
        r#"{"revisions": [{"namespace": "default", "name": "keep-00001", "pods": {"ready": ["not-an-address"]}}]}"#,
    );
    activator.wait_log("invalid discovery file", 1).await;
    activator.set_discovery_text("{ truncated");
    activator.wait_log("invalid discovery file", 2).await;
    let log = activator.stdout_text();
    assert!(log.contains("pods.ready[0]"), "{log}");
    for _ in 0..3 {
        let resp = send(addr, rev_get("/", NS, "keep-00001")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }

    activator.set_revisions(&[Rev::new("other-00001", 0)]);
    eventually(DEADLINE, "the valid rewrite to be applied", || async move {
        let resp = send(addr, rev_get("/", NS, "keep-00001")).await;
        (resp.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    activator.assert_healthy();
}

/// An app whose `/stream` sends the head and a first chunk, then never finishes; `/hang` never
/// answers; everything else answers `ok` at once.
async fn stalling_app() -> App {
    App::start(handler(|req: Request<Incoming>| async move {
        match req.uri().path() {
            "/stream" => {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    let _ = tx.send(Frame::data(bytes::Bytes::from("first"))).await;
                    std::future::pending::<()>().await;
                    drop(tx);
                });
                http::Response::new(body.boxed())
            }
            "/hang" => std::future::pending().await,
            _ => respond(StatusCode::OK, "ok"),
        }
    }))
    .await
}

/// §2.14: when a pod dies mid-response the client's response is aborted (never cleanly ended);
/// when it dies before the response head, the client gets a 502 with the error text. §5.6:
/// once discovery reports the dead pod not ready, the failed re-probe removes it and requests go
/// to the remaining healthy pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_dying_mid_request() {
    let stats = StatsReceiver::start().await;
    let name = "dying-00001";
    let (p1, p2) = tokio::join!(
        async { Pod::start(stalling_app().await, name, 1).await },
        async { Pod::start(stalling_app().await, name, 1).await },
    );
    // cc 1 → first available: requests go to the lowest-sorted pod (A) while it is free.
    let (mut a, b) = if p1.addr().to_string() < p2.addr().to_string() {
        (p1, p2)
    } else {
        (p2, p1)
    };
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(name, 1).ready([a.addr(), b.addr()])])
        .start();
    let addr = activator.addr();
    eventually(DEADLINE, "both pods healthy", || async {
        let r1 = send_streaming(addr, rev_get("/stream", NS, name));
        let r2 = send_streaming(addr, rev_get("/stream", NS, name));
        let (r1, r2) = tokio::join!(r1, r2);
        let ok = r1.is_ok_and(|r| r.status() == StatusCode::OK)
            && r2.is_ok_and(|r| r.status() == StatusCode::OK);
        (ok && a.app.seen_count() > 0 && b.app.seen_count() > 0).then_some(())
    })
    .await;
    // Mid-response: head and first chunk received from A, then A's pod dies. The warm-up's
    // dropped streams may still hold A's only slot for a moment (the activator releases it when
    // it notices the client went away), sending a request to B instead: retry until one lands on
    // A (any that lands on B is dropped and frees B again).
    let response = eventually(DEADLINE, "a /stream request to land on A", || async {
        let before = a.app.seen_count();
        let response = send_streaming(addr, rev_get("/stream", NS, name))
            .await
            .ok()?;
        (response.status() == StatusCode::OK && a.app.seen_count() == before + 1)
            .then_some(response)
    })
    .await;
    let b_before = b.app.seen_count();
    let mut body = response.into_body();
    let first = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("first chunk")
        .expect("frame")
        .expect("frame ok");
    assert_eq!(first.into_data().unwrap(), "first");
    // A request on B (A is busy: cc 1) that has not got its head yet.
    let hanging = tokio::spawn(send(addr, rev_get("/hang", NS, name)));
    eventually(DEADLINE, "the /hang request to reach B (A is busy)", || {
        std::future::ready((b.app.seen_count() > b_before).then_some(()))
    })
    .await;
    a.qp.kill();
    let rest = tokio::time::timeout(DEADLINE, async {
        loop {
            match body.frame().await {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the aborted response ends");
    assert!(
        rest.is_err(),
        "a response cut by the pod's death must be aborted, not cleanly ended"
    );
    assert!(!hanging.is_finished(), "the request on B is unaffected");
    hanging.abort();

    // A is still listed ready and was probed healthy: a request to it now fails with 502.
    let resp = send(addr, rev_get("/", NS, name)).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        resp.text(),
        format!("dial tcp {}: connect: connection refused\n", a.addr())
    );

    // Discovery reports A not ready (as Kubernetes would): A is re-probed, fails, and is dropped.
    activator.set_revisions(&[Rev::new(name, 1).ready([b.addr()]).not_ready([a.addr()])]);
    eventually(DEADLINE, "requests to reach B only", || async {
        let r = send(addr, rev_get("/", NS, name)).await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    for _ in 0..5 {
        let resp = send(addr, rev_get("/", NS, name)).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }
    let mut b = b;
    b.qp.assert_healthy();
}

/// §2.14: a pod that dies after receiving the request but before answering → 502 with the
/// transport error text (and a newline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_dying_before_the_response_head_is_502() {
    let stats = StatsReceiver::start().await;
    let name = "cut-00001";
    let mut pod = Pod::start(stalling_app().await, name, 0).await;
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(name, 0).ready([pod.addr()])])
        .start();
    let addr = activator.addr();
    eventually(DEADLINE, "the pod healthy", || async {
        (send(addr, rev_get("/", NS, name)).await.status == StatusCode::OK).then_some(())
    })
    .await;
    let hanging = tokio::spawn(send(addr, rev_get("/hang", NS, name)));
    eventually(DEADLINE, "the request to reach the app", || {
        std::future::ready((pod.app.concurrency.current() == 1).then_some(()))
    })
    .await;
    pod.qp.kill();
    let resp = tokio::time::timeout(DEADLINE, hanging)
        .await
        .expect("answered after the pod died")
        .unwrap();
    println!(
        "pod died before the head: {} {:?}",
        resp.status,
        resp.text()
    );
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert!(
        resp.text().ends_with('\n') && resp.text().len() > 1,
        "{:?}",
        resp.text()
    );
}
