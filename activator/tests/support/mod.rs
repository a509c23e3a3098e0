//! Harness for the activator integration tests: runs the real `activator` binary on loopback with
//! a file discovery source, a stand-in autoscaler websocket ([`StatsReceiver`]), in-process test
//! apps ([`App`]) and real `queue-proxy` processes ([`QueueProxy`]) in front of them.
//!
//! Every test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

pub use test_support::{app, client};
pub mod fake_api;
pub mod stats;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[allow(unused_imports)]
pub use app::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use stats::*;

/// The binary under test.
pub const ACTIVATOR_BIN: &str = env!("CARGO_BIN_EXE_activator");

/// Where cargo puts the queue-proxy binary (same workspace target directory).
const QUEUE_PROXY_BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/queue-proxy");

/// Upper bound for anything that should happen "soon" (start-up, exits, probes, stats ticks).
/// Generous: the machine is shared and everything is a debug build.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Namespace of the test revisions.
pub const NS: &str = "default";

/// `POD_NAME` given to the activator.
pub const POD_NAME: &str = "activator-test-0";

/// The queue-proxy binary, built once per test process ([`test_support::cargo_build`]).
pub fn queue_proxy_bin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        test_support::cargo_build(&["-p", "queue-proxy", "--bin", "queue-proxy"]);
        let path = PathBuf::from(QUEUE_PROXY_BIN);
        assert!(path.exists(), "{} missing after the build", path.display());
        path
    })
}

#[allow(unused_imports)]
pub use test_support::{free_port, pid_listens_on, port_listeners, PortListeners};

fn unique_path(prefix: &str, ext: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{prefix}-{}-{n}.{ext}", std::process::id()))
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn tail(text: &str, bytes: usize) -> &str {
    let start = text.len().saturating_sub(bytes);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    &text[start..]
}

fn assert_no_panic(what: &str, stdout: &str, stderr: &str) {
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        assert!(
            !text.contains("panicked"),
            "{what} panicked ({name}):\n{text}"
        );
    }
}

/// Sends `signal` (e.g. `TERM`, `KILL`) through `kill(1)`: the tests do not link libc.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

#[allow(unused_imports)]
pub use test_support::rss_kib;

#[allow(unused_imports)]
use test_support::wait_child;

#[allow(unused_imports)]
pub use test_support::eventually;

// ------------------------------------------------------------------------------------------------
// Discovery documents

/// One revision of the discovery document (see `activator/src/discovery/document.rs`).
#[derive(Clone, Debug)]
pub struct Rev {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `containerConcurrency`.
    pub cc: u32,
    /// `timeoutSeconds` (`None`: the default 300).
    pub timeout_seconds: Option<u64>,
    /// `protocol` (`http1` or `h2c`).
    pub protocol: &'static str,
    /// `pods.ready`.
    pub ready: Vec<SocketAddr>,
    /// `pods.notReady`.
    pub not_ready: Vec<SocketAddr>,
}

impl Rev {
    /// Revision `name` in [`NS`] with containerConcurrency `cc`, HTTP/1 and no pods.
    pub fn new(name: &str, cc: u32) -> Rev {
        Rev {
            namespace: NS.to_owned(),
            name: name.to_owned(),
            cc,
            timeout_seconds: None,
            protocol: "http1",
            ready: Vec::new(),
            not_ready: Vec::new(),
        }
    }

    /// With these ready pods.
    pub fn ready(mut self, pods: impl IntoIterator<Item = SocketAddr>) -> Rev {
        self.ready = pods.into_iter().collect();
        self
    }

    /// With these not-ready pods.
    pub fn not_ready(mut self, pods: impl IntoIterator<Item = SocketAddr>) -> Rev {
        self.not_ready = pods.into_iter().collect();
        self
    }

    /// With `timeoutSeconds`.
    pub fn timeout(mut self, seconds: u64) -> Rev {
        self.timeout_seconds = Some(seconds);
        self
    }

    /// Serving protocol h2c.
    pub fn h2c(mut self) -> Rev {
        self.protocol = "h2c";
        self
    }

    fn json(&self) -> Value {
        let addrs = |v: &[SocketAddr]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let mut rev = json!({
            "namespace": self.namespace,
            "name": self.name,
            "containerConcurrency": self.cc,
            "protocol": self.protocol,
            "pods": {"ready": addrs(&self.ready), "notReady": addrs(&self.not_ready)},
        });
        if let Some(t) = self.timeout_seconds {
            rev["timeoutSeconds"] = json!(t);
        }
        rev
    }
}

