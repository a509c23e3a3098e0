//! HTTP/1 client connections.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::rt::{Read, Write};
use bytes::{Buf, Bytes};
use futures_core::ready;
use http::{Request, Response};
use httparse::ParserConfig;

use super::super::dispatch::{self, TrySendError};
use crate::body::{Body, Incoming as IncomingBody};
use crate::proto;

type Dispatcher<T, B> =
    proto::dispatch::Dispatcher<proto::dispatch::Client<B>, B, T, proto::h1::ClientTransaction>;

/// (patch) The dispatcher of a [`DirectConnection`].
type DirectDispatcher<T, B> = proto::dispatch::Dispatcher<
    proto::dispatch::DirectClient<B>,
    B,
    T,
    proto::h1::ClientTransaction,
>;

/// The sender side of an established connection.
pub struct SendRequest<B> {
    dispatch: dispatch::Sender<Request<B>, Response<IncomingBody>>,
}

/// Deconstructed parts of a `Connection`.
///
/// This allows taking apart a `Connection` at a later time, in order to
/// reclaim the IO object, and additional related pieces.
#[derive(Debug)]
#[non_exhaustive]
pub struct Parts<T> {
    /// The original IO object used in the handshake.
    pub io: T,
    /// A buffer of bytes that have been read but not processed as HTTP.
    ///
    /// For instance, if the `Connection` is used for an HTTP upgrade request,
    /// it is possible the server sent back the first bytes of the new protocol
    /// along with the response upgrade.
    ///
    /// You will want to check for any existing bytes if you plan to continue
    /// communicating on the IO object.
    pub read_buf: Bytes,
}

/// A future that processes all HTTP state for the IO object.
///
/// In most cases, this should just be spawned into an executor, so that it
/// can process incoming and outgoing messages, notice hangups, and the like.
///
/// Instances of this type are typically created via the [`handshake`] function.
///
/// # Drop behavior
///
/// Dropping the `Connection` will close the underlying IO resource.
/// Any in-flight requests that have not received a response will be
/// interrupted. If graceful shutdown is desired, poll the connection
/// until it completes instead of dropping.
#[must_use = "futures do nothing unless polled"]
pub struct Connection<T, B>
where
    T: Read + Write,
    B: Body + 'static,
{
    inner: Dispatcher<T, B>,
}

impl<T, B> Connection<T, B>
where
    T: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Return the inner IO object, and additional information.
    ///
    /// Only works for HTTP/1 connections. HTTP/2 connections will panic.
    pub fn into_parts(self) -> Parts<T> {
        let (io, read_buf, _) = self.inner.into_inner();
        Parts { io, read_buf }
    }

    /// Poll the connection for completion, but without calling `shutdown`
    /// on the underlying IO.
    ///
    /// This is useful to allow running a connection while doing an HTTP
    /// upgrade. Once the upgrade is completed, the connection would be "done",
    /// but it is not desired to actually shutdown the IO object. Instead you
    /// would take it back using `into_parts`.
    ///
    /// Use [`poll_fn`](https://docs.rs/futures/0.1.25/futures/future/fn.poll_fn.html)
    /// and [`try_ready!`](https://docs.rs/futures/0.1.25/futures/macro.try_ready.html)
    /// to work with this function; or use the `without_shutdown` wrapper.
    pub fn poll_without_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<crate::Result<()>> {
        self.inner.poll_without_shutdown(cx)
    }

    /// Prevent shutdown of the underlying IO object at the end of service the request,
    /// instead run `into_parts`. This is a convenience wrapper over `poll_without_shutdown`.
    ///
    /// # Errors
    ///
    /// Returns an error if the connection encounters an error while being polled to completion.
    #[allow(clippy::missing_panics_doc)]
    pub async fn without_shutdown(self) -> crate::Result<Parts<T>> {
        let mut conn = Some(self);
        crate::common::future::poll_fn(move |cx| -> Poll<crate::Result<Parts<T>>> {
            ready!(conn
                .as_mut()
                .expect("client connection polled after completion")
                .poll_without_shutdown(cx))?;
            Poll::Ready(Ok(conn
                .take()
                .expect("client connection missing before completion")
                .into_parts()))
        })
        .await
    }
}

/// A builder to configure an HTTP connection.
///
/// After setting options, the builder is used to create a handshake future.
///
/// **Note**: The default values of options are *not considered stable*. They
/// are subject to change at any time.
#[derive(Clone, Debug)]
pub struct Builder {
    h09_responses: bool,
    h1_parser_config: ParserConfig,
    h1_writev: Option<bool>,
    h1_title_case_headers: bool,
    h1_preserve_header_case: bool,
    h1_max_headers: Option<usize>,
    h1_max_header_size: Option<usize>,
    #[cfg(feature = "ffi")]
    h1_preserve_header_order: bool,
    h1_read_buf_exact_size: Option<usize>,
    h1_max_buf_size: Option<usize>,
}

