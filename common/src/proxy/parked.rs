//! Idle pooled HTTP/1.1 client connections parked outside hyper.
//!
//! A hyper HTTP/1 client connection holds its read and write buffers (8–16 KiB) and dispatcher
//! state for its whole life. A plain-text connection that has waited in the pool for
//! [`PARK_DELAY`] is parked: the pool's sweeper drops its `SendRequest` (hyper then ends the
//! idle connection cleanly), the socket wrapper ([`ParkableStream`]) hands the socket over
//! instead of shutting it down, and hyper's connection with its buffers is freed. Only the
//! socket, a small [`ParkSlot`] and a watcher task stay. When the pool hands the connection out
//! again, a new hyper client connection is set up over the same socket: no new TCP connection,
//! no byte on the wire.
//!
//! While parked, the watcher waits for the socket to become readable, without a buffer. An idle
//! HTTP/1.1 client connection has nothing to read: end of stream (the app closed it), an error,
//! or bytes the app sent unasked all close it, as Go's transport closes such a connection, and
//! the pool skips it. It also closes the connection when its idle time ([`super::pool::IDLE_TIMEOUT`])
//! is over.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a pooled connection waits idle before it is parked. Requests closer together than
/// this on a connection never pay for parking; idle pools shrink within about a second.
pub const PARK_DELAY: Duration = Duration::from_secs(1);

/// Parked connections of one pool, counted (for tests and diagnostics).
pub type ParkedCount = Arc<AtomicUsize>;

/// What a pooled plain-text connection's socket wrapper, the pool and the watcher share.
#[derive(Debug)]
pub(super) struct ParkSlot {
    /// The sweeper asked to park: the socket shutdown hyper does at the end hands the socket
    /// over instead.
    requested: AtomicBool,
    parked: Mutex<Parked>,
    count: ParkedCount,
}

#[derive(Debug, Default)]
struct Parked {
    /// The parked socket.
    stream: Option<TcpStream>,
    /// When the parked connection's idle time ends.
    deadline: Option<Instant>,
    /// The watcher, woken when a checkout takes the socket.
    waker: Option<Waker>,
    /// The pool let go of this connection before its socket arrived: close it on arrival.
    abandoned: bool,
}

impl ParkSlot {
    pub(super) fn new(count: ParkedCount) -> Arc<Self> {
        Arc::new(ParkSlot {
            requested: AtomicBool::new(false),
            parked: Mutex::new(Parked::default()),
            count,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next end of the hyper connection parks its socket, to be closed at `deadline`
    /// unless taken before. Call only while hyper's connection is idle, just before dropping
    /// its `SendRequest`.
    pub(super) fn request(&self, deadline: Instant) {
        self.lock().deadline = Some(deadline);
        self.requested.store(true, Ordering::Release);
    }

    /// The parked socket, for a new hyper connection; `None` when it was closed (by the app,
    /// an error or the idle time) or has not arrived, and then the pool forgets the connection.
    pub(super) fn take(&self) -> Option<TcpStream> {
        let mut parked = self.lock();
        let stream = parked.stream.take();
        match &stream {
            Some(_) => {
                self.count.fetch_sub(1, Ordering::Relaxed);
                self.requested.store(false, Ordering::Relaxed);
                if let Some(waker) = parked.waker.take() {
                    waker.wake();
                }
            }
            None => parked.abandoned = true,
        }
        stream
    }

    /// Closes a parked socket that the pool drops.
    pub(super) fn close(&self) {
        drop(self.take());
    }

    /// Called by [`ParkableStream::poll_shutdown`]: keeps `stream` if parking was asked for.
    fn deliver(&self, stream: TcpStream) -> Result<(), TcpStream> {
        if !self.requested.load(Ordering::Acquire) {
            return Err(stream);
        }
        let mut parked = self.lock();
        if parked.abandoned {
            return Err(stream);
        }
        parked.stream = Some(stream);
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether a socket waits here (the connection task starts the watcher then).
    pub(super) fn holds_socket(&self) -> bool {
        self.lock().stream.is_some()
    }
}

/// Waits on a parked socket until a checkout takes it, or closes it when it becomes readable
/// (end of stream, an error or unasked bytes) or its idle time ends.
pub(super) async fn watch(slot: Arc<ParkSlot>) {
    let Some(deadline) = slot.lock().deadline else {
        return;
    };
    let mut expire = std::pin::pin!(tokio::time::sleep_until(deadline));
    poll_fn(|cx| {
        let mut parked = slot.lock();
        let Some(stream) = parked.stream.as_ref() else {
            // Taken by a checkout (or closed by the pool).
            return Poll::Ready(());
        };
        if expire.as_mut().poll(cx).is_ready() {
            return close_locked(&slot, &mut parked);
        }
        loop {
            match stream.poll_read_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(())) => match stream.try_read(&mut [0u8; 1]) {
                    // Readiness left over from hyper's last read: wait again.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    // End of stream, an error, or bytes nobody asked for.
                    _ => return close_locked(&slot, &mut parked),
                },
                Poll::Ready(Err(_)) => return close_locked(&slot, &mut parked),
            }
        }
        if !parked
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            parked.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await;
}

fn close_locked(slot: &ParkSlot, parked: &mut Parked) -> Poll<()> {
    if parked.stream.take().is_some() {
        slot.count.fetch_sub(1, Ordering::Relaxed);
    }
    parked.waker = None;
    Poll::Ready(())
}

/// A pooled plain-text connection's socket as hyper sees it: hyper's shutdown at the end of a
/// connection that the pool parks hands the socket to the [`ParkSlot`] instead.
#[derive(Debug)]
pub(super) struct ParkableStream {
    stream: Option<TcpStream>,
    slot: Arc<ParkSlot>,
}

impl ParkableStream {
    pub(super) fn new(stream: TcpStream, slot: Arc<ParkSlot>) -> Self {
        ParkableStream {
            stream: Some(stream),
            slot,
        }
    }

    #[inline]
    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.stream.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl AsyncRead for ParkableStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for ParkableStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        true
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.take() else {
            return Poll::Ready(Ok(()));
        };
        match this.slot.deliver(stream) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(stream) => {
                let stream = this.stream.insert(stream);
                Pin::new(stream).poll_shutdown(cx)
            }
        }
    }
}
