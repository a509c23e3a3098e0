//! OTLP trace export over hyper: `http/protobuf` (`POST <path>` with an
//! `ExportTraceServiceRequest` body) and `grpc` (the unary
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` call over h2c or TLS h2, made by
//! tonic's client on our hyper connection). One connection is kept and reused between exports.
//!
//! The transport itself ([`OtlpExporter::send`]) carries any encoded OTLP export request: other
//! signals (request metrics) reuse it with their own gRPC method ([`OtlpExporter::with_grpc_path`])
//! and HTTP path (the endpoint's).
//!
//! The protobuf messages are opentelemetry-proto's ([`proto`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{ExportError, ExportFuture, SpanExporter};
use crate::trace::resource::Resource;
use crate::trace::span::{Scope, SpanData, Value};

/// The gRPC method of the trace service.
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Default OTLP/HTTP traces path.
pub const DEFAULT_HTTP_PATH: &str = "/v1/traces";
/// The gRPC method of the metrics service.
pub const GRPC_METRICS_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
/// Default OTLP/HTTP metrics path.
pub const DEFAULT_METRICS_HTTP_PATH: &str = "/v1/metrics";
/// `User-Agent` of export requests.
pub const USER_AGENT_VALUE: &str =
    concat!("knative-rust-otlp-exporter/", env!("CARGO_PKG_VERSION"));
/// Largest response body read from a collector.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The OTLP trace messages: opentelemetry-proto's prost types. Events and links are never sent.
pub mod proto {
    pub use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    pub use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    };
    pub use opentelemetry_proto::tonic::resource::v1::Resource;
    pub use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
}

/// `Span.flags`: the context has the is-remote bit.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// `Span.flags`: the parent is remote.
const FLAG_IS_REMOTE: u32 = 0x200;

fn any_value(value: &Value) -> proto::AnyValue {
    use proto::any_value::Value as V;
    let v = match value {
        Value::Int(n) => V::IntValue(*n),
        Value::Bool(b) => V::BoolValue(*b),
        Value::Float(f) => V::DoubleValue(*f),
        other => V::StringValue(other.text().unwrap_or_default().into_owned()),
    };
    proto::AnyValue { value: Some(v) }
}

fn string_kv(key: &str, value: &str) -> proto::KeyValue {
    proto::KeyValue {
        key: key.to_owned(),
        value: Some(proto::AnyValue {
            value: Some(proto::any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

fn unix_nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn span_message(span: &SpanData) -> proto::Span {
    let mut flags = FLAG_HAS_IS_REMOTE | u32::from(span.context.flags());
    if span.parent_remote {
        flags |= FLAG_IS_REMOTE;
    }
    proto::Span {
        trace_id: span.context.trace_id.0.to_vec(),
        span_id: span.context.span_id.0.to_vec(),
        trace_state: span
            .context
            .trace_state
            .as_ref()
            .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
            .unwrap_or_default(),
        parent_span_id: span.parent_span_id.map_or(Vec::new(), |id| id.0.to_vec()),
        name: span.name.to_string(),
        kind: span.kind as i32,
        start_time_unix_nano: unix_nanos(span.start),
        end_time_unix_nano: unix_nanos(span.end),
        attributes: span
            .attributes
            .iter()
            .map(|kv| proto::KeyValue {
                key: kv.key.to_owned(),
                value: Some(any_value(&kv.value)),
            })
            .collect(),
        dropped_attributes_count: span.attributes.dropped(),
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(proto::Status {
            message: span.status.message.to_string(),
            code: span.status.code as i32,
        }),
        flags,
    }
}

/// The export request for `batch`: one `ResourceSpans`, one `ScopeSpans` per scope (in order of
/// first appearance), spans in the order they ended.
pub fn export_request(
    batch: &[Box<SpanData>],
    resource: &Resource,
) -> proto::ExportTraceServiceRequest {
    let mut scopes: Vec<(&'static Scope, Vec<proto::Span>)> = Vec::new();
    for span in batch {
        let message = span_message(span);
        match scopes.iter_mut().find(|(s, _)| *s == span.scope) {
            Some((_, spans)) => spans.push(message),
            None => scopes.push((span.scope, vec![message])),
        }
    }
    proto::ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(proto::Resource {
                attributes: resource.iter().map(|(k, v)| string_kv(k, v)).collect(),
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            }),
            scope_spans: scopes
                .into_iter()
                .map(|(scope, spans)| proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: scope.name.to_owned(),
                        version: scope.version.to_owned(),
                        attributes: Vec::new(),
                        dropped_attributes_count: 0,
                    }),
                    spans,
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: String::new(),
        }],
    }
}

/// Which OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `http/protobuf`.
    HttpProtobuf,
    /// `grpc`.
    Grpc,
}

/// Where an OTLP exporter sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// TLS (`https`) or plaintext (`http`, h2c for gRPC).
    pub tls: bool,
    /// Host name or IP address (no brackets), for DNS and TLS server name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Request path (`http/protobuf` only; gRPC uses the service method path).
    pub path: String,
}

impl OtlpEndpoint {
    /// `host:port`, with brackets around IPv6 addresses.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A client TLS configuration trusting the system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR`
