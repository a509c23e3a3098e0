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
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    /// The stream had ended when the body was made (a request or response without a body):
    /// `is_end_stream` answers without taking h2's stream lock, which the forwarding path
    /// asks several times per message.
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
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(bytes)) => {
                    let _ = this.recv.flow_control().release_capacity(bytes.len());
                    if let Some(left) = &mut this.remaining {
                        *left = left.saturating_sub(bytes.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                // RST_STREAM with NO_ERROR: the peer answered early and wants no more of the
                // body (RFC 9113 §8.1); the body ends without failing.
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(None)
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(h2::Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.recv.is_end_stream()
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
    use super::content_length;

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
