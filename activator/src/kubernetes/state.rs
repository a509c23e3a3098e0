//! What the watches know, and how it becomes a [`Snapshot`].
//!
//! Each watch keeps only the converted form of its objects ([`Item`]), keyed by namespace and
//! name. A relist (initial list, or after `410 Gone`) fills a fresh map that replaces the old one
//! when the list is complete, so objects deleted while the watch was down disappear and the
//! published state never shows a half-listed world.
//!
//! A snapshot is assembled from the maps: one entry per Revision, with its private Endpoints
//! (`ip:port` with the revision's port name), its private Service (`<rev>-private`, the ChildName
//! rule for long names) and its public Endpoints (activator IPs); plus the ConfigMaps and Secrets
//! of the system namespace. Endpoints or Services of revisions that do not exist are kept (the
//! revision may be listed later) but publish nothing, as upstream drops their events.
//!
//! Decision on a Go artifact: when a revision's private Endpoints object is *deleted* while the
//! Revision still exists, upstream drops the revision's watcher and the throttler keeps its last
//! dests (pods that are gone). Here the revision simply has no pods, exactly like Endpoints
//! without subsets: requests wait for pods instead of being sent to dead addresses. Public
//! Endpoints deletions change nothing, as upstream (this activator's index is only updated from
//! sets that contain its `POD_IP`).

use std::collections::HashMap;
use std::sync::Arc;

use kube::api::DynamicObject;

use super::convert::{
    config_map_from_object, endpoints_from_object, revision_from_object, secret_from_object,
    service_from_object, ConvertError, EndpointsInfo, ObjectKey, ServiceInfo,
};
use crate::backends::private_service_name;
use crate::discovery::{
    ConfigMapObject, RevisionEntry, RevisionSpec, SecretObject, Snapshot, SystemObjects,
};

/// The six watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchKind {
    /// `serving.knative.dev/v1` Revisions, all namespaces.
    Revisions,
    /// Private Endpoints, all namespaces.
    PrivateEndpoints,
    /// Public Endpoints, all namespaces.
    PublicEndpoints,
    /// Private Services, all namespaces.
    PrivateServices,
    /// ConfigMaps of the system namespace.
    ConfigMaps,
    /// Secrets of the system namespace.
    Secrets,
}

impl WatchKind {
    /// Every watch.
    pub const ALL: [WatchKind; 6] = [
        WatchKind::Revisions,
        WatchKind::PrivateEndpoints,
        WatchKind::PublicEndpoints,
        WatchKind::PrivateServices,
        WatchKind::ConfigMaps,
        WatchKind::Secrets,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// For logs.
    pub fn describe(self) -> &'static str {
        match self {
            WatchKind::Revisions => "revisions",
            WatchKind::PrivateEndpoints => "private endpoints",
            WatchKind::PublicEndpoints => "public endpoints",
            WatchKind::PrivateServices => "private services",
            WatchKind::ConfigMaps => "configmaps",
            WatchKind::Secrets => "secrets",
        }
    }

    /// Converts an object of this watch; `Ok(None)` for objects the activator ignores.
    pub fn convert(self, obj: &DynamicObject) -> Result<Option<Item>, ConvertError> {
        Ok(Some(match self {
            WatchKind::Revisions => Item::Revision(Arc::new(revision_from_object(obj)?)),
            WatchKind::PrivateEndpoints | WatchKind::PublicEndpoints => {
                match endpoints_from_object(obj)? {
                    Some(endpoints) => Item::Endpoints(endpoints),
                    None => return Ok(None),
                }
            }
            WatchKind::PrivateServices => Item::Service(service_from_object(obj)?),
            WatchKind::ConfigMaps => Item::ConfigMap(config_map_from_object(obj)?),
            WatchKind::Secrets => Item::Secret(secret_from_object(obj)?),
        }))
    }
}

/// A converted object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A Revision's settings.
    Revision(Arc<RevisionSpec>),
    /// Private or public Endpoints.
    Endpoints(EndpointsInfo),
    /// A private Service.
    Service(ServiceInfo),
    /// A ConfigMap.
    ConfigMap(ConfigMapObject),
    /// A Secret.
    Secret(SecretObject),
}

type Map = HashMap<ObjectKey, Item>;

/// The converted objects of every watch.
#[derive(Debug, Default)]
pub struct Stores {
    maps: [Map; 6],
    /// The map being filled by a relist in progress.
    relisting: [Option<Map>; 6],
    synced: [bool; 6],
}

