//! What the watches know, and how it becomes a [`Snapshot`].
//!
//! Each watch keeps only the converted form of its objects ([`Item`]), keyed by namespace and
//! name. A relist (initial list, or after `410 Gone`) fills a fresh map that replaces the old one
//! when the list is complete, so objects deleted while the watch was down disappear and the
//! published state never shows a half-listed world.
//!
//! Snapshots are derived incrementally (see [`Stores`]). An entry is assembled from the maps: one entry per Revision, with its private Endpoints
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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::api::DynamicObject;

use super::convert::{
    config_map_from_object, endpoints_from_object, revision_from_object, secret_from_object,
    service_from_object, ConvertError, EndpointsInfo, ObjectKey, ServiceInfo,
};
use crate::backends::private_service_name;
use crate::discovery::{
    Changes, ConfigMapObject, RevisionEntry, RevisionSpec, SecretObject, Snapshot, SystemObjects,
};
use crate::throttler::RevisionId;

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

/// (namespace, revision name).
type RevisionKey = (String, String);

/// The names of the Endpoints objects labelled with one revision, sorted. Almost always one:
/// a one-element vector instead of a `BTreeSet`, whose first node alone takes a few hundred
/// bytes (twice per revision, 10,000s of revisions).
#[derive(Debug, Default)]
struct NameSet(Vec<String>);

