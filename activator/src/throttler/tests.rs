//! Registry-level and request-path tests: spec §11 items 33–35, 38, 39, plus cancellation, capacity
//! changes under load, the per-pod limit under stress, and the empty-list cases. (Items 29–32, 36,
//! 37, 40, 44 live in `revision.rs`; 41 in `infinite.rs`; 42–44 in `subset.rs`; 45–47 in
//! `policy.rs`; breaker wake-up exactness in `knative_common::breaker`.)

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Barrier, Notify};
use tokio::time::timeout;

use super::*;

const NS: &str = "test-namespace";
const NAME: &str = "test-revision";

fn id() -> RevisionId {
    RevisionId::new(NS, NAME)
}

fn setup(cc: u32, protocol: Protocol) -> (Arc<Throttler>, Arc<RevisionThrottler>) {
    let throttler = Arc::new(Throttler::new());
    let rt = throttler.ensure_revision(
        &id(),
        RevisionSettings {
            container_concurrency: cc,
            protocol,
            max_queued: None,
        },
    );
    (throttler, rt)
}

fn pods(dests: &[&str]) -> DestsUpdate {
    DestsUpdate {
        cluster_ip_dest: None,
        dests: dests.iter().map(|d| d.to_string()).collect(),
    }
}

fn cluster_ip(ip: &str, dests: &[&str]) -> DestsUpdate {
    DestsUpdate {
        cluster_ip_dest: Some(ip.to_string()),
        dests: dests.iter().map(|d| d.to_string()).collect(),
    }
}

/// Go's `Throttler.Try(ctx, rev, fn)` expressed with our API: lease, run, release.
async fn try_run<E>(
    throttler: &Throttler,
    id: &RevisionId,
    work: impl FnOnce(&str, bool) -> Result<(), E>,
) -> Result<Result<(), E>, ThrottlerError> {
    let lease = throttler.try_acquire(id).await?;
    Ok(work(lease.dest(), lease.is_cluster_ip()))
}

#[test]
fn revision_id_display_and_lease_is_send_static() {
    assert_eq!(id().to_string(), "test-namespace/test-revision");
    fn send_sync_static<T: Send + Sync + 'static>() {}
    send_sync_static::<Lease>();
    send_sync_static::<Throttler>();
    assert_eq!(Protocol::Http1.port_name(), "http");
    assert_eq!(Protocol::H2c.port_name(), "http2");
}

/// §11 item 33.
#[tokio::test]
async fn item33_try_succeeds_propagates_and_fails_after_deletion() {
    let (throttler, _) = setup(1, Protocol::Http1);
    throttler
        .update_dests(&id(), &pods(&["128.0.0.1:1234"]))
        .unwrap();
    let ok: Result<(), &str> = Ok(());
    assert_eq!(
        try_run(&throttler, &id(), |dest, cip| {
            assert_eq!((dest, cip), ("128.0.0.1:1234", false));
            ok
        })
        .await,
        Ok(Ok(()))
    );
    assert_eq!(
        try_run(&throttler, &id(), |_, _| Err("inner")).await,
        Ok(Err("inner"))
    );
    assert!(throttler.remove_revision(&id()));
    let err = throttler.try_acquire(&id()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"revision.serving.knative.dev "test-revision" not found"#
    );
    // Later updates for it fail the lookup (§3.7).
    assert!(throttler
        .update_dests(&id(), &pods(&["128.0.0.1:1234"]))
        .is_err());
    assert!(throttler
        .update_activators(&id(), &["1.1.1.1"], "1.1.1.1")
        .is_err());
    assert!(!throttler.remove_revision(&id()));
    assert!(throttler.is_empty());
}

