//! Conversion and assembly tests on real API objects (`kubectl get -o json` lists in
//! `activator/tests/fixtures/kubernetes/`), and the throttler fed through Endpoints objects
//! (spec §3.3, §3.8, §3.9).

use std::sync::Arc;

use kube::api::DynamicObject;
use serde_json::{json, Value};

use super::convert::*;
use super::state::{Item, Stores, WatchKind};
use super::{missing_config_maps, KubeSettings};
use crate::discovery::{PrivateEndpoints, Snapshot};
use crate::network_config::CONFIG_NETWORK;
use crate::throttler::{Protocol, RevisionId, Throttler};

const REVISIONS: &str = include_str!("../../tests/fixtures/kubernetes/revisions.json");
const ENDPOINTS: &str = include_str!("../../tests/fixtures/kubernetes/endpoints.json");
const SERVICES: &str = include_str!("../../tests/fixtures/kubernetes/services.json");
const SYSTEM: &str = include_str!("../../tests/fixtures/kubernetes/system.json");
const MALFORMED: &str = include_str!("../../tests/fixtures/kubernetes/malformed.json");

const LONG: &str = "a-service-with-a-rather-long-name-for-testing-childname-00001";

fn items(list: &str) -> Vec<DynamicObject> {
    let value: Value = serde_json::from_str(list).unwrap();
    value["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| serde_json::from_value(item.clone()).unwrap())
        .collect()
}

fn named(list: &str, name: &str) -> DynamicObject {
    items(list)
        .into_iter()
        .find(|o| o.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("fixture {name}"))
}

fn id(ns: &str, name: &str) -> RevisionId {
    RevisionId::new(ns, name)
}

/// Stores filled (as synced lists) from the fixtures.
fn stores_from(lists: &[(WatchKind, &str)]) -> Stores {
    let mut stores = Stores::default();
    for kind in WatchKind::ALL {
        stores.relist_start(kind);
        for (k, list) in lists {
            if *k != kind {
                continue;
            }
            for obj in items(list) {
                let Ok(key) = object_key("x", &obj) else {
                    continue;
                };
                if let Ok(Some(item)) = kind.convert(&obj) {
                    stores.relist_apply(kind, key, item);
                }
            }
        }
        stores.relist_done(kind);
    }
    stores
}

fn fixture_snapshot() -> Snapshot {
    stores_from(&[
        (WatchKind::Revisions, REVISIONS),
        (WatchKind::PrivateEndpoints, ENDPOINTS),
        (WatchKind::PublicEndpoints, ENDPOINTS),
        (WatchKind::PrivateServices, SERVICES),
        (WatchKind::ConfigMaps, SYSTEM),
        (WatchKind::Secrets, SYSTEM),
    ])
    .snapshot()
}

#[test]
fn revision_with_container_concurrency_and_timeouts() {
    let spec = revision_from_object(&named(REVISIONS, "hello-00001")).unwrap();
    assert_eq!(spec.id, id("default", "hello-00001"));
    assert_eq!(spec.container_concurrency, 10);
    assert_eq!(spec.timeout_seconds, 120);
    assert_eq!(spec.response_start_timeout_seconds, Some(30));
    assert_eq!(spec.idle_timeout_seconds, None);
    assert_eq!(spec.protocol, Protocol::Http1);
    assert_eq!(
        (spec.service.as_str(), spec.configuration.as_str()),
        ("hello", "hello")
    );
    assert!(
        spec.probe_optimisation,
        "tcpSocket readiness keeps the optimisation"
    );
}

#[test]
fn revision_without_container_concurrency_h2c_and_exec_probe() {
    let spec = revision_from_object(&named(REVISIONS, "grpc-ping-00003")).unwrap();
    assert_eq!(
        spec.container_concurrency, 0,
        "absent containerConcurrency is 0"
    );
    assert_eq!(
        spec.protocol,
        Protocol::H2c,
        "ports[0].name h2c of the serving container"
    );
    assert_eq!(spec.timeout_seconds, 600);
    assert_eq!(spec.idle_timeout_seconds, Some(600));
    assert!(
        !spec.probe_optimisation,
        "exec readiness probe on the serving container disables the optimisation"
    );
}

#[test]
fn startup_probe_disables_probe_optimisation_and_http1_port_name_is_not_h2c() {
    let spec = revision_from_object(&named(REVISIONS, "startup-00001")).unwrap();
    assert_eq!(spec.container_concurrency, 1);
    assert_eq!(spec.protocol, Protocol::Http1);
    assert!(!spec.probe_optimisation);
}

#[test]
fn sidecar_rules_for_probe_optimisation() {
    let rev = |containers: Value| -> bool {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "metadata": {"name": "r", "namespace": "n"},
            "spec": {"containers": containers},
        }))
        .unwrap();
        revision_from_object(&obj).unwrap().probe_optimisation
    };
    let serving = json!({"name": "user", "ports": [{"containerPort": 8080}]});
    // A sidecar startup probe disables it.
    assert!(!rev(
        json!([serving, {"name": "side", "startupProbe": {"tcpSocket": {"port": 1}}}])
    ));
    // A sidecar exec readiness probe does not (upstream at the pinned commit).
    assert!(rev(
        json!([serving, {"name": "side", "readinessProbe": {"exec": {"command": ["true"]}}}])
    ));
    // The serving container is the first with ports, even if listed second.
    assert!(!rev(json!([
        {"name": "side"},
        {"name": "user", "ports": [{"containerPort": 8080}], "readinessProbe": {"exec": {"command": ["x"]}}},
    ])));
}

