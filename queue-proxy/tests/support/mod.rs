//! Harness for the queue-proxy integration tests: runs the real binary on loopback against
//! in-process test apps, with small HTTP/1.1, h2c and raw-TCP clients.
//!
//! Every test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

pub use test_support::{app, client};

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use app::*;
#[allow(unused_imports)]
pub use client::*;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_queue-proxy");

/// Upper bound for anything that should happen "soon" (start-up, exits, stats windows). Generous:
/// the machine is shared and everything is a debug build.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Every variable the binary reads; those not set explicitly are removed from the child's
/// environment so that the parent's environment cannot leak into a test.
const KNOWN_VARS: &[&str] = test_support::QUEUE_PROXY_VARS;

/// Port variables the harness fills with free ports unless the test sets them.
const PORT_VARS: &[&str] = test_support::QUEUE_PROXY_PORT_VARS;

#[allow(unused_imports)]
pub use test_support::{free_port, pid_listens_on};

/// The environment for one queue-proxy process.
#[derive(Clone, Debug)]
pub struct QpConfig {
    vars: BTreeMap<&'static str, Option<String>>,
}

impl QpConfig {
    /// The variables the controller always sets, proxying to `127.0.0.1:user_port`, with
    /// `CONTAINER_CONCURRENCY=0` and a 30 s revision timeout.
    pub fn new(user_port: u16) -> Self {
        let mut vars = BTreeMap::new();
        for (k, v) in [
            ("SERVING_NAMESPACE", "default"),
            ("SERVING_CONFIGURATION", "cfg"),
            ("SERVING_REVISION", "rev-00001"),
            ("SERVING_POD", "rev-00001-deployment-abc"),
            ("SERVING_POD_IP", "127.0.0.1"),
            ("CONTAINER_CONCURRENCY", "0"),
            ("REVISION_TIMEOUT_SECONDS", "30"),
            ("SERVING_LOGGING_CONFIG", ""),
            ("SERVING_LOGGING_LEVEL", "info"),
        ] {
            vars.insert(k, Some(v.to_owned()));
        }
        vars.insert("USER_PORT", Some(user_port.to_string()));
        QpConfig { vars }
    }

    /// Sets a variable.
    pub fn env(mut self, name: &'static str, value: impl ToString) -> Self {
        self.vars.insert(name, Some(value.to_string()));
        self
    }

    /// Removes a variable (it will be absent from the child's environment).
    pub fn without(mut self, name: &'static str) -> Self {
        self.vars.insert(name, None);
        self
    }

    /// `CONTAINER_CONCURRENCY`.
    pub fn cc(self, cc: usize) -> Self {
        self.env("CONTAINER_CONCURRENCY", cc)
    }

    /// `REVISION_TIMEOUT_SECONDS`.
    pub fn timeout_secs(self, secs: u64) -> Self {
        self.env("REVISION_TIMEOUT_SECONDS", secs)
    }

