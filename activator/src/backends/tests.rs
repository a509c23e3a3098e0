//! Tests of the revision backends manager (spec §5, §11 items 49–64) with a scripted prober on
//! paused time, and over real HTTP with queue-proxy stand-ins on 127.0.0.1 (probe classification
//! and headers, cluster-IP fallback, fast probing while a request waits, removed pods).
//!
//! Item 48 (`endpointsToDests`, `getServicePort`) belongs to the Kubernetes source; the file
//! source's equivalent (ready/notReady split, cluster IP with the service port) is tested in
//! `discovery`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use super::watcher::{run as run_watcher, WatcherContext, WatcherShared};
use super::*;
use crate::discovery::{PrivateEndpoints, PublicEndpoints, RevisionEntry, RevisionSpec, Snapshot};
use crate::throttler::{Protocol, RevisionId, Throttler};

mod lazy;

const NS: &str = "test-namespace";
const NAME: &str = "test-revision";
const P1: &str = "10.0.0.1:8012";
const P2: &str = "10.0.0.2:8012";
const P3: &str = "10.0.0.3:8012";
const P4: &str = "10.0.0.4:8012";
const CIP: &str = "10.96.0.10:1235";

fn id() -> RevisionId {
    RevisionId::new(NS, NAME)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn pods(items: &[&str]) -> DestsUpdate {
    DestsUpdate {
        cluster_ip_dest: None,
        dests: set(items),
    }
}

fn via_cluster_ip(dest: &str, ready: &[&str]) -> DestsUpdate {
    DestsUpdate {
        cluster_ip_dest: Some(dest.to_owned()),
        dests: set(ready),
    }
}

fn dests(ready: &[&str], not_ready: &[&str], cluster_ip: Option<&str>) -> Dests {
    Dests {
        ready: set(ready),
        not_ready: set(not_ready),
        cluster_ip: cluster_ip.map(str::to_owned),
    }
}

// ---------------------------------------------------------------------------------------------
// A scripted prober: per dest a list of replies, consumed in order; the last one repeats.

#[derive(Clone, Debug)]
enum Reply {
    /// 200 `queue`.
    Ok,
    /// An HTTP status (502/503 are mesh-like).
    Status(u16),
    /// A transport error.
    Fail,
    /// `Ok` after a delay in ms.
    SlowOk(u64),
}

impl Reply {
    fn resolve(&self) -> (Duration, ProbeResult) {
        match self {
            Reply::Ok => (Duration::ZERO, ProbeResult::success()),
            Reply::SlowOk(ms) => (Duration::from_millis(*ms), ProbeResult::success()),
            Reply::Status(status) => (
                Duration::ZERO,
                ProbeResult {
                    ok: false,
                    not_mesh: !matches!(status, 502 | 503),
                    error: Some(format!("unexpected status code: want [200], got {status}")),
                },
            ),
            Reply::Fail => (
                Duration::ZERO,
                ProbeResult::transport_error("connection refused"),
            ),
        }
    }
}

#[derive(Debug, Default)]
struct FakeProber {
    replies: Mutex<HashMap<String, VecDeque<Reply>>>,
    calls: Mutex<Vec<String>>,
}

impl FakeProber {
    fn new(script: &[(&str, &[Reply])]) -> Arc<Self> {
        let prober = FakeProber::default();
        for (dest, replies) in script {
            prober.set(dest, replies);
        }
        Arc::new(prober)
    }

    fn set(&self, dest: &str, replies: &[Reply]) {
        self.replies
            .lock()
            .unwrap()
            .insert(dest.to_owned(), replies.iter().cloned().collect());
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn calls_to(&self, dest: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|d| *d == dest)
            .count()
    }

    fn reset_calls(&self) {
        self.calls.lock().unwrap().clear();
    }
}

impl Prober for FakeProber {
    fn probe(&self, dest: &str, _host: Option<&str>) -> impl Future<Output = ProbeResult> + Send {
        self.calls.lock().unwrap().push(dest.to_owned());
        let reply = {
            let mut replies = self.replies.lock().unwrap();
            match replies.get_mut(dest) {
                Some(queue) if queue.len() > 1 => queue.pop_front().unwrap(),
                Some(queue) => queue.front().cloned().unwrap_or(Reply::Fail),
                None => Reply::Fail,
            }
        };
        let (delay, result) = reply.resolve();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            result
        }
    }
}

fn config(mode: MeshMode, optimisation: bool) -> WatcherConfig {
    WatcherConfig {
        probe_timeout: DEFAULT_PROBE_TIMEOUT,
        mesh_mode: mode,
        passthrough_lb: false,
        probe_optimisation: optimisation,
    }
}

fn watcher(prober: &Arc<FakeProber>, mode: MeshMode) -> RevisionWatcher<FakeProber> {
    RevisionWatcher::new(id(), prober.clone(), config(mode, true))
}

// ---------------------------------------------------------------------------------------------
// Manager harness.

fn entry(name: &str, protocol: Protocol, private: PrivateEndpoints) -> RevisionEntry {
    let mut spec = RevisionSpec::new(RevisionId::new(NS, name));
    spec.container_concurrency = 1;
    spec.protocol = protocol;
    RevisionEntry {
        spec: Arc::new(spec),
        private,
        public: PublicEndpoints::default(),
    }
}

fn private(ready: &[&str], not_ready: &[&str], cluster_ip: Option<&str>) -> PrivateEndpoints {
    PrivateEndpoints {
        ready: ready.iter().map(|s| s.to_string()).collect(),
        not_ready: not_ready.iter().map(|s| s.to_string()).collect(),
        cluster_ip: cluster_ip.map(str::to_owned),
    }
}

fn one(private: PrivateEndpoints) -> Snapshot {
    Snapshot::new([entry(NAME, Protocol::Http1, private)])
}

fn settings() -> BackendSettings {
    BackendSettings {
        fast_probe_interval: Duration::ZERO,
        self_ip: "10.0.0.1".into(),
        ..BackendSettings::default()
    }
}

