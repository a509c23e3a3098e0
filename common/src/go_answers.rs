//! The answers Go's `net/http` server writes by itself on an HTTP/1 connection, reproduced byte for
//! byte (README "HTTP/1 edge cases").
//!
//! Go answers a request it cannot read (bad header, bad framing, a head over the size limit) and
//! an HTTP/1.1 request without `Host` with fixed raw bytes and closes the connection:
//!
//! ```text
//! HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request
//! ```
//!
//! hyper answers the unreadable ones itself, with an empty `400`/`431` and no hook to change it.
//! [`GoAnswers`] sits between hyper and the socket and replaces exactly those automatic heads
//! (recognised by their fixed shape, and by no request being in the service at that moment) with
//! Go's bytes. The missing-`Host` answer comes from the service ([`check_http1`]), which flags the
//! connection so that its empty `400` head is replaced the same way. Everything else passes
//! through untouched; after a `101` (websocket, h2c) the wrapper steps aside for good.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{ready, Context, Poll};

use http::header::HOST;
use http::{HeaderValue, Method, Request, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Go's answer to a request it cannot parse (`server.go`, the `publicErr` fallback).
pub const GO_BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request";
/// Go's answer to a request head over its size limit (`errTooLarge`).
pub const GO_HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large";
/// Go's answer to an HTTP/1.1 request without `Host` (a `statusError`: the text is in the status
/// line and the body).
pub const GO_MISSING_HOST: &[u8] = b"HTTP/1.1 400 Bad Request: missing required Host header\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request: missing required Host header";

/// State one connection's service and its [`GoAnswers`] share. Both run in the connection's task
/// (hyper polls the HTTP/1 service and writes in the same task), so relaxed loads and stores are
/// enough; no read-modify-write is needed.
#[derive(Default)]
pub struct ConnShared {
    /// HTTP/1 requests handed to the service whose response head has not been seen yet.
    in_service: AtomicU32,
    /// The service answered "missing Host": its `400` head is to be replaced.
    missing_host: AtomicBool,
    /// What an h2c upgrade takes over (h2c listeners only).
    h2c: std::sync::Mutex<Option<crate::h2c_upgrade::H2cHandover>>,
    /// The request in the service is HTTP/1.0 (1xx heads relayed to it say `HTTP/1.0`).
    http10: AtomicBool,
    /// A `100 Continue` was sent for the request in the service.
    continue_sent: AtomicBool,
    /// `info_out` has heads to write.
    pub(crate) info_pending: AtomicBool,
    /// 1xx heads relayed from the app, to be written before the final head
    /// ([`crate::informational`]).
    pub(crate) info_out: std::sync::Mutex<crate::informational::InfoOut>,
}

impl std::fmt::Debug for ConnShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnShared")
            .field("in_service", &self.in_service)
            .field("missing_host", &self.missing_host)
            .finish_non_exhaustive()
    }
}

impl ConnShared {
    /// The state of a connection on an h2c listener: `handover` goes to the HTTP/2 connection
    /// if the client upgrades.
    pub fn with_h2c_handover(handover: crate::h2c_upgrade::H2cHandover) -> Self {
        ConnShared {
            h2c: std::sync::Mutex::new(Some(handover)),
            ..ConnShared::default()
        }
    }

