//! h2c by HTTP/1.1 upgrade (RFC 7540 §3.2), as Go's `golang.org/x/net/http2/h2c` handler serves
//! it on both binaries' plaintext ports: a request with `Upgrade: h2c` and `HTTP2-Settings` named
//! in `Connection` is answered `101 Switching Protocols`, and the connection continues as HTTP/2
//! with that request as stream 1.
//!
//! hyper and h2 have no server-side upgrade. After the `101`, the upgraded connection is served
//! by hyper's ordinary HTTP/2 server through [`Injected`], which hands it the client's connection
//! preface and first `SETTINGS` frame, then a `HEADERS` frame for stream 1 built here from the
//! original request, then the rest of the client's bytes. The header block uses only HPACK
//! "literal without indexing" fields, which leave the decoder's dynamic table untouched, so the
//! client's encoder and the server's decoder stay in step.
//!
//! Differences from Go, by design: only requests without a body are upgraded (Go reads the whole
//! body into memory first; a request with a body is served as plain HTTP/1.1 here), the
//! `HTTP2-Settings` values are checked but not applied (the client's first `SETTINGS` frame,
//! which carries the same values, is read before stream 1 starts), and the upgraded connection
//! stays in the listener's graceful drain ([`H2cHandover`]; Go's handler hijacks it).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Request};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::headers::HTTP2_SETTINGS;

/// What the HTTP/2 connection of an upgrade takes over from the HTTP/1 one, so that it stays in
/// the listener's graceful drain (GOAWAY at shutdown, waited for) and holds the connection slot.
#[derive(Debug)]
pub struct H2cHandover {
    /// The listener's graceful-shutdown watcher for the upgraded connection.
    pub watcher: hyper_util::server::graceful::Watcher,
    /// The connection's slot ([`crate::server::ServerLimits::max_connections`]).
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What an HTTP/1.1 request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum H2cRequest {
    /// No h2c upgrade (or one this server serves as plain HTTP/1.1: a request with a body).
    No,
    /// Upgrade: answer `101` and continue as HTTP/2.
    Upgrade,
    /// An upgrade whose `HTTP2-Settings` is missing, repeated or not base64url: Go answers `500`.
    BadSettings,
}

fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Go's `isH2CUpgrade` (`Upgrade` has the token `h2c`, `Connection` has `HTTP2-Settings`), for a
/// request without a body. Costs one header lookup for requests without `Upgrade`.
#[inline]
pub fn classify<B>(request: &Request<B>) -> H2cRequest {
    let headers = request.headers();
    if !headers.contains_key(UPGRADE) {
        return H2cRequest::No;
    }
    classify_upgrade(headers)
}

fn classify_upgrade(headers: &HeaderMap) -> H2cRequest {
    if !has_token(headers, UPGRADE, "h2c") || !has_token(headers, CONNECTION, "http2-settings") {
        return H2cRequest::No;
    }
    let bodiless = !headers.contains_key(TRANSFER_ENCODING)
        && match headers.get(CONTENT_LENGTH) {
            None => true,
            Some(length) => length.as_bytes() == b"0",
        };
    if !bodiless {
        return H2cRequest::No;
    }
    let mut settings = headers.get_all(HTTP2_SETTINGS).iter();
    match (settings.next(), settings.next()) {
        (Some(value), None) if is_base64url(value.as_bytes()) => H2cRequest::Upgrade,
        _ => H2cRequest::BadSettings,
    }
}

/// Go's `base64.RawURLEncoding` alphabet and lengths (no padding).
fn is_base64url(text: &[u8]) -> bool {
    text.len() % 4 != 1
        && text
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// Largest frame payload before the peer's SETTINGS is known (RFC 7540 §6.5.2 default, which the
/// server also keeps).
const MAX_FRAME: usize = 16_384;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// The `HEADERS` (and `CONTINUATION`) frames carrying `request` as stream 1, ending the stream
/// (the request has no body).
pub fn stream_one_frames<B>(request: &Request<B>) -> Vec<u8> {
    let headers = request.headers();
    let mut block = Vec::with_capacity(256);
    let authority = headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| request.uri().authority().map(|a| a.as_str().as_bytes()));
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    literal(&mut block, b":method", request.method().as_str().as_bytes());
    literal(&mut block, b":scheme", b"http");
    if let Some(authority) = authority {
        literal(&mut block, b":authority", authority);
    }
    literal(&mut block, b":path", path.as_bytes());
    // Connection-specific fields are not allowed in HTTP/2 (RFC 9113 §8.2.2), nor are those
    // the request's `Connection` names.
    let named: Vec<&str> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for (name, value) in headers {
        let n = name.as_str();
        let hop = matches!(
            n,
            "connection"
                | "upgrade"
                | "http2-settings"
                | "host"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
        ) || (name == TE && value.as_bytes() != b"trailers")
            || named.iter().any(|c| c.eq_ignore_ascii_case(n));
        if !hop {
            literal(&mut block, n.as_bytes(), value.as_bytes());
        }
    }
    let mut frames = Vec::with_capacity(block.len() + 9 * (1 + block.len() / MAX_FRAME));
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut kind = HEADERS;
    let mut flags = END_STREAM;
    if chunks.peek().is_none() {
        frame_header(&mut frames, 0, HEADERS, END_STREAM | END_HEADERS);
    }
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        frame_header(&mut frames, chunk.len(), kind, flags);
        frames.extend_from_slice(chunk);
        kind = CONTINUATION;
        flags = 0;
    }
    frames
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8) {
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&1u32.to_be_bytes());
}

