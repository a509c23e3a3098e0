//! Kubernetes discovery end to end (spec §1.4, §3.7, §3.8, §3.9, §5.1, §10): the real activator
//! binary watches an in-test API server ([`support::fake_api`]) through a KUBECONFIG file, and
//! proxies to real queue-proxy pods. Watch errors (`410 Gone`, dropped connections) and startup
//! failures (unreachable or old API server, missing ConfigMaps) are covered too.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::fake_api::*;
use support::*;

fn tmp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// An activator using Kubernetes discovery against `api` (no discovery file).
fn kube_config(api: &FakeApi, stats: &StatsReceiver) -> ActivatorConfig {
    ActivatorConfig::new(&stats.url())
        .without("ACTIVATOR_DISCOVERY_FILE")
        .env(
            "KUBECONFIG",
            api.write_kubeconfig(&tmp_dir()).display().to_string(),
        )
}

async fn start(config: ActivatorConfig) -> Activator {
    tokio::task::spawn_blocking(move || config.start())
        .await
        .expect("start the activator")
}

async fn run_to_exit(config: ActivatorConfig) -> Exited {
    tokio::task::spawn_blocking(move || config.run_to_exit())
        .await
        .expect("run the activator")
}

/// Waits until a request for `name` gets `status`.
async fn wait_status(addr: SocketAddr, name: &str, status: StatusCode) {
    eventually(
        DEADLINE,
        &format!("{name} to answer {status}"),
        || async move {
            let r = send(addr, rev_get("/", NS, name)).await;
            (r.status == status).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_appear_and_vanish() {
    let api = FakeApi::start().await;
    api.put_all(required_config_maps());
    let stats = StatsReceiver::start().await;
    let activator = start(kube_config(&api, &stats)).await;
    let addr = activator.addr();
    activator.wait_healthy().await;

    let name = "appear-00001";
    let r = send(addr, rev_get("/", NS, name)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

    let pod = Pod::start(App::ok().await, name, 0).await;
    api.put(revision(name, 0));
    api.put(private_endpoints(name, &[pod.addr()], &[]));
    wait_status(addr, name, StatusCode::OK).await;
    assert!(pod.app.seen_count() >= 1);

    api.delete("Revision", NS, name);
    wait_status(addr, name, StatusCode::NOT_FOUND).await;
    let r = send(addr, rev_get("/", NS, name)).await;
    assert_eq!(
        r.text(),
        format!(
            "Error getting active endpoint: revision.serving.knative.dev \"{name}\" not found\n"
        )
    );
    let mut activator = activator;
    activator.assert_healthy();
}

/// Sends requests for `name` from `workers` tasks until `stop`; returns (ok, failures).
fn load(
    addr: SocketAddr,
    name: &'static str,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    (0..workers)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = send(addr, rev_get("/", NS, name)).await;
                    if r.status == StatusCode::OK {
                        ok += 1;
                    } else {
                        failures.push(format!("{} {}", r.status, r.text()));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (ok, failures)
            })
        })
        .collect()
}

/// Waits until `pod` receives requests again (the activator routes to it).
async fn wait_traffic(pod: &Pod, what: &str) {
    let before = pod.app.seen_count();
    eventually(DEADLINE, what, || {
        std::future::ready((pod.app.seen_count() > before + 5).then_some(()))
    })
    .await;
}

/// Waits until `pod` stops receiving requests while the load runs.
async fn wait_no_traffic(pod: &Pod, what: &str) {
    eventually(DEADLINE, what, || async move {
        let before = pod.app.seen_count();
        tokio::time::sleep(Duration::from_millis(300)).await;
        (pod.app.seen_count() == before).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_change_under_load_across_410_gone_and_dropped_watches() {
    const NAME: &str = "load-00001";
    let api = FakeApi::start().await;
    api.put_all(required_config_maps());
    let (a, b) = tokio::join!(
        async { Pod::start(App::ok().await, NAME, 0).await },
        async { Pod::start(App::ok().await, NAME, 0).await },
    );
    api.put(revision(NAME, 0));
    api.put(private_endpoints(NAME, &[a.addr()], &[]));
    let stats = StatsReceiver::start().await;
    let activator = start(kube_config(&api, &stats)).await;
    let addr = activator.addr();
    wait_status(addr, NAME, StatusCode::OK).await;

    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(addr, NAME, 4, stop.clone());
    wait_traffic(&a, "traffic to pod A").await;

    // Scale out: B joins.
    api.put(private_endpoints(NAME, &[a.addr(), b.addr()], &[]));
    wait_traffic(&b, "traffic to pod B after it joined").await;

    // 410 Gone: every watch must relist; then A leaves, which the relisted watch must see.
    let lists_before = api.lists("endpoints");
    api.expire_watches();
    eventually(DEADLINE, "a relist of endpoints after 410 Gone", || {
        std::future::ready((api.lists("endpoints") > lists_before).then_some(()))
    })
    .await;
    api.put(private_endpoints(NAME, &[b.addr()], &[]));
    wait_no_traffic(&a, "pod A to get no more requests after it left").await;
    wait_traffic(&b, "traffic to pod B alone").await;

    // Dropped connections: the watches resume from their last version; A comes back.
    let watches_before = api.watch_starts("endpoints");
    api.drop_watches();
    eventually(DEADLINE, "endpoint watches to restart", || {
        std::future::ready((api.watch_starts("endpoints") > watches_before).then_some(()))
    })
    .await;
    api.put(private_endpoints(NAME, &[a.addr(), b.addr()], &[]));
    wait_traffic(&a, "traffic to pod A after it came back").await;
    api.bookmark();

    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    let mut failures = Vec::new();
    for worker in workers {
        let (n, f) = worker.await.unwrap();
        ok += n;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:?}",
        failures.len()
    );
    assert!(ok > 50, "only {ok} requests");
    let mut activator = activator;
    activator.assert_healthy();
}

/// An app answering after `delay`.
async fn slow_app(delay: Duration) -> App {
    App::start(handler(
        move |_req: http::Request<hyper::body::Incoming>| async move {
            tokio::time::sleep(delay).await;
            respond(StatusCode::OK, "ok")
        },
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activator_index_from_public_endpoints_drives_subsetting() {
    const NAME: &str = "subset-00001";
    let api = FakeApi::start().await;
    api.put_all(required_config_maps());
    let (p1, p2, p3) = tokio::join!(
        async { Pod::start(slow_app(Duration::from_millis(300)).await, NAME, 1).await },
        async { Pod::start(slow_app(Duration::from_millis(300)).await, NAME, 1).await },
        async { Pod::start(slow_app(Duration::from_millis(300)).await, NAME, 1).await },
    );
    let mut pods = [p1, p2, p3];
    // Subsetting sorts dests byte-wise.
    pods.sort_by_key(|p| p.addr().to_string());
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    api.put(revision(NAME, 1));
    api.put(private_endpoints(NAME, &addrs, &[]));
    // Two activators; this one (POD_IP 127.0.0.2) has index 1: with 3 pods it gets pod 1 only
    // (spec §3.9: 3 pods / 2 activators → idx0 {p0, p2}, idx1 {p1}).
    api.put(public_endpoints(NAME, &["127.0.0.1", "127.0.0.2"]));
    let stats = StatsReceiver::start().await;
    let activator = start(kube_config(&api, &stats).env("POD_IP", "127.0.0.2")).await;
    let addr = activator.addr();
    wait_status(addr, NAME, StatusCode::OK).await;

    // Capacity 1 (cc 1 × 1 assigned pod): three concurrent requests all go to pod 1, one by one.
    let started = Instant::now();
    let replies: Vec<_> = (0..3)
        .map(|_| tokio::spawn(send(addr, rev_get("/", NS, NAME))))
        .collect();
    for reply in replies {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        (pods[0].app.seen_count(), pods[2].app.seen_count()),
        (0, 0),
        "only the assigned pod gets traffic"
    );
    assert!(pods[1].app.seen_count() >= 4);
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "serialized by capacity 1: {:?}",
        started.elapsed()
    );

    // The other activator leaves: this one becomes index 0 of 1 and takes every pod.
    api.put(public_endpoints(NAME, &["127.0.0.2"]));
    let pods = &pods;
    eventually(DEADLINE, "all three pods to be used", || async move {
        let replies: Vec<_> = (0..3)
            .map(|_| tokio::spawn(send(addr, rev_get("/", NS, NAME))))
            .collect();
        for reply in replies {
            assert_eq!(reply.await.unwrap().status, StatusCode::OK);
        }
        pods.iter().all(|p| p.app.seen_count() > 0).then_some(())
    })
    .await;

    // Public Endpoints without this activator (serve mode lists pods there) change nothing.
    api.put(public_endpoints(NAME, &["10.9.9.9"]));
    let r = send(addr, rev_get("/", NS, NAME)).await;
    assert_eq!(r.status, StatusCode::OK);
    let mut activator = activator;
    activator.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_server_exits_after_the_version_window() {
    let stats = StatsReceiver::start().await;
    // A kubeconfig whose server does not listen.
    let api = FakeApi::start().await;
    let kubeconfig = api.write_kubeconfig(&tmp_dir());
    drop(api);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("server:") {
                format!("    server: {dead}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&kubeconfig, text).unwrap();
    let started = Instant::now();
    let exited = run_to_exit(
        ActivatorConfig::new(&stats.url())
            .without("ACTIVATOR_DISCOVERY_FILE")
            .env("KUBECONFIG", kubeconfig.display())
            .env("ACTIVATOR_KUBE_VERSION_WAIT_SECONDS", 2),
    )
    .await;
    exited.assert_failed();
    assert!(
        exited.stderr.contains("version check failed") && exited.stderr.contains("cannot reach"),
        "{}",
        exited.stderr
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "exited before the window: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_api_server_exits() {
    let api = FakeApi::start().await;
    api.set_version("v1.33.4");
    api.put_all(required_config_maps());
    let stats = StatsReceiver::start().await;
    let exited =
        run_to_exit(kube_config(&api, &stats).env("ACTIVATOR_KUBE_VERSION_WAIT_SECONDS", 1)).await;
    exited.assert_failed();
    assert!(
        exited
            .stderr
            .contains("v1.33.4 is not compatible, need at least v1.34.0"),
        "{}",
        exited.stderr
    );
    // KUBERNETES_MIN_VERSION lowers the bar.
    let activator = start(kube_config(&api, &stats).env("KUBERNETES_MIN_VERSION", "v1.33.0")).await;
    activator.wait_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_config_maps_exit_after_sync() {
    let api = FakeApi::start().await;
    api.put(config_map("config-logging", &[]));
    api.put(config_map("config-observability", &[]));
    let stats = StatsReceiver::start().await;
    let exited = run_to_exit(kube_config(&api, &stats)).await;
    exited.assert_failed();
    assert!(
        exited
            .stderr
            .contains("\"config-network\" not found in namespace \"knative-serving\""),
        "{}",
        exited.stderr
    );
    // Custom names are the ones required.
    api.put(config_map("config-network", &[]));
    let exited =
        run_to_exit(kube_config(&api, &stats).env("CONFIG_OBSERVABILITY_NAME", "my-observability"))
            .await;
    exited.assert_failed();
    assert!(
        exited.stderr.contains("\"my-observability\""),
        "{}",
        exited.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_discovery_source_exits_naming_both_options() {
    let stats = StatsReceiver::start().await;
    let exited =
        run_to_exit(ActivatorConfig::new(&stats.url()).without("ACTIVATOR_DISCOVERY_FILE")).await;
    exited.assert_failed();
    assert!(
        exited.stderr.contains("ACTIVATOR_DISCOVERY_FILE") && exited.stderr.contains("KUBECONFIG"),
        "{}",
        exited.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn klog_flags_are_accepted() {
    let api = FakeApi::start().await;
    api.put_all(required_config_maps());
    let stats = StatsReceiver::start().await;
    // The harness passes no arguments; --kubeconfig on the command line must work like KUBECONFIG.
    let kubeconfig = api.write_kubeconfig(&tmp_dir());
    let activator = start(
        ActivatorConfig::new(&stats.url())
            .without("ACTIVATOR_DISCOVERY_FILE")
            .args(&[
                "-v=2".to_owned(),
                "--logtostderr".to_owned(),
                format!("--kubeconfig={}", kubeconfig.display()),
            ]),
    )
    .await;
    activator.wait_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_wait_for_the_initial_sync() {
    let api = FakeApi::start().await;
    api.put_all(required_config_maps());
    api.set_unavailable("revisions", true);
    let stats = StatsReceiver::start().await;
    let port = free_port();
    let config = kube_config(&api, &stats).env("ACTIVATOR_HTTP1_PORT", port);
    let starting = tokio::task::spawn_blocking(move || config.start());
    eventually(DEADLINE, "the activator to try listing revisions", || {
        std::future::ready((api.lists("revisions") >= 1).then_some(()))
    })
    .await;
    // Still not synced: nothing listens (kubelet probes fail, no request is accepted).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "listening before the revisions were listed"
    );
    api.set_unavailable("revisions", false);
    let activator = starting.await.expect("start the activator");
    activator.wait_healthy().await;
    assert!(
        activator
            .stdout_text()
            .contains("Kubernetes discovery synced"),
        "{}",
        activator.stdout_text()
    );
}

/// The RBAC rules shipped in `config/rbac.yaml`, as (scope, apiGroup, resource, verbs).
fn shipped_rbac() -> Vec<(String, String, String, Vec<String>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/rbac.yaml");
    let text = std::fs::read_to_string(path).expect("read config/rbac.yaml");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("parse rbac.yaml");
    let mut rules = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind != "Role" && kind != "ClusterRole" {
            continue;
        }
        let scope = match kind {
            "Role" => doc["metadata"]["namespace"].as_str().unwrap().to_owned(),
            _ => "*".to_owned(),
        };
        for rule in doc["rules"].as_array().expect("rules") {
            let strings = |v: &serde_json::Value| -> Vec<String> {
                v.as_array()
                    .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default()
            };
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    rules.push((
                        scope.clone(),
                        group.clone(),
                        resource,
                        strings(&rule["verbs"]),
                    ));
                }
            }
        }
    }
    rules
}

/// `config/rbac.yaml` (issue 6: "the RBAC the Rust activator needs, no more than upstream's"):
/// every request the activator makes to the API server is allowed by those rules, the rules are
/// read-only, and they are exactly upstream's (cluster-wide services, endpoints, revisions;
/// configmaps and secrets in knative-serving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_request_is_allowed_by_the_shipped_rbac() {
    let rules = shipped_rbac();
    let mut granted: Vec<(String, String, String)> = rules
        .iter()
        .map(|(scope, group, resource, verbs)| {
            assert_eq!(
                verbs,
                &["get", "list", "watch"],
                "{scope} {group}/{resource}: the activator only reads"
            );
            (scope.clone(), group.clone(), resource.clone())
        })
        .collect();
    granted.sort();
    let expected: Vec<(String, String, String)> = [
        ("*", "", "endpoints"),
        ("*", "", "services"),
        ("*", "serving.knative.dev", "revisions"),
        ("knative-serving", "", "configmaps"),
        ("knative-serving", "", "secrets"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(
        granted, expected,
        "the same rules as upstream's activator roles"
    );

    let api = FakeApi::start().await;
    api.put_all(required_config_maps());
    let stats = StatsReceiver::start().await;
    let activator = start(kube_config(&api, &stats)).await;
    activator.wait_healthy().await;
    let requests = api.requests();
    assert!(requests.iter().any(|r| r.watch), "{requests:?}");
    for request in requests {
        assert_eq!(
            request.method, "GET",
            "{request:?}: the activator only reads"
        );
        if request.path == "/version" {
            // A non-resource URL every authenticated user may read (system:discovery).
            continue;
        }
        let (group, rest) = if let Some(rest) = request.path.strip_prefix("/api/v1/") {
            ("", rest)
        } else if let Some(rest) = request.path.strip_prefix("/apis/serving.knative.dev/v1/") {
            ("serving.knative.dev", rest)
        } else {
            panic!("unexpected API path {}", request.path);
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (namespace, resource, name) = match parts.as_slice() {
            ["namespaces", ns, resource] => (Some(*ns), *resource, None),
            ["namespaces", ns, resource, name] => (Some(*ns), *resource, Some(*name)),
            [resource] => (None, *resource, None),
            other => panic!("unexpected API path {other:?}"),
        };
        let verb = match (request.watch, name) {
            (true, _) => "watch",
            (false, Some(_)) => "get",
            (false, None) => "list",
        };
        let allowed = rules.iter().any(|(scope, g, r, verbs)| {
            g == group
                && r == resource
                && verbs.iter().any(|v| v == verb)
                && (scope == "*" || namespace == Some(scope.as_str()))
        });
        assert!(
            allowed,
            "{verb} {group}/{resource} in {namespace:?} ({}) is not allowed by config/rbac.yaml",
            request.path
        );
    }
}
