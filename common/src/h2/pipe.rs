//! A message body copied onto an HTTP/2 stream (a response body on the server side, a request
//! body on the client side), as hyper's `PipeToSendStream` copies it.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Body;

use crate::body::BodyError;

/// The reset reason for a body that failed: the `h2` reason inside the error (a reset from the
/// upstream stream is passed on as is), else `INTERNAL_ERROR`, as hyper chooses it.
pub(crate) fn reset_reason(error: &(dyn std::error::Error + 'static)) -> h2::Reason {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason().unwrap_or(h2::Reason::INTERNAL_ERROR);
        }
        cause = e.source();
    }
    h2::Reason::INTERNAL_ERROR
}

/// Copies `body` to `tx` as the peer's flow control allows (hyper's `PipeToSendStream`): a
/// chunk is read only once the previous one was handed to `h2`, so at most one chunk per stream
/// waits here. A body error resets the stream; a reset from the peer ends the copy.
pub(crate) fn pipe<B>(
    mut body: Pin<&mut B>,
    tx: &mut h2::SendStream<Bytes>,
    pending: &mut Option<(Bytes, bool)>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ()>>
where
    B: Body<Data = Bytes, Error = BodyError>,
{
    loop {
        if let Poll::Ready(reason) = tx.poll_reset(cx) {
            tracing::debug!(?reason, "stream reset by the peer");
            return Poll::Ready(Err(()));
        }
        if pending.is_some() {
            while tx.capacity() == 0 {
                match ready!(tx.poll_capacity(cx)) {
                    Some(Ok(0)) => {}
                    Some(Ok(_)) => break,
                    Some(Err(_)) | None => return Poll::Ready(Err(())),
                }
            }
            let (chunk, end) = pending.take().expect("checked above");
            if tx.send_data(chunk, end).is_err() {
                return Poll::Ready(Err(()));
            }
            if end {
                return Poll::Ready(Ok(()));
            }
            continue;
        }
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    let end = body.is_end_stream();
                    if !chunk.has_remaining() {
                        if tx.send_data(chunk, end).is_err() {
                            return Poll::Ready(Err(()));
                        }
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // A minimal claim on the connection window (see hyper #4003); h2 raises it
                    // to the buffered length in `send_data`.
                    tx.reserve_capacity(1);
                    *pending = Some((chunk, end));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        tx.reserve_capacity(0);
                        return Poll::Ready(tx.send_trailers(trailers).map_err(|_| ()));
                    }
                }
            },
            Some(Err(error)) => {
                tracing::debug!(%error, "body failed; resetting the stream");
                tx.send_reset(reset_reason(&*error));
                return Poll::Ready(Err(()));
            }
            None => return Poll::Ready(tx.send_data(Bytes::new(), true).map_err(|_| ())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reset_reason;

    #[test]
    fn reset_reason_passes_on_the_h2_reason() {
        let cancel: Box<dyn std::error::Error + Send + Sync> =
            Box::new(h2::Error::from(h2::Reason::CANCEL));
        assert_eq!(reset_reason(&*cancel), h2::Reason::CANCEL);
        let io = std::io::Error::other("broken");
        assert_eq!(reset_reason(&io), h2::Reason::INTERNAL_ERROR);
    }
}