struct Harness {
    throttler: Arc<Throttler>,
    source: crate::discovery::SnapshotCell,
    updates: mpsc::UnboundedReceiver<(RevisionId, DestsUpdate)>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Harness {
    fn start<P: Prober>(snapshot: Snapshot, prober: Arc<P>, settings: BackendSettings) -> Harness {
        let throttler = Arc::new(Throttler::new());
        let source = crate::discovery::SnapshotCell::new();
        source.publish(snapshot);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (observer, updates) = mpsc::unbounded_channel();
        let task = BackendsManager::spawn_with(
            source.subscribe_changes(),
            throttler.clone(),
            settings,
            shutdown_rx,
            prober,
            Some(observer),
        );
        Harness {
            throttler,
            source,
            updates,
            shutdown,
            task,
        }
    }

    fn publish(&self, snapshot: Snapshot) {
        self.source.publish(snapshot);
    }

    async fn next(&mut self) -> (RevisionId, DestsUpdate) {
        timeout(Duration::from_secs(5), self.updates.recv())
            .await
            .expect("no update within 5 s")
            .expect("manager gone")
    }

    async fn next_for_default(&mut self) -> DestsUpdate {
        let (rev, update) = self.next().await;
        assert_eq!(rev, id());
        update
    }

    async fn none_within(&mut self, window: Duration) {
        if let Ok(update) = timeout(window, self.updates.recv()).await {
            panic!("unexpected update {update:?}");
        }
    }

    async fn stop(self) {
        self.shutdown.send_replace(true);
        timeout(Duration::from_secs(5), self.task)
            .await
            .expect("manager did not stop")
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Item 49: the watcher.

#[tokio::test(start_paused = true)]
async fn item49_healthy_ready_pod_gives_one_update() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok])]);
    let mut h = Harness::start(one(private(&[P1], &[], None)), prober.clone(), settings());
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    h.none_within(Duration::from_secs(2)).await;
    // All healthy: the timer is not armed, nothing is probed again.
    assert_eq!(prober.calls(), 1);
    let revision = h.throttler.revision(&id()).unwrap();
    assert_eq!(revision.pod_dests(), [P1]);
    assert_eq!(revision.capacity(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn item49_not_ready_pod_probing_ok_is_used() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok])]);
    let mut h = Harness::start(one(private(&[], &[P1], None)), prober, settings());
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn item49_h2c_pod_healthy_while_cluster_ip_errors() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (CIP, &[Reply::Fail])]);
    let snapshot = Snapshot::new([entry(NAME, Protocol::H2c, private(&[P1], &[], Some(CIP)))]);
    let mut h = Harness::start(snapshot, prober.clone(), settings());
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    assert_eq!(prober.calls_to(CIP), 0);
    assert_eq!(
        h.throttler.revision(&id()).unwrap().protocol(),
        Protocol::H2c
    );
    h.stop().await;
}

// Items 50–51: cluster-IP fallback, with the service port.

#[tokio::test(start_paused = true)]
async fn item50_mesh_like_pods_fall_back_to_the_cluster_ip() {
    let prober = FakeProber::new(&[
        (P1, &[Reply::Status(503)]),
        (P2, &[Reply::Status(503)]),
        (CIP, &[Reply::Ok]),
    ]);
    let mut w = watcher(&prober, MeshMode::Auto);
    let cur = dests(&[P1], &[P2], Some(CIP));
    let update = w.check_dests(&cur, &Dests::default()).await;
    // Only the *ready* pods are sent (their count drives the capacity); item 51: the cluster IP
    // keeps the service port (1235), not the pods' 8012.
    assert_eq!(update, Some(via_cluster_ip(CIP, &[P1])));
    assert!(!w.pods_addressable);
    assert!(w.cluster_ip_healthy);
    assert!(w.healthy_pods.is_empty());

    // Sticky: pods are not probed any more; the cluster IP is not re-probed either.
    prober.reset_calls();
    let update = w.check_dests(&dests(&[P1, P2], &[], Some(CIP)), &cur).await;
    assert_eq!(update, Some(via_cluster_ip(CIP, &[P1, P2])));
    assert_eq!(prober.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn item50_cluster_ip_error_then_success_on_the_next_tick() {
    let prober = FakeProber::new(&[
        (P1, &[Reply::Status(503)]),
        (CIP, &[Reply::Fail, Reply::Ok]),
    ]);
    let mut h = Harness::start(
        one(private(&[P1], &[], Some(CIP))),
        prober.clone(),
        settings(),
    );
    let started = Instant::now();
    assert_eq!(h.next_for_default().await, via_cluster_ip(CIP, &[P1]));
    // The second cluster-IP probe happens on the PROBE_FREQUENCY tick.
    assert!(started.elapsed() >= DEFAULT_PROBE_FREQUENCY);
    assert_eq!(prober.calls_to(CIP), 2);
    let revision = h.throttler.revision(&id()).unwrap();
    assert_eq!(revision.cluster_ip_dest().as_deref(), Some(CIP));
    assert_eq!(revision.backend_count(), 1);
    h.none_within(Duration::from_secs(1)).await;
    h.stop().await;
}

// Item 52.

#[tokio::test(start_paused = true)]
async fn item52_no_healthy_pod_nor_cluster_ip_gives_no_update() {
    for pod_reply in [Reply::Status(503), Reply::Fail] {
        let prober = FakeProber::new(&[
            (P1, std::slice::from_ref(&pod_reply)),
            (CIP, &[Reply::Status(503)]),
        ]);
        let mut w = watcher(&prober, MeshMode::Auto);
        let cur = dests(&[P1], &[], Some(CIP));
        assert_eq!(
            w.check_dests(&cur, &Dests::default()).await,
            None,
            "{pod_reply:?}"
        );
        assert_eq!(w.check_dests(&cur, &cur).await, None);
        assert!(w.pods_addressable);
        assert!(!w.cluster_ip_healthy);
    }
}

// Item 53.

#[tokio::test(start_paused = true)]
async fn item53_pod_error_then_success_gives_one_update() {
    let prober = FakeProber::new(&[(P1, &[Reply::Fail, Reply::Ok])]);
    let mut h = Harness::start(one(private(&[P1], &[], None)), prober, settings());
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    h.none_within(Duration::from_secs(1)).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn item53_one_failing_pod_then_both() {
    let prober = FakeProber::new(&[(P1, &[Reply::Fail, Reply::Ok]), (P2, &[Reply::Ok])]);
    let mut h = Harness::start(one(private(&[P1, P2], &[], None)), prober, settings());
    assert_eq!(h.next_for_default().await, pods(&[P2]));
    assert_eq!(h.next_for_default().await, pods(&[P1, P2]));
    h.none_within(Duration::from_secs(1)).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn item53_three_pods_one_not_ready_all_ok() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (P2, &[Reply::Ok]), (P3, &[Reply::Ok])]);
    let mut h = Harness::start(one(private(&[P1, P2], &[P3], None)), prober, settings());
    assert_eq!(h.next_for_default().await, pods(&[P1, P2, P3]));
    h.none_within(Duration::from_secs(1)).await;
    h.stop().await;
}

// Item 54.

#[tokio::test(start_paused = true)]
async fn item54_non_mesh_error_does_not_fall_back() {
    let prober = FakeProber::new(&[(P1, &[Reply::Status(500), Reply::Ok]), (CIP, &[Reply::Ok])]);
    let mut h = Harness::start(
        one(private(&[P1], &[], Some(CIP))),
        prober.clone(),
        settings(),
    );
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    assert_eq!(prober.calls_to(CIP), 0);
    assert_eq!(prober.calls_to(P1), 2);
    h.stop().await;
}

// Item 55.

#[tokio::test(start_paused = true)]
async fn item55_passthrough_lb_never_falls_back() {
    let prober = FakeProber::new(&[(P1, &[Reply::Status(503)]), (CIP, &[Reply::Ok])]);
    let mut w = RevisionWatcher::new(
        id(),
        prober.clone(),
        WatcherConfig {
            passthrough_lb: true,
            ..config(MeshMode::Auto, true)
        },
    );
    let cur = dests(&[P1], &[], Some(CIP));
    assert_eq!(w.check_dests(&cur, &Dests::default()).await, None);
    assert_eq!(w.check_dests(&cur, &cur).await, None);
    assert!(w.pods_addressable);
    assert_eq!(prober.calls_to(CIP), 0);
}

// Item 56.

#[tokio::test(start_paused = true)]
async fn item56_mesh_enabled_uses_the_cluster_ip_without_probing_pods() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (CIP, &[Reply::Ok])]);
    let mut h = Harness::start(
        one(private(&[P1], &[P2], Some(CIP))),
        prober.clone(),
        BackendSettings {
            mesh_mode: MeshMode::Enabled,
            ..settings()
        },
    );
    assert_eq!(h.next_for_default().await, via_cluster_ip(CIP, &[P1]));
    assert_eq!(prober.calls_to(P1) + prober.calls_to(P2), 0);
    h.stop().await;
}

