//! The discovery file's format (JSON) and its strict validation.
//!
//! ```json
//! {"revisions": [{
//!   "namespace": "default", "name": "hello-00001",
//!   "containerConcurrency": 2, "timeoutSeconds": 300,
//!   "responseStartTimeoutSeconds": null, "idleTimeoutSeconds": null,
//!   "protocol": "http1",
//!   "service": "hello", "configuration": "hello",
//!   "probeOptimisation": true,
//!   "pods": {"ready": ["127.0.0.1:8012"], "notReady": []},
//!   "clusterIP": null,
//!   "activators": ["127.0.0.1"]
//! }]}
//! ```
//!
//! Two optional top-level sections stand in for the system namespace's objects (spec §1.3, §9):
//! `"configMaps": {"config-observability": {"labels": {}, "data": {"metrics-protocol": "none"}}}`
//! and `"secrets": {"routing-serving-certs": {"data": {"tls.crt": "-----BEGIN …"}}}` (Secret data
//! as text, typically PEM, not base64). Names must be DNS-1123 subdomains; `labels` and `data` map
//! strings to strings.
//!
//! Only `namespace` and `name` are required. Defaults: `containerConcurrency` 0, `timeoutSeconds`
//! 300, `protocol` `http1` (or `h2c`), `service`/`configuration` empty, `probeOptimisation` true,
//! no pods, no cluster IP, no activators. Unknown fields, bad types, names that are not DNS-1123
//! labels, `containerConcurrency` above 1000, `timeoutSeconds` 0, addresses that are not
//! `ip:port` (IPv6 bracketed) or plain IPs, duplicate pods/activators and duplicate revisions are
//! errors naming the revision and the field. Addresses are stored in canonical form.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::system::{ConfigMapObject, SecretObject, SystemObjects};
use super::{
    PrivateEndpoints, PublicEndpoints, RevisionEntry, RevisionSpec, Snapshot,
    DEFAULT_TIMEOUT_SECONDS, MAX_CONTAINER_CONCURRENCY,
};
use crate::throttler::{Protocol, RevisionId};
use crate::FastHash;

/// Longest value quoted in an error message.
const MAX_QUOTED: usize = 80;

/// Fields of a revision object.
const REVISION_FIELDS: &[&str] = &[
    "namespace",
    "name",
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
    "protocol",
    "service",
    "configuration",
    "probeOptimisation",
    "pods",
    "clusterIP",
    "activators",
];

/// What is wrong with a discovery document: where (revision and field) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct DocumentError {
    /// E.g. `revision default/hello-00001 (revisions[0]), field containerConcurrency`.
    pub location: String,
    /// E.g. `5000 is out of range 0..=1000`.
    pub message: String,
}

impl DocumentError {
    fn new(location: impl Into<String>, message: impl Into<String>) -> Self {
        DocumentError {
            location: location.into(),
            message: message.into(),
        }
    }
}

/// Parses and validates a discovery document.
pub fn parse_document(bytes: &[u8]) -> Result<Snapshot, DocumentError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| DocumentError::new("document", format!("not valid JSON: {e}")))?;
    let Value::Object(top) = value else {
        return Err(DocumentError::new(
            "document",
            format!(
                "expected an object with a \"revisions\" array, got {}",
                quote(&value)
            ),
        ));
    };
    if let Some(key) = top.keys().find(|k| !TOP_FIELDS.contains(&k.as_str())) {
        return Err(DocumentError::new(
            format!("field {key}"),
            "unknown field (the document has \"revisions\", \"configMaps\" and \"secrets\")",
        ));
    }
    let system = parse_system(&top)?;
    let revisions = match top.get("revisions") {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(DocumentError::new(
                "field revisions",
                format!("expected an array, got {}", quote(other)),
            ))
        }
        None => {
            return Err(DocumentError::new(
                "document",
                "missing field \"revisions\"",
            ))
        }
    };
    let mut seen: HashMap<RevisionId, usize> = HashMap::with_capacity(revisions.len());
    let mut entries = Vec::with_capacity(revisions.len());
    for (index, item) in revisions.iter().enumerate() {
        let entry = parse_revision(index, item)?;
        if let Some(first) = seen.insert(entry.spec.id.clone(), index) {
            return Err(DocumentError::new(
                format!("revision {} (revisions[{index}])", entry.spec.id),
                format!("duplicate revision (also revisions[{first}])"),
            ));
        }
        entries.push(entry);
    }
    Ok(Snapshot::new(entries).with_system(system))
}