/// Returns a handshake future over some IO.
///
/// This is a shortcut for `Builder::new().handshake(io)`.
/// See [`client::conn`](crate::client::conn) for more.
///
/// # Errors
///
/// Returns an error if the HTTP/1 connection handshake fails.
pub async fn handshake<T, B>(io: T) -> crate::Result<(SendRequest<B>, Connection<T, B>)>
where
    T: Read + Write + Unpin,
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    Builder::new().handshake(io).await
}

// ===== impl SendRequest

impl<B> SendRequest<B> {
    /// Polls to determine whether this sender can be used yet for a request.
    ///
    /// If the associated connection is closed, this returns an Error.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<crate::Result<()>> {
        self.dispatch.poll_ready(cx)
    }

    /// Waits until the dispatcher is ready.
    ///
    /// # Errors
    ///
    /// If the associated connection is closed, this returns an Error.
    pub async fn ready(&mut self) -> crate::Result<()> {
        crate::common::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Checks if the connection is currently ready to send a request.
    ///
    /// # Note
    ///
    /// This is mostly a hint. Due to inherent latency of networks, it is
    /// possible that even after checking this is ready, sending a request
    /// may still fail because the connection was closed in the meantime.
    pub fn is_ready(&self) -> bool {
        self.dispatch.is_ready()
    }

    /// Checks if the connection side has been closed.
    pub fn is_closed(&self) -> bool {
        self.dispatch.is_closed()
    }
}

impl<B> SendRequest<B>
where
    B: Body + 'static,
{
    /// Sends a `Request` on the associated connection.
    ///
    /// Returns a future that if successful, yields the `Response`.
    ///
    /// `req` must have a `Host` header.
    ///
    /// # Uri
    ///
    /// The `Uri` of the request is serialized as-is.
    ///
    /// - Usually you want origin-form (`/path?query`).
    /// - For sending to an HTTP proxy, you want to send in absolute-form
    ///   (`https://hyper.rs/guides`).
    ///
    /// This is however not enforced or validated and it is up to the user
    /// of this method to ensure the `Uri` is correct for their intended purpose.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future is the supported way to cancel an
    /// in-flight HTTP/1 request. Because HTTP/1 has no in-protocol way to
    /// abort a single request without affecting the shared connection,
    /// hyper closes the underlying connection when a request future is
    /// dropped before completion. Any subsequent calls on the same
    /// [`SendRequest`] will return a `canceled` error.
    ///
    /// # Errors
    ///
    /// Returns an error if the connection is not ready or if an error occurs while
    /// processing the request.
    pub fn send_request(
        &mut self,
        req: Request<B>,
    ) -> impl Future<Output = crate::Result<Response<IncomingBody>>> {
        let sent = self.dispatch.send(req);

        async move {
            match sent {
                Ok(rx) => match rx.await {
                    Ok(Ok(resp)) => Ok(resp),
                    Ok(Err(err)) => Err(err),
                    // this is definite bug if it happens, but it shouldn't happen!
                    Err(_canceled) => unreachable!("dispatch dropped without returning error"),
                },
                Err(_req) => {
                    debug!("connection was not ready");
                    Err(crate::Error::new_canceled().with("connection was not ready"))
                }
            }
        }
    }

    /// Sends a `Request` on the associated connection.
    ///
    /// Returns a future that if successful, yields the `Response`.
    ///
    /// # Errors
    ///
    /// If there was an error before trying to serialize the request to the
    /// connection, the message will be returned as part of this error.
    #[allow(clippy::result_large_err)]
    pub fn try_send_request(
        &mut self,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<IncomingBody>, TrySendError<Request<B>>>> {
        let sent = self.dispatch.try_send(req);
        async move {
            match sent {
                Ok(rx) => match rx.await {
                    Ok(Ok(res)) => Ok(res),
                    Ok(Err(err)) => Err(err),
                    // this is definite bug if it happens, but it shouldn't happen!
                    Err(_) => unreachable!("dispatch dropped without returning error"),
                },
                Err(req) => {
                    debug!("connection was not ready");
                    let error = crate::Error::new_canceled().with("connection was not ready");
                    Err(TrySendError {
                        error,
                        message: Some(req),
                    })
                }
            }
        }
    }
}

impl<B> fmt::Debug for SendRequest<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendRequest").finish()
    }
}

// ===== impl Connection

impl<T, B> Connection<T, B>
where
    T: Read + Write + Unpin + Send,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Enable this connection to support higher-level HTTP upgrades.
    ///
    /// See [the `upgrade` module](crate::upgrade) for more.
    pub fn with_upgrades(self) -> upgrades::UpgradeableConnection<T, B> {
        upgrades::UpgradeableConnection { inner: Some(self) }
    }
}