// Item 57.

#[tokio::test(start_paused = true)]
async fn item57_mesh_disabled_trusts_ready_pods_and_never_falls_back() {
    let prober = FakeProber::new(&[
        (P1, &[Reply::Status(503)]),
        (P2, &[Reply::Status(503)]),
        (CIP, &[Reply::Ok]),
    ]);
    let mut w = watcher(&prober, MeshMode::Disabled);
    let cur = dests(&[P1], &[], Some(CIP));
    assert_eq!(
        w.check_dests(&cur, &Dests::default()).await,
        Some(pods(&[P1]))
    );
    assert_eq!(prober.calls(), 0);

    // A not-ready pod that fails, nothing healthy: no cluster-IP fallback.
    let mut w = watcher(&prober, MeshMode::Disabled);
    let cur = dests(&[], &[P2], Some(CIP));
    assert_eq!(w.check_dests(&cur, &Dests::default()).await, None);
    assert_eq!(prober.calls_to(P2), 1);
    assert_eq!(prober.calls_to(CIP), 0);
}

// Item 58: the manager.

#[tokio::test(start_paused = true)]
async fn item58_pod_503_then_200_http1_and_h2c() {
    for protocol in [Protocol::Http1, Protocol::H2c] {
        let prober = FakeProber::new(&[(P1, &[Reply::Status(503), Reply::Ok])]);
        let snapshot = Snapshot::new([entry(NAME, protocol, private(&[P1], &[], None))]);
        let mut h = Harness::start(snapshot, prober, settings());
        assert_eq!(h.next_for_default().await, pods(&[P1]));
        let revision = h.throttler.revision(&id()).unwrap();
        assert_eq!(revision.protocol(), protocol);
        assert_eq!(revision.pod_dests(), [P1]);
        h.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn item58_two_revisions_are_independent() {
    let h2c_pod = "10.0.1.1:8013";
    let prober = FakeProber::new(&[
        (P1, &[Reply::Ok]),
        (h2c_pod, &[Reply::Status(503), Reply::Ok]),
    ]);
    let snapshot = Snapshot::new([
        entry("rev-a", Protocol::Http1, private(&[P1], &[], None)),
        entry("rev-b", Protocol::H2c, private(&[h2c_pod], &[], None)),
    ]);
    let mut h = Harness::start(snapshot, prober, settings());
    let mut seen = HashMap::new();
    for _ in 0..2 {
        let (rev, update) = h.next().await;
        seen.insert(rev.name, update);
    }
    assert_eq!(seen["rev-a"], pods(&[P1]));
    assert_eq!(seen["rev-b"], pods(&[h2c_pod]));
    let b = h.throttler.get(NS, "rev-b").unwrap();
    assert_eq!(b.pod_dests(), [h2c_pod]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn item58_pod_503_and_cluster_ip_ok() {
    let prober = FakeProber::new(&[(P1, &[Reply::Status(503)]), (CIP, &[Reply::Ok])]);
    let mut h = Harness::start(one(private(&[P1], &[], Some(CIP))), prober, settings());
    assert_eq!(h.next_for_default().await, via_cluster_ip(CIP, &[P1]));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn item58_k8s_ready_pod_without_probe_optimisation() {
    // An exec readiness probe on the serving container disables probe optimisation; a pod that
    // Kubernetes reports ready and that answers the probe is used.
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (P2, &[Reply::Ok])]);
    let mut e = entry(NAME, Protocol::Http1, private(&[P1], &[P2], None));
    Arc::make_mut(&mut e.spec).probe_optimisation = false;
    let mut h = Harness::start(Snapshot::new([e]), prober, settings());
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn item58_no_update_cases() {
    // Pod 404: not mesh, so no fallback and no update.
    let prober = FakeProber::new(&[(P1, &[Reply::Status(404)]), (CIP, &[Reply::Ok])]);
    let mut h = Harness::start(
        one(private(&[P1], &[], Some(CIP))),
        prober.clone(),
        settings(),
    );
    h.none_within(Duration::from_secs(1)).await;
    assert_eq!(prober.calls_to(CIP), 0);
    assert!(prober.calls_to(P1) >= 5, "re-probed every PROBE_FREQUENCY");
    h.stop().await;

    // Pod 503 and cluster IP error.
    let prober = FakeProber::new(&[(P1, &[Reply::Status(503)]), (CIP, &[Reply::Fail])]);
    let mut h = Harness::start(
        one(private(&[P1], &[], Some(CIP))),
        prober.clone(),
        settings(),
    );
    h.none_within(Duration::from_secs(1)).await;
    assert!(prober.calls_to(CIP) >= 5);
    h.stop().await;
}

// Item 59.

#[tokio::test(start_paused = true)]
async fn item59_ready_to_not_ready_is_reprobed() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (P2, &[Reply::Ok]), (P3, &[Reply::Fail])]);
    let mut w = watcher(&prober, MeshMode::Auto);
    let first = dests(&[P1, P2], &[P3], None);
    assert_eq!(
        w.check_dests(&first, &Dests::default()).await,
        Some(pods(&[P1, P2]))
    );
    // Same again: P3 still fails, nothing changed.
    assert_eq!(w.check_dests(&first, &first).await, None);

    // P2 becomes not ready and fails its re-probe.
    prober.set(P2, &[Reply::Fail]);
    let second = dests(&[P1], &[P2, P3], None);
    assert_eq!(w.check_dests(&second, &first).await, Some(pods(&[P1])));
    // The re-probe succeeds (probe optimisation trusts it).
    prober.set(P2, &[Reply::Ok]);
    assert_eq!(w.check_dests(&second, &second).await, Some(pods(&[P1, P2])));
    // The not-ready P3 finally succeeds.
    prober.set(P3, &[Reply::Ok]);
    assert_eq!(
        w.check_dests(&second, &second).await,
        Some(pods(&[P1, P2, P3]))
    );
    assert_eq!(w.check_dests(&second, &second).await, None);
}

// Item 60.

#[tokio::test(start_paused = true)]
async fn item60_cluster_ip_known_healthy_needs_no_probe() {
    let prober = FakeProber::new(&[]);
    let mut w = watcher(&prober, MeshMode::Auto);
    w.pods_addressable = false;
    w.cluster_ip_healthy = true;
    let cur = dests(&[P1], &[], Some(CIP));
    assert_eq!(
        w.check_dests(&cur, &Dests::default()).await,
        Some(via_cluster_ip(CIP, &[P1]))
    );
    assert_eq!(prober.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn item60_a_stopped_watcher_emits_nothing() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok])]);
    let throttler = Arc::new(Throttler::new());
    throttler.ensure_revision(&id(), Default::default());
    let (observer, mut updates) = mpsc::unbounded_channel();
    let ctx = Arc::new(WatcherContext {
        throttler: throttler.clone(),
        fast_probe_interval: None,
        probe_frequency: DEFAULT_PROBE_FREQUENCY,
        observer: Some(observer),
    });
    let shared = Arc::new(WatcherShared::new(id(), Arc::new(dests(&[P1], &[], None))));
    let task = tokio::spawn(run_watcher(
        watcher(&prober, MeshMode::Auto),
        shared.clone(),
        ctx,
    ));
    let (_, update) = timeout(Duration::from_secs(1), updates.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(update, pods(&[P1]));

    shared.stop();
    shared.set_dests(Arc::new(Dests::default()));
    timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
    assert!(updates.try_recv().is_err());
    assert_eq!(throttler.revision(&id()).unwrap().pod_dests(), [P1]);
}

