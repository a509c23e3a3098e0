//! Drain and shutdown basics (spec §5.1–§5.3, §9.2; integration I4, I5) on the real binary,
//! with the quiet period shortened through `QUEUE_DRAIN_QUIET_PERIOD_SECONDS`.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

const SHUTTING_DOWN: &str = "shutting down\n";

fn assert_shutting_down(resp: &Resp) {
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{resp:?}");
    assert_eq!(resp.text(), SHUTTING_DOWN);
}

fn assert_ready(resp: &Resp) {
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (StatusCode::OK, "queue"),
        "{resp:?}"
    );
}

/// I5 / §5.2: `/wait-for-drain` without SIGTERM drains for about a second (health checks and
/// network probes say `shutting down`), then the watchdog resets the drain: the call returns
/// 200 (long before the 30 s quiet period) and health checks pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_drain_without_sigterm_resets_after_a_second() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    assert_ready(&health_check(qp.addr()).await);

    let admin = qp.admin_addr();
    let start = Instant::now();
    let waiting = tokio::spawn(async move {
        // Any method works.
        let resp = send(admin, req("POST", "/wait-for-drain").body(empty()).unwrap()).await;
        (resp, start.elapsed())
    });
    let addr = qp.addr();
    let draining = eventually(
        DEADLINE,
        "health checks failing during the drain",
        || async {
            let resp = health_check(addr).await;
            (resp.status != StatusCode::OK).then_some(resp)
        },
    )
    .await;
    assert_shutting_down(&draining);
    let probe = send(
        addr,
        req("GET", "/")
            .header("k-network-probe", "probe")
            .header("k-network-hash", "h")
            .body(empty())
            .unwrap(),
    )
    .await;
    if !waiting.is_finished() {
        assert_shutting_down(&probe);
    }
    // Regular traffic is served during the drain.
    assert_eq!(get(addr, "/").await.status, StatusCode::OK);

    let (resp, elapsed) = waiting.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "");
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(10),
        "/wait-for-drain returned after {elapsed:?}"
    );
    assert_ready(&health_check(addr).await);
    qp.assert_healthy();
}

/// §5.2 / §9.3: the admin listener knows only `/wait-for-drain`; no `/drain`.
#[tokio::test]
async fn admin_unknown_paths_are_404() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start();
    for path in ["/", "/drain", "/wait-for-drain/", "/metrics"] {
        let resp = get(qp.admin_addr(), path).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(resp.text(), "404 page not found\n", "{path}");
    }
    // The health of the main listener is unaffected.
    assert_ready(&health_check(qp.addr()).await);
    qp.assert_healthy();
}

/// I4 / §5.3: SIGTERM → health checks fail at once while regular requests are still served; a
/// `/wait-for-drain` made during the drain returns when the quiet period (1 s here) has passed
/// since the last regular request; a request in flight when the listeners close still
/// completes; the process then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let gate = Gate::new();
    let g = gate.clone();
    let app = App::start(handler(move |req| {
        let g = g.clone();
        async move {
            if req.uri().path() == "/slow" {
                g.wait().await;
            }
            respond(StatusCode::OK, "ok")
        }
    }))
    .await;
    let mut qp = QpConfig::new(app.port())
        .env("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 1)
        .start();
    let addr = qp.addr();
    assert_ready(&health_check(addr).await);
    let slow = tokio::spawn(async move { get(addr, "/slow").await });
    eventually(DEADLINE, "the slow request at the app", || async {
        (app.concurrency.current() == 1).then_some(())
    })
    .await;

    let term_at = Instant::now();
    qp.sigterm();
    let resp = eventually(DEADLINE, "health checks failing after SIGTERM", || async {
        let resp = health_check(addr).await;
        (resp.status != StatusCode::OK).then_some(resp)
    })
    .await;
    assert_shutting_down(&resp);
    assert!(
        term_at.elapsed() < Duration::from_secs(2),
        "health checks kept passing for {:?} after SIGTERM",
        term_at.elapsed()
    );

    let admin = qp.admin_addr();
    let waiting = tokio::spawn(async move {
        let resp = get(admin, "/wait-for-drain").await;
        (resp, Instant::now())
    });
    // Regular requests are still served, and each pushes the end of the drain back.
    let mut last_regular = Instant::now();
    for _ in 0..3 {
        let resp = get(addr, "/").await;
        assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));
        last_regular = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (resp, drained_at) = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("/wait-for-drain returns when the drain ends")
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        drained_at >= last_regular + Duration::from_millis(800),
        "the drain ended {:?} after the last regular request",
        drained_at.saturating_duration_since(last_regular)
    );

    // The listeners close (new connections are refused) while the slow request is still in
    // flight; the process waits for it.
    eventually(DEADLINE, "the main listener closed", || async {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(
        qp.wait_exit(Duration::from_millis(300)).is_none(),
        "the process must wait for the in-flight request"
    );
    gate.open();
    let resp = tokio::time::timeout(DEADLINE, slow).await.unwrap().unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "ok"));

    let status = qp
        .wait_exit(DEADLINE)
        .expect("the process exits after the drain");
    assert_eq!(status.code(), Some(0), "{status}");
    let (stdout, stderr) = (qp.stdout_text(), qp.stderr_text());
    assert!(!stdout.contains("panicked") && !stderr.contains("panicked"));
}

