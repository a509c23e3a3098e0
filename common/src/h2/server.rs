//! The HTTP/2 server side of a connection (h2c by prior knowledge or by upgrade, and h2 over
//! TLS), on the `h2` crate: what hyper's HTTP/2 server does (limits, a task per stream, `Date`,
//! connection-specific fields removed, `RST_STREAM` cancelling the stream's service future,
//! GOAWAY and a wait for the open streams on a graceful shutdown), plus the 1xx informational
//! responses an upstream exchange relays ([`crate::informational`]), sent on the stream the
//! moment its task sees them and always before the final response.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower_service::Service;

use super::body::{content_length, IncomingBody};
use crate::body::BodyError;
use crate::informational;
use crate::server::ServerLimits;

/// hyper's HTTP/2 server defaults for what [`ServerLimits`] does not set.
const CONN_WINDOW: u32 = 1024 * 1024;
const STREAM_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// The `h2` server settings for `limits`.
pub(crate) fn builder(limits: &ServerLimits) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(limits.h2_max_local_error_reset_streams))
        .max_header_list_size(limits.h2_max_header_list_size);
    builder
}

/// Serves one HTTP/2 connection whose client preface is next on `io`, each stream in a task of
/// its own running `service`, until the client closes it or, once `shutdown` turns true, until
/// the GOAWAY sent then has let every open stream finish.
pub async fn serve_connection<I, S, B>(
    io: I,
    builder: &h2::server::Builder,
    service: S,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible> + Clone,
    S::Future: Send + 'static,
    B: Body<Data = Bytes, Error = BodyError> + Send + 'static,
{
    let mut conn = match builder.handshake::<_, Bytes>(io).await {
        Ok(conn) => conn,
        Err(error) => {
            tracing::debug!(%error, "HTTP/2 handshake failed");
            return;
        }
    };
    let mut draining = false;
    loop {
        let next = if draining {
            conn.accept().await
        } else {
            let stop = tokio::select! {
                next = conn.accept() => Err(next),
                _ = shutdown.wait_for(|stop| *stop) => Ok(()),
            };
            match stop {
                Err(next) => next,
                // Also when the sender is gone (the process is ending).
                Ok(()) => {
                    draining = true;
                    conn.graceful_shutdown();
                    continue;
                }
            }
        };
        match next {
            Some(Ok((request, reply))) => {
                let length = content_length(request.headers());
                let request = request.map(|recv| IncomingBody::h2(recv, length));
                let future = service.clone().call(request);
                tokio::spawn(H2Stream::new(future, reply));
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "HTTP/2 connection failed");
                return;
            }
            None => return,
        }
    }
}

pin_project! {
    /// One stream: its service future, then its response body.
    struct H2Stream<F, B> {
        reply: h2::server::SendResponse<Bytes>,
        #[pin]
        state: State<F, B>,
        continue_sent: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Service { #[pin] future: F },
        Body {
            #[pin]
            body: B,
            tx: h2::SendStream<Bytes>,
            // A chunk waiting for send capacity.
            pending: Option<(Bytes, bool)>,
        },
    }
}

impl<F, B> H2Stream<F, B> {
    fn new(future: F, reply: h2::server::SendResponse<Bytes>) -> Self {
        H2Stream {
            reply,
            state: State::Service { future },
            continue_sent: false,
        }
    }
}

impl<F, B> Future for H2Stream<F, B>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes, Error = BodyError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Service { future } => {
                    let (polled, heads) = informational::collect_for_h2(|| future.poll(cx));
                    for head in heads {
                        send_informational(this.reply, this.continue_sent, &head);
                    }
                    let Poll::Ready(Ok(response)) = polled else {
                        // The client may have reset the stream (cancelled the request): the
                        // service future is dropped with the task.
                        return match this.reply.poll_reset(cx) {
                            Poll::Ready(_) => Poll::Ready(()),
                            Poll::Pending => Poll::Pending,
                        };
                    };
                    let (parts, body) = response.into_parts();
                    let mut head = Response::from_parts(parts, ());
                    super::strip_connection_headers(head.headers_mut(), false);
                    head.headers_mut()
                        .entry(http::header::DATE)
                        .or_insert_with(super::date::now);
                    if body.is_end_stream() {
                        if this.reply.send_response(head, true).is_err() {
                            this.reply.send_reset(h2::Reason::INTERNAL_ERROR);
                        }
                        return Poll::Ready(());
                    }
                    if let Some(len) = body.size_hint().exact() {
                        head.headers_mut()
                            .entry(http::header::CONTENT_LENGTH)
                            .or_insert_with(|| http::HeaderValue::from(len));
                    }
                    match this.reply.send_response(head, false) {
                        Ok(tx) => State::Body {
                            body,
                            tx,
                            pending: None,
                        },
                        Err(_) => {
                            this.reply.send_reset(h2::Reason::INTERNAL_ERROR);
                            return Poll::Ready(());
                        }
                    }
                }
                StateProj::Body { body, tx, pending } => {
                    return match super::pipe::pipe(body, tx, pending, cx) {
                        Poll::Ready(_) => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    };
                }
            };
            this.state.set(next);
        }
    }
}

/// Sends one relayed 1xx head on the stream; a second `100 Continue` is dropped.
#[cold]
fn send_informational(
    reply: &mut h2::server::SendResponse<Bytes>,
    continue_sent: &mut bool,
    head: &[u8],
) {
    let Some(response) = informational::h2_informational(head) else {
        return;
    };
    if response.status() == http::StatusCode::CONTINUE {
        if *continue_sent {
            return;
        }
        *continue_sent = true;
    }
    if let Err(error) = reply.send_informational(response) {
        tracing::debug!(%error, "1xx response not sent");
    }
}
