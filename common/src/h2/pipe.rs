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

/// A chunk waiting to be sent (and whether it ends the body), with the send capacity the
/// stream had when the chunk came (0: wait for more before sending).
pub(crate) type Pending = ((Bytes, bool), usize);

/// Copies `body` to `tx` as the peer's flow control allows (hyper's `PipeToSendStream`): a
/// chunk is read only once the previous one was handed to `h2`, so at most one chunk per stream
/// waits here. A body error resets the stream; a reset from the peer ends the copy.
///
/// Each call of h2's stream handles takes the connection's stream lock, so the copy makes as
/// few as it can: a reset from the peer is looked for (`poll_reset`, which registers the task
/// for it) only when the copy is about to wait for the body; hyper asks before every chunk.
/// Waiting for capacity needs no such check (`poll_capacity` answers a reset stream at once,
/// and a reset wakes the task it registered), nor does a chunk ready at once (`send_data` fails
/// on a reset stream). The claim on the window and the capacity it gives are one call
/// (`reserve_and_capacity`, a method of the patched h2).
pub(crate) fn pipe<B>(
    mut body: Pin<&mut B>,
    tx: &mut h2::SendStream<Bytes>,
    pending: &mut Option<Pending>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ()>>
where
    B: Body<Data = Bytes, Error = BodyError>,
{
    loop {
        if let Some((_, capacity)) = pending {
            // No capacity when the chunk came: wait for some.
            if *capacity == 0 {
                while tx.capacity() == 0 {
                    match ready!(tx.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(_)) | None => return Poll::Ready(Err(())),
                    }
                }
            }
            let (chunk, end) = pending.take().expect("checked above").0;
            if tx.send_data(chunk, end).is_err() {
                return Poll::Ready(Err(()));
            }
            if end {
                return Poll::Ready(Ok(()));
            }
            continue;
        }
        let Poll::Ready(frame) = body.as_mut().poll_frame(cx) else {
            if let Poll::Ready(reason) = tx.poll_reset(cx) {
                tracing::debug!(?reason, "stream reset by the peer");
                return Poll::Ready(Err(()));
            }
            return Poll::Pending;
        };
        match frame {
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
                    // A minimal claim on the connection window (see hyper #4003); h2 raises
                    // it to the buffered length in `send_data`.
                    let capacity = tx.reserve_and_capacity(1);
                    *pending = Some(((chunk, end), capacity));
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