/// Runs `n` concurrent requests that each hold their lease until all `n` have one (so every dest
/// choice is made under full concurrency); returns (dest, is_cluster_ip) or the error, in order of
/// completion.
async fn concurrent(
    throttler: &Arc<Throttler>,
    n: usize,
    deadline: Duration,
) -> Vec<Result<(String, bool), String>> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (throttler, barrier) = (throttler.clone(), barrier.clone());
            tokio::spawn(async move {
                let lease = timeout(deadline, throttler.try_acquire(&id()))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                barrier.wait().await;
                Ok((lease.dest().to_string(), lease.is_cluster_ip()))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// §11 item 35.
#[tokio::test]
async fn item35_successes() {
    struct Case {
        name: &'static str,
        cc: u32,
        updates: Vec<DestsUpdate>,
        requests: usize,
        want: &'static [&'static str],
        via_cluster_ip: bool,
    }
    let cases = vec![
        Case {
            name: "single healthy podIP",
            cc: 1,
            updates: vec![pods(&["128.0.0.1:1234"]), pods(&["128.0.0.1:1234"])],
            requests: 1,
            want: &["128.0.0.1:1234"],
            via_cluster_ip: false,
        },
        Case {
            name: "single healthy podIP, infinite cc: latest update wins",
            cc: 0,
            updates: vec![
                pods(&["128.0.0.2:1234", "128.0.0.32:1212"]),
                pods(&["128.0.0.1:1234"]),
            ],
            requests: 1,
            want: &["128.0.0.1:1234"],
            via_cluster_ip: false,
        },
        Case {
            name: "single healthy clusterIP overrides pods",
            cc: 1,
            updates: vec![
                pods(&["128.0.0.1:1234", "128.0.0.2:1234"]),
                cluster_ip("129.0.0.1:1234", &["128.0.0.1:1234"]),
            ],
            requests: 1,
            want: &["129.0.0.1:1234"],
            via_cluster_ip: true,
        },
        Case {
            name: "spread podIP load",
            cc: 1,
            updates: vec![
                pods(&["128.0.0.3:1234"]),
                pods(&["128.0.0.1:1234", "128.0.0.2:1234"]),
            ],
            requests: 2,
            want: &["128.0.0.1:1234", "128.0.0.2:1234"],
            via_cluster_ip: false,
        },
        Case {
            name: "clumping test",
            cc: 3,
            updates: vec![pods(&[
                "128.0.0.1:1234",
                "128.0.0.2:1234",
                "128.0.0.2:4236",
                "128.0.0.2:1233",
                "128.0.0.2:1230",
            ])],
            requests: 3,
            want: &["128.0.0.1:1234"],
            via_cluster_ip: false,
        },
        Case {
            name: "roundrobin test",
            cc: 5,
            updates: vec![pods(&[
                "128.0.0.1:1234",
                "128.0.0.2:1234",
                "211.212.213.214",
            ])],
            requests: 3,
            want: &["128.0.0.1:1234", "128.0.0.2:1234", "211.212.213.214"],
            via_cluster_ip: false,
        },
        Case {
            name: "multiple ClusterIP requests",
            cc: 1,
            updates: vec![cluster_ip(
                "129.0.0.1:1234",
                &["128.0.0.1:1234", "128.0.0.2:1234"],
            )],
            requests: 2,
            want: &["129.0.0.1:1234"],
            via_cluster_ip: true,
        },
    ];
    for case in cases {
        let (throttler, rt) = setup(case.cc, Protocol::Http1);
        assert!(throttler
            .update_activators(&id(), &["130.0.0.2"], "130.0.0.2")
            .unwrap());
        for update in &case.updates {
            throttler.update_dests(&id(), update).unwrap();
        }
        // Exact capacity after repeated updates.
        let last = case.updates.last().unwrap();
        let want_capacity = if case.cc == 0 {
            1
        } else {
            last.dests.len() as u64 * u64::from(case.cc)
        };
        assert_eq!(rt.capacity(), want_capacity, "{}", case.name);
        assert_eq!(rt.activator_index(), 0);
        let assigned = rt.assigned_dests();
        assert!(assigned.windows(2).all(|w| w[0] < w[1]), "sorted");

        let results = concurrent(&throttler, case.requests, Duration::from_secs(1)).await;
        let mut got = BTreeSet::new();
        for r in results {
            let (dest, is_cluster_ip) = r.unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(is_cluster_ip, case.via_cluster_ip, "{}", case.name);
            got.insert(dest);
        }
        let want: BTreeSet<String> = case.want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{}", case.name);
        assert_eq!(rt.in_flight(), 0, "{}: all slots returned", case.name);
    }
}

/// Holds a lease until `release` is notified, reporting results on `tx`.
fn spawn_holder(
    throttler: &Arc<Throttler>,
    deadline: Duration,
    release: Arc<Notify>,
    tx: mpsc::UnboundedSender<Result<String, String>>,
) {
    let throttler = throttler.clone();
    tokio::spawn(async move {
        match timeout(deadline, throttler.try_acquire(&id())).await {
            Err(elapsed) => {
                let _ = tx.send(Err(elapsed.to_string()));
            }
            Ok(Err(e)) => {
                let _ = tx.send(Err(e.to_string()));
            }
            Ok(Ok(lease)) => {
                release.notified().await;
                let _ = tx.send(Ok(lease.dest().to_string()));
            }
        }
    });
}

/// §11 item 34.
#[tokio::test(start_paused = true)]
async fn item34_one_times_out_with_cluster_ip_and_one_backend() {
    let (throttler, rt) = setup(1, Protocol::Http1);
    throttler
        .update_dests(&id(), &cluster_ip("129.0.0.1:1234", &["128.0.0.1:1234"]))
        .unwrap();
    assert_eq!(rt.capacity(), 1);
    let release = Arc::new(Notify::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..2 {
        spawn_holder(
            &throttler,
            Duration::from_millis(100),
            release.clone(),
            tx.clone(),
        );
    }
    let first = rx.recv().await.unwrap();
    assert_eq!(first, Err("deadline has elapsed".to_string()));
    release.notify_one();
    assert_eq!(rx.recv().await.unwrap(), Ok("129.0.0.1:1234".to_string()));
    assert_eq!((rt.in_flight(), rt.waiting()), (0, 0));
}

/// §11 items 38 and 39.
#[tokio::test(start_paused = true)]
async fn item38_39_activator_index_from_public_endpoints() {
    let possible = ["128.0.0.1:1234", "128.0.0.2:1234", "128.0.0.23:1234"];
    for protocol in [Protocol::H2c, Protocol::Http1] {
        let (throttler, rt) = setup(1, protocol);
        throttler.update_dests(&id(), &pods(&possible)).unwrap();
        assert_eq!(
            rt.port_name(),
            if protocol == Protocol::H2c {
                "http2"
            } else {
                "http"
            }
        );
        assert!(throttler
            .update_activators(&id(), &["130.0.0.1", "130.0.0.2"], "130.0.0.2")
            .unwrap());
        assert_eq!(rt.capacity(), 1);
        assert_eq!((rt.activator_count(), rt.activator_index()), (2, 1));
        assert_eq!(rt.assigned_dests().len(), 1);

        // Item 39: second concurrent request times out; the first goes to a known dest.
        let release = Arc::new(Notify::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..2 {
            spawn_holder(
                &throttler,
                Duration::from_millis(100),
                release.clone(),
                tx.clone(),
            );
        }
        assert_eq!(
            rx.recv().await.unwrap(),
            Err("deadline has elapsed".to_string())
        );
        release.notify_one();
        let dest = rx.recv().await.unwrap().unwrap();
        assert!(possible.contains(&dest.as_str()), "{dest}");

        // Item 38, second half: only self left.
        assert!(throttler
            .update_activators(&id(), &["130.0.0.2"], "130.0.0.2")
            .unwrap());
        assert_eq!((rt.activator_count(), rt.activator_index()), (1, 0));
        assert_eq!(rt.capacity(), 3);
    }
}

#[tokio::test(start_paused = true)]
async fn cluster_ip_overrides_pods_and_back() {
    let (throttler, rt) = setup(2, Protocol::Http1);
    throttler
        .update_dests(&id(), &pods(&["10.0.0.1:80", "10.0.0.2:80"]))
        .unwrap();
    let pod_lease = throttler.try_acquire(&id()).await.unwrap();
    assert!(!pod_lease.is_cluster_ip());
    throttler
        .update_dests(&id(), &cluster_ip("10.96.0.1:80", &["10.0.0.1:80"]))
        .unwrap();
    assert_eq!(rt.capacity(), 2);
    let lease = throttler.try_acquire(&id()).await.unwrap();
    assert!(lease.is_cluster_ip());
    assert_eq!(lease.dest(), "10.96.0.1:80");
    assert_eq!(lease.socket_addr(), Some("10.96.0.1:80".parse().unwrap()));
    assert_eq!(lease.revision(), &id());
    assert!(format!("{lease:?}").contains("10.96.0.1:80"));
    // Capacity 2 and 2 in flight (one still on the old pod): the next one waits.
    assert!(
        timeout(Duration::from_millis(10), throttler.try_acquire(&id()))
            .await
            .is_err()
    );
    drop(pod_lease);
    let third = throttler.try_acquire(&id()).await.unwrap();
    assert!(third.is_cluster_ip());
    // Back to pods: fresh trackers.
    throttler
        .update_dests(&id(), &pods(&["10.0.0.3:80"]))
        .unwrap();
    assert_eq!(rt.cluster_ip_dest(), None);
    drop((lease, third));
    let pod = throttler.try_acquire(&id()).await.unwrap();
    assert_eq!((pod.dest(), pod.is_cluster_ip()), ("10.0.0.3:80", false));
}

/// cc = 0 with an empty tracker list (breaker forced open, which Go's p2c would panic on): the
/// request waits (sleeping between attempts — with the paused clock a hot loop would never let
/// time advance) until dests arrive.
#[tokio::test(start_paused = true)]
async fn cc0_empty_tracker_list_waits_for_dests() {
    let (throttler, rt) = setup(0, Protocol::Http1);
    rt.breaker.set_capacity(1);
    assert!(rt.assigned_dests().is_empty());
    let pending = tokio::spawn(throttler.try_acquire(&id()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!pending.is_finished());
    throttler
        .update_dests(&id(), &pods(&["10.0.0.1:8012"]))
        .unwrap();
    let lease = pending.await.unwrap().unwrap();
    assert_eq!(lease.dest(), "10.0.0.1:8012");
    assert_eq!(rt.dest_in_flight("10.0.0.1:8012"), Some(1), "p2c weight");
    drop(lease);
    assert_eq!(rt.dest_in_flight("10.0.0.1:8012"), Some(0));

    // Scale to zero closes the gate; requests wait until dests return.
    throttler.update_dests(&id(), &pods(&[])).unwrap();
    assert_eq!(rt.capacity(), 0);
    let pending = tokio::spawn(throttler.try_acquire(&id()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!pending.is_finished());
    assert_eq!(rt.waiting(), 1);
    throttler
        .update_dests(&id(), &pods(&["10.0.0.2:8012"]))
        .unwrap();
    assert_eq!(pending.await.unwrap().unwrap().dest(), "10.0.0.2:8012");
}

/// cc > 0 with a free revision slot but no pod slot: released and retried, no panic, no spin.
#[tokio::test(start_paused = true)]
async fn finite_slot_without_tracker_retries_until_a_pod_frees() {
    let (throttler, rt) = setup(1, Protocol::Http1);
    throttler
        .update_dests(&id(), &pods(&["10.0.0.1:80"]))
        .unwrap();
    let held = throttler.try_acquire(&id()).await.unwrap();
    rt.breaker.set_capacity(5); // more revision slots than pod slots
    let pending = tokio::spawn(throttler.try_acquire(&id()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!pending.is_finished());
    assert_eq!(
        rt.in_flight(),
        1,
        "the retrying request holds no slot while backing off"
    );
    drop(held);
    assert_eq!(pending.await.unwrap().unwrap().dest(), "10.0.0.1:80");
    assert_eq!(rt.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_requests_leak_nothing() {
    let (throttler, rt) = setup(1, Protocol::Http1);
    throttler
        .update_dests(&id(), &pods(&["10.0.0.1:80"]))
        .unwrap();
    let held = throttler.try_acquire(&id()).await.unwrap();
    for _ in 0..5 {
        assert!(
            timeout(Duration::from_millis(10), throttler.try_acquire(&id()))
                .await
                .is_err()
        );
    }
    // Futures dropped before ever being polled are fine too.
    drop(throttler.try_acquire(&id()));
    assert_eq!((rt.in_flight(), rt.waiting()), (1, 0));
    drop(held);
    assert_eq!((rt.in_flight(), rt.waiting()), (0, 0));
    assert_eq!(rt.dest_in_flight("10.0.0.1:80"), Some(0));
    let again = throttler.try_acquire(&id()).await.unwrap();
    assert_eq!(again.dest(), "10.0.0.1:80");
}

#[tokio::test(start_paused = true)]
async fn capacity_shrink_while_requests_wait() {
    let (throttler, rt) = setup(1, Protocol::Http1);
    throttler
        .update_dests(&id(), &pods(&["p0:80", "p1:80", "p2:80"]))
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(throttler.try_acquire(&id()).await.unwrap());
    }
    let done = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (throttler, done) = (throttler.clone(), done.clone());
            tokio::spawn(async move {
                let lease = throttler.try_acquire(&id()).await.unwrap();
                done.fetch_add(1, SeqCst);
                lease
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(rt.waiting(), 2);
    // Shrink to one pod: nobody is evicted.
    throttler.update_dests(&id(), &pods(&["p0:80"])).unwrap();
    assert_eq!((rt.capacity(), rt.in_flight()), (1, 3));
    // Releasing the two removed pods' leases frees nothing usable (in flight 1 = capacity 1).
    let p0 = held.remove(0);
    assert_eq!(p0.dest(), "p0:80");
    held.clear();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!((done.load(SeqCst), rt.waiting(), rt.in_flight()), (0, 2, 1));
    // Releasing p0 lets exactly one waiter in.
    drop(p0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!((done.load(SeqCst), rt.waiting()), (1, 1));
    // Growing lets the other in.
    throttler
        .update_dests(&id(), &pods(&["p0:80", "p3:80"]))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(done.load(SeqCst), 2);
    let leases: Vec<Lease> = futures_util::future::join_all(waiters)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let dests: BTreeSet<&str> = leases.iter().map(Lease::dest).collect();
    assert_eq!(dests, BTreeSet::from(["p0:80", "p3:80"]));
}

#[tokio::test(start_paused = true)]
async fn configurable_queue_cap() {
    let throttler = Throttler::new();
    throttler.ensure_revision(
        &id(),
        RevisionSettings {
            container_concurrency: 1,
            protocol: Protocol::Http1,
            max_queued: Some(1),
        },
    );
    let first = throttler.try_acquire(&id());
    let mut first = std::pin::pin!(first);
    assert!(timeout(Duration::from_millis(1), first.as_mut())
        .await
        .is_err());
    let err = throttler.try_acquire(&id()).await.unwrap_err();
    assert_eq!(err, ThrottlerError::QueueFull);
    assert_eq!(err.to_string(), "pending request queue full");
    throttler
        .update_dests(&id(), &pods(&["10.0.0.1:80"]))
        .unwrap();
    assert_eq!(first.await.unwrap().dest(), "10.0.0.1:80");

    // cc = 0 honours the cap as well.
    let other = RevisionId::new(NS, "cc0");
    throttler.ensure_revision(
        &other,
        RevisionSettings {
            max_queued: Some(0),
            ..RevisionSettings::default()
        },
    );
    assert_eq!(
        throttler.try_acquire(&other).await.unwrap_err(),
        ThrottlerError::QueueFull
    );
}

#[tokio::test]
async fn registry_lookup_and_lifecycle() {
    let throttler = Throttler::new();
    let a = RevisionId::new("ns1", "a");
    let b = RevisionId::new("ns2", "b");
    let created = throttler.ensure_revision(
        &a,
        RevisionSettings {
            container_concurrency: 7,
            ..Default::default()
        },
    );
    // Settings never change afterwards.
    let again = throttler.ensure_revision(&a, RevisionSettings::default());
    assert!(Arc::ptr_eq(&created, &again));
    assert_eq!(again.container_concurrency(), 7);
    throttler.ensure_revision(&b, RevisionSettings::default());
    assert_eq!(throttler.len(), 2);
    assert!(throttler.get("ns1", "a").is_some());
    assert!(throttler.get("ns1", "b").is_none());
    let mut ids = throttler.revision_ids();
    ids.sort();
    assert_eq!(ids, vec![a.clone(), b.clone()]);
    assert_eq!(
        throttler
            .try_acquire_by("nope", "missing")
            .await
            .unwrap_err(),
        ThrottlerError::RevisionNotFound("missing".into())
    );
    // A lease outlives the revision's removal.
    throttler.update_dests(&a, &pods(&["10.0.0.1:80"])).unwrap();
    let lease = throttler.try_acquire(&a).await.unwrap();
    assert!(throttler.remove_revision(&a));
    assert_eq!(created.in_flight(), 1);
    drop(lease);
    assert_eq!(created.in_flight(), 0);
    assert_eq!(throttler.len(), 1);
}

/// The request path's cached lookup: it does not keep a revision from being evicted, never
/// gives one that was evicted or removed (even while a lease keeps it alive), finds a
/// re-created one, and keeps registries apart.
#[tokio::test]
async fn cached_lookup_follows_eviction_and_removal() {
    let throttler = Throttler::new();
    let a = RevisionId::new("ns1", "a");
    let settings = RevisionSettings::default();
    let first = throttler.ensure_revision(&a, settings);
    throttler.update_dests(&a, &pods(&["10.0.0.1:80"])).unwrap();
    drop(throttler.try_acquire(&a).await.unwrap()); // now this thread's last revision
    let cached = throttler.lookup("ns1", "a").unwrap();
    assert!(Arc::ptr_eq(&cached, &first));
    // A reference taken through the cache counts: no eviction while it is held.
    assert!(throttler.evict_if_unused(&a).is_none());
    drop((cached, first));
    // The cached `Weak` does not count.
    let evicted = throttler.evict_if_unused(&a).expect("evicted");
    assert!(throttler.lookup("ns1", "a").is_none());
    assert_eq!(
        throttler.try_acquire(&a).await.unwrap_err(),
        ThrottlerError::RevisionNotFound("a".into())
    );
    drop(evicted);

    // Re-created: the new one is found (and cached), not the old one.
    let second = throttler.ensure_revision(&a, settings);
    throttler.update_dests(&a, &pods(&["10.0.0.2:80"])).unwrap();
    let lease = throttler.try_acquire(&a).await.unwrap();
    assert_eq!(lease.dest(), "10.0.0.2:80");
    assert!(Arc::ptr_eq(&throttler.lookup("ns1", "a").unwrap(), &second));
    // Removed while a lease keeps it alive: no longer found.
    assert!(throttler.remove_revision(&a));
    assert!(throttler.lookup("ns1", "a").is_none());
    drop(lease);

    // Another registry with the same revision: its own throttler.
    let other = Throttler::new();
    let third = other.ensure_revision(&a, settings);
    throttler.ensure_revision(&a, settings);
    assert!(throttler.lookup("ns1", "a").is_some());
    assert!(Arc::ptr_eq(&other.lookup("ns1", "a").unwrap(), &third));
    assert!(!Arc::ptr_eq(&throttler.lookup("ns1", "a").unwrap(), &third));
}

/// Eviction racing with cached lookups on other threads: whenever a lookup returns a revision,
/// it is the one in the registry (no request ever holds an evicted throttler while the
/// registry has moved on). Runs until both sides have done their part many times (a fixed
/// number of eviction attempts could all meet a held reference on a loaded machine: one CI
/// run saw 0 evictions in 20,000 attempts), or fails after a generous deadline.
#[test]
fn cached_lookup_races_with_eviction() {
    use std::sync::atomic::AtomicU64;
    let throttler = Arc::new(Throttler::new());
    let a = RevisionId::new("ns1", "a");
    throttler.ensure_revision(&a, RevisionSettings::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let found = Arc::new(AtomicU64::new(0));
    let lookups: Vec<_> = (0..2)
        .map(|_| {
            let (throttler, stop, found) = (
                Arc::clone(&throttler),
                Arc::clone(&stop),
                Arc::clone(&found),
            );
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    if let Some(revision) = throttler.lookup("ns1", "a") {
                        found.fetch_add(1, SeqCst);
                        // Held: the registry still has this very throttler.
                        let current = throttler.get("ns1", "a").expect("evicted while held");
                        assert!(Arc::ptr_eq(&revision, &current));
                    }
                    // Gaps between lookups, so that eviction gets its chances.
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut evictions = 0u64;
    while evictions < 1_000 || found.load(SeqCst) < 1_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "{evictions} evictions, {} lookups",
            found.load(SeqCst)
        );
        if throttler.evict_if_unused(&a).is_some() {
            evictions += 1;
            throttler.ensure_revision(&a, RevisionSettings::default());
        }
    }
    stop.store(true, SeqCst);
    for lookup in lookups {
        lookup.join().expect("no lookup saw an evicted throttler");
    }
}

/// No pod ever exceeds its cc: 200 concurrent requests, 3 pods with cc 2, while the activator
/// set (hence the assignment and the revision capacity) keeps changing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_per_pod_in_flight_never_exceeds_cc() {
    let (throttler, rt) = setup(2, Protocol::Http1);
    let dests = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
    throttler.update_dests(&id(), &pods(&dests)).unwrap();
    let counters: Arc<HashMap<String, (AtomicUsize, AtomicUsize)>> = Arc::new(
        dests
            .iter()
            .map(|d| (d.to_string(), Default::default()))
            .collect(),
    );
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (throttler, counters) = (throttler.clone(), counters.clone());
            tokio::spawn(async move {
                let lease = timeout(Duration::from_secs(10), throttler.try_acquire(&id()))
                    .await
                    .expect("no deadlock")
                    .expect("acquired");
                let (now, max) = &counters[lease.dest()];
                let current = now.fetch_add(1, SeqCst) + 1;
                max.fetch_max(current, SeqCst);
                if i % 2 == 0 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                } else {
                    tokio::task::yield_now().await;
                }
                now.fetch_sub(1, SeqCst);
                drop(lease);
            })
        })
        .collect();
    let updater = {
        let throttler = throttler.clone();
        tokio::spawn(async move {
            for round in 0..20 {
                let set: &[&str] = if round % 2 == 0 {
                    &["130.0.0.1", "130.0.0.2"]
                } else {
                    &["130.0.0.2"]
                };
                throttler
                    .update_activators(&id(), set, "130.0.0.2")
                    .unwrap();
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            // End with all pods assigned so every waiter can finish.
            throttler
                .update_activators(&id(), &["130.0.0.2"], "130.0.0.2")
                .unwrap();
        })
    };
    for t in tasks {
        t.await.expect("task");
    }
    updater.await.unwrap();
    for (dest, (now, max)) in counters.iter() {
        assert!(max.load(SeqCst) <= 2, "{dest}: max {}", max.load(SeqCst));
        assert_eq!(now.load(SeqCst), 0);
    }
    assert_eq!((rt.in_flight(), rt.waiting()), (0, 0));
    for dest in dests {
        assert_eq!(rt.dest_in_flight(dest), Some(0));
    }
}

/// `ACTIVATOR_MAX_QUEUED_TOTAL`: waiting requests of all revisions share one cap; requests that
/// get a slot at once do not count; a dropped waiter frees its place.
#[tokio::test(start_paused = true)]
async fn total_queue_cap_across_revisions() {
    let throttler = Throttler::with_max_queued_total(Some(2));
    let (a, b, c) = (
        RevisionId::new(NS, "a"),
        RevisionId::new(NS, "b"),
        RevisionId::new(NS, "c"),
    );
    for (rev, cc) in [(&a, 1), (&b, 0), (&c, 1)] {
        throttler.ensure_revision(
            rev,
            RevisionSettings {
                container_concurrency: cc,
                ..RevisionSettings::default()
            },
        );
    }
    // `c` has a pod: its request is served at once and never counts as queued.
    throttler.update_dests(&c, &pods(&["10.0.0.3:80"])).unwrap();
    let lease = throttler.try_acquire(&c).await.unwrap();
    assert_eq!(throttler.queued(), 0);

    let wait_a = throttler.try_acquire(&a);
    let mut wait_a = std::pin::pin!(wait_a);
    assert!(timeout(Duration::from_millis(1), wait_a.as_mut())
        .await
        .is_err());
    let wait_b = tokio::spawn(throttler.try_acquire(&b));
    tokio::task::yield_now().await;
    assert_eq!(throttler.queued(), 2);
    assert_eq!(
        throttler.try_acquire(&c).await.unwrap_err(),
        ThrottlerError::QueueFull,
        "a third waiter, for a revision with a busy pod"
    );
    wait_b.abort();
    let _ = wait_b.await;
    assert_eq!(throttler.queued(), 1);
    drop(lease);
    assert!(throttler.try_acquire(&c).await.is_ok());
    throttler.update_dests(&a, &pods(&["10.0.0.1:80"])).unwrap();
    assert_eq!(wait_a.await.unwrap().dest(), "10.0.0.1:80");
    assert_eq!(throttler.queued(), 0);
}

/// Spawns `n` waiters for `id` and waits until they are all queued or answered.
async fn spawn_waiters(
    throttler: &Arc<Throttler>,
    id: &RevisionId,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<Lease, ThrottlerError>>> {
    let handles: Vec<_> = (0..n)
        .map(|_| tokio::spawn(throttler.try_acquire(id)))
        .collect();
    for _ in 0..n + 10 {
        tokio::task::yield_now().await;
    }
    handles
}

fn finished<T>(handles: &[tokio::task::JoinHandle<T>]) -> Vec<bool> {
    handles.iter().map(|h| h.is_finished()).collect()
}

/// `ACTIVATOR_MAX_QUEUED_TOTAL` is shared fairly (`fair.rs`): a revision that filled the cap
/// loses its newest waiting requests to another namespace's newcomers, and its share grows back
/// once the other tenant has drained.
#[tokio::test(start_paused = true)]
async fn fair_share_displaces_the_newest_and_grows_back() {
    let throttler = Arc::new(Throttler::with_max_queued_total(Some(10)));
    let (a, b) = (RevisionId::new("ns-a", "a"), RevisionId::new("ns-b", "b"));
    for rev in [&a, &b] {
        throttler.ensure_revision(rev, RevisionSettings::default());
    }
    let mut a_waiters = spawn_waiters(&throttler, &a, 10).await;
    assert_eq!(throttler.queued(), 10);
    let b_waiters = spawn_waiters(&throttler, &b, 5).await;
    assert_eq!(throttler.queued(), 10);
    assert_eq!(
        finished(&a_waiters),
        [[false; 5], [true; 5]].concat(),
        "the newest five of `a` gave their places to `b`"
    );
    for displaced in a_waiters.split_off(5) {
        assert_eq!(
            displaced.await.unwrap().unwrap_err(),
            ThrottlerError::QueueFull
        );
    }
    // At its share (5 of 10) `b` is refused; so is `a`.
    assert_eq!(
        throttler.try_acquire(&b).await.unwrap_err(),
        ThrottlerError::QueueFull
    );
    assert_eq!(
        throttler.try_acquire(&a).await.unwrap_err(),
        ThrottlerError::QueueFull
    );

    // `b` drains: its share returns to `a`.
    throttler.update_dests(&b, &pods(&["10.0.0.2:80"])).unwrap();
    for waiter in b_waiters {
        assert_eq!(waiter.await.unwrap().unwrap().dest(), "10.0.0.2:80");
    }
    assert_eq!(throttler.queued(), 5);
    let more = spawn_waiters(&throttler, &a, 5).await;
    assert_eq!(throttler.queued(), 10);
    assert!(finished(&more).iter().all(|f| !f));
    throttler.update_dests(&a, &pods(&["10.0.0.1:80"])).unwrap();
    for waiter in a_waiters.into_iter().chain(more) {
        assert_eq!(waiter.await.unwrap().unwrap().dest(), "10.0.0.1:80");
    }
    assert_eq!(throttler.queued(), 0);
}

/// A namespace with many revisions gets no more of the shared cap than a namespace with one.
#[tokio::test(start_paused = true)]
async fn fair_share_is_by_namespace_first() {
    let throttler = Arc::new(Throttler::with_max_queued_total(Some(12)));
    let big: Vec<RevisionId> = (0..6)
        .map(|i| RevisionId::new("big", format!("r{i}")))
        .collect();
    let small = RevisionId::new("small", "only");
    for rev in big.iter().chain([&small]) {
        throttler.ensure_revision(rev, RevisionSettings::default());
    }
    let mut big_waiters = Vec::new();
    for rev in &big {
        big_waiters.extend(spawn_waiters(&throttler, rev, 2).await);
    }
    assert_eq!(throttler.queued(), 12);
    let small_waiters = spawn_waiters(&throttler, &small, 8).await;
    assert_eq!(throttler.queued(), 12);
    let small_refused = finished(&small_waiters).iter().filter(|f| **f).count();
    let big_refused = finished(&big_waiters).iter().filter(|f| **f).count();
    assert_eq!((small_refused, big_refused), (2, 6), "6 places each");
    // Every revision of `big` keeps its oldest request: the largest revision gave up first.
    for pair in big_waiters.chunks(2) {
        assert!(!pair[0].is_finished());
    }
}

/// The waiting path's bookkeeping stays exact under cancellation: waiters of a cc > 0 revision
/// aborted while waiting, or after being granted the slot but before running, leave nothing
/// behind in the breaker or the shared cap (the granted one passes its slot on), and the cap
/// still displaces the newest waiters afterwards.
#[tokio::test(start_paused = true)]
async fn waiting_counts_stay_exact_under_cancellation() {
    let throttler = Arc::new(Throttler::with_max_queued_total(Some(4)));
    let (a, b) = (RevisionId::new("ns-a", "a"), RevisionId::new("ns-b", "b"));
    let settings = RevisionSettings {
        container_concurrency: 1,
        ..RevisionSettings::default()
    };
    let rt_a = throttler.ensure_revision(&a, settings);
    throttler.ensure_revision(&b, settings);
    throttler.update_dests(&a, &pods(&["10.0.0.1:80"])).unwrap();
    let held = throttler.try_acquire(&a).await.unwrap();
    for round in 0..3 {
        let waiters = spawn_waiters(&throttler, &a, 4).await;
        assert_eq!(
            (throttler.queued(), rt_a.waiting()),
            (4, 4),
            "round {round}"
        );
        // Cancel from the middle first, then the rest.
        for index in [2, 0, 3, 1] {
            waiters[index].abort();
        }
        for waiter in waiters {
            assert!(waiter.await.unwrap_err().is_cancelled());
        }
        assert_eq!(
            (throttler.queued(), rt_a.waiting()),
            (0, 0),
            "round {round}"
        );
        assert_eq!(rt_a.in_flight(), 1);
    }

    // The slot goes to the head waiter, which is aborted before it runs: the next one gets it.
    let waiters = spawn_waiters(&throttler, &a, 2).await;
    drop(held);
    waiters[0].abort();
    let mut waiters = waiters.into_iter();
    assert!(waiters.next().unwrap().await.unwrap_err().is_cancelled());
    let lease = waiters.next().unwrap().await.unwrap().unwrap();
    assert_eq!(lease.dest(), "10.0.0.1:80");
    assert_eq!(
        (throttler.queued(), rt_a.waiting(), rt_a.in_flight()),
        (0, 0, 1)
    );

    // The cap still displaces `a`'s newest waiters for `b`'s newcomers.
    let a_waiters = spawn_waiters(&throttler, &a, 4).await;
    let b_waiters = spawn_waiters(&throttler, &b, 2).await;
    assert_eq!(throttler.queued(), 4);
    assert_eq!(finished(&a_waiters), [false, false, true, true]);
    assert_eq!(finished(&b_waiters), [false, false]);
    for waiter in a_waiters.iter().chain(&b_waiters) {
        waiter.abort();
    }
    for waiter in a_waiters.into_iter().chain(b_waiters) {
        let _ = waiter.await;
    }
    assert_eq!((throttler.queued(), rt_a.waiting()), (0, 0));
    drop(lease);
    assert_eq!(rt_a.in_flight(), 0);
}

/// The lease taken without a future ([`RevisionThrottler::lease_now`]): only through an open
/// infinite breaker with a pod to pick; otherwise the throttler comes back with nothing held, and
/// `try_acquire` waits as before.
#[tokio::test(start_paused = true)]
async fn lease_now_only_through_an_open_gate_with_a_pod() {
    use futures_util::FutureExt;
    let (throttler, rt) = setup(0, Protocol::Http1);
    // Closed gate: nothing.
    let Err(rt) = Arc::clone(&rt).lease_now() else {
        panic!("a lease through a closed gate");
    };
    throttler
        .update_dests(&id(), &pods(&["10.0.0.1:8012"]))
        .unwrap();
    assert_eq!(rt.capacity(), 1);
    let Ok(lease) = Arc::clone(&rt).lease_now() else {
        panic!("no lease through an open gate with one pod");
    };
    assert_eq!(lease.dest(), "10.0.0.1:8012");
    assert_eq!(rt.dest_in_flight("10.0.0.1:8012"), Some(1));
    // `try_acquire` is ready at once.
    let second = throttler
        .try_acquire(&id())
        .now_or_never()
        .expect("ready at once")
        .unwrap();
    assert_eq!(rt.dest_in_flight("10.0.0.1:8012"), Some(2));
    drop((lease, second));
    assert_eq!(rt.dest_in_flight("10.0.0.1:8012"), Some(0));

    // cc > 0: left to the breaker's own acquire, which takes a free slot at its first poll.
    let (throttler, rt) = setup(1, Protocol::Http1);
    throttler
        .update_dests(&id(), &pods(&["10.0.0.1:8012"]))
        .unwrap();
    let Err(rt) = Arc::clone(&rt).lease_now() else {
        panic!("a lease without a future from a finite breaker");
    };
    assert_eq!(rt.in_flight(), 0);
    let lease = throttler
        .try_acquire(&id())
        .now_or_never()
        .expect("a free slot at once")
        .unwrap();
    assert_eq!(lease.dest(), "10.0.0.1:8012");
}
