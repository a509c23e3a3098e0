//! `knative-local --demo`: a scripted scenario on a running [`Stack`], with a readable report.
//!
//! 1. wait for the initial instance to be scaled to zero (idle grace) and drained;
//! 2. cold start: a burst of requests at zero is held by the activator and released when the
//!    first instance is ready; the latency of the first response is the cold-start latency;
//! 3. load above one instance's capacity for a while: the stand-in scales up, the queue-proxies
//!    hold containerConcurrency;
//! 4. idle again: scale-down to zero, every instance drains gracefully; its app reports the
//!    highest concurrency it saw, which must not exceed containerConcurrency.
//!
//! Every check is printed with PASS/FAIL; the demo fails if any check fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::client::{HttpClient, Reply};
use crate::stack::{EventKind, Phase, Stack, NAMESPACE, REVISION};

/// Knobs of the scenario.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Requests sent at once while scaled to zero.
    pub cold_requests: usize,
    /// Concurrent clients during the load phase.
    pub load_clients: usize,
    /// Length of the load phase.
    pub load_duration: Duration,
    /// How long each load request sleeps in the app.
    pub request_ms: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            cold_requests: 20,
            load_clients: 12,
            load_duration: Duration::from_secs(8),
            request_ms: 100,
        }
    }
}

/// One request to the sample revision through the activator (the revision named by the ingress
/// headers `Knative-Serving-Namespace` / `Knative-Serving-Revision`).
pub async fn revision_get(client: &HttpClient, stack: &Stack, path: &str) -> Result<Reply, String> {
    let request = Request::get(format!("http://{}{path}", stack.activator_addr()))
        .header("knative-serving-namespace", NAMESPACE)
        .header("knative-serving-revision", REVISION)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    client.send(request).await.map_err(|e| e.to_string())
}

struct Checks {
    results: Vec<(bool, String)>,
}

impl Checks {
    fn check(&mut self, ok: bool, text: String) {
        println!("  [{}] {text}", if ok { "PASS" } else { "FAIL" });
        self.results.push((ok, text));
    }
}

fn since(t0: Instant) -> String {
    format!("{:5.1}s", t0.elapsed().as_secs_f64())
}