#[test]
fn revision_without_containers_gets_go_defaults() {
    // Go's GetContainer() falls back to an empty container: HTTP/1, optimisation on, cc 0,
    // and the activator's own 300 s default timeout.
    let spec = revision_from_object(&named(REVISIONS, "bare-00001")).unwrap();
    assert_eq!(spec.protocol, Protocol::Http1);
    assert!(spec.probe_optimisation);
    assert_eq!(spec.container_concurrency, 0);
    assert_eq!(spec.timeout_seconds, 300);
    assert_eq!(spec.service, "");
}

#[test]
fn malformed_objects_are_errors_naming_the_object_and_never_panic() {
    let bad = items(MALFORMED);
    let by_name = |name: &str| {
        bad.iter()
            .find(|o| o.metadata.name.as_deref() == Some(name))
            .unwrap()
    };
    for name in ["bad-cc-00001", "negative-00001", "bad-containers-00001"] {
        let error = WatchKind::Revisions.convert(by_name(name)).unwrap_err();
        assert_eq!(error.name, name);
        assert!(error.to_string().contains("Revision default/"), "{error}");
    }
    assert!(WatchKind::Revisions
        .convert(by_name("negative-00001"))
        .unwrap_err()
        .message
        .contains("negative"));
    let nameless = bad.iter().find(|o| o.metadata.name.is_none()).unwrap();
    assert!(object_key("Revision", nameless).is_err());
    assert!(WatchKind::PrivateEndpoints
        .convert(by_name("bad-subsets-private"))
        .is_err());
    assert!(WatchKind::PrivateServices
        .convert(by_name("bad-ports-private"))
        .is_err());
    assert!(WatchKind::Secrets.convert(by_name("bad-secret")).is_err());
    assert!(WatchKind::ConfigMaps
        .convert(by_name("bad-configmap"))
        .is_err());
    // Invalid entries are dropped one by one, the rest is kept.
    let Some(Item::Endpoints(endpoints)) = WatchKind::PrivateEndpoints
        .convert(by_name("bad-entries-private"))
        .unwrap()
    else {
        panic!("endpoints expected");
    };
    assert_eq!(
        endpoints.private_dests("http").ready,
        vec!["10.1.1.1:8012".to_owned()]
    );
    // Every object of every fixture converts or errors without panicking, whatever the watch.
    for list in [REVISIONS, ENDPOINTS, SERVICES, SYSTEM, MALFORMED] {
        for obj in items(list) {
            for kind in WatchKind::ALL {
                let _ = kind.convert(&obj);
            }
        }
    }
}

