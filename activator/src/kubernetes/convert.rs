//! API objects → what discovery keeps of them (spec §3.1, §3.8, §5.1–§5.3, §10).
//!
//! Every object arrives as a [`DynamicObject`] (typed metadata, untyped body) and is converted on
//! its own, with only the fields the activator uses: one malformed object is logged and skipped
//! instead of failing a whole list. The semantics are those of the file source
//! ([`crate::discovery`]): the same [`RevisionSpec`] defaults, `ip:port` dests in canonical form,
//! sorted and de-duplicated.
//!
//! Bad input, decided per upstream:
//! - a Revision without containers (or without `spec`) gets Go's `GetContainer()` fallback, an
//!   empty container: HTTP/1, probe optimisation on; the admission webhook never lets one through,
//!   so this only matters for hand-made objects;
//! - fields with the wrong JSON type, negative `containerConcurrency` or timeouts, or
//!   `containerConcurrency` above `u32::MAX` make the object malformed: it is skipped (the caller
//!   logs it and keeps the previous version, if any);
//! - Endpoints without the `serving.knative.dev/revision` label (or with an empty one) are ignored,
//!   as upstream's handlers do;
//! - addresses that are not IPs and ports outside 1..=65535 are dropped one by one (Go would join
//!   them into a dest that can never be dialled).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::ByteString;
use kube::api::DynamicObject;
use serde::Deserialize;
use serde_json::Value;

use crate::discovery::{
    ConfigMapObject, PrivateEndpoints, PublicEndpoints, RevisionSpec, SecretObject,
    DEFAULT_TIMEOUT_SECONDS,
};
use crate::throttler::{Protocol, RevisionId};

/// Label naming the revision of Endpoints and Services.
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";
/// Label with the revision's UID (private Endpoints carry it).
pub const REVISION_UID_LABEL: &str = "serving.knative.dev/revisionUID";
/// Label with the Knative Service of a revision.
pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
/// Label with the Configuration of a revision.
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
/// Label telling private from public Services/Endpoints.
pub const SERVICE_TYPE_LABEL: &str = "networking.internal.knative.dev/serviceType";

/// Selector of the private Endpoints (spec §5.1).
pub const PRIVATE_ENDPOINTS_SELECTOR: &str =
    "serving.knative.dev/revisionUID,networking.internal.knative.dev/serviceType=Private";
/// Selector of the public Endpoints (spec §3.8).
pub const PUBLIC_ENDPOINTS_SELECTOR: &str = "networking.internal.knative.dev/serviceType=Public";
/// Selector of the private Services (spec §10).
pub const PRIVATE_SERVICES_SELECTOR: &str = "networking.internal.knative.dev/serviceType=Private";

/// An object that could not be converted: which one and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind} {namespace}/{name}: {message}")]
pub struct ConvertError {
    /// `Revision`, `Endpoints`...
    pub kind: &'static str,
    /// Namespace (may be empty).
    pub namespace: String,
    /// Name (may be empty).
    pub name: String,
    /// What is wrong.
    pub message: String,
}

fn error(kind: &'static str, obj: &DynamicObject, message: impl Into<String>) -> ConvertError {
    ConvertError {
        kind,
        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
        name: obj.metadata.name.clone().unwrap_or_default(),
        message: message.into(),
    }
}

/// `(namespace, name)` of an object; cluster-scoped objects have an empty namespace.
pub type ObjectKey = (String, String);

/// The object's key; an object without a name is malformed.
pub fn object_key(kind: &'static str, obj: &DynamicObject) -> Result<ObjectKey, ConvertError> {
    match obj.metadata.name.as_deref() {
        Some(name) if !name.is_empty() => Ok((
            obj.metadata.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        )),
        _ => Err(error(kind, obj, "metadata.name is missing")),
    }
}

/// Deserialises `field` of the object's body (absent or null → `T::default()`).
fn field<T>(kind: &'static str, obj: &DynamicObject, field: &str) -> Result<T, ConvertError>
where
    T: for<'de> Deserialize<'de> + Default,
{
    match obj.data.get(field) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(value) => T::deserialize(value).map_err(|e| error(kind, obj, format!("{field}: {e}"))),
    }
}

fn label<'a>(obj: &'a DynamicObject, name: &str) -> Option<&'a str> {
    obj.metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(name))
        .map(String::as_str)
}

