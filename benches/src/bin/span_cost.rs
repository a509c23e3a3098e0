//! Cost of one traced request's spans on the request path: our tracer (knative-telemetry) against
//! the OpenTelemetry SDK (opentelemetry_sdk's tracer, parent-based ratio sampler, batch span
//! processor, W3C propagator), each doing what a queue-proxy request does: extract the incoming
//! `traceparent`, start a server span with the otelhttp attributes, a child client span,
//! inject the client span's context into the outgoing headers, end both.
//!
//!     span_cost ours|sdk N
//!
//! Run it twice under callgrind with two N and take the difference per iteration, so that
//! start-up does not count:
//!
//!     valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p target/release/span-cost ours 2000
//!     valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p target/release/span-cost ours 12000

use http::{HeaderMap, HeaderName, HeaderValue};
use knative_telemetry::trace::{
    export::ExportFuture, Resource, Sampler as OurSampler, Scope, SpanContext, SpanData, SpanKind,
    Tracer, OTELHTTP_SCOPE,
};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanKind as OtelKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Drops every batch (the export itself is not on the request path).
struct Discard;

impl knative_telemetry::trace::SpanExporter for Discard {
    fn export<'a>(&'a mut self, batch: &'a [Box<SpanData>], _: &'a Resource) -> ExportFuture<'a> {
        std::hint::black_box(batch.len());
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug)]
struct SdkDiscard;

impl opentelemetry_sdk::trace::SpanExporter for SdkDiscard {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        std::hint::black_box(batch.len());
        Ok(())
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

fn incoming() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", HeaderValue::from_static(TRACEPARENT));
    headers.insert("user-agent", HeaderValue::from_static("curl/8"));
    headers
}

fn ours(n: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tracer: &'static Tracer = Tracer::builder(Discard)
            .sampler(OurSampler::ALWAYS_ON)
            .build()
            .unwrap();
        static CLIENT: Scope = OTELHTTP_SCOPE;
        let incoming = incoming();
        for _ in 0..n {
            let parent = SpanContext::from_headers(&incoming);
            let (mut server, server_ctx) =
                tracer.start(&OTELHTTP_SCOPE, "GET", SpanKind::Server, parent.as_ref());
            server.set_attribute("http.request.method", "GET");
            server.set_attribute("url.scheme", "http");
            server.set_attribute("server.address", "example.com".to_owned());
            server.set_attribute("network.peer.address", "127.0.0.1".to_owned());
            server.set_attribute("network.peer.port", 45512i64);
            server.set_attribute("user_agent.original", "curl/8".to_owned());
            server.set_attribute("url.path", "/".to_owned());
            let (mut client, client_ctx) =
                tracer.start(&CLIENT, "HTTP GET", SpanKind::Client, Some(&server_ctx));
            client.set_attribute("http.request.method", "GET");
            client.set_attribute("url.full", "http://127.0.0.1:8080/".to_owned());
            client.set_attribute("server.address", "127.0.0.1".to_owned());
            client.set_attribute("server.port", 8080i64);
            let mut outgoing = HeaderMap::new();
            client_ctx.inject(&mut outgoing);
            std::hint::black_box(&outgoing);
            client.set_attribute("http.response.status_code", 200i64);
            client.end();
            server.set_attribute("http.response.status_code", 200i64);
            server.end();
        }
        tracer.force_flush().await;
    });
}

fn sdk(n: usize) {
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            1.0,
        ))))
        .with_span_processor(BatchSpanProcessor::builder(SdkDiscard).build())
        .build();
    let scope = InstrumentationScope::builder(OTELHTTP_SCOPE.name)
        .with_version(OTELHTTP_SCOPE.version)
        .build();
    let tracer = provider.tracer_with_scope(scope);
    let propagator = TraceContextPropagator::new();
    let incoming = incoming();
    for _ in 0..n {
        let parent = propagator.extract(&HeaderExtractor(&incoming));
        let server = tracer
            .span_builder("GET")
            .with_kind(OtelKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.scheme", "http"),
                KeyValue::new("server.address", "example.com".to_owned()),
                KeyValue::new("network.peer.address", "127.0.0.1".to_owned()),
                KeyValue::new("network.peer.port", 45512i64),
                KeyValue::new("user_agent.original", "curl/8".to_owned()),
                KeyValue::new("url.path", "/".to_owned()),
            ])
            .start_with_context(&tracer, &parent);
        let server_cx = parent.with_span(server);
        let client = tracer
            .span_builder("HTTP GET")
            .with_kind(OtelKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.full", "http://127.0.0.1:8080/".to_owned()),
                KeyValue::new("server.address", "127.0.0.1".to_owned()),
                KeyValue::new("server.port", 8080i64),
            ])
            .start_with_context(&tracer, &server_cx);
        let client_cx = server_cx.with_span(client);
        let mut outgoing = HeaderMap::new();
        propagator.inject_context(&client_cx, &mut HeaderInjector(&mut outgoing));
        std::hint::black_box(&outgoing);
        let span = client_cx.span();
        span.set_attribute(KeyValue::new("http.response.status_code", 200i64));
        span.end();
        let span = server_cx.span();
        span.set_attribute(KeyValue::new("http.response.status_code", 200i64));
        span.end();
    }
    let _ = provider.force_flush();
    let _ = provider.shutdown();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    match which.as_str() {
        "ours" => ours(n),
        "sdk" => sdk(n),
        _ => {
            eprintln!("usage: span-cost ours|sdk N");
            std::process::exit(2);
        }
    }
}