/// The revision entries of the last document parsed by [`parse_document_cached`], keyed by
/// each revision object's JSON text.
#[derive(Debug, Default)]
pub struct DocumentCache {
    entries: HashMap<Box<str>, RevisionEntry, FastHash>,
    system: SystemObjects,
}

impl DocumentCache {
    /// Revisions remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What changed between the document last parsed into a [`DocumentCache`] and a new one.
#[derive(Debug, Default)]
pub struct DocumentDelta {
    /// Revisions whose JSON text is new (added, or changed, or merely re-formatted).
    pub parsed: Vec<RevisionEntry>,
    /// Revisions of the previous document that the new one no longer has.
    pub removed: Vec<RevisionId>,
    /// The new document's system objects.
    pub system: SystemObjects,
    /// `parsed` is the whole document (the cache held nothing: first load, or after an
    /// invalid document): `removed` is empty, and whatever is not in `parsed` is gone.
    pub whole: bool,
}

/// [`parse_document`] for a file that is re-read as a whole on every change: a revision object
/// whose JSON text is the same as in the previous document is not parsed and validated again
/// (its entry is taken from `cache`), so a change to one revision of 10,000 costs a syntax scan
/// of the document plus the work for that revision. The result, and every error, is exactly
/// [`parse_document`]'s: shapes this path does not handle (invalid JSON, a wrong top-level
/// type...) go through [`parse_document`] itself. `cache` then holds the new document.
pub fn parse_document_cached(
    bytes: &[u8],
    cache: &mut DocumentCache,
) -> Result<Snapshot, DocumentError> {
    parse_document_delta(bytes, cache)?;
    Ok(cache.snapshot())
}

/// [`parse_document_cached`], returning only what changed since the document `cache` held:
/// the file source applies that to its current snapshot. On an error the cache is emptied (the
/// next delta is [`DocumentDelta::whole`]).
pub fn parse_document_delta(
    bytes: &[u8],
    cache: &mut DocumentCache,
) -> Result<DocumentDelta, DocumentError> {
    match parse_with_cache(bytes, cache) {
        Some(Ok(delta)) => Ok(delta),
        Some(Err(error)) => {
            cache.entries.clear();
            Err(error)
        }
        None => {
            cache.entries.clear();
            let snapshot = parse_document(bytes)?;
            // Valid, but not through the fast path (not expected): everything is new.
            Ok(DocumentDelta {
                parsed: snapshot.revisions().cloned().collect(),
                removed: Vec::new(),
                system: (**snapshot.system()).clone(),
                whole: true,
            })
        }
    }
}

impl DocumentCache {
    /// The snapshot of the document the cache holds.
    fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.entries.values().cloned()).with_system(self.system.clone())
    }
}

/// The fast path of [`parse_document_delta`]; `None` hands over to [`parse_document`]. On
/// `Some(Ok)` the cache holds the new document.
fn parse_with_cache(
    bytes: &[u8],
    cache: &mut DocumentCache,
) -> Option<Result<DocumentDelta, DocumentError>> {
    let top: BTreeMap<String, &RawValue> = serde_json::from_slice(bytes).ok()?;
    if top.keys().any(|k| !TOP_FIELDS.contains(&k.as_str())) {
        return None;
    }
    let mut sections = Map::new();
    for key in ["configMaps", "secrets"] {
        if let Some(raw) = top.get(key) {
            sections.insert(key.to_owned(), serde_json::from_str(raw.get()).ok()?);
        }
    }
    let system = match parse_system(&sections) {
        Ok(system) => system,
        Err(error) => return Some(Err(error)),
    };
    let items: Vec<&RawValue> = serde_json::from_str(top.get("revisions")?.get()).ok()?;
    let mut previous = std::mem::take(&mut cache.entries);
    let whole = previous.is_empty();
    let mut seen: HashMap<RevisionId, usize> = HashMap::with_capacity(items.len());
    let mut parsed = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let text = item.get();
        let (key, entry) = match previous.remove_entry(text) {
            Some(hit) => hit,
            None => {
                let value: Value = serde_json::from_str(text).ok()?;
                match parse_revision(index, &value) {
                    Ok(entry) => {
                        parsed.push(entry.clone());
                        (Box::from(text), entry)
                    }
                    Err(error) => return Some(Err(error)),
                }
            }
        };
        if let Some(first) = seen.insert(entry.spec.id.clone(), index) {
            return Some(Err(DocumentError::new(
                format!("revision {} (revisions[{index}])", entry.spec.id),
                format!("duplicate revision (also revisions[{first}])"),
            )));
        }
        cache.entries.insert(key, entry);
    }
    // What the previous document had and the new one does not name at all.
    let removed = previous
        .into_values()
        .map(|entry| entry.spec.id.clone())
        .filter(|id| !seen.contains_key(id))
        .collect();
    cache.system = system.clone();
    Some(Ok(DocumentDelta {
        parsed,
        removed,
        system,
        whole,
    }))
}

