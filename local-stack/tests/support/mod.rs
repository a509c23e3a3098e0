//! Shared helpers of the local-stack end-to-end tests: debug binaries built once, a stack
//! configuration with test-sized timings, requests through the activator, and an orphan check.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use local_stack::client::{HttpClient, Reply};
use local_stack::stack::{NAMESPACE, REVISION};
use local_stack::{ScalingConfig, Stack, StackConfig};

/// Upper bound for anything that should happen "soon" on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The workspace's debug target directory, with `activator`, `queue-proxy` and `sample-app`
/// built (once per test process; cargo does not build other packages' binaries for tests).
pub fn bin_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        test_support::cargo_build(&["-p", "activator", "-p", "queue-proxy", "-p", "sample-app"])
    })
}

/// A fresh run directory under the test target directory.
pub fn run_dir(name: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("local-stack-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// cc 2, quick timings: tick 500 ms, stable window 2 s, scale to zero after 60 s (tests that
/// want it sooner set it), drain quiet period 1 s.
pub fn config(name: &str) -> StackConfig {
    let mut config = StackConfig::new(bin_dir().to_path_buf(), run_dir(name));
    config.cc = 2;
    config.scaling = ScalingConfig {
        target: 2.0,
        max_scale: 3,
        initial_scale: 1,
        stable_window: Duration::from_secs(2),
        scale_to_zero_grace: Duration::from_secs(60),
        tick: Duration::from_millis(500),
    };
    config
}

/// `GET path` through the activator for the sample revision.
pub async fn get(client: &HttpClient, stack: &Stack, path: &str) -> Result<Reply, String> {
    local_stack::demo::revision_get(client, stack, path).await
}

/// The app's `/concurrency` counters (`current`, `highest`, `total`), read directly.
pub async fn app_counters(client: &HttpClient, app: std::net::SocketAddr) -> (u64, u64, u64) {
    let reply = client
        .get(app, "/concurrency", &[])
        .await
        .expect("read the app's counters");
    let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("counters are JSON");
    let n = |k: &str| v[k].as_u64().expect("a counter");
    (n("current"), n("highest"), n("total"))
}

/// Processes whose stdout is a file under `dir` (every process the stack starts logs there).
pub fn processes_logging_to(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/fd/1"))
                .is_ok_and(|target| target.starts_with(dir))
        })
        .collect()
}

/// Waits until no process logs to `dir` (killed processes may take a moment to be reaped).
pub async fn assert_no_orphans(dir: &Path) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let left = processes_logging_to(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The namespace and revision header pairs, for hand-built requests.
pub const REVISION_HEADERS: [(&str, &str); 2] = [
    ("knative-serving-namespace", NAMESPACE),
    ("knative-serving-revision", REVISION),
];
