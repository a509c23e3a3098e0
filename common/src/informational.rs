//! 1xx informational responses (`103 Early Hints`, `102 Processing`, an app's own `100 Continue`)
//! relayed from the app to an HTTP/1 client before the final response, as Go's reverse proxy does
//! (its `Got1xxResponse` hook writes each one with `WriteHeader`). README "HTTP/1 edge cases".
//!
//! hyper 1.12 offers neither half: its HTTP/1 client reports a 1xx only to a callback set on each
//! request (an `Arc` and an extension map allocated per request), and its HTTP/1 server refuses
//! to send one. So both halves work on bytes, where nothing is paid unless a 1xx shows up:
//!
//! - upstream, [`Sniff`] sits under hyper's client connection and looks at the first bytes read
//!   after a request was sent ([`UpstreamInfo::exchange_started`]): a final head ends the look
//!   (one status check per exchange); a 1xx head is copied, re-written as Go writes it
//!   ([`go_head`]) and handed to the exchange's waiting proxy future ([`Relay`]);
//! - that future runs in the client connection's task, where [`ConnScope`] has put the
//!   connection's [`ConnShared`] in a thread-local; it queues the head there, and holds the final
//!   response back until the head is on the wire;
//! - the connection's IO layer ([`crate::go_answers::GoAnswers`]) writes queued heads when hyper
//!   flushes. hyper calls its IO's `poll_flush` only once its own write buffer is empty, and does
//!   not encode the final head while the response is held: so a 1xx head always lands between the
//!   previous response's last byte and this response's head, pipelined requests included.
//!
//! A `100 Continue` goes out at most once per request: hyper's own (sent when the request body is
//! first read, for `Expect: 100-continue`) or the app's, whichever comes first (Go's writer also
//! stops its automatic `100` once one was written).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::go_answers::ConnShared;

/// Largest 1xx head relayed; a bigger one is dropped (hyper still reads past it).
const MAX_HEAD: usize = 64 << 10;
/// Most bytes of 1xx heads waiting for a slow client on one connection; more are dropped.
const MAX_QUEUED: usize = 64 << 10;
/// Most header fields of a relayed 1xx head (as for final heads, see `proxy::pool`).
const MAX_FIELDS: usize = 500;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Upstream side.

/// What one upstream HTTP/1 connection's [`Sniff`] and the proxy futures using the connection
/// share.
#[derive(Debug, Default)]
pub struct UpstreamInfo {
    /// A request was sent and its final head not seen yet.
    expect: AtomicBool,
    /// `heads` is not empty.
    ready: AtomicBool,
    /// 1xx heads in Go's form, oldest first.
    heads: Mutex<Vec<Vec<u8>>>,
    /// The proxy future waiting for this exchange's response.
    waker: AtomicWaker,
}

impl UpstreamInfo {
    /// A request is about to be sent on the connection: its response heads are looked at.
    #[inline]
    pub fn exchange_started(&self) {
        if self.ready.load(Ordering::Relaxed) {
            // Left over from an exchange whose proxy future went away.
            lock(&self.heads).clear();
            self.ready.store(false, Ordering::Relaxed);
        }
        // Ordered before the response's first byte by hyper's request channel.
        self.expect.store(true, Ordering::Relaxed);
    }

    fn push(&self, head: Vec<u8>) {
        lock(&self.heads).push(head);
        self.ready.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn take(&self) -> Vec<Vec<u8>> {
        let heads = std::mem::take(&mut *lock(&self.heads));
        self.ready.store(false, Ordering::Relaxed);
        heads
    }
}

pin_project_lite::pin_project! {
    /// An upstream connection's IO as hyper's HTTP/1 client sees it; see the module documentation.
    pub struct Sniff<S> {
        #[pin]
        inner: S,
        info: Arc<UpstreamInfo>,
        // The start of a head that has not fully arrived (rare: a head cut by a read).
        partial: Vec<u8>,
    }
}

impl<S> Sniff<S> {
    /// Wraps `inner`, reporting to `info`.
    pub fn new(inner: S, info: Arc<UpstreamInfo>) -> Self {
        Sniff {
            inner,
            info,
            partial: Vec::new(),
        }
    }
}

/// What the bytes at the start of an awaited head are.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// Not enough bytes to tell (or to find a 1xx head's end): keep them.
    More,
    /// A final head (or bytes hyper will reject): stop looking.
    Final,
    /// A complete 1xx head of this many bytes (leading empty lines included).
    Informational(usize),
}

