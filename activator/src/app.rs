//! Process wiring: configuration, discovery, throttler, backends, autoscaler channel, listeners,
//! and the graceful shutdown of spec §8.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use knative_common::drain::InFlightCounter;
use knative_common::env::ProcessEnv;
use knative_common::server::{
    bind_dual_stack, bind_dual_stack_shared, serve_tls, serve_with_slots, BindError,
    ConnectionSlots, Protocols, ServerLimits,
};
use knative_common::signals::Signals;
use tokio::sync::watch;

use crate::backends::{BackendSettings, BackendsManager};
use crate::config::{Config, DEFAULT_DRAIN_TIMEOUT};
use crate::discovery::DiscoverySource;
use crate::handler::pools::DestPools;
use crate::handler::{ActivatorService, ActivatorState};
use crate::network_config::{NetworkConfig, CONFIG_NETWORK};
use crate::reporter::{
    discover_cluster_domain, AutoscalerConnection, ConcurrencyReporter, REPORT_INTERVAL,
};
use crate::throttler::Throttler;
use crate::tls::SystemTls;

/// The binary's entry point.
pub fn main() -> ExitCode {
    let config = match Config::from_env(&ProcessEnv, discover_cluster_domain()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("activator: {error}");
            return ExitCode::from(1);
        }
    };
    crate::observability::logging::init(
        vec![
            ("knative.dev/controller", "activator".to_owned()),
            ("knative.dev/pod", config.pod_name.clone()),
        ],
        &std::env::var("ACTIVATOR_LOG_LEVEL").unwrap_or_default(),
    );
    // The main runtime runs discovery, probing, the autoscaler channel, observability and the
    // TLS listener; requests on the plaintext ports are served by the worker threads (see
    // `spawn_workers`).
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(config)),
        Err(error) => {
            eprintln!("activator: cannot start the runtime: {error}");
            ExitCode::from(1)
        }
    }
}

fn fatal(message: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("activator: {message}");
    ExitCode::from(1)
}