impl NameSet {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|n| n.as_str().cmp(name))
    }

    fn insert(&mut self, name: String) {
        if let Err(at) = self.position(&name) {
            self.0.reserve_exact(1);
            self.0.insert(at, name);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(at) = self.position(name) {
            self.0.remove(at);
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    fn first(&self) -> Option<&String> {
        self.0.first()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The endpoints watches, for [`Stores::endpoints_index`].
const PRIVATE: usize = 0;
const PUBLIC: usize = 1;

/// What changed since the last [`Stores::take_update`].
#[derive(Debug, Default)]
struct Dirty {
    /// A relist replaced a watch's objects: reconcile every revision.
    all: bool,
    revisions: HashSet<RevisionKey>,
    system: bool,
}

/// The converted objects of every watch, indexes to find a revision's objects, and what changed
/// since the last published snapshot.
///
/// Every event marks the revisions it concerns (a Revision: itself; Endpoints: the revision of
/// their label, before and after; a private Service: the revision it belongs to); the next
/// [`Stores::take_update`] recomputes those entries alone and derives the next snapshot from the
/// last one. Only a relist (initial list, or after `410 Gone`) recomputes everything.
#[derive(Debug, Default)]
pub struct Stores {
    maps: [Map; 6],
    /// The map being filled by a relist in progress.
    relisting: [Option<Map>; 6],
    synced: [bool; 6],
    /// Endpoints object names by (namespace, revision label): private, public.
    endpoints_index: [HashMap<RevisionKey, NameSet>; 2],
    /// The revision each (namespace, private Service name) belongs to.
    service_owner: HashMap<ObjectKey, String>,
    dirty: Dirty,
    /// The last snapshot taken by [`Stores::take_update`].
    published: Snapshot,
}

fn endpoints_slot(kind: WatchKind) -> Option<usize> {
    match kind {
        WatchKind::PrivateEndpoints => Some(PRIVATE),
        WatchKind::PublicEndpoints => Some(PUBLIC),
        _ => None,
    }
}

fn endpoints_revision(item: Option<&Item>) -> Option<&str> {
    match item {
        Some(Item::Endpoints(endpoints)) => Some(endpoints.revision.as_str()),
        _ => None,
    }
}

impl Stores {
    /// An object was added or changed (`None`: it is now ignored, e.g. lost its label).
    pub fn apply(&mut self, kind: WatchKind, key: ObjectKey, item: Option<Item>) {
        self.unindex(kind, &key);
        let map = &mut self.maps[kind.index()];
        match item {
            Some(item) => {
                map.insert(key.clone(), item);
            }
            None => {
                map.remove(&key);
            }
        }
        self.index(kind, &key);
    }

    /// An object was deleted.
    pub fn delete(&mut self, kind: WatchKind, key: &ObjectKey) {
        self.unindex(kind, key);
        self.maps[kind.index()].remove(key);
    }

    /// Marks what the object under `key` concerns and removes it from the indexes (before it
    /// changes or goes).
    fn unindex(&mut self, kind: WatchKind, key: &ObjectKey) {
        let (namespace, name) = key;
        match kind {
            WatchKind::Revisions => {
                self.dirty.revisions.insert(key.clone());
                let service = (namespace.clone(), private_service_name(name));
                self.service_owner.remove(&service);
            }
            WatchKind::PrivateEndpoints | WatchKind::PublicEndpoints => {
                let slot = endpoints_slot(kind).unwrap_or(PRIVATE);
                let label = endpoints_revision(self.maps[kind.index()].get(key)).map(str::to_owned);
                if let Some(revision) = label {
                    let revision_key = (namespace.clone(), revision);
                    if let Some(names) = self.endpoints_index[slot].get_mut(&revision_key) {
                        names.remove(name);
                        if names.is_empty() {
                            self.endpoints_index[slot].remove(&revision_key);
                        }
                    }
                    self.dirty.revisions.insert(revision_key);
                }
            }
            WatchKind::PrivateServices | WatchKind::ConfigMaps | WatchKind::Secrets => {
                self.mark_service_or_system(kind, key);
            }
        }
    }

    /// Marks what a private Service (its revision) or a system object concerns; the same before
    /// and after a change.
    fn mark_service_or_system(&mut self, kind: WatchKind, key: &ObjectKey) {
        if kind == WatchKind::PrivateServices {
            if let Some(owner) = self.service_owner.get(key) {
                self.dirty.revisions.insert((key.0.clone(), owner.clone()));
            }
        } else {
            self.dirty.system = true;
        }
    }

    /// Adds the object under `key` (as it is now) to the indexes and marks what it concerns.
    fn index(&mut self, kind: WatchKind, key: &ObjectKey) {
        let (namespace, name) = key;
        match kind {
            WatchKind::Revisions => {
                if self.maps[kind.index()].contains_key(key) {
                    let service = (namespace.clone(), private_service_name(name));
                    self.service_owner.insert(service, name.clone());
                }
            }
            WatchKind::PrivateEndpoints | WatchKind::PublicEndpoints => {
                let slot = endpoints_slot(kind).unwrap_or(PRIVATE);
                if let Some(revision) = endpoints_revision(self.maps[kind.index()].get(key)) {
                    let revision_key = (namespace.clone(), revision.to_owned());
                    self.endpoints_index[slot]
                        .entry(revision_key.clone())
                        .or_default()
                        .insert(name.clone());
                    self.dirty.revisions.insert(revision_key);
                }
            }
            WatchKind::PrivateServices | WatchKind::ConfigMaps | WatchKind::Secrets => {
                self.mark_service_or_system(kind, key);
            }
        }
    }

    /// Rebuilds the indexes of one watch from its map.
    fn reindex(&mut self, kind: WatchKind) {
        match kind {
            WatchKind::Revisions => {
                self.service_owner = self.maps[kind.index()]
                    .keys()
                    .map(|(namespace, name)| {
                        (
                            (namespace.clone(), private_service_name(name)),
                            name.clone(),
                        )
                    })
                    .collect();
            }
            WatchKind::PrivateEndpoints | WatchKind::PublicEndpoints => {
                let slot = endpoints_slot(kind).unwrap_or(PRIVATE);
                let mut index: HashMap<RevisionKey, NameSet> = HashMap::new();
                for ((namespace, name), item) in &self.maps[kind.index()] {
                    if let Some(revision) = endpoints_revision(Some(item)) {
                        index
                            .entry((namespace.clone(), revision.to_owned()))
                            .or_default()
                            .insert(name.clone());
                    }
                }
                self.endpoints_index[slot] = index;
            }
            WatchKind::PrivateServices | WatchKind::ConfigMaps | WatchKind::Secrets => {}
        }
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
        self.reindex(kind);
        match kind {
            WatchKind::ConfigMaps | WatchKind::Secrets => self.dirty.system = true,
            _ => self.dirty.all = true,
        }
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

    /// The snapshot of the current state, computed whole.
    pub fn snapshot(&self) -> Snapshot {
        let entries = self.maps[WatchKind::Revisions.index()]
            .keys()
            .filter_map(|(namespace, name)| self.entry(namespace, name));
        Snapshot::new(entries).with_system(self.system())
    }

    /// The next snapshot and the revisions that changed since the previous call: only the
    /// revisions marked by events since then are recomputed, unless a relist asks for all.
    pub fn take_update(&mut self) -> (Snapshot, Changes) {
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.all {
            self.published = self.snapshot();
            return (self.published.clone(), Changes::All);
        }
        let mut changed = HashSet::new();
        for (namespace, name) in dirty.revisions {
            let id = RevisionId::new(namespace, name);
            match self.entry(&id.namespace, &id.name) {
                Some(entry) => {
                    if self.published.get(&id) != Some(&entry) {
                        self.published.set(entry);
                        changed.insert(id);
                    }
                }
                None => {
                    if self.published.remove(&id).is_some() {
                        changed.insert(id);
                    }
                }
            }
        }
        if dirty.system {
            self.published = std::mem::take(&mut self.published).with_system(self.system());
        }
        (self.published.clone(), Changes::Revisions(changed))
    }

    /// One revision's entry: its Revision with its private Endpoints (`ip:port` with the
    /// revision's port name), private Service and public Endpoints (activator IPs).
    fn entry(&self, namespace: &str, name: &str) -> Option<RevisionEntry> {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(Item::Revision(spec)) = self.maps[WatchKind::Revisions.index()].get(&key) else {
            return None;
        };
        let port = spec.protocol.port_name();
        let mut private = self
            .endpoints_of(PRIVATE, &key, &private_service_name(name))
            .map(|endpoints| endpoints.private_dests(port))
            .unwrap_or_default();
        let service_key = (key.0.clone(), private_service_name(name));
        if let Some(Item::Service(service)) =
            self.maps[WatchKind::PrivateServices.index()].get(&service_key)
        {
            private.cluster_ip = service.cluster_ip_dest(port);
        }
        let public = self
            .endpoints_of(PUBLIC, &key, name)
            .map(|endpoints| endpoints.activator_ips(port))
            .unwrap_or_default();
        Some(RevisionEntry {
            spec: spec.clone(),
            private,
            public,
        })
    }

    /// The Endpoints of one watch for a revision. When several objects name the same revision,
    /// the one named `preferred` wins, else the lowest name (deterministic).
    fn endpoints_of(
        &self,
        slot: usize,
        revision: &RevisionKey,
        preferred: &str,
    ) -> Option<&EndpointsInfo> {
        let names = self.endpoints_index[slot].get(revision)?;
        let chosen = if names.contains(preferred) {
            preferred
        } else {
            names.first()?.as_str()
        };
        let kind = if slot == PRIVATE {
            WatchKind::PrivateEndpoints
        } else {
            WatchKind::PublicEndpoints
        };
        match self.maps[kind.index()].get(&(revision.0.clone(), chosen.to_owned())) {
            Some(Item::Endpoints(endpoints)) => Some(endpoints),
            _ => None,
        }
    }

    /// The system namespace's ConfigMaps and Secrets.
    fn system(&self) -> SystemObjects {
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
        system
    }
}
