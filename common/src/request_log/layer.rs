//! The request log (queue-proxy §7.2): one line per request on stdout, written atomically once
//! the response has been fully sent (for an upgraded connection: when the tunnel closes). Probe
//! requests are skipped unless asked for.
//!
//! The stage is the queue-proxy's observability stage (`queue_proxy::observed`): it captures a
//! request's line as the request enters ([`RequestLogger::capture()`]), records the status and
//! the body's size on it ([`PendingLine::respond()`], [`PendingLine::finish()`]), and the line
//! is written when dropped. The activator renders its own lines with [`RequestLine`].

use std::io::Write as _;
use std::sync::Arc;

use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::Body;
use tokio::time::Instant;

use crate::classify::is_probe;
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

/// The request log of one connection: the settings (`None`: off) and the entry point that
/// captures a request's line ([`RequestLogger::capture()`]).
#[derive(Clone, Debug)]
pub struct RequestLogger {
    settings: Option<&'static RequestLogSettings>,
    remote_addr: Arc<str>,
}

impl RequestLogger {
    /// The request log of one connection from `remote_addr` (`ip:port`).
    pub fn new(
        settings: Option<&'static RequestLogSettings>,
        remote_addr: std::net::SocketAddr,
    ) -> Self {
        let remote_addr: Arc<str> = match settings {
            Some(_) => Arc::from(remote_addr.to_string()),
            None => Arc::from(""),
        };
        RequestLogger {
            settings: settings.filter(|s| !s.template.is_empty()),
            remote_addr,
        }
    }

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
