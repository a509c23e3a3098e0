//! Distributed tracing for the data plane (queue-proxy §7.3, activator §7.2): W3C Trace Context
//! propagation, sampling, spans, a bounded batch processor and exporters (`stdout`, OTLP
//! `http/protobuf` and `grpc`). The OTLP messages are opentelemetry-proto's and gRPC calls go
//! through tonic's client; the tracer, sampler, propagation and batching are ours, because the
//! OpenTelemetry SDK's cost twice as many instructions per traced request (README "Telemetry and
//! the OpenTelemetry crates", measured with `benches/src/bin/span_cost.rs`).
//!
//! - [`context`]: ids, [`SpanContext`], `traceparent` parsing/formatting;
//! - [`sampler`]: [`Sampler`] and the configuration rules that pick one;
//! - [`span`]: [`Span`] (the open handle) and [`SpanData`] (what is exported);
//! - [`export`]: the [`SpanExporter`] trait and the exporters;
//! - [`config`]: building a [`Tracer`] from `tracing.*` settings and `OTEL_*` variables;
//! - [`layer`]: tower layers for the server span and the client span, and the per-request
//!   [`CurrentSpan`].
//!
//! With tracing off (`protocol: none`) no [`Tracer`] exists and every layer gets `None`: nothing is
//! created, allocated or locked per request, and `traceparent`/`tracestate`/`baggage` reach the
//! upstream untouched because the proxy forwards them like any other header.
//!
//! With tracing on, every span gets ids (so the upstream always sees this process's client span as
//! its parent), but only sampled spans are recorded: one allocation each, pushed on end into a
//! bounded lock-free queue that a background task drains in batches. A full queue drops spans; the
//! request path never waits for the exporter.

pub mod config;
pub mod context;
pub mod export;
pub mod layer;
pub mod resource;
mod rng;
pub mod sampler;
pub mod span;
mod url;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use tokio::sync::{mpsc, oneshot, Notify};

pub use config::{build_tracer, BatchConfig, Protocol, TraceConfigError, TracingConfig};
pub use context::{SpanContext, SpanId, TraceId};
pub use export::{ExportError, SpanExporter};
pub use layer::{ClientSpanLayer, CurrentSpan, ServerSpans, ServerTracing};
pub use resource::Resource;
pub use sampler::Sampler;
pub use span::{KeyValue, Scope, Span, SpanData, SpanKind, Status, StatusCode, Value};

/// Scope of Go's `otelhttp` instrumentation (server and client spans).
pub const OTELHTTP_SCOPE: Scope = Scope {
    name: "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
    version: "0.69.0",
};