/// §5.3 step 0: a second signal during the drain exits at once with code 1.
#[tokio::test]
async fn second_sigterm_exits_one() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).start(); // 30 s quiet period
    let addr = qp.addr();
    qp.sigterm();
    let resp = eventually(DEADLINE, "the first signal to be handled", || async {
        let resp = health_check(addr).await;
        (resp.status != StatusCode::OK).then_some(resp)
    })
    .await;
    assert_shutting_down(&resp);
    qp.sigterm();
    let status = qp
        .wait_exit(DEADLINE)
        .expect("the second signal ends the process");
    assert_eq!(status.code(), Some(1), "{status}");
}

/// §5.3 step 2: idle keep-alive HTTP/1.1 connections and an idle h2c connection left open by
/// clients do not hold the shutdown up (they are closed, h2c with GOAWAY): exit 0 soon after
/// the quiet period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_do_not_block_shutdown() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port())
        .env("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 1)
        .start();
    // An idle HTTP/1.1 keep-alive connection.
    let stream = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    let (mut h1, conn) =
        hyper::client::conn::http1::handshake::<_, TestBody>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let h1_conn = tokio::spawn(conn);
    let resp = collect(h1.send_request(get_req("/")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    // An idle h2c connection.
    let mut h2 = h2_connect(qp.addr()).await;
    let resp = send_h2(
        &mut h2,
        http::Request::get(format!("http://{}/", qp.addr()))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);

    let start = Instant::now();
    qp.sigterm();
    let status = qp
        .wait_exit(DEADLINE)
        .expect("idle connections must not keep the process alive");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // The server closed the idle HTTP/1.1 connection.
    let _ = tokio::time::timeout(DEADLINE, h1_conn)
        .await
        .expect("the client connection was closed");
    drop(h2);
}

/// §3.4/§5.3 step 3: an open websocket counts as in flight: after the drain the process waits
/// for the tunnel to close (bounded), then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websocket_is_waited_for_at_shutdown() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = raw_app(|stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() && ws.send(m).await.is_err() {
                return;
            }
        }
    })
    .await;
    let mut qp = QpConfig::new(app.port())
        .env("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 1)
        .start();
    let addr = qp.addr();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("websocket through the proxy");
    qp.sigterm();
    // The drain ends 1 s after the upgrade request; the listener then closes.
    eventually(DEADLINE, "the main listener closed", || async {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // The tunnel still works and the process is still there for it.
    ws.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(
        tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::Text("still here".into())
    );
    assert!(qp.wait_exit(Duration::from_millis(300)).is_none());
    ws.close(None).await.unwrap();
    drop(ws);
    let status = qp
        .wait_exit(DEADLINE)
        .expect("the process exits once the tunnel closed");
    assert_eq!(status.code(), Some(0), "{status}");
}

/// §5.3: a SIGTERM that arrives as soon as the listeners accept connections still gets the
/// graceful path (drain, exit 0) rather than the default action (death by signal). The kubelet
/// may terminate a pod at any moment after start.
///
/// (Found a start-up race: the handlers used to be installed after the listeners were bound.)
#[test]
fn sigterm_right_after_start_is_graceful() {
    let mut attempt = 0;
    while attempt < 50 {
        let config = QpConfig::new(free_port()).env("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 0);
        let mut qp = config.start_without_waiting();
        let deadline = Instant::now() + DEADLINE;
        // This child's own listener (another test may take a port picked here first).
        let mut lost_port_race = false;
        while !pid_listens_on(qp.pid(), qp.addr().port()) {
            if let Some(status) = qp.exited() {
                assert!(
                    qp.stderr_text().contains("failed to listen"),
                    "exited during start-up ({status}): {}",
                    qp.stderr_text()
                );
                lost_port_race = true;
                break;
            }
            assert!(Instant::now() < deadline, "never listened");
        }
        if lost_port_race {
            continue;
        }
        attempt += 1;
        qp.sigterm();
        let status = qp.wait_exit(DEADLINE).expect("exits after SIGTERM");
        assert_eq!(status.code(), Some(0), "attempt {attempt}: {status}");
    }
}