/// honoured), as Go's exporters do.
pub fn system_tls_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    roots
}

fn tls_connector(roots: rustls::RootCertStore, alpn: &[u8]) -> Result<TlsConnector, ExportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ExportError::new(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The OTLP exporter (either transport).
pub struct OtlpExporter {
    transport: Transport,
    endpoint: OtlpEndpoint,
    authority: String,
    headers: HeaderMap,
    timeout: Duration,
    grpc_path: &'static str,
    tls: Option<TlsConnector>,
    http1: Option<http1::SendRequest<Full<Bytes>>>,
    http2: Option<http2::SendRequest<tonic::body::Body>>,
}

impl fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("transport", &self.transport)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// An exporter to `endpoint`, sending `headers` with every request, each export bounded by
    /// `timeout`. TLS endpoints trust the system roots.
    pub fn new(
        transport: Transport,
        endpoint: OtlpEndpoint,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Result<Self, ExportError> {
        let roots = if endpoint.tls {
            system_tls_roots()
        } else {
            rustls::RootCertStore::empty()
        };
        Self::with_roots(transport, endpoint, headers, timeout, roots)
    }

    /// As [`OtlpExporter::new`], trusting `roots` for TLS.
    pub fn with_roots(
        transport: Transport,
        endpoint: OtlpEndpoint,
        headers: HeaderMap,
        timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Result<Self, ExportError> {
        let alpn: &[u8] = match transport {
            Transport::HttpProtobuf => b"http/1.1",
            Transport::Grpc => b"h2",
        };
        let tls = if endpoint.tls {
            Some(tls_connector(roots, alpn)?)
        } else {
            None
        };
        Ok(OtlpExporter {
            transport,
            authority: endpoint.authority(),
            endpoint,
            headers,
            timeout,
            grpc_path: GRPC_EXPORT_PATH,
            tls,
            http1: None,
            http2: None,
        })
    }

    /// Where it sends.
    pub fn endpoint(&self) -> &OtlpEndpoint {
        &self.endpoint
    }

    /// Calls the gRPC method `path` (e.g. the metrics service's `Export`) instead of the trace
    /// service's.
    pub fn with_grpc_path(mut self, path: &'static str) -> Self {
        self.grpc_path = path;
        self
    }

    /// Sends one encoded export request (`http/protobuf`: `POST` to the endpoint's path; `grpc`:
    /// the configured method), bounded by the exporter's timeout. A non-success answer is an
    /// error; a partial success is logged.
    pub async fn send(&mut self, message: Bytes) -> Result<(), ExportError> {
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, async {
            match self.transport {
                Transport::HttpProtobuf => self.export_http(message).await,
                Transport::Grpc => self.export_grpc(message).await,
            }
        })
        .await;
        match result {
            Ok(result) => result,
            Err(_) => {
                // The connection may be stuck mid-exchange: start over next time.
                self.http1 = None;
                self.http2 = None;
                Err(ExportError::new(format!(
                    "export to {} timed out after {timeout:?}",
                    self.endpoint
                )))
            }
        }
    }

    /// Drops the kept connection.
    pub fn close(&mut self) {
        self.http1 = None;
        self.http2 = None;
    }

    async fn connect(&self) -> Result<Box<dyn Io>, ExportError> {
        let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|e| ExportError::new(format!("connecting to {}: {e}", self.authority)))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name =
            rustls::pki_types::ServerName::try_from(self.endpoint.host.clone()).map_err(|e| {
                ExportError::new(format!("TLS server name {}: {e}", self.endpoint.host))
            })?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| ExportError::new(format!("TLS handshake with {}: {e}", self.authority)))?;
        Ok(Box::new(stream))
    }

    async fn http1_sender(
        &mut self,
    ) -> Result<(http1::SendRequest<Full<Bytes>>, bool), ExportError> {
        if let Some(mut sender) = self.http1.take() {
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
        let io = self.connect().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await.map_err(|e| {
            ExportError::new(format!("HTTP handshake with {}: {e}", self.authority))
        })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, false))
    }

    async fn http2_sender(&mut self) -> Result<http2::SendRequest<tonic::body::Body>, ExportError> {
        if let Some(sender) = self.http2.take() {
            if !sender.is_closed() {
                return Ok(sender);
            }
        }
        let io = self.connect().await?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| {
                ExportError::new(format!("HTTP/2 handshake with {}: {e}", self.authority))
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn add_headers(&self, request: &mut Request<Full<Bytes>>) {
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
    }

    async fn export_http(&mut self, message: Bytes) -> Result<(), ExportError> {
        let mut retried = false;
        loop {
            let (mut sender, reused) = self.http1_sender().await?;
            let mut request = Request::post(self.endpoint.path.as_str())
                .header(HOST, self.authority.as_str())
                .header(CONTENT_TYPE, "application/x-protobuf")
                .header(USER_AGENT, USER_AGENT_VALUE)
                .body(Full::new(message.clone()))
                .map_err(|e| ExportError::new(format!("building the request: {e}")))?;
            self.add_headers(&mut request);
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                // A kept-alive connection the collector closed meanwhile: one retry on a new one.
                Err(_) if reused && !retried => {
                    retried = true;
                    continue;
                }
                Err(e) => {
                    return Err(ExportError::new(format!(
                        "sending to {}: {e}",
                        self.endpoint
                    )))
                }
            };
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| ExportError::new(format!("reading the response: {e}")))?
                .to_bytes();
            self.http1 = Some(sender);
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
                return Err(ExportError::new(format!(
                    "{} answered {status}: {}",
                    self.endpoint,
                    text.trim()
                )));
            }
            report_partial_success(&body);
            return Ok(());
        }
    }

    async fn export_grpc(&mut self, message: Bytes) -> Result<(), ExportError> {
        let sender = self.http2_sender().await?;
        let scheme = if self.endpoint.tls { "https" } else { "http" };
        let origin = http::Uri::try_from(format!("{scheme}://{}", self.authority))
            .map_err(|e| ExportError::new(format!("endpoint {}: {e}", self.endpoint)))?;
        let service = H2Service {
            sender: sender.clone(),
            headers: self.headers.clone(),
        };
        let mut grpc = tonic::client::Grpc::with_origin(service, origin)
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        grpc.ready()
            .await
            .map_err(|e| ExportError::new(format!("sending to {}: {e}", self.endpoint)))?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        let path = http::uri::PathAndQuery::from_static(self.grpc_path);
        let result = grpc.unary(request, path, RawCodec).await;
        self.http2 = Some(sender);
        match result {
            Ok(response) => {
                report_partial_success(response.get_ref());
                Ok(())
            }
            Err(status) => Err(ExportError::new(format!(
                "{} answered grpc-status {}: {}",
                self.endpoint,
                status.code() as i32,
                status.message()
            ))),
        }
    }
}

