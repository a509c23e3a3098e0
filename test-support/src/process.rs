//! Helpers for tests that run the real binaries: free ports, polling, child processes, RSS, and the
//! environment variables the queue-proxy reads (so a harness can clear whatever leaks from the
//! parent environment).

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Every variable the queue-proxy binary reads. A harness removes the ones it does not set, so
/// that the parent's environment cannot leak into a test.
pub const QUEUE_PROXY_VARS: &[&str] = &[
    "SERVING_NAMESPACE",
    "SERVING_SERVICE",
    "SERVING_CONFIGURATION",
    "SERVING_REVISION",
    "SERVING_POD",
    "SERVING_POD_IP",
    "QUEUE_SERVING_PORT",
    "QUEUE_SERVING_TLS_PORT",
    "USER_PORT",
    "CONTAINER_CONCURRENCY",
    "REVISION_TIMEOUT_SECONDS",
    "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
    "REVISION_IDLE_TIMEOUT_SECONDS",
    "SERVING_READINESS_PROBE",
    "ENABLE_MULTI_CONTAINER_PROBES",
    "ENABLE_HTTP2_AUTO_DETECTION",
    "ENABLE_HTTP_FULL_DUPLEX",
    "SERVING_LOGGING_CONFIG",
    "SERVING_LOGGING_LEVEL",
    "OBSERVABILITY_CONFIG",
    "QUEUE_PROXY_TLS_MIN_VERSION",
    "QUEUE_PROXY_TLS_MAX_VERSION",
    "QUEUE_PROXY_TLS_CIPHER_SUITES",
    "QUEUE_PROXY_TLS_CURVE_PREFERENCES",
    "QUEUE_ADMIN_PORT",
    "QUEUE_STATS_PORT",
    "QUEUE_DRAIN_QUIET_PERIOD_SECONDS",
    "QUEUE_HEADER_READ_TIMEOUT_SECONDS",
    "QUEUE_MAX_HEADER_BYTES",
    "QUEUE_MAX_HEADERS",
    "QUEUE_H2_MAX_CONCURRENT_STREAMS",
    "QUEUE_MAX_CONNECTIONS",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "PROFILING_PORT",
];

/// The queue-proxy's port variables, which a harness fills with free ports unless a test sets them.
pub const QUEUE_PROXY_PORT_VARS: &[&str] = &[
    "QUEUE_SERVING_PORT",
    "QUEUE_SERVING_TLS_PORT",
    "QUEUE_ADMIN_PORT",
    "QUEUE_STATS_PORT",
];

/// A port nothing listens on right now (bound on loopback, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Whether process `pid` itself holds a socket listening on TCP `port` (any local address).
///
/// A harness that picks free ports and then starts a binary cannot tell, by connecting, whether
/// the binary or another test's process took the port in between: two tests that picked the same
/// free port would each see "accepts connections" and one would talk to the other's process.
/// This looks at the kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`, state `0A` =
/// LISTEN) and at the process's descriptors (`/proc/<pid>/fd` → `socket:[inode]`).
pub fn pid_listens_on(pid: u32, port: u16) -> bool {
    let port_hex = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() > 9 && fields[1].ends_with(&port_hex) && fields[3] == "0A" {
                inodes.push(format!("socket:[{}]", fields[9]));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
            .unwrap_or(false)
    })
}

/// Polls `check` every 10 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits up to `limit` for `child` to exit (polling; for synchronous drop paths).
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cargo build <args>` in this workspace and returns its debug output directory
/// (`<workspace>/target/debug`), panicking with cargo's output if the build fails.
///
/// Cargo does not build the binaries of other packages for a package's integration tests (not
/// even of a path dev-dependency), so harnesses call this once per test process. The `CARGO_*`
/// variables cargo sets for tests are removed first: some are tracked by build scripts and would
/// make the build recompile dependencies every time (and `CARGO_TARGET_DIR` would move it).
pub fn cargo_build(args: &[&str]) -> std::path::PathBuf {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives in the workspace");
    let mut command = std::process::Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if (text.starts_with("CARGO_") && text != "CARGO_HOME") || text == "LD_LIBRARY_PATH" {
            command.env_remove(&name);
        }
    }
    let output = command
        .arg("build")
        .args(args)
        .current_dir(workspace)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    workspace.join("target").join("debug")
}