impl Stores {
    /// An object was added or changed (`None`: it is now ignored, e.g. lost its label).
    pub fn apply(&mut self, kind: WatchKind, key: ObjectKey, item: Option<Item>) {
        let map = &mut self.maps[kind.index()];
        match item {
            Some(item) => {
                map.insert(key, item);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    /// An object was deleted.
    pub fn delete(&mut self, kind: WatchKind, key: &ObjectKey) {
        self.maps[kind.index()].remove(key);
    }

    /// A (re)list starts.
    pub fn relist_start(&mut self, kind: WatchKind) {
        self.relisting[kind.index()] = Some(Map::new());
    }

    /// One object of the list in progress.
    pub fn relist_apply(&mut self, kind: WatchKind, key: ObjectKey, item: Item) {
        self.relisting[kind.index()]
            .get_or_insert_with(Map::new)
            .insert(key, item);
    }

    /// The list is complete: it replaces what the watch knew.
    pub fn relist_done(&mut self, kind: WatchKind) {
        let i = kind.index();
        self.maps[i] = self.relisting[i].take().unwrap_or_default();
        self.synced[i] = true;
    }

    /// Whether every watch has delivered its initial list.
    pub fn all_synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// The watches still waiting for their initial list.
    pub fn pending(&self) -> Vec<WatchKind> {
        WatchKind::ALL
            .into_iter()
            .filter(|k| !self.synced[k.index()])
            .collect()
    }

    /// Number of objects a watch holds.
    pub fn len(&self, kind: WatchKind) -> usize {
        self.maps[kind.index()].len()
    }

    /// Whether no watch holds anything.
    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(Map::is_empty)
    }

    /// The snapshot of the current state.
    pub fn snapshot(&self) -> Snapshot {
        let private = by_revision(&self.maps[WatchKind::PrivateEndpoints.index()], |rev| {
            private_service_name(rev)
        });
        let public = by_revision(
            &self.maps[WatchKind::PublicEndpoints.index()],
            str::to_owned,
        );
        let services = &self.maps[WatchKind::PrivateServices.index()];
        let entries = self.maps[WatchKind::Revisions.index()]
            .values()
            .filter_map(|item| match item {
                Item::Revision(spec) => Some(spec),
                _ => None,
            })
            .map(|spec| {
                let id = &spec.id;
                let port = spec.protocol.port_name();
                let key = (id.namespace.as_str(), id.name.as_str());
                let mut private = private
                    .get(&key)
                    .map(|endpoints| endpoints.private_dests(port))
                    .unwrap_or_default();
                let service_key = (id.namespace.clone(), private_service_name(&id.name));
                if let Some(Item::Service(service)) = services.get(&service_key) {
                    private.cluster_ip = service.cluster_ip_dest(port);
                }
                RevisionEntry {
                    spec: spec.clone(),
                    private,
                    public: public
                        .get(&key)
                        .map(|endpoints| endpoints.activator_ips(port))
                        .unwrap_or_default(),
                }
            });
        let mut system = SystemObjects::default();
        for ((_, name), item) in &self.maps[WatchKind::ConfigMaps.index()] {
            if let Item::ConfigMap(config_map) = item {
                system.config_maps.insert(name.clone(), config_map.clone());
            }
        }
        for ((_, name), item) in &self.maps[WatchKind::Secrets.index()] {
            if let Item::Secret(secret) = item {
                system.secrets.insert(name.clone(), secret.clone());
            }
        }
        Snapshot::new(entries).with_system(system)
    }
}

/// Endpoints by (namespace, revision label). When several objects name the same revision, the
/// one named `preferred(revision)` wins, else the lowest name (deterministic).
fn by_revision(
    map: &Map,
    preferred: impl Fn(&str) -> String,
) -> HashMap<(&str, &str), &EndpointsInfo> {
    let mut chosen: HashMap<(&str, &str), (&str, &EndpointsInfo)> = HashMap::new();
    for ((namespace, name), item) in map {
        let Item::Endpoints(endpoints) = item else {
            continue;
        };
        let key = (namespace.as_str(), endpoints.revision.as_str());
        match chosen.get(&key) {
            Some((current, _)) => {
                let wanted = preferred(&endpoints.revision);
                let rank = |n: &str| (n != wanted, n.to_owned());
                if rank(name) < rank(current) {
                    chosen.insert(key, (name, endpoints));
                }
            }
            None => {
                chosen.insert(key, (name, endpoints));
            }
        }
    }
    chosen.into_iter().map(|(k, (_, e))| (k, e)).collect()
}
