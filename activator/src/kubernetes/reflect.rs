//! The watch tasks and the publisher.
//!
//! One task per watch follows a kube-rs [`watcher`] stream (list, then watch from the list's
//! resourceVersion with bookmarks; a dropped connection re-watches from the last version seen; a
//! `410 Gone` relists; errors back off with kube's default exponential backoff) and applies its
//! events to the shared [`Stores`]. Each change bumps a generation counter; the publisher waits
//! for a bump, lets [`DEBOUNCE`] pass so that a burst (a relist of thousands of objects, a rolling
//! update) becomes one snapshot, then derives it from the last one, recomputing only the
//! revisions the burst touched, and publishes it with their names. Nothing is published before
//! every watch has delivered its initial list, so the source is not `synced` before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::watch;

use super::convert::{
    object_key, PRIVATE_ENDPOINTS_SELECTOR, PRIVATE_SERVICES_SELECTOR, PUBLIC_ENDPOINTS_SELECTOR,
};
use super::state::{Stores, WatchKind};
use crate::discovery::SnapshotCell;

/// How long the publisher lets changes accumulate before it publishes. Publishing is
/// incremental (its cost follows the revisions a burst touched), so a short window keeps an
/// Endpoints change's way to the throttler short while a burst still becomes one snapshot.
pub const DEBOUNCE: Duration = Duration::from_millis(5);

/// State shared by the watch tasks, the publisher and the source.
#[derive(Debug)]
pub(crate) struct Shared {
    stores: Mutex<Stores>,
    /// Bumped at every change of the stores.
    changes: watch::Sender<u64>,
    /// Turns true after the first publication.
    synced: watch::Sender<bool>,
    /// Snapshots published that differed from the previous one.
    publications: AtomicU64,
    pub(crate) cell: SnapshotCell,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            stores: Mutex::new(Stores::default()),
            changes: watch::Sender::new(0),
            synced: watch::Sender::new(false),
            publications: AtomicU64::new(0),
            cell: SnapshotCell::new(),
        }
    }

    pub(crate) fn stores(&self) -> MutexGuard<'_, Stores> {
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Snapshots published that differed from the previous one.
    pub(crate) fn publications(&self) -> u64 {
        self.publications.load(Ordering::Relaxed)
    }

    pub(crate) fn synced_receiver(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Applies one watcher event.
    pub(crate) fn on_event(&self, kind: WatchKind, event: Event<DynamicObject>) {
        match event {
            Event::Init => {
                tracing::debug!(watch = kind.describe(), "listing");
                self.stores().relist_start(kind);
            }
            Event::InitApply(obj) => {
                if let Some((key, Some(item))) = convert(kind, &obj) {
                    self.stores().relist_apply(kind, key, item);
                }
            }
            Event::InitDone => {
                let count = {
                    let mut stores = self.stores();
                    stores.relist_done(kind);
                    stores.len(kind)
                };
                tracing::info!(watch = kind.describe(), objects = count, "list complete");
                self.changed();
            }
            Event::Apply(obj) => {
                // A malformed update is skipped: the previous version (if any) stays.
                if let Some((key, item)) = convert(kind, &obj) {
                    self.stores().apply(kind, key, item);
                    self.changed();
                }
            }
            Event::Delete(obj) => {
                if let Ok(key) = object_key("object", &obj) {
                    self.stores().delete(kind, &key);
                    self.changed();
                }
            }
        }
    }
}

/// The object's key and converted form; `None` (logged) when it is malformed.
fn convert(
    kind: WatchKind,
    obj: &DynamicObject,
) -> Option<(super::convert::ObjectKey, Option<super::state::Item>)> {
    let converted = object_key("object", obj).and_then(|key| Ok((key, kind.convert(obj)?)));
    match converted {
        Ok(pair) => Some(pair),
        Err(error) => {
            tracing::warn!(watch = kind.describe(), %error, "skipping malformed object");
            None
        }
    }
}

/// The API and watch configuration of a watch.
fn api_and_config(
    client: &Client,
    kind: WatchKind,
    system_namespace: &str,
) -> (Api<DynamicObject>, watcher::Config) {
    let resource = match kind {
        WatchKind::Revisions => ApiResource {
            group: "serving.knative.dev".into(),
            version: "v1".into(),
            api_version: "serving.knative.dev/v1".into(),
            kind: "Revision".into(),
            plural: "revisions".into(),
        },
        WatchKind::PrivateEndpoints | WatchKind::PublicEndpoints => {
            core_resource("Endpoints", "endpoints")
        }
        WatchKind::PrivateServices => core_resource("Service", "services"),
        WatchKind::ConfigMaps => core_resource("ConfigMap", "configmaps"),
        WatchKind::Secrets => core_resource("Secret", "secrets"),
    };
    let config = watcher::Config::default();
    match kind {
        WatchKind::Revisions => (Api::all_with(client.clone(), &resource), config),
        WatchKind::PrivateEndpoints => (
            Api::all_with(client.clone(), &resource),
            config.labels(PRIVATE_ENDPOINTS_SELECTOR),
        ),
        WatchKind::PublicEndpoints => (
            Api::all_with(client.clone(), &resource),
            config.labels(PUBLIC_ENDPOINTS_SELECTOR),
        ),
        WatchKind::PrivateServices => (
            Api::all_with(client.clone(), &resource),
            config.labels(PRIVATE_SERVICES_SELECTOR),
        ),
        WatchKind::ConfigMaps | WatchKind::Secrets => (
            Api::namespaced_with(client.clone(), system_namespace, &resource),
            config,
        ),
    }
}

fn core_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Follows one watch until `shutdown` turns true.
pub(crate) async fn run_watch(
    client: Client,
    kind: WatchKind,
    system_namespace: String,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (api, config) = api_and_config(&client, kind, &system_namespace);
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    loop {
        let next = tokio::select! {
            () = shutdown_requested(&mut shutdown) => return,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(event)) => shared.on_event(kind, event),
            Some(Err(error)) => {
                // The watcher resumes by itself (re-watch, or relist after 410 Gone) after a
                // backoff; the last known state stays published meanwhile.
                tracing::warn!(watch = kind.describe(), %error, "watch error; retrying");
            }
            None => return,
        }
    }
}

/// Publishes a snapshot after each burst of changes, once every watch is synced.
pub(crate) async fn run_publisher(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = shared.changes.subscribe();
    loop {
        tokio::select! {
            () = shutdown_requested(&mut shutdown) => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        tokio::time::sleep(DEBOUNCE).await;
        changes.mark_unchanged();
        let (snapshot, changes) = {
            let mut stores = shared.stores();
            if !stores.all_synced() {
                continue;
            }
            stores.take_update()
        };
        let revisions = snapshot.len();
        let changed = shared.cell.publish_changes(snapshot, changes);
        if changed {
            shared.publications.fetch_add(1, Ordering::Relaxed);
        }
        let first = shared
            .synced
            .send_if_modified(|synced| !std::mem::replace(synced, true));
        if first {
            tracing::info!(revisions, "Kubernetes discovery synced");
        } else if changed {
            tracing::debug!(revisions, "discovery snapshot published");
        }
    }
}

/// Resolves once `true` is observed; never if the sender is dropped first.
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