/// Runs the activator until it has drained after SIGTERM/SIGINT.
pub async fn run(config: Config) -> ExitCode {
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(error) => return fatal(format!("cannot install signal handlers: {error}")),
    };
    // Listeners stop first; the background machinery (discovery, probing, the autoscaler
    // channel) stops after the listeners have drained.
    let (listeners_stop, listeners_rx) = watch::channel(false);
    let (background_stop, background_rx) = watch::channel(false);

    // The file source when ACTIVATOR_DISCOVERY_FILE is set, else Kubernetes (version check and
    // initial sync happen here, before any listener exists: spec §1.4).
    let flags = crate::kubernetes::KubeFlags::parse(std::env::args().skip(1));
    let discovery: Arc<dyn DiscoverySource> = tokio::select! {
        started = crate::kubernetes::start_discovery(&config, &flags, background_rx.clone()) => {
            match started {
                Ok(source) => source,
                Err(error) => return fatal(error),
            }
        }
        () = signals.next() => {
            tracing::info!("signal received before discovery was ready; exiting");
            return ExitCode::SUCCESS;
        }
    };
    // config-network (spec §1.3, §1.4 step 5): read once; TLS and mesh modes need a restart to
    // change. The file source without a config-network section means the defaults.
    let network =
        match NetworkConfig::from_data(discovery.current().system().config_map(CONFIG_NETWORK)) {
            Ok(network) => network,
            Err(error) => return fatal(format!("Failed to construct network config: {error}")),
        };
    let system_tls = if network.system_internal_tls {
        tracing::info!("Knative system-internal-tls is enabled");
        match SystemTls::start(
            &ProcessEnv,
            &config.system_namespace,
            discovery.subscribe(),
            background_rx.clone(),
        ) {
            Ok(tls) => Some(tls),
            Err(error) => return fatal(error),
        }
    } else {
        None
    };
    // config-logging and config-observability (spec §1.3, §1.4 steps 2–3).
    let observability = match crate::observability::Observability::start(
        &config.pod_name,
        &config.system_namespace,
        &ProcessEnv,
        discovery.subscribe(),
        listeners_rx.clone(),
        background_rx.clone(),
    ) {
        Ok(observability) => observability,
        Err(error) => return fatal(error),
    };
    let throttler = Arc::new(Throttler::with_max_queued_total(config.max_queued_total));
    let _backends = BackendsManager::spawn(
        discovery.subscribe_changes(),
        throttler.clone(),
        BackendSettings {
            probe_timeout: config.probe_timeout,
            probe_frequency: config.probe_frequency,
            self_ip: config.pod_ip.clone(),
            max_queued: config.max_queued_per_revision,
            max_concurrent_probes: config.max_concurrent_probes,
            revision_idle_timeout: config.revision_idle_timeout,
            mesh_mode: network.mesh_mode,
            passthrough_lb: network.mesh_pod_addressability,
            ..BackendSettings::default()
        },
        background_rx.clone(),
    );
    let autoscaler =
        AutoscalerConnection::spawn(config.autoscaler_url.clone(), background_rx.clone());
    let sender = autoscaler.clone();
    observability.watch_autoscaler(&autoscaler);
    let gauge_source = discovery.clone();
    let reporter = Arc::new(
        ConcurrencyReporter::new(config.pod_name.clone(), move |batch| {
            sender.send(batch);
        })
        .with_concurrency_observer(move |id, concurrency| {
            if let Some(revision) = gauge_source.revision(&id.namespace, &id.name) {
                observability.record_concurrency(&revision, concurrency);
            }
        }),
    );
    let reporter_task = tokio::spawn(reporter.clone().run(REPORT_INTERVAL));
    // One set of pools per worker thread (and one for the TLS listener on the main runtime):
    // a request's upstream connection lives on the thread that serves the request.
    let workers = config.worker_threads.unwrap_or_else(default_workers);
    let pools: Vec<&'static DestPools> = (0..=workers)
        .map(|_| {
            let pools = match &system_tls {
                Some(tls) => DestPools::with_tls(
                    config.max_idle_per_host,
                    tls.trust.clone(),
                    config.queue_tls_port,
                ),
                None => DestPools::new(config.max_idle_per_host),
            };
            &*Box::leak(Box::new(pools))
        })
        .collect();
    let sweepers: Vec<_> = pools
        .iter()
        .map(|&pools| tokio::spawn(pools.run_sweeper()))
        .collect();
    let lookup_source = discovery.clone();
    let state: &'static ActivatorState = Box::leak(Box::new(ActivatorState {
        throttler,
        revisions: Arc::new(move |ns: &str, name: &str| lookup_source.revision(ns, name)),
        reporter,
        autoscaler: autoscaler.clone(),
        terminating: Default::default(),
        in_flight: InFlightCounter::default(),
        cluster_domain: config.cluster_domain.clone(),
        passthrough_lb: network.mesh_pod_addressability,
        observability,
    }));

    let bound = (|| -> Result<_, BindError> {
        Ok((
            bind_dual_stack_shared(config.http1_port, workers)?,
            bind_dual_stack_shared(config.h2c_port, workers)?,
        ))
    })();
    let (http1, h2c) = match bound {
        Ok(listeners) => listeners,
        Err(error) => return fatal(error),
    };
    let limits = config.limits;
    let served = match spawn_workers(
        http1.into_iter().zip(h2c).collect(),
        &pools[1..],
        state,
        limits,
        &listeners_rx,
        &background_rx,
    ) {
        Ok(served) => served,
        Err(error) => return fatal(format!("cannot start the worker threads: {error}")),
    };
    let tls_pools = pools[0];
    tls_pools.serve_on(&tokio::runtime::Handle::current());
    // The TLS listener (8112) runs next to the plaintext ones, with the same chain.
    let https = match &system_tls {
        None => None,
        Some(tls) => match bind_dual_stack(config.https_port) {
            Ok(listener) => Some(tokio::spawn(serve_tls(
                listener,
                tls.acceptor.clone(),
                limits,
                move |remote| ActivatorService::new(state, tls_pools, remote),
                listeners_rx.clone(),
            ))),
            Err(error) => return fatal(error),
        },
    };
    tracing::info!(
        https_port = https.as_ref().map(|_| config.https_port),
        http1_port = config.http1_port,
        h2c_port = config.h2c_port,
        autoscaler = %config.autoscaler_url,
        "activator listening"
    );

    signals.next().await;
    state.terminating.store(true, Ordering::Release);
    tracing::info!("Received TERM signal; failing health checks and draining");
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("activator: second signal received, exiting immediately");
        std::process::exit(1);
    });
    tokio::time::sleep(config.drain_sleep).await;
    let _ = listeners_stop.send(true);
    for worker in served {
        let _ = worker.await;
    }
    if let Some(server) = https {
        let _ = server.await;
    }
    if !state.in_flight.wait_idle(DEFAULT_DRAIN_TIMEOUT).await {
        tracing::warn!(
            in_flight = state.in_flight.current(),
            "in-flight requests did not finish in time"
        );
    }
    let _ = background_stop.send(true);
    reporter_task.abort();
    for sweeper in sweepers {
        sweeper.abort();
    }
    autoscaler.closed().await;
    state.observability.shutdown().await;
    tracing::info!("Shutdown complete, exiting...");
    ExitCode::SUCCESS
}