#[test]
fn endpoints_without_revision_label_are_ignored() {
    let orphan = named(ENDPOINTS, "orphan-private");
    assert_eq!(endpoints_from_object(&orphan).unwrap(), None);
    assert_eq!(WatchKind::PrivateEndpoints.convert(&orphan).unwrap(), None);
}

#[test]
fn private_dests_use_the_revision_port_name() {
    let hello = endpoints_from_object(&named(ENDPOINTS, "hello-00001-private"))
        .unwrap()
        .unwrap();
    assert_eq!(hello.revision, "hello-00001");
    let dests = hello.private_dests("http");
    // Sorted byte-wise; the https-only subset is ignored.
    assert_eq!(dests.ready, ["10.244.1.7:8012", "10.244.2.9:8012"]);
    assert_eq!(dests.not_ready, ["10.244.1.8:8012"]);
    assert_eq!(hello.private_dests("http2"), PrivateEndpoints::default());

    let grpc = endpoints_from_object(&named(ENDPOINTS, "grpc-ping-00003-private"))
        .unwrap()
        .unwrap();
    assert_eq!(grpc.private_dests("http2").ready, ["[fd00:10:244::5]:8013"]);
    assert!(grpc.private_dests("http").ready.is_empty());
}

#[test]
fn public_endpoints_give_ready_activator_ips_of_subsets_with_the_port() {
    let public = endpoints_from_object(&named(ENDPOINTS, "hello-00001"))
        .unwrap()
        .unwrap();
    assert_eq!(
        public.activator_ips("http").activator_ips,
        ["10.244.0.5", "10.244.0.6"]
    );
    assert_eq!(
        public.activator_ips("http2").activator_ips,
        ["10.244.0.5", "10.244.0.6"]
    );
    assert!(public.activator_ips("grpc").activator_ips.is_empty());
}

#[test]
fn service_cluster_ip_uses_the_service_port() {
    let hello = service_from_object(&named(SERVICES, "hello-00001-private")).unwrap();
    assert_eq!(
        hello.cluster_ip_dest("http").as_deref(),
        Some("10.96.12.34:80")
    );
    assert_eq!(hello.cluster_ip_dest("http2"), None);
    let grpc = service_from_object(&named(SERVICES, "grpc-ping-00003-private")).unwrap();
    assert_eq!(
        grpc.cluster_ip_dest("http2").as_deref(),
        Some("[fd00:10:96::a]:80")
    );
    let headless = service_from_object(&named(SERVICES, "bare-00001-private")).unwrap();
    assert_eq!(headless.cluster_ip, None);
}

