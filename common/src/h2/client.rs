//! The HTTP/2 client side of the proxy (h2c, or h2 over TLS, to the app or a pod), on the `h2`
//! crate: what hyper's HTTP/2 client does (its settings, connection-specific fields removed,
//! the request body copied in a task of its own as flow control allows, a reset when it fails),
//! plus the 1xx informational responses of each exchange, handed on the moment they arrive
//! ([`crate::informational::relay_h2`]) and always before the final response.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{content_length, IncomingBody};
use crate::informational;

/// hyper's HTTP/2 client defaults.
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// The client half of a new HTTP/2 connection on `io`; the connection runs in a task of its
/// own until it closes.
pub async fn handshake<I>(io: I) -> Result<h2::client::SendRequest<Bytes>, h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream HTTP/2 connection failed");
        }
    });
    Ok(sender)
}

/// Sends `request` on `sender` (ready for a new stream) and waits for its final response,
/// relaying the 1xx responses that come before it. Dropped before the response came (the
/// client went away, a timeout), it resets the stream (`CANCEL`) even while the request body
/// is still being sent, as hyper does.
///
/// The head is handed to `h2` at once, not on the first poll: the returned future then holds
/// the stream, not the request (an `async fn` would keep the request, and its head again once
/// taken apart, for the whole exchange). Callers await it at once.
pub fn exchange(
    mut sender: h2::client::SendRequest<Bytes>,
    request: Request<IncomingBody>,
) -> impl Future<Output = Result<Response<IncomingBody>, h2::Error>> + Send {
    let (mut parts, body) = request.into_parts();
    let is_head = parts.method == http::Method::HEAD;
    super::strip_connection_headers(&mut parts.headers, true);
    let end = body.is_end_stream();
    let started = sender.send_request(Request::from_parts(parts, ()), end);
    async move {
        // Held until the exchange ends, as the connection's other handles are.
        let _sender = sender;
        let (mut response, tx) = started?;
        let mut cancel = CancelOnDrop(None);
        if !end {
            let mut send = SendBody {
                body,
                tx,
                pending: None,
                cancel: None,
            };
            // A body that is all there (small requests) goes at once, without a task.
            let sent = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut send).poll(cx))).await;
            if sent.is_pending() {
                let shared = Arc::new(Cancel::default());
                send.cancel = Some(Arc::clone(&shared));
                cancel.0 = Some(shared);
                tokio::spawn(send);
            }
        }
        let mut relayed = false;
        // Each head as it comes (`poll_head`, a method of the patched h2: one lock of the
        // connection's stream state per poll, where `poll_informational` until it said none and
        // then the future's `poll` took three).
        let response = std::future::poll_fn(|cx| loop {
            match ready!(response.poll_head(cx)) {
                Ok(h2::client::ResponseHead::Informational(head)) => {
                    relayed |= informational::relay_h2(&head);
                }
                Ok(h2::client::ResponseHead::Final(response)) => return Poll::Ready(Ok(response)),
                Err(error) => return Poll::Ready(Err(error)),
            }
        })
        .await;
        // The response (or the stream's failure) came: the body goes on being sent.
        cancel.0 = None;
        if relayed {
            // An HTTP/1 client gets the 1xx heads before the final head.
            informational::written().await;
        }
        let response = response?;
        // A `HEAD` response's `Content-Length` describes the body a `GET` would get.
        let length = if is_head {
            Some(0)
        } else {
            content_length(response.headers())
        };
        Ok(response.map(|recv| IncomingBody::h2(recv, length)))
    }
}

/// Tells a request body's task that the exchange was abandoned.
#[derive(Default)]
struct Cancel {
    cancelled: AtomicBool,
    waker: AtomicWaker,
}

/// Cancels the exchange's body task when dropped while armed.
struct CancelOnDrop(Option<Arc<Cancel>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancelled.store(true, Ordering::Release);
            cancel.waker.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body on its way upstream.
    struct SendBody {
        #[pin]
        body: IncomingBody,
        tx: h2::SendStream<Bytes>,
        pending: Option<super::pipe::Pending>,
        cancel: Option<Arc<Cancel>>,
    }
}

impl Future for SendBody {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if let Some(cancel) = this.cancel {
            cancel.waker.register(cx.waker());
            if cancel.cancelled.load(Ordering::Acquire) {
                this.tx.send_reset(h2::Reason::CANCEL);
                return Poll::Ready(());
            }
        }
        super::pipe::pipe(this.body, this.tx, this.pending, cx).map(|_| ())
    }
}