/// Request-serving worker threads when `ACTIVATOR_WORKER_THREADS` does not set them, sized like
/// Go's automaxprocs: the container's CPU limit, else every CPU.
fn default_workers() -> usize {
    knative_common::env::cgroup_cpu_limit().unwrap_or_else(knative_common::env::available_cpus)
}

/// Starts one worker thread per pair of (HTTP/1.1 + h2c port, h2c port) listeners, each with its
/// own current-thread runtime and its own `pools`. A connection, the requests on it, the
/// upstream connections they use and the tasks hyper spawns for them all stay on the worker
/// that accepted the connection: no request crosses threads on its way through (the kernel
/// spreads connections over the workers' `SO_REUSEPORT` sockets). Each worker serves until
/// `listeners_rx` turns true and its connections have closed, then reports on the returned
/// receiver, and keeps its runtime (tunnels, pooled connections) until `background_rx` turns
/// true.
fn spawn_workers(
    listeners: Vec<(std::net::TcpListener, std::net::TcpListener)>,
    pools: &[&'static DestPools],
    state: &'static ActivatorState,
    limits: ServerLimits,
    listeners_rx: &watch::Receiver<bool>,
    background_rx: &watch::Receiver<bool>,
) -> std::io::Result<Vec<tokio::sync::oneshot::Receiver<()>>> {
    let workers = listeners.len();
    // The connection cap is per port: the workers' sockets of a port share it.
    let slots = [(); 2].map(|()| ConnectionSlots::shared(limits.max_connections));
    let mut served = Vec::with_capacity(workers);
    for (index, ((http1, h2c), &pools)) in listeners.into_iter().zip(pools).enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        pools.serve_on(runtime.handle());
        // Registered with the worker's own reactor.
        let listeners = {
            let _context = runtime.enter();
            [
                tokio::net::TcpListener::from_std(http1)?,
                tokio::net::TcpListener::from_std(h2c)?,
            ]
        };
        let (done, done_rx) = tokio::sync::oneshot::channel();
        served.push(done_rx);
        let listeners_rx = listeners_rx.clone();
        let slots = slots.clone();
        let mut background_rx = background_rx.clone();
        std::thread::Builder::new()
            .name(format!("activator-worker-{index}"))
            .spawn(move || {
                crate::worker::enter(u32::try_from(index).unwrap_or(crate::worker::NO_WORKER - 1));
                runtime.block_on(async move {
                    let servers = listeners.into_iter().zip(slots).map(|(listener, slots)| {
                        tokio::spawn(serve_with_slots(
                            listener,
                            Protocols::Http1AndH2c,
                            limits,
                            slots,
                            move |remote| ActivatorService::new(state, pools, remote),
                            listeners_rx.clone(),
                        ))
                    });
                    let servers: Vec<_> = servers.collect();
                    for server in servers {
                        let _ = server.await;
                    }
                    let _ = done.send(());
                    let _ = background_rx.wait_for(|stop| *stop).await;
                });
            })?;
    }
    Ok(served)
}