/// HPACK literal header field without indexing, new name (RFC 7541 §6.2.2), no Huffman coding.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    string(out, name);
    string(out, value);
}

fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    // RFC 7541 §5.1: 7-bit prefix integer (H bit 0).
    let mut len = bytes.len();
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(bytes);
}

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

pin_project_lite::pin_project! {
    /// The upgraded connection as the HTTP/2 server reads it: the client's preface and first
    /// frame, then the synthesized stream 1, then the rest of the client's bytes.
    pub struct Injected<S> {
        #[pin]
        inner: S,
        // Client bytes handed on so far, while the injection is still ahead.
        passed: usize,
        // The first frame's header, collected as it passes.
        first_frame: [u8; FRAME_HEADER_LEN],
        inject: Vec<u8>,
        inject_at: usize,
    }
}

impl<S> Injected<S> {
    /// `inject` goes in after the client's preface and first frame.
    pub fn new(inner: S, inject: Vec<u8>) -> Self {
        Injected {
            inner,
            passed: 0,
            first_frame: [0; FRAME_HEADER_LEN],
            inject,
            inject_at: 0,
        }
    }
}

impl<S: AsyncRead> AsyncRead for Injected<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if *this.inject_at >= this.inject.len() {
            return this.inner.poll_read(cx, buf);
        }
        let header_end = PREFACE_LEN + FRAME_HEADER_LEN;
        let limit = if *this.passed < header_end {
            header_end
        } else {
            let f = &this.first_frame;
            header_end + (usize::from(f[0]) << 16 | usize::from(f[1]) << 8 | usize::from(f[2]))
        };
        if *this.passed == limit {
            // The client's preface and first frame are through: stream 1 goes in now.
            let n = buf.remaining().min(this.inject.len() - *this.inject_at);
            buf.put_slice(&this.inject[*this.inject_at..*this.inject_at + n]);
            *this.inject_at += n;
            if *this.inject_at == this.inject.len() {
                *this.inject = Vec::new();
                *this.inject_at = usize::MAX;
            }
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        let want = (limit - *this.passed).min(buf.remaining());
        let n = {
            // Never past the injection point: read into a bounded window of `buf`.
            let mut window = ReadBuf::new(buf.initialize_unfilled_to(want));
            ready!(this.inner.poll_read(cx, &mut window))?;
            window.filled().len()
        };
        buf.advance(n);
        for (i, byte) in buf.filled()[start..].iter().enumerate() {
            let at = *this.passed + i;
            if (PREFACE_LEN..header_end).contains(&at) {
                this.first_frame[at - PREFACE_LEN] = *byte;
            }
        }
        *this.passed += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for Injected<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(extra: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get("/h2c?x=1")
            .header("host", "example.com")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA");
        for (k, v) in extra {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn classifies_like_go() {
        assert_eq!(classify(&upgrade(&[])), H2cRequest::Upgrade);
        assert_eq!(
            classify(&upgrade(&[("content-length", "3")])),
            H2cRequest::No
        );
        assert_eq!(
            classify(&upgrade(&[("http2-settings", "AAMA")])),
            H2cRequest::BadSettings
        );
        let mut bad = upgrade(&[]);
        bad.headers_mut()
            .insert("http2-settings", "not base64!".parse().unwrap());
        assert_eq!(classify(&bad), H2cRequest::BadSettings);
        let mut websocket = upgrade(&[]);
        websocket
            .headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        assert_eq!(classify(&websocket), H2cRequest::No);
        assert_eq!(
            classify(&Request::get("/").body(()).unwrap()),
            H2cRequest::No
        );
    }

    /// The frames decode with the h2 crate's own HPACK decoder into the original request.
    #[test]
    fn stream_one_is_a_valid_headers_frame() {
        let frames = stream_one_frames(&upgrade(&[
            ("x-custom", "v"),
            ("te", "trailers"),
            ("keep-alive", "5"),
        ]));
        assert_eq!(
            &frames[3..9],
            &[HEADERS, END_STREAM | END_HEADERS, 0, 0, 0, 1]
        );
        let len =
            usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        assert_eq!(frames.len(), 9 + len);
        let fields = decode(&frames[9..]);
        assert_eq!(
            fields,
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "example.com"),
                (":path", "/h2c?x=1"),
                ("x-custom", "v"),
                ("te", "trailers"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn large_blocks_continue() {
        let big = "v".repeat(40_000);
        let frames = stream_one_frames(&upgrade(&[("x-big", &big)]));
        let mut at = 0;
        let mut kinds = Vec::new();
        let mut block = Vec::new();
        while at < frames.len() {
            let len = usize::from(frames[at]) << 16
                | usize::from(frames[at + 1]) << 8
                | usize::from(frames[at + 2]);
            kinds.push((frames[at + 3], frames[at + 4]));
            block.extend_from_slice(&frames[at + 9..at + 9 + len]);
            at += 9 + len;
        }
        assert_eq!(
            kinds,
            [
                (HEADERS, END_STREAM),
                (CONTINUATION, 0),
                (CONTINUATION, END_HEADERS)
            ]
        );
        assert_eq!(decode(&block).last().unwrap().1, big);
    }

    /// A minimal decoder for the representation written above (literal, new name, no Huffman).
    fn decode(mut block: &[u8]) -> Vec<(String, String)> {
        fn int(block: &mut &[u8]) -> usize {
            let mut n = usize::from(block[0] & 0x7f);
            *block = &block[1..];
            if n == 127 {
                let mut shift = 0;
                loop {
                    let b = block[0];
                    *block = &block[1..];
                    n += usize::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
            }
            n
        }
        fn text(block: &mut &[u8]) -> String {
            let n = int(block);
            let s = String::from_utf8(block[..n].to_vec()).unwrap();
            *block = &block[n..];
            s
        }
        let mut out = Vec::new();
        while !block.is_empty() {
            assert_eq!(block[0], 0);
            block = &block[1..];
            let name = text(&mut block);
            let value = text(&mut block);
            out.push((name, value));
        }
        out
    }

    #[tokio::test]
    async fn injection_follows_the_first_frame() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        sent.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        sent.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                // Byte by byte, to cross every boundary.
                for b in sent {
                    client.write_all(&[b]).await.unwrap();
                }
                client
            })
        };
        let mut io = Injected::new(server, b"INJECTED".to_vec());
        let mut out = vec![0u8; sent.len() + 8];
        io.read_exact(&mut out).await.unwrap();
        drop(writer.await.unwrap());
        let split = 24 + 9 + 6;
        assert_eq!(&out[..split], &sent[..split]);
        assert_eq!(&out[split..split + 8], b"INJECTED");
        assert_eq!(&out[split + 8..], &sent[split..]);
    }
}
