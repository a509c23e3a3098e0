//! [`IncomingBody`]: a message body received from a peer, over HTTP/1 (hyper's `Incoming`) or
//! over HTTP/2 (an `h2` receive stream, read as hyper reads it).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::BodyError;

pin_project! {
    /// A request body (or an upstream response body) as it arrives.
    #[project = IncomingProj]
    #[allow(missing_docs)]
    #[derive(Debug)]
    pub enum IncomingBody {
        /// Read by hyper (HTTP/1 connections).
        Hyper { #[pin] body: hyper::body::Incoming },
        /// An HTTP/2 stream's DATA and trailers.
        H2 { #[pin] body: H2Body },
    }
}

impl From<hyper::body::Incoming> for IncomingBody {
    #[inline]
    fn from(body: hyper::body::Incoming) -> Self {
        IncomingBody::Hyper { body }
    }
}

impl From<h2::RecvStream> for IncomingBody {
    #[inline]
    fn from(recv: h2::RecvStream) -> Self {
        IncomingBody::H2 {
            body: H2Body::new(recv, None),
        }
    }
}

impl IncomingBody {
    /// An HTTP/2 stream's body whose `Content-Length` field said `content_length`.
    pub fn h2(recv: h2::RecvStream, content_length: Option<u64>) -> Self {
        IncomingBody::H2 {
            body: H2Body::new(recv, content_length),
        }
    }
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            IncomingProj::Hyper { body } => body.poll_frame(cx).map_err(|e| Box::new(e) as _),
            IncomingProj::H2 { body } => body.poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            IncomingBody::Hyper { body } => body.is_end_stream(),
            IncomingBody::H2 { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            IncomingBody::Hyper { body } => body.size_hint(),
            IncomingBody::H2 { body } => body.size_hint(),
        }
    }
}

/// An HTTP/2 stream's body. Each DATA chunk's flow-control capacity is released as it is handed
/// on, so the peer may send more only as fast as the consumer reads: a slow reader never makes
/// the proxy buffer beyond the stream window. `h2` itself checks DATA against `Content-Length`
/// (a mismatch resets the stream with `PROTOCOL_ERROR`).
///
/// `is_end_stream` takes no lock of h2's stream state (the forwarding path asks it several
/// times per message): it is what h2 said when the body was made and with each chunk
/// (`RecvStream::poll_data_released`, a method of the patched h2, which also releases the
/// chunk's capacity, under the one lock that takes the chunk), and true once the body gave
/// its end: what h2's own `is_end_stream` would say, since h2 queues an event for every frame
/// that ends a stream (an empty DATA frame too) and only this body takes them off. (h2 could
/// tell the end at the body's making under the lock that makes it, but a flag in
/// `RecvStream` grows hyper's `Incoming`, which holds one, and with it every HTTP/1.1
/// request: +216 instructions per HTTP/1.1 request, measured.)
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    /// The body is known to have ended (see above).
    ended: bool,
    /// Bytes still announced by `Content-Length`, if it was given.
    remaining: Option<u64>,
}

