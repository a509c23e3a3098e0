//! An in-test Kubernetes API server speaking the real list/watch protocol over plain HTTP/1.1
//! (hyper), enough for the activator's watches:
//!
//! - `GET /version`;
//! - lists: `GET /api/v1/{endpoints,services}`, `/api/v1/namespaces/<ns>/{configmaps,secrets}`,
//!   `/apis/serving.knative.dev/v1/revisions` with `labelSelector` (`key`, `key=value`,
//!   `key!=value`, `!key`), answering `{"kind":"…List","metadata":{"resourceVersion":…},"items":…}`
//!   with items as the API server returns them (no `kind`/`apiVersion`);
//! - watches (`watch=true` or `1`, `resourceVersion=N`, `allowWatchBookmarks`): a chunked stream of
//!   newline-delimited `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}` events,
//!   replaying the history after `N` first; objects entering or leaving a selector show up as
//!   ADDED / DELETED, as with the real watch cache.
//!
//! Test controls: [`FakeApi::put`] (create or update, bumping the resourceVersion),
//! [`FakeApi::delete`], [`FakeApi::expire_watches`] (`410 Gone` ERROR event to every watch and a
//! compacted history, forcing a relist), [`FakeApi::drop_watches`] (aborts every watch
//! connection), [`FakeApi::bookmark`], [`FakeApi::set_version`], and request counters.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The resources the fake serves, by plural.
const RESOURCES: &[(&str, &str, &str)] = &[
    // (plural, apiVersion, kind)
    ("revisions", "serving.knative.dev/v1", "Revision"),
    ("endpoints", "v1", "Endpoints"),
    ("services", "v1", "Service"),
    ("configmaps", "v1", "ConfigMap"),
    ("secrets", "v1", "Secret"),
];

fn resource_of(obj: &Value) -> &'static str {
    let kind = obj["kind"].as_str().unwrap_or_default();
    RESOURCES
        .iter()
        .find(|(_, _, k)| *k == kind)
        .map(|(plural, _, _)| *plural)
        .unwrap_or_else(|| panic!("fake API: unsupported kind {kind:?}"))
}

/// One change in the history.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: &'static str,
    old: Option<Value>,
    new: Option<Value>,
}

struct WatchConn {
    resource: &'static str,
    namespace: Option<String>,
    selector: Vec<Term>,
    tx: mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Versions at or below this one are gone from the history ("too old").
    compacted: u64,
    objects: BTreeMap<(&'static str, String, String), Value>,
    history: Vec<Change>,
    watches: Vec<WatchConn>,
    version: String,
    lists: HashMap<&'static str, usize>,
    watch_starts: HashMap<&'static str, usize>,
    /// Resources answered with `503 Service Unavailable`.
    unavailable: Vec<&'static str>,
    /// Every request received, in order.
    requests: Vec<ApiRequest>,
}

/// One request the fake API server received, as an RBAC check sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    /// HTTP method.
    pub method: String,
    /// The path (no query).
    pub path: String,
    /// Whether it was a watch (`?watch=true`).
    pub watch: bool,
}

/// The fake API server; stops when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
        self.state.lock().unwrap().watches.clear();
    }
}

impl FakeApi {
    /// Starts on a free loopback port, reporting `gitVersion` v1.34.1.
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            rv: 1000,
            compacted: 0,
            version: "v1.34.1".to_owned(),
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi { addr, state, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server (no TLS, no credentials) into `dir`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{}.yaml", self.addr.port()));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    \
             namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// The `gitVersion` `/version` reports.
    pub fn set_version(&self, version: &str) {
        self.state.lock().unwrap().version = version.to_owned();
    }

    /// Creates or replaces `obj` (by kind, namespace, name); emits ADDED or MODIFIED.
    pub fn put(&self, mut obj: Value) {
        let resource = resource_of(&obj);
        let mut state = self.state.lock().unwrap();
        state.rv += 1;
        let rv = state.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
        }
        let key = object_key(resource, &obj);
        let old = state.objects.insert(key, obj.clone());
        state.record(Change {
            rv,
            resource,
            old,
            new: Some(obj),
        });
    }