async fn wait_for_zero(stack: &Stack, t0: Instant, what: &str) -> bool {
    let limit = stack.config().scaling.stable_window
        + stack.config().scaling.scale_to_zero_grace
        + Duration::from_secs(stack.config().drain_quiet_seconds + 30);
    let deadline = Instant::now() + limit;
    let mut last = Instant::now();
    loop {
        let instances = stack.instances();
        if instances.is_empty() {
            println!("[{}] {what}: scaled to zero", since(t0));
            return true;
        }
        if Instant::now() > deadline {
            println!(
                "[{}] {what}: still {} instances after {limit:?}",
                since(t0),
                instances.len()
            );
            return false;
        }
        if last.elapsed() >= Duration::from_secs(2) {
            last = Instant::now();
            let draining = instances
                .iter()
                .filter(|i| i.phase == Phase::Stopping)
                .count();
            println!(
                "[{}] {what}: {} instance(s), {draining} draining; idle grace {:?} ...",
                since(t0),
                instances.len(),
                stack.config().scaling.scale_to_zero_grace
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the scenario; `Ok(true)` when every check passed.
pub async fn run(stack: &Stack, config: &DemoConfig) -> bool {
    let t0 = Instant::now();
    let cc = u64::from(stack.config().cc);
    let client = HttpClient::new(Duration::from_secs(stack.config().timeout_seconds + 5));
    let mut checks = Checks {
        results: Vec::new(),
    };
    let events_before = stack.events().len();

    println!("\n== demo 1/4: idle -> the stand-in scales the initial instance to zero");
    let zero = wait_for_zero(stack, t0, "idle").await;
    checks.check(
        zero,
        "initial instance scaled to zero after the idle grace".into(),
    );

    println!(
        "\n== demo 2/4: cold start: {} requests sent at zero",
        config.cold_requests
    );
    let burst_start = Instant::now();
    let tasks: Vec<_> = (0..config.cold_requests)
        .map(|_| {
            let client = client.clone();
            let request = Request::get(format!("http://{}/", stack.activator_addr()))
                .header("knative-serving-namespace", NAMESPACE)
                .header("knative-serving-revision", REVISION)
                .body(Full::new(Bytes::new()));
            tokio::spawn(async move {
                let reply = client.send(request.map_err(|e| e.to_string())?).await;
                let latency = burst_start.elapsed();
                reply
                    .map(|r| (r.status, latency))
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut cold_failures = 0;
    for task in tasks {
        match task.await {
            Ok(Ok((status, latency))) if status.is_success() => latencies.push(latency),
            Ok(Ok((status, _))) => {
                cold_failures += 1;
                println!("  cold request answered {status}");
            }
            other => {
                cold_failures += 1;
                println!("  cold request failed: {other:?}");
            }
        }
    }
    latencies.sort();
    let first = latencies.first().copied().unwrap_or_default();
    let last = latencies.last().copied().unwrap_or_default();
    let ready_after = stack.events().iter().find_map(|e| match &e.kind {
        EventKind::InstanceReady { .. } if e.at > burst_start => Some(e.at - burst_start),
        _ => None,
    });
    println!(
        "  cold-start latency (first response): {:.0} ms; last of the burst: {:.0} ms; first instance ready {} after the burst",
        first.as_secs_f64() * 1000.0,
        last.as_secs_f64() * 1000.0,
        ready_after.map_or("?".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
    );
    println!(
        "  {} requests were held by the activator while no instance was ready, and released when one was",
        config.cold_requests
    );
    checks.check(
        cold_failures == 0,
        format!(
            "cold start: {}/{} requests succeeded",
            latencies.len(),
            config.cold_requests
        ),
    );

    println!(
        "\n== demo 3/4: load: {} clients x {:?}, each request sleeps {} ms (cc {cc} per instance)",
        config.load_clients, config.load_duration, config.request_ms
    );
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let load_end = Instant::now() + config.load_duration;
    let path = format!("/sleep?ms={}", config.request_ms);
    let workers: Vec<_> = (0..config.load_clients)
        .map(|_| {
            let (client, ok, failed, path) =
                (client.clone(), ok.clone(), failed.clone(), path.clone());
            let addr = stack.activator_addr();
            tokio::spawn(async move {
                while Instant::now() < load_end {
                    let request = Request::get(format!("http://{addr}{path}"))
                        .header("knative-serving-namespace", NAMESPACE)
                        .header("knative-serving-revision", REVISION)
                        .body(Full::new(Bytes::new()))
                        .expect("valid request");
                    match client.send(request).await {
                        Ok(r) if r.status.is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            eprintln!("  load request answered {} {}", r.status, r.text().trim());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("  load request failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let mut most_ready = 0;
    while Instant::now() < load_end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ready = stack.ready_instances().len();
        most_ready = most_ready.max(ready);
        println!(
            "[{}] load: {} ok, {} failed, {ready} instance(s) ready",
            since(t0),
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed)
        );
    }
    for worker in workers {
        let _ = worker.await;
    }
    let (load_ok, load_failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    checks.check(
        most_ready >= 2,
        format!("scaled up under load: up to {most_ready} instances ready"),
    );
    checks.check(
        load_failed == 0,
        format!("load: {load_ok} requests succeeded, {load_failed} failed"),
    );

    println!("\n== demo 4/4: idle again -> scale down to zero with a graceful drain");
    let zero_again = wait_for_zero(stack, t0, "idle").await;
    checks.check(zero_again, "scaled back to zero".into());

    let events: Vec<_> = stack.events().into_iter().skip(events_before).collect();
    let mut stopped = 0;
    for event in &events {
        if let EventKind::InstanceStopped {
            name,
            graceful,
            highest,
            served,
            ..
        } = &event.kind
        {
            stopped += 1;
            checks.check(
                *graceful && highest.is_some_and(|h| h <= cc),
                format!(
                    "{name}: graceful drain {}, served {}, max concurrency {} (cc {cc})",
                    if *graceful { "yes" } else { "NO" },
                    served.map_or("?".into(), |v| v.to_string()),
                    highest.map_or("?".into(), |v| v.to_string()),
                ),
            );
        }
    }
    checks.check(
        stopped > 0,
        format!("{stopped} instance(s) drained and stopped"),
    );
    let incidents: Vec<String> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::InstanceDied { .. }
                    | EventKind::InstanceFailed { .. }
                    | EventKind::ActivatorExited(_)
            )
        })
        .map(|e| e.kind.to_string())
        .collect();
    checks.check(
        incidents.is_empty(),
        format!(
            "no process died or failed to start{}",
            if incidents.is_empty() {
                String::new()
            } else {
                format!(": {}", incidents.join("; "))
            }
        ),
    );
    let total_failed = cold_failures as u64 + load_failed;
    checks.check(
        total_failed == 0,
        format!(
            "zero failed requests ({} sent)",
            config.cold_requests as u64 + load_ok + load_failed
        ),
    );
    let view = stack.stats_endpoint().view();
    println!(
        "\n  stand-in received {} stats messages from the activator over {} websocket connection(s)",
        view.messages, view.connections
    );
    let passed = checks.results.iter().all(|(ok, _)| *ok);
    println!(
        "\ndemo {} in {:.1} s: {}/{} checks passed",
        if passed { "PASSED" } else { "FAILED" },
        t0.elapsed().as_secs_f64(),
        checks.results.iter().filter(|(ok, _)| *ok).count(),
        checks.results.len()
    );
    passed
}
