//! A pooled HTTP/1.1 client connection driven by the task that uses it.
//!
//! hyper's usual client connection is a future run as a task of its own, fed through a channel:
//! every exchange then crosses tasks twice (the request through the dispatch channel to the
//! connection's task, a wake-up and a poll of that task; the response back through a one-shot
//! channel, another wake-up and a poll of the request's task), with a channel slot and a
//! one-shot allocated per request. Our hyper carries a connection its user drives
//! (`hyper::client::conn::http1::DirectConnection`, see docs/supply-chain.md): the request is
//! handed over in place, the request's own task polls the connection while it waits for the
//! response head and while it reads the body, and the response is taken in place. The socket's
//! readiness wakes that task directly, and the connection is idle again (ready for the next
//! request) by the time the response is complete.
//!
//! The connection is polled with a waker of its own ([`ConnWake`]), never with the task's: a
//! wake-up inside the connection (the socket, a body) during a poll made by the task itself
//! only marks the connection as notified, and the poll loop looks again instead of scheduling
//! the running task once more. Between polls the waker forwards to the task that polled last,
//! until that task lets the connection go (back to the pool, where nothing is registered and
//! nothing is woken: an idle connection is looked at when it is next used; one the app closed
//! meanwhile hands the request back unwritten, the keep-alive race the proxy already retries).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, DirectConnection};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::parked::ParkableStream;
use super::pool::UpstreamRequestBody;
use crate::informational::Sniff;

/// The IO of a plain-text pooled connection.
pub(super) type PlainIo = TokioIo<Sniff<ParkableStream>>;

/// The IO of a TLS pooled connection (the activator's system-internal TLS).
pub(super) type TlsIo = TokioIo<Sniff<tokio_rustls::client::TlsStream<TcpStream>>>;

/// A request for the upstream.
type UpstreamRequest = http::Request<UpstreamRequestBody>;

/// What an exchange on a connection gives: the response, or why there is none (with the
/// request when none of it was written).
pub type Exchanged = Result<http::Response<Incoming>, Box<TrySendError<UpstreamRequest>>>;

/// Polls in a row before a poll that keeps being notified yields to other tasks.
const POLLS_BEFORE_YIELD: usize = 32;

/// The connection's waker: records that the connection was notified and wakes the task that
/// polled it last, if that task still holds it.
#[derive(Default)]
struct ConnWake {
    task: AtomicWaker,
    notified: AtomicBool,
}

impl Wake for ConnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notified.store(true, Ordering::SeqCst);
        self.task.wake();
    }
}

/// hyper's connection over either kind of IO. The TLS one is boxed: its state is about 1 KiB
/// larger, and every plain-text connection would carry that room.
#[allow(clippy::large_enum_variant)] // Kept whole in a box (`DrivenConn`); plain text is the rule.
pub(super) enum Direct {
    Plain(DirectConnection<PlainIo, UpstreamRequestBody>),
    Tls(Box<DirectConnection<TlsIo, UpstreamRequestBody>>),
}

/// One method over both kinds of [`Direct`] connection.
macro_rules! direct {
    ($direct:expr, $conn:ident => $body:expr) => {
        match $direct {
            Direct::Plain($conn) => $body,
            Direct::Tls($conn) => $body,
        }
    };
}

/// An HTTP/1.1 client connection polled by its user (see the module documentation).
pub(super) struct DrivenConn {
    conn: Direct,
    /// hyper's connection has ended (it is not polled again).
    ended: bool,
    wake: Arc<ConnWake>,
    /// `wake` as a [`Waker`], made once.
    waker: Waker,
}

impl DrivenConn {
    fn new(conn: Direct) -> Box<Self> {
        let wake = Arc::new(ConnWake::default());
        let waker = Waker::from(Arc::clone(&wake));
        Box::new(DrivenConn {
            conn,
            ended: false,
            wake,
            waker,
        })
    }

    /// A plain-text connection over `io`, made by `builder`.
    pub(super) fn plain(builder: &http1::Builder, io: PlainIo) -> Box<Self> {
        Self::new(Direct::Plain(builder.direct(io)))
    }

    /// A TLS connection over `io`, made by `builder`.
    pub(super) fn tls(builder: &http1::Builder, io: TlsIo) -> Box<Self> {
        Self::new(Direct::Tls(Box::new(builder.direct(io))))
    }

    /// Hands `request` over, to be written by the next poll ([`Self::poll_response`]); gives it
    /// back when the connection cannot take it.
    #[inline]
    #[allow(clippy::result_large_err)] // The request itself comes back, as from hyper.
    pub(super) fn send(&mut self, request: UpstreamRequest) -> Result<(), UpstreamRequest> {
        if self.ended {
            return Err(request);
        }
        direct!(&mut self.conn, conn => conn.send(request))
    }

    /// Whether the connection is ready for a request.
    #[inline]
    pub(super) fn is_ready(&self) -> bool {
        !self.ended && direct!(&self.conn, conn => conn.is_ready())
    }

    /// Whether hyper's connection has ended (closed, failed, or upgraded).
    #[inline]
    pub(super) fn has_ended(&self) -> bool {
        self.ended
    }

    /// Drives the connection until the response to the request handed over is in, or the
    /// connection failed to give one.
    #[inline]
    pub(super) fn poll_response(&mut self, cx: &mut Context<'_>) -> Poll<Exchanged> {
        self.poll_with(
            cx,
            |conn, _, _| match direct!(conn, c => c.take_response()) {
                Some(exchanged) => Poll::Ready(exchanged),
                None => Poll::Pending,
            },
        )
    }