#[test]
fn snapshot_joins_revisions_endpoints_services_and_system_objects() {
    let snapshot = fixture_snapshot();
    assert_eq!(
        snapshot.len(),
        5,
        "every valid revision, with or without endpoints"
    );

    let hello = snapshot.get(&id("default", "hello-00001")).unwrap();
    assert_eq!(hello.private.ready, ["10.244.1.7:8012", "10.244.2.9:8012"]);
    assert_eq!(hello.private.not_ready, ["10.244.1.8:8012"]);
    assert_eq!(hello.private.cluster_ip.as_deref(), Some("10.96.12.34:80"));
    assert_eq!(hello.public.activator_ips, ["10.244.0.5", "10.244.0.6"]);

    let grpc = snapshot.get(&id("apps", "grpc-ping-00003")).unwrap();
    assert_eq!(grpc.private.ready, ["[fd00:10:244::5]:8013"]);
    assert_eq!(
        grpc.private.cluster_ip.as_deref(),
        Some("[fd00:10:96::a]:80")
    );

    // Long names: the private Service is found under kmeta.ChildName's hashed name.
    let long = snapshot.get(&id("default", LONG)).unwrap();
    assert_eq!(long.private.ready, ["10.244.4.4:8012"]);
    assert_eq!(long.private.cluster_ip.as_deref(), Some("10.96.77.1:80"));
    assert_eq!(
        crate::backends::private_service_name(LONG),
        "a-service-with-a-rather69251823b3671447787aaa04ede41cd6-private"
    );

    // A wrongly named Service is not the private Service; a headless one gives no cluster IP.
    let startup = snapshot.get(&id("default", "startup-00001")).unwrap();
    assert_eq!(startup.private.cluster_ip, None);
    assert_eq!(
        snapshot
            .get(&id("default", "bare-00001"))
            .unwrap()
            .private
            .cluster_ip,
        None
    );

    let system = snapshot.system();
    assert_eq!(
        system.config_map("config-network").unwrap()["system-internal-tls"],
        "disabled"
    );
    assert!(system
        .config_map("config-observability")
        .unwrap()
        .is_empty());
    assert_eq!(
        system.trust_bundles().map(|(n, _)| n).collect::<Vec<_>>(),
        ["my-ca-bundle"]
    );
    let certs = system.secret("routing-serving-certs").unwrap();
    assert!(certs.data["tls.crt"].starts_with(b"-----BEGIN CERTIFICATE-----\nLEAF"));
    assert!(missing_config_maps(
        &snapshot,
        &[CONFIG_NETWORK, "config-logging", "config-observability"]
    )
    .is_empty());
    assert_eq!(
        missing_config_maps(&snapshot, &["config-network", "config-logging-custom"]),
        ["config-logging-custom"]
    );
}

#[test]
fn relist_replaces_and_updates_apply_and_delete() {
    let mut stores = stores_from(&[(WatchKind::Revisions, REVISIONS)]);
    assert!(stores.all_synced());
    assert_eq!(stores.snapshot().len(), 5);
    // A relist in progress does not change what is published.
    stores.relist_start(WatchKind::Revisions);
    let hello = named(REVISIONS, "hello-00001");
    let item = WatchKind::Revisions.convert(&hello).unwrap().unwrap();
    let key = object_key("x", &hello).unwrap();
    stores.relist_apply(WatchKind::Revisions, key.clone(), item.clone());
    assert_eq!(stores.snapshot().len(), 5);
    stores.relist_done(WatchKind::Revisions);
    assert_eq!(
        stores.snapshot().len(),
        1,
        "objects missing from the relist are gone"
    );
    stores.delete(WatchKind::Revisions, &key);
    assert!(stores.snapshot().is_empty());
    stores.apply(WatchKind::Revisions, key.clone(), Some(item));
    assert_eq!(stores.snapshot().len(), 1);
    stores.apply(WatchKind::Revisions, key, None);
    assert!(stores.snapshot().is_empty());
    let fresh = Stores::default();
    assert!(!fresh.all_synced());
    assert_eq!(fresh.pending().len(), 6);
}

#[test]
fn settings_defaults_and_validation() {
    use std::collections::HashMap;
    let env: HashMap<&str, &str> = HashMap::new();
    let s = KubeSettings::from_env(&env).unwrap();
    assert_eq!(s.min_version.to_string(), "v1.34.0");
    assert_eq!(s.version_wait, std::time::Duration::from_secs(60));
    assert_eq!(s.config_logging_name, "config-logging");
    assert_eq!(s.config_observability_name, "config-observability");
    assert!(!s.in_cluster && s.kubeconfig.is_none());
    let env: HashMap<&str, &str> = [
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBECONFIG", "/k"),
        ("CONFIG_LOGGING_NAME", "my-logging"),
        ("KUBE_API_QPS", "12.5"),
        ("KUBE_API_BURST", "30"),
        ("ACTIVATOR_KUBE_VERSION_WAIT_SECONDS", "2"),
    ]
    .into_iter()
    .collect();
    let s = KubeSettings::from_env(&env).unwrap();
    assert!(s.in_cluster);
    assert_eq!(s.kubeconfig.as_deref(), Some("/k"));
    assert_eq!(s.config_logging_name, "my-logging");
    assert_eq!((s.api_qps, s.api_burst), (Some(12.5), Some(30)));
    assert_eq!(s.version_wait, std::time::Duration::from_secs(2));
    for (name, value) in [
        ("KUBERNETES_MIN_VERSION", "1.34"),
        ("KUBE_API_QPS", "fast"),
        ("KUBE_API_BURST", "-1"),
        ("ACTIVATOR_KUBE_VERSION_WAIT_SECONDS", "soon"),
    ] {
        let env: HashMap<&str, &str> = [(name, value)].into_iter().collect();
        let e = KubeSettings::from_env(&env).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(value), "{e}");
    }
}