    /// Fills the unset port variables with free ports.
    fn with_free_ports(&self) -> QpConfig {
        let mut config = self.clone();
        for name in PORT_VARS {
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

    fn spawn(&self) -> (Child, PathBuf, PathBuf) {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let base = format!("qp-{}-{n}", std::process::id());
        let out_path = dir.join(format!("{base}.stdout"));
        let err_path = dir.join(format!("{base}.stderr"));
        let mut command = Command::new(BIN);
        for name in KNOWN_VARS {
            command.env_remove(name);
        }
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
        let child = command.spawn().expect("spawn queue-proxy");
        (child, out_path, err_path)
    }

    /// Starts the queue-proxy and waits until its main, admin and stats ports accept connections.
    /// Ports chosen by the harness are re-picked if another process grabbed one meanwhile.
    pub fn start(self) -> QueueProxy {
        for _attempt in 0..5 {
            let config = self.with_free_ports();
            let (child, stdout, stderr) = config.spawn();
            let mut qp = QueueProxy {
                child,
                stdout,
                stderr,
                port: config.port("QUEUE_SERVING_PORT"),
                admin_port: config.port("QUEUE_ADMIN_PORT"),
                stats_port: config.port("QUEUE_STATS_PORT"),
            };
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Some(status) = qp.child.try_wait().expect("try_wait") {
                    let err = qp.stderr_text();
                    let picked_by_us = PORT_VARS.iter().all(|v| !self.vars.contains_key(v));
                    if picked_by_us && err.contains("failed to listen") {
                        break; // port race with another test: try new ports
                    }
                    panic!(
                        "queue-proxy exited during start-up ({status}):\n{err}\n{}",
                        qp.stdout_text()
                    );
                }
                // Owned by this child, not merely accepting: another test may have taken a
                // port picked here before the child bound it.
                let pid = qp.child.id();
                if [qp.port, qp.admin_port, qp.stats_port]
                    .iter()
                    .all(|p| pid_listens_on(pid, *p))
                {
                    return qp;
                }
                assert!(
                    Instant::now() < deadline,
                    "queue-proxy did not start listening within {DEADLINE:?}:\n{}",
                    qp.stderr_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start queue-proxy on free ports after 5 attempts");
    }

    /// Spawns the queue-proxy (free ports filled in) without waiting for anything.
    pub fn start_without_waiting(self) -> QueueProxy {
        let config = self.with_free_ports();
        let (child, stdout, stderr) = config.spawn();
        QueueProxy {
            child,
            stdout,
            stderr,
            port: config.port("QUEUE_SERVING_PORT"),
            admin_port: config.port("QUEUE_ADMIN_PORT"),
            stats_port: config.port("QUEUE_STATS_PORT"),
        }
    }

    /// Runs the binary with this environment (ports filled in) and waits for it to exit, which it
    /// must do within [`DEADLINE`].
    pub fn run_to_exit(self) -> Exited {
        let config = self.with_free_ports();
        self.run_exact_to_exit_inner(config)
    }

    /// Like [`QpConfig::run_to_exit`], but ports left unset stay unset.
    pub fn run_exact_to_exit(self) -> Exited {
        let config = self.clone();
        self.run_exact_to_exit_inner(config)
    }

    fn run_exact_to_exit_inner(&self, config: QpConfig) -> Exited {
        let (mut child, out, err) = config.spawn();
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "queue-proxy did not exit within {DEADLINE:?}; stderr:\n{}",
                    read_lossy(&err)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let exited = Exited {
            status,
            stdout: read_lossy(&out),
            stderr: read_lossy(&err),
        };
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
        exited
    }
}

/// A finished queue-proxy run.
#[derive(Debug)]
pub struct Exited {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl Exited {
    /// Asserts exit code 1 with no panic message anywhere.
    pub fn assert_failed(&self) {
        assert_eq!(self.status.code(), Some(1), "exit status; {self:#?}");
        assert_no_panic(&self.stdout, &self.stderr);
    }
}

fn read_lossy(path: &PathBuf) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn assert_no_panic(stdout: &str, stderr: &str) {
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        assert!(
            !text.contains("panicked"),
            "queue-proxy panicked ({name}):\n{text}"
        );
    }
}

/// A running queue-proxy; killed when dropped.
pub struct QueueProxy {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Main listener (HTTP/1.1 + h2c).
    pub port: u16,
    /// Admin listener (`/wait-for-drain`).
    pub admin_port: u16,
    /// Autoscaler stats listener (`/metrics`).
    pub stats_port: u16,
}

impl QueueProxy {
    /// The main listener's loopback address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The admin listener's loopback address.
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    /// The stats listener's loopback address.
    pub fn stats_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.stats_port))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// What the process printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// Asserts that the process is still running and never printed a panic message.
    pub fn assert_healthy(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "queue-proxy exited unexpectedly ({status:?}):\n{}",
            self.stderr_text()
        );
        assert_no_panic(&self.stdout_text(), &self.stderr_text());
    }

    /// Sends SIGTERM (through `kill(1)`: the tests do not link libc).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// The exit status if the process has exited (no waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size in KiB (`VmRSS` from `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for QueueProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let tail = |text: String| {
                let start = text.len().saturating_sub(8000);
                let start = (start..text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(text.len());
                text[start..].to_owned()
            };
            eprintln!(
                "--- queue-proxy stderr (tail) ---\n{}\n--- queue-proxy stdout (tail) ---\n{}",
                tail(self.stderr_text()),
                tail(self.stdout_text())
            );
        }
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

#[allow(unused_imports)]
pub use test_support::eventually;
