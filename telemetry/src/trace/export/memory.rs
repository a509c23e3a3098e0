//! An exporter that keeps every span in memory (tests and debugging).

use std::sync::{Arc, Mutex};

use super::{ExportFuture, SpanExporter};
use crate::trace::resource::Resource;
use crate::trace::span::{SpanData, SpanKind, Status};
use crate::trace::{SpanContext, SpanId};

/// A copy of an exported span, detached from the exporter's buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedSpan {
    /// Scope name.
    pub scope: &'static str,
    /// Span name.
    pub name: String,
    /// Kind.
    pub kind: SpanKind,
    /// The span's context.
    pub context: SpanContext,
    /// Parent span id (`None` for a root).
    pub parent_span_id: Option<SpanId>,
    /// Whether the parent was remote.
    pub parent_remote: bool,
    /// Attributes as text (numbers and booleans formatted).
    pub attributes: Vec<(&'static str, String)>,
    /// Status.
    pub status: Status,
}

impl FinishedSpan {
    fn of(span: &SpanData) -> Self {
        FinishedSpan {
            scope: span.scope.name,
            name: span.name.to_string(),
            kind: span.kind,
            context: span.context.clone(),
            parent_span_id: span.parent_span_id,
            parent_remote: span.parent_remote,
            attributes: span
                .attributes
                .iter()
                .map(|kv| {
                    let text = match kv.value.text() {
                        Some(t) => t.into_owned(),
                        None => match &kv.value {
                            crate::trace::Value::Int(n) => n.to_string(),
                            crate::trace::Value::Bool(b) => b.to_string(),
                            crate::trace::Value::Float(f) => f.to_string(),
                            _ => String::new(),
                        },
                    };
                    (kv.key, text)
                })
                .collect(),
            status: span.status.clone(),
        }
    }

    /// The value of attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Collects exported spans; clones share the same store.
#[derive(Clone, Debug, Default)]
pub struct InMemoryExporter {
    spans: Arc<Mutex<Vec<FinishedSpan>>>,
}

impl InMemoryExporter {
    /// An empty store.
    pub fn new() -> Self {
        InMemoryExporter::default()
    }

    /// Everything exported so far, in export order.
    pub fn spans(&self) -> Vec<FinishedSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets everything exported so far.
    pub fn clear(&self) {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl SpanExporter for InMemoryExporter {
    fn export<'a>(
        &'a mut self,
        batch: &'a [Box<SpanData>],
        _resource: &'a Resource,
    ) -> ExportFuture<'a> {
        let copies: Vec<FinishedSpan> = batch.iter().map(|s| FinishedSpan::of(s)).collect();
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(copies);
        Box::pin(async { Ok(()) })
    }
}
