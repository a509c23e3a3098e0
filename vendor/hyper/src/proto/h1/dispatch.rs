use std::{
    error::Error as StdError,
    future::Future,
    marker::Unpin,
    pin::Pin,
    task::{Context, Poll},
};

use crate::rt::{Read, Write};
use bytes::{Buf, Bytes};
use futures_core::ready;
use http::Request;

use super::{Http1Transaction, Wants};
use crate::body::{Body, DecodedLength, Incoming as IncomingBody};
#[cfg(feature = "client")]
use crate::client::dispatch::TrySendError;
use crate::common::task;
use crate::proto::{BodyLength, Conn, Dispatched, MessageHead, RequestHead, WrittenHead};
use crate::upgrade::OnUpgrade;

pub(crate) struct Dispatcher<D, Bs: Body, I, T> {
    conn: Conn<I, Bs::Data, T>,
    dispatch: D,
    body_tx: SenderDropGuard,
    body_rx: Pin<Box<Option<Bs>>>,
    is_closing: bool,
}

pub(crate) trait Dispatch {
    type PollItem;
    type PollBody;
    type PollError;
    type RecvItem;
    /// (patch) What is left of a head once written (see [`Dispatch::written`]).
    type Written;
    fn poll_msg(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<(Self::PollItem, Self::PollBody), Self::PollError>>>;
    /// (patch) [`Dispatch::poll_msg`], with the message's body put straight into `body` (which
    /// is `None` when called) instead of being returned with its head: the dispatcher keeps
    /// the body there anyway, and returning it made each message's body (a server's response
    /// body, with the service's state for the rest of the exchange) be copied on its way.
    #[inline(always)]
    fn poll_msg_into(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        body: &mut Pin<Box<Option<Self::PollBody>>>,
    ) -> Poll<Option<Result<Self::PollItem, Self::PollError>>> {
        Poll::Ready(match ready!(self.poll_msg(cx)) {
            Some(Ok((head, polled))) => {
                body.set(Some(polled));
                Some(Ok(head))
            }
            Some(Err(error)) => Some(Err(error)),
            None => None,
        })
    }
    fn recv_msg(&mut self, msg: crate::Result<(Self::RecvItem, IncomingBody)>)
        -> crate::Result<()>;
    /// (patch) [`Dispatch::recv_msg`] of a message that was read: its head and body handed
    /// over as they are, not first packed into a `Result` of a tuple. With `poll_read_head`'s
    /// match, one copy of the server's request head fewer: queue-proxy 18,297 → 18,231
    /// instructions per HTTP/1.1 request (`benches/callgrind_requests.py --scenarios h1`).
    #[inline(always)]
    fn recv_head(&mut self, head: Self::RecvItem, body: IncomingBody) -> crate::Result<()> {
        self.recv_msg(Ok((head, body)))
    }
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>>;
    fn should_poll(&self) -> bool;
    /// (patch) What is left of the head of the message just written (its headers went to the
    /// connection's cached map). Dropped, unless a client keeps it to rebuild a request the
    /// connection fails to answer (see [`Dispatch::unanswered`]).
    #[inline(always)]
    fn written(&mut self, head: Self::Written) {
        drop(head);
    }
    /// (patch) The connection failed with nothing of the response to the request written last
    /// read: here are that request's headers, whole (`Conn::take_unanswered_headers`). Called
    /// just before `recv_msg` gets the error.
    #[cfg(feature = "client")]
    #[inline(always)]
    fn unanswered(&mut self, headers: http::HeaderMap) {
        drop(headers);
    }
}

cfg_server! {
    use crate::service::HttpService;

    pub(crate) struct Server<S: HttpService<B>, B> {
        in_flight: Pin<Box<Option<S::Future>>>,
        pub(crate) service: S,
    }
}

cfg_client! {
    pin_project_lite::pin_project! {
        pub(crate) struct Client<B> {
            callback: Option<crate::client::dispatch::Callback<Request<B>, http::Response<IncomingBody>>>,
            #[pin]
            rx: ClientRx<B>,
            rx_closed: bool,
        }
    }

    type ClientRx<B> = crate::client::dispatch::Receiver<Request<B>, http::Response<IncomingBody>>;
}

impl<D, Bs, I, T> Dispatcher<D, Bs, I, T>
where
    D: Dispatch<
            PollItem = MessageHead<T::Outgoing>,
            PollBody = Bs,
            RecvItem = MessageHead<T::Incoming>,
            Written = WrittenHead<T::Outgoing>,
        > + Unpin,
    D::PollError: Into<Box<dyn StdError + Send + Sync>>,
    I: Read + Write + Unpin,
    T: Http1Transaction + Unpin,
    Bs: Body + 'static,
    Bs::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    pub(crate) fn new(dispatch: D, conn: Conn<I, Bs::Data, T>) -> Self {
        Dispatcher {
            conn,
            dispatch,
            body_tx: SenderDropGuard::none(),
            body_rx: Box::pin(None),
            is_closing: false,
        }
    }

    #[cfg(feature = "server")]
    pub(crate) fn disable_keep_alive(&mut self) {
        self.conn.disable_keep_alive();

        // If keep alive has been disabled and no read or write has been seen on
        // the connection yet, we must be in a state where the server is being asked to
        // shut down before any data has been seen on the connection
        if self.conn.is_write_closed() || self.conn.has_initial_read_write_state() {
            self.close();
        }
    }