// ------------------------------------------------------------------------------------------------
// Throttler capacity and subsetting driven through Endpoints objects (spec §3.3, §3.8, §3.9).

fn revision_obj(name: &str, cc: u32) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
        "spec": {"containerConcurrency": cc, "containers": [{"image": "x", "ports": [{"containerPort": 8080}]}]},
    })
}

fn endpoints_obj(name: &str, revision: &str, public: bool, ips: &[String]) -> Value {
    let addresses: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {
            "name": name, "namespace": "default", "resourceVersion": "1",
            "labels": {
                "serving.knative.dev/revision": revision,
                "serving.knative.dev/revisionUID": "u",
                "networking.internal.knative.dev/serviceType": if public { "Public" } else { "Private" },
            },
        },
        "subsets": [{"addresses": addresses, "ports": [{"name": "http", "port": 8012}]}],
    })
}

/// Builds the snapshot of one revision with `pods` pod IPs and `activators` activator IPs.
fn scenario(cc: u32, pods: usize, activators: usize) -> Snapshot {
    let mut stores = Stores::default();
    let put = |stores: &mut Stores, kind: WatchKind, value: Value| {
        let obj: DynamicObject = serde_json::from_value(value).unwrap();
        let key = object_key("x", &obj).unwrap();
        stores.apply(kind, key, kind.convert(&obj).unwrap());
    };
    put(&mut stores, WatchKind::Revisions, revision_obj("rev", cc));
    let pod_ips: Vec<String> = (0..pods).map(|i| format!("10.1.0.{}", i + 1)).collect();
    put(
        &mut stores,
        WatchKind::PrivateEndpoints,
        endpoints_obj("rev-private", "rev", false, &pod_ips),
    );
    let act_ips: Vec<String> = (0..activators)
        .map(|i| format!("10.0.0.{}", i + 1))
        .collect();
    put(
        &mut stores,
        WatchKind::PublicEndpoints,
        endpoints_obj("rev", "rev", true, &act_ips),
    );
    stores.snapshot()
}

/// Applies the snapshot to a throttler as the backends manager does (all pods healthy) and
/// returns (capacity, assigned dests) for the activator at `index`.
fn apply(snapshot: &Snapshot, index: usize) -> (u64, Vec<String>) {
    let entry = snapshot.get(&id("default", "rev")).unwrap();
    let throttler = Throttler::new();
    let rev_id = entry.spec.id.clone();
    throttler.ensure_revision(&rev_id, entry.spec.throttler_settings(None));
    let self_ip = format!("10.0.0.{}", index + 1);
    throttler
        .update_activators(&rev_id, &entry.public.activator_ips, &self_ip)
        .unwrap();
    let dests: std::collections::BTreeSet<String> = entry.private.ready.iter().cloned().collect();
    throttler
        .update_dests(
            &rev_id,
            &crate::throttler::DestsUpdate {
                cluster_ip_dest: None,
                dests,
            },
        )
        .unwrap();
    let state = throttler.get("default", "rev").unwrap();
    (state.capacity(), state.assigned_dests())
}

fn pods(indices: &[usize]) -> Vec<String> {
    indices
        .iter()
        .map(|i| format!("10.1.0.{}:8012", i + 1))
        .collect()
}