    /// Puts every object.
    pub fn put_all(&self, objs: impl IntoIterator<Item = Value>) {
        for obj in objs {
            self.put(obj);
        }
    }

    /// Deletes the object; emits DELETED. Returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let resource = resource_of(&json!({ "kind": kind }));
        let mut state = self.state.lock().unwrap();
        let key = (resource, namespace.to_owned(), name.to_owned());
        let Some(mut old) = state.objects.remove(&key) else {
            return false;
        };
        state.rv += 1;
        let rv = state.rv;
        let previous = old.clone();
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.record(Change {
            rv,
            resource,
            old: Some(previous),
            new: None,
        });
        // The DELETED event carries the last state with the deletion's version.
        if let Some(change) = state.history.last_mut() {
            change.old = Some(old);
        }
        true
    }

    /// Sends a `410 Gone` ERROR event to every open watch, ends them, and compacts the history so
    /// that resuming from any earlier version fails the same way: the watchers must relist.
    pub fn expire_watches(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted = state.rv;
        let compacted = state.compacted;
        for watch in state.watches.drain(..) {
            let status = json!({
                "type": "ERROR",
                "object": gone_status(compacted),
            });
            let _ = watch.tx.send(Ok(Frame::data(line(&status))));
        }
    }

    /// Aborts every open watch connection (the TCP connection is closed mid-stream).
    pub fn drop_watches(&self) {
        let mut state = self.state.lock().unwrap();
        for watch in state.watches.drain(..) {
            let _ = watch
                .tx
                .send(Err(std::io::Error::other("dropped by the test")));
        }
    }

    /// Sends a BOOKMARK with the current version to every open watch.
    pub fn bookmark(&self) {
        let state = self.state.lock().unwrap();
        for watch in &state.watches {
            let (_, api_version, kind) = RESOURCES
                .iter()
                .find(|(p, _, _)| *p == watch.resource)
                .unwrap();
            let event = json!({
                "type": "BOOKMARK",
                "object": {
                    "kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": state.rv.to_string()},
                },
            });
            let _ = watch.tx.send(Ok(Frame::data(line(&event))));
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Makes list and watch requests for `resource` (plural) fail with 503 (or succeed again).
    pub fn set_unavailable(&self, resource: &str, unavailable: bool) {
        let (plural, _, _) = RESOURCES
            .iter()
            .find(|(p, _, _)| *p == resource)
            .expect("known resource");
        let mut state = self.state.lock().unwrap();
        state.unavailable.retain(|r| r != plural);
        if unavailable {
            state.unavailable.push(plural);
        }
    }

    /// Lists served so far for `resource` (plural).
    pub fn lists(&self, resource: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .lists
            .iter()
            .filter(|(r, _)| **r == resource)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Watches started so far for `resource` (plural).
    pub fn watch_starts(&self, resource: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .watch_starts
            .iter()
            .filter(|(r, _)| **r == resource)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Open watch connections.
    pub fn open_watches(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        state.watches.retain(|w| !w.tx.is_closed());
        state.watches.len()
    }
}

impl State {
    fn record(&mut self, change: Change) {
        self.watches.retain(|watch| {
            if watch.resource != change.resource {
                return true;
            }
            match event_for(watch, &change) {
                Some(event) => watch.tx.send(Ok(Frame::data(line(&event)))).is_ok(),
                None => !watch.tx.is_closed(),
            }
        });
        self.history.push(change);
    }
}

fn gone_status(compacted: u64) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {compacted}"),
        "reason": "Expired", "code": 410,
    })
}

fn object_key(resource: &'static str, obj: &Value) -> (&'static str, String, String) {
    (
        resource,
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        obj["metadata"]["name"]
            .as_str()
            .expect("fake API: object without a name")
            .to_owned(),
    )
}

fn line(value: &Value) -> Bytes {
    let mut text = serde_json::to_vec(value).unwrap();
    text.push(b'\n');
    Bytes::from(text)
}

/// A label selector term.
#[derive(Clone, Debug)]
enum Term {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

fn parse_selector(text: &str) -> Vec<Term> {
    text.split(',')
        .filter(|t| !t.is_empty())
        .map(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                Term::NotEquals(k.to_owned(), v.to_owned())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Term::Equals(k.to_owned(), v.to_owned())
            } else if let Some(k) = term.strip_prefix('!') {
                Term::NotExists(k.to_owned())
            } else {
                Term::Exists(term.to_owned())
            }
        })
        .collect()
}