/// The discovery document listing `revs`.
pub fn document(revs: &[Rev]) -> String {
    let revisions: Vec<Value> = revs.iter().map(Rev::json).collect();
    serde_json::to_string_pretty(&json!({ "revisions": revisions })).unwrap()
}

/// Replaces `path`'s content atomically (write a sibling, then rename), as a ConfigMap volume
/// update would.
pub fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write discovery file");
    std::fs::rename(&tmp, path).expect("rename discovery file");
}

// ------------------------------------------------------------------------------------------------
// The activator

/// Every variable the binary reads; those not set explicitly are removed from the child's
/// environment so that the parent's environment cannot leak into a test.
const ACTIVATOR_VARS: &[&str] = &[
    "POD_NAME",
    "POD_IP",
    "SYSTEM_NAMESPACE",
    "PROBE_TIMEOUT",
    "PROBE_FREQUENCY",
    "MAX_IDLE_PROXY_CONNS",
    "MAX_IDLE_PROXY_CONNS_PER_HOST",
    "CLUSTER_DOMAIN",
    "ACTIVATOR_HTTP1_PORT",
    "ACTIVATOR_H2C_PORT",
    "ACTIVATOR_AUTOSCALER_URL",
    "ACTIVATOR_DISCOVERY_FILE",
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "KUBERNETES_MIN_VERSION",
    "ACTIVATOR_KUBE_VERSION_WAIT_SECONDS",
    "CONFIG_LOGGING_NAME",
    "CONFIG_OBSERVABILITY_NAME",
    "ACTIVATOR_DRAIN_SLEEP_SECONDS",
    "ACTIVATOR_DISCOVERY_POLL_MILLIS",
    "ACTIVATOR_MAX_QUEUED_PER_REVISION",
    "ACTIVATOR_MAX_CONCURRENT_PROBES",
    "ACTIVATOR_LOG_LEVEL",
    "ACTIVATOR_HTTPS_PORT",
    "ACTIVATOR_QUEUE_TLS_PORT",
    "ACTIVATOR_TLS_MIN_VERSION",
    "ACTIVATOR_TLS_MAX_VERSION",
    "ACTIVATOR_TLS_CIPHER_SUITES",
    "ACTIVATOR_TLS_CURVE_PREFERENCES",
];

/// Port variables the harness fills with free ports unless the test sets them.
const ACTIVATOR_PORT_VARS: &[&str] = &[
    "ACTIVATOR_HTTP1_PORT",
    "ACTIVATOR_H2C_PORT",
    "ACTIVATOR_HTTPS_PORT",
];

/// The environment and initial discovery document of one activator process.
#[derive(Clone, Debug)]
pub struct ActivatorConfig {
    vars: BTreeMap<&'static str, Option<String>>,
    discovery: String,
    args: Vec<String>,
}

impl ActivatorConfig {
    /// Reports to `autoscaler_url`; `POD_NAME` [`POD_NAME`], `POD_IP` 127.0.0.1,
    /// `CLUSTER_DOMAIN` cluster.local, no drain sleep, and an empty discovery document.
    pub fn new(autoscaler_url: &str) -> Self {
        let mut vars = BTreeMap::new();
        for (k, v) in [
            ("POD_NAME", POD_NAME),
            ("POD_IP", "127.0.0.1"),
            ("SYSTEM_NAMESPACE", "knative-serving"),
            ("CLUSTER_DOMAIN", "cluster.local"),
            ("ACTIVATOR_DRAIN_SLEEP_SECONDS", "0"),
            ("ACTIVATOR_LOG_LEVEL", "info"),
        ] {
            vars.insert(k, Some(v.to_owned()));
        }
        vars.insert("ACTIVATOR_AUTOSCALER_URL", Some(autoscaler_url.to_owned()));
        ActivatorConfig {
            vars,
            discovery: document(&[]),
            args: Vec::new(),
        }
    }

    /// Sets a variable.
    pub fn env(mut self, name: &'static str, value: impl ToString) -> Self {
        self.vars.insert(name, Some(value.to_string()));
        self
    }

    /// Command-line arguments for the binary.
    pub fn args(mut self, args: &[String]) -> Self {
        self.args = args.to_vec();
        self
    }

    /// Removes a variable (it will be absent from the child's environment).
    pub fn without(mut self, name: &'static str) -> Self {
        self.vars.insert(name, None);
        self
    }

