//! The rollout scenario (issue: probes, drain and shutdown): continuous bounded load while the
//! kubelet calls `/wait-for-drain` and sends SIGTERM. No request fails, health checks flip to
//! `503 shutting down` at once, and the process exits 0 after the (test-shortened) quiet period.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

const REQUESTS: usize = 2000;
const WORKERS: usize = 8;
const LOAD_SPAN: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_under_load_loses_no_request() {
    let app = App::start(handler(|_req| async {
        tokio::time::sleep(Duration::from_millis(2)).await;
        respond(StatusCode::OK, "ok")
    }))
    .await;
    let mut qp = QpConfig::new(app.port())
        .cc(10)
        .env("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 2)
        .start();
    let addr = qp.addr();
    let admin = qp.admin_addr();

    // Bounded load: WORKERS loops, REQUESTS in all, paced over LOAD_SPAN.
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let per_worker = REQUESTS / WORKERS;
    let pace = LOAD_SPAN / per_worker as u32;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (ok, failed) = (ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            for i in 0..per_worker {
                match try_send(addr, get_req("/work")).await {
                    Ok(r) if r.status == StatusCode::OK && r.text() == "ok" => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "request {i} failed: {:?}",
                            other.map(|r| (r.status, r.text()))
                        );
                    }
                }
                tokio::time::sleep_until((started + pace * (i as u32 + 1)).into()).await;
            }
        }));
    }

    // A quarter in: the preStop hook, then SIGTERM.
    tokio::time::sleep(LOAD_SPAN / 4).await;
    let pre_stop = tokio::spawn(async move {
        let r = send(admin, get_req("/wait-for-drain")).await;
        (r.status, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    qp.sigterm();
    let signalled = Instant::now();

    // Health checks fail at once (well before any quiet period could pass).
    let health = eventually(
        Duration::from_secs(1),
        "health checks to flip to 503",
        || async {
            let r = health_check(addr).await;
            (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
        },
    )
    .await;
    assert!(signalled.elapsed() < Duration::from_millis(900));
    assert_eq!(health.text(), "shutting down\n");

    for w in workers {
        w.await.unwrap();
    }
    let load_ended = Instant::now();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request may fail during the rollout"
    );
    assert_eq!(ok.load(Ordering::Relaxed), REQUESTS);

    // The preStop call returns once the quiet period passed after the last request.
    let (status, returned) = pre_stop.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        returned >= load_ended + Duration::from_millis(1500),
        "wait-for-drain returned {:?} after the load ended",
        returned.saturating_duration_since(load_ended)
    );

    let exit = qp
        .wait_exit(DEADLINE)
        .expect("queue-proxy exits after draining");
    assert_eq!(exit.code(), Some(0), "graceful exit code");
    // The app saw every request exactly once.
    assert_eq!(app.concurrency.total(), REQUESTS);
}

/// Beyond upstream: at shutdown a websocket tunnel and an h2c stream that are in progress are
/// drained, not cut. The h2c connection gets GOAWAY but its open stream completes; the
/// websocket keeps echoing after the listeners closed, and the process exits 0 once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_websockets_and_h2c_streams() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = raw_app(|stream| async move {
        // Websocket echo, or a slow plain HTTP answer for the h2c stream (served by hyper below).
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() && ws.send(message).await.is_err() {
                return;
            }
        }
    })
    .await;
    let slow = App::start(handler(|_req| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        respond(StatusCode::OK, "slow but complete")
    }))
    .await;

    // One queue-proxy in front of the websocket app, one in front of the slow app.
    let mut ws_qp = QpConfig::new(app.port())
        .env("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 1)
        .start();
    let mut h2_qp = QpConfig::new(slow.port())
        .env("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 1)
        .start();

    let stream = tokio::net::TcpStream::connect(ws_qp.addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", ws_qp.addr()), stream)
        .await
        .expect("websocket through the proxy");
    let mut h2 = h2_connect(h2_qp.addr()).await;
    let h2_addr = h2_qp.addr();
    let slow_request = tokio::spawn(async move {
        let request = http::Request::builder()
            .uri(format!("http://{h2_addr}/slow"))
            .body(empty())
            .unwrap();
        send_h2(&mut h2, request).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    ws_qp.sigterm();
    h2_qp.sigterm();

    // After the quiet period the listeners close: new connections are refused...
    let ws_addr = ws_qp.addr();
    eventually(Duration::from_secs(10), "the listener to close", || async {
        tokio::net::TcpStream::connect(ws_addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // ...but the open websocket still works, and the process waits for it.
    ws.send(Message::Text("still here".into())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(echoed, Ok(Some(Ok(Message::Text(ref t)))) if t == "still here"),
        "websocket echo after the listeners closed: {echoed:?}"
    );
    assert!(
        ws_qp.wait_exit(Duration::from_millis(300)).is_none(),
        "must wait for the tunnel"
    );
    ws.close(None).await.unwrap();
    // Finish the close handshake and release the client's socket: the tunnel ends with it.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    drop(ws);
    let exit = ws_qp
        .wait_exit(DEADLINE)
        .expect("exits once the tunnel closed");
    assert_eq!(exit.code(), Some(0));

    // The h2c stream that was in progress completed normally.
    let slow_response = slow_request.await.unwrap();
    assert_eq!(slow_response.status, StatusCode::OK);
    assert_eq!(slow_response.text(), "slow but complete");
    let exit = h2_qp.wait_exit(DEADLINE).expect("h2c queue-proxy exits");
    assert_eq!(exit.code(), Some(0));
}