fn matches(obj: &Value, namespace: &Option<String>, selector: &[Term]) -> bool {
    if let Some(ns) = namespace {
        if obj["metadata"]["namespace"].as_str() != Some(ns.as_str()) {
            return false;
        }
    }
    let labels = &obj["metadata"]["labels"];
    selector.iter().all(|term| match term {
        Term::Exists(k) => labels.get(k).is_some(),
        Term::NotExists(k) => labels.get(k).is_none(),
        Term::Equals(k, v) => labels.get(k).and_then(Value::as_str) == Some(v.as_str()),
        Term::NotEquals(k, v) => labels.get(k).and_then(Value::as_str) != Some(v.as_str()),
    })
}

fn event_for(watch: &WatchConn, change: &Change) -> Option<Value> {
    let old = change
        .old
        .as_ref()
        .filter(|o| matches(o, &watch.namespace, &watch.selector));
    let new = change
        .new
        .as_ref()
        .filter(|o| matches(o, &watch.namespace, &watch.selector));
    let (kind, obj) = match (old, new, &change.new) {
        (None, Some(new), _) => ("ADDED", new.clone()),
        (Some(_), Some(new), _) => ("MODIFIED", new.clone()),
        // Left the selector (still exists) or was deleted.
        (Some(_), None, Some(now)) => {
            let mut gone = now.clone();
            gone["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            ("DELETED", gone)
        }
        (Some(old), None, None) => ("DELETED", old.clone()),
        (None, None, _) => return None,
    };
    Some(json!({"type": kind, "object": obj}))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `(resource, namespace)` of a collection path.
fn route(path: &str) -> Option<(&'static str, Option<String>)> {
    let rest = path
        .strip_prefix("/api/v1/")
        .or_else(|| path.strip_prefix("/apis/serving.knative.dev/v1/"))?;
    let (namespace, plural) = match rest.strip_prefix("namespaces/") {
        Some(tail) => {
            let (ns, plural) = tail.split_once('/')?;
            (Some(ns.to_owned()), plural)
        }
        None => (None, rest),
    };
    let (resource, _, _) = RESOURCES.iter().find(|(p, _, _)| *p == plural)?;
    Some((resource, namespace))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(Bytes::from(serde_json::to_vec(value).unwrap()))
                .map_err(|never: Infallible| match never {})
                .boxed(),
        )
        .unwrap()
}

fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<Body> {
    {
        let watch = matches!(
            query(&req).get("watch").map(String::as_str),
            Some("true" | "1")
        );
        state.lock().unwrap().requests.push(ApiRequest {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            watch,
        });
    }
    if req.uri().path() == "/version" {
        let version = state.lock().unwrap().version.clone();
        return json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "34", "gitVersion": version,
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2026-09-01T00:00:00Z",
                "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64",
            }),
        );
    }
    let Some((resource, namespace)) = route(req.uri().path()) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"}),
        );
    };
    let params = query(&req);
    let selector = parse_selector(params.get("labelSelector").map_or("", String::as_str));
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let mut state = state.lock().unwrap();
    if state.unavailable.contains(&resource) {
        *state.lists.entry(resource).or_default() += usize::from(!watch);
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "ServiceUnavailable", "code": 503, "message": "unavailable (test)"}),
        );
    }
    if !watch {
        *state.lists.entry(resource).or_default() += 1;
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((r, _, _), obj)| *r == resource && matches(obj, &namespace, &selector))
            .map(|(_, obj)| {
                let mut item = obj.clone();
                if let Some(map) = item.as_object_mut() {
                    map.remove("kind");
                    map.remove("apiVersion");
                }
                item
            })
            .collect();
        let (_, api_version, kind) = RESOURCES.iter().find(|(p, _, _)| *p == resource).unwrap();
        return json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{kind}List"), "apiVersion": api_version,
                "metadata": {"resourceVersion": state.rv.to_string()},
                "items": items,
            }),
        );
    }
    *state.watch_starts.entry(resource).or_default() += 1;
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(state.rv);
    let (tx, rx) = mpsc::unbounded_channel();
    let conn = WatchConn {
        resource,
        namespace,
        selector,
        tx,
    };
    if from < state.compacted {
        let event = json!({"type": "ERROR", "object": gone_status(state.compacted)});
        let _ = conn.tx.send(Ok(Frame::data(line(&event))));
        drop(conn);
    } else {
        for change in state
            .history
            .iter()
            .filter(|c| c.rv > from && c.resource == resource)
        {
            if let Some(event) = event_for(&conn, change) {
                let _ = conn.tx.send(Ok(Frame::data(line(&event))));
            }
        }
        state.watches.push(conn);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(WatchBody { rx }.boxed())
        .unwrap()
}