impl<T, B> fmt::Debug for Connection<T, B>
where
    T: Read + Write + fmt::Debug,
    B: Body + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").finish()
    }
}

impl<T, B> Future for Connection<T, B>
where
    T: Read + Write + Unpin,
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = crate::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match ready!(Pin::new(&mut self.inner).poll(cx))? {
            proto::Dispatched::Shutdown => Poll::Ready(Ok(())),
            proto::Dispatched::Upgrade(pending) => {
                // With no `Send` bound on `I`, we can't try to do
                // upgrades here. In case a user was trying to use
                // `upgrade` with this API, send a special
                // error letting them know about that.
                pending.manual();
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// (patch) An HTTP/1 client connection driven by its user, with no [`SendRequest`]: made by
/// [`Builder::direct`].
///
/// [`Connection`] and [`SendRequest`] talk through a channel, so that the connection can run as
/// a task of its own; every request then crosses that channel and its response comes back
/// through a one-shot channel. Here the user hands a request over with [`Self::send`], polls
/// the connection (it is a future, ending when the connection does) and takes the response
/// with [`Self::take_response`]; the response body is fed by the same polls. Nothing wakes the
/// user for a request handed over: poll the connection after [`Self::send`].
///
/// Protocol upgrades are handled as [`Connection::with_upgrades`] does: when the connection
/// ends with one, the IO goes to the response's pending upgrade.
///
/// # Drop behavior
///
/// As [`Connection`]: dropping closes the IO, interrupting a request in flight.
#[must_use = "futures do nothing unless polled"]
pub struct DirectConnection<T, B>
where
    T: Read + Write,
    B: Body + 'static,
{
    /// `None` after an upgrade took the IO.
    inner: Option<DirectDispatcher<T, B>>,
    /// The outcome of the last request, moved out of the dispatch when the connection ended.
    outcome: Option<Result<Response<IncomingBody>, Box<TrySendError<Request<B>>>>>,
}

// Nothing in it is ever pinned but the dispatcher, which is `Unpin` over an `Unpin` IO; requests
// and responses are only moved.
impl<T: Read + Write + Unpin, B: Body + 'static> Unpin for DirectConnection<T, B> {}

impl<T, B> fmt::Debug for DirectConnection<T, B>
where
    T: Read + Write + fmt::Debug,
    B: Body + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectConnection").finish()
    }
}

impl<T, B> DirectConnection<T, B>
where
    T: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Hands `request` over, to be written at the next poll; gives it back when the connection
    /// is not ready for a request (see [`Self::is_ready`]).
    pub fn send(&mut self, request: Request<B>) -> Result<(), Request<B>> {
        match self.inner.as_mut() {
            Some(inner) => inner.dispatch_mut().send(request),
            None => Err(request),
        }
    }

    /// Whether the connection is ready for a request, as [`SendRequest::is_ready`]: a new
    /// connection is; after a request, once a poll finished its exchange and asked for the
    /// next (and its response was taken).
    pub fn is_ready(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.dispatch().is_ready())
    }

    /// The response to the request handed over, once a poll received it, or why there is none
    /// (a request the connection ended without is answered with an error once it ended). When
    /// the connection ended before writing the request, the error holds the request
    /// ([`TrySendError::take_message`]), as [`SendRequest::try_send_request`]'s does. The error
    /// is boxed: the outcome is moved a few times, and failures are rare.
    pub fn take_response(
        &mut self,
    ) -> Option<Result<Response<IncomingBody>, Box<TrySendError<Request<B>>>>> {
        if let Some(outcome) = self.outcome.take() {
            return Some(outcome);
        }
        self.inner.as_mut()?.dispatch_mut().take_outcome()
    }

    /// The request written last, rebuilt, when the connection failed (its response being an
    /// error from [`Self::take_response`]) before reading a byte of its response, and the
    /// request had no body (none, or one that had ended before it was written). Whether it is
    /// safe to send it again on another connection (it may have reached the server, which
    /// closed without answering) is the user's call: an HTTP client retries idempotent
    /// requests written to a reused connection, the keep-alive race.
    pub fn take_unanswered(&mut self) -> Option<Box<Request<B>>> {
        self.inner.as_mut()?.dispatch_mut().take_unanswered()
    }

    /// No more requests: the connection ends (after shutting the IO down) once idle, as a
    /// [`Connection`] does when its [`SendRequest`] is dropped.
    pub fn close(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.dispatch_mut().close();
        }
    }

    /// The IO and the bytes read but not processed; `None` after an upgrade took them.
    pub fn into_parts(self) -> Option<Parts<T>> {
        let (io, read_buf, _) = self.inner?.into_inner();
        Some(Parts { io, read_buf })
    }
}