    /// The initial discovery document lists `revs`.
    pub fn revisions(mut self, revs: &[Rev]) -> Self {
        self.discovery = document(revs);
        self
    }

    /// The initial discovery file holds exactly `text`.
    pub fn discovery_text(mut self, text: &str) -> Self {
        self.discovery = text.to_owned();
        self
    }

    fn with_free_ports(&self) -> ActivatorConfig {
        let mut config = self.clone();
        for name in ACTIVATOR_PORT_VARS {
            config
                .vars
                .entry(name)
                .or_insert_with(|| Some(free_port().to_string()));
        }
        config
    }

    fn port(&self, name: &str) -> u16 {
        self.vars
            .get(name)
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn spawn(&self, discovery_file: &Path) -> (Child, PathBuf, PathBuf) {
        let out_path = unique_path("activator", "stdout");
        let err_path = unique_path("activator", "stderr");
        let mut command = Command::new(ACTIVATOR_BIN);
        command.args(&self.args);
        for name in ACTIVATOR_VARS {
            command.env_remove(name);
        }
        command.env("ACTIVATOR_DISCOVERY_FILE", discovery_file);
        for (name, value) in &self.vars {
            match value {
                Some(v) => command.env(name, v),
                None => command.env_remove(name),
            };
        }
        command
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).expect("create stdout log"))
            .stderr(File::create(&err_path).expect("create stderr log"));
        let child = command.spawn().expect("spawn activator");
        (child, out_path, err_path)
    }

    /// Writes the discovery file, starts the activator and waits until both listeners accept
    /// connections. Ports chosen by the harness are re-picked if another process grabbed one.
    pub fn start(self) -> Activator {
        let discovery_file = unique_path("discovery", "json");
        for _attempt in 0..5 {
            // Written for each attempt: a lost port race drops that attempt's `Activator`,
            // whose `Drop` removes the file, and the next attempt would start without it.
            write_atomically(&discovery_file, &self.discovery);
            let config = self.with_free_ports();
            let (child, stdout, stderr) = config.spawn(&discovery_file);
            let mut activator = Activator {
                child,
                stdout,
                stderr,
                discovery_file: discovery_file.clone(),
                http1_port: config.port("ACTIVATOR_HTTP1_PORT"),
                h2c_port: config.port("ACTIVATOR_H2C_PORT"),
                https_port: config.port("ACTIVATOR_HTTPS_PORT"),
            };
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Some(status) = activator.child.try_wait().expect("try_wait") {
                    let err = activator.stderr_text();
                    let picked_by_us = ACTIVATOR_PORT_VARS
                        .iter()
                        .all(|v| !self.vars.contains_key(v));
                    if picked_by_us && err.contains("failed to listen") {
                        break; // port race with another test: try new ports
                    }
                    panic!(
                        "activator exited during start-up ({status}):\n{err}\n{}",
                        activator.stdout_text()
                    );
                }
                // Owned by this child, not merely accepting: another test may have taken a
                // port picked here before the child bound it. With more than one worker the
                // activator binds with `SO_REUSEPORT`, so another test's activator that picked
                // the same port binds it too and the kernel spreads connections between the
                // two: a shared port is a lost race as well.
                let pid = activator.child.id();
                let listeners =
                    [activator.http1_port, activator.h2c_port].map(|p| port_listeners(pid, p));
                if listeners.contains(&PortListeners::Shared) {
                    let picked_by_us = ACTIVATOR_PORT_VARS
                        .iter()
                        .all(|v| !self.vars.contains_key(v));
                    assert!(
                        picked_by_us,
                        "another process listens on a port this test set: {listeners:?}"
                    );
                    break; // port race with another test: try new ports
                }
                if listeners.iter().all(|l| *l == PortListeners::Pid) {
                    return activator;
                }
                assert!(
                    Instant::now() < deadline,
                    "activator did not start listening within {DEADLINE:?}:\n{}",
                    activator.stderr_text()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("could not start the activator on free ports after 5 attempts");
    }

    /// Runs the binary (ports filled in) and waits for it to exit, which it must do within
    /// [`DEADLINE`].
    pub fn run_to_exit(self) -> Exited {
        let discovery_file = unique_path("discovery", "json");
        write_atomically(&discovery_file, &self.discovery);
        let (mut child, out, err) = self.with_free_ports().spawn(&discovery_file);
        let status = wait_child(&mut child, DEADLINE).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "activator did not exit within {DEADLINE:?}; stderr:\n{}",
                read_lossy(&err)
            )
        });
        let exited = Exited {
            status,
            stdout: read_lossy(&out),
            stderr: read_lossy(&err),
            discovery_file: discovery_file.clone(),
        };
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
        let _ = std::fs::remove_file(discovery_file);
        exited
    }
}

