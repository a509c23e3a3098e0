//! The running stack: the real `activator` with the file discovery source, the autoscaler
//! stand-in, and 0..N instances of the sample revision (each = the sample app + a real
//! `queue-proxy` with the environment the Knative controller injects).
//!
//! The discovery file plays the part of the revision's Endpoints: an instance is listed as
//! `notReady` from its start, `ready` once its queue-proxy answers the kubelet-style readiness
//! probe, and is removed when it stops or dies. Every rewrite is atomic (temp file + rename).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::autoscaler::{scrape, Scaler, ScalingConfig, StatsEndpoint};
use crate::client::HttpClient;
use crate::process::{describe, signal, Registry};

/// Namespace of the sample revision.
pub const NAMESPACE: &str = "default";
/// Service (and configuration) of the sample revision.
pub const SERVICE: &str = "hello";
/// The sample revision.
pub const REVISION: &str = "hello-00001";
/// The activator's `POD_NAME`.
pub const ACTIVATOR_POD: &str = "activator-local";
/// `Host` that names the revision for the activator (spec activator §2.5).
pub const REVISION_HOST: &str = "hello-00001.default.svc.cluster.local";

/// How the stack is put together.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Directory holding the `activator`, `queue-proxy` and `sample-app` binaries.
    pub bin_dir: PathBuf,
    /// The user container (default `<bin_dir>/sample-app`); it must listen on `$PORT`.
    pub app: Option<PathBuf>,
    /// Logs and the discovery file go here.
    pub run_dir: PathBuf,
    /// The activator's HTTP/1.1 + h2c port (`None`: a free one).
    pub activator_port: Option<u16>,
    /// containerConcurrency of the revision.
    pub cc: u32,
    /// `timeoutSeconds` of the revision.
    pub timeout_seconds: u64,
    /// `QUEUE_DRAIN_QUIET_PERIOD_SECONDS` of every queue-proxy.
    pub drain_quiet_seconds: u64,
    /// Longest wait for a process to come up.
    pub start_timeout: Duration,
    /// The stand-in's rule.
    pub scaling: ScalingConfig,
}

impl StackConfig {
    /// Defaults: cc 2, timeout 60 s, drain quiet period 1 s, start-up limit 20 s.
    pub fn new(bin_dir: PathBuf, run_dir: PathBuf) -> StackConfig {
        StackConfig {
            bin_dir,
            app: None,
            run_dir,
            activator_port: None,
            cc: 2,
            timeout_seconds: 60,
            drain_quiet_seconds: 1,
            start_timeout: Duration::from_secs(20),
            scaling: ScalingConfig::default(),
        }
    }
}

/// Why the stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A port asked for explicitly is taken.
    #[error("port {port} ({what}) is already in use: stop whatever listens there, choose another port, or leave the option out to use a free one")]
    PortInUse {
        /// The port.
        port: u16,
        /// Which listener.
        what: &'static str,
    },
    /// A binary is not built.
    #[error("{0} does not exist: build it with `cargo build --release -p activator -p queue-proxy -p sample-app` (or let knative-local build it)")]
    MissingBinary(PathBuf),
    /// The user container did not come up.
    #[error("the sample app did not start: {0}")]
    AppFailed(String),
    /// The activator did not come up.
    #[error("the activator did not start: {0}")]
    ActivatorFailed(String),
    /// Files or sockets.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
}