impl<T, B> Future for DirectConnection<T, B>
where
    T: Read + Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = crate::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            // Polled again after an upgrade took the IO: it stays ended.
            return Poll::Ready(Ok(()));
        };
        let ended = ready!(Pin::new(&mut *inner).poll(cx));
        // The request in flight or handed over gets its answer now, kept beyond the dispatch.
        this.outcome = inner.dispatch_mut().end();
        match ended {
            Ok(proto::Dispatched::Shutdown) => Poll::Ready(Ok(())),
            Ok(proto::Dispatched::Upgrade(pending)) => {
                let (io, read_buf, _) = this
                    .inner
                    .take()
                    .expect("direct client connection missing after upgrade")
                    .into_inner();
                pending.fulfill(crate::upgrade::Upgraded::new(io, read_buf));
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

// ===== impl Builder

impl Builder {
    /// Creates a new connection builder.
    #[inline]
    pub fn new() -> Builder {
        Builder {
            h09_responses: false,
            h1_writev: None,
            h1_read_buf_exact_size: None,
            h1_parser_config: ParserConfig::default(),
            h1_title_case_headers: false,
            h1_preserve_header_case: false,
            h1_max_headers: None,
            h1_max_header_size: None,
            #[cfg(feature = "ffi")]
            h1_preserve_header_order: false,
            h1_max_buf_size: None,
        }
    }

    /// Set whether HTTP/0.9 responses should be tolerated.
    ///
    /// Default is false.
    pub fn http09_responses(&mut self, enabled: bool) -> &mut Builder {
        self.h09_responses = enabled;
        self
    }

    /// Set whether HTTP/1 connections will accept spaces between header names
    /// and the colon that follow them in responses.
    ///
    /// You probably don't need this, here is what [RFC 7230 Section 3.2.4.] has
    /// to say about it:
    ///
    /// > No whitespace is allowed between the header field-name and colon. In
    /// > the past, differences in the handling of such whitespace have led to
    /// > security vulnerabilities in request routing and response handling. A
    /// > server MUST reject any received request message that contains
    /// > whitespace between a header field-name and colon with a response code
    /// > of 400 (Bad Request). A proxy MUST remove any such whitespace from a
    /// > response message before forwarding the message downstream.
    ///
    /// Default is false.
    ///
    /// [RFC 7230 Section 3.2.4.]: https://tools.ietf.org/html/rfc7230#section-3.2.4
    pub fn allow_spaces_after_header_name_in_responses(&mut self, enabled: bool) -> &mut Builder {
        self.h1_parser_config
            .allow_spaces_after_header_name_in_responses(enabled);
        self
    }

    /// Set whether HTTP/1 connections will accept obsolete line folding for
    /// header values.
    ///
    /// Newline codepoints (`\r` and `\n`) will be transformed to spaces when
    /// parsing.
    ///
    /// You probably don't need this, here is what [RFC 7230 Section 3.2.4.] has
    /// to say about it:
    ///
    /// > A server that receives an obs-fold in a request message that is not
    /// > within a message/http container MUST either reject the message by
    /// > sending a 400 (Bad Request), preferably with a representation
    /// > explaining that obsolete line folding is unacceptable, or replace
    /// > each received obs-fold with one or more SP octets prior to
    /// > interpreting the field value or forwarding the message downstream.
    ///
    /// > A proxy or gateway that receives an obs-fold in a response message
    /// > that is not within a message/http container MUST either discard the
    /// > message and replace it with a 502 (Bad Gateway) response, preferably
    /// > with a representation explaining that unacceptable line folding was
    /// > received, or replace each received obs-fold with one or more SP
    /// > octets prior to interpreting the field value or forwarding the
    /// > message downstream.
    ///
    /// > A user agent that receives an obs-fold in a response message that is
    /// > not within a message/http container MUST replace each received
    /// > obs-fold with one or more SP octets prior to interpreting the field
    /// > value.
    ///
    /// Default is false.
    ///
    /// [RFC 7230 Section 3.2.4.]: https://tools.ietf.org/html/rfc7230#section-3.2.4
    pub fn allow_obsolete_multiline_headers_in_responses(&mut self, enabled: bool) -> &mut Builder {
        self.h1_parser_config
            .allow_obsolete_multiline_headers_in_responses(enabled);
        self
    }

    /// Set whether HTTP/1 connections will silently ignored malformed header lines.
    ///
    /// If this is enabled and a header line does not start with a valid header
    /// name, or does not include a colon at all, the line will be silently ignored
    /// and no error will be reported.
    ///
    /// Default is false.
    pub fn ignore_invalid_headers_in_responses(&mut self, enabled: bool) -> &mut Builder {
        self.h1_parser_config
            .ignore_invalid_headers_in_responses(enabled);
        self
    }

    /// Set whether HTTP/1 connections should try to use vectored writes,
    /// or always flatten into a single buffer.
    ///
    /// Note that setting this to false may mean more copies of body data,
    /// but may also improve performance when an IO transport doesn't
    /// support vectored writes well, such as most TLS implementations.
    ///
    /// Setting this to true will force hyper to use queued strategy,
    /// which may eliminate unnecessary cloning on some TLS backends.
    ///
    /// Default is `auto`. In this mode hyper will try to guess which
    /// mode to use.
    pub fn writev(&mut self, enabled: bool) -> &mut Builder {
        self.h1_writev = Some(enabled);
        self
    }

    /// Set whether HTTP/1 connections will write header names as title case at
    /// the socket level.
    ///
    /// Default is false.
    pub fn title_case_headers(&mut self, enabled: bool) -> &mut Builder {
        self.h1_title_case_headers = enabled;
        self
    }

    /// Set whether to support preserving original header cases.
    ///
    /// Currently, this will record the original cases received, and store them
    /// in a private extension on the `Response`. It will also look for and use
    /// such an extension in any provided `Request`.
    ///
    /// Since the relevant extension is still private, there is no way to
    /// interact with the original cases. The only effect this can have now is
    /// to forward the cases in a proxy-like fashion.
    ///
    /// Default is false.
    pub fn preserve_header_case(&mut self, enabled: bool) -> &mut Builder {
        self.h1_preserve_header_case = enabled;
        self
    }

    /// Set the maximum number of headers.
    ///
    /// When a response is received, the parser will reserve a buffer to store headers for optimal
    /// performance.
    ///
    /// If client receives more headers than the buffer size, the error "message header too large"
    /// is returned.
    ///
    /// Note that headers is allocated on the stack by default, which has higher performance. After
    /// setting this value, headers will be allocated in heap memory, that is, heap memory
    /// allocation will occur for each response, and there will be a performance drop of about 5%.
    ///
    /// Default is 100.
    pub fn max_headers(&mut self, val: usize) -> &mut Self {
        self.h1_max_headers = Some(val);
        self
    }

    /// Set the maximum size of response headers (including the status line) in bytes.
    ///
    /// If the server sends headers exceeding this limit, the error "message head is too large"
    /// is returned.
    ///
    /// If not configured, then the [`max_buf_size`](Builder::max_buf_size) will naturally be reached and applied.
    ///
    /// This value is also used as the maximum size limit for chunked trailers.
    ///
    /// Default is `None`.
    pub fn max_header_size(&mut self, val: usize) -> &mut Self {
        self.h1_max_header_size = Some(val);
        self
    }

    /// Set whether to support preserving original header order.
    ///
    /// Currently, this will record the order in which headers are received, and store this
    /// ordering in a private extension on the `Response`. It will also look for and use
    /// such an extension in any provided `Request`.
    ///
    /// Default is false.
    #[cfg(feature = "ffi")]
    pub fn preserve_header_order(&mut self, enabled: bool) -> &mut Builder {
        self.h1_preserve_header_order = enabled;
        self
    }

    /// Sets the exact size of the read buffer to *always* use.
    ///
    /// Note that setting this option unsets the `max_buf_size` option.
    ///
    /// Default is an adaptive read buffer.
    pub fn read_buf_exact_size(&mut self, sz: Option<usize>) -> &mut Builder {
        self.h1_read_buf_exact_size = sz;
        self.h1_max_buf_size = None;
        self
    }

    /// Set the maximum buffer size for the connection.
    ///
    /// Default is ~400kb.
    ///
    /// Note that setting this option unsets the `read_exact_buf_size` option.
    ///
    /// # Panics
    ///
    /// The minimum value allowed is 8192. This method panics if the passed `max` is less than the minimum.
    pub fn max_buf_size(&mut self, max: usize) -> &mut Self {
        assert!(
            max >= proto::h1::MINIMUM_MAX_BUFFER_SIZE,
            "the max_buf_size cannot be smaller than the minimum that h1 specifies."
        );

        self.h1_max_buf_size = Some(max);
        self.h1_read_buf_exact_size = None;
        self
    }

    /// Constructs a connection with the configured options and IO.
    /// See [`client::conn`](crate::client::conn) for more.
    ///
    /// Note, if [`Connection`] is not `await`-ed, [`SendRequest`] will
    /// do nothing.
    ///
    /// # Errors
    ///
    /// Returns an error if the HTTP/1connection handshake fails.
    pub fn handshake<T, B>(
        &self,
        io: T,
    ) -> impl Future<Output = crate::Result<(SendRequest<B>, Connection<T, B>)>>
    where
        T: Read + Write + Unpin,
        B: Body + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let opts = self.clone();

        async move {
            trace!("client handshake HTTP/1");

            let (tx, rx) = dispatch::channel();
            let conn = opts.configured_conn(io);
            let cd = proto::h1::dispatch::Client::new(rx);
            let proto = proto::h1::Dispatcher::new(cd, conn);

            Ok((SendRequest { dispatch: tx }, Connection { inner: proto }))
        }
    }

    /// (patch) A connection over `io` with the configured options, driven by its user: see
    /// [`DirectConnection`]. There is no handshake to wait for (as with [`Self::handshake`]).
    pub fn direct<T, B>(&self, io: T) -> DirectConnection<T, B>
    where
        T: Read + Write + Unpin,
        B: Body + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let mut conn = self.configured_conn(io);
        conn.set_direct_client();
        let cd = proto::h1::dispatch::DirectClient::new();
        DirectConnection {
            inner: Some(proto::h1::Dispatcher::new(cd, conn)),
            outcome: None,
        }
    }

    /// (patch) The protocol state over `io` with the configured options (the part of
    /// [`Self::handshake`] that both kinds of connection share).
    fn configured_conn<T, B>(&self, io: T) -> proto::Conn<T, B, proto::h1::ClientTransaction>
    where
        T: Read + Write + Unpin,
        B: Buf,
    {
        let opts = self;
        {
            let mut conn = proto::Conn::new(io);
            conn.set_h1_parser_config(opts.h1_parser_config.clone());
            if let Some(writev) = opts.h1_writev {
                if writev {
                    conn.set_write_strategy_queue();
                } else {
                    conn.set_write_strategy_flatten();
                }
            }
            if opts.h1_title_case_headers {
                conn.set_title_case_headers();
            }
            if opts.h1_preserve_header_case {
                conn.set_preserve_header_case();
            }
            if let Some(max_headers) = opts.h1_max_headers {
                conn.set_http1_max_headers(max_headers);
            }
            if let Some(max_header_size) = opts.h1_max_header_size {
                conn.set_http1_max_header_size(max_header_size);
            }
            #[cfg(feature = "ffi")]
            if opts.h1_preserve_header_order {
                conn.set_preserve_header_order();
            }

            if opts.h09_responses {
                conn.set_h09_responses();
            }

            if let Some(sz) = opts.h1_read_buf_exact_size {
                conn.set_read_buf_exact_size(sz);
            }
            if let Some(max) = opts.h1_max_buf_size {
                conn.set_max_buf_size(max);
            }
            conn
        }
    }
}