    /// (patch) The dispatch, for a user driving the connection itself.
    #[cfg(feature = "client")]
    pub(crate) fn dispatch(&self) -> &D {
        &self.dispatch
    }

    /// (patch) See [`Self::dispatch`].
    #[cfg(feature = "client")]
    pub(crate) fn dispatch_mut(&mut self) -> &mut D {
        &mut self.dispatch
    }

    pub(crate) fn into_inner(self) -> (I, Bytes, D) {
        let (io, buf) = self.conn.into_inner();
        (io, buf, self.dispatch)
    }

    /// (patch) Gives the dispatch the headers of a request the connection failed to answer
    /// (see [`Dispatch::unanswered`]); not after a parse error, which means bytes were read.
    #[cfg(feature = "client")]
    fn offer_unanswered(&mut self, err: &crate::Error) {
        if err.is_parse() {
            return;
        }
        if let Some(headers) = self.conn.take_unanswered_headers() {
            self.dispatch.unanswered(headers);
        }
    }

    /// Run this dispatcher until HTTP says this connection is done,
    /// but don't call `Write::shutdown` on the underlying IO.
    ///
    /// This is useful for old-style HTTP upgrades, but ignores
    /// newer-style upgrade API.
    pub(crate) fn poll_without_shutdown(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<crate::Result<()>> {
        Pin::new(self).poll_catch(cx, false).map_ok(|ds| {
            if let Dispatched::Upgrade(pending) = ds {
                pending.manual();
            }
        })
    }

    fn poll_catch(
        &mut self,
        cx: &mut Context<'_>,
        should_shutdown: bool,
    ) -> Poll<crate::Result<Dispatched>> {
        Poll::Ready(ready!(self.poll_inner(cx, should_shutdown)).or_else(|e| {
            // Be sure to alert a streaming body of the failure with a
            // more specific error than the drop guard would provide.
            if let Some(mut body) = self.body_tx.take() {
                body.send_error(crate::Error::new_body("connection error"));
            }
            // An error means we're shutting down either way.
            // We just try to give the error to the user,
            // and close the connection with an Ok. If we
            // cannot give it to the user, then return the Err.
            #[cfg(feature = "client")]
            self.offer_unanswered(&e);
            self.dispatch.recv_msg(Err(e))?;
            Ok(Dispatched::Shutdown)
        }))
    }

    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
        should_shutdown: bool,
    ) -> Poll<crate::Result<Dispatched>> {
        // (patch) no `T::update_date()` here: the cached date is brought up to date when a
        // response head is written with it (`date::extend`).

        // (patch) reads that found nothing are not retried within this poll.
        self.conn.start_poll();
        ready!(self.poll_loop(cx))?;

        if self.is_done() {
            if let Some(pending) = self.conn.pending_upgrade() {
                self.conn.take_error()?;
                return Poll::Ready(Ok(Dispatched::Upgrade(pending)));
            } else if should_shutdown {
                ready!(self.conn.poll_shutdown(cx)).map_err(crate::Error::new_shutdown)?;
            }
            self.conn.take_error()?;
            Poll::Ready(Ok(Dispatched::Shutdown))
        } else {
            Poll::Pending
        }
    }