/// Top-level fields of the document.
const TOP_FIELDS: &[&str] = &["revisions", "configMaps", "secrets"];

/// The optional `configMaps` and `secrets` sections.
fn parse_system(top: &Map<String, Value>) -> Result<SystemObjects, DocumentError> {
    let mut system = SystemObjects::default();
    for (name, object) in named_objects(top, "configMaps")? {
        let at = format!("configMaps.{name}");
        let fields = object_fields(&at, object, &["labels", "data"])?;
        system.config_maps.insert(
            name.clone(),
            ConfigMapObject {
                labels: string_map(&at, fields.get("labels"), "labels")?,
                data: string_map(&at, fields.get("data"), "data")?,
            },
        );
    }
    for (name, object) in named_objects(top, "secrets")? {
        let at = format!("secrets.{name}");
        let fields = object_fields(&at, object, &["data"])?;
        let data = string_map(&at, fields.get("data"), "data")?;
        system.secrets.insert(
            name.clone(),
            SecretObject {
                data: data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
            },
        );
    }
    Ok(system)
}

/// The entries of the top-level object `field` (absent = none), names checked.
fn named_objects<'a>(
    top: &'a Map<String, Value>,
    field: &str,
) -> Result<Vec<(&'a String, &'a Value)>, DocumentError> {
    match top.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(items)) => {
            for name in items.keys() {
                if !is_dns_subdomain(name) {
                    return Err(DocumentError::new(
                        format!("field {field}"),
                        format!("{} is not a valid object name", quote_str(name)),
                    ));
                }
            }
            Ok(items.iter().collect())
        }
        Some(other) => Err(DocumentError::new(
            format!("field {field}"),
            format!("expected an object of named objects, got {}", quote(other)),
        )),
    }
}

/// `value` as an object whose keys are among `allowed`.
fn object_fields<'a>(
    at: &str,
    value: &'a Value,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, DocumentError> {
    let Value::Object(fields) = value else {
        return Err(DocumentError::new(
            at,
            format!("expected an object, got {}", quote(value)),
        ));
    };
    if let Some(key) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(DocumentError::new(
            format!("{at}, field {key}"),
            "unknown field",
        ));
    }
    Ok(fields)
}

/// An optional object of strings.
fn string_map(
    at: &str,
    value: Option<&Value>,
    field: &str,
) -> Result<std::collections::BTreeMap<String, String>, DocumentError> {
    let mut out = std::collections::BTreeMap::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Object(items)) => {
            for (key, item) in items {
                let Value::String(text) = item else {
                    return Err(DocumentError::new(
                        format!("{at}, field {field}.{key}"),
                        format!("expected a string, got {}", quote(item)),
                    ));
                };
                out.insert(key.clone(), text.clone());
            }
        }
        Some(other) => {
            return Err(DocumentError::new(
                format!("{at}, field {field}"),
                format!("expected an object of strings, got {}", quote(other)),
            ))
        }
    }
    Ok(out)
}

/// A DNS-1123 subdomain (Kubernetes object names): dot-separated labels, at most 253 bytes.
fn is_dns_subdomain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// Error context inside one revision.
struct Ctx {
    revision: String,
}