/// A finished activator run.
#[derive(Debug)]
pub struct Exited {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// The discovery file it was given (already removed).
    pub discovery_file: PathBuf,
}

impl Exited {
    /// Asserts exit code 1 with no panic message anywhere.
    pub fn assert_failed(&self) {
        assert_eq!(self.status.code(), Some(1), "exit status; {self:#?}");
        assert_no_panic("activator", &self.stdout, &self.stderr);
    }
}

/// A running activator; killed when dropped.
pub struct Activator {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    /// The discovery file it watches.
    pub discovery_file: PathBuf,
    /// `ACTIVATOR_HTTP1_PORT`.
    pub http1_port: u16,
    /// `ACTIVATOR_H2C_PORT`.
    pub h2c_port: u16,
    /// `ACTIVATOR_HTTPS_PORT` (listening in system-internal TLS mode only).
    pub https_port: u16,
}

impl Activator {
    /// The HTTP/1.1 (+ h2c) listener's loopback address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http1_port))
    }

    /// The h2c listener's loopback address.
    pub fn h2c_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.h2c_port))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Rewrites the discovery file to list `revs`.
    pub fn set_revisions(&self, revs: &[Rev]) {
        write_atomically(&self.discovery_file, &document(revs));
    }

    /// Rewrites the discovery file with exactly `text`.
    pub fn set_discovery_text(&self, text: &str) {
        write_atomically(&self.discovery_file, text);
    }

    /// What the process printed on stdout (its JSON log) so far.
    pub fn stdout_text(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// What the process printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// Waits until the log (stdout) has at least `n` lines containing `needle`.
    pub async fn wait_log(&self, needle: &str, n: usize) {
        eventually(DEADLINE, &format!("{n}× log line {needle:?}"), || {
            let count = self.stdout_text().matches(needle).count();
            std::future::ready((count >= n).then_some(()))
        })
        .await
    }

    /// Waits until a kubelet probe answers 200 (the autoscaler websocket is connected).
    pub async fn wait_healthy(&self) {
        let addr = self.addr();
        eventually(DEADLINE, "the activator to report healthy", || async move {
            (kubelet_probe(addr).await.status == http::StatusCode::OK).then_some(())
        })
        .await
    }

    /// Asserts that the process is still running and never printed a panic message.
    pub fn assert_healthy(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "activator exited unexpectedly ({status:?}):\n{}",
            self.stderr_text()
        );
        assert_no_panic("activator", &self.stdout_text(), &self.stderr_text());
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, limit)
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }
}

impl Drop for Activator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- activator stderr (tail) ---\n{}\n--- activator stdout (tail) ---\n{}",
                tail(&self.stderr_text(), 6000),
                tail(&self.stdout_text(), 12000)
            );
        }
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
        let _ = std::fs::remove_file(&self.discovery_file);
    }
}

// ------------------------------------------------------------------------------------------------
// The queue-proxy

/// Every variable the queue-proxy reads that could leak from the parent environment.
const QP_VARS: &[&str] = test_support::QUEUE_PROXY_VARS;

const QP_PORT_VARS: &[&str] = test_support::QUEUE_PROXY_PORT_VARS;

/// A running queue-proxy in front of a test app (a "pod"); killed when dropped.
pub struct QueueProxy {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Main listener (HTTP/1.1 + h2c): the pod address to list in the discovery file.
    pub port: u16,
    /// `QUEUE_SERVING_TLS_PORT` (listening only when `QUEUE_CERT_DIR` holds a pair).
    pub tls_port: u16,
}

impl QueueProxy {
    /// Starts a queue-proxy for revision `NS/revision` with `CONTAINER_CONCURRENCY=cc` in front
    /// of `127.0.0.1:user_port`, and waits until its ports accept connections.
    pub fn start(user_port: u16, revision: &str, cc: u32) -> QueueProxy {
        Self::start_with_env(user_port, revision, cc, &[])
    }