// ------------------------------------------------------------------------------------------------
// Revisions

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRevisionSpec {
    container_concurrency: Option<i64>,
    timeout_seconds: Option<i64>,
    response_start_timeout_seconds: Option<i64>,
    idle_timeout_seconds: Option<i64>,
    containers: Option<Vec<RawContainer>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawContainer {
    ports: Option<Vec<RawContainerPort>>,
    readiness_probe: Option<RawProbe>,
    startup_probe: Option<RawProbe>,
}

#[derive(Debug, Default, Deserialize)]
struct RawContainerPort {
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawProbe {
    exec: Option<Value>,
}

impl RawContainer {
    fn has_ports(&self) -> bool {
        self.ports.as_ref().is_some_and(|p| !p.is_empty())
    }
}

/// The serving container: the only one, or the first that declares ports (Go's
/// `RevisionSpec.GetContainer`); `None` stands for Go's empty fallback container.
fn serving_container(containers: &[RawContainer]) -> Option<&RawContainer> {
    match containers {
        [only] => Some(only),
        _ => containers.iter().find(|c| c.has_ports()),
    }
}

/// Probe optimisation (spec §5.2): off when the serving container has an exec readiness probe or
/// any startup probe, or when a sidecar (a container without ports, with more than one container)
/// has a startup probe.
fn probe_optimisation(containers: &[RawContainer]) -> bool {
    if let Some(serving) = serving_container(containers) {
        let exec_readiness = serving
            .readiness_probe
            .as_ref()
            .is_some_and(|p| p.exec.as_ref().is_some_and(|e| !e.is_null()));
        if exec_readiness || serving.startup_probe.is_some() {
            return false;
        }
    }
    let sidecar_startup = containers.len() > 1
        && containers
            .iter()
            .any(|c| !c.has_ports() && c.startup_probe.is_some());
    !sidecar_startup
}

fn non_negative(
    obj: &DynamicObject,
    name: &str,
    value: Option<i64>,
) -> Result<Option<u64>, ConvertError> {
    match value {
        None => Ok(None),
        Some(v) => u64::try_from(v)
            .map(Some)
            .map_err(|_| error("Revision", obj, format!("spec.{name}: {v} is negative"))),
    }
}

/// A `serving.knative.dev/v1` Revision → its settings.
pub fn revision_from_object(obj: &DynamicObject) -> Result<RevisionSpec, ConvertError> {
    let (namespace, name) = object_key("Revision", obj)?;
    let raw: RawRevisionSpec = field("Revision", obj, "spec")?;
    let mut spec = RevisionSpec::new(RevisionId::new(namespace, name));
    if let Some(cc) = non_negative(obj, "containerConcurrency", raw.container_concurrency)? {
        // Upstream takes any value the webhook admitted (its limit is configurable), so only
        // values that do not fit are rejected here.
        spec.container_concurrency = u32::try_from(cc).map_err(|_| {
            error(
                "Revision",
                obj,
                format!("spec.containerConcurrency: {cc} is too large"),
            )
        })?;
    }
    spec.timeout_seconds = non_negative(obj, "timeoutSeconds", raw.timeout_seconds)?
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    spec.response_start_timeout_seconds = non_negative(
        obj,
        "responseStartTimeoutSeconds",
        raw.response_start_timeout_seconds,
    )?;
    spec.idle_timeout_seconds = non_negative(obj, "idleTimeoutSeconds", raw.idle_timeout_seconds)?;
    let containers = raw.containers.unwrap_or_default();
    let first_port = serving_container(&containers)
        .and_then(|c| c.ports.as_ref())
        .and_then(|ports| ports.first())
        .and_then(|port| port.name.as_deref());
    if first_port == Some("h2c") {
        spec.protocol = Protocol::H2c;
    }
    spec.probe_optimisation = probe_optimisation(&containers);
    spec.service = label(obj, SERVICE_LABEL).unwrap_or_default().to_owned();
    spec.configuration = label(obj, CONFIGURATION_LABEL)
        .unwrap_or_default()
        .to_owned();
    Ok(spec)
}

// ------------------------------------------------------------------------------------------------
// Endpoints

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSubset {
    addresses: Option<Vec<RawAddress>>,
    not_ready_addresses: Option<Vec<RawAddress>>,
    ports: Option<Vec<RawPort>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAddress {
    ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawPort {
    name: Option<String>,
    port: Option<i64>,
}

/// One subset of an Endpoints object: named ports and ready / not-ready IPs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subset {
    /// `(name, port)`; unnamed ports have an empty name.
    pub ports: Vec<(String, u16)>,
    /// Ready addresses.
    pub ready: Vec<IpAddr>,
    /// Not-ready addresses.
    pub not_ready: Vec<IpAddr>,
}

/// An Endpoints object labelled with a revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointsInfo {
    /// Value of the `serving.knative.dev/revision` label.
    pub revision: String,
    /// Its subsets.
    pub subsets: Vec<Subset>,
}

fn ips(list: Option<Vec<RawAddress>>, dropped: &mut Vec<String>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for address in list.unwrap_or_default() {
        match address.ip.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => out.push(ip),
            _ => dropped.push(format!("address {:?}", address.ip.unwrap_or_default())),
        }
    }
    out
}

/// A core/v1 Endpoints → its subsets; `Ok(None)` when it has no revision label (ignored).
/// Dropped addresses and ports are logged.
pub fn endpoints_from_object(obj: &DynamicObject) -> Result<Option<EndpointsInfo>, ConvertError> {
    object_key("Endpoints", obj)?;
    let revision = match label(obj, REVISION_LABEL) {
        Some(rev) if !rev.is_empty() => rev.to_owned(),
        _ => return Ok(None),
    };
    let raw: Vec<RawSubset> = field("Endpoints", obj, "subsets")?;
    let mut dropped = Vec::new();
    let subsets = raw
        .into_iter()
        .map(|subset| Subset {
            ports: ports(subset.ports, &mut dropped),
            ready: ips(subset.addresses, &mut dropped),
            not_ready: ips(subset.not_ready_addresses, &mut dropped),
        })
        .collect();
    if !dropped.is_empty() {
        tracing::warn!(
            namespace = obj.metadata.namespace.as_deref().unwrap_or_default(),
            name = obj.metadata.name.as_deref().unwrap_or_default(),
            dropped = %dropped.join(", "),
            "ignoring invalid entries of an Endpoints object"
        );
    }
    Ok(Some(EndpointsInfo { revision, subsets }))
}

fn ports(list: Option<Vec<RawPort>>, dropped: &mut Vec<String>) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for port in list.unwrap_or_default() {
        let name = port.name.unwrap_or_default();
        match port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        {
            Some(number) => out.push((name, number)),
            None => dropped.push(format!("port {name:?} {:?}", port.port)),
        }
    }
    out
}

