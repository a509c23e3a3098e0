//! Tests of the document format and the file source: initial load, changes picked up, invalid
//! changes and disappearing files keeping the previous state (and logging why), bad fields named.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::throttler::{Protocol, RevisionId};

const POLL: Duration = Duration::from_millis(20);

fn parse(text: &str) -> Result<Snapshot, DocumentError> {
    parse_document(text.as_bytes())
}

fn parse_err(text: &str) -> String {
    match parse(text) {
        Ok(snapshot) => panic!("accepted {text}: {snapshot:?}"),
        Err(error) => error.to_string(),
    }
}

fn doc(revision: &str) -> String {
    format!(r#"{{"revisions":[{revision}]}}"#)
}

fn rev(extra: &str) -> String {
    doc(&format!(
        r#"{{"namespace":"default","name":"hello-00001"{}{extra}}}"#,
        if extra.is_empty() { "" } else { "," }
    ))
}

const FULL: &str = r#"{"revisions":[
  {"namespace":"default","name":"hello-00001","containerConcurrency":2,"timeoutSeconds":120,
   "responseStartTimeoutSeconds":10,"idleTimeoutSeconds":null,"protocol":"h2c",
   "service":"hello","configuration":"hello-cfg","probeOptimisation":false,
   "pods":{"ready":["127.0.0.1:8012","[::1]:8012"],"notReady":["[0:0::2]:8013"]},
   "clusterIP":"10.96.0.10:80","activators":["10.0.0.2","10.0.0.1"]},
  {"namespace":"other","name":"world-00002"}
]}"#;

#[test]
fn full_document() {
    let snapshot = parse(FULL).unwrap();
    assert_eq!(snapshot.len(), 2);
    let id = RevisionId::new("default", "hello-00001");
    let entry = snapshot.get(&id).unwrap();
    let spec = &entry.spec;
    assert_eq!(spec.id, id);
    assert_eq!(spec.container_concurrency, 2);
    assert_eq!(spec.timeout_seconds, 120);
    assert_eq!(spec.response_start_timeout_seconds, Some(10));
    assert_eq!(spec.idle_timeout_seconds, None);
    assert_eq!(spec.protocol, Protocol::H2c);
    assert_eq!(spec.service, "hello");
    assert_eq!(spec.configuration, "hello-cfg");
    assert!(!spec.probe_optimisation);
    assert_eq!(entry.private.ready, ["127.0.0.1:8012", "[::1]:8012"]);
    // Canonical form.
    assert_eq!(entry.private.not_ready, ["[::2]:8013"]);
    assert_eq!(entry.private.cluster_ip.as_deref(), Some("10.96.0.10:80"));
    assert_eq!(entry.public.activator_ips, ["10.0.0.2", "10.0.0.1"]);

    let other = snapshot.revision("other", "world-00002").unwrap();
    assert_eq!(
        *other,
        RevisionSpec::new(RevisionId::new("other", "world-00002"))
    );
    assert_eq!(other.timeout_seconds, DEFAULT_TIMEOUT_SECONDS);
    assert_eq!(other.protocol, Protocol::Http1);
    assert!(other.probe_optimisation);
    let other_entry = snapshot.get(&other.id).unwrap();
    assert!(other_entry.private.is_empty());
    assert_eq!(other_entry.private.cluster_ip, None);
    assert!(other_entry.public.activator_ips.is_empty());
    // Borrowed lookups.
    assert!(snapshot.revision("default", "hello-00001").is_some());
    assert!(snapshot.revision("default", "world-00002").is_none());
    assert!(snapshot.revision("nope", "hello-00001").is_none());
}