/// The kept HTTP/2 connection as the service tonic's client calls; adds the exporter's headers
/// (`User-Agent`, `OTEL_EXPORTER_OTLP_*HEADERS`) to each call.
struct H2Service {
    sender: http2::SendRequest<tonic::body::Body>,
    headers: HeaderMap,
}

impl tower_service::Service<Request<tonic::body::Body>> for H2Service {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<tonic::body::Body>) -> Self::Future {
        let headers = request.headers_mut();
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        Box::pin(self.sender.send_request(request))
    }
}

/// A tonic codec for messages that are already encoded: every signal's export request goes out
/// as the bytes its caller encoded, and the response comes back as bytes (decoded by
/// [`report_partial_success`]). Framing, `grpc-status` and `grpc-message` are tonic's.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Logs a partial success. Every signal's `Export*ServiceResponse` has the same shape
/// (`partial_success { int64 rejected_<items> = 1; string error_message = 2; }`).
fn report_partial_success(body: &[u8]) {
    if let Ok(response) = proto::ExportTraceServiceResponse::decode(body) {
        if let Some(partial) = response.partial_success {
            if partial.rejected_spans > 0 || !partial.error_message.is_empty() {
                tracing::warn!(
                    rejected = partial.rejected_spans,
                    message = partial.error_message,
                    "the OTLP collector rejected part of an export"
                );
            }
        }
    }
}

impl SpanExporter for OtlpExporter {
    fn export<'a>(
        &'a mut self,
        batch: &'a [Box<SpanData>],
        resource: &'a Resource,
    ) -> ExportFuture<'a> {
        let message = Bytes::from(export_request(batch, resource).encode_to_vec());
        Box::pin(self.send(message))
    }

    fn shutdown(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.close();
        Box::pin(async {})
    }
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`-style text (`k=v,k2=v2`, values percent-decoded) into
/// headers; malformed entries are skipped with a warning.
pub fn parse_headers(text: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for entry in text.split(',').filter(|e| !e.trim().is_empty()) {
        let parsed = entry.split_once('=').and_then(|(k, v)| {
            let name = http::header::HeaderName::from_bytes(k.trim().as_bytes()).ok()?;
            let value = crate::trace::resource::percent_decode(v.trim())?;
            Some((name, HeaderValue::from_str(&value).ok()?))
        });
        match parsed {
            Some((name, value)) => {
                headers.append(name, value);
            }
            None => tracing::warn!(entry, "ignoring a malformed OTLP header entry"),
        }
    }
    headers
}