    fn poll_loop(&mut self, cx: &mut Context<'_>) -> Poll<crate::Result<()>> {
        // Limit the looping on this connection, in case it is ready far too
        // often, so that other futures don't starve.
        //
        // 16 was chosen arbitrarily, as that is number of pipelined requests
        // benchmarks often use. Perhaps it should be a config option instead.
        for _ in 0..16 {
            let _ = self.poll_read(cx)?;
            let write_ready = self.poll_write(cx)?.is_ready();
            let flush_ready = self.poll_flush(cx)?.is_ready();

            // If we can write more body and the connection is ready, we should
            // write again. If we return `Ready(Ok(())` here, we will yield
            // without a guaranteed wake-up from the write side of the connection.
            // This would lead to a deadlock if we also don't expect reads.
            let wants_write_again = self.can_write_again() && (write_ready || flush_ready);

            // This could happen if reading paused before blocking on IO,
            // such as getting to the end of a framed message, but then
            // writing/flushing set the state back to Init. In that case,
            // if the read buffer still had bytes, we'd want to try poll_read
            // again, or else we wouldn't ever be woken up again.
            //
            // Using this instead of task::current() and notify() inside
            // the Conn is noticeably faster in pipelined benchmarks.
            let wants_read_again = self.conn.wants_read_again();

            // If we cannot write or read again, we yield and rely on the
            // wake-up from the connection futures.
            if !(wants_write_again || wants_read_again) {
                // (patch) A direct client connection that went idle in this round: its dispatch
                // is asked for a request once (a `DirectClient` then counts as ready), without
                // the round of reading (left to its next use, `Conn::require_empty_read`) and
                // flushing that hyper's client goes through to poll its requests stream. A write
                // that made progress goes round the loop as before.
                #[cfg(feature = "client")]
                if self.conn.take_direct_idle() {
                    if self.poll_write(cx)?.is_ready() {
                        continue;
                    }
                    if self.conn.has_buffered_write() {
                        let _ = self.poll_flush(cx)?;
                    }
                }
                return Poll::Ready(Ok(()));
            }

            // If we are continuing only because "wants_write_again", re-check whether a second
            // write poll can make progress. `poll_flush` can be ready even when there is no
            // buffered data and the request body is still pending, so relying on the previous
            // readiness can hot-loop.
            if !wants_read_again && wants_write_again {
                // Write was previously pending, but may have become ready since polling flush, so
                // we need to check it again. If it is still pending, it is safe to yield and rely
                // on wake-up from the connection futures.
                if self.poll_write(cx)?.is_pending() {
                    // That write can have buffered bytes before going pending: a body that
                    // reached end-of-stream between the two write polls buffers the end of the
                    // message here, and then the write goes pending on the *next* message.
                    // Yielding without flushing would strand those bytes in the write buffer
                    // until the peer gives up, since the wake-ups we then rely on are for
                    // reads. Flush what was just buffered before yielding.
                    if self.conn.has_buffered_write() {
                        let _ = self.poll_flush(cx)?;
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
        trace!("poll_loop yielding (self = {:p})", self);
        task::yield_now(cx).map(|never| match never {})
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<crate::Result<()>> {
        loop {
            if self.is_closing {
                return Poll::Ready(Ok(()));
            } else if self.conn.can_read_head() {
                ready!(self.poll_read_head(cx))?;
            } else if let Some(mut body) = self.body_tx.take() {
                if self.conn.can_read_body() {
                    match body.poll_ready(cx) {
                        Poll::Ready(Ok(())) => (),
                        Poll::Pending => {
                            self.body_tx.set(body);
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(_canceled)) => {
                            // user doesn't care about the body
                            // so we should stop reading
                            trace!("body receiver dropped before eof, draining or closing");
                            self.conn.poll_drain_or_close_read(cx);
                            continue;
                        }
                    }
                    match self.conn.poll_read_body(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if frame.is_data() {
                                let chunk = frame.into_data().unwrap_or_else(|_| unreachable!());
                                match body.try_send_data(chunk) {
                                    Ok(()) => {
                                        self.body_tx.set(body);
                                    }
                                    Err(_canceled) => {
                                        if self.conn.can_read_body() {
                                            trace!("body receiver dropped before eof, closing");
                                            self.conn.close_read();
                                        }
                                    }
                                }
                            } else if frame.is_trailers() {
                                let trailers =
                                    frame.into_trailers().unwrap_or_else(|_| unreachable!());
                                match body.try_send_trailers(trailers) {
                                    Ok(()) => {
                                        self.body_tx.set(body);
                                    }
                                    Err(_canceled) => {
                                        if self.conn.can_read_body() {
                                            trace!("body receiver dropped before eof, closing");
                                            self.conn.close_read();
                                        }
                                    }
                                }
                            } else {
                                // we should have dropped all unknown frames in poll_read_body
                                error!("unexpected frame");
                            }
                        }
                        Poll::Ready(None) => {
                            // just drop, the body will close automatically
                        }
                        Poll::Pending => {
                            self.body_tx.set(body);
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Err(e))) => {
                            body.send_error(crate::Error::new_body(e));
                        }
                    }
                } else {
                    // just drop, the body will close automatically
                }
            } else {
                return self.conn.poll_read_keep_alive(cx);
            }
        }
    }

    fn poll_read_head(&mut self, cx: &mut Context<'_>) -> Poll<crate::Result<()>> {
        // can dispatch receive, or does it still care about other incoming message?
        if let Ok(()) = ready!(self.dispatch.poll_ready(cx)) {
        } else {
            trace!("dispatch no longer receiving messages");
            self.close();
            return Poll::Ready(Ok(()));
        }

        // dispatch is ready for a message, try to read one
        // (patch) The poll's output matched as it is, not through `ready!`, and the head
        // handed on with `recv_head` (see there: a copy of it fewer).
        match self.conn.poll_read_head(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok((mut head, body_len, wants)))) => {
                let whole = if wants.contains(Wants::EXPECT) || wants.contains(Wants::UPGRADE) {
                    None
                } else {
                    // (patch) a body that came whole with its head needs no channel.
                    self.conn.take_whole_body(cx)
                };
                let body = match (body_len, whole) {
                    (DecodedLength::ZERO, _) => IncomingBody::empty(),
                    (_, Some(data)) => IncomingBody::full(data),
                    (other, None) => {
                        let (tx, rx) =
                            IncomingBody::new_channel(other, wants.contains(Wants::EXPECT));
                        self.body_tx.set(tx);
                        rx
                    }
                };
                if wants.contains(Wants::UPGRADE) {
                    let upgrade = self.conn.on_upgrade();
                    debug_assert!(!upgrade.is_none(), "empty upgrade");
                    debug_assert!(
                        head.extensions.get::<OnUpgrade>().is_none(),
                        "OnUpgrade already set"
                    );
                    head.extensions.insert(upgrade);
                }
                self.dispatch.recv_head(head, body)?;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Some(Err(err))) => {
                debug!("read_head error: {}", err);
                #[cfg(feature = "client")]
                self.offer_unanswered(&err);
                self.dispatch.recv_msg(Err(err))?;
                // if here, the dispatcher gave the user the error
                // somewhere else. we still need to shutdown, but
                // not as a second error.
                self.close();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(None) => {
                // read eof, the write side will have been closed too unless
                // allow_read_close was set to true, in which case just do
                // nothing...
                debug_assert!(self.conn.is_read_closed());
                if self.conn.is_write_closed() {
                    self.close();
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<crate::Result<()>> {
        loop {
            if self.is_closing {
                return Poll::Ready(Ok(()));
            } else if self.body_rx.is_none()
                && self.conn.can_write_head()
                && self.dispatch.should_poll()
            {
                // (patch) The body goes straight into `body_rx` (see `poll_msg_into`).
                if let Some(msg) =
                    ready!(Pin::new(&mut self.dispatch).poll_msg_into(cx, &mut self.body_rx))
                {
                    let head = msg.map_err(crate::Error::new_user_service)?;

                    let body_type = match self.body_rx.as_ref().get_ref() {
                        Some(body) if !body.is_end_stream() => Some(
                            body.size_hint()
                                .exact()
                                .map_or(BodyLength::Unknown, BodyLength::Known),
                        ),
                        _ => None,
                    };
                    let ended = body_type.is_none();
                    let dispatch = &mut self.dispatch;
                    self.conn
                        .write_head_then(head, body_type, |written| dispatch.written(written));
                    if ended {
                        // An ended body is not polled: dropped after the head, as before.
                        self.body_rx.set(None);
                    }
                } else {
                    self.close();
                    return Poll::Ready(Ok(()));
                }
            } else if !self.conn.can_buffer_body() {
                ready!(self.poll_flush(cx))?;
            } else {
                // A new scope is needed :(
                if let (Some(mut body), clear_body) =
                    OptGuard::new(self.body_rx.as_mut()).guard_mut()
                {
                    debug_assert!(!*clear_body, "opt guard defaults to keeping body");
                    if !self.conn.can_write_body() {
                        trace!(
                            "no more write body allowed, user body is_end_stream = {}",
                            body.is_end_stream(),
                        );
                        *clear_body = true;
                        continue;
                    }

                    let item = ready!(body.as_mut().poll_frame(cx));
                    if let Some(item) = item {
                        let frame = item.map_err(|e| {
                            *clear_body = true;
                            crate::Error::new_user_body(e)
                        })?;

                        if frame.is_data() {
                            let chunk = frame.into_data().unwrap_or_else(|_| unreachable!());
                            let eos = body.is_end_stream();
                            if eos {
                                *clear_body = true;
                                if chunk.remaining() == 0 {
                                    trace!("discarding empty chunk");
                                    self.conn.end_body()?;
                                } else {
                                    self.conn.write_body_and_end(chunk);
                                }
                            } else {
                                if chunk.remaining() == 0 {
                                    trace!("discarding empty chunk");
                                    continue;
                                }
                                self.conn.write_body(chunk);
                            }
                        } else if frame.is_trailers() {
                            *clear_body = true;
                            self.conn.write_trailers(
                                frame.into_trailers().unwrap_or_else(|_| unreachable!()),
                            );
                        } else {
                            trace!("discarding unknown frame");
                        }
                    } else {
                        *clear_body = true;
                        self.conn.end_body()?;
                    }
                } else {
                    // If there's no body_rx, end the body
                    if self.conn.can_write_body() {
                        self.conn.end_body()?;
                    } else {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<crate::Result<()>> {
        self.conn.poll_flush(cx).map_err(|err| {
            debug!("error writing: {}", err);
            crate::Error::new_body_write(err)
        })
    }

    fn close(&mut self) {
        self.is_closing = true;
        self.conn.close_read();
        self.conn.close_write();
    }

    /// If there is pending data in `body_rx`, and the connection is still in a body-writing state,
    /// we can make progress writing if the connection is ready.
    fn can_write_again(&mut self) -> bool {
        !self.is_closing && self.body_rx.is_some() && self.conn.can_write_body()
    }

    fn is_done(&self) -> bool {
        if self.is_closing {
            return true;
        }

        let read_done = self.conn.is_read_closed();

        if !T::should_read_first() && read_done {
            // a client that cannot read may was well be done.
            true
        } else {
            let write_done = self.conn.is_write_closed()
                || (!self.dispatch.should_poll() && self.body_rx.is_none());
            read_done && write_done
        }
    }
}

impl<D, Bs, I, T> Future for Dispatcher<D, Bs, I, T>
where
    D: Dispatch<
            PollItem = MessageHead<T::Outgoing>,
            PollBody = Bs,
            RecvItem = MessageHead<T::Incoming>,
            Written = WrittenHead<T::Outgoing>,
        > + Unpin,
    D::PollError: Into<Box<dyn StdError + Send + Sync>>,
    I: Read + Write + Unpin,
    T: Http1Transaction + Unpin,
    Bs: Body + 'static,
    Bs::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = crate::Result<Dispatched>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_catch(cx, true)
    }
}

// ===== impl OptGuard =====

/// A drop guard to allow a mutable borrow of an Option while being able to
/// set whether the `Option` should be cleared on drop.
struct OptGuard<'opt, T>(Pin<&'opt mut Option<T>>, bool);

impl<'opt, T> OptGuard<'opt, T> {
    fn new(pin: Pin<&'opt mut Option<T>>) -> Self {
        OptGuard(pin, false)
    }

    fn guard_mut(&mut self) -> (Option<Pin<&mut T>>, &mut bool) {
        (self.0.as_mut().as_pin_mut(), &mut self.1)
    }
}

impl<T> Drop for OptGuard<'_, T> {
    fn drop(&mut self) {
        if self.1 {
            self.0.set(None);
        }
    }
}

// ===== impl SenderDropGuard =====

/// A drop guard for the body `Sender`.
///
/// If the `Dispatcher` future is dropped (e.g. the runtime driving the
/// connection is shut down) while it still owns a body `Sender`, the guard
/// sends an incomplete-message error so the receiver sees an error instead
/// of a silent, clean end-of-stream.
struct SenderDropGuard(Option<crate::body::Sender>);

impl SenderDropGuard {
    fn none() -> Self {
        SenderDropGuard(None)
    }

    fn set(&mut self, sender: crate::body::Sender) {
        self.0 = Some(sender);
    }

    fn take(&mut self) -> Option<crate::body::Sender> {
        self.0.take()
    }
}

impl Drop for SenderDropGuard {
    fn drop(&mut self) {
        if let Some(mut sender) = self.0.take() {
            sender.send_error(crate::Error::new_incomplete());
        }
    }
}

// ===== impl Server =====

cfg_server! {
    impl<S, B> Server<S, B>
    where
        S: HttpService<B>,
    {
        pub(crate) fn new(service: S) -> Server<S, B> {
            Server {
                in_flight: Box::pin(None),
                service,
            }
        }

        pub(crate) fn into_service(self) -> S {
            self.service
        }
    }

    // Service is never pinned
    impl<S: HttpService<B>, B> Unpin for Server<S, B> {}

    impl<S, Bs> Dispatch for Server<S, IncomingBody>
    where
        S: HttpService<IncomingBody, ResBody = Bs>,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        Bs: Body,
    {
        type PollItem = MessageHead<http::StatusCode>;
        type PollBody = Bs;
        type PollError = S::Error;
        type RecvItem = RequestHead;
        type Written = WrittenHead<http::StatusCode>;

        // (patch) Always inline: out of line, the service's whole response (544 bytes in the
        // queue-proxy) is returned through memory and copied once more.
        #[inline(always)]
        fn poll_msg_into(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            body: &mut Pin<Box<Option<Self::PollBody>>>,
        ) -> Poll<Option<Result<Self::PollItem, Self::PollError>>> {
            let mut this = self.as_mut();
            let Some(fut) = this.in_flight.as_mut().as_pin_mut() else {
                unreachable!("poll_msg shouldn't be called if no inflight");
            };
            let resp = ready!(fut.poll(cx)?);
            let (parts, polled) = resp.into_parts();
            body.set(Some(polled));
            // Since in_flight finished, remove it
            this.in_flight.set(None);
            Poll::Ready(Some(Ok(MessageHead {
                version: parts.version,
                subject: parts.status,
                headers: parts.headers,
                extensions: parts.extensions,
            })))
        }

        fn poll_msg(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<(Self::PollItem, Self::PollBody), Self::PollError>>> {
            let mut this = self.as_mut();
            let ret = if let Some(fut) = &mut this.in_flight.as_mut().as_pin_mut() {
                let resp = ready!(fut.as_mut().poll(cx)?);
                let (parts, body) = resp.into_parts();
                let head = MessageHead {
                    version: parts.version,
                    subject: parts.status,
                    headers: parts.headers,
                    extensions: parts.extensions,
                };
                Poll::Ready(Some(Ok((head, body))))
            } else {
                unreachable!("poll_msg shouldn't be called if no inflight");
            };

            // Since in_flight finished, remove it
            this.in_flight.set(None);
            ret
        }

        fn recv_msg(&mut self, msg: crate::Result<(Self::RecvItem, IncomingBody)>) -> crate::Result<()> {
            let (msg, body) = msg?;
            self.recv_head(msg, body)
        }

        #[inline(always)]
        fn recv_head(&mut self, msg: Self::RecvItem, body: IncomingBody) -> crate::Result<()> {
            let mut req = Request::new(body);
            *req.method_mut() = msg.subject.0;
            *req.uri_mut() = msg.subject.1;
            *req.headers_mut() = msg.headers;
            *req.version_mut() = msg.version;
            *req.extensions_mut() = msg.extensions;
            let fut = self.service.call(req);
            self.in_flight.set(Some(fut));
            Ok(())
        }

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            if self.in_flight.is_some() {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }

        fn should_poll(&self) -> bool {
            self.in_flight.is_some()
        }
    }
}

// ===== impl Client =====

cfg_client! {
    use std::convert::Infallible;

    impl<B> Client<B> {
        pub(crate) fn new(rx: ClientRx<B>) -> Client<B> {
            Client {
                callback: None,
                rx,
                rx_closed: false,
            }
        }
    }

    impl<B> Dispatch for Client<B>
    where
        B: Body,
    {
        type PollItem = RequestHead;
        type PollBody = B;
        type PollError = Infallible;
        type RecvItem = crate::proto::ResponseHead;
        type Written = WrittenHead<crate::proto::RequestLine>;

        fn poll_msg(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<(Self::PollItem, Self::PollBody), Infallible>>> {
            let mut this = self.as_mut();
            debug_assert!(!this.rx_closed);
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some((req, mut cb))) => {
                    // check that future hasn't been canceled already
                    match cb.poll_canceled(cx) {
                        Poll::Ready(()) => {
                            trace!("request canceled");
                            Poll::Ready(None)
                        }
                        Poll::Pending => {
                            let (parts, body) = req.into_parts();
                            let head = RequestHead {
                                version: parts.version,
                                subject: crate::proto::RequestLine(parts.method, parts.uri),
                                headers: parts.headers,
                                extensions: parts.extensions,
                            };
                            this.callback = Some(cb);
                            Poll::Ready(Some(Ok((head, body))))
                        }
                    }
                }
                Poll::Ready(None) => {
                    // user has dropped sender handle
                    trace!("client tx closed");
                    this.rx_closed = true;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            }
        }

        fn recv_msg(&mut self, msg: crate::Result<(Self::RecvItem, IncomingBody)>) -> crate::Result<()> {
            match msg {
                Ok((msg, body)) => {
                    if let Some(cb) = self.callback.take() {
                        let res = msg.into_response(body);
                        cb.send(Ok(res));
                        Ok(())
                    } else {
                        // Getting here is likely a bug! An error should have happened
                        // in Conn::require_empty_read() before ever parsing a
                        // full message!
                        Err(crate::Error::new_unexpected_message())
                    }
                }
                Err(err) => {
                    if let Some(cb) = self.callback.take() {
                        cb.send(Err(TrySendError {
                            error: err,
                            message: None,
                        }));
                        Ok(())
                    } else if !self.rx_closed {
                        self.rx.close();
                        if let Some((req, cb)) = self.rx.try_recv() {
                            trace!("canceling queued request with connection error: {}", err);
                            // in this case, the message was never even started, so it's safe to tell
                            // the user that the request was completely canceled
                            cb.send(Err(TrySendError {
                                error: crate::Error::new_canceled().with(err),
                                message: Some(req),
                            }));
                            Ok(())
                        } else {
                            Err(err)
                        }
                    } else {
                        Err(err)
                    }
                }
            }
        }

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            match &mut self.callback {
                Some(cb) => match cb.poll_canceled(cx) {
                    Poll::Ready(()) => {
                        trace!("callback receiver has dropped");
                        Poll::Ready(Err(()))
                    }
                    Poll::Pending => Poll::Ready(Ok(())),
                },
                None => Poll::Ready(Err(())),
            }
        }

        fn should_poll(&self) -> bool {
            self.callback.is_none()
        }
    }
}

// ===== impl DirectClient =====

cfg_client! {
    /// (patch) The dispatch of a client connection driven by its user (see
    /// `client::conn::http1::DirectConnection`): the request is handed over in place and its
    /// response kept in place, with no channel, no callback and no waker between them. The user
    /// polls the connection after handing a request over; nothing wakes it for one.
    pub(crate) struct DirectClient<B> {
        /// The request to write next.
        pending: Option<Request<B>>,
        /// A request was written and its response is not in yet.
        in_flight: bool,
        /// The response of the request written, or why there is none.
        outcome: Option<Result<http::Response<IncomingBody>, Box<TrySendError<Request<B>>>>>,
        /// The last poll asked for a request and found none (`SendRequest::is_ready`'s sense).
        wanting: bool,
        /// The user will send nothing more: the connection ends once idle.
        closed: bool,
        /// The body of the request handed over, when it had ended before the request was
        /// written (no body at all, or an empty one): kept with [`Self::sent`] until the
        /// response is in.
        ended_body: Option<B>,
        /// What the connection left of the request written with an ended body: its line,
        /// version and extensions (its headers stay in the connection's cached map until the
        /// response is parsed). From these and `ended_body` a request the connection fails to
        /// answer is rebuilt, to be sent again on another connection when the user sees fit.
        sent: Option<WrittenHead<crate::proto::RequestLine>>,
        /// That rebuilt request (see `DirectConnection::take_unanswered`). Boxed: rare.
        unanswered: Option<Box<Request<B>>>,
    }

    impl<B> Unpin for DirectClient<B> {}

    impl<B> DirectClient<B> {
        pub(crate) fn new() -> Self {
            DirectClient {
                pending: None,
                in_flight: false,
                outcome: None,
                // A new connection takes its first request at once.
                wanting: true,
                closed: false,
                ended_body: None,
                sent: None,
                unanswered: None,
            }
        }

        /// The request written last, rebuilt, when the connection failed with nothing of its
        /// response read and the request had no body (see [`Self::sent`]).
        pub(crate) fn take_unanswered(&mut self) -> Option<Box<Request<B>>> {
            self.unanswered.take()
        }

        /// The response came (or the exchange failed otherwise): what was kept of the request
        /// is dropped.
        #[inline]
        fn forget_sent(&mut self) {
            self.sent = None;
            self.ended_body = None;
        }

        /// Takes `request` to be written at the next poll; hands it back when the connection is
        /// not ready for one (see [`Self::is_ready`]).
        pub(crate) fn send(&mut self, request: Request<B>) -> Result<(), Request<B>> {
            if !self.is_ready() {
                return Err(request);
            }
            self.wanting = false;
            self.pending = Some(request);
            Ok(())
        }

        /// Whether the connection asked for a request since the last one (as
        /// `SendRequest::is_ready`), with nothing waiting and nothing in flight.
        pub(crate) fn is_ready(&self) -> bool {
            self.wanting
                && !self.closed
                && self.pending.is_none()
                && !self.in_flight
                && self.outcome.is_none()
        }

        pub(crate) fn take_outcome(
            &mut self,
        ) -> Option<Result<http::Response<IncomingBody>, Box<TrySendError<Request<B>>>>> {
            self.outcome.take()
        }

        /// The connection ended: the outcome of the request handed over, if there is one. A
        /// request never written comes back in the error, as a queued one does from `Client`
        /// (its envelope's drop); one in flight without a response is incomplete.
        pub(crate) fn end(
            &mut self,
        ) -> Option<Result<http::Response<IncomingBody>, Box<TrySendError<Request<B>>>>> {
            self.wanting = false;
            self.closed = true;
            if let Some(outcome) = self.outcome.take() {
                return Some(outcome);
            }
            if let Some(req) = self.pending.take() {
                return Some(Err(Box::new(TrySendError {
                    error: crate::Error::new_canceled().with("connection closed"),
                    message: Some(req),
                })));
            }
            if std::mem::take(&mut self.in_flight) {
                return Some(Err(Box::new(TrySendError {
                    error: crate::Error::new_incomplete(),
                    message: None,
                })));
            }
            None
        }

        pub(crate) fn close(&mut self) {
            self.closed = true;
            self.wanting = false;
        }
    }

    impl<B> Dispatch for DirectClient<B>
    where
        B: Body,
    {
        type PollItem = RequestHead;
        type PollBody = B;
        type PollError = Infallible;
        type RecvItem = crate::proto::ResponseHead;
        type Written = WrittenHead<crate::proto::RequestLine>;

        /// (patch) The body goes into its slot and the head is built in the return value: through
        /// `poll_msg`'s tuple the head was moved three more times.
        #[inline(always)]
        fn poll_msg_into(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            body: &mut Pin<Box<Option<Self::PollBody>>>,
        ) -> Poll<Option<Result<Self::PollItem, Self::PollError>>> {
            let this = self.get_mut();
            match this.pending.take() {
                Some(req) => {
                    let (parts, polled) = req.into_parts();
                    if polled.is_end_stream() {
                        // Not polled: written as no body (see `Dispatcher::poll_write`), and
                        // kept in case the request must be rebuilt.
                        this.ended_body = Some(polled);
                    } else {
                        body.set(Some(polled));
                    }
                    this.in_flight = true;
                    Poll::Ready(Some(Ok(RequestHead {
                        version: parts.version,
                        subject: crate::proto::RequestLine(parts.method, parts.uri),
                        headers: parts.headers,
                        extensions: parts.extensions,
                    })))
                }
                None if this.closed => Poll::Ready(None),
                None => {
                    this.wanting = true;
                    Poll::Pending
                }
            }
        }

        fn poll_msg(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<(Self::PollItem, Self::PollBody), Infallible>>> {
            let this = self.as_mut().get_mut();
            match this.pending.take() {
                Some(req) => {
                    let (parts, body) = req.into_parts();
                    let head = RequestHead {
                        version: parts.version,
                        subject: crate::proto::RequestLine(parts.method, parts.uri),
                        headers: parts.headers,
                        extensions: parts.extensions,
                    };
                    this.in_flight = true;
                    Poll::Ready(Some(Ok((head, body))))
                }
                None if this.closed => Poll::Ready(None),
                None => {
                    this.wanting = true;
                    Poll::Pending
                }
            }
        }

        fn recv_msg(
            &mut self,
            msg: crate::Result<(Self::RecvItem, IncomingBody)>,
        ) -> crate::Result<()> {
            match msg {
                Ok((msg, body)) => {
                    if self.in_flight {
                        self.in_flight = false;
                        self.forget_sent();
                        self.outcome = Some(Ok(msg.into_response(body)));
                        Ok(())
                    } else {
                        // As `Client`: a response with no request is refused earlier.
                        Err(crate::Error::new_unexpected_message())
                    }
                }
                Err(err) => {
                    if self.in_flight {
                        self.in_flight = false;
                        self.forget_sent();
                        self.outcome = Some(Err(Box::new(TrySendError {
                            error: err,
                            message: None,
                        })));
                        Ok(())
                    } else if let Some(req) = self.pending.take() {
                        // Never started: safe to hand back, as `Client` does with a queued one.
                        self.outcome = Some(Err(Box::new(TrySendError {
                            error: crate::Error::new_canceled().with(err),
                            message: Some(req),
                        })));
                        Ok(())
                    } else {
                        Err(err)
                    }
                }
            }
        }

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            if self.in_flight {
                Poll::Ready(Ok(()))
            } else {
                Poll::Ready(Err(()))
            }
        }

        fn should_poll(&self) -> bool {
            !self.in_flight
        }

        #[inline]
        fn written(&mut self, head: Self::Written) {
            if self.ended_body.is_some() {
                self.sent = Some(head);
            }
        }

        fn unanswered(&mut self, headers: http::HeaderMap) {
            let (Some(sent), Some(body)) = (self.sent.take(), self.ended_body.take()) else {
                return;
            };
            let mut request = Request::new(body);
            *request.method_mut() = sent.subject.0;
            *request.uri_mut() = sent.subject.1;
            *request.version_mut() = sent.version;
            *request.headers_mut() = headers;
            *request.extensions_mut() = sent.extensions;
            self.unanswered = Some(Box::new(request));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::io::Compat;
    use crate::proto::h1::ClientTransaction;
    use std::time::Duration;

    #[test]
    fn client_read_bytes_before_writing_request() {
        let _ = pretty_env_logger::try_init();

        tokio_test::task::spawn(()).enter(|cx, _| {
            let (io, mut handle) = tokio_test::io::Builder::new().build_with_handle();

            // Block at 0 for now, but we will release this response before
            // the request is ready to write later...
            let (mut tx, rx) = crate::client::dispatch::channel();
            let conn = Conn::<_, bytes::Bytes, ClientTransaction>::new(Compat::new(io));
            let mut dispatcher = Dispatcher::new(Client::new(rx), conn);

            // First poll is needed to allow tx to send...
            assert!(Pin::new(&mut dispatcher).poll(cx).is_pending());

            // Unblock our IO, which has a response before we've sent request!
            //
            handle.read(b"HTTP/1.1 200 OK\r\n\r\n");

            let mut res_rx = tx
                .try_send(crate::Request::new(IncomingBody::empty()))
                .unwrap();

            tokio_test::assert_ready_ok!(Pin::new(&mut dispatcher).poll(cx));
            let err = tokio_test::assert_ready_ok!(Pin::new(&mut res_rx).poll(cx))
                .expect_err("callback should send error");

            match (err.error.is_canceled(), err.message.as_ref()) {
                (true, Some(_)) => (),
                _ => panic!("expected Canceled, got {:?}", err),
            }
        });
    }

    /// (patch) A response body read with its head is handed over whole, without a channel; one
    /// that arrives later streams through the channel as before. Both give the same bytes,
    /// and the connection serves the next request after each.
    #[cfg(not(miri))]
    #[tokio::test]
    async fn client_body_read_with_its_head_comes_whole() {
        use http_body::Body as _;
        use http_body_util::BodyExt;

        let (io, _handle) = tokio_test::io::Builder::new()
            .write(b"GET /a HTTP/1.1\r\n\r\n")
            .read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            .write(b"GET /b HTTP/1.1\r\n\r\n")
            .read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe")
            .read(b"llo")
            .write(b"GET /c HTTP/1.1\r\n\r\n")
            .read(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .build_with_handle();
        let (mut tx, rx) = crate::client::dispatch::channel();
        let conn = Conn::<_, bytes::Bytes, ClientTransaction>::new(Compat::new(io));
        let dispatcher = Dispatcher::new(Client::new(rx), conn);
        let _dispatcher = tokio::spawn(dispatcher);

        let get = |path: &str| {
            crate::Request::builder()
                .uri(path)
                .body(IncomingBody::empty())
                .unwrap()
        };
        for (path, whole) in [("/a", true), ("/b", false)] {
            futures_util::future::poll_fn(|cx| tx.poll_ready(cx))
                .await
                .expect("connection ready");
            let Ok(Ok(res)) = tx.try_send(get(path)).unwrap().await else {
                panic!("no response to {path}");
            };
            let body = res.into_body();
            assert_eq!(body.is_full(), whole, "{path}");
            assert_eq!(body.size_hint().exact(), Some(5), "{path}");
            assert!(!body.is_end_stream());
            let bytes = body.collect().await.expect("body").to_bytes();
            assert_eq!(&bytes[..], b"hello", "{path}");
        }
        futures_util::future::poll_fn(|cx| tx.poll_ready(cx))
            .await
            .expect("connection ready");
        let Ok(Ok(res)) = tx.try_send(get("/c")).unwrap().await else {
            panic!("no response to /c");
        };
        assert!(res.into_body().is_end_stream());
    }

    #[cfg(not(miri))]
    #[tokio::test]
    async fn client_flushing_is_not_ready_for_next_request() {
        let _ = pretty_env_logger::try_init();

        let (io, _handle) = tokio_test::io::Builder::new()
            .write(b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\n")
            .read(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .wait(std::time::Duration::from_secs(2))
            .build_with_handle();

        let (mut tx, rx) = crate::client::dispatch::channel();
        let mut conn = Conn::<_, bytes::Bytes, ClientTransaction>::new(Compat::new(io));
        conn.set_write_strategy_queue();

        let dispatcher = Dispatcher::new(Client::new(rx), conn);
        let _dispatcher = tokio::spawn(async move { dispatcher.await });

        let body = {
            let (mut tx, body) = IncomingBody::new_channel(DecodedLength::new(4), false);
            tx.try_send_data("reee".into()).unwrap();
            body
        };

        let req = crate::Request::builder().method("POST").body(body).unwrap();

        let res = tx.try_send(req).unwrap().await.expect("response");
        drop(res);

        assert!(!tx.is_ready());
    }

    #[cfg(not(miri))]
    #[tokio::test]
    async fn body_empty_chunks_ignored() {
        let _ = pretty_env_logger::try_init();

        let io = tokio_test::io::Builder::new()
            // no reading or writing, just be blocked for the test...
            .wait(Duration::from_secs(5))
            .build();

        let (mut tx, rx) = crate::client::dispatch::channel();
        let conn = Conn::<_, bytes::Bytes, ClientTransaction>::new(Compat::new(io));
        let mut dispatcher = tokio_test::task::spawn(Dispatcher::new(Client::new(rx), conn));

        // First poll is needed to allow tx to send...
        assert!(dispatcher.poll().is_pending());

        let body = {
            let (mut tx, body) = IncomingBody::channel();
            tx.try_send_data("".into()).unwrap();
            body
        };

        let _res_rx = tx.try_send(crate::Request::new(body)).unwrap();

        // Ensure conn.write_body wasn't called with the empty chunk.
        // If it is, it will trigger an assertion.
        assert!(dispatcher.poll().is_pending());
    }
}
