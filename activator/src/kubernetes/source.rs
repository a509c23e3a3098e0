//! The Kubernetes discovery source, and the startup sequence that picks and starts a source
//! (spec §1.4).

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;

use super::client::{build_client, ClientSource, KubeFlags};
use super::reflect::{run_publisher, run_watch, Shared};
use super::state::WatchKind;
use super::version::wait_for_version;
use crate::config::Config;
use crate::discovery::{DiscoverySource, FileSource, RevisionSpec, Snapshot};
use crate::network_config::CONFIG_NETWORK;

/// How often the wait for the initial sync logs what it still waits for.
const SYNC_LOG_PERIOD: Duration = Duration::from_secs(10);

/// The Kubernetes discovery source: six watches (Revisions, private and public Endpoints,
/// private Services, and the system namespace's ConfigMaps and Secrets) feeding one
/// [`SnapshotCell`](crate::discovery::SnapshotCell). Its tasks stop when `shutdown` turns true.
#[derive(Debug)]
pub struct KubeSource {
    shared: Arc<Shared>,
}

impl KubeSource {
    /// Starts the watches and the publisher. Must be called inside a Tokio runtime.
    pub fn start(
        client: Client,
        system_namespace: &str,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<KubeSource> {
        let shared = Arc::new(Shared::new());
        for kind in WatchKind::ALL {
            tokio::spawn(run_watch(
                client.clone(),
                kind,
                system_namespace.to_owned(),
                shared.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(run_publisher(shared.clone(), shutdown));
        Arc::new(KubeSource { shared })
    }

    /// Snapshots published so far that differed from the previous one (diagnostics).
    pub fn publications(&self) -> u64 {
        self.shared.publications()
    }

    /// Waits until every watch has delivered its initial list and the first snapshot is
    /// published, logging every [`SYNC_LOG_PERIOD`] which watches are still pending.
    pub async fn wait_synced(&self) {
        let mut synced = self.shared.synced_receiver();
        loop {
            if *synced.borrow_and_update() {
                return;
            }
            match tokio::time::timeout(SYNC_LOG_PERIOD, synced.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => std::future::pending::<()>().await,
                Err(_) => {
                    let pending: Vec<&str> = self
                        .shared
                        .stores()
                        .pending()
                        .into_iter()
                        .map(WatchKind::describe)
                        .collect();
                    tracing::warn!(
                        pending = %pending.join(", "),
                        "still waiting for the initial list of"
                    );
                }
            }
        }
    }
}

impl DiscoverySource for KubeSource {
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.cell.subscribe()
    }

    fn subscribe_changes(&self) -> crate::discovery::ChangeFeed {
        self.shared.cell.subscribe_changes()
    }

    fn synced(&self) -> bool {
        self.shared.cell.synced()
    }

    fn current(&self) -> Arc<Snapshot> {
        self.shared.cell.current()
    }

    fn revision(&self, namespace: &str, name: &str) -> Option<Arc<RevisionSpec>> {
        self.shared.cell.revision(namespace, name)
    }
}

/// Names the ConfigMaps of `required` that `snapshot` lacks.
pub fn missing_config_maps<'a>(snapshot: &Snapshot, required: &[&'a str]) -> Vec<&'a str> {
    required
        .iter()
        .copied()
        .filter(|name| snapshot.system().config_map(name).is_none())
        .collect()
}

/// Picks the discovery source from the environment and starts it (spec §1.4 steps 1 and 4, and
/// the ConfigMap check of step 8):
/// - `ACTIVATOR_DISCOVERY_FILE` set → the file source;
/// - else `--kubeconfig`, `KUBECONFIG` or `KUBERNETES_SERVICE_HOST` → Kubernetes: client, API
///   server version check, watches, wait for the initial sync, then `config-network`,
///   `$CONFIG_LOGGING_NAME` and `$CONFIG_OBSERVABILITY_NAME` must exist;
/// - neither → an error naming both options.
///
/// Every error is fatal (the message is meant for the operator).
pub async fn start_discovery(
    config: &Config,
    flags: &KubeFlags,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<dyn DiscoverySource>, String> {
    if let Some(path) = &config.discovery_file {
        let source = FileSource::start(path.clone(), config.discovery_poll, shutdown)
            .map_err(|e| e.to_string())?;
        return Ok(source);
    }
    let settings = &config.kube;
    let Some(client_source) =
        ClientSource::choose(flags, settings.kubeconfig.as_deref(), settings.in_cluster)
    else {
        return Err(
            "no discovery source: set ACTIVATOR_DISCOVERY_FILE to a revisions file, or \
                    run in a Kubernetes cluster (KUBERNETES_SERVICE_HOST) or set KUBECONFIG \
                    (or --kubeconfig) for Kubernetes discovery"
                .to_owned(),
        );
    };
    let client = build_client(&client_source, flags.server.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let version = wait_for_version(&settings.min_version, settings.version_wait, || {
        let client = client.clone();
        async move {
            client
                .apiserver_version()
                .await
                .map(|info| info.git_version)
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    tracing::info!(%version, "Kubernetes API server version accepted");

    let source = KubeSource::start(client, &config.system_namespace, shutdown);
    source.wait_synced().await;

    let required = [
        CONFIG_NETWORK,
        settings.config_logging_name.as_str(),
        settings.config_observability_name.as_str(),
    ];
    let missing = missing_config_maps(&source.current(), &required);
    if !missing.is_empty() {
        return Err(format!(
            "configmap(s) {} not found in namespace {:?} (required at startup)",
            missing
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            config.system_namespace
        ));
    }
    Ok(source)
}