#[test]
fn the_brief_example_parses() {
    let text = r#"{"revisions":[{"namespace":"default","name":"hello-00001","containerConcurrency":2,"timeoutSeconds":300,"protocol":"http1","pods":{"ready":["127.0.0.1:8012"],"notReady":[]},"clusterIP":null,"activators":["127.0.0.1"]}]}"#;
    let snapshot = parse(text).unwrap();
    let spec = snapshot.revision("default", "hello-00001").unwrap();
    assert_eq!(spec.container_concurrency, 2);
    assert_eq!(
        spec.throttler_settings(Some(7)),
        crate::throttler::RevisionSettings {
            container_concurrency: 2,
            protocol: Protocol::Http1,
            max_queued: Some(7),
        }
    );
    assert_eq!(parse(r#"{"revisions":[]}"#).unwrap().len(), 0);
}

#[test]
fn bad_fields_are_named_with_their_revision() {
    let cases: &[(String, &[&str])] = &[
        (
            rev(r#""protocol":"http2""#),
            &["default/hello-00001", "field protocol", "\"http2\""],
        ),
        (
            rev(r#""pods":{"ready":["127.0.0.1:8012","nonsense"]}"#),
            &["default/hello-00001", "field pods.ready[1]", "\"nonsense\""],
        ),
        (
            rev(r#""pods":{"notReady":["localhost:8012"]}"#),
            &["field pods.notReady[0]", "ip:port"],
        ),
        (
            rev(r#""pods":{"ready":["127.0.0.1:0"]}"#),
            &["field pods.ready[0]", "port 0"],
        ),
        (
            rev(r#""pods":{"ready":["::1:8012"]}"#),
            &["field pods.ready[0]"],
        ),
        (
            rev(r#""pods":{"ready":["127.0.0.1:1"],"notReady":["127.0.0.1:1"]}"#),
            &["field pods.notReady[0]", "listed twice"],
        ),
        (
            rev(r#""pods":{"ready":[], "pending":[]}"#),
            &["field pods.pending", "unknown field"],
        ),
        (
            rev(r#""pods":["127.0.0.1:1"]"#),
            &["field pods", "expected an object"],
        ),
        (
            rev(r#""containerConcurrency":5000"#),
            &[
                "default/hello-00001",
                "field containerConcurrency",
                "5000",
                "0..=1000",
            ],
        ),
        (
            rev(r#""containerConcurrency":-1"#),
            &["field containerConcurrency", "non-negative integer"],
        ),
        (
            rev(r#""containerConcurrency":"2""#),
            &["field containerConcurrency", "\"2\""],
        ),
        (
            rev(r#""containerConcurrency":1.5"#),
            &["field containerConcurrency"],
        ),
        (
            rev(r#""timeoutSeconds":0"#),
            &["field timeoutSeconds", "at least 1"],
        ),
        (
            rev(r#""idleTimeoutSeconds":true"#),
            &["field idleTimeoutSeconds"],
        ),
        (
            rev(r#""clusterIP":"10.0.0.1""#),
            &["field clusterIP", "ip:port"],
        ),
        (
            rev(r#""activators":["10.0.0.1:80"]"#),
            &["field activators[0]", "not an IP address"],
        ),
        (
            rev(r#""activators":["10.0.0.1","10.0.0.1"]"#),
            &["field activators[1]", "twice"],
        ),
        (
            rev(r#""activators":"10.0.0.1""#),
            &["field activators", "array"],
        ),
        (
            rev(r#""activators":[1]"#),
            &["field activators[0]", "expected a string"],
        ),
        (
            rev(r#""probeOptimisation":"yes""#),
            &["field probeOptimisation"],
        ),
        (
            rev(r#""containercurrency":1"#),
            &[
                "default/hello-00001",
                "field containercurrency",
                "unknown field",
            ],
        ),
        (
            doc(r#"{"namespace":"default"}"#),
            &["revisions[0]", "field name", "required"],
        ),
        (
            doc(r#"{"namespace":"Default","name":"x"}"#),
            &["revisions[0]", "field namespace", "DNS-1123"],
        ),
        (
            doc(r#"{"namespace":"default","name":"-x"}"#),
            &["field name", "DNS-1123"],
        ),
        (
            doc(&format!(
                r#"{{"namespace":"default","name":"{}"}}"#,
                "a".repeat(64)
            )),
            &["field name"],
        ),
        (
            doc(r#"{"namespace":"default","name":7}"#),
            &["field name", "expected a string"],
        ),
        (doc("[]"), &["revisions[0]", "expected an object"]),
        (
            doc(
                r#"{"namespace":"default","name":"a"},{"namespace":"default","name":"b"},{"namespace":"default","name":"a"}"#,
            ),
            &[
                "revision default/a (revisions[2])",
                "duplicate revision",
                "revisions[0]",
            ],
        ),
        (
            r#"{"revisions":{}}"#.to_owned(),
            &["field revisions", "expected an array"],
        ),
        (
            r#"{"revision":[]}"#.to_owned(),
            &["field revision", "unknown field"],
        ),
        ("{}".to_owned(), &["missing field \"revisions\""]),
        ("[]".to_owned(), &["expected an object"]),
        (
            r#"{"revisions":[{"namespace":"#.to_owned(),
            &["not valid JSON", "line 1"],
        ),
        (String::new(), &["not valid JSON"]),
    ];
    for (text, wanted) in cases {
        let message = parse_err(text);
        for fragment in *wanted {
            assert!(
                message.contains(fragment),
                "{text}\n  error {message:?}\n  lacks {fragment:?}"
            );
        }
    }
}

#[test]
fn long_values_are_shortened_in_messages() {
    let message = parse_err(&rev(&format!(r#""protocol":"{}""#, "x".repeat(500))));
    assert!(message.len() < 300, "{message}");
    assert!(message.contains('…'));
}

#[test]
fn snapshot_cell_publishes_only_changes() {
    let cell = SnapshotCell::new();
    assert!(!cell.synced());
    let mut rx = cell.subscribe();
    assert!(rx.borrow_and_update().is_empty());
    assert!(cell.publish(parse(FULL).unwrap()));
    assert!(cell.synced());
    assert!(rx.has_changed().unwrap());
    rx.borrow_and_update();
    // Same content: no wake-up.
    assert!(!cell.publish(parse(FULL).unwrap()));
    assert!(!rx.has_changed().unwrap());
    assert_eq!(cell.current().len(), 2);
    assert_eq!(
        cell.revision("default", "hello-00001")
            .unwrap()
            .container_concurrency,
        2
    );
}

/// The request path's per-thread cache of the last revision never gives a revision of another
/// cell, nor one a later publication changed or removed.
#[test]
fn revision_lookups_follow_publications_and_cells() {
    let snapshot = |entries: Vec<RevisionEntry>| {
        let mut snapshot = Snapshot::default();
        for entry in entries {
            snapshot.set(entry);
        }
        snapshot
    };
    let cc = |cell: &SnapshotCell, name: &str| {
        cell.revision("default", name)
            .map(|spec| spec.container_concurrency)
    };
    let a = SnapshotCell::new();
    let b = SnapshotCell::new();
    a.publish(snapshot(vec![spec_entry("one", 1), spec_entry("two", 2)]));
    b.publish(snapshot(vec![spec_entry("one", 10)]));
    for _ in 0..2 {
        assert_eq!(cc(&a, "one"), Some(1));
        assert_eq!(cc(&a, "one"), Some(1));
        assert_eq!(cc(&b, "one"), Some(10));
        assert_eq!(cc(&a, "two"), Some(2));
        assert_eq!(cc(&b, "two"), None);
        assert_eq!(a.revision("other", "one").map(|s| s.id.clone()), None);
    }
    assert_eq!(cc(&a, "one"), Some(1));
    a.publish(snapshot(vec![spec_entry("one", 3)]));
    assert_eq!(cc(&a, "one"), Some(3));
    assert_eq!(cc(&a, "two"), None);
    a.publish_changes(snapshot(vec![]), ids(&["one"]));
    assert_eq!(cc(&a, "one"), None);
    assert_eq!(cc(&b, "one"), Some(10));
    // A cell made after another was dropped (possibly at its address) starts afresh.
    drop(b);
    let c = SnapshotCell::new();
    assert_eq!(cc(&c, "one"), None);
    c.publish(snapshot(vec![spec_entry("one", 4)]));
    assert_eq!(cc(&c, "one"), Some(4));
}

// ---------------------------------------------------------------------------------------------
// File source.

struct TempFile {
    dir: PathBuf,
    path: PathBuf,
}

impl TempFile {
    fn new(content: &str) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "activator-discovery-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = TempFile {
            path: dir.join("revisions.json"),
            dir,
        };
        file.write(content);
        file
    }

    /// Atomic replace (write + rename), as a ConfigMap volume or a careful editor does.
    fn write(&self, content: &str) {
        let tmp = self.dir.join("revisions.json.tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    fn remove(&self) {
        std::fs::remove_file(&self.path).unwrap();
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Captures this thread's log lines (the tests run on a current-thread runtime, so the
/// polling task logs here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        test_support::logs::keep_call_sites_enabled();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn revision_doc(name: &str, cc: u32, ready: &[&str]) -> String {
    let ready: Vec<String> = ready.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        r#"{{"revisions":[{{"namespace":"default","name":"{name}","containerConcurrency":{cc},"pods":{{"ready":[{}]}}}}]}}"#,
        ready.join(",")
    )
}

/// Polls `condition` every 5 ms for up to 2 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..400 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn start(file: &TempFile) -> (Arc<FileSource>, watch::Sender<bool>) {
    let (stop, stop_rx) = watch::channel(false);
    let source = FileSource::start(file.path(), POLL, stop_rx).unwrap();
    (source, stop)
}

#[tokio::test]
async fn initial_load() {
    let file = TempFile::new(&revision_doc("hello-00001", 3, &["127.0.0.1:8012"]));
    let (source, _stop) = start(&file);
    assert!(source.synced());
    assert!(DiscoverySource::synced(&*source));
    assert_eq!(source.path(), file.path());
    let spec = source.revision("default", "hello-00001").unwrap();
    assert_eq!(spec.container_concurrency, 3);
    let snapshot = source.subscribe().borrow().clone();
    assert_eq!(
        snapshot.get(&spec.id).unwrap().private.ready,
        ["127.0.0.1:8012"]
    );
    assert_eq!(
        source.status(),
        FileStatus {
            loads: 1,
            last_error: None,
            missing: false
        }
    );
    // Through the trait object too.
    let dynamic: Arc<dyn DiscoverySource> = source.clone();
    assert!(dynamic.revision("default", "hello-00001").is_some());
    assert_eq!(dynamic.current().len(), 1);
}

#[tokio::test]
async fn initial_failures_are_errors() {
    let (_stop, stop_rx) = watch::channel(false);
    let missing = std::env::temp_dir().join("activator-discovery-does-not-exist.json");
    let error = FileSource::start(&missing, POLL, stop_rx.clone()).unwrap_err();
    assert!(matches!(error, DiscoveryError::Read { .. }), "{error}");
    assert!(error
        .to_string()
        .contains("activator-discovery-does-not-exist.json"));

    let file = TempFile::new(&rev(r#""containerConcurrency":1001"#));
    let error = FileSource::start(file.path(), POLL, stop_rx).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, DiscoveryError::Invalid { .. }), "{message}");
    assert!(message.contains("default/hello-00001"), "{message}");
    assert!(message.contains("containerConcurrency"), "{message}");
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let file = TempFile::new(&revision_doc("hello-00001", 1, &[]));
    let (_stop, stop_rx) = watch::channel(false);
    let error = FileSource::start(file.path(), POLL, stop_rx).unwrap_err();
    assert!(matches!(error, DiscoveryError::NoRuntime));
}

#[tokio::test]
async fn a_change_is_picked_up_within_a_few_polls() {
    let file = TempFile::new(&revision_doc("hello-00001", 1, &["127.0.0.1:8012"]));
    let (source, _stop) = start(&file);
    let mut rx = source.subscribe();
    rx.borrow_and_update();

    let started = std::time::Instant::now();
    file.write(&revision_doc(
        "hello-00001",
        1,
        &["127.0.0.1:8012", "127.0.0.2:8012"],
    ));
    tokio::time::timeout(Duration::from_secs(2), rx.changed())
        .await
        .expect("change not picked up")
        .unwrap();
    let elapsed = started.elapsed();
    // A few poll intervals (20 ms) — generous slack for a loaded machine.
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    let snapshot = rx.borrow_and_update().clone();
    let id = RevisionId::new("default", "hello-00001");
    assert_eq!(snapshot.get(&id).unwrap().private.ready.len(), 2);
    assert_eq!(source.status().loads, 2);

    // A revision added and another removed.
    file.write(&revision_doc("hello-00002", 4, &[]));
    tokio::time::timeout(Duration::from_secs(2), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(source.revision("default", "hello-00001").is_none());
    assert_eq!(
        source
            .revision("default", "hello-00002")
            .unwrap()
            .container_concurrency,
        4
    );
}

#[tokio::test]
async fn rewriting_the_same_content_publishes_nothing() {
    let text = revision_doc("hello-00001", 1, &["127.0.0.1:8012"]);
    let file = TempFile::new(&text);
    let (source, _stop) = start(&file);
    let mut rx = source.subscribe();
    rx.borrow_and_update();
    file.write(&text);
    // Semantically equal content with other formatting: reloaded but not republished.
    file.write(&format!("\n{text}\n"));
    eventually("the reformatted file to be read", || {
        source.status().loads == 2
    })
    .await;
    assert!(!rx.has_changed().unwrap());
}

#[tokio::test]
async fn invalid_change_keeps_the_previous_state_and_logs_why() {
    let logs = Logs::default();
    let _guard = logs.install();
    let file = TempFile::new(&revision_doc("hello-00001", 2, &["127.0.0.1:8012"]));
    let (source, _stop) = start(&file);
    let mut rx = source.subscribe();
    rx.borrow_and_update();

    file.write(r#"{"revisions":[{"namespace":"default","name":"hello-00001","protocol":"spdy"}]}"#);
    eventually("the invalid content to be rejected", || {
        source.status().last_error.is_some()
    })
    .await;
    let status = source.status();
    let error = status.last_error.unwrap();
    assert!(
        error.contains("default/hello-00001") && error.contains("protocol"),
        "{error}"
    );
    assert_eq!(status.loads, 1);
    // The previous snapshot is kept and nothing was published.
    assert!(!rx.has_changed().unwrap());
    assert_eq!(
        source
            .revision("default", "hello-00001")
            .unwrap()
            .container_concurrency,
        2
    );
    let text = logs.text();
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("invalid discovery file"), "{text}");
    assert!(text.contains("spdy"), "{text}");
    // Logged once, not at every poll.
    tokio::time::sleep(POLL * 5).await;
    assert_eq!(logs.text().matches("invalid discovery file").count(), 1);

    // Truncated JSON (a half-written file) is rejected the same way.
    file.write(r#"{"revisions":[{"namespace":"#);
    eventually("the truncated content to be rejected", || {
        source
            .status()
            .last_error
            .is_some_and(|e| e.contains("not valid JSON"))
    })
    .await;
    assert!(source.revision("default", "hello-00001").is_some());

    // A valid content afterwards is loaded and clears the error.
    file.write(&revision_doc("hello-00001", 5, &[]));
    tokio::time::timeout(Duration::from_secs(2), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        source
            .revision("default", "hello-00001")
            .unwrap()
            .container_concurrency,
        5
    );
    assert_eq!(source.status().last_error, None);
    assert_eq!(source.status().loads, 2);
}

#[tokio::test]
async fn a_disappearing_file_keeps_the_previous_state() {
    let logs = Logs::default();
    let _guard = logs.install();
    let file = TempFile::new(&revision_doc("hello-00001", 1, &["127.0.0.1:8012"]));
    let (source, _stop) = start(&file);
    let mut rx = source.subscribe();
    rx.borrow_and_update();

    file.remove();
    eventually("the file to be missed", || source.status().missing).await;
    assert!(!rx.has_changed().unwrap());
    assert!(source.revision("default", "hello-00001").is_some());
    tokio::time::sleep(POLL * 5).await;
    assert_eq!(logs.text().matches("discovery file disappeared").count(), 1);
    assert!(logs.text().contains("WARN"));

    // It comes back with new content.
    file.write(&revision_doc("hello-00001", 1, &["127.0.0.9:8012"]));
    tokio::time::timeout(Duration::from_secs(2), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(!source.status().missing);
    let snapshot = rx.borrow_and_update().clone();
    assert_eq!(
        snapshot
            .get(&RevisionId::new("default", "hello-00001"))
            .unwrap()
            .private
            .ready,
        ["127.0.0.9:8012"]
    );
    assert!(logs.text().contains("discovery file is back"));
}

#[tokio::test]
async fn polling_stops_at_shutdown() {
    let file = TempFile::new(&revision_doc("hello-00001", 1, &[]));
    let (source, stop) = start(&file);
    stop.send_replace(true);
    tokio::time::sleep(POLL * 2).await;
    file.write(&revision_doc("hello-00002", 1, &[]));
    tokio::time::sleep(POLL * 5).await;
    assert!(source.revision("default", "hello-00001").is_some());
    assert_eq!(source.status().loads, 1);
}

#[tokio::test]
async fn a_zero_poll_interval_does_not_panic() {
    let file = TempFile::new(&revision_doc("hello-00001", 1, &[]));
    let (stop, stop_rx) = watch::channel(false);
    let source = FileSource::start(file.path(), Duration::ZERO, stop_rx).unwrap();
    file.write(&revision_doc("hello-00002", 1, &[]));
    eventually("the change", || {
        source.revision("default", "hello-00002").is_some()
    })
    .await;
    stop.send_replace(true);
}

mod system_sections {
    use super::super::*;

    #[test]
    fn config_maps_and_secrets_are_parsed() {
        let doc = br#"{"revisions": [],
            "configMaps": {"config-observability": {"data": {"metrics-protocol": "prometheus"}},
                           "my-bundle": {"labels": {"networking.knative.dev/trust-bundle": "true"},
                                         "data": {"ca.pem": "PEM"}}},
            "secrets": {"routing-serving-certs": {"data": {"tls.crt": "CERT"}}}}"#;
        let snapshot = parse_document(doc).unwrap();
        let system = snapshot.system();
        assert_eq!(
            system.config_map("config-observability").unwrap()["metrics-protocol"],
            "prometheus"
        );
        assert_eq!(system.trust_bundles().count(), 1);
        assert_eq!(
            system.secret("routing-serving-certs").unwrap().data["tls.crt"],
            b"CERT"
        );
    }

    #[test]
    fn bad_system_sections_name_the_place() {
        for (doc, needle) in [
            (
                &br#"{"revisions": [], "configMaps": []}"#[..],
                "field configMaps",
            ),
            (
                br#"{"revisions": [], "configMaps": {"Bad_Name": {}}}"#,
                "not a valid object name",
            ),
            (
                br#"{"revisions": [], "configMaps": {"a": {"data": {"k": 1}}}}"#,
                "configMaps.a, field data.k",
            ),
            (
                br#"{"revisions": [], "secrets": {"a": {"stringData": {}}}}"#,
                "secrets.a, field stringData",
            ),
            (br#"{"revisions": [], "other": 1}"#, "field other"),
        ] {
            let error = parse_document(doc).unwrap_err().to_string();
            assert!(error.contains(needle), "{error} lacks {needle}");
        }
    }

    #[test]
    fn a_system_change_changes_the_snapshot() {
        let a = parse_document(br#"{"revisions": [], "configMaps": {"x": {"data": {"k": "1"}}}}"#)
            .unwrap();
        let b = parse_document(br#"{"revisions": [], "configMaps": {"x": {"data": {"k": "2"}}}}"#)
            .unwrap();
        assert_ne!(a, b);
    }
}

fn ids(names: &[&str]) -> Changes {
    Changes::Revisions(
        names
            .iter()
            .map(|n| RevisionId::new("default", *n))
            .collect(),
    )
}

fn spec_entry(name: &str, cc: u32) -> RevisionEntry {
    let mut spec = RevisionSpec::new(RevisionId::new("default", name));
    spec.container_concurrency = cc;
    RevisionEntry::new(spec)
}

/// A feed's first take is everything; later takes name the revisions published since, merged
/// over publications the consumer did not wake up for.
#[tokio::test]
async fn a_change_feed_accumulates_changed_revisions() {
    let cell = SnapshotCell::new();
    cell.publish(Snapshot::new([spec_entry("a", 1), spec_entry("b", 1)]));
    let mut feed = cell.subscribe_changes();
    let (first, changes) = feed.take();
    assert_eq!((first.len(), changes), (2, Changes::All));

    let mut next = (*cell.current()).clone();
    next.set(spec_entry("a", 2));
    assert!(cell.publish_changes(next.clone(), ids(&["a"])));
    next.remove(&RevisionId::new("default", "b"));
    assert!(cell.publish_changes(next.clone(), ids(&["b"])));
    let (snapshot, changes) = tokio::time::timeout(Duration::from_secs(2), feed.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changes, ids(&["a", "b"]));
    assert_eq!(snapshot.len(), 1);
    // Nothing changed: nobody is woken.
    assert!(!cell.publish_changes(next.clone(), ids(&[])));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), feed.changed())
            .await
            .is_err()
    );
    // A whole publication that differs means everything.
    cell.publish(Snapshot::new([spec_entry("c", 1)]));
    assert_eq!(feed.changed().await.unwrap().1, Changes::All);
}

/// The file source re-parses the file but names only the revisions whose entries changed, and
/// the unchanged entries keep their identity.
#[tokio::test]
async fn a_file_reload_names_only_the_changed_revisions() {
    let doc = |a_pods: &str| {
        format!(
            r#"{{"revisions":[
                {{"namespace":"default","name":"a","pods":{{"ready":[{a_pods}]}}}},
                {{"namespace":"default","name":"b","pods":{{"ready":["127.0.0.2:8012"]}}}},
                {{"namespace":"default","name":"c"}}]}}"#
        )
    };
    let file = TempFile::new(&doc(r#""127.0.0.1:8012""#));
    let (source, _stop) = start(&file);
    let mut feed = source.subscribe_changes();
    let (before, changes) = feed.take();
    assert_eq!(changes, Changes::All);
    file.write(&doc(r#""127.0.0.1:8012","127.0.0.3:8012""#));
    let (after, changes) = tokio::time::timeout(Duration::from_secs(2), feed.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changes, ids(&["a"]));
    let b = RevisionId::new("default", "b");
    assert!(Arc::ptr_eq(
        &before.get(&b).unwrap().spec,
        &after.get(&b).unwrap().spec
    ));
    assert_eq!(
        after
            .get(&RevisionId::new("default", "a"))
            .unwrap()
            .private
            .ready
            .len(),
        2
    );
    // Removing `c` names `c` alone.
    file.write(
        r#"{"revisions":[
            {"namespace":"default","name":"a","pods":{"ready":["127.0.0.1:8012","127.0.0.3:8012"]}},
            {"namespace":"default","name":"b","pods":{"ready":["127.0.0.2:8012"]}}]}"#,
    );
    let (after, changes) = tokio::time::timeout(Duration::from_secs(2), feed.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changes, ids(&["c"]));
    assert_eq!(after.len(), 2);
}

/// The cached parse the file source uses is the plain parse, result and errors alike, whatever
/// the previous document was; unchanged revision objects are taken from the cache.
#[test]
fn cached_parse_equals_the_plain_parse() {
    let rev = |name: &str, cc: u32| {
        format!(r#"{{"namespace":"default","name":"{name}","containerConcurrency":{cc}}}"#)
    };
    let doc = |revs: &[String]| format!(r#"{{"revisions":[{}]}}"#, revs.join(","));
    let docs = [
        doc(&[rev("a", 1), rev("b", 2)]),
        doc(&[rev("a", 1), rev("b", 3)]),
        doc(&[rev("a", 1), rev("a", 1)]),
        doc(&[rev("a", 1), rev("b", 5000)]),
        doc(&[rev("b", 3), rev("a", 1)]),
        r#"{"revisions":[{"namespace":"default","name":"a"}],"configMaps":{"config-network":{"data":{"k":"v"}}}}"#.to_owned(),
        r#"{"revisions":[{"namespace":"default","name":"a"}],"configMaps":{"BAD NAME":{}}}"#.to_owned(),
        r#"{"revisions":{}}"#.to_owned(),
        r#"{"revisions":[],"extra":1}"#.to_owned(),
        r#"[1,2]"#.to_owned(),
        r#"{"revisions":[{"namespace":"default","name":"a""#.to_owned(),
        doc(&[]),
    ];
    let mut cache = DocumentCache::default();
    for text in &docs {
        let expected = parse_document(text.as_bytes());
        assert_eq!(
            parse_document_cached(text.as_bytes(), &mut cache),
            expected,
            "{text}"
        );
        if let Ok(snapshot) = &expected {
            assert_eq!(cache.len(), snapshot.len(), "{text}");
        }
    }
    // A warm cache: `a` is reused (the same spec object), `b` is parsed again.
    let mut cache = DocumentCache::default();
    let first = parse_document_cached(docs[0].as_bytes(), &mut cache).unwrap();
    let second = parse_document_cached(docs[1].as_bytes(), &mut cache).unwrap();
    let a = RevisionId::new("default", "a");
    assert!(Arc::ptr_eq(
        &first.get(&a).unwrap().spec,
        &second.get(&a).unwrap().spec
    ));
}

/// After an invalid document the cache is empty; the next valid document still removes what
/// it no longer lists, and names exactly the revisions that differ from the last good state.
#[tokio::test]
async fn a_reload_after_an_invalid_document_removes_what_is_gone() {
    let rev = |name: &str| format!(r#"{{"namespace":"default","name":"{name}"}}"#);
    let file = TempFile::new(&format!(
        r#"{{"revisions":[{},{},{}]}}"#,
        rev("a"),
        rev("b"),
        rev("c")
    ));
    let (source, _stop) = start(&file);
    let mut feed = source.subscribe_changes();
    feed.take();
    file.write(r#"{"revisions":[{"namespace":"default"}]}"#);
    eventually("the invalid document to be seen", || {
        source.status().last_error.is_some()
    })
    .await;
    assert_eq!(source.current().len(), 3, "the last good state stays");
    file.write(&format!(r#"{{"revisions":[{}]}}"#, rev("a")));
    let (snapshot, changes) = tokio::time::timeout(Duration::from_secs(2), feed.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changes, ids(&["b", "c"]));
    assert_eq!(snapshot.len(), 1);
    assert!(snapshot.get(&RevisionId::new("default", "a")).is_some());
}
