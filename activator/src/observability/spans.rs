//! Tracing (spec §7.2, §2.4, §2.9) on the shared tracer of `knative_telemetry::trace`: W3C
//! TraceContext propagation, a server span `handle` per request (with the revision attributes),
//! `throttler_try` around the throttler wait, `activator_proxy` around the proxying and the
//! client span `<METHOD> <path>` of the call to the queue-proxy, whose context goes out in
//! `traceparent`.

use http::Request;
use knative_common::env::Env;
use knative_telemetry::trace::{
    self, CurrentSpan, Resource, Scope, Span, SpanContext, SpanKind, StatusCode, TraceConfigError,
    Tracer, TracingConfig, OTELHTTP_SCOPE,
};

use super::config::{StartupObservability, TracingProtocol};
use crate::discovery::RevisionSpec;

/// Scope of the activator's own spans.
pub static ACTIVATOR_SCOPE: Scope = Scope {
    name: "knative.dev/serving/pkg/activator",
    version: "",
};

/// The tracer for `tracing-protocol` (`None` for `none`). Resource: `service.name` (default
/// `activator`), `k8s.pod.name`, `k8s.namespace.name`, `service.version`.
pub fn build(
    startup: &StartupObservability,
    env: &dyn Env,
    pod_name: &str,
    system_namespace: &str,
) -> Result<Option<&'static Tracer>, TraceConfigError> {
    let protocol = match startup.tracing_protocol {
        TracingProtocol::None => return Ok(None),
        TracingProtocol::Grpc => trace::Protocol::Grpc,
        TracingProtocol::HttpProtobuf => trace::Protocol::HttpProtobuf,
        TracingProtocol::Stdout => trace::Protocol::Stdout,
    };
    let mut resource = Resource::sdk_default(env);
    if resource.get("service.name").is_none() {
        resource.set("service.name", "activator");
    }
    resource.set("k8s.pod.name", pod_name);
    resource.set("k8s.namespace.name", system_namespace);
    resource.set("service.version", env!("CARGO_PKG_VERSION"));
    let config = TracingConfig {
        protocol,
        endpoint: startup.tracing_endpoint.clone(),
        sampling_rate: startup.tracing_sampling_rate,
    };
    trace::build_tracer(&config, env, resource)
}

/// Starts the server span `handle` (child of the incoming `traceparent`) and makes it the
/// request's current span; stage 9 copies the revision attributes onto it.
pub fn server_span<B>(
    tracer: &'static Tracer,
    request: &mut Request<B>,
    revision: Option<&RevisionSpec>,
) -> Span {
    let parent = SpanContext::from_headers(request.headers());
    let (mut span, context) =
        tracer.start(&OTELHTTP_SCOPE, "handle", SpanKind::Server, parent.as_ref());
    if span.is_recording() {
        span.set_attribute("http.request.method", request.method().as_str().to_owned());
        span.set_attribute("url.scheme", "http");
        if let Some(r) = revision {
            span.set_attribute("kn.service.name", r.service.clone());
            span.set_attribute("kn.configuration.name", r.configuration.clone());
            span.set_attribute("kn.revision.name", r.id.name.clone());
            span.set_attribute("k8s.namespace.name", r.id.namespace.clone());
        }
    }
    request.extensions_mut().insert(CurrentSpan(context));
    span
}

/// Records the response status on the server span (5xx is an error, as `otelhttp`).
pub fn record_server_status(span: &mut Span, status: u16) {
    if span.is_recording() {
        span.set_attribute("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.set_status(StatusCode::Error, "");
        }
    }
}

/// Starts `throttler_try` as a child of the request's current span, without making it current
/// (the proxy span that follows is its sibling, as upstream).
pub fn throttler_try<B>(tracer: &'static Tracer, request: &Request<B>) -> Span {
    let parent = request.extensions().get::<CurrentSpan>().map(|c| &c.0);
    tracer
        .start(
            &ACTIVATOR_SCOPE,
            "throttler_try",
            SpanKind::Internal,
            parent,
        )
        .0
}

/// Marks a span (`throttler_try`, the client span) failed with the error text.
pub fn failed(span: &mut Span, error: &dyn std::fmt::Display) {
    if span.is_recording() {
        span.set_status(StatusCode::Error, error.to_string());
    }
}

/// Starts `activator_proxy` (current from now on) and, inside it, the client span of the call
/// to `target`, written into the request's `traceparent`. Returned as (client, proxy).
pub fn proxy_spans<B>(
    tracer: &'static Tracer,
    request: &mut Request<B>,
    target: std::net::SocketAddr,
) -> (Span, Span) {
    let proxy = tracer.start_in(
        request.extensions_mut(),
        &ACTIVATOR_SCOPE,
        "activator_proxy",
        SpanKind::Internal,
    );
    let client =
        trace::layer::start_client_span(tracer, request, target, trace::layer::method_path_name);
    (client, proxy)
}

/// Records the upstream status on the client span (4xx and 5xx are errors for a client).
pub fn record_client_status(span: &mut Span, status: u16) {
    if span.is_recording() {
        span.set_attribute("http.response.status_code", i64::from(status));
        if status >= 400 {
            span.set_status(StatusCode::Error, "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn none_builds_no_tracer() {
        let env: HashMap<&str, &str> = HashMap::new();
        let startup = StartupObservability::default();
        assert!(build(&startup, &env, "p", "ns").unwrap().is_none());
    }
}