/// One thing that happened, for the live output and the demo report.
#[derive(Clone, Debug)]
pub struct Event {
    /// When.
    pub at: Instant,
    /// What.
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// The activator listens and its autoscaler websocket is connected.
    ActivatorReady,
    /// The activator exited by itself.
    ActivatorExited(String),
    /// The stand-in changed the instance count.
    Scaled {
        /// Instances before.
        from: usize,
        /// Instances wanted.
        to: usize,
        /// Observed concurrency.
        observed: f64,
        /// `poke` (activator websocket) or `stats`.
        trigger: &'static str,
    },
    /// An instance was started (listed as not ready).
    InstanceStarting(String),
    /// It passed its readiness probe (listed as ready).
    InstanceReady {
        /// Instance name.
        name: String,
        /// From spawn to ready.
        after: Duration,
    },
    /// It never became ready.
    InstanceFailed {
        /// Instance name.
        name: String,
        /// Why.
        reason: String,
    },
    /// It died while serving (removed from discovery at once).
    InstanceDied {
        /// Instance name.
        name: String,
        /// Which process, how.
        how: String,
    },
    /// Scale-down started: removed from discovery, SIGTERM to its queue-proxy.
    InstanceDraining(String),
    /// Scale-down finished.
    InstanceStopped {
        /// Instance name.
        name: String,
        /// SIGTERM to queue-proxy exit.
        drain: Duration,
        /// The queue-proxy exited 0 on its own.
        graceful: bool,
        /// Highest concurrency the app saw.
        highest: Option<u64>,
        /// Requests the app served.
        served: Option<u64>,
    },
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::ActivatorReady => {
                write!(f, "activator ready (autoscaler websocket connected)")
            }
            EventKind::ActivatorExited(how) => write!(f, "activator exited: {how}"),
            EventKind::Scaled {
                from,
                to,
                observed,
                trigger,
            } => write!(
                f,
                "scale {from} -> {to} (observed concurrency {observed:.2}, from {trigger})"
            ),
            EventKind::InstanceStarting(name) => write!(f, "{name}: starting (listed notReady)"),
            EventKind::InstanceReady { name, after } => write!(
                f,
                "{name}: ready after {:.0} ms (listed ready)",
                after.as_secs_f64() * 1000.0
            ),
            EventKind::InstanceFailed { name, reason } => {
                write!(f, "{name}: failed to start: {reason}")
            }
            EventKind::InstanceDied { name, how } => {
                write!(f, "{name}: died ({how}); removed from discovery")
            }
            EventKind::InstanceDraining(name) => {
                write!(
                    f,
                    "{name}: removed from discovery, SIGTERM to its queue-proxy (drain)"
                )
            }
            EventKind::InstanceStopped {
                name,
                drain,
                graceful,
                highest,
                served,
            } => {
                let opt = |v: &Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
                write!(
                    f,
                    "{name}: stopped, drain {:.1} s ({}), served {}, max concurrency {}",
                    drain.as_secs_f64(),
                    if *graceful {
                        "graceful exit 0"
                    } else {
                        "NOT graceful"
                    },
                    opt(served),
                    opt(highest)
                )
            }
        }
    }
}

/// Phase of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Spawned, not ready yet.
    Starting,
    /// Serving (listed ready).
    Ready,
    /// Being drained.
    Stopping,
    /// A process exited during start-up.
    Failed,
}

/// A public view of one instance.
#[derive(Clone, Debug)]
pub struct InstanceInfo {
    /// `hello-00001-<n>`.
    pub name: String,
    /// Phase.
    pub phase: Phase,
    /// The queue-proxy's main port (the pod address in discovery).
    pub queue_addr: SocketAddr,
    /// The queue-proxy's stats port.
    pub stats_addr: SocketAddr,
    /// The app's port.
    pub app_addr: SocketAddr,
    /// Pid of the queue-proxy.
    pub queue_pid: u32,
    /// Pid of the app.
    pub app_pid: u32,
}

struct Instance {
    info: InstanceInfo,
    failure: Option<String>,
    queue_exit: watch::Receiver<Option<String>>,
    app_exit: watch::Receiver<Option<String>>,
}

#[derive(Default)]
struct State {
    instances: BTreeMap<u64, Instance>,
    next_index: u64,
    events: Vec<Event>,
    shutting_down: bool,
}

struct Shared {
    config: StackConfig,
    app: PathBuf,
    discovery: PathBuf,
    registry: Registry,
    client: HttpClient,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    events: broadcast::Sender<Event>,
}

