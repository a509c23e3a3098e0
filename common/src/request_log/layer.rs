//! The request-log stage (queue-proxy §7.2, activator §7.3): one line per request on stdout,
//! written atomically once the response has been fully sent (for an upgraded connection: when the
//! tunnel closes). Probe requests are skipped unless asked for.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{BodyError, LocalBody};
use crate::classify::is_probe;
use crate::proxy::TunnelScope;
use go_text_template::{trace_id, LogEntry, RequestLogTemplate, RevisionInfo};

/// What the stage logs and how.
#[derive(Debug)]
pub struct RequestLogSettings {
    /// The parsed template (empty: nothing is written).
    pub template: RequestLogTemplate,
    /// `.Revision.*` values.
    pub revision: RevisionInfo,
    /// Also log probe requests.
    pub log_probes: bool,
}

/// Tower layer writing request-log lines; a pass-through when `settings` is `None`.
#[derive(Clone, Debug)]
pub struct RequestLogLayer {
    settings: Option<&'static RequestLogSettings>,
    remote_addr: Arc<str>,
}

impl RequestLogLayer {
    /// The layer for one connection from `remote_addr` (`ip:port`).
    pub fn new(
        settings: Option<&'static RequestLogSettings>,
        remote_addr: std::net::SocketAddr,
    ) -> Self {
        let remote_addr: Arc<str> = match settings {
            Some(_) => Arc::from(remote_addr.to_string()),
            None => Arc::from(""),
        };
        RequestLogLayer {
            settings: settings.filter(|s| !s.template.is_empty()),
            remote_addr,
        }
    }
}

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestLog {
            inner,
            settings: self.settings,
            remote_addr: self.remote_addr.clone(),
        }
    }
}

/// See [`RequestLogLayer`].
#[derive(Clone, Debug)]
pub struct RequestLog<S> {
    inner: S,
    settings: Option<&'static RequestLogSettings>,
    remote_addr: Arc<str>,
}

impl RequestLogLayer {
    /// The line of `request`, captured as it enters (before it moves on): `None` when logging
    /// is off or the request is a probe not to be logged. The line is written when dropped,
    /// with the status and size recorded by then ([`PendingLine::respond`],
    /// [`PendingLine::finish`]); for a caller that wraps the response itself.
    pub fn capture<B: Body>(&self, request: &Request<B>) -> Option<Box<PendingLine>> {
        let settings = self.settings?;
        (settings.log_probes || !is_probe(request.headers())).then(|| {
            Box::new(PendingLine::capture(
                settings,
                self.remote_addr.clone(),
                request,
            ))
        })
    }

    /// Whether lines are written at all.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.settings.is_some()
    }
}

/// The request facts a line needs, captured before the request moves on; the line is written
/// when this is dropped.
pub struct PendingLine {
    settings: &'static RequestLogSettings,
    remote_addr: Arc<str>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    content_length: i64,
    start: Instant,
    status: u16,
    size: u64,
}

impl std::fmt::Debug for PendingLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLine")
            .field("status", &self.status)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PendingLine {
    /// The response's status (`200` until told).
    #[inline]
    pub fn respond(&mut self, status: u16) {
        self.status = status;
    }

    /// Writes the line now, after `size` bytes of response body.
    pub fn finish(mut self: Box<Self>, size: u64) {
        self.size = size;
    }

    fn capture<B: Body>(
        settings: &'static RequestLogSettings,
        remote_addr: Arc<str>,
        request: &Request<B>,
    ) -> Self {
        let headers = request.headers().clone();
        let content_length = match headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            Some(n) => n,
            None if request.body().is_end_stream() => 0,
            None => -1,
        };
        PendingLine {
            settings,
            remote_addr,
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers,
            content_length,
            start: Instant::now(),
            status: 200,
            size: 0,
        }
    }
}

/// The request-line fields of a log entry, as Go's `http.Request` exposes them: protocol name
/// and version numbers, the request target (`RequestURI`, `/` when empty) and the host (the
/// absolute URI's authority, else the `Host` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// `HTTP/1.1`, `HTTP/2.0`, ….
    pub proto: &'static str,
    /// Major version.
    pub proto_major: u8,
    /// Minor version.
    pub proto_minor: u8,
    /// Path and query.
    pub target: &'a str,
    /// Host.
    pub host: &'a str,
}

impl<'a> RequestLine<'a> {
    /// The fields for a request with this version, URI and headers.
    pub fn of(version: Version, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        let (proto, proto_major, proto_minor) = match version {
            Version::HTTP_09 => ("HTTP/0.9", 0, 9),
            Version::HTTP_10 => ("HTTP/1.0", 1, 0),
            Version::HTTP_2 => ("HTTP/2.0", 2, 0),
            Version::HTTP_3 => ("HTTP/3.0", 3, 0),
            _ => ("HTTP/1.1", 1, 1),
        };
        let host = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        RequestLine {
            proto,
            proto_major,
            proto_minor,
            target: uri.path_and_query().map_or("/", |pq| pq.as_str()),
            host,
        }
    }
}