    /// The handover, once (the connection upgrades).
    pub fn take_h2c_handover(&self) -> Option<crate::h2c_upgrade::H2cHandover> {
        self.h2c.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// An HTTP/1 request of `version` enters the service.
    #[inline]
    pub fn request_started(&self, version: Version) {
        let n = self.in_service.load(Ordering::Relaxed);
        self.in_service.store(n.wrapping_add(1), Ordering::Relaxed);
        self.http10
            .store(version == Version::HTTP_10, Ordering::Relaxed);
        self.continue_sent.store(false, Ordering::Relaxed);
    }

    /// Whether the request in the service is HTTP/1.0.
    pub(crate) fn is_http10(&self) -> bool {
        self.http10.load(Ordering::Relaxed)
    }

    /// Notes that a `100 Continue` goes out for the request in the service; false if one already
    /// did (this one is to be dropped).
    pub(crate) fn mark_continue_sent(&self) -> bool {
        !self.continue_sent.swap(true, Ordering::Relaxed)
    }

    /// The service answers "missing required Host header".
    pub fn answer_missing_host(&self) {
        self.missing_host.store(true, Ordering::Relaxed);
    }

    fn head_written(&self) -> u32 {
        let n = self.in_service.load(Ordering::Relaxed);
        self.in_service
            .store(n.saturating_sub(1), Ordering::Relaxed);
        n
    }
}

/// What the server does with an HTTP/1 request before the service chain sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Http1Check {
    /// Serve it.
    Serve,
    /// HTTP/1.1 without `Host` (and not `CONNECT`): Go's `400` and close.
    MissingHost,
}

/// Go's server rules for an HTTP/1.x request head (`readRequest`): an absolute-form target's
/// authority replaces `Host` (RFC 9112 §3.2.2), and an HTTP/1.1 request must carry a `Host`
/// (`CONNECT` is exempt). Costs one URI field check and, for origin-form targets, a look at the
/// first header (user agents send `Host` first: RFC 9110 §7.2), else one header lookup.
#[inline]
pub fn check_http1<B>(request: &mut Request<B>) -> Http1Check {
    if let Some(authority) = request.uri().authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(HOST, host);
        }
        return Http1Check::Serve;
    }
    if request.version() == Version::HTTP_11
        && request.method() != Method::CONNECT
        && !crate::header_scan::has_host(request.headers())
    {
        return Http1Check::MissingHost;
    }
    Http1Check::Serve
}

pin_project_lite::pin_project! {
    /// The connection's IO as hyper sees it; see the module documentation.
    pub struct GoAnswers<S> {
        #[pin]
        inner: S,
        shared: std::sync::Arc<ConnShared>,
        // HTTP/1 heads are inspected; false for HTTP/2 and after a protocol switch.
        http1: bool,
        // Replacement bytes still to be written, from `pending_at`.
        pending: &'static [u8],
        pending_at: usize,
    }
}

impl<S> GoAnswers<S> {
    /// Wraps `inner`; `http1`: the connection speaks HTTP/1 (false: it started with the HTTP/2
    /// preface, and nothing is inspected).
    pub fn new(inner: S, shared: std::sync::Arc<ConnShared>, http1: bool) -> Self {
        GoAnswers {
            inner,
            shared,
            http1,
            pending: &[],
            pending_at: 0,
        }
    }
}

/// hyper's automatic error answer after the status line: the fields it always writes, in its
/// order, either case (`title_case_headers`), then `Date` (29 bytes).
fn is_automatic_rest(rest: &[u8]) -> bool {
    const LOWER: &[u8] = b"connection: close\r\ncontent-length: 0\r\ndate: ";
    const TITLE: &[u8] = b"Connection: close\r\nContent-Length: 0\r\nDate: ";
    let fields = if rest.starts_with(TITLE) {
        TITLE.len()
    } else if rest.starts_with(LOWER) {
        LOWER.len()
    } else {
        return false;
    };
    rest.len() == fields + 29 + 4 && rest.ends_with(b"\r\n\r\n")
}

/// hyper's answer to `Expect: 100-continue`, written when the request body is first read.
const HYPER_CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What to write instead of the head `buf` (a whole write starting with `HTTP/1.`), if anything:
/// `Some((bytes, n))`: `bytes` replace the first `n` bytes of `buf`.
fn replacement(
    shared: &ConnShared,
    http1: &mut bool,
    buf: &[u8],
) -> Option<(&'static [u8], usize)> {
    let status = buf.get(9..12)?;
    if status[0] == b'1' {
        // 100 Continue is not a final head; 101 hands the connection over.
        if status == b"101" {
            *http1 = false;
        } else if buf.starts_with(HYPER_CONTINUE) && !shared.mark_continue_sent() {
            // The app's own 100 was relayed already ([`crate::informational`]).
            return Some((&[], HYPER_CONTINUE.len()));
        }
        return None;
    }
    replace_final(shared, buf).map(|bytes| (bytes, buf.len()))
}

