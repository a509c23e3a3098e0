//! The HTTP/2 client side of the proxy (h2c, or h2 over TLS, to the app or a pod), on the `h2`
//! crate: what hyper's HTTP/2 client does (its settings, connection-specific fields removed,
//! the request body copied in a task of its own as flow control allows, a reset when it fails),
//! plus the 1xx informational responses of each exchange, handed on the moment they arrive
//! ([`crate::informational::relay_h2`]) and always before the final response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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
/// relaying the 1xx responses that come before it.
pub async fn exchange(
    mut sender: h2::client::SendRequest<Bytes>,
    request: Request<IncomingBody>,
) -> Result<Response<IncomingBody>, h2::Error> {
    let (mut parts, body) = request.into_parts();
    super::strip_connection_headers(&mut parts.headers, true);
    let end = body.is_end_stream();
    let (mut response, tx) = sender.send_request(Request::from_parts(parts, ()), end)?;
    if !end {
        tokio::spawn(SendBody {
            body,
            tx,
            pending: None,
        });
    }
    let mut relayed = false;
    let response = std::future::poll_fn(|cx| {
        while let Poll::Ready(Some(Ok(head))) = response.poll_informational(cx) {
            relayed |= informational::relay_h2(&head);
        }
        Pin::new(&mut response).poll(cx)
    })
    .await;
    if relayed {
        // An HTTP/1 client gets the 1xx heads before the final head.
        informational::written().await;
    }
    let response = response?;
    let length = content_length(response.headers());
    Ok(response.map(|recv| IncomingBody::h2(recv, length)))
}

pin_project_lite::pin_project! {
    /// A request body on its way upstream.
    struct SendBody {
        #[pin]
        body: IncomingBody,
        tx: h2::SendStream<Bytes>,
        pending: Option<(Bytes, bool)>,
    }
}

impl Future for SendBody {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        super::server::pipe(this.body, this.tx, this.pending, cx).map(|_| ())
    }
}