/// A streamed watch response.
struct WatchBody {
    rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, std::io::Error>>,
}

impl http_body::Body for WatchBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx)
    }
}

// ------------------------------------------------------------------------------------------------
// Objects as the API server returns them.

/// Label of the revision on Endpoints/Services.
const REV: &str = "serving.knative.dev/revision";
const TYPE: &str = "networking.internal.knative.dev/serviceType";

/// A Revision in [`super::NS`] with `containerConcurrency` `cc` (HTTP/1).
pub fn revision(name: &str, cc: u32) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {
            "name": name, "namespace": super::NS,
            "labels": {
                "serving.knative.dev/configuration": "cfg",
                "serving.knative.dev/service": "svc",
            },
            "creationTimestamp": "2026-11-20T09:14:03Z", "generation": 1,
        },
        "spec": {
            "containerConcurrency": cc,
            "containers": [{
                "image": "ghcr.io/knative/helloworld-go:latest", "name": "user-container",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "readinessProbe": {"successThreshold": 1, "tcpSocket": {"port": 0}},
                "resources": {},
            }],
            "enableServiceLinks": false,
            "timeoutSeconds": 300,
        },
    })
}

/// The private Endpoints of `revision`: one subset per pod (pods run on loopback with their own
/// ports), port name `http`.
pub fn private_endpoints(revision: &str, ready: &[SocketAddr], not_ready: &[SocketAddr]) -> Value {
    let mut subsets = Vec::new();
    for (addrs, field) in [(ready, "addresses"), (not_ready, "notReadyAddresses")] {
        for addr in addrs {
            subsets.push(json!({
                field: [{"ip": addr.ip().to_string(), "nodeName": "kind-worker"}],
                "ports": [
                    {"name": "http", "port": addr.port(), "protocol": "TCP"},
                    {"name": "http-queueadm", "port": 8022, "protocol": "TCP"},
                ],
            }));
        }
    }
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {
            "name": format!("{revision}-private"), "namespace": super::NS,
            "labels": {
                "app": revision, REV: revision, TYPE: "Private",
                "serving.knative.dev/revisionUID": "0b8e6c2d-3f5a-4a61-b0a4-8e2f9c7d1e01",
            },
        },
        "subsets": subsets,
    })
}

/// The public Endpoints of `revision`, listing `activator_ips` (ready) on port `http` 8012.
pub fn public_endpoints(revision: &str, activator_ips: &[&str]) -> Value {
    let addresses: Vec<Value> = activator_ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {
            "name": revision, "namespace": super::NS,
            "labels": {REV: revision, TYPE: "Public", "serving.knative.dev/revisionUID": "u"},
        },
        "subsets": [{
            "addresses": addresses,
            "ports": [
                {"name": "http", "port": 8012, "protocol": "TCP"},
                {"name": "https", "port": 8112, "protocol": "TCP"},
            ],
        }],
    })
}

/// A ConfigMap of the system namespace (`knative-serving`).
pub fn config_map(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "knative-serving", "labels": {"app.kubernetes.io/name": "knative-serving"}},
        "data": data,
    })
}

/// The three ConfigMaps the activator requires, with defaults.
pub fn required_config_maps() -> Vec<Value> {
    vec![
        config_map("config-network", &[]),
        config_map("config-logging", &[("loglevel.activator", "info")]),
        config_map("config-observability", &[]),
    ]
}