/// [`replacement`] for a final head.
fn replace_final(shared: &ConnShared, buf: &[u8]) -> Option<&'static [u8]> {
    const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\n";
    const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n";
    let in_service = shared.head_written();
    if !buf.starts_with(BAD_REQUEST) && !buf.starts_with(TOO_LARGE) {
        return None;
    }
    if buf.starts_with(BAD_REQUEST)
        && shared.missing_host.swap(false, Ordering::Relaxed)
        && buf.ends_with(b"\r\n\r\n")
    {
        return Some(GO_MISSING_HOST);
    }
    if in_service != 0 {
        // A 400/431 the service (the app) answered: relayed as it is.
        return None;
    }
    if let Some(rest) = buf.strip_prefix(BAD_REQUEST) {
        return is_automatic_rest(rest).then_some(GO_BAD_REQUEST);
    }
    let rest = buf.strip_prefix(TOO_LARGE)?;
    is_automatic_rest(rest).then_some(GO_HEAD_TOO_LARGE)
}

impl<S: AsyncWrite> GoAnswers<S> {
    /// Writes what is left of a replacement.
    fn poll_pending(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut this = self.project();
        while *this.pending_at < this.pending.len() {
            let n = ready!(this
                .inner
                .as_mut()
                .poll_write(cx, &this.pending[*this.pending_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *this.pending_at += n;
        }
        Poll::Ready(Ok(()))
    }

    /// `Some(n)`: `first` (the first buffer of a write, `n` bytes) was a head to replace, and is
    /// taken.
    #[inline]
    fn take_head(self: Pin<&mut Self>, first: &[u8]) -> Option<usize> {
        if !first.starts_with(b"HTTP/1.") {
            return None;
        }
        let this = self.project();
        if !*this.http1 {
            return None;
        }
        let (bytes, taken) = replacement(this.shared, this.http1, first)?;
        *this.pending = bytes;
        *this.pending_at = 0;
        Some(taken)
    }
}

impl<S: crate::park::PollReadReady> crate::park::PollReadReady for GoAnswers<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }
}

impl<S: AsyncRead> AsyncRead for GoAnswers<S> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for GoAnswers<S> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.as_mut().poll_pending(cx))?;
        if let Some(taken) = self.as_mut().take_head(buf) {
            return Poll::Ready(Ok(taken));
        }
        self.project().inner.poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.as_mut().poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(taken) = self.as_mut().take_head(first) {
                return Poll::Ready(Ok(taken));
            }
        }
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.as_mut().poll_pending(cx))?;
        let mut this = self.project();
        // hyper flushes its IO only once its own write buffer is empty: a message boundary.
        if *this.http1 && this.shared.info_pending.load(Ordering::Relaxed) {
            ready!(this
                .shared
                .poll_write_informational(this.inner.as_mut(), cx))?;
        }
        this.inner.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.as_mut().poll_pending(cx))?;
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replaced(shared: &ConnShared, http1: &mut bool, buf: &[u8]) -> Option<&'static [u8]> {
        replacement(shared, http1, buf).map(|(bytes, taken)| {
            assert_eq!(taken, buf.len());
            bytes
        })
    }

    const DATE: &str = "Sat, 05 Dec 2026 19:28:02 GMT";

    fn auto(status: &str, title: bool) -> Vec<u8> {
        let fields = if title {
            "Connection: close\r\nContent-Length: 0\r\nDate: "
        } else {
            "connection: close\r\ncontent-length: 0\r\ndate: "
        };
        format!("HTTP/1.1 {status}\r\n{fields}{DATE}\r\n\r\n").into_bytes()
    }

    #[test]
    fn automatic_heads_are_replaced_when_no_request_is_in_the_service() {
        let shared = ConnShared::default();
        let mut http1 = true;
        for title in [false, true] {
            assert_eq!(
                replaced(&shared, &mut http1, &auto("400 Bad Request", title)),
                Some(GO_BAD_REQUEST)
            );
            assert_eq!(
                replaced(
                    &shared,
                    &mut http1,
                    &auto("431 Request Header Fields Too Large", title)
                ),
                Some(GO_HEAD_TOO_LARGE)
            );
        }
        // hyper's 414 has no Go counterpart: left alone.
        assert_eq!(
            replaced(&shared, &mut http1, &auto("414 URI Too Long", true)),
            None
        );
    }

    #[test]
    fn a_relayed_400_is_never_replaced() {
        let shared = ConnShared::default();
        let mut http1 = true;
        shared.request_started(Version::HTTP_11);
        // Byte for byte hyper's shape, but a request is in the service: it is the app's answer.
        assert_eq!(
            replaced(&shared, &mut http1, &auto("400 Bad Request", true)),
            None
        );
        // That head was counted; the next automatic one is replaced again.
        assert_eq!(
            replaced(&shared, &mut http1, &auto("400 Bad Request", true)),
            Some(GO_BAD_REQUEST)
        );
        // Another shape (a body, other fields) is never replaced.
        let other =
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(replaced(&shared, &mut http1, other), None);
    }

    #[test]
    fn missing_host_head_is_replaced_once() {
        let shared = ConnShared::default();
        let mut http1 = true;
        shared.request_started(Version::HTTP_11);
        shared.answer_missing_host();
        let head = format!("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\nDate: {DATE}\r\n\r\n");
        assert_eq!(
            replaced(&shared, &mut http1, head.as_bytes()),
            Some(GO_MISSING_HOST)
        );
        assert!(!shared.missing_host.load(Ordering::Relaxed));
    }

    #[test]
    fn switching_protocols_ends_inspection() {
        let shared = ConnShared::default();
        let mut http1 = true;
        assert_eq!(
            replaced(&shared, &mut http1, b"HTTP/1.1 100 Continue\r\n\r\n"),
            None
        );
        assert!(http1);
        assert_eq!(
            replaced(
                &shared,
                &mut http1,
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
            ),
            None
        );
        assert!(!http1);
    }

    #[test]
    fn host_rules() {
        let mut absolute = Request::get("http://other.example/abs?q=1")
            .header("host", "x")
            .body(())
            .unwrap();
        assert_eq!(check_http1(&mut absolute), Http1Check::Serve);
        assert_eq!(absolute.headers()["host"], "other.example");

        let mut no_host = Request::get("/").body(()).unwrap();
        assert_eq!(check_http1(&mut no_host), Http1Check::MissingHost);
        let mut old = Request::get("/")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        assert_eq!(check_http1(&mut old), Http1Check::Serve);
        let mut connect = Request::connect("/").body(()).unwrap();
        assert_eq!(check_http1(&mut connect), Http1Check::Serve);

        // `Host` first, later, repeated, or only a name like it.
        for (names, present) in [
            (&["host"][..], true),
            (&["host", "accept"][..], true),
            (&["accept", "host"][..], true),
            (&["accept", "x-a", "host", "host"][..], true),
            (&["accept"][..], false),
            (&["x-host", "hostname", "accept"][..], false),
        ] {
            let mut request = Request::get("/");
            for name in names {
                request = request.header(*name, "h");
            }
            let mut request = request.body(()).unwrap();
            let expected = if present {
                Http1Check::Serve
            } else {
                Http1Check::MissingHost
            };
            assert_eq!(check_http1(&mut request), expected, "{names:?}");
        }
    }

    #[tokio::test]
    async fn replaced_bytes_reach_the_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(4096);
        let mut io = GoAnswers::new(server, std::sync::Arc::default(), true);
        io.write_all(&auto("400 Bad Request", true)).await.unwrap();
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let mut out = Vec::new();
        let mut client = client;
        client.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, GO_BAD_REQUEST);
    }
}
