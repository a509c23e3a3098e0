//! Span exporters: where batches of finished spans go.
//!
//! - [`stdout`]: one JSON object per span per line, in the shape of Go's `stdouttrace`;
//! - [`otlp`]: OTLP `http/protobuf` and `grpc` over hyper, with the OTLP messages declared here;
//! - [`memory`]: kept in memory, for tests.

pub mod memory;
pub mod otlp;
pub mod stdout;

use std::future::Future;
use std::pin::Pin;

use super::resource::Resource;
use super::span::SpanData;

/// A boxed export future.
pub type ExportFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ExportError>> + Send + 'a>>;

/// Why a batch could not be exported (the batch is dropped).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ExportError(pub String);

impl ExportError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        ExportError(message.into())
    }
}

/// Receives batches of finished, sampled spans from the batch processor. Only the processor's
/// task calls it, one batch at a time.
pub trait SpanExporter: Send + 'static {
    /// Exports `batch` (in the order the spans ended), describing the process with `resource`.
    fn export<'a>(
        &'a mut self,
        batch: &'a [Box<SpanData>],
        resource: &'a Resource,
    ) -> ExportFuture<'a>;

    /// Releases whatever the exporter holds (connections); called once, after the last export.
    fn shutdown(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}