mod upgrades {
    use super::{Connection, Context, Future, Parts, Pin, Poll, Read, StdError, Write};
    use crate::body::Body;
    use crate::proto::Dispatched;
    use crate::upgrade::Upgraded;
    use futures_core::ready;
    // A future binding a connection with a Service with Upgrade support.
    //
    // This type is unnameable outside the crate.
    #[must_use = "futures do nothing unless polled"]
    #[allow(missing_debug_implementations)]
    pub struct UpgradeableConnection<T, B>
    where
        T: Read + Write + Unpin + Send + 'static,
        B: Body + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        pub(super) inner: Option<Connection<T, B>>,
    }

    impl<I, B> Future for UpgradeableConnection<I, B>
    where
        I: Read + Write + Unpin + Send + 'static,
        B: Body + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        type Output = crate::Result<()>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match ready!(Pin::new(
                &mut self
                    .inner
                    .as_mut()
                    .expect("upgradeable client connection polled after upgrade")
                    .inner,
            )
            .poll(cx))
            {
                Ok(Dispatched::Shutdown) => Poll::Ready(Ok(())),
                Ok(Dispatched::Upgrade(pending)) => {
                    let Parts { io, read_buf } = self
                        .inner
                        .take()
                        .expect("upgradeable client connection missing after upgrade")
                        .into_parts();
                    pending.fulfill(Upgraded::new(io, read_buf));
                    Poll::Ready(Ok(()))
                }
                Err(e) => Poll::Ready(Err(e)),
            }
        }
    }
}

