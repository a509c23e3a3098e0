//! Faults around the activator: an autoscaler that keeps dropping the stats websocket, a
//! discovery file that disappears or becomes unreadable, and pods that close keep-alive
//! connections just as they are reused. Each time requests keep being served, none twice.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use support::*;
use tokio::io::AsyncWriteExt;

/// An autoscaler that accepts the stats websocket and drops it after `hold`, over and over.
async fn flapping_autoscaler(hold: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let _ =
                    tokio::time::timeout(hold, async { while ws.next().await.is_some() {} }).await;
                // Dropped without a close frame: a crashed autoscaler.
            });
        }
    });
    (url, connections)
}

/// The autoscaler connection drops every 300 ms: the activator reconnects each time and keeps
/// proxying every request meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_flaps_do_not_stop_serving() {
    let (url, connections) = flapping_autoscaler(Duration::from_millis(300)).await;
    let app = App::ok().await;
    let activator = ActivatorConfig::new(&url)
        .revisions(&[Rev::new("flap-00001", 0).ready([app.addr])])
        .start();
    let mut served = 0;
    while connections.load(Ordering::SeqCst) < 4 {
        let resp = send(activator.addr(), rev_get("/", NS, "flap-00001")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        served += 1;
        assert!(served < 20_000, "the activator did not reconnect");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(app.seen_count(), served);
}

/// The discovery file disappears, then is replaced by a directory (unreadable as a file): the
/// activator keeps serving from its last snapshot, and picks up a valid file again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_stalls_keep_the_last_snapshot() {
    let stats = StatsReceiver::start().await;
    let first = App::ok().await;
    let second = App::ok().await;
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new("stall-00001", 0).ready([first.addr])])
        .start();
    let addr = activator.addr();
    assert_eq!(
        send(addr, rev_get("/", NS, "stall-00001")).await.status,
        StatusCode::OK
    );

    std::fs::remove_file(&activator.discovery_file).unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = send(addr, rev_get("/", NS, "stall-00001")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }
    std::fs::create_dir(&activator.discovery_file).unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = send(addr, rev_get("/", NS, "stall-00001")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }
    assert_eq!(first.seen_count(), 11);
    std::fs::remove_dir(&activator.discovery_file).unwrap();
    activator.set_revisions(&[Rev::new("stall-00001", 0).ready([second.addr])]);
    eventually(DEADLINE, "the restored file to be applied", || async {
        let resp = send(addr, rev_get("/", NS, "stall-00001")).await;
        assert_eq!(resp.status, StatusCode::OK);
        (second.seen_count() > 0).then_some(())
    })
    .await;
}

/// A test pod's next request head on `stream` (read through `buf`): the activator's readiness
/// probe of the pod's queue-proxy is answered (its connection then ends: `false`), and a request
/// has its `X-Request-Id` recorded in `seen`. `false` at the end of stream too.
async fn pod_request(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    seen: &Mutex<Vec<String>>,
) -> bool {
    let Some(head) = read_head_buffered(stream, buf).await else {
        return false;
    };
    let head = String::from_utf8_lossy(&head).to_lowercase();
    if head.contains("k-network-probe: queue") {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nqueue")
            .await;
        return false;
    }
    if let Some(id) = head.lines().find_map(|l| l.strip_prefix("x-request-id: ")) {
        seen.lock().unwrap().push(id.trim().to_owned());
    }
    true
}

