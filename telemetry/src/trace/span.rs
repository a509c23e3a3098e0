//! Spans: what a recorded span holds ([`SpanData`]) and the handle the request path keeps while
//! the span is open ([`Span`]).
//!
//! A span that is not sampled records nothing: its handle is empty and every setter is a no-op.
//! A sampled span is one heap allocation (attributes are stored inline) that goes to the batch
//! queue when the handle is ended or dropped.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use http::HeaderValue;

use super::context::{SpanContext, SpanId};
use super::Tracer;

/// Instrumentation scope of a span (the Go tracer's name and version).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Scope name, e.g. `knative.dev/serving/pkg/queue`.
    pub name: &'static str,
    /// Scope version (may be empty).
    pub version: &'static str,
}

/// OTel span kind (values as in OTLP and Go's `trace.SpanKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// An operation inside the process.
    Internal = 1,
    /// Handling of an incoming request.
    Server = 2,
    /// An outgoing request.
    Client = 3,
    /// Sending a message.
    Producer = 4,
    /// Receiving a message.
    Consumer = 5,
}

/// OTel status code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatusCode {
    /// Not set (the default).
    #[default]
    Unset = 0,
    /// Explicitly successful.
    Ok = 1,
    /// Failed.
    Error = 2,
}

impl StatusCode {
    /// The name Go's JSON encoding uses (`Unset`, `Ok`, `Error`).
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "Unset",
            StatusCode::Ok => "Ok",
            StatusCode::Error => "Error",
        }
    }
}

/// A span's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Code.
    pub code: StatusCode,
    /// Description (only meaningful for errors).
    pub message: Cow<'static, str>,
}

/// An attribute value. String-like values that come from the request keep the request's own
/// buffers (no copy) and are turned into text when exported.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Static text.
    Static(&'static str),
    /// Owned text.
    String(String),
    /// A header value (non-UTF-8 bytes are replaced when exported).
    Header(HeaderValue),
    /// The path of a request target.
    Path(http::uri::PathAndQuery),
    /// An IP address, as text.
    Ip(IpAddr),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A float.
    Float(f64),
}

impl Value {
    /// The value as text, for the string-like variants; `None` for numbers and booleans.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Value::Static(s) => Some(Cow::Borrowed(s)),
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Header(h) => Some(String::from_utf8_lossy(h.as_bytes())),
            Value::Path(p) => Some(Cow::Borrowed(p.path())),
            Value::Ip(ip) => Some(Cow::Owned(ip.to_string())),
            Value::Int(_) | Value::Bool(_) | Value::Float(_) => None,
        }
    }
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Static(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<HeaderValue> for Value {
    fn from(h: HeaderValue) -> Self {
        Value::Header(h)
    }
}

impl From<IpAddr> for Value {
    fn from(ip: IpAddr) -> Self {
        Value::Ip(ip)
    }
}

/// One attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    /// Key.
    pub key: &'static str,
    /// Value.
    pub value: Value,
}

/// Most attributes a span keeps; later ones are counted as dropped.
pub const MAX_ATTRIBUTES: usize = 16;

/// A span's attributes, stored inline. Setting a key that is already present replaces its value.
pub struct Attributes {
    items: [Option<KeyValue>; MAX_ATTRIBUTES],
    len: usize,
    dropped: u32,
}

impl Default for Attributes {
    fn default() -> Self {
        Attributes {
            items: std::array::from_fn(|_| None),
            len: 0,
            dropped: 0,
        }
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Attributes {
    /// Sets `key` (replacing an earlier value).
    pub fn set(&mut self, key: &'static str, value: Value) {
        if let Some(kv) = self.items[..self.len]
            .iter_mut()
            .flatten()
            .find(|kv| kv.key == key)
        {
            kv.value = value;
            return;
        }
        if self.len == MAX_ATTRIBUTES {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        self.items[self.len] = Some(KeyValue { key, value });
        self.len += 1;
    }

    /// The attributes in the order they were first set.
    pub fn iter(&self) -> impl Iterator<Item = &KeyValue> {
        self.items[..self.len].iter().flatten()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
    }

    /// How many attributes did not fit.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Number of attributes kept.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no attribute is set.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A recorded span, as exporters see it.
#[derive(Debug)]
pub struct SpanData {
    /// Instrumentation scope.
    pub scope: &'static Scope,
    /// Name.
    pub name: Cow<'static, str>,
    /// Kind.
    pub kind: SpanKind,
    /// The span's own context (always sampled: only sampled spans are recorded).
    pub context: SpanContext,
    /// The parent's span id, `None` for a root span.
    pub parent_span_id: Option<SpanId>,
    /// Whether the parent came from another process.
    pub parent_remote: bool,
    /// The parent's sampled flag.
    pub parent_sampled: bool,
    /// Wall-clock start.
    pub start: SystemTime,
    /// Wall-clock end (never before the start).
    pub end: SystemTime,
    /// Attributes.
    pub attributes: Attributes,
    /// Status.
    pub status: Status,
}

impl SpanData {
    pub(crate) fn new(
        scope: &'static Scope,
        name: Cow<'static, str>,
        kind: SpanKind,
        context: SpanContext,
        parent: Option<&SpanContext>,
    ) -> Self {
        let start = SystemTime::now();
        SpanData {
            scope,
            name,
            kind,
            context,
            parent_span_id: parent.map(|p| p.span_id),
            parent_remote: parent.is_some_and(|p| p.remote),
            parent_sampled: parent.is_some_and(|p| p.sampled),
            start,
            end: start,
            attributes: Attributes::default(),
            status: Status::default(),
        }
    }

    /// How long the span lasted.
    pub fn duration(&self) -> std::time::Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }
}

/// An open span. Ends (and, if sampled, goes to the exporter) when [`Span::end`] is called or the
/// handle is dropped. A span that is not sampled holds nothing and costs nothing.
#[must_use = "a span ends when dropped"]
pub struct Span {
    recording: Option<(Box<SpanData>, &'static Tracer)>,
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.recording {
            Some((data, _)) => f
                .debug_struct("Span")
                .field("name", &data.name)
                .field("span_id", &data.context.span_id)
                .finish_non_exhaustive(),
            None => f.write_str("Span(non-recording)"),
        }
    }
}

impl Span {
    /// A span that records nothing.
    pub const fn none() -> Self {
        Span { recording: None }
    }

    pub(crate) fn recording(data: Box<SpanData>, tracer: &'static Tracer) -> Self {
        Span {
            recording: Some((data, tracer)),
        }
    }

    /// Whether the span is sampled (and will be exported).
    #[inline]
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Sets an attribute (no-op unless recording).
    #[inline]
    pub fn set_attribute(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some((data, _)) = &mut self.recording {
            data.attributes.set(key, value.into());
        }
    }

    /// Sets the status (no-op unless recording).
    #[inline]
    pub fn set_status(&mut self, code: StatusCode, message: impl Into<Cow<'static, str>>) {
        if let Some((data, _)) = &mut self.recording {
            data.status = Status {
                code,
                message: message.into(),
            };
        }
    }

    /// Ends the span now.
    #[inline]
    pub fn end(self) {
        drop(self);
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((mut data, tracer)) = self.recording.take() {
            // Wall clock at both ends, as Go's SDK exports them.
            data.end = SystemTime::now().max(data.start);
            tracer.on_end(data);
        }
    }
}