impl Ctx {
    fn err(&self, field: &str, message: impl Into<String>) -> DocumentError {
        DocumentError::new(format!("{}, field {field}", self.revision), message)
    }
}

fn parse_revision(index: usize, value: &Value) -> Result<RevisionEntry, DocumentError> {
    let ctx = Ctx {
        revision: format!("revisions[{index}]"),
    };
    let Value::Object(obj) = value else {
        return Err(DocumentError::new(
            ctx.revision,
            format!("expected an object, got {}", quote(value)),
        ));
    };
    let namespace = required_label(&ctx, obj, "namespace")?;
    let name = required_label(&ctx, obj, "name")?;
    let ctx = Ctx {
        revision: format!("revision {namespace}/{name} (revisions[{index}])"),
    };
    if let Some(key) = obj.keys().find(|k| !REVISION_FIELDS.contains(&k.as_str())) {
        return Err(ctx.err(key, "unknown field"));
    }

    let mut spec = RevisionSpec::new(RevisionId::new(namespace, name));
    if let Some(cc) = opt_u64(&ctx, obj, "containerConcurrency")? {
        spec.container_concurrency = u32::try_from(cc)
            .ok()
            .filter(|cc| *cc <= MAX_CONTAINER_CONCURRENCY)
            .ok_or_else(|| {
                ctx.err(
                    "containerConcurrency",
                    format!("{cc} is out of range 0..={MAX_CONTAINER_CONCURRENCY}"),
                )
            })?;
    }
    spec.timeout_seconds = opt_u64(&ctx, obj, "timeoutSeconds")?.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if spec.timeout_seconds == 0 {
        return Err(ctx.err("timeoutSeconds", "must be at least 1"));
    }
    spec.response_start_timeout_seconds = opt_u64(&ctx, obj, "responseStartTimeoutSeconds")?;
    spec.idle_timeout_seconds = opt_u64(&ctx, obj, "idleTimeoutSeconds")?;
    if let Some(protocol) = opt_str(&ctx, obj, "protocol")? {
        spec.protocol = match protocol {
            "http1" => Protocol::Http1,
            "h2c" => Protocol::H2c,
            other => {
                return Err(ctx.err(
                    "protocol",
                    format!(
                        "unknown protocol {} (expected \"http1\" or \"h2c\")",
                        quote_str(other)
                    ),
                ))
            }
        };
    }
    spec.service = opt_str(&ctx, obj, "service")?.unwrap_or("").to_owned();
    spec.configuration = opt_str(&ctx, obj, "configuration")?
        .unwrap_or("")
        .to_owned();
    if let Some(flag) = opt_bool(&ctx, obj, "probeOptimisation")? {
        spec.probe_optimisation = flag;
    }

    let mut private = parse_pods(&ctx, obj.get("pods"))?;
    private.cluster_ip = match opt_str(&ctx, obj, "clusterIP")? {
        Some(dest) => Some(socket_addr(&ctx, "clusterIP", dest)?),
        None => None,
    };
    let public = PublicEndpoints {
        activator_ips: parse_activators(&ctx, obj.get("activators"))?,
    };
    Ok(RevisionEntry {
        spec: std::sync::Arc::new(spec),
        private,
        public,
    })
}

fn parse_pods(ctx: &Ctx, value: Option<&Value>) -> Result<PrivateEndpoints, DocumentError> {
    let obj = match value {
        None | Some(Value::Null) => return Ok(PrivateEndpoints::default()),
        Some(Value::Object(obj)) => obj,
        Some(other) => {
            return Err(ctx.err(
                "pods",
                format!(
                    "expected an object {{\"ready\": [...], \"notReady\": [...]}}, got {}",
                    quote(other)
                ),
            ))
        }
    };
    if let Some(key) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "ready" | "notReady"))
    {
        return Err(ctx.err(&format!("pods.{key}"), "unknown field"));
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut lists = [Vec::new(), Vec::new()];
    for (list, key) in lists.iter_mut().zip(["ready", "notReady"]) {
        let field = format!("pods.{key}");
        for (i, item) in string_array(ctx, &field, obj.get(key))?.iter().enumerate() {
            let item_field = format!("{field}[{i}]");
            let dest = socket_addr(ctx, &item_field, item)?;
            if !seen.insert(dest.clone()) {
                return Err(ctx.err(
                    &item_field,
                    format!("{} is listed twice in pods", quote_str(&dest)),
                ));
            }
            list.push(dest);
        }
    }
    let [ready, not_ready] = lists;
    Ok(PrivateEndpoints {
        ready,
        not_ready,
        cluster_ip: None,
    })
}