// Item 61.

#[tokio::test(start_paused = true)]
async fn item61_swinging_dests() {
    let prober = FakeProber::new(&[(P1, &[Reply::Fail]), (P2, &[Reply::Ok])]);
    let mut w = watcher(&prober, MeshMode::Auto);
    let mut prev = Dests::default();
    let mut step = |cur: Dests| {
        let previous = std::mem::replace(&mut prev, cur.clone());
        (cur, previous)
    };

    let (cur, p) = step(dests(&[P1, P2], &[], None));
    assert_eq!(w.check_dests(&cur, &p).await, Some(pods(&[P2])));

    prober.set(P1, &[Reply::Ok]);
    let (cur, p) = step(dests(&[P1], &[], None));
    assert_eq!(w.check_dests(&cur, &p).await, Some(pods(&[P1])));

    prober.set(P2, &[Reply::Fail]);
    let (cur, p) = step(dests(&[P1, P2], &[], None));
    assert_eq!(w.check_dests(&cur, &p).await, None);

    prober.set(P2, &[Reply::Ok]);
    assert_eq!(w.check_dests(&cur, &p).await, Some(pods(&[P1, P2])));
    assert_eq!(w.check_dests(&cur, &cur).await, None);

    prober.set(P4, &[Reply::Fail]);
    let (cur, p) = step(dests(&[P1, P2], &[P4], None));
    assert_eq!(w.check_dests(&cur, &p).await, None);
    prober.set(P4, &[Reply::Ok]);
    assert_eq!(w.check_dests(&cur, &cur).await, Some(pods(&[P1, P2, P4])));

    prober.set(P3, &[Reply::Ok]);
    let (cur, p) = step(dests(&[P2, P3], &[], None));
    assert_eq!(w.check_dests(&cur, &p).await, Some(pods(&[P2, P3])));

    let (cur, p) = step(dests(&[P2], &[], None));
    assert_eq!(w.check_dests(&cur, &p).await, Some(pods(&[P2])));

    // Scaled to zero.
    let (cur, p) = step(Dests::default());
    assert_eq!(w.check_dests(&cur, &p).await, Some(DestsUpdate::default()));
    assert!(w.healthy_pods.is_empty());
}

// Item 62.

#[tokio::test(start_paused = true)]
async fn item62_a_removed_revision_gets_no_update() {
    let prober = FakeProber::new(&[(P1, &[Reply::Fail, Reply::Fail, Reply::Ok])]);
    let mut h = Harness::start(one(private(&[P1], &[], None)), prober.clone(), settings());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.throttler.revision(&id()).is_some());
    h.publish(Snapshot::default());
    h.none_within(Duration::from_secs(2)).await;
    assert!(h.throttler.revision(&id()).is_none());
    // The watcher stopped: no more probes.
    let calls = prober.calls();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(prober.calls(), calls);
    h.stop().await;
}

// Item 63.

#[tokio::test(start_paused = true)]
async fn item63_no_private_service_gives_no_update() {
    let prober = FakeProber::new(&[(P1, &[Reply::Status(503)])]);
    let mut h = Harness::start(one(private(&[P1], &[], None)), prober, settings());
    h.none_within(Duration::from_secs(1)).await;
    h.stop().await;
}

// Item 64: probePodIPs.