#[test]
fn subsetting_examples_through_endpoints() {
    // (pods, activators, index) → assigned pod indices, spec §3.9 (pods sort as 10.1.0.1..).
    let cases: &[(usize, usize, usize, &[usize])] = &[
        (3, 2, 0, &[0, 2]),
        (3, 2, 1, &[1]),
        (5, 2, 0, &[0, 1, 4]),
        (5, 2, 1, &[2, 3]),
        (6, 4, 0, &[0, 4]),
        (6, 4, 1, &[1, 5]),
        (6, 4, 2, &[2]),
        (6, 4, 3, &[3]),
        (2, 3, 1, &[1]),
        (2, 3, 2, &[0]),
        (4, 1, 0, &[0, 1, 2, 3]),
    ];
    for (n_pods, n_act, index, expected) in cases {
        let snapshot = scenario(42, *n_pods, *n_act);
        let (capacity, assigned) = apply(&snapshot, *index);
        assert_eq!(
            assigned,
            pods(expected),
            "{n_pods} pods, {n_act} activators, index {index}"
        );
        assert_eq!(capacity, 42 * expected.len() as u64);
    }
    // 10 pods / 3 activators: sorted byte-wise, 10.1.0.10 sorts second.
    let snapshot = scenario(1, 10, 3);
    let mut sorted = pods(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    sorted.sort();
    let (_, idx0) = apply(&snapshot, 0);
    assert_eq!(
        idx0,
        [&sorted[0..3], &sorted[9..10]].concat(),
        "idx0 gets [0,3) plus the leftover"
    );
    assert_eq!(apply(&snapshot, 1).1, sorted[3..6].to_vec());
    assert_eq!(apply(&snapshot, 2).1, sorted[6..9].to_vec());
}

#[test]
fn capacity_examples_through_endpoints() {
    // Spec §11 item 31 with trackers: (cc, pods, activators, index) → capacity.
    for (cc, n_pods, n_act, index, capacity) in [
        (10, 1, 1, 0, 10),
        (10, 2, 1, 0, 20),
        (10, 2, 2, 0, 10),
        (10, 3, 2, 0, 20),
        (10, 3, 2, 1, 10),
        (1, 5, 2, 0, 3),
        (1, 5, 2, 1, 2),
        (42, 6, 4, 0, 84),
    ] {
        let (got, _) = apply(&scenario(cc, n_pods, n_act), index);
        assert_eq!(
            got, capacity,
            "cc {cc}, {n_pods} pods, {n_act} act, idx {index}"
        );
    }
    // cc 0: no subsetting, all trackers assigned, infinite breaker open (capacity 1).
    let (capacity, assigned) = apply(&scenario(0, 3, 2), 1);
    assert_eq!((capacity, assigned.len()), (1, 3));
    // Scaled to zero: nothing assigned, capacity 0.
    assert_eq!(apply(&scenario(42, 0, 4), 0), (0, Vec::new()));
}

#[test]
fn public_endpoints_without_this_activator_keep_the_defaults() {
    // POD_IP absent from the public Endpoints (serve mode lists pods there): index stays −1, so
    // this activator takes every pod.
    let snapshot = scenario(10, 3, 2);
    let (capacity, assigned) = apply(&snapshot, 7);
    assert_eq!((capacity, assigned.len()), (30, 3));
    let _ = Arc::new(snapshot);
}

/// Revision `rev` routed through its private Service's cluster IP: `backends` ready endpoints and
/// `activators` activator IPs (this one is the first); returns the revision breaker's capacity.
fn cluster_ip_capacity(cc: u32, backends: usize, activators: usize) -> u64 {
    let ip = |prefix: u8, i: usize| format!("10.{prefix}.{}.{}", i / 250, i % 250 + 1);
    let mut stores = Stores::default();
    let put = |stores: &mut Stores, kind: WatchKind, value: Value| {
        let obj: DynamicObject = serde_json::from_value(value).unwrap();
        let key = object_key("x", &obj).unwrap();
        stores.apply(kind, key, kind.convert(&obj).unwrap());
    };
    put(&mut stores, WatchKind::Revisions, revision_obj("rev", cc));
    let pods: Vec<String> = (0..backends).map(|i| ip(1, i)).collect();
    put(
        &mut stores,
        WatchKind::PrivateEndpoints,
        endpoints_obj("rev-private", "rev", false, &pods),
    );
    let acts: Vec<String> = (0..activators).map(|i| ip(0, i)).collect();
    put(
        &mut stores,
        WatchKind::PublicEndpoints,
        endpoints_obj("rev", "rev", true, &acts),
    );
    put(
        &mut stores,
        WatchKind::PrivateServices,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "rev-private", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8012}]},
        }),
    );
    let snapshot = stores.snapshot();
    let entry = snapshot.get(&id("default", "rev")).unwrap();
    assert_eq!(entry.private.cluster_ip.as_deref(), Some("10.96.0.10:80"));
    let throttler = Throttler::new();
    let rev_id = entry.spec.id.clone();
    throttler.ensure_revision(&rev_id, entry.spec.throttler_settings(None));
    throttler
        .update_activators(&rev_id, &entry.public.activator_ips, &ip(0, 0))
        .unwrap();
    // Cluster-IP mode (spec §5.10): the dests are the K8s-ready endpoints, counted.
    throttler
        .update_dests(
            &rev_id,
            &crate::throttler::DestsUpdate {
                cluster_ip_dest: entry.private.cluster_ip.clone(),
                dests: entry.private.ready.iter().cloned().collect(),
            },
        )
        .unwrap();
    throttler.get("default", "rev").unwrap().capacity()
}