impl Drop for PendingLine {
    fn drop(&mut self) {
        let RequestLine {
            proto,
            proto_major: major,
            proto_minor: minor,
            target,
            host,
        } = RequestLine::of(self.version, &self.uri, &self.headers);
        let entry = LogEntry {
            method: self.method.as_str(),
            url: target,
            request_uri: target,
            proto,
            proto_major: major,
            proto_minor: minor,
            host,
            remote_addr: &self.remote_addr,
            content_length: self.content_length,
            headers: &self.headers,
            status: self.status,
            response_size: self.size,
            latency_secs: self.start.elapsed().as_secs_f64(),
            revision: &self.settings.revision,
            trace_id: trace_id(&self.headers),
        };
        let mut line = Vec::with_capacity(256);
        self.settings.template.render(&entry, &mut line);
        // One write under the lock: lines from concurrent requests never interleave.
        let _ = std::io::stdout().lock().write_all(&line);
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for RequestLog<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    ReqB: Body,
    B: LocalBody,
{
    type Response = Response<LoggedBody<B>>;
    type Error = S::Error;
    type Future = RequestLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Out of line: inlined, its two arms (logged or not) wrote their future into one stack
    // slot, copied from there into the caller's (256 bytes in the queue-proxy's metrics stage,
    // 29 instructions per request). Out of line each arm writes it straight into the caller's.
    #[inline(never)]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        match self.settings {
            Some(settings) => self.call_logged(settings, request),
            // Nothing borrows the request before the move: no copy of it (see `call_logged`).
            None => RequestLogFuture {
                future: self.inner.call(request),
                line: None,
            },
        }
    }
}

impl<S> RequestLog<S> {
    /// [`Service::call`] with request logging on. Out of line and taking the request by value:
    /// a request whose address has been handed to another function (the probe check and the
    /// line's capture here) is copied when it is moved on, and with those borrows in `call`
    /// itself that copy (272 bytes) was made for every request, logging on or off.
    #[inline(never)]
    fn call_logged<ReqB, B>(
        &mut self,
        settings: &'static RequestLogSettings,
        request: Request<ReqB>,
    ) -> RequestLogFuture<S::Future>
    where
        S: Service<Request<ReqB>, Response = Response<B>>,
        ReqB: Body,
    {
        let line = (settings.log_probes || !is_probe(request.headers())).then(|| {
            Box::new(PendingLine::capture(
                settings,
                self.remote_addr.clone(),
                &request,
            ))
        });
        RequestLogFuture {
            future: self.inner.call(request),
            line,
        }
    }
}

pin_project! {
    /// Response future of [`RequestLog`].
    pub struct RequestLogFuture<F> {
        #[pin]
        future: F,
        // Boxed: request logging is off by default, and inline these 272 bytes made every
        // request's future and response body that much larger (and every move of them).
        line: Option<Box<PendingLine>>,
    }
}

impl<F, B, E> std::future::Future for RequestLogFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<LoggedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.future.poll(cx))?;
        let mut line = this.line.take();
        if let Some(l) = line.as_mut() {
            l.status = response.status().as_u16();
        }
        if let Some(scope) = response.extensions().get::<TunnelScope>() {
            // Upgraded: the line is written when the tunnel closes.
            if let Some(l) = line.take() {
                scope.hold(l);
            }
        }
        Poll::Ready(Ok(response.map(|body| LoggedBody { body, line })))
    }
}

pin_project! {
    /// Counts response bytes; the line is written when the body ends or is dropped. A body that
    /// fails mid-stream is logged with status 500 (the response was aborted).
    pub struct LoggedBody<B> {
        #[pin]
        body: B,
        line: Option<Box<PendingLine>>,
    }
}

impl<B: LocalBody> LocalBody for LoggedBody<B> {
    fn full(bytes: Bytes) -> Self {
        LoggedBody {
            body: B::full(bytes),
            line: None,
        }
    }
    #[inline]
    fn is_fixed(&self) -> bool {
        self.body.is_fixed()
    }
}

impl<B> Body for LoggedBody<B>
where
    B: Body<Data = Bytes, Error = BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let polled = ready!(this.body.poll_frame(cx));
        if let Some(line) = this.line.as_mut() {
            match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        line.size += data.len() as u64;
                    }
                }
                Some(Err(_)) => {
                    line.status = 500;
                    this.line.take();
                }
                None => {
                    this.line.take();
                }
            }
        }
        Poll::Ready(polled)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