#[tokio::test(start_paused = true)]
async fn item64_probe_pod_ips() {
    // All already healthy: no probes, noop.
    let prober = FakeProber::new(&[]);
    let mut w = watcher(&prober, MeshMode::Auto);
    w.healthy_pods = set(&[P1, P2]);
    let r = w.probe_pod_ips(&set(&[P1]), &set(&[P2])).await;
    assert_eq!((r.healthy, r.noop, r.probed), (set(&[P1, P2]), true, 0));

    // Three not-ready pods: one error, one slow (100 ms) — all probed in parallel.
    let prober = FakeProber::new(&[
        (P1, &[Reply::Fail]),
        (P2, &[Reply::SlowOk(100)]),
        (P3, &[Reply::Ok]),
    ]);
    let w = watcher(&prober, MeshMode::Auto);
    let started = Instant::now();
    let r = w.probe_pod_ips(&set(&[]), &set(&[P1, P2, P3])).await;
    assert_eq!(r.healthy, set(&[P2, P3]));
    assert!(!r.noop);
    assert!(r.not_mesh);
    assert!(
        r.error.as_deref().is_some_and(|e| e.contains(P1)),
        "{:?}",
        r.error
    );
    assert_eq!(r.probed, 3);
    assert_eq!(prober.calls(), 3);
    assert!(started.elapsed() < Duration::from_millis(150), "parallel");

    // Slower than PROBE_TIMEOUT: the round ends at the deadline.
    let prober = FakeProber::new(&[(P1, &[Reply::SlowOk(1000)]), (P2, &[Reply::Ok])]);
    let w = watcher(&prober, MeshMode::Auto);
    let started = Instant::now();
    let r = w.probe_pod_ips(&set(&[P1, P2]), &set(&[])).await;
    assert_eq!(started.elapsed(), DEFAULT_PROBE_TIMEOUT);
    assert_eq!(r.healthy, set(&[P2]));
    assert!(r.error.is_some_and(|e| e.contains("timed out")));

    // Mesh disabled: ready pods trusted, only the not-ready one probed.
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (P2, &[Reply::Ok])]);
    let w = watcher(&prober, MeshMode::Disabled);
    let r = w.probe_pod_ips(&set(&[P1]), &set(&[P2])).await;
    assert_eq!((r.healthy, r.probed), (set(&[P1, P2]), 1));
    assert_eq!(prober.calls_to(P2), 1);

    // Mesh auto: both probed.
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (P2, &[Reply::Ok])]);
    let w = watcher(&prober, MeshMode::Auto);
    let r = w.probe_pod_ips(&set(&[P1]), &set(&[P2])).await;
    assert_eq!((r.healthy, r.probed), (set(&[P1, P2]), 2));

    // Without probe optimisation only ready pods become healthy.
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (P2, &[Reply::Ok])]);
    let w = RevisionWatcher::new(id(), prober.clone(), config(MeshMode::Auto, false));
    let r = w.probe_pod_ips(&set(&[P1]), &set(&[P2])).await;
    assert_eq!((r.healthy, r.probed), (set(&[P1]), 2));

    // Vanished pods are removed: no probe, but a change.
    let prober = FakeProber::new(&[]);
    let mut w = watcher(&prober, MeshMode::Auto);
    w.healthy_pods = set(&[P1, P2]);
    let r = w.probe_pod_ips(&set(&[P1]), &set(&[])).await;
    assert_eq!((r.healthy, r.noop, r.probed), (set(&[P1]), false, 0));

    // Additions without probing (trusted ready pod) count as changes too.
    let mut w = watcher(&prober, MeshMode::Disabled);
    w.healthy_pods = set(&[P1]);
    let r = w.probe_pod_ips(&set(&[P1, P2]), &set(&[])).await;
    assert_eq!((r.healthy, r.noop, r.probed), (set(&[P1, P2]), false, 0));

    // No change with one (failed) probe: noop.
    let prober = FakeProber::new(&[(P2, &[Reply::Fail])]);
    let mut w = watcher(&prober, MeshMode::Auto);
    w.healthy_pods = set(&[P1]);
    let r = w.probe_pod_ips(&set(&[P1, P2]), &set(&[])).await;
    assert_eq!((r.healthy, r.noop, r.probed), (set(&[P1]), true, 1));

    // No change without probes: noop.
    let mut w = watcher(&prober, MeshMode::Auto);
    w.healthy_pods = set(&[P1]);
    let r = w.probe_pod_ips(&set(&[P1]), &set(&[])).await;
    assert_eq!((r.noop, r.probed), (true, 0));

    // 503 on a not-ready pod: noop, error, not notMesh.
    let prober = FakeProber::new(&[(P1, &[Reply::Status(503)])]);
    let w = watcher(&prober, MeshMode::Auto);
    let r = w.probe_pod_ips(&set(&[]), &set(&[P1])).await;
    assert!(r.noop);
    assert!(r.error.is_some());
    assert!(!r.not_mesh);
    assert!(r.healthy.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Manager: throttler lifecycle, activators, settings.

#[tokio::test(start_paused = true)]
async fn throttlers_follow_the_snapshot() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok])]);
    let mut e = entry(NAME, Protocol::Http1, private(&[P1], &[], None));
    Arc::make_mut(&mut e.spec).container_concurrency = 4;
    e.public.activator_ips = vec!["10.0.0.2".into(), "10.0.0.1".into()];
    let mut h = Harness::start(
        Snapshot::new([e.clone()]),
        prober,
        BackendSettings {
            max_queued: Some(5),
            ..settings()
        },
    );
    // Ensured synchronously by spawn.
    let revision = h.throttler.revision(&id()).unwrap();
    let s = revision.settings();
    assert_eq!((s.container_concurrency, s.max_queued), (4, Some(5)));
    assert_eq!(
        (revision.activator_count(), revision.activator_index()),
        (2, 0)
    );
    assert_eq!(h.next_for_default().await, pods(&[P1]));

    // Activators change.
    e.public.activator_ips = vec!["10.0.0.1".into()];
    h.publish(Snapshot::new([e.clone()]));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        (revision.activator_count(), revision.activator_index()),
        (1, 0)
    );
    // Self not among them: unchanged (spec §3.8).
    e.public.activator_ips = vec!["10.0.0.9".into(), "10.0.0.8".into()];
    h.publish(Snapshot::new([e.clone()]));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        (revision.activator_count(), revision.activator_index()),
        (1, 0)
    );

    // A settings change is not applied to the existing throttler (revisions are immutable).
    Arc::make_mut(&mut e.spec).container_concurrency = 9;
    h.publish(Snapshot::new([e.clone()]));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        h.throttler.revision(&id()).unwrap().container_concurrency(),
        4
    );

    // Scale to zero: an empty update.
    e.private = PrivateEndpoints::default();
    h.publish(Snapshot::new([e.clone()]));
    assert_eq!(h.next_for_default().await, DestsUpdate::default());
    assert_eq!(revision.capacity(), 0);

    // Removal.
    h.publish(Snapshot::default());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(h.throttler.is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_re_added_revision_starts_fresh() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok])]);
    let mut h = Harness::start(one(private(&[P1], &[], None)), prober, settings());
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    h.publish(Snapshot::default());
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.publish(one(private(&[P1], &[], None)));
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    assert_eq!(h.throttler.revision(&id()).unwrap().pod_dests(), [P1]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_pod_gets_no_new_leases() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (P2, &[Reply::Ok])]);
    let mut e = entry(NAME, Protocol::Http1, private(&[P1, P2], &[], None));
    Arc::make_mut(&mut e.spec).container_concurrency = 2;
    let mut h = Harness::start(Snapshot::new([e.clone()]), prober, settings());
    assert_eq!(h.next_for_default().await, pods(&[P1, P2]));
    let acquire = |throttler: Arc<Throttler>| async move {
        timeout(Duration::from_secs(5), throttler.try_acquire(&id()))
            .await
            .expect("no lease")
            .unwrap()
    };
    // cc 2, first available: the first lease goes to the lowest dest.
    let held = acquire(h.throttler.clone()).await;
    assert_eq!(held.dest(), P1);

    e.private = private(&[P2], &[], None);
    h.publish(Snapshot::new([e]));
    assert_eq!(h.next_for_default().await, pods(&[P2]));
    let revision = h.throttler.revision(&id()).unwrap();
    assert_eq!(revision.pod_dests(), [P2]);
    assert_eq!(revision.dest_in_flight(P1), None);
    for _ in 0..5 {
        let lease = acquire(h.throttler.clone()).await;
        assert_eq!(lease.dest(), P2);
    }
    // The in-flight request on the removed pod finishes normally.
    assert_eq!(held.dest(), P1);
    drop(held);
    let a = acquire(h.throttler.clone()).await;
    let b = acquire(h.throttler.clone()).await;
    assert_eq!((a.dest(), b.dest()), (P2, P2));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_watcher() {
    let prober = FakeProber::new(&[(P1, &[Reply::Status(503)])]);
    let h = Harness::start(one(private(&[P1], &[], None)), prober.clone(), settings());
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.stop().await;
    let calls = prober.calls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(prober.calls(), calls);
}