    /// [`Self::start`] with extra variables (e.g. `QUEUE_CERT_DIR`).
    pub fn start_with_env(
        user_port: u16,
        revision: &str,
        cc: u32,
        extra: &[(&str, String)],
    ) -> QueueProxy {
        let bin = queue_proxy_bin();
        for _attempt in 0..5 {
            let ports: Vec<u16> = QP_PORT_VARS.iter().map(|_| free_port()).collect();
            let out_path = unique_path("qp", "stdout");
            let err_path = unique_path("qp", "stderr");
            let mut command = Command::new(bin);
            for name in QP_VARS {
                command.env_remove(name);
            }
            for (name, value) in [
                ("SERVING_NAMESPACE", NS.to_owned()),
                ("SERVING_CONFIGURATION", "cfg".to_owned()),
                ("SERVING_REVISION", revision.to_owned()),
                ("SERVING_POD", format!("{revision}-deployment-{}", ports[0])),
                ("SERVING_POD_IP", "127.0.0.1".to_owned()),
                ("CONTAINER_CONCURRENCY", cc.to_string()),
                ("REVISION_TIMEOUT_SECONDS", "60".to_owned()),
                ("SERVING_LOGGING_CONFIG", String::new()),
                ("SERVING_LOGGING_LEVEL", "info".to_owned()),
                ("USER_PORT", user_port.to_string()),
            ] {
                command.env(name, value);
            }
            for (name, port) in QP_PORT_VARS.iter().zip(&ports) {
                command.env(name, port.to_string());
            }
            for (name, value) in extra {
                command.env(name, value);
            }
            command
                .stdin(Stdio::null())
                .stdout(File::create(&out_path).expect("create stdout log"))
                .stderr(File::create(&err_path).expect("create stderr log"));
            let child = command.spawn().expect("spawn queue-proxy");
            let mut qp = QueueProxy {
                child,
                stdout: out_path,
                stderr: err_path,
                port: ports[0],
                tls_port: ports[1],
            };
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Some(status) = qp.child.try_wait().expect("try_wait") {
                    let err = read_lossy(&qp.stderr);
                    if err.contains("failed to listen") {
                        break; // port race: try new ports
                    }
                    panic!("queue-proxy exited during start-up ({status}):\n{err}");
                }
                let pid = qp.child.id();
                if ports
                    .iter()
                    .take(1)
                    .chain(ports.iter().skip(2))
                    .all(|p| pid_listens_on(pid, *p))
                {
                    return qp;
                }
                assert!(
                    Instant::now() < deadline,
                    "queue-proxy did not start listening within {DEADLINE:?}:\n{}",
                    read_lossy(&qp.stderr)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("could not start a queue-proxy on free ports after 5 attempts");
    }

    /// The main listener's loopback address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL) and reaps it: connections to it are refused from now on.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asserts that the process is still running and never printed a panic message.
    pub fn assert_healthy(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "queue-proxy exited unexpectedly ({status:?}):\n{}",
            read_lossy(&self.stderr)
        );
        assert_no_panic(
            "queue-proxy",
            &read_lossy(&self.stdout),
            &read_lossy(&self.stderr),
        );
    }
}

impl Drop for QueueProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- queue-proxy :{} stderr (tail) ---\n{}\n--- stdout (tail) ---\n{}",
                self.port,
                tail(&read_lossy(&self.stderr), 4000),
                tail(&read_lossy(&self.stdout), 4000)
            );
        }
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// A pod: a test app with a real queue-proxy in front of it.
pub struct Pod {
    /// The user container.
    pub app: App,
    /// Its queue-proxy.
    pub qp: QueueProxy,
}

impl Pod {
    /// Starts `app` behind a queue-proxy for `NS/revision` with concurrency `cc`.
    pub async fn start(app: App, revision: &str, cc: u32) -> Pod {
        Self::start_with_env(app, revision, cc, Vec::new()).await
    }

    /// [`Self::start`] with extra queue-proxy variables.
    pub async fn start_with_env(
        app: App,
        revision: &str,
        cc: u32,
        extra: Vec<(&'static str, String)>,
    ) -> Pod {
        let port = app.port();
        let revision = revision.to_owned();
        let qp = tokio::task::spawn_blocking(move || {
            QueueProxy::start_with_env(port, &revision, cc, &extra)
        })
        .await
        .expect("start queue-proxy");
        Pod { app, qp }
    }

    /// The address to list in the discovery file.
    pub fn addr(&self) -> SocketAddr {
        self.qp.addr()
    }
}