impl H2Body {
    fn new(recv: h2::RecvStream, content_length: Option<u64>) -> Self {
        // A stream already ended has no body, whatever it announced.
        let ended = recv.is_end_stream();
        let remaining = if ended { Some(0) } else { content_length };
        H2Body {
            recv,
            data_done: false,
            ended,
            remaining,
        }
    }

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data_released(cx)) {
                Some(Ok((bytes, ended))) => {
                    this.ended = ended;
                    if let Some(left) = &mut this.remaining {
                        *left = left.saturating_sub(bytes.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                // RST_STREAM with NO_ERROR: the peer answered early and wants no more of the
                // body (RFC 9113 §8.1); the body ends without failing.
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                None => this.data_done = true,
            }
        }
        let polled = match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => trailers.map(|t| Ok(Frame::trailers(t))),
            Err(e) if e.reason() == Some(h2::Reason::NO_ERROR) => None,
            Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
        };
        this.ended = true;
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

/// The `Content-Length` of an HTTP/2 message, if it has exactly one valid value (h2 rejects
/// the others before they reach us: a value that is not all digits, or values that differ).
///
/// The digits are read directly (h2 has checked them): `to_str`, `trim` and `str::parse` cost
/// about 150 instructions for the two digits of a small response. Surrounding whitespace,
/// which h2 refuses, would give `None` here too, and so would an empty value or one that
/// overflows.
pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let digits = headers.get(http::header::CONTENT_LENGTH)?.as_bytes();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |length, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        length.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::{content_length, Body, IncomingBody};

    /// An h2 client and server over an in-memory pipe (h2's default settings: 65,535-byte
    /// windows), the server's connection driven by a task; gives the client and the streams the
    /// server accepts, with their response handles (kept by the test: the stream stays open).
    async fn pair() -> (
        h2::client::SendRequest<Bytes>,
        tokio::sync::mpsc::UnboundedReceiver<Accepted>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let (accepted_tx, accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            while let Some(Ok(accepted)) = conn.accept().await {
                let _ = accepted_tx.send(accepted);
            }
        });
        let (sender, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (sender, accepted)
    }

    type Accepted = (
        http::Request<h2::RecvStream>,
        h2::server::SendResponse<Bytes>,
    );

    /// Fails a test that would otherwise hang (a window never given back).
    async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), future)
            .await
            .unwrap_or_else(|_| panic!("{what}: timed out"))
    }

    /// Opens a POST stream (`end`: without a body); gives its send handle.
    async fn post(sender: &h2::client::SendRequest<Bytes>, end: bool) -> h2::SendStream<Bytes> {
        let mut sender = sender.clone().ready().await.unwrap();
        let request = http::Request::post("http://x/").body(()).unwrap();
        sender.send_request(request, end).unwrap().1
    }

    /// The next accepted stream's body, and its response handle.
    async fn next_body(
        accepted: &mut tokio::sync::mpsc::UnboundedReceiver<Accepted>,
        content_length: Option<u64>,
    ) -> (IncomingBody, h2::server::SendResponse<Bytes>) {
        let (request, reply) = within("accept", accepted.recv()).await.unwrap();
        (IncomingBody::h2(request.into_body(), content_length), reply)
    }

    #[tokio::test]
    async fn an_h2_body_knows_its_end_from_the_head_and_from_its_chunks() {
        let (sender, mut accepted) = pair().await;
        // No body: ended before any poll.
        let _tx = post(&sender, true).await;
        let (body, _reply) = next_body(&mut accepted, None).await;
        assert!(body.is_end_stream());

        // A body of one DATA frame with END_STREAM: ended with its chunk.
        let mut tx = post(&sender, false).await;
        tx.send_data(Bytes::from_static(b"abc"), true).unwrap();
        let (mut body, _reply) = next_body(&mut accepted, Some(3)).await;
        assert!(!body.is_end_stream());
        let chunk = within("chunk", body.frame()).await.unwrap().unwrap();
        assert_eq!(chunk.into_data().unwrap(), "abc");
        assert!(body.is_end_stream(), "the chunk's frame ended the stream");
        assert_eq!(body.size_hint().exact(), Some(0));

        // The end in a frame of its own, after the chunk was read: known once polled for.
        let mut tx = post(&sender, false).await;
        tx.send_data(Bytes::from_static(b"abc"), false).unwrap();
        let (mut body, _reply) = next_body(&mut accepted, None).await;
        let chunk = within("chunk", body.frame()).await.unwrap().unwrap();
        assert_eq!(chunk.into_data().unwrap(), "abc");
        assert!(!body.is_end_stream());
        tx.send_data(Bytes::new(), true).unwrap();
        // The empty DATA frame that ends the stream comes as an empty chunk.
        let last = within("end", body.frame()).await.unwrap().unwrap();
        assert!(last.into_data().unwrap().is_empty());
        assert!(body.is_end_stream());
        assert!(within("end", body.frame()).await.is_none());
    }

    #[tokio::test]
    async fn an_h2_body_gives_back_the_window_of_each_chunk_it_hands_on() {
        let (sender, mut accepted) = pair().await;
        // Three windows' worth: sent only as the reader gives capacity back.
        const LEN: usize = 3 * 65_535;
        let mut tx = post(&sender, false).await;
        tx.send_data(Bytes::from(vec![7u8; LEN]), true).unwrap();
        let (body, _reply) = next_body(&mut accepted, Some(LEN as u64)).await;
        let read = within("body", body.collect()).await.unwrap().to_bytes();
        assert_eq!(read.len(), LEN);
    }

    #[tokio::test]
    async fn a_dropped_h2_body_gives_back_the_connection_window_of_what_it_had_not_read() {
        let (sender, mut accepted) = pair().await;
        // Two bodies of 30,000 bytes dropped unread while their streams stay open (the
        // response handles are kept): the client may send 30,000 bytes more on a third stream
        // only if their bytes were given back to the connection window (65,535), which no
        // read of the third stream's own can do (nothing reads it).
        let mut replies = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..2 {
            let mut tx = post(&sender, false).await;
            tx.send_data(Bytes::from(vec![7u8; 30_000]), false).unwrap();
            let (body, reply) = next_body(&mut accepted, None).await;
            // Let the bytes arrive (the pipe is in memory, the connections are tasks).
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(body);
            replies.push(reply);
            senders.push(tx);
        }
        let mut tx = post(&sender, false).await;
        tx.reserve_capacity(30_000);
        within(
            "capacity for a third body",
            std::future::poll_fn(|cx| {
                while tx.capacity() < 30_000 {
                    match std::task::ready!(tx.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        other => panic!("{other:?}"),
                    }
                }
                std::task::Poll::Ready(())
            }),
        )
        .await;
    }

    /// hyper's `Incoming` holds an `h2::RecvStream`, and every request's body is an
    /// `IncomingBody`: a field added to the patched `RecvStream` grows every HTTP/1.1 request
    /// and each of its copies (16 more bytes of `RecvStream` cost 216 instructions per
    /// HTTP/1.1 request in the queue-proxy, measured). A patch that must grow them changes
    /// these bounds knowingly.
    #[test]
    fn request_body_types_keep_their_size() {
        assert_eq!(std::mem::size_of::<h2::RecvStream>(), 16);
        assert!(std::mem::size_of::<hyper::body::Incoming>() <= 40);
        assert!(std::mem::size_of::<IncomingBody>() <= 48);
    }

    #[test]
    fn content_length_reads_one_value_of_digits() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"0", Some(0)),
            (b"35", Some(35)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"", None),
            (b" 35", None),
            (b"35 ", None),
            (b"+35", None),
            (b"3a", None),
        ];
        for (value, expected) in cases {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_bytes(value).unwrap(),
            );
            assert_eq!(content_length(&headers), *expected, "{value:?}");
        }
        assert_eq!(content_length(&http::HeaderMap::new()), None);
    }
}