/// The running stack. Dropping it SIGKILLs every process; [`Stack::shutdown`] stops gracefully.
pub struct Stack {
    shared: Arc<Shared>,
    stats: Arc<StatsEndpoint>,
    activator_pid: u32,
    activator_exit: watch::Receiver<Option<String>>,
    activator_addr: SocketAddr,
    activator_h2c_addr: SocketAddr,
    scaler: tokio::task::JoinHandle<()>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.scaler.abort();
        self.shared.registry.kill_all();
    }
}

/// Kills every registered process when dropped while armed.
struct KillOnDrop(Option<Registry>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(registry) = &self.0 {
            registry.kill_all();
        }
    }
}

fn free_port() -> Result<u16, StackError> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| StackError::Io("no free loopback port".into(), e))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The last `bytes` of a log file, for error messages.
pub fn log_tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).trim().to_owned()
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, state: &mut State, kind: EventKind) {
        let event = Event {
            at: Instant::now(),
            kind,
        };
        state.events.push(event.clone());
        let _ = self.events.send(event);
        self.version.send_modify(|v| *v += 1);
    }

    /// Rewrites the discovery file from `state` (temp file + rename).
    fn write_discovery(&self, state: &State) {
        let list = |phase: Phase| -> Vec<String> {
            state
                .instances
                .values()
                .filter(|i| i.info.phase == phase)
                .map(|i| i.info.queue_addr.to_string())
                .collect()
        };
        let document = discovery_document(
            self.config.cc,
            self.config.timeout_seconds,
            &list(Phase::Ready),
            &list(Phase::Starting),
        );
        let tmp = self.discovery.with_extension("json.tmp");
        if let Err(e) =
            std::fs::write(&tmp, document).and_then(|()| std::fs::rename(&tmp, &self.discovery))
        {
            eprintln!(
                "knative-local: cannot rewrite {}: {e}",
                self.discovery.display()
            );
        }
        self.version.send_modify(|v| *v += 1);
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.config.run_dir.join(format!("{name}.log"))
    }
}

/// The discovery document for the sample revision (format: activator/src/discovery/document.rs).
pub fn discovery_document(
    cc: u32,
    timeout_seconds: u64,
    ready: &[String],
    not_ready: &[String],
) -> String {
    let document = json!({"revisions": [{
        "namespace": NAMESPACE,
        "name": REVISION,
        "containerConcurrency": cc,
        "timeoutSeconds": timeout_seconds,
        "protocol": "http1",
        "service": SERVICE,
        "configuration": SERVICE,
        "pods": {"ready": ready, "notReady": not_ready},
    }]});
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

/// Spawns a monitor that reaps `child` and publishes how it ended.
fn monitor(
    registry: &Registry,
    mut child: tokio::process::Child,
) -> (u32, watch::Receiver<Option<String>>) {
    let pid = child.id().unwrap_or(0);
    let (tx, rx) = watch::channel(None);
    let registry = registry.clone();
    tokio::spawn(async move {
        let how = match child.wait().await {
            Ok(status) => describe(&status),
            Err(e) => format!("wait failed: {e}"),
        };
        registry.reaped(pid);
        let _ = tx.send(Some(how));
    });
    (pid, rx)
}

/// Waits until `exit` reports, at most `limit`.
async fn exited_within(
    exit: &mut watch::Receiver<Option<String>>,
    limit: Duration,
) -> Option<String> {
    tokio::time::timeout(limit, exit.wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|v| v.clone()))
}