    /// The request written last, rebuilt, when the connection failed before a byte of its
    /// response was read and the request had no body (hyper's `take_unanswered`).
    pub(super) fn take_unanswered(&mut self) -> Option<Box<UpstreamRequest>> {
        direct!(&mut self.conn, conn => conn.take_unanswered())
    }

    /// A context with the connection's waker, for polling what the connection feeds without
    /// driving it (see [`Self::poll_with`]).
    #[inline]
    pub(super) fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }

    /// Drives the connection and then `step` (something the connection feeds: the response,
    /// a body), both with the connection's waker, until `step` is ready; while it is not, the
    /// task of `cx` is woken by whatever the connection waits on. `step` also sees whether the
    /// connection has ended; once it has, only `step` is polled.
    #[inline]
    pub(super) fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Direct, &mut Context<'_>, bool) -> Poll<T>,
    ) -> Poll<T> {
        // Wake-ups during this poll must not schedule the running task again.
        drop(self.wake.task.take());
        for _ in 0..POLLS_BEFORE_YIELD {
            self.wake.notified.store(false, Ordering::SeqCst);
            let mut conn_cx = Context::from_waker(&self.waker);
            if !self.ended {
                let polled = direct!(&mut self.conn, conn => Pin::new(conn).poll(&mut conn_cx));
                if let Poll::Ready(end) = polled {
                    if let Err(error) = end {
                        tracing::debug!(%error, "upstream connection ended");
                    }
                    self.ended = true;
                }
            }
            if let Poll::Ready(done) = step(&mut self.conn, &mut conn_cx, self.ended) {
                return Poll::Ready(done);
            }
            // Once the connection has ended, `step` alone is polled again (it waits on
            // something else, such as a body whose end the connection already sent).
            self.wake.task.register(cx.waker());
            // A wake-up that came before the registration found no task: look again.
            if !self.wake.notified.swap(false, Ordering::SeqCst) {
                return Poll::Pending;
            }
            drop(self.wake.task.take());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Forgets the task that polled last (the connection goes idle or to another task).
    #[inline]
    pub(super) fn release(&self) {
        drop(self.wake.task.take());
    }

    /// Polls the connection until it is ready for another request; `false` when it ended first.
    pub(super) async fn settle(&mut self) -> bool {
        let ready = poll_fn(|cx| {
            self.poll_with(cx, |conn, _, ended| {
                if ended {
                    Poll::Ready(false)
                } else if direct!(conn, c => c.is_ready()) {
                    Poll::Ready(true)
                } else {
                    Poll::Pending
                }
            })
        })
        .await;
        self.release();
        ready
    }

    /// Ends the connection: hyper finishes what is in flight (a pending upgrade then takes the
    /// IO), shuts an idle connection down (a parked one hands its socket over on the way) and
    /// stops.
    pub(super) async fn finish(mut self: Box<Self>) {
        direct!(&mut self.conn, conn => conn.close());
        poll_fn(|cx| {
            self.poll_with(cx, |_, _, ended| {
                if ended {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::parked::ParkSlot;
    use std::task::Waker;

    /// A connection to a peer that closed at once, polled until hyper's connection has ended.
    async fn ended_conn() -> Box<DrivenConn> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stream, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        drop(accepted.unwrap());
        let slot = ParkSlot::new(Default::default());
        let io = Sniff::new(
            ParkableStream::new(stream.unwrap(), slot),
            Default::default(),
        );
        let mut conn = DrivenConn::plain(&http1::Builder::new(), TokioIo::new(io));
        let until_ended = poll_fn(|cx| {
            conn.poll_with(cx, |_, _, ended| {
                if ended {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), until_ended)
            .await
            .expect("the peer closed: the connection ends");
        assert!(conn.has_ended());
        conn
    }

    /// A wake-up that reaches the connection's waker while `step` is polled, after hyper's
    /// connection ended, makes `poll_with` look again rather than wait for a wake-up that
    /// already happened.
    #[tokio::test]
    async fn a_wake_during_the_step_after_the_end_is_not_lost() {
        let mut conn = ended_conn().await;
        let mut steps = 0;
        let mut cx = Context::from_waker(Waker::noop());
        let polled = conn.poll_with(&mut cx, |_, conn_cx, ended| {
            assert!(ended);
            steps += 1;
            if steps == 1 {
                // What a body's sender does from another thread between the poll and the
                // task's registration.
                conn_cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        assert_eq!(polled, Poll::Ready(()));
        assert_eq!(steps, 2);
    }

    /// Without a wake-up, an ended connection's step that is not ready leaves the task
    /// registered, so that a later wake-up reaches it.
    #[tokio::test]
    async fn a_later_wake_after_the_end_reaches_the_task() {
        let mut conn = ended_conn().await;
        let woken = Arc::new(Flag::default());
        let waker = Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        let mut step_waker = None;
        let polled = conn.poll_with(&mut cx, |_, conn_cx, _| {
            step_waker = Some(conn_cx.waker().clone());
            Poll::<()>::Pending
        });
        assert_eq!(polled, Poll::Pending);
        assert!(!woken.0.load(Ordering::SeqCst));
        step_waker.unwrap().wake();
        assert!(woken.0.load(Ordering::SeqCst));
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