impl EndpointsInfo {
    /// Ready and not-ready `ip:port` dests of the subsets having a port named `port_name`, with
    /// that port's number (spec §5.3); sorted, de-duplicated, canonical.
    pub fn private_dests(&self, port_name: &str) -> PrivateEndpoints {
        let mut ready = BTreeSet::new();
        let mut not_ready = BTreeSet::new();
        for subset in &self.subsets {
            for (_, port) in subset.ports.iter().filter(|(name, _)| name == port_name) {
                let dest = |ip: &IpAddr| SocketAddr::new(*ip, *port).to_string();
                ready.extend(subset.ready.iter().map(dest));
                not_ready.extend(subset.not_ready.iter().map(dest));
            }
        }
        PrivateEndpoints {
            ready: ready.into_iter().collect(),
            not_ready: not_ready.into_iter().collect(),
            cluster_ip: None,
        }
    }

    /// Ready IPs of the subsets having a port named `port_name` (spec §3.8); sorted,
    /// de-duplicated, canonical.
    pub fn activator_ips(&self, port_name: &str) -> PublicEndpoints {
        let ips: BTreeSet<String> = self
            .subsets
            .iter()
            .filter(|s| s.ports.iter().any(|(name, _)| name == port_name))
            .flat_map(|s| s.ready.iter().map(IpAddr::to_string))
            .collect();
        PublicEndpoints {
            activator_ips: ips.into_iter().collect(),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Services

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServiceSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    ports: Option<Vec<RawPort>>,
}

/// A private Service: its cluster IP and named service ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `spec.clusterIP`; `None` for headless (`None`), empty or invalid values.
    pub cluster_ip: Option<IpAddr>,
    /// `(name, port)` of `spec.ports` (the *service* ports, not the target ports).
    pub ports: Vec<(String, u16)>,
}

impl ServiceInfo {
    /// `clusterIP:port` for the service port named `port_name` (spec §5.1, §11 item 51).
    pub fn cluster_ip_dest(&self, port_name: &str) -> Option<String> {
        let ip = self.cluster_ip?;
        let (_, port) = self.ports.iter().find(|(name, _)| name == port_name)?;
        Some(SocketAddr::new(ip, *port).to_string())
    }
}

/// A core/v1 Service → cluster IP and ports.
pub fn service_from_object(obj: &DynamicObject) -> Result<ServiceInfo, ConvertError> {
    object_key("Service", obj)?;
    let raw: RawServiceSpec = field("Service", obj, "spec")?;
    let mut dropped = Vec::new();
    let ports = ports(raw.ports, &mut dropped);
    if !dropped.is_empty() {
        tracing::warn!(
            namespace = obj.metadata.namespace.as_deref().unwrap_or_default(),
            name = obj.metadata.name.as_deref().unwrap_or_default(),
            dropped = %dropped.join(", "),
            "ignoring invalid ports of a Service"
        );
    }
    Ok(ServiceInfo {
        cluster_ip: raw.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()),
        ports,
    })
}

// ------------------------------------------------------------------------------------------------
// ConfigMaps and Secrets

/// A ConfigMap → labels and data.
pub fn config_map_from_object(obj: &DynamicObject) -> Result<ConfigMapObject, ConvertError> {
    object_key("ConfigMap", obj)?;
    let data: BTreeMap<String, String> = field("ConfigMap", obj, "data")?;
    Ok(ConfigMapObject {
        labels: obj.metadata.labels.clone().unwrap_or_default(),
        data,
    })
}

/// A Secret → its base64-decoded data.
pub fn secret_from_object(obj: &DynamicObject) -> Result<SecretObject, ConvertError> {
    object_key("Secret", obj)?;
    let data: BTreeMap<String, ByteString> = field("Secret", obj, "data")?;
    Ok(SecretObject {
        data: data.into_iter().map(|(k, v)| (k, v.0)).collect(),
    })
}
