//! The concurrency breaker end to end (spec §3.8 step 5, checklist H1/H4/B4, integration I6):
//! capacity `CC`, queue `10 × CC`, immediate `503 pending request queue full\n` beyond that, and
//! the kubelet-probe bypass.

mod support;

use http::StatusCode;
use support::*;
use tokio::sync::mpsc;

const QUEUE_FULL: &str = "pending request queue full\n";

/// An app whose every request waits for `gate`, then answers `200 done`.
async fn gated_app(gate: &Gate) -> App {
    let gate = gate.clone();
    App::start(handler(move |_| {
        let gate = gate.clone();
        async move {
            gate.wait().await;
            respond(StatusCode::OK, "done")
        }
    }))
    .await
}

type Results = mpsc::UnboundedReceiver<Result<Resp, String>>;

/// Fires `n` concurrent HTTP/1.1 requests, each on its own connection.
fn fire(addr: std::net::SocketAddr, n: usize, make: fn() -> http::Request<TestBody>) -> Results {
    let (tx, rx) = mpsc::unbounded_channel();
    for _ in 0..n {
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = try_send(addr, make()).await.map_err(|e| e.to_string());
            let _ = tx.send(result);
        });
    }
    rx
}

async fn next(results: &mut Results) -> Resp {
    tokio::time::timeout(DEADLINE, results.recv())
        .await
        .expect("a response within the deadline")
        .expect("sender alive")
        .expect("transport error")
}

fn assert_queue_full(resp: &Resp) {
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{resp:?}");
    assert_eq!(resp.text(), QUEUE_FULL);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        resp.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
}

fn assert_done(resp: &Resp) {
    assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
    assert_eq!(resp.text(), "done");
}

/// I6: CC=2 → 2 execute, 20 wait, the other 18 of 40 concurrent requests are refused at once;
/// the app never runs more than 2, and every admitted request completes once the app proceeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc2_admits_22_of_40_and_never_runs_more_than_2() {
    let gate = Gate::new();
    let app = gated_app(&gate).await;
    let mut qp = QpConfig::new(app.port()).cc(2).start();
    let mut results = fire(qp.addr(), 40, || get_req("/"));

    // While the app holds every admitted request, only rejections can come back, and exactly
    // 18 of them must.
    for _ in 0..18 {
        assert_queue_full(&next(&mut results).await);
    }
    eventually(DEADLINE, "2 requests at the app", || async {
        (app.concurrency.current() == 2).then_some(())
    })
    .await;
    gate.open();
    for _ in 0..22 {
        assert_done(&next(&mut results).await);
    }
    assert_eq!(app.concurrency.max(), 2, "the app never sees more than CC");
    assert_eq!(app.concurrency.total(), 22);
    qp.assert_healthy();
}

/// H1/B4 at CC=1: 1 executing + 10 queued are admitted; the 12th concurrent request is refused;
/// afterwards the breaker is empty again (no slot leak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc1_refuses_the_12th_concurrent_request() {
    let gate = Gate::new();
    let app = gated_app(&gate).await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();
    let mut results = fire(qp.addr(), 12, || get_req("/"));

    assert_queue_full(&next(&mut results).await);
    eventually(DEADLINE, "1 request at the app", || async {
        (app.concurrency.current() == 1).then_some(())
    })
    .await;
    gate.open();
    for _ in 0..11 {
        assert_done(&next(&mut results).await);
    }
    assert_eq!(app.concurrency.max(), 1);

    // All slots came back: a full new wave of 11 is admitted.
    let mut results = fire(qp.addr(), 11, || get_req("/"));
    for _ in 0..11 {
        assert_done(&next(&mut results).await);
    }
    assert_eq!(app.concurrency.max(), 1);
    qp.assert_healthy();
}

/// The breaker counts h2 streams, not connections: 12 concurrent streams on one h2c connection
/// with CC=1 → exactly one refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc1_limits_h2c_streams_on_one_connection() {
    let gate = Gate::new();
    let app = gated_app(&gate).await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();
    let sender = h2_connect(qp.addr()).await;
    let (tx, mut results) = mpsc::unbounded_channel();
    let uri = format!("http://{}/", qp.addr());
    for _ in 0..12 {
        let (mut sender, tx, uri) = (sender.clone(), tx.clone(), uri.clone());
        tokio::spawn(async move {
            let request = http::Request::get(uri).body(empty()).unwrap();
            let _ = tx.send(Ok(send_h2(&mut sender, request).await));
        });
    }
    let first = next(&mut results).await;
    assert_queue_full(&first);
    assert_eq!(first.version, http::Version::HTTP_2);
    eventually(DEADLINE, "1 request at the app", || async {
        (app.concurrency.current() == 1).then_some(())
    })
    .await;
    gate.open();
    for _ in 0..11 {
        assert_done(&next(&mut results).await);
    }
    assert_eq!(app.concurrency.max(), 1);
    qp.assert_healthy();
}

/// CC=0 means no breaker: 40 concurrent requests all reach the app at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc0_is_unlimited() {
    let gate = Gate::new();
    let app = gated_app(&gate).await;
    let mut qp = QpConfig::new(app.port()).cc(0).start();
    let mut results = fire(qp.addr(), 40, || get_req("/"));
    eventually(DEADLINE, "40 requests at the app", || async {
        (app.concurrency.current() == 40).then_some(())
    })
    .await;
    gate.open();
    for _ in 0..40 {
        assert_done(&next(&mut results).await);
    }
    qp.assert_healthy();
}