#[tokio::test(start_paused = true)]
async fn the_timer_is_armed_only_while_something_is_unhealthy() {
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (P2, &[Reply::Fail])]);
    let mut h = Harness::start(one(private(&[P1], &[P2], None)), prober.clone(), settings());
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    tokio::time::sleep(Duration::from_millis(1010)).await;
    // P2 re-probed every 200 ms (≈5 times in 1 s), P1 never again.
    assert_eq!(prober.calls_to(P1), 1);
    let p2 = prober.calls_to(P2);
    assert!((5..=7).contains(&p2), "{p2}");
    prober.set(P2, &[Reply::Ok]);
    assert_eq!(h.next_for_default().await, pods(&[P1, P2]));
    let calls = prober.calls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(prober.calls(), calls);
    h.stop().await;
}

#[test]
fn mesh_mode_from_config() {
    assert_eq!(MeshMode::from_config("auto"), MeshMode::Auto);
    assert_eq!(MeshMode::from_config("Enabled"), MeshMode::Enabled);
    assert_eq!(MeshMode::from_config("DISABLED"), MeshMode::Disabled);
    assert_eq!(MeshMode::from_config("bogus"), MeshMode::Auto);
    assert_eq!(MeshMode::from_config(""), MeshMode::Auto);
}

#[test]
fn private_service_names() {
    assert_eq!(private_service_name("hello-00001"), "hello-00001-private");
    // 55 characters still fit (55 + 8 = 63).
    let fits = "a".repeat(55);
    assert_eq!(private_service_name(&fits), format!("{fits}-private"));
    // 56 do not: 23 characters + md5 hex + suffix.
    let long = "a".repeat(56);
    let name = private_service_name(&long);
    assert_eq!(
        name,
        "aaaaaaaaaaaaaaaaaaaaaaa3b0c8ac703f828b04c6c197006d17218-private"
    );
    assert_eq!(name.len(), 63);
}

// ---------------------------------------------------------------------------------------------
// Fast probing (paused time: exact virtual timings).