/// A pod that closes every keep-alive connection right after its response: a series of POSTs
/// through the activator all succeed and each reaches the pod exactly once. Each waits for the
/// pod's close before it; a POST with a body written just as the close comes (the race's
/// second form) gets the 502 with Go's transport too: see the test after this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_close_race_loses_and_duplicates_nothing() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let closed = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&closed);
    let pod = raw_app(move |mut stream| {
        let record = record.clone();
        let counted = Arc::clone(&counted);
        async move {
            let mut buf = Vec::new();
            if !pod_request(&mut stream, &mut buf, &record).await {
                return;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            drop(stream);
            counted.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let stats = StatsReceiver::start().await;
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new("race-00001", 0).ready([pod])])
        .start();
    for id in 0..40 {
        eventually(DEADLINE, "the pod's close", || async {
            (closed.load(Ordering::SeqCst) == id).then_some(())
        })
        .await;
        let request = rev_req("POST", "/write", NS, "race-00001")
            .header("x-request-id", id.to_string())
            .body(full(format!("payload-{id}")))
            .unwrap();
        let resp = try_send(activator.addr(), request).await;
        let seen_now = seen.lock().unwrap().clone();
        let resp = resp.unwrap_or_else(|e| panic!("request {id}: {e}; pod saw {seen_now:?}"));
        assert_eq!(resp.status, StatusCode::OK, "request {id}: {}", resp.text());
    }
    let expected: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    assert_eq!(*seen.lock().unwrap(), expected);
}

/// The keep-alive race's second form: the pod hangs up on a reused connection after reading a
/// request and before answering it. As Go's transport does, a `GET` goes once more on a new
/// connection (the client sees 200, the pod saw it twice); a `POST` without a body is not
/// idempotent, so it is not sent again and the client gets the 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_pod_hung_up_on_goes_again_only_when_replayable() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let pod = raw_app(move |mut stream| {
        let record = record.clone();
        async move {
            let mut buf = Vec::new();
            for served in 0.. {
                if !pod_request(&mut stream, &mut buf, &record).await {
                    return;
                }
                if served == 1 {
                    // The second request on this connection: read, never answered.
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    let stats = StatsReceiver::start().await;
    // One worker: one pool, so that each request takes the connection the one before gave back.
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new("hangup-00001", 0).ready([pod])])
        .env("ACTIVATOR_WORKER_THREADS", 1)
        .start();
    let request = |method: &str, id: &str| {
        rev_req(method, "/", NS, "hangup-00001")
            .header("x-request-id", id)
            .body(full(""))
            .unwrap()
    };
    let first = send(activator.addr(), request("GET", "first")).await;
    assert_eq!(first.status, StatusCode::OK);
    let again = send(activator.addr(), request("GET", "again")).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    let post = send(activator.addr(), request("POST", "post")).await;
    assert_eq!(post.status, StatusCode::BAD_GATEWAY, "{}", post.text());
    assert_eq!(
        *seen.lock().unwrap(),
        ["first", "again", "again", "post"],
        "the GET twice (the second on a new connection), the POST once"
    );
}

/// Two pods of revision `name` (container concurrency `cc`), each in front of an app with
/// `handler`: the lowest-sorted first. With cc ≥ 1 the policy is first available, so an idle
/// revision's requests go to that one (A).
async fn two_pods_lowest_first(name: &str, cc: u32, handler: Handler) -> (Pod, Pod) {
    let (p1, p2) = tokio::join!(
        async { Pod::start(App::start(handler.clone()).await, name, cc).await },
        async { Pod::start(App::start(handler.clone()).await, name, cc).await },
    );
    if p1.addr().to_string() < p2.addr().to_string() {
        (p1, p2)
    } else {
        (p2, p1)
    }
}

/// Starts the activator of `config` and waits until a request of `name` reached A.
async fn start_reaching_a(config: ActivatorConfig, a: &Pod, name: &str) -> Activator {
    let activator = config.start();
    let addr = activator.addr();
    eventually(DEADLINE, "a request to reach A", || async {
        let r = send(addr, rev_get("/", NS, name)).await;
        (r.status == StatusCode::OK && a.app.seen_count() > 0).then_some(())
    })
    .await;
    activator
}

/// Kills A's queue-proxy, sends a request, and lists B alone a moment later (discovery
/// catching up, as when Kubernetes marks the pod not ready): the client gets 200 from B, and
/// A's app saw nothing.
async fn kill_a_then_b_serves(activator: &Activator, a: &mut Pod, b: &Pod, name: &str, cc: u32) {
    a.qp.kill();
    let (a_seen, b_seen) = (a.app.seen_count(), b.app.seen_count());
    let request = tokio::spawn(send(activator.addr(), rev_get("/", NS, name)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    activator.set_revisions(&[Rev::new(name, cc).ready([b.addr()])]);
    let response = request.await.expect("request task");
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(b.app.seen_count(), b_seen + 1, "served by B");
    assert_eq!(a.app.seen_count(), a_seen, "A's app saw nothing");
}

/// A pod dies while still listed (beyond upstream, which answers 502): a request leased to it
/// cannot even connect, so nothing was sent; it waits for discovery to drop the pod and is
/// served by the other pod — the client sees 200, and the app behind the dead pod never saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_a_dead_listed_pod_moves_to_another_pod() {
    let stats = StatsReceiver::start().await;
    let name = "dead-00001";
    let ok = handler(|_| async { respond(StatusCode::OK, "ok") });
    let (mut a, b) = two_pods_lowest_first(name, 1, ok).await;
    let config = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(name, 1).ready([a.addr(), b.addr()])]);
    let activator = start_reaching_a(config, &a, name).await;
    kill_a_then_b_serves(&activator, &mut a, &b, name, 1).await;
}

/// As above, with two pooled connections to the dead pod: the request finds the one it takes
/// closed, and goes again on a dialed connection, not on the other pooled one (closed too, which
/// answered it `502` although it never left); the dial is refused, so it waits for discovery and
/// is served by the other pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_a_dead_listed_pod_with_two_pooled_connections_moves_to_another_pod() {
    let stats = StatsReceiver::start().await;
    let name = "deadpool-00001";
    // `/hold` waits for the gate: two of them at once leave two connections in the pool.
    let gate = Gate::new();
    let held = gate.clone();
    let holding = handler(move |request| {
        let held = held.clone();
        async move {
            if request.uri().path() == "/hold" {
                held.wait().await;
            }
            respond(StatusCode::OK, "ok")
        }
    });
    let (mut a, b) = two_pods_lowest_first(name, 2, holding).await;
    // One worker: a pool per worker, so both connections are in the same pool.
    let config = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(name, 2).ready([a.addr(), b.addr()])])
        .env("ACTIVATOR_WORKER_THREADS", 1);
    let activator = start_reaching_a(config, &a, name).await;
    let addr = activator.addr();
    let holds = [(); 2].map(|()| tokio::spawn(send(addr, rev_get("/hold", NS, name))));
    eventually(DEADLINE, "two requests held at A", || async {
        (a.app.concurrency.current() == 2).then_some(())
    })
    .await;
    gate.open();
    for hold in holds {
        assert_eq!(hold.await.expect("held request").status, StatusCode::OK);
    }
    kill_a_then_b_serves(&activator, &mut a, &b, name, 2).await;
}