/// (patch) Tests of [`DirectConnection`].
#[cfg(all(test, not(miri)))]
mod direct_tests {
    use super::*;
    use crate::common::io::Compat;
    use http_body_util::BodyExt;

    type Mock = Compat<tokio_test::io::Mock>;

    fn get(path: &str) -> Request<IncomingBody> {
        Request::builder()
            .uri(path)
            .body(IncomingBody::empty())
            .unwrap()
    }

    /// Polls `conn` until its response is in.
    async fn response(
        conn: &mut DirectConnection<Mock, IncomingBody>,
    ) -> Result<Response<IncomingBody>, Box<TrySendError<Request<IncomingBody>>>> {
        crate::common::future::poll_fn(|cx| {
            let ended = Pin::new(&mut *conn).poll(cx);
            if let Some(outcome) = conn.take_response() {
                return Poll::Ready(outcome);
            }
            assert!(ended.is_pending(), "ended without an outcome");
            Poll::Pending
        })
        .await
    }

    /// Polls `conn` until it has ended.
    async fn end(conn: &mut DirectConnection<Mock, IncomingBody>) -> crate::Result<()> {
        crate::common::future::poll_fn(|cx| Pin::new(&mut *conn).poll(cx)).await
    }

    #[tokio::test]
    async fn requests_go_and_responses_come_in_place() {
        let io = tokio_test::io::Builder::new()
            .write(b"GET /a HTTP/1.1\r\n\r\n")
            .read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            .write(b"GET /b HTTP/1.1\r\n\r\n")
            .read(b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nwo")
            .read(b"rld")
            .build();
        let mut conn = Builder::new().direct(Compat::new(io));
        assert!(conn.is_ready(), "a new connection takes a request");

        conn.send(get("/a")).unwrap();
        assert!(!conn.is_ready());
        let refused = conn.send(get("/again")).unwrap_err();
        assert_eq!(refused.uri(), "/again");
        let first = response(&mut conn).await.unwrap();
        assert_eq!(first.status(), 200);
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        // The poll that brought the whole response also readied the connection.
        assert!(conn.is_ready());

        conn.send(get("/b")).unwrap();
        let second = response(&mut conn).await.unwrap();
        assert_eq!(second.status(), 201);
        // The rest of this body comes with later polls of the connection.
        let mut body = second.into_body();
        let mut read = Vec::new();
        crate::common::future::poll_fn(|cx| loop {
            let _ = Pin::new(&mut conn).poll(cx);
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(frame)) => {
                    read.extend_from_slice(&frame.unwrap().into_data().unwrap());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        assert_eq!(read, b"world");
        assert!(conn.take_response().is_none());
    }

    #[tokio::test]
    async fn a_request_the_connection_never_wrote_comes_back() {
        // The app closed the idle connection: the end of stream is read before the request
        // is written.
        let io = tokio_test::io::Builder::new().build();
        let mut conn = Builder::new().direct(Compat::new(io));
        conn.send(get("/x")).unwrap();
        let mut error = response(&mut conn).await.unwrap_err();
        assert!(error.error().is_canceled(), "{error:?}");
        assert_eq!(error.take_message().unwrap().uri(), "/x");
        assert!(conn.take_unanswered().is_none(), "handed back unwritten instead");
        assert!(!conn.is_ready());
        assert!(conn.send(get("/y")).is_err());
    }

    #[tokio::test]
    async fn an_end_of_stream_after_a_response_is_read_when_the_connection_is_next_used() {
        // The app closed the connection right after its response. The poll that brought the
        // response does not read on (the connection is idle, its user pools it); the first
        // poll of its next use reads the end of stream before writing, and the request comes
        // back unwritten (the mock fails on any write it does not expect).
        let io = tokio_test::io::Builder::new()
            .write(b"GET /a HTTP/1.1\r\n\r\n")
            .read(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .build();
        let mut conn = Builder::new().direct(Compat::new(io));
        conn.send(get("/a")).unwrap();
        let first = response(&mut conn).await.unwrap();
        assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert!(conn.is_ready(), "idle, the end of stream not read yet");

        conn.send(get("/b")).unwrap();
        let mut error = response(&mut conn).await.unwrap_err();
        assert!(error.error().is_canceled(), "{error:?}");
        assert_eq!(error.take_message().unwrap().uri(), "/b");
        assert!(!conn.is_ready());
    }

    #[tokio::test]
    async fn stray_bytes_after_a_response_end_the_connection_at_once() {
        // Bytes after a complete response are not left for the next use: the connection fails
        // in the poll that read them, as hyper's client does.
        let io = tokio_test::io::Builder::new()
            .write(b"GET /a HTTP/1.1\r\n\r\n")
            .read(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokstray")
            .build();
        let mut conn = Builder::new().direct(Compat::new(io));
        conn.send(get("/a")).unwrap();
        let first = response(&mut conn).await.unwrap();
        assert_eq!(first.status(), 200);
        assert!(!conn.is_ready());
        assert!(end(&mut conn).await.is_err(), "ended on the stray bytes");
    }

    #[tokio::test]
    async fn a_connection_lost_mid_exchange_fails_the_request_without_it() {
        let io = tokio_test::io::Builder::new()
            .write(b"GET /x HTTP/1.1\r\n\r\n")
            .read(b"HTTP/1.1 200 OK\r\n")
            .build();
        let mut conn = Builder::new().direct(Compat::new(io));
        conn.send(get("/x")).unwrap();
        let mut error = response(&mut conn).await.unwrap_err();
        assert!(error.take_message().is_none(), "written: not to be retried");
        assert!(error.error().is_incomplete_message(), "{error:?}");
        assert!(conn.take_unanswered().is_none(), "part of a response was read");
    }

    #[tokio::test]
    async fn a_request_written_and_never_answered_is_rebuilt() {
        // The keep-alive race the other way round: the request was written to a connection
        // the server had closed, and the end of stream comes instead of a response. The
        // second request on the connection is the one rebuilt, with its headers whole.
        let io = tokio_test::io::Builder::new()
            .write(b"GET /a HTTP/1.1\r\n\r\n")
            .read(b"HTTP/1.1 204 No Content\r\n\r\n")
            .write(b"OPTIONS /b?q=1 HTTP/1.1\r\nhost: app\r\nx-twice: 1\r\nx-twice: 2\r\n\r\n")
            .build();
        let mut conn = Builder::new().direct(Compat::new(io));
        conn.send(get("/a")).unwrap();
        assert_eq!(response(&mut conn).await.unwrap().status(), 204);
        assert!(conn.take_unanswered().is_none(), "answered");
        let request = Request::builder()
            .method("OPTIONS")
            .uri("/b?q=1")
            .header("host", "app")
            .header("x-twice", "1")
            .header("x-twice", "2")
            .extension(7u8)
            .body(IncomingBody::empty())
            .unwrap();
        conn.send(request).unwrap();
        let mut error = response(&mut conn).await.unwrap_err();
        assert!(error.take_message().is_none(), "it was written");
        assert!(error.error().is_incomplete_message(), "{error:?}");
        let again = conn.take_unanswered().expect("rebuilt");
        assert_eq!(again.method(), "OPTIONS");
        assert_eq!(again.uri(), "/b?q=1");
        assert_eq!(again.version(), http::Version::HTTP_11);
        assert_eq!(again.headers()["host"], "app");
        let twice: Vec<_> = again.headers().get_all("x-twice").iter().collect();
        assert_eq!(twice, ["1", "2"]);
        assert_eq!(again.headers().len(), 3);
        assert_eq!(again.extensions().get::<u8>(), Some(&7));
        assert!(again.body().is_end_stream());
        assert!(conn.take_unanswered().is_none(), "taken once");
    }

    #[tokio::test]
    async fn a_request_reset_before_its_answer_is_rebuilt() {
        let io = tokio_test::io::Builder::new()
            .write(b"GET /x HTTP/1.1\r\n\r\n")
            .read_error(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            ))
            .build();
        let mut conn = Builder::new().direct(Compat::new(io));
        conn.send(get("/x")).unwrap();
        let mut error = response(&mut conn).await.unwrap_err();
        assert!(error.take_message().is_none());
        assert_eq!(conn.take_unanswered().expect("rebuilt").uri(), "/x");
    }

    #[tokio::test]
    async fn a_request_with_a_body_is_not_rebuilt() {
        let io = tokio_test::io::Builder::new()
            .write(b"POST /x HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi")
            .build();
        let mut conn = Builder::new().direct(Compat::new(io));
        let request = Request::builder()
            .method("POST")
            .uri("/x")
            .body(http_body_util::Full::new(Bytes::from_static(b"hi")))
            .unwrap();
        conn.send(request).unwrap();
        let ended = crate::common::future::poll_fn(|cx| Pin::new(&mut conn).poll(cx)).await;
        assert!(ended.is_ok(), "{ended:?}");
        let mut error = conn.take_response().unwrap().unwrap_err();
        assert!(error.take_message().is_none());
        assert!(conn.take_unanswered().is_none(), "its body is gone");
    }

    #[tokio::test]
    async fn close_ends_an_idle_connection() {
        let io = tokio_test::io::Builder::new()
            .write(b"GET /a HTTP/1.1\r\n\r\n")
            .read(b"HTTP/1.1 204 No Content\r\n\r\n")
            .build();
        let mut conn = Builder::new().direct(Compat::new(io));
        conn.send(get("/a")).unwrap();
        assert_eq!(response(&mut conn).await.unwrap().status(), 204);
        conn.close();
        assert!(!conn.is_ready());
        end(&mut conn).await.unwrap();
        assert!(conn.take_response().is_none());
        assert!(conn.into_parts().is_some());
    }

    #[tokio::test]
    async fn an_upgrade_takes_the_connection_io() {
        use crate::rt::{Read as _, ReadBufCursor};
        let io = tokio_test::io::Builder::new()
            .write(b"GET /ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            .read(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nframe")
            .build();
        let mut conn = Builder::new().direct(Compat::new(io));
        let request = Request::builder()
            .uri("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(IncomingBody::empty())
            .unwrap();
        conn.send(request).unwrap();
        let mut switched = response(&mut conn).await.unwrap();
        assert_eq!(switched.status(), 101);
        let on_upgrade = crate::upgrade::on(&mut switched);
        end(&mut conn).await.unwrap();
        let mut upgraded = on_upgrade.await.expect("the IO goes to the upgrade");
        // The bytes that came with the head are the upgraded IO's first.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 5];
        let mut read = crate::rt::ReadBuf::uninit(&mut buf);
        crate::common::future::poll_fn(|cx| {
            let cursor: ReadBufCursor<'_> = read.unfilled();
            Pin::new(&mut upgraded).poll_read(cx, cursor)
        })
        .await
        .unwrap();
        assert_eq!(read.filled(), b"frame");
        assert!(conn.into_parts().is_none());
    }
}