#[test]
fn cluster_ip_capacity_examples_through_endpoints() {
    // Spec §11 items 29 and 30: (cc, backends, activators) → capacity.
    for (cc, backends, activators, capacity) in [
        (10, 1, 1, 10),
        (10, 10, 1, 100),
        (10, 100, 1, 1000),
        (10, 10, 5, 20),
        (10, 10, 200, 1),
        (10, 0, 200, 0),
        (0, 0, 1, 0),
        (0, 1, 1, 1),
        (0, 10, 1, 1),
        (0, 0, 200, 0),
        (0, 1, 200, 1),
    ] {
        assert_eq!(
            cluster_ip_capacity(cc, backends, activators),
            capacity,
            "cc {cc}, {backends} backends, {activators} activators"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Publishing: nothing before every watch listed; bursts coalesced.

#[tokio::test(start_paused = true)]
async fn publishes_once_synced_and_coalesces_bursts() {
    use kube::runtime::watcher::Event;

    use super::reflect::{run_publisher, Shared, DEBOUNCE};

    let shared = Arc::new(Shared::new());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn(run_publisher(shared.clone(), stop_rx));
    let rev = |i: usize, cc: u32| -> DynamicObject {
        serde_json::from_value(revision_obj(&format!("rev-{i}"), cc)).unwrap()
    };

    // A relist of 1000 revisions while the other watches have not listed yet: nothing published.
    shared.on_event(WatchKind::Revisions, Event::Init);
    for i in 0..1000 {
        shared.on_event(WatchKind::Revisions, Event::InitApply(rev(i, 1)));
    }
    shared.on_event(WatchKind::Revisions, Event::InitDone);
    for kind in &WatchKind::ALL[1..5] {
        shared.on_event(*kind, Event::Init);
        shared.on_event(*kind, Event::InitDone);
    }
    tokio::time::sleep(DEBOUNCE * 5).await;
    assert!(!shared.cell.synced(), "secrets have not listed yet");
    assert_eq!(shared.publications(), 0);

    shared.on_event(WatchKind::Secrets, Event::Init);
    shared.on_event(WatchKind::Secrets, Event::InitDone);
    tokio::time::sleep(DEBOUNCE * 5).await;
    assert!(shared.cell.synced());
    assert_eq!(shared.publications(), 1);
    assert_eq!(shared.cell.current().len(), 1000);

    // A burst of 1000 updates and 500 deletions: one more snapshot.
    for i in 0..1000 {
        shared.on_event(WatchKind::Revisions, Event::Apply(rev(i, 2)));
    }
    for i in 0..500 {
        shared.on_event(WatchKind::Revisions, Event::Delete(rev(i, 2)));
    }
    tokio::time::sleep(DEBOUNCE * 5).await;
    assert_eq!(shared.publications(), 2);
    let current = shared.cell.current();
    assert_eq!(current.len(), 500);
    assert_eq!(
        current
            .revision("default", "rev-999")
            .unwrap()
            .container_concurrency,
        2
    );

    // A malformed update keeps the previous version.
    let mut bad = revision_obj("rev-999", 3);
    bad["spec"]["containerConcurrency"] = json!("three");
    shared.on_event(
        WatchKind::Revisions,
        Event::Apply(serde_json::from_value(bad).unwrap()),
    );
    tokio::time::sleep(DEBOUNCE * 5).await;
    assert_eq!(shared.publications(), 2);
    assert_eq!(
        shared
            .cell
            .revision("default", "rev-999")
            .unwrap()
            .container_concurrency,
        2
    );

    stop.send_replace(true);
    publisher.await.unwrap();
}

fn service_obj(name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80, "targetPort": 8012}]},
    })
}