enum Control {
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Creates spans and hands finished, sampled ones to its exporter. Lives for the rest of the
/// process (built as a `&'static` by [`TracerBuilder::build`]).
pub struct Tracer {
    sampler: Sampler,
    queue: ArrayQueue<Box<SpanData>>,
    batch_size: usize,
    wake: Notify,
    dropped: AtomicU64,
    closed: AtomicBool,
    control: mpsc::UnboundedSender<Control>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("sampler", &self.sampler)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Tracer`].
pub struct TracerBuilder {
    exporter: Box<dyn SpanExporter>,
    sampler: Sampler,
    resource: Resource,
    batch: BatchConfig,
}

impl TracerBuilder {
    /// The sampler (default: always on).
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// The resource describing the process (default: empty).
    pub fn resource(mut self, resource: Resource) -> Self {
        self.resource = resource;
        self
    }

    /// Queue and batch settings (default: the Go SDK's).
    pub fn batch(mut self, batch: BatchConfig) -> Self {
        self.batch = batch;
        self
    }

    /// Starts the export task on the current tokio runtime and returns the tracer, which lives
    /// for the rest of the process. Fails outside a runtime.
    pub fn build(self) -> Result<&'static Tracer, TraceConfigError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TraceConfigError::NoRuntime)?;
        let batch = self.batch.normalized();
        let (control, control_rx) = mpsc::unbounded_channel();
        let tracer: &'static Tracer = Box::leak(Box::new(Tracer {
            sampler: self.sampler,
            queue: ArrayQueue::new(batch.max_queue_size),
            batch_size: batch.max_export_batch_size,
            wake: Notify::new(),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            control,
        }));
        runtime.spawn(export_loop(
            tracer,
            self.exporter,
            self.resource,
            control_rx,
            batch,
        ));
        Ok(tracer)
    }
}

impl Tracer {
    /// A builder exporting to `exporter`.
    pub fn builder(exporter: impl SpanExporter) -> TracerBuilder {
        TracerBuilder {
            exporter: Box::new(exporter),
            sampler: Sampler::ALWAYS_ON,
            resource: Resource::empty(),
            batch: BatchConfig::default(),
        }
    }

    /// The sampler in use.
    pub fn sampler(&self) -> Sampler {
        self.sampler
    }

    /// Starts a span of `scope` named `name`, child of `parent` (a root span, with a new trace id,
    /// when `None` or invalid). Returns the span and its context (for propagation); the span
    /// records only if the sampler says so.
    #[inline]
    pub fn start(
        &'static self,
        scope: &'static Scope,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&SpanContext>,
    ) -> (Span, SpanContext) {
        let parent = parent.filter(|p| p.is_valid());
        let trace_id = parent.map_or_else(TraceId::random, |p| p.trace_id);
        let sampled = self.sampler.should_sample(parent, trace_id);
        let context = SpanContext {
            trace_id,
            span_id: SpanId::random(),
            sampled,
            remote: false,
            trace_state: parent.and_then(|p| p.trace_state.clone()),
        };
        if !sampled {
            return (Span::none(), context);
        }
        let data = SpanData::new(scope, name.into(), kind, context.clone(), parent);
        (Span::recording(Box::new(data), self), context)
    }

    /// Starts a child of the request's [`CurrentSpan`] (a root span if there is none) and makes
    /// the new span the current one.
    #[inline]
    pub fn start_in(
        &'static self,
        extensions: &mut http::Extensions,
        scope: &'static Scope,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
    ) -> Span {
        // Replaced in place: no new extension allocation per nested span.
        if let Some(current) = extensions.get_mut::<CurrentSpan>() {
            let (span, context) = self.start(scope, name, kind, Some(&current.0));
            current.0 = context;
            return span;
        }
        let (span, context) = self.start(scope, name, kind, None);
        extensions.insert(CurrentSpan(context));
        span
    }

    /// Called by [`Span`] when a recording span ends: queue it, or drop it if the queue is full.
    pub(crate) fn on_end(&self, data: Box<SpanData>) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        match self.queue.push(data) {
            Ok(()) => {
                if self.queue.len() >= self.batch_size {
                    self.wake.notify_one();
                }
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Spans dropped because the queue was full, since the last time the export task reported.
    pub fn pending_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Exports everything queued so far and waits until that is done.
    pub async fn force_flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Exports everything queued, shuts the exporter down and stops accepting spans. Waits at
    /// most `limit`; returns whether it finished in time.
    pub async fn shutdown(&self, limit: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Shutdown(tx)).is_err() {
            return true;
        }
        let done = tokio::time::timeout(limit, rx).await.is_ok();
        self.closed.store(true, Ordering::Relaxed);
        done
    }
}

/// Logs export failures at most once per interval, counting the ones it kept quiet about.
struct ErrorReporter {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorReporter {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn report(&mut self, error: &ExportError, spans: usize) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Self::INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            %error,
            spans,
            earlier_failures = self.suppressed,
            "failed to export spans"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

async fn export_batches(
    tracer: &'static Tracer,
    exporter: &mut dyn SpanExporter,
    resource: &Resource,
    config: &BatchConfig,
    reporter: &mut ErrorReporter,
) {
    let dropped = tracer.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        tracing::warn!(dropped, "span queue full: spans were dropped");
    }
    // At most what is queued now, so that a steady stream cannot keep this loop from returning.
    let mut remaining = tracer.queue.len();
    let mut batch: Vec<Box<SpanData>> =
        Vec::with_capacity(remaining.min(config.max_export_batch_size));
    while remaining > 0 {
        batch.clear();
        while batch.len() < config.max_export_batch_size && remaining > 0 {
            match tracer.queue.pop() {
                Some(span) => batch.push(span),
                None => break,
            }
            remaining -= 1;
        }
        if batch.is_empty() {
            break;
        }
        match tokio::time::timeout(config.export_timeout, exporter.export(&batch, resource)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => reporter.report(&error, batch.len()),
            Err(_) => reporter.report(&ExportError::new("export timed out"), batch.len()),
        }
    }
}

async fn export_loop(
    tracer: &'static Tracer,
    mut exporter: Box<dyn SpanExporter>,
    resource: Resource,
    mut control: mpsc::UnboundedReceiver<Control>,
    config: BatchConfig,
) {
    let mut reporter = ErrorReporter {
        last: None,
        suppressed: 0,
    };
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + config.schedule_delay,
        config.schedule_delay,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let command = tokio::select! {
            _ = ticker.tick() => None,
            _ = tracer.wake.notified() => None,
            command = control.recv() => match command {
                Some(command) => Some(command),
                // Every sender is gone: the tracer no longer exists.
                None => return,
            },
        };
        export_batches(tracer, &mut *exporter, &resource, &config, &mut reporter).await;
        match command {
            None => {}
            Some(Control::Flush(done)) => {
                let _ = done.send(());
            }
            Some(Control::Shutdown(done)) => {
                exporter.shutdown().await;
                let _ = done.send(());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