/// H4, adapted to the binary: upstream's unit test sends `User-Agent: kube-probe/1.29` straight
/// to the proxy handler (layer 9). Through the whole chain such a request is a *health check*
/// and is answered at layer 3 (400 without `K-Network-Probe: queue`), so it never reaches the
/// breaker. The other IsKubeletProbe form, a non-empty `K-Kubelet-Probe` header without the
/// kubelet UA, does go down the chain and must bypass the breaker (§3.2 asymmetry note).
/// With CC=1 and the slot held, three such requests reach the app simultaneously while a
/// regular request stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_probe_header_bypasses_the_breaker() {
    let gate = Gate::new();
    let app = gated_app(&gate).await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();
    let addr = qp.addr();

    let mut holder = fire(addr, 1, || get_req("/hold"));
    eventually(DEADLINE, "the slot holder at the app", || async {
        (app.concurrency.current() == 1).then_some(())
    })
    .await;
    let mut queued = fire(addr, 1, || get_req("/queued"));
    let mut probes = fire(addr, 3, || {
        req("GET", "/probe")
            .header("k-kubelet-probe", "1")
            .body(empty())
            .unwrap()
    });
    eventually(
        DEADLINE,
        "3 probes at the app next to the holder",
        || async { (app.concurrency.current() == 4).then_some(()) },
    )
    .await;
    let paths: Vec<String> = app.seen().iter().map(|s| s.path_and_query()).collect();
    assert!(
        !paths.contains(&"/queued".to_owned()),
        "the regular request must wait for the slot: {paths:?}"
    );
    gate.open();
    for _ in 0..3 {
        assert_done(&next(&mut probes).await);
    }
    assert_done(&next(&mut holder).await);
    assert_done(&next(&mut queued).await);
    qp.assert_healthy();
}

/// The kubelet UA form itself is a health check answered at layer 3, never proxied.
#[tokio::test]
async fn kubelet_user_agent_is_answered_by_the_queue_proxy() {
    let app = App::ok().await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();
    let resp = send(
        qp.addr(),
        req("GET", "/")
            .header("user-agent", "kube-probe/1.29")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(resp.text(), "unexpected probe header value: \n");
    assert!(app.seen().is_empty());
    qp.assert_healthy();
}

/// §3.5/§3.8: requests whose timeout fires while queued leave the queue, and the cancelled
/// executing request gives its slot back: after a whole wave timed out, the next wave gets the
/// full 1 + 10 admissions again (exactly one refusal out of 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_waiters_leave_the_queue() {
    let gate = Gate::new();
    let app = gated_app(&gate).await;
    let mut qp = QpConfig::new(app.port()).cc(1).timeout_secs(1).start();
    for wave in 0..2 {
        let mut results = fire(qp.addr(), 12, || get_req("/"));
        assert_queue_full(&next(&mut results).await);
        for _ in 0..11 {
            let resp = next(&mut results).await;
            assert_eq!(
                resp.status,
                StatusCode::GATEWAY_TIMEOUT,
                "wave {wave}: {resp:?}"
            );
            assert_eq!(resp.text(), "request timeout");
        }
    }
    qp.assert_healthy();
}

/// Clients that give up while queued leave the queue (Go: the request context is cancelled):
/// with CC=1 and the slot held, 10 queued clients disconnect, and a new wave of 10 is queued
/// again without a single refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departed_queued_clients_leave_the_queue() {
    let gate = Gate::new();
    let app = gated_app(&gate).await;
    let mut qp = QpConfig::new(app.port()).cc(1).start();
    let addr = qp.addr();
    let mut holder = fire(addr, 1, || get_req("/hold"));
    eventually(DEADLINE, "the slot holder at the app", || async {
        (app.concurrency.current() == 1).then_some(())
    })
    .await;
    // Fill the queue: of 11 more requests exactly one is refused, the other 10 wait.
    let (tx, mut filling) = mpsc::unbounded_channel();
    let queued: Vec<_> = (0..11)
        .map(|_| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = try_send(addr, get_req("/gone")).await;
                let _ = tx.send(result.map_err(|e| e.to_string()));
            })
        })
        .collect();
    assert_queue_full(&next(&mut filling).await);
    // Now every queued client hangs up.
    for task in &queued {
        task.abort();
    }
    // Their places come back: 10 new requests are all queued (none refused) once the
    // departures have been noticed.
    let mut results = eventually(DEADLINE, "the departed clients' places freed", || async {
        let (tx, mut wave) = mpsc::unbounded_channel();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let result = try_send(addr, get_req("/again")).await;
                    let _ = tx.send(result.map_err(|e| e.to_string()));
                })
            })
            .collect();
        // Any refusal comes back at once; admitted requests stay queued (no response).
        let mut refused = false;
        while let Ok(Some(result)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), wave.recv()).await
        {
            assert_queue_full(&result.expect("transport"));
            refused = true;
        }
        if refused {
            // Not yet: hang these up too and try again.
            tasks.iter().for_each(|t| t.abort());
            return None;
        }
        Some(wave)
    })
    .await;
    gate.open();
    assert_done(&next(&mut holder).await);
    for _ in 0..10 {
        assert_done(&next(&mut results).await);
    }
    qp.assert_healthy();
}