impl Stack {
    /// Starts the activator, the stand-in and `initial_scale` instances, and waits until all
    /// are ready. On error every process started so far is killed.
    pub async fn start(config: StackConfig) -> Result<Stack, StackError> {
        let activator_bin = config.bin_dir.join("activator");
        let queue_bin = config.bin_dir.join("queue-proxy");
        let app = config
            .app
            .clone()
            .unwrap_or_else(|| config.bin_dir.join("sample-app"));
        for bin in [&activator_bin, &queue_bin, &app] {
            if !bin.exists() {
                return Err(StackError::MissingBinary(bin.clone()));
            }
        }
        let activator_port = match config.activator_port {
            Some(port) => {
                if TcpListener::bind(("127.0.0.1", port)).is_err() {
                    return Err(StackError::PortInUse {
                        port,
                        what: "activator HTTP",
                    });
                }
                port
            }
            None => free_port()?,
        };
        let h2c_port = free_port()?;
        std::fs::create_dir_all(&config.run_dir).map_err(|e| {
            StackError::Io(format!("cannot create {}", config.run_dir.display()), e)
        })?;
        let discovery = config.run_dir.join("discovery.json");
        let stats = StatsEndpoint::start(NAMESPACE, REVISION)
            .await
            .map_err(|e| StackError::Io("cannot listen for the activator's stats".into(), e))?;
        let shared = Arc::new(Shared {
            app,
            discovery: discovery.clone(),
            registry: Registry::default(),
            client: HttpClient::new(Duration::from_secs(2)),
            state: Mutex::new(State::default()),
            version: watch::Sender::new(0),
            events: broadcast::channel(1024).0,
            config,
        });
        shared.write_discovery(&shared.lock());
        // Any early return below kills what was started so far.
        let guard = KillOnDrop(Some(shared.registry.clone()));

        let log = shared.log_path("activator");
        let env = [
            ("POD_NAME", ACTIVATOR_POD.to_owned()),
            ("POD_IP", "127.0.0.1".to_owned()),
            ("SYSTEM_NAMESPACE", "knative-serving".to_owned()),
            ("CLUSTER_DOMAIN", "cluster.local".to_owned()),
            ("ACTIVATOR_HTTP1_PORT", activator_port.to_string()),
            ("ACTIVATOR_H2C_PORT", h2c_port.to_string()),
            ("ACTIVATOR_AUTOSCALER_URL", stats.url()),
            ("ACTIVATOR_DISCOVERY_FILE", discovery.display().to_string()),
            ("ACTIVATOR_DRAIN_SLEEP_SECONDS", "0".to_owned()),
            // The discovery file stands in for the Endpoints watch: re-read it often, so that an
            // instance the stand-in saw die leaves the activator's pod set within milliseconds.
            ("ACTIVATOR_DISCOVERY_POLL_MILLIS", "5".to_owned()),
            ("ACTIVATOR_LOG_LEVEL", "info".to_owned()),
        ];
        let child = shared
            .registry
            .spawn(&activator_bin, &[], &env, &log)
            .map_err(|e| {
                StackError::ActivatorFailed(format!("cannot run {}: {e}", activator_bin.display()))
            })?;
        let (activator_pid, mut activator_exit) = monitor(&shared.registry, child);
        let activator_addr = loopback(activator_port);
        let deadline = Instant::now() + shared.config.start_timeout;
        loop {
            if let Some(how) = activator_exit.borrow_and_update().clone() {
                return Err(StackError::ActivatorFailed(format!(
                    "it exited ({how}); its log {} ends with:\n{}",
                    log.display(),
                    log_tail(&log, 2000)
                )));
            }
            let probe = shared
                .client
                .get(activator_addr, "/", &[("user-agent", "kube-probe/1.30")])
                .await;
            if matches!(&probe, Ok(r) if r.status == http::StatusCode::OK) {
                break;
            }
            if Instant::now() > deadline {
                return Err(StackError::ActivatorFailed(format!(
                    "not healthy within {:?} (last probe: {}); log: {}",
                    shared.config.start_timeout,
                    match probe {
                        Ok(r) => format!("{} {}", r.status, r.text().trim()),
                        Err(e) => e.to_string(),
                    },
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shared.emit(&mut shared.lock(), EventKind::ActivatorReady);

        let initial: Vec<_> = (0..shared.config.scaling.initial_scale)
            .map(|_| tokio::spawn(start_instance(Arc::clone(&shared))))
            .collect();
        for task in initial {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(StackError::AppFailed(reason)),
                Err(e) => return Err(StackError::AppFailed(e.to_string())),
            }
        }
        let stats = Arc::new(stats);
        let mut guard = guard;
        guard.0 = None;
        let scaler = tokio::spawn(scale_loop(Arc::clone(&shared), Arc::clone(&stats)));
        Ok(Stack {
            shared,
            stats,
            activator_pid,
            activator_exit,
            activator_addr,
            activator_h2c_addr: loopback(h2c_port),
            scaler,
        })
    }

    /// The activator's HTTP/1.1 (+ h2c prior knowledge) address: where requests go.
    pub fn activator_addr(&self) -> SocketAddr {
        self.activator_addr
    }

    /// The activator's second (h2c) listener.
    pub fn activator_h2c_addr(&self) -> SocketAddr {
        self.activator_h2c_addr
    }

    /// The activator's pid.
    pub fn activator_pid(&self) -> u32 {
        self.activator_pid
    }

    /// How the activator exited, if it did.
    pub fn activator_exit(&self) -> Option<String> {
        self.activator_exit.borrow().clone()
    }

    /// The discovery file.
    pub fn discovery_file(&self) -> &Path {
        &self.shared.discovery
    }

    /// The stand-in's websocket endpoint.
    pub fn stats_endpoint(&self) -> &StatsEndpoint {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &StackConfig {
        &self.shared.config
    }

    /// Every instance now.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.shared
            .lock()
            .instances
            .values()
            .map(|i| i.info.clone())
            .collect()
    }

    /// Ready instances now.
    pub fn ready_instances(&self) -> Vec<InstanceInfo> {
        let mut all = self.instances();
        all.retain(|i| i.phase == Phase::Ready);
        all
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.shared.lock().events.clone()
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Processes still running (activator, apps, queue-proxies).
    pub fn live_processes(&self) -> usize {
        self.shared.registry.len()
    }

    /// Waits until `check` holds (re-checked on every change and every 50 ms), at most `limit`.
    pub async fn wait_until<T>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&Stack) -> Option<T>,
    ) -> Result<T, String> {
        let mut changed = self.shared.version.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            changed.borrow_and_update();
            if let Some(value) = check(self) {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("timed out after {limit:?} waiting for {what}"));
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), changed.changed()).await;
        }
    }

