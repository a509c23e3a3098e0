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
    matches!(
        port_listeners(pid, port),
        PortListeners::Pid | PortListeners::Shared
    )
}

/// Who holds the listening sockets of a port ([`port_listeners`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortListeners {
    /// Nobody listens.
    None,
    /// Only the process asked about.
    Pid,
    /// That process and another one: both bound the port with `SO_REUSEPORT` (the activator
    /// does with more than one worker), and the kernel spreads connections between them. Two
    /// tests that picked the same free port end up here, each talking to both processes.
    Shared,
    /// Only other processes.
    Other,
}

/// Who holds the listening sockets of `port`: `pid`, other processes, both or nobody (see
/// [`pid_listens_on`] for how).
pub fn port_listeners(pid: u32, port: u16) -> PortListeners {
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
        return PortListeners::None;
    }
    let ours: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| target.to_str().map(str::to_owned))
                .filter(|target| inodes.contains(target))
                .collect()
        })
        .unwrap_or_default();
    match (ours.is_empty(), inodes.iter().all(|i| ours.contains(i))) {
        (true, _) => PortListeners::Other,
        (false, true) => PortListeners::Pid,
        (false, false) => PortListeners::Shared,
    }
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
/// (`<target>/debug`, where `<target>` is `CARGO_TARGET_DIR` if set, else `<workspace>/target`),
/// panicking with cargo's output if the build fails.
///
/// Cargo does not build the binaries of other packages for a package's integration tests (not
/// even of a path dev-dependency), so harnesses call this once per test process. The `CARGO_*`
/// variables cargo sets for tests are removed first: some are tracked by build scripts and would
/// make the build recompile dependencies every time. `CARGO_TARGET_DIR` is the user's, not
/// cargo's, and is kept: the binaries land next to the tests' own (`CARGO_BIN_EXE_*`), where a
/// binary that looks beside itself (`knative-local --no-build`) finds them.
pub fn cargo_build(args: &[&str]) -> std::path::PathBuf {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives in the workspace");
    let mut command = std::process::Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        let kept = text == "CARGO_HOME" || text == "CARGO_TARGET_DIR";
        if (text.starts_with("CARGO_") && !kept) || text == "LD_LIBRARY_PATH" {
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
    target_dir(workspace, std::env::var_os("CARGO_TARGET_DIR")).join("debug")
}

/// Cargo's target directory for `workspace`: `configured` (`CARGO_TARGET_DIR`, relative to the
/// workspace if relative) or `<workspace>/target`.
fn target_dir(
    workspace: &std::path::Path,
    configured: Option<std::ffi::OsString>,
) -> std::path::PathBuf {
    match configured {
        Some(dir) if !dir.is_empty() => workspace.join(dir),
        _ => workspace.join("target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Socket, Type};
    use std::net::SocketAddr;
    use std::process::{Command, Stdio};

    fn reuse_port_listener(addr: SocketAddr) -> Socket {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_reuse_port(true).expect("SO_REUSEPORT");
        socket.bind(&addr.into()).expect("bind");
        socket.listen(16).expect("listen");
        socket
    }

    #[test]
    fn builds_go_to_the_configured_target_directory() {
        let workspace = std::path::Path::new("/src/ws");
        assert_eq!(target_dir(workspace, None), workspace.join("target"));
        assert_eq!(
            target_dir(workspace, Some("".into())),
            workspace.join("target")
        );
        assert_eq!(
            target_dir(workspace, Some("/tmp/tgt".into())),
            std::path::Path::new("/tmp/tgt")
        );
        assert_eq!(
            target_dir(workspace, Some("out".into())),
            workspace.join("out")
        );
    }

    #[test]
    fn a_port_bound_by_two_processes_is_shared() {
        let me = std::process::id();
        let first = reuse_port_listener("127.0.0.1:0".parse().unwrap());
        let addr = first.local_addr().unwrap().as_socket().unwrap();
        let port = addr.port();
        assert_eq!(port_listeners(me, port), PortListeners::Pid);
        // Another process takes the first socket over (it inherits the descriptor; ours closes).
        first.set_cloexec(false).expect("inheritable");
        let mut other = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        drop(first);
        let other_pid = other.id();
        assert_eq!(port_listeners(me, port), PortListeners::Other);
        assert!(!pid_listens_on(me, port));
        // This process binds the same port too, as a second activator with SO_REUSEPORT would.
        let second = reuse_port_listener(addr);
        assert_eq!(port_listeners(me, port), PortListeners::Shared);
        assert_eq!(port_listeners(other_pid, port), PortListeners::Shared);
        assert!(pid_listens_on(me, port), "listening, if not alone");
        other.kill().expect("kill");
        other.wait().expect("wait");
        assert_eq!(port_listeners(me, port), PortListeners::Pid);
        drop(second);
        assert_eq!(port_listeners(me, port), PortListeners::None);
    }
}