#[tokio::test(start_paused = true)]
async fn fast_probing_only_while_requests_wait() {
    let prober = FakeProber::new(&[(P1, &[Reply::Status(503)])]);
    let mut h = Harness::start(
        one(private(&[], &[P1], None)),
        prober.clone(),
        BackendSettings {
            fast_probe_interval: Duration::from_millis(10),
            ..settings()
        },
    );
    // Nobody waits: Knative's cadence (initial probe + one per 200 ms).
    tokio::time::sleep(Duration::from_millis(1010)).await;
    let idle = prober.calls_to(P1);
    assert!((5..=7).contains(&idle), "{idle}");

    // A request waits: probes every ~10 ms.
    let throttler = h.throttler.clone();
    let waiter = tokio::spawn(async move {
        throttler
            .try_acquire(&id())
            .await
            .map(|l| l.dest().to_owned())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.throttler.revision(&id()).unwrap().waiting(), 1);
    let busy = prober.calls_to(P1) - idle;
    assert!(busy >= 15, "{busy} probes in 200 ms");

    // The pod turns healthy: in the throttler within about one fast interval.
    prober.set(P1, &[Reply::Ok]);
    let flipped = Instant::now();
    assert_eq!(h.next_for_default().await, pods(&[P1]));
    assert!(
        flipped.elapsed() <= Duration::from_millis(20),
        "{:?}",
        flipped.elapsed()
    );
    assert_eq!(waiter.await.unwrap().unwrap(), P1);

    // Healthy: no more probing at all.
    let calls = prober.calls();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(prober.calls(), calls);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn fast_probing_stops_when_the_request_leaves() {
    let prober = FakeProber::new(&[(P1, &[Reply::Status(503)])]);
    let h = Harness::start(
        one(private(&[P1], &[], None)),
        prober.clone(),
        BackendSettings {
            fast_probe_interval: Duration::from_millis(10),
            ..settings()
        },
    );
    let throttler = h.throttler.clone();
    let waiter = tokio::spawn(async move { throttler.try_acquire(&id()).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(prober.calls_to(P1) >= 8);
    waiter.abort();
    let _ = waiter.await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = prober.calls_to(P1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = prober.calls_to(P1) - before;
    assert!((4..=6).contains(&after), "{after} probes in 1 s");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Over real HTTP: queue-proxy stand-ins on 127.0.0.1.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// 200 `queue`.
    Queue,
    /// This status, empty body.
    Status(u16),
    /// 200 with this body.
    Body(&'static str),
    /// Never answers.
    Hang,
    /// Closes the connection without answering.
    Close,
}

struct QueueProxy {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<Mutex<Vec<http::request::Parts>>>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl QueueProxy {
    async fn start(answer: Answer) -> QueueProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, r, n) = (answer.clone(), requests.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                n.fetch_add(1, Ordering::SeqCst);
                if *a.lock().unwrap() == Answer::Close {
                    drop(stream);
                    continue;
                }
                let (a, r) = (a.clone(), r.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let answer = *a.lock().unwrap();
                        r.lock().unwrap().push(req.into_parts().0);
                        async move {
                            let (status, body) = match answer {
                                Answer::Queue => (200, "queue"),
                                Answer::Status(status) => (status, ""),
                                Answer::Body(body) => (200, body),
                                Answer::Hang | Answer::Close => {
                                    std::future::pending::<()>().await;
                                    (500, "")
                                }
                            };
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        QueueProxy {
            addr,
            answer,
            requests,
            hits,
            task,
        }
    }

    fn dest(&self) -> String {
        self.addr.to_string()
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn last_request(&self) -> http::request::Parts {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request")
    }
}

impl Drop for QueueProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on.
async fn refused_dest() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

#[tokio::test]
async fn probe_classification_over_http() {
    let qp = QueueProxy::start(Answer::Queue).await;
    let dest = qp.dest();
    let probe = || async {
        timeout(Duration::from_secs(5), probe_queue(&dest, None))
            .await
            .unwrap()
    };

    assert_eq!(probe().await, ProbeResult::success());
    for (status, not_mesh) in [
        (503, false),
        (502, false),
        (500, true),
        (404, true),
        (204, true),
    ] {
        qp.set(Answer::Status(status));
        let r = probe().await;
        assert!(!r.ok, "{status}");
        assert_eq!(r.not_mesh, not_mesh, "{status}");
        assert!(r.error.unwrap().contains(&status.to_string()));
    }
    for body in ["queue\n", "", "QUEUE", "queue-proxy"] {
        qp.set(Answer::Body(body));
        let r = probe().await;
        assert!(!r.ok, "{body:?}");
        assert!(r.not_mesh);
        assert!(r.error.unwrap().contains("unexpected body"));
    }
    qp.set(Answer::Close);
    let r = probe().await;
    assert!(!r.ok && !r.not_mesh && r.error.is_some(), "{r:?}");

    qp.set(Answer::Hang);
    assert!(
        timeout(Duration::from_millis(100), probe_queue(&dest, None))
            .await
            .is_err()
    );

    let refused = refused_dest().await;
    let r = probe_queue(&refused, None).await;
    assert!(!r.ok && !r.not_mesh);
    assert!(r.error.unwrap().contains("dial tcp"));
}

#[tokio::test]
async fn probe_headers_are_exact() {
    let qp = QueueProxy::start(Answer::Queue).await;
    assert!(probe_queue(&qp.dest(), None).await.ok);
    let req = qp.last_request();
    assert_eq!(req.method, http::Method::GET);
    assert_eq!(req.uri.path(), "/healthz");
    assert_eq!(req.version, http::Version::HTTP_11);
    let header = |name: &str| {
        req.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(header("k-network-probe").as_deref(), Some("queue"));
    assert_eq!(
        header("user-agent").as_deref(),
        Some("Knative-Activator-Probe")
    );
    assert_eq!(header("host"), Some(qp.dest()));
    assert_eq!(header("k-passthrough-lb"), None);

    // Passthrough LB (item 55's probe shape).
    assert!(
        probe_queue(&qp.dest(), Some("hello-00001-private.default"))
            .await
            .ok
    );
    let req = qp.last_request();
    assert_eq!(req.headers["host"], "hello-00001-private.default");
    assert_eq!(req.headers["k-passthrough-lb"], "true");
    assert_eq!(req.headers["k-network-probe"], "queue");
}

#[tokio::test]
async fn a_hanging_pod_is_bounded_by_probe_timeout() {
    let hang = QueueProxy::start(Answer::Hang).await;
    let ok = QueueProxy::start(Answer::Queue).await;
    let w = RevisionWatcher::new(
        id(),
        Arc::new(HttpProber),
        WatcherConfig {
            probe_timeout: Duration::from_millis(100),
            ..config(MeshMode::Auto, true)
        },
    );
    let started = std::time::Instant::now();
    let r = w
        .probe_pod_ips(&set(&[&hang.dest(), &ok.dest()]), &set(&[]))
        .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(r.healthy, set(&[&ok.dest()]));
    assert!(r.error.unwrap().contains("timed out"));
}

#[tokio::test]
async fn manager_over_http_pods_and_cluster_ip() {
    let pod = QueueProxy::start(Answer::Status(503)).await;
    let service = QueueProxy::start(Answer::Queue).await;
    let refused = refused_dest().await;
    let settings = BackendSettings {
        probe_frequency: Duration::from_millis(20),
        ..settings()
    };

    // A pod that turns healthy.
    let mut h = Harness::start(
        one(private(&[&pod.dest()], &[&refused], None)),
        Arc::new(HttpProber),
        settings.clone(),
    );
    h.none_within(Duration::from_millis(100)).await;
    pod.set(Answer::Queue);
    assert_eq!(h.next_for_default().await, pods(&[&pod.dest()]));
    assert_eq!(
        h.throttler.revision(&id()).unwrap().pod_dests(),
        [pod.dest()]
    );
    h.stop().await;

    // Mesh-like pods (503 / unreachable) with a healthy cluster IP: fallback.
    pod.set(Answer::Status(503));
    let mut h = Harness::start(
        one(private(
            &[&pod.dest(), &refused],
            &[],
            Some(&service.dest()),
        )),
        Arc::new(HttpProber),
        settings.clone(),
    );
    assert_eq!(
        h.next_for_default().await,
        via_cluster_ip(&service.dest(), &[&pod.dest(), &refused])
    );
    let revision = h.throttler.revision(&id()).unwrap();
    assert_eq!(revision.cluster_ip_dest(), Some(service.dest()));
    let lease = h.throttler.try_acquire(&id()).await.unwrap();
    assert!(lease.is_cluster_ip());
    assert_eq!(lease.dest(), service.dest());
    assert!(service.hits.load(Ordering::SeqCst) >= 1);
    h.stop().await;
}

#[tokio::test]
async fn fast_probing_releases_a_held_request_quickly() {
    // Cold start: the queue-proxy is up and listed but answers 503 until the app is ready.
    let qp = QueueProxy::start(Answer::Status(503)).await;
    let mut h = Harness::start(
        one(private(&[], &[&qp.dest()], None)),
        Arc::new(HttpProber),
        BackendSettings {
            fast_probe_interval: DEFAULT_FAST_PROBE_INTERVAL,
            probe_frequency: DEFAULT_PROBE_FREQUENCY,
            ..settings()
        },
    );
    let throttler = h.throttler.clone();
    let waiter = tokio::spawn(async move {
        let lease = throttler.try_acquire(&id()).await.unwrap();
        (std::time::Instant::now(), lease.dest().to_owned())
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(h.throttler.revision(&id()).unwrap().waiting(), 1);

    let ready_at = std::time::Instant::now();
    qp.set(Answer::Queue);
    let (released_at, dest) = timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    let latency = released_at - ready_at;
    assert_eq!(dest, qp.dest());
    // ~2 fast intervals expected; generous slack for a loaded machine, still well under
    // PROBE_FREQUENCY (200 ms).
    assert!(latency < Duration::from_millis(100), "{latency:?}");
    assert_eq!(h.next_for_default().await, pods(&[&qp.dest()]));
    h.stop().await;
}

#[tokio::test]
async fn file_source_to_throttler_end_to_end() {
    use crate::discovery::FileSource;
    let qp = QueueProxy::start(Answer::Queue).await;
    let dir = std::env::temp_dir().join(format!("activator-backends-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("revisions.json");
    let write = |ready: &str| {
        let tmp = dir.join("tmp.json");
        std::fs::write(
            &tmp,
            format!(
                r#"{{"revisions":[{{"namespace":"{NS}","name":"{NAME}","containerConcurrency":2,"pods":{{"ready":[{ready}]}},"activators":["10.0.0.1","10.0.0.2"]}}]}}"#
            ),
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write(&format!("\"{}\"", qp.dest()));
    let (stop, stop_rx) = watch::channel(false);
    let source = FileSource::start(&path, Duration::from_millis(20), stop_rx.clone()).unwrap();
    let throttler = Arc::new(Throttler::new());
    let task = BackendsManager::spawn(
        source.subscribe_changes(),
        throttler.clone(),
        settings(),
        stop_rx,
    );
    let revision = throttler.revision(&id()).unwrap();
    assert_eq!(revision.container_concurrency(), 2);
    assert_eq!(revision.activator_count(), 2);
    let lease = timeout(Duration::from_secs(5), throttler.try_acquire(&id()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.dest(), qp.dest());
    drop(lease);

    // The pod leaves the file: scaled to zero.
    write("");
    for _ in 0..200 {
        if revision.capacity() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(revision.capacity(), 0);
    assert!(revision.pod_dests().is_empty());
    stop.send_replace(true);
    timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Answers every probe with success after 20 ms, counting probes in flight.
#[derive(Debug, Default)]
struct InFlightProber {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Prober for InFlightProber {
    async fn probe(&self, _dest: &str, _host: Option<&str>) -> ProbeResult {
        /// Leaves the count also when the probe is dropped at its deadline.
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        let _leave = Leave(&self.now);
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        ProbeResult::success()
    }
}

/// Startup with many listed pods (`ACTIVATOR_MAX_CONCURRENT_PROBES`): probes across all
/// revisions never exceed the bound, and every pod still becomes usable (probes that could not
/// start within a round's deadline are retried).
#[tokio::test(start_paused = true)]
async fn startup_probing_is_bounded_and_completes() {
    const REVISIONS: usize = 200;
    let snapshot = Snapshot::new((0..REVISIONS).map(|i| {
        let pods = [format!("10.1.{i}.1:8012"), format!("10.1.{i}.2:8012")];
        let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
        entry(
            &format!("rev-{i}"),
            Protocol::Http1,
            private(&[], &pods, None),
        )
    }));
    let prober = Arc::new(InFlightProber::default());
    let mut harness = Harness::start(
        snapshot,
        prober.clone(),
        BackendSettings {
            max_concurrent_probes: 16,
            ..settings()
        },
    );
    let mut usable = std::collections::HashSet::new();
    while usable.len() < REVISIONS {
        let (id, update) = harness.next().await;
        if update.dests.len() == 2 {
            usable.insert(id);
        }
    }
    assert_eq!(prober.max.load(Ordering::SeqCst), 16);
    harness.shutdown.send_replace(true);
}

/// Incremental discovery: a publication naming revision `a` reconciles `a` alone. Revision
/// `b`'s throttler (same object), its pod trackers, its in-flight lease and its watcher (no new
/// probe of its pod) are untouched by a hundred updates of `a`.
#[tokio::test(start_paused = true)]
async fn an_update_of_one_revision_leaves_the_others_alone() {
    let a = |pods: &[&str]| entry("a", Protocol::Http1, private(pods, &[], None));
    let b = entry("b", Protocol::Http1, private(&[P2], &[], None));
    let prober = FakeProber::new(&[(P1, &[Reply::Ok]), (P2, &[Reply::Ok]), (P3, &[Reply::Ok])]);
    let mut h = Harness::start(
        Snapshot::new([a(&[P1]), b.clone()]),
        prober.clone(),
        settings(),
    );
    let b_id = RevisionId::new(NS, "b");
    let mut seen_b = false;
    while !seen_b {
        let (id, update) = h.next().await;
        seen_b = id == b_id && update == pods(&[P2]);
    }
    let b_throttler = h.throttler.revision(&b_id).unwrap();
    let lease = h.throttler.try_acquire(&b_id).await.unwrap();
    assert_eq!(lease.dest(), P2);
    let probes_of_b = || {
        prober
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|d| *d == P2)
            .count()
    };
    let b_probes = probes_of_b();

    let mut snapshot = h.source.current().as_ref().clone();
    for i in 0..100 {
        let next = if i % 2 == 0 { a(&[P1, P3]) } else { a(&[P1]) };
        snapshot.set(next);
        let changed = [RevisionId::new(NS, "a")].into_iter().collect();
        assert!(h.source.publish_changes(
            snapshot.clone(),
            crate::discovery::Changes::Revisions(changed)
        ));
        // `a`'s watcher applies each change.
        let expected = if i % 2 == 0 {
            pods(&[P1, P3])
        } else {
            pods(&[P1])
        };
        loop {
            let (id, update) = h.next().await;
            assert_ne!(id, b_id, "nothing is emitted for b");
            if update == expected {
                break;
            }
        }
    }
    let b_now = h.throttler.revision(&b_id).unwrap();
    assert!(
        Arc::ptr_eq(&b_throttler, &b_now),
        "b's throttler is the same object"
    );
    assert_eq!(
        b_now.dest_in_flight(P2),
        Some(1),
        "b's lease is still counted"
    );
    assert_eq!(b_now.in_flight(), 1);
    assert_eq!(probes_of_b(), b_probes, "b was not probed again");
    drop(lease);
    assert_eq!(b_now.in_flight(), 0);
    h.shutdown.send_replace(true);
}

/// Fast probing is per revision and event-driven: with 50 revisions whose pods keep failing,
/// a request waiting for one of them speeds up that revision's probes alone; the others keep
/// Knative's cadence.
#[tokio::test(start_paused = true)]
async fn fast_probing_speeds_up_only_the_revision_with_waiting_requests() {
    let dests: Vec<String> = (0..50).map(|i| format!("10.2.0.{i}:8012")).collect();
    let script: Vec<(&str, &[Reply])> = dests
        .iter()
        .map(|d| (d.as_str(), &[Reply::Status(503)][..]))
        .collect();
    let prober = FakeProber::new(&script);
    let snapshot = Snapshot::new(dests.iter().enumerate().map(|(i, d)| {
        entry(
            &format!("rev-{i}"),
            Protocol::Http1,
            private(&[], &[d], None),
        )
    }));
    let h = Harness::start(
        snapshot,
        prober.clone(),
        BackendSettings {
            fast_probe_interval: Duration::from_millis(10),
            ..settings()
        },
    );
    let waiting = RevisionId::new(NS, "rev-7");
    let throttler = h.throttler.clone();
    let waiter = tokio::spawn(async move { throttler.try_acquire(&waiting).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(1010)).await;
    let fast = prober.calls_to(&dests[7]);
    assert!(
        fast >= 50,
        "{fast} probes of the waited-for revision in 1 s"
    );
    for (i, dest) in dests.iter().enumerate().filter(|(i, _)| *i != 7) {
        let calls = prober.calls_to(dest);
        assert!((5..=7).contains(&calls), "rev-{i}: {calls} probes in 1 s");
    }
    waiter.abort();
    h.stop().await;
}