    /// Stops gracefully: the activator first (SIGTERM, it finishes in-flight requests), then every
    /// instance with the same drain as a scale-down; anything still running after that is killed.
    pub async fn shutdown(self) -> Result<(), String> {
        self.scaler.abort();
        self.shared.lock().shutting_down = true;
        let mut problems = Vec::new();
        signal(self.activator_pid, libc::SIGTERM);
        let mut exit = self.activator_exit.clone();
        match exited_within(&mut exit, Duration::from_secs(15)).await {
            Some(how) if how == "exit code 0" => {}
            Some(how) => problems.push(format!("activator exited with {how}")),
            None => problems.push("activator did not exit within 15 s".to_owned()),
        }
        let indexes: Vec<u64> = self.shared.lock().instances.keys().copied().collect();
        let stops: Vec<_> = indexes
            .into_iter()
            .map(|i| tokio::spawn(stop_instance(Arc::clone(&self.shared), i)))
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
        for event in self.events() {
            if let EventKind::InstanceStopped {
                name,
                graceful: false,
                ..
            } = &event.kind
            {
                problems.push(format!("{name} did not drain gracefully"));
            }
        }
        self.shared.registry.kill_all();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Starts one instance and waits until it is ready. On failure it is cleaned up and the reason
/// returned.
async fn start_instance(shared: Arc<Shared>) -> Result<(), String> {
    let (index, name) = {
        let mut state = shared.lock();
        if state.shutting_down {
            return Err("the stack is shutting down".into());
        }
        state.next_index += 1;
        (state.next_index, format!("{REVISION}-{}", state.next_index))
    };
    let ports: Vec<u16> = (0..5)
        .map(|_| free_port())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let (app_port, queue_port, admin_port, stats_port, tls_port) =
        (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let app_log = shared.log_path(&format!("{name}-app"));
    let queue_log = shared.log_path(&format!("{name}-queue-proxy"));
    let app = shared
        .registry
        .spawn(
            &shared.app,
            &[],
            &[("PORT", app_port.to_string()), ("INSTANCE", name.clone())],
            &app_log,
        )
        .map_err(|e| format!("cannot run {}: {e}", shared.app.display()))?;
    let (app_pid, app_exit) = monitor(&shared.registry, app);
    let c = &shared.config;
    let env = [
        ("SERVING_NAMESPACE", NAMESPACE.to_owned()),
        ("SERVING_SERVICE", SERVICE.to_owned()),
        ("SERVING_CONFIGURATION", SERVICE.to_owned()),
        ("SERVING_REVISION", REVISION.to_owned()),
        ("SERVING_POD", format!("{REVISION}-deployment-{index}")),
        ("SERVING_POD_IP", "127.0.0.1".to_owned()),
        ("QUEUE_SERVING_PORT", queue_port.to_string()),
        ("QUEUE_SERVING_TLS_PORT", tls_port.to_string()),
        ("QUEUE_ADMIN_PORT", admin_port.to_string()),
        ("QUEUE_STATS_PORT", stats_port.to_string()),
        ("USER_PORT", app_port.to_string()),
        ("CONTAINER_CONCURRENCY", c.cc.to_string()),
        ("REVISION_TIMEOUT_SECONDS", c.timeout_seconds.to_string()),
        (
            "SERVING_READINESS_PROBE",
            format!(
                r#"{{"tcpSocket":{{"port":{app_port},"host":"127.0.0.1"}},"successThreshold":1}}"#
            ),
        ),
        ("SERVING_LOGGING_CONFIG", String::new()),
        ("SERVING_LOGGING_LEVEL", "info".to_owned()),
        (
            "QUEUE_DRAIN_QUIET_PERIOD_SECONDS",
            c.drain_quiet_seconds.to_string(),
        ),
    ];
    let queue = match shared.registry.spawn(
        &shared.config.bin_dir.join("queue-proxy"),
        &[],
        &env,
        &queue_log,
    ) {
        Ok(child) => child,
        Err(e) => {
            signal(app_pid, libc::SIGKILL);
            return Err(format!("cannot run the queue-proxy: {e}"));
        }
    };
    let (queue_pid, queue_exit) = monitor(&shared.registry, queue);
    let started = Instant::now();
    {
        let mut state = shared.lock();
        state.instances.insert(
            index,
            Instance {
                info: InstanceInfo {
                    name: name.clone(),
                    phase: Phase::Starting,
                    queue_addr: loopback(queue_port),
                    stats_addr: loopback(stats_port),
                    app_addr: loopback(app_port),
                    queue_pid,
                    app_pid,
                },
                failure: None,
                queue_exit: queue_exit.clone(),
                app_exit: app_exit.clone(),
            },
        );
        shared.write_discovery(&state);
        shared.emit(&mut state, EventKind::InstanceStarting(name.clone()));
    }
    tokio::spawn(watch_exit(
        Arc::clone(&shared),
        index,
        "app",
        app_exit,
        app_log.clone(),
    ));
    tokio::spawn(watch_exit(
        Arc::clone(&shared),
        index,
        "queue-proxy",
        queue_exit,
        queue_log,
    ));

    // Readiness: the kubelet's probe of the queue-proxy (spec queue-proxy §3.3).
    let deadline = started + shared.config.start_timeout;
    let failure = loop {
        match shared.lock().instances.get(&index) {
            // Scaled down (or the stack stopped) before it was ready: stop_instance cleans up.
            None => return Err(format!("{name} was removed during start-up")),
            Some(i) if i.info.phase == Phase::Stopping => {
                return Err(format!("{name} was stopped during start-up"))
            }
            Some(i) => {
                if let Some(reason) = i.failure.clone() {
                    break reason;
                }
            }
        }
        let probe = shared
            .client
            .get(
                loopback(queue_port),
                "/",
                &[
                    ("user-agent", "kube-probe/1.30"),
                    ("k-network-probe", "queue"),
                ],
            )
            .await;
        if matches!(&probe, Ok(r) if r.status == http::StatusCode::OK) {
            let mut state = shared.lock();
            let Some(instance) = state.instances.get_mut(&index) else {
                return Err(format!("{name} vanished during start-up"));
            };
            if instance.info.phase != Phase::Starting {
                return Err(format!("{name} stopped during start-up"));
            }
            instance.info.phase = Phase::Ready;
            shared.write_discovery(&state);
            shared.emit(
                &mut state,
                EventKind::InstanceReady {
                    name: name.clone(),
                    after: started.elapsed(),
                },
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            break format!(
                "not ready within {:?}; app log {}: {}",
                shared.config.start_timeout,
                app_log.display(),
                log_tail(&app_log, 500)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    signal(app_pid, libc::SIGKILL);
    signal(queue_pid, libc::SIGKILL);
    let mut state = shared.lock();
    state.instances.remove(&index);
    shared.write_discovery(&state);
    shared.emit(
        &mut state,
        EventKind::InstanceFailed {
            name: name.clone(),
            reason: failure.clone(),
        },
    );
    Err(format!("{name}: {failure}"))
}

/// Reacts to one process of instance `index` exiting: expected while stopping; a start-up
/// failure while starting; a death (removed from discovery, partner killed) while ready.
async fn watch_exit(
    shared: Arc<Shared>,
    index: u64,
    which: &'static str,
    mut exit: watch::Receiver<Option<String>>,
    log: PathBuf,
) {
    let Ok(how) = exit
        .wait_for(Option::is_some)
        .await
        .map(|v| v.clone().unwrap_or_default())
    else {
        return;
    };
    let mut state = shared.lock();
    if state.shutting_down {
        return;
    }
    let Some(instance) = state.instances.get_mut(&index) else {
        return;
    };
    match instance.info.phase {
        Phase::Stopping | Phase::Failed => {}
        Phase::Starting => {
            instance.info.phase = Phase::Failed;
            instance.failure = Some(format!(
                "{which} exited during start-up ({how}); its log {} ends with: {}",
                log.display(),
                log_tail(&log, 500)
            ));
        }
        Phase::Ready => {
            let info = instance.info.clone();
            state.instances.remove(&index);
            shared.write_discovery(&state);
            signal(info.app_pid, libc::SIGKILL);
            signal(info.queue_pid, libc::SIGKILL);
            shared.emit(
                &mut state,
                EventKind::InstanceDied {
                    name: info.name,
                    how: format!("{which} {how}"),
                },
            );
        }
    }
}

/// Scale-down of one instance, as Kubernetes terminates a pod: out of the endpoints (discovery)
/// and SIGTERM to the queue-proxy, which drains (quiet period, in-flight requests finish) and
/// exits; then the app's counters are read and the app gets SIGTERM.
async fn stop_instance(shared: Arc<Shared>, index: u64) {
    let (name, queue_pid, app_pid, app_addr, mut queue_exit, mut app_exit) = {
        let mut state = shared.lock();
        let Some(instance) = state.instances.get_mut(&index) else {
            return;
        };
        if instance.info.phase == Phase::Stopping {
            return;
        }
        instance.info.phase = Phase::Stopping;
        let i = &instance.info;
        let taken = (
            i.name.clone(),
            i.queue_pid,
            i.app_pid,
            i.app_addr,
            instance.queue_exit.clone(),
            instance.app_exit.clone(),
        );
        shared.write_discovery(&state);
        shared.emit(&mut state, EventKind::InstanceDraining(taken.0.clone()));
        taken
    };
    let began = Instant::now();
    signal(queue_pid, libc::SIGTERM);
    let limit =
        Duration::from_secs(shared.config.timeout_seconds + shared.config.drain_quiet_seconds + 10);
    let queue_how = exited_within(&mut queue_exit, limit).await;
    let drain = began.elapsed();
    if queue_how.is_none() {
        signal(queue_pid, libc::SIGKILL);
    }
    let counters = shared.client.get(app_addr, "/concurrency", &[]).await.ok();
    let field = |key: &str| {
        counters
            .as_ref()
            .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .and_then(|v| v.get(key).and_then(|n| n.as_u64()))
    };
    // The /concurrency request itself counts as one: it cannot raise `highest` above 1.
    let (highest, served) = (
        field("highest"),
        field("total").map(|t| t.saturating_sub(1)),
    );
    signal(app_pid, libc::SIGTERM);
    if exited_within(&mut app_exit, Duration::from_secs(5))
        .await
        .is_none()
    {
        signal(app_pid, libc::SIGKILL);
    }
    let mut state = shared.lock();
    state.instances.remove(&index);
    shared.emit(
        &mut state,
        EventKind::InstanceStopped {
            name,
            drain,
            graceful: queue_how.as_deref() == Some("exit code 0"),
            highest,
            served,
        },
    );
}

/// The stand-in's loop: every tick (or at once on a poke) observe, decide, act.
async fn scale_loop(shared: Arc<Shared>, stats: Arc<StatsEndpoint>) {
    let config = shared.config.scaling.clone();
    let mut scaler = Scaler::new(config.clone(), Instant::now());
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = ticker.tick() => "stats",
            _ = stats.poked.notified() => "poke",
        };
        let (current, ready): (usize, Vec<SocketAddr>) = {
            let state = shared.lock();
            let live = state
                .instances
                .values()
                .filter(|i| matches!(i.info.phase, Phase::Starting | Phase::Ready));
            (
                live.clone().count(),
                live.filter(|i| i.info.phase == Phase::Ready)
                    .map(|i| i.info.stats_addr)
                    .collect(),
            )
        };
        if trigger == "poke" && current > 0 {
            continue;
        }
        let now = Instant::now();
        let mut observed = stats.activator_concurrency(now, config.tick * 2);
        let scrapes =
            futures_util::future::join_all(ready.iter().map(|a| scrape(&shared.client, *a))).await;
        for stat in scrapes.into_iter().flatten() {
            observed += (stat.average_concurrent_requests
                - stat.average_proxied_concurrent_requests)
                .max(0.0);
        }
        let wanted = scaler.decide(now, observed, current);
        if wanted == current {
            continue;
        }
        {
            let mut state = shared.lock();
            if state.shutting_down {
                return;
            }
            shared.emit(
                &mut state,
                EventKind::Scaled {
                    from: current,
                    to: wanted,
                    observed,
                    trigger,
                },
            );
        }
        if wanted > current {
            for _ in current..wanted {
                tokio::spawn(start_instance(Arc::clone(&shared)));
            }
        } else {
            // Newest first, as a ReplicaSet prefers to delete the youngest pods.
            let victims: Vec<u64> = {
                let state = shared.lock();
                state
                    .instances
                    .iter()
                    .rev()
                    .filter(|(_, i)| matches!(i.info.phase, Phase::Starting | Phase::Ready))
                    .take(current - wanted)
                    .map(|(k, _)| *k)
                    .collect()
            };
            for index in victims {
                tokio::spawn(stop_instance(Arc::clone(&shared), index));
            }
        }
    }
}