fn parse_activators(ctx: &Ctx, value: Option<&Value>) -> Result<Vec<String>, DocumentError> {
    let mut ips = Vec::new();
    for (i, item) in string_array(ctx, "activators", value)?.iter().enumerate() {
        let field = format!("activators[{i}]");
        let ip: IpAddr = item
            .parse()
            .map_err(|_| ctx.err(&field, format!("{} is not an IP address", quote_str(item))))?;
        let ip = ip.to_string();
        if ips.contains(&ip) {
            return Err(ctx.err(&field, format!("{} is listed twice", quote_str(&ip))));
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// A missing or null array is empty.
fn string_array<'a>(
    ctx: &Ctx,
    field: &str,
    value: Option<&'a Value>,
) -> Result<Vec<&'a str>, DocumentError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().ok_or_else(|| {
                    ctx.err(
                        &format!("{field}[{i}]"),
                        format!("expected a string, got {}", quote(item)),
                    )
                })
            })
            .collect(),
        Some(other) => Err(ctx.err(
            field,
            format!("expected an array of strings, got {}", quote(other)),
        )),
    }
}

/// `ip:port` (IPv6 bracketed), port not 0; returned in canonical form.
fn socket_addr(ctx: &Ctx, field: &str, text: &str) -> Result<String, DocumentError> {
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(addr.to_string()),
        Ok(_) => Err(ctx.err(field, format!("{} has port 0", quote_str(text)))),
        Err(_) => Err(ctx.err(
            field,
            format!(
                "{} is not an ip:port address (IPv6 in brackets, no host names)",
                quote_str(text)
            ),
        )),
    }
}

fn required_label(
    ctx: &Ctx,
    obj: &Map<String, Value>,
    field: &str,
) -> Result<String, DocumentError> {
    let Some(text) = opt_str(ctx, obj, field)? else {
        return Err(ctx.err(field, "is required"));
    };
    if !is_dns_label(text) {
        return Err(ctx.err(
            field,
            format!(
                "{} is not a DNS-1123 label (lowercase letters, digits and '-', starting and \
                 ending with a letter or digit, at most 63 characters)",
                quote_str(text)
            ),
        ));
    }
    Ok(text.to_owned())
}

/// DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

/// Missing or null → `None`.
fn opt_str<'a>(
    ctx: &Ctx,
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, DocumentError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ctx.err(field, format!("expected a string, got {}", quote(other)))),
    }
}

/// Missing or null → `None`.
fn opt_u64(ctx: &Ctx, obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, DocumentError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            ctx.err(
                field,
                format!("expected a non-negative integer, got {}", quote(value)),
            )
        }),
    }
}

/// Missing or null → `None`.
fn opt_bool(
    ctx: &Ctx,
    obj: &Map<String, Value>,
    field: &str,
) -> Result<Option<bool>, DocumentError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ctx.err(
            field,
            format!("expected true or false, got {}", quote(other)),
        )),
    }
}

/// A JSON value for an error message, shortened.
fn quote(value: &Value) -> String {
    shorten(value.to_string())
}

/// A string for an error message, JSON-quoted and shortened.
fn quote_str(text: &str) -> String {
    shorten(Value::String(text.to_owned()).to_string())
}

fn shorten(mut text: String) -> String {
    if text.chars().count() > MAX_QUOTED {
        text = text.chars().take(MAX_QUOTED).collect();
        text.push('…');
    }
    text
}

impl fmt::Display for PrivateEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ready [{}], notReady [{}], clusterIP {}",
            self.ready.join(","),
            self.not_ready.join(","),
            self.cluster_ip.as_deref().unwrap_or("-")
        )
    }
}