fn scan(data: &[u8]) -> Scan {
    // Empty lines before a status line are skipped, as hyper's parser does.
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(data.len());
    let head = &data[start..];
    if head.len() < 12 {
        return if b"HTTP/1.".starts_with(&head[..head.len().min(7)]) {
            Scan::More
        } else {
            Scan::Final
        };
    }
    if !head.starts_with(b"HTTP/1.") || head[9] != b'1' || &head[9..12] == b"101" {
        return Scan::Final;
    }
    match head_end(head) {
        Some(end) => Scan::Informational(start + end),
        None => Scan::More,
    }
}

/// The length of the head at the start of `data` (through its empty line), if complete.
fn head_end(data: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = data[from..].iter().position(|&b| b == b'\n') {
        let at = from + i + 1;
        match data.get(at..) {
            Some([b'\n', ..]) => return Some(at + 1),
            Some([b'\r', b'\n', ..]) => return Some(at + 2),
            _ => from = at,
        }
    }
    None
}

impl<S> Sniff<S> {
    /// Looks at `new`, the bytes just read while heads are awaited.
    #[cold]
    #[inline(never)]
    fn look(info: &UpstreamInfo, partial: &mut Vec<u8>, new: &[u8]) {
        let mut owned;
        let mut data: &[u8] = if partial.is_empty() {
            new
        } else {
            owned = std::mem::take(partial);
            owned.extend_from_slice(new);
            &owned[..]
        };
        loop {
            match scan(data) {
                Scan::Final => {
                    info.expect.store(false, Ordering::Relaxed);
                    return;
                }
                Scan::More => {
                    if data.len() > MAX_HEAD {
                        // Not relayed; hyper goes on reading it.
                        info.expect.store(false, Ordering::Relaxed);
                    } else {
                        partial.extend_from_slice(data);
                    }
                    return;
                }
                Scan::Informational(n) => {
                    if let Some(head) = go_head(&data[..n]) {
                        info.push(head);
                    }
                    data = &data[n..];
                    if data.is_empty() {
                        return;
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead> AsyncRead for Sniff<S> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        if this.info.expect.load(Ordering::Relaxed) {
            let new = &buf.filled()[before..];
            if this.partial.is_empty()
                && new.len() >= 12
                && new.starts_with(b"HTTP/1.")
                && new[9] != b'1'
            {
                // The usual case: the final head at once.
                this.info.expect.store(false, Ordering::Relaxed);
            } else if !new.is_empty() {
                Self::look(this.info, this.partial, new);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for Sniff<S> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// `raw` (a complete 1xx head as the app sent it) as Go's server writes it after its proxy
/// copied it: `HTTP/1.1 <code> <Go's status text>`, the fields with canonical names sorted by
/// name (values of one name in their order, trimmed), without `Content-Length` and
/// `Transfer-Encoding`, and no `Date`. `None`: not a head hyper would accept either.
pub fn go_head(raw: &[u8]) -> Option<Vec<u8>> {
    let mut fields = vec![httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    if !response.parse(raw).ok()?.is_complete() {
        return None;
    }
    let code = response.code?;
    let mut named: Vec<(String, &[u8])> = response
        .headers
        .iter()
        .map(|h| (canonical_name(h.name), h.value.trim_ascii()))
        .filter(|(name, _)| name != "Content-Length" && name != "Transfer-Encoding")
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Some(write_go_head(code, &named))
}

/// `HTTP/1.1 <code> <Go's text>` and `fields` (canonical names, in order), as Go writes a 1xx.
fn write_go_head(code: u16, fields: &[(String, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + fields
            .iter()
            .map(|f| f.0.len() + f.1.len() + 4)
            .sum::<usize>(),
    );
    out.extend_from_slice(b"HTTP/1.1 ");
    match status_text(code) {
        Some(text) => {
            out.extend_from_slice(code.to_string().as_bytes());
            out.push(b' ');
            out.extend_from_slice(text.as_bytes());
        }
        None => out.extend_from_slice(format!("{code:03} status code {code}").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Go's `StatusText` for the 1xx codes it names.
fn status_text(code: u16) -> Option<&'static str> {
    match code {
        100 => Some("Continue"),
        101 => Some("Switching Protocols"),
        102 => Some("Processing"),
        103 => Some("Early Hints"),
        _ => None,
    }
}

/// Go's `CanonicalMIMEHeaderKey` for a token (httparse accepts only tokens as names): upper case
/// at the start and after each `-`, lower case elsewhere.
fn canonical_name(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// From the upstream exchange to the client connection.

thread_local! {
    /// The HTTP/1 client connection whose task is being polled (see [`ConnScope`]).
    static CURRENT: Cell<Option<Arc<ConnShared>>> = const { Cell::new(None) };
}

pin_project_lite::pin_project! {
    /// A client connection's future, polled with the connection's [`ConnShared`] in reach of the
    /// proxy futures it runs ([`Relay`]). The `Arc` is moved in and out of a thread-local around
    /// each poll: no reference count changes.
    pub struct ConnScope<F> {
        #[pin]
        inner: F,
        conn: Option<Arc<ConnShared>>,
    }
}

impl<F> ConnScope<F> {
    /// `inner` served with `conn` in scope.
    pub fn new(inner: F, conn: Arc<ConnShared>) -> Self {
        ConnScope {
            inner,
            conn: Some(conn),
        }
    }
}

/// Puts the previous value back when the poll ends (also on unwinding).
struct Restore<'a> {
    slot: &'a mut Option<Arc<ConnShared>>,
    previous: Option<Arc<ConnShared>>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        *self.slot = CURRENT.with(|c| c.replace(self.previous.take()));
    }
}

impl<F: Future> Future for ConnScope<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let previous = CURRENT.with(|c| c.replace(this.conn.take()));
        let _restore = Restore {
            slot: this.conn,
            previous,
        };
        this.inner.poll(cx)
    }
}

/// Runs `f` with the connection in scope, if any.
fn with_current<R>(f: impl FnOnce(Option<&ConnShared>) -> R) -> R {
    CURRENT.with(|c| {
        let conn = c.take();
        let out = f(conn.as_deref());
        c.set(conn);
        out
    })
}

pin_project_lite::pin_project! {
    /// An upstream exchange's response future that relays the exchange's 1xx heads to the client
    /// connection in scope as they arrive. If it relayed any, the final response is to be held
    /// until they are written ([`written`]).
    pub struct Relay<'a, F> {
        #[pin]
        inner: F,
        info: &'a UpstreamInfo,
        relayed: &'a mut bool,
    }
}

impl<'a, F> Relay<'a, F> {
    /// `inner`, the response of an exchange on the connection `info` belongs to; `relayed` turns
    /// true when a head was queued.
    pub fn new(inner: F, info: &'a UpstreamInfo, relayed: &'a mut bool) -> Self {
        Relay {
            inner,
            info,
            relayed,
        }
    }
}

impl<F: Future> Future for Relay<'_, F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let polled = this.inner.poll(cx);
        relay_after_poll(polled.is_pending(), this.info, this.relayed, cx);
        polled
    }
}

/// [`Relay`]'s work after each poll of the exchange's response future (`pending`: it returned
/// `Pending`), for futures that do what it does without wrapping one.
#[inline]
pub(crate) fn relay_after_poll(
    pending: bool,
    info: &UpstreamInfo,
    relayed: &mut bool,
    cx: &Context<'_>,
) {
    if pending {
        info.waker.register(cx.waker());
    }
    // Heads that arrived before the final one are in `heads` by the time hyper hands over
    // the response (its response channel orders them).
    if info.ready.load(Ordering::Acquire) {
        let heads = info.take();
        *relayed |= with_current(|conn| match conn {
            Some(c) => c.queue_informational(heads),
            // An HTTP/2 stream's task ([`collect_for_h2`]) sends them itself, in order
            // before its final response: nothing to wait for.
            None => {
                to_h2_stream(heads);
                false
            }
        });
    }
}

thread_local! {
    /// The 1xx heads relayed while an HTTP/2 stream's task is polled ([`collect_for_h2`]);
    /// `None` outside such a poll.
    static H2_SINK: RefCell<Option<Vec<Vec<u8>>>> = const { RefCell::new(None) };
}

/// Hands `heads` to the HTTP/2 stream being polled, if any (else they are dropped: no client
/// connection to relay them to).
fn to_h2_stream(heads: Vec<Vec<u8>>) {
    H2_SINK.with(|sink| {
        if let Some(sink) = sink.borrow_mut().as_mut() {
            for head in heads {
                if sink.iter().map(Vec::len).sum::<usize>() + head.len() <= MAX_QUEUED {
                    sink.push(head);
                }
            }
        }
    });
}

/// Runs `poll` (an HTTP/2 stream's poll of its service future) collecting the 1xx heads the
/// upstream exchange relays meanwhile, in Go's HTTP/1 form ([`go_head`]), oldest first.
#[inline]
pub(crate) fn collect_for_h2<R>(poll: impl FnOnce() -> R) -> (R, Vec<Vec<u8>>) {
    let previous = H2_SINK.with(|sink| sink.replace(Some(Vec::new())));
    let out = poll();
    let heads = H2_SINK
        .with(|sink| sink.replace(previous))
        .unwrap_or_default();
    (out, heads)
}

/// Relays `head`, a 1xx response an upstream HTTP/2 exchange received, to the client of the
/// exchange in scope: queued on its HTTP/1 connection (true: the final response is to wait for
/// [`written`]) or handed to its HTTP/2 stream.
pub(crate) fn relay_h2(head: &http::Response<()>) -> bool {
    let go = go_head_from_parts(head.status().as_u16(), head.headers());
    with_current(|conn| match conn {
        Some(c) => c.queue_informational(vec![go]),
        None => {
            to_h2_stream(vec![go]);
            false
        }
    })
}

/// A 1xx head received on HTTP/2 in Go's HTTP/1 form ([`go_head`]).
fn go_head_from_parts(code: u16, headers: &http::HeaderMap) -> Vec<u8> {
    let mut named: Vec<(String, &[u8])> = headers
        .iter()
        .map(|(name, value)| (canonical_name(name.as_str()), value.as_bytes().trim_ascii()))
        .filter(|(name, _)| name != "Content-Length" && name != "Transfer-Encoding")
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_go_head(code, &named)
}

/// A 1xx head in Go's HTTP/1 form as an HTTP/2 informational response: the same status and
/// fields (names lower case, as HTTP/2 carries them), connection-specific ones removed.
pub(crate) fn h2_informational(head: &[u8]) -> Option<http::Response<()>> {
    let mut fields = vec![httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut fields);
    if !parsed.parse(head).ok()?.is_complete() {
        return None;
    }
    let mut response = http::Response::new(());
    *response.status_mut() = http::StatusCode::from_u16(parsed.code?).ok()?;
    if !response.status().is_informational() {
        return None;
    }
    // Connection-specific fields are left out (not removed afterwards: removal reorders the
    // map, and the fields go out in Go's sorted order).
    let named_by_connection = |name: &str| {
        parsed.headers.iter().any(|f| {
            f.name.eq_ignore_ascii_case("connection")
                && f.value
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        })
    };
    let headers = response.headers_mut();
    for field in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(field.name.as_bytes()),
            http::HeaderValue::from_bytes(field.value),
        ) else {
            continue;
        };
        let hop = matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "upgrade"
                | "te"
        );
        if hop || named_by_connection(name.as_str()) {
            continue;
        }
        headers.append(name, value);
    }
    Some(response)
}

/// Ready once the client connection in scope has written every queued 1xx head.
pub async fn written() {
    std::future::poll_fn(poll_written).await
}

/// The poll of [`written`].
#[inline]
pub(crate) fn poll_written(cx: &mut Context<'_>) -> Poll<()> {
    if with_current(|conn| conn.is_none_or(|c| c.poll_informational_out(cx))) {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

// ---------------------------------------------------------------------------------------------
// Client connection side: the queue the IO layer writes from.

/// 1xx heads waiting to be written to one client connection.
#[derive(Debug, Default)]
pub struct InfoOut {
    heads: VecDeque<Vec<u8>>,
    /// Bytes of the front head already written.
    at: usize,
    /// The exchange holding its final response until the queue is empty.
    waiter: Option<Waker>,
}

impl InfoOut {
    fn queued(&self) -> usize {
        self.heads.iter().map(Vec::len).sum::<usize>() - self.at
    }
}

/// Whether `head` (Go's form) is a `100 Continue`.
fn is_continue(head: &[u8]) -> bool {
    head.get(9..13) == Some(b"100 ")
}

impl ConnShared {
    /// Queues `heads` for the client; false if none was queued.
    pub(crate) fn queue_informational(&self, heads: Vec<Vec<u8>>) -> bool {
        let mut out = lock(&self.info_out);
        let mut queued = false;
        for head in heads {
            if out.queued() + head.len() > MAX_QUEUED {
                break;
            }
            out.heads.push_back(head);
            queued = true;
        }
        if queued {
            self.info_pending.store(true, Ordering::Relaxed);
        }
        queued
    }

    /// Whether every queued head is written; if not, `cx` is woken when they are.
    fn poll_informational_out(&self, cx: &mut Context<'_>) -> bool {
        if !self.info_pending.load(Ordering::Relaxed) {
            return true;
        }
        let mut out = lock(&self.info_out);
        if out.heads.is_empty() {
            return true;
        }
        out.waiter = Some(cx.waker().clone());
        false
    }

    /// Writes the queued heads to `io` (the IO layer calls this when hyper flushes with nothing
    /// of its own left to write). A `100` is skipped if one was already sent for the request;
    /// an HTTP/1.0 request gets an `HTTP/1.0` status line, as Go writes it.
    pub(crate) fn poll_write_informational<W: AsyncWrite>(
        &self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut guard = lock(&self.info_out);
        let out = &mut *guard;
        while let Some(front) = out.heads.front_mut() {
            if out.at == 0 && is_continue(front) && !self.mark_continue_sent() {
                out.heads.pop_front();
                continue;
            }
            if out.at == 0 && self.is_http10() {
                front[7] = b'0';
            }
            let n = ready!(io.as_mut().poll_write(cx, &front[out.at..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            out.at += n;
            if out.at == front.len() {
                out.heads.pop_front();
                out.at = 0;
            }
        }
        self.info_pending.store(false, Ordering::Relaxed);
        if let Some(waiter) = out.waiter.take() {
            waiter.wake();
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_written_as_go_writes_them() {
        let raw = b"HTTP/1.1 103 Whatever\r\nlink: </a.css>; rel=preload  \r\nX-b: 1\r\ncontent-length: 0\r\nLINK: </b.js>\r\nx-A: 2\r\n\r\n";
        assert_eq!(
            go_head(raw).unwrap(),
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>\r\nX-A: 2\r\nX-B: 1\r\n\r\n"
        );
        assert_eq!(
            go_head(b"HTTP/1.1 104 Custom\r\n\r\n").unwrap(),
            b"HTTP/1.1 104 status code 104\r\n\r\n"
        );
        assert_eq!(
            go_head(b"HTTP/1.0 100 Continue\n\n").unwrap(),
            b"HTTP/1.1 100 Continue\r\n\r\n"
        );
        assert_eq!(go_head(b"HTTP/1.1 103 X\r\nbad header\r\n\r\n"), None);
    }

    #[test]
    fn h2_heads_convert_both_ways_as_go_writes_them() {
        // From an HTTP/2 upstream to an HTTP/1 client: canonical names sorted, no length.
        let mut headers = http::HeaderMap::new();
        headers.append("x-b", "1".parse().unwrap());
        headers.append("link", "</a.css>".parse().unwrap());
        headers.append("content-length", "0".parse().unwrap());
        headers.append("link", "</b.js>".parse().unwrap());
        assert_eq!(
            go_head_from_parts(103, &headers),
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\nLink: </b.js>\r\nX-B: 1\r\n\r\n"
        );
        assert_eq!(
            go_head_from_parts(199, &http::HeaderMap::new()),
            b"HTTP/1.1 199 status code 199\r\n\r\n"
        );
        // From Go's form to an HTTP/2 stream: the same fields in order, lower case, without
        // connection-specific ones.
        let head = b"HTTP/1.1 103 Early Hints\r\nConnection: x-hop\r\nLink: </a.css>\r\nX-Hop: 1\r\nX-B: 1\r\n\r\n";
        let response = h2_informational(head).unwrap();
        assert_eq!(response.status(), 103);
        let fields: Vec<_> = response
            .headers()
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(fields, ["link: </a.css>", "x-b: 1"]);
        assert!(h2_informational(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
    }

    #[test]
    fn h2_sink_collects_only_inside_a_stream_poll() {
        to_h2_stream(vec![b"HTTP/1.1 102 Processing\r\n\r\n".to_vec()]);
        let ((), heads) = collect_for_h2(|| {
            to_h2_stream(vec![b"HTTP/1.1 103 Early Hints\r\n\r\n".to_vec()]);
        });
        assert_eq!(heads, vec![b"HTTP/1.1 103 Early Hints\r\n\r\n".to_vec()]);
        let ((), heads) = collect_for_h2(|| {});
        assert!(heads.is_empty(), "nothing left over from outside a poll");
    }

    #[test]
    fn scanning_tells_informational_from_final_heads() {
        assert_eq!(scan(b"HTTP/1.1 200 OK\r\n"), Scan::Final);
        assert_eq!(scan(b"HTTP/1.1 101 Switching"), Scan::Final);
        assert_eq!(scan(b"garbage and more"), Scan::Final);
        assert_eq!(scan(b"HTTP/1.1 1"), Scan::More);
        assert_eq!(scan(b"HT"), Scan::More);
        assert_eq!(scan(b""), Scan::More);
        assert_eq!(scan(b"\r\nHTTP/1.1 103 Early"), Scan::More);
        let two = b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(scan(two), Scan::Informational(39));
        assert_eq!(scan(b"\r\nHTTP/1.1 102 P\n\nx"), Scan::Informational(18));
    }

    #[test]
    fn heads_cut_by_reads_are_put_together() {
        let info = UpstreamInfo::default();
        info.exchange_started();
        let mut partial = Vec::new();
        let stream: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for piece in stream.chunks(5) {
            if info.expect.load(Ordering::Relaxed) {
                Sniff::<()>::look(&info, &mut partial, piece);
            }
        }
        assert!(
            !info.expect.load(Ordering::Relaxed),
            "the final head ends the look"
        );
        let heads = info.take();
        assert_eq!(
            heads,
            vec![
                b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n".to_vec(),
                b"HTTP/1.1 102 Processing\r\n\r\n".to_vec()
            ]
        );
    }

    #[tokio::test]
    async fn queued_heads_are_written_once_and_continue_only_once() {
        use tokio::io::AsyncReadExt;
        let conn = ConnShared::default();
        conn.request_started(http::Version::HTTP_11);
        let continue_head = go_head(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        let hints = go_head(b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n").unwrap();
        assert!(conn.queue_informational(vec![
            continue_head.clone(),
            hints.clone(),
            continue_head.clone()
        ]));
        let (mut client, mut server) = tokio::io::duplex(4096);
        std::future::poll_fn(|cx| conn.poll_write_informational(Pin::new(&mut server), cx))
            .await
            .unwrap();
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [continue_head, hints].concat());
        assert!(!conn.info_pending.load(Ordering::Relaxed));
    }
}