/// Incremental snapshots (`Stores::take_update`): over a long pseudo-random run of Revision,
/// Endpoints (including objects that change their revision label, and several objects naming
/// one revision) and Service events, the incrementally derived snapshot always equals the one
/// computed whole, and the changes name exactly the revisions whose entries differ.
#[test]
fn incremental_snapshots_match_full_recomputation() {
    let mut stores = Stores::default();
    for kind in WatchKind::ALL {
        stores.relist_start(kind);
        stores.relist_done(kind);
    }
    let (mut previous, changes) = stores.take_update();
    assert_eq!(changes, crate::discovery::Changes::All);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..400 {
        for _ in 0..=next(4) {
            let rev = format!("rev-{}", next(6));
            let ips: Vec<String> = (0..next(3))
                .map(|i| format!("10.1.{}.{i}", next(4)))
                .collect();
            let (kind, value) = match next(7) {
                0 => (
                    WatchKind::Revisions,
                    Some(revision_obj(&rev, next(3) as u32)),
                ),
                1 => (WatchKind::Revisions, None),
                2 => (
                    WatchKind::PrivateEndpoints,
                    Some(endpoints_obj(&format!("{rev}-private"), &rev, false, &ips)),
                ),
                // An extra object that may name another revision than before.
                3 => (
                    WatchKind::PrivateEndpoints,
                    Some(endpoints_obj(
                        &format!("extra-{}", next(2)),
                        &rev,
                        false,
                        &ips,
                    )),
                ),
                4 => (
                    WatchKind::PublicEndpoints,
                    Some(endpoints_obj(&rev, &rev, true, &ips)),
                ),
                5 => (
                    WatchKind::PrivateServices,
                    Some(service_obj(
                        &format!("{rev}-private"),
                        &format!("10.96.0.{}", next(3)),
                    )),
                ),
                _ => (WatchKind::PrivateServices, None),
            };
            match value {
                Some(value) => {
                    let obj: DynamicObject = serde_json::from_value(value).unwrap();
                    let key = object_key("x", &obj).unwrap();
                    stores.apply(kind, key, kind.convert(&obj).unwrap());
                }
                None => {
                    let name = match kind {
                        WatchKind::Revisions => rev.clone(),
                        _ => format!("{rev}-private"),
                    };
                    stores.delete(kind, &("default".to_owned(), name));
                }
            }
        }
        let (snapshot, changes) = stores.take_update();
        let full = stores.snapshot();
        assert_eq!(snapshot, full, "round {round}");
        let crate::discovery::Changes::Revisions(changed) = changes else {
            panic!("round {round}: a relist-free round names revisions");
        };
        let expected = previous.changed_revisions(&snapshot);
        assert_eq!(changed, expected, "round {round}");
        previous = snapshot;
    }
    assert!(!previous.is_empty());
}
