use std::cmp;
use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use crate::rt::{Read, ReadBuf, Write};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_core::ready;

use super::{Http1Transaction, ParseContext, ParsedMessage};
use crate::common::buf::BufList;

/// The initial buffer size allocated before trying to read from IO.
pub(crate) const INIT_BUFFER_SIZE: usize = 8192;

/// The minimum value that can be set to max buffer size.
pub(crate) const MINIMUM_MAX_BUFFER_SIZE: usize = INIT_BUFFER_SIZE;

/// The default maximum read buffer size. If the buffer gets this big and
/// a message is still not complete, a `TooLarge` error is triggered.
// Note: if this changes, update server::conn::Http::max_buf_size docs.
pub(crate) const DEFAULT_MAX_BUFFER_SIZE: usize = 8192 + 4096 * 100;

/// The maximum number of distinct `Buf`s to hold in a list before requiring
/// a flush. Only affects when the buffer strategy is to queue buffers.
///
/// Note that a flush can happen before reaching the maximum. This simply
/// forces a flush if the queue gets this big.
const MAX_BUF_LIST_BUFFERS: usize = 16;

pub(crate) struct Buffered<T, B> {
    flush_pipeline: bool,
    io: T,
    partial_len: Option<usize>,
    read_blocked: bool,
    /// (patch) A read of the transport returned `Pending` during the current poll of the
    /// connection (see `start_poll`).
    read_pending_in_poll: bool,
    /// (patch) The waker the transport is read with, when `enable_read_wake` set one up, and
    /// what it shares with it.
    read_wake: Option<(Arc<ReadWake>, Waker)>,
    /// (patch) The last read of the transport returned `Pending` (with `read_wake`'s waker).
    read_armed: bool,
    read_buf: BytesMut,
    read_buf_strategy: ReadStrategy,
    write_buf: WriteBuf<B>,
}

impl<T, B> fmt::Debug for Buffered<T, B>
where
    B: Buf,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffered")
            .field("read_buf", &self.read_buf)
            .field("write_buf", &self.write_buf)
            .finish_non_exhaustive()
    }
}

impl<T, B> Buffered<T, B>
where
    T: Read + Write + Unpin,
    B: Buf,
{
    pub(crate) fn new(io: T) -> Buffered<T, B> {
        let strategy = if io.is_write_vectored() {
            WriteStrategy::Queue
        } else {
            WriteStrategy::Flatten
        };
        let write_buf = WriteBuf::new(strategy);
        Buffered {
            flush_pipeline: false,
            io,
            partial_len: None,
            read_blocked: false,
            read_pending_in_poll: false,
            read_wake: None,
            read_armed: false,
            read_buf: BytesMut::with_capacity(0),
            read_buf_strategy: ReadStrategy::default(),
            write_buf,
        }
    }

    #[cfg(feature = "server")]
    pub(crate) fn set_flush_pipeline(&mut self, enabled: bool) {
        debug_assert!(!self.write_buf.has_remaining());
        self.flush_pipeline = enabled;
        if enabled {
            self.set_write_strategy_flatten();
        }
    }

    pub(crate) fn set_max_buf_size(&mut self, max: usize) {
        assert!(
            max >= MINIMUM_MAX_BUFFER_SIZE,
            "The max_buf_size cannot be smaller than {MINIMUM_MAX_BUFFER_SIZE}.",
        );
        self.read_buf_strategy = ReadStrategy::with_max(max);
        self.write_buf.max_buf_size = max;
    }

    #[cfg(feature = "client")]
    pub(crate) fn set_read_buf_exact_size(&mut self, sz: usize) {
        self.read_buf_strategy = ReadStrategy::Exact(sz);
    }

    pub(crate) fn set_write_strategy_flatten(&mut self) {
        // this should always be called only at construction time,
        // so this assert is here to catch myself
        debug_assert_eq!(self.write_buf.queue.bufs_cnt(), 0);
        self.write_buf.set_strategy(WriteStrategy::Flatten);
    }

    pub(crate) fn set_write_strategy_queue(&mut self) {
        // this should always be called only at construction time,
        // so this assert is here to catch myself
        debug_assert_eq!(self.write_buf.queue.bufs_cnt(), 0);
        self.write_buf.set_strategy(WriteStrategy::Queue);
    }

    /// (patch) The first `len` bytes read and not yet parsed (`len` at most as many as are).
    pub(crate) fn split_read_buf(&mut self, len: usize) -> Bytes {
        self.read_buf.split_to(len).freeze()
    }

    pub(crate) fn read_buf(&self) -> &[u8] {
        self.read_buf.as_ref()
    }

    #[cfg(test)]
    #[cfg(feature = "nightly")]
    pub(super) fn read_buf_mut(&mut self) -> &mut BytesMut {
        &mut self.read_buf
    }

    /// Return whether we can append to the headers buffer.
    ///
    /// Reasons we can't:
    /// - The write buf is in queue mode, and some of the past body is still
    ///   needing to be flushed.
    pub(crate) fn can_headers_buf(&self) -> bool {
        !self.write_buf.queue.has_remaining()
    }

    pub(crate) fn headers_buf(&mut self) -> &mut Vec<u8> {
        let buf = self.write_buf.headers_mut();
        &mut buf.bytes
    }

    pub(super) fn write_buf(&mut self) -> &mut WriteBuf<B> {
        &mut self.write_buf
    }

    pub(crate) fn buffer<BB: Buf + Into<B>>(&mut self, buf: BB) {
        self.write_buf.buffer(buf);
    }

    /// Whether there are bytes waiting in the write buffer to be flushed.
    pub(crate) fn has_buffered_write(&self) -> bool {
        self.write_buf.remaining() > 0
    }

    pub(crate) fn can_buffer(&self) -> bool {
        self.flush_pipeline || self.write_buf.can_buffer()
    }

    pub(crate) fn consume_leading_lines(&mut self) {
        if !self.read_buf.is_empty() {
            let mut i = 0;
            while i < self.read_buf.len() {
                match self.read_buf[i] {
                    b'\r' | b'\n' => i += 1,
                    _ => break,
                }
            }
            self.read_buf.advance(i);
        }
    }

    pub(super) fn parse<S>(
        &mut self,
        cx: &mut Context<'_>,
        parse_ctx: ParseContext<'_>,
    ) -> Poll<crate::Result<ParsedMessage<S::Incoming>>>
    where
        S: Http1Transaction,
    {
        loop {
            // (patch) Matched, not `?`: the `?` moved the parsed head once more.
            let parsed = super::role::parse_headers::<S>(
                &mut self.read_buf,
                self.partial_len,
                ParseContext {
                    cached_headers: parse_ctx.cached_headers,
                    req_method: parse_ctx.req_method,
                    h1_parser_config: parse_ctx.h1_parser_config.clone(),
                    h1_max_headers: parse_ctx.h1_max_headers,
                    h1_max_header_size: parse_ctx.h1_max_header_size,
                    preserve_header_case: parse_ctx.preserve_header_case,
                    #[cfg(feature = "ffi")]
                    preserve_header_order: parse_ctx.preserve_header_order,
                    h09_responses: parse_ctx.h09_responses,
                    #[cfg(feature = "client")]
                    on_informational: parse_ctx.on_informational,
                },
            );
            match parsed {
                Ok(Some(msg)) => {
                    debug!("parsed {} headers", msg.head.headers.len());
                    self.partial_len = None;
                    return Poll::Ready(Ok(msg));
                }
                Err(error) => return Poll::Ready(Err(error.into())),
                Ok(None) => {
                    let curr_len = self.read_buf.len();
                    if let Some(max_header_size) = parse_ctx.h1_max_header_size {
                        if curr_len >= max_header_size {
                            debug!("max_header_size ({}) reached, closing", max_header_size);
                            return Poll::Ready(Err(crate::Error::new_too_large()));
                        }
                    }
                    let max = self.read_buf_strategy.max();
                    if curr_len >= max {
                        debug!("max_buf_size ({}) reached, closing", max);
                        return Poll::Ready(Err(crate::Error::new_too_large()));
                    }
                    if curr_len > 0 {
                        trace!("partial headers; {} bytes so far", curr_len);
                        self.partial_len = Some(curr_len);
                    } else {
                        // 1xx gobled some bytes
                        self.partial_len = None;
                    }
                }
            }
            if ready!(self.poll_read_from_io(cx)).map_err(crate::Error::new_io)? == 0 {
                trace!("parse eof");
                return Poll::Ready(Err(crate::Error::new_incomplete()));
            }
        }
    }

    /// (patch) A new poll of the connection begins (with a new `Context`).
    ///
    /// Within one poll, a read that found nothing is not tried again: that read registered the
    /// poll's waker for the transport's readiness, so anything arriving after it wakes the
    /// connection for another poll, which reads it. The dispatcher used to ask the transport up
    /// to four times per poll (for the next head, for end of stream while idle or waiting, after
    /// a message ended), each time through every layer of it (about 150 instructions each).
    pub(crate) fn start_poll(&mut self) {
        self.read_pending_in_poll = false;
    }

    /// (patch) From now on the transport is read with a waker of the connection's own, which
    /// notes that the transport woke it before waking the connection's task: a read that found
    /// nothing is then not tried again, in later polls either, until the transport has woken
    /// the connection (the server's connections: see `Buffered::poll_read_from_io`).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn enable_read_wake(&mut self) {
        let wake = Arc::new(ReadWake {
            woken: AtomicBool::new(false),
            task: OnceLock::new(),
        });
        let waker = Waker::from(Arc::clone(&wake));
        self.read_wake = Some((wake, waker));
    }

    pub(crate) fn poll_read_from_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_pending_in_poll {
            self.read_blocked = true;
            return Poll::Pending;
        }
        if self.read_wake.is_some() {
            return self.poll_read_with_own_waker(cx);
        }
        self.poll_read_with(cx)
    }

    /// (patch) `poll_read_from_io` for a connection with `read_wake` (a server's).
    ///
    /// A server's connection is polled again for many reasons (its response's future woke it:
    /// the upstream answered, a concurrency slot was handed over), and each time it read the
    /// transport again to see whether the client went away while the response is prepared,
    /// through every layer of the transport down to its readiness (about 170 instructions).
    /// The transport holds `read_wake`'s waker since the last read found nothing: until it
    /// wakes it (data, end of stream, an error, or only asking to yield), a read would find
    /// nothing again. That waker wakes the task whose waker it was given first; a connection
    /// polled by another task goes back to reading with the poll's own waker.
    fn poll_read_with_own_waker(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((wake, waker)) = &self.read_wake else {
            return self.poll_read_with(cx);
        };
        if !wake
            .task
            .get_or_init(|| cx.waker().clone())
            .will_wake(cx.waker())
        {
            self.read_wake = None;
            return self.poll_read_with(cx);
        }
        if self.read_armed {
            if !wake.woken.load(Ordering::SeqCst) {
                self.read_blocked = true;
                self.read_pending_in_poll = true;
                return Poll::Pending;
            }
            wake.woken.store(false, Ordering::SeqCst);
        }
        let read = read_into(
            &mut self.io,
            &mut self.read_buf,
            &mut self.read_buf_strategy,
            &mut Context::from_waker(waker),
        );
        self.read_armed = read.is_pending();
        self.read_blocked = read.is_pending();
        self.read_pending_in_poll = read.is_pending();
        read
    }

    #[inline(always)]
    fn poll_read_with(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let read = read_into(
            &mut self.io,
            &mut self.read_buf,
            &mut self.read_buf_strategy,
            cx,
        );
        self.read_blocked = read.is_pending();
        self.read_pending_in_poll |= read.is_pending();
        read
    }

    pub(crate) fn into_inner(self) -> (T, Bytes) {
        (self.io, self.read_buf.freeze())
    }

    pub(crate) fn is_read_blocked(&self) -> bool {
        self.read_blocked
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.flush_pipeline && !self.read_buf.is_empty() {
            Poll::Ready(Ok(()))
        } else if self.write_buf.remaining() == 0 {
            Pin::new(&mut self.io).poll_flush(cx)
        } else {
            if let WriteStrategy::Flatten = self.write_buf.strategy {
                return self.poll_flush_flattened(cx);
            }

            const MAX_WRITEV_BUFS: usize = 64;
            // (patch) A head and up to two queued buffers (at most 7 slices, a chunked buffer
            // giving 3) are gathered in an array of 8: making the 64 empty slices of the full
            // array cost more than the rest of the flush. A buffer giving more slices than
            // that is written by the next turn of the loop.
            const FEW_WRITEV_BUFS: usize = 8;
            loop {
                let n = if self.write_buf.queue.bufs_cnt() <= 2 {
                    let mut iovs = [IoSlice::new(&[]); FEW_WRITEV_BUFS];
                    let len = self.write_buf.chunks_vectored(&mut iovs);
                    ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &iovs[..len]))?
                } else {
                    let mut iovs = [IoSlice::new(&[]); MAX_WRITEV_BUFS];
                    let len = self.write_buf.chunks_vectored(&mut iovs);
                    ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &iovs[..len]))?
                };
                // TODO(eliza): we have to do this manually because
                // `poll_write_buf` doesn't exist in Tokio 0.3 yet...when
                // `poll_write_buf` comes back, the manual advance will need to leave!
                self.write_buf.advance(n);
                debug!("flushed {} bytes", n);
                if self.write_buf.remaining() == 0 {
                    break;
                } else if n == 0 {
                    trace!(
                        "write returned zero, but {} bytes remaining",
                        self.write_buf.remaining()
                    );
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
            }
            Pin::new(&mut self.io).poll_flush(cx)
        }
    }

    /// Specialized version of `flush` when strategy is Flatten.
    ///
    /// Since all buffered bytes are flattened into the single headers buffer,
    /// that skips some bookkeeping around using multiple buffers.
    fn poll_flush_flattened(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, self.write_buf.headers.chunk()))?;
            debug!("flushed {} bytes", n);
            self.write_buf.headers.advance(n);
            if self.write_buf.headers.remaining() == 0 {
                self.write_buf.headers.reset();
                break;
            } else if n == 0 {
                trace!(
                    "write returned zero, but {} bytes remaining",
                    self.write_buf.remaining()
                );
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    #[cfg(test)]
    fn flush(&mut self) -> impl std::future::Future<Output = io::Result<()>> + '_ {
        futures_util::future::poll_fn(move |cx| self.poll_flush(cx))
    }
}

// The `B` is a `Buf`, we never project a pin to it
impl<T: Unpin, B> Unpin for Buffered<T, B> {}

// TODO: This trait is old... at least rename to PollBytes or something...
pub(crate) trait MemRead {
    fn read_mem(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<Bytes>>;
}

impl<T, B> MemRead for Buffered<T, B>
where
    T: Read + Write + Unpin,
    B: Buf,
{
    fn read_mem(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<Bytes>> {
        if !self.read_buf.is_empty() {
            let n = std::cmp::min(len, self.read_buf.len());
            Poll::Ready(Ok(self.read_buf.split_to(n).freeze()))
        } else {
            let n = ready!(self.poll_read_from_io(cx))?;
            Poll::Ready(Ok(self.read_buf.split_to(::std::cmp::min(len, n)).freeze()))
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum ReadStrategy {
    Adaptive {
        decrease_now: bool,
        next: usize,
        max: usize,
    },
    #[cfg(feature = "client")]
    Exact(usize),
}

impl ReadStrategy {
    fn with_max(max: usize) -> ReadStrategy {
        ReadStrategy::Adaptive {
            decrease_now: false,
            next: INIT_BUFFER_SIZE,
            max,
        }
    }

    fn next(&self) -> usize {
        match *self {
            ReadStrategy::Adaptive { next, .. } => next,
            #[cfg(feature = "client")]
            ReadStrategy::Exact(exact) => exact,
        }
    }

    fn max(&self) -> usize {
        match *self {
            ReadStrategy::Adaptive { max, .. } => max,
            #[cfg(feature = "client")]
            ReadStrategy::Exact(exact) => exact,
        }
    }

    fn record(&mut self, bytes_read: usize) {
        match self {
            ReadStrategy::Adaptive {
                decrease_now,
                next,
                max,
                ..
            } => {
                if bytes_read >= *next {
                    *next = cmp::min(incr_power_of_two(*next), *max);
                    *decrease_now = false;
                } else {
                    let decr_to = prev_power_of_two(*next);
                    if bytes_read < decr_to {
                        if *decrease_now {
                            *next = cmp::max(decr_to, INIT_BUFFER_SIZE);
                            *decrease_now = false;
                        } else {
                            // Decreasing is a two "record" process.
                            *decrease_now = true;
                        }
                    } else {
                        // A read within the current range should cancel
                        // a potential decrease, since we just saw proof
                        // that we still need this size.
                        *decrease_now = false;
                    }
                }
            }
            #[cfg(feature = "client")]
            ReadStrategy::Exact(_) => (),
        }
    }
}

fn incr_power_of_two(n: usize) -> usize {
    n.saturating_mul(2)
}

fn prev_power_of_two(n: usize) -> usize {
    // Only way this shift can underflow is if n is less than 4.
    // (Which would means `usize::MAX >> 64` and underflowed!)
    debug_assert!(n >= 4);
    (usize::MAX >> (n.leading_zeros() + 2)) + 1
}

impl Default for ReadStrategy {
    fn default() -> ReadStrategy {
        ReadStrategy::with_max(DEFAULT_MAX_BUFFER_SIZE)
    }
}

#[derive(Clone)]
pub(crate) struct Cursor<T> {
    bytes: T,
    pos: usize,
}

impl<T: AsRef<[u8]>> Cursor<T> {
    #[inline]
    pub(crate) fn new(bytes: T) -> Cursor<T> {
        Cursor { bytes, pos: 0 }
    }
}

impl Cursor<Vec<u8>> {
    /// If we've advanced the position a bit in this cursor, and wish to
    /// extend the underlying vector, we may wish to unshift the "read" bytes
    /// off, and move everything else over.
    fn maybe_unshift(&mut self, additional: usize) {
        if self.pos == 0 {
            // nothing to do
            return;
        }

        if self.bytes.capacity() - self.bytes.len() >= additional {
            // there's room!
            return;
        }

        self.bytes.drain(0..self.pos);
        self.pos = 0;
    }

    fn reset(&mut self) {
        self.pos = 0;
        self.bytes.clear();
    }
}

impl<T: AsRef<[u8]>> fmt::Debug for Cursor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("pos", &self.pos)
            .field("len", &self.bytes.as_ref().len())
            .finish()
    }
}

impl<T: AsRef<[u8]>> Buf for Cursor<T> {
    #[inline]
    fn remaining(&self) -> usize {
        self.bytes.as_ref().len() - self.pos
    }

    #[inline]
    fn chunk(&self) -> &[u8] {
        &self.bytes.as_ref()[self.pos..]
    }

    #[inline]
    fn advance(&mut self, cnt: usize) {
        debug_assert!(self.pos + cnt <= self.bytes.as_ref().len());
        self.pos += cnt;
    }
}

// an internal buffer to collect writes before flushes
pub(super) struct WriteBuf<B> {
    /// Re-usable buffer that holds message headers.
    headers: Cursor<Vec<u8>>,
    max_buf_size: usize,
    /// Deque of user buffers if strategy is `Queue`.
    queue: BufList<B>,
    strategy: WriteStrategy,
}

impl<B: Buf> WriteBuf<B> {
    fn new(strategy: WriteStrategy) -> WriteBuf<B> {
        WriteBuf {
            headers: Cursor::new(Vec::with_capacity(INIT_BUFFER_SIZE)),
            max_buf_size: DEFAULT_MAX_BUFFER_SIZE,
            queue: BufList::new(),
            strategy,
        }
    }

    fn set_strategy(&mut self, strategy: WriteStrategy) {
        self.strategy = strategy;
    }

    pub(super) fn buffer<BB: Buf + Into<B>>(&mut self, mut buf: BB) {
        debug_assert!(buf.has_remaining());
        match self.strategy {
            WriteStrategy::Flatten => {
                let head = self.headers_mut();

                head.maybe_unshift(buf.remaining());
                trace!(
                    self.len = head.remaining(),
                    buf.len = buf.remaining(),
                    "buffer.flatten"
                );
                //perf: This is a little faster than <Vec as BufMut>>::put,
                //but accomplishes the same result.
                loop {
                    let adv = {
                        let slice = buf.chunk();
                        if slice.is_empty() {
                            return;
                        }
                        head.bytes.extend_from_slice(slice);
                        slice.len()
                    };
                    buf.advance(adv);
                }
            }
            WriteStrategy::Queue => {
                trace!(
                    self.len = self.remaining(),
                    buf.len = buf.remaining(),
                    "buffer.queue"
                );
                self.queue.push(buf.into());
            }
        }
    }

    fn can_buffer(&self) -> bool {
        match self.strategy {
            WriteStrategy::Flatten => self.remaining() < self.max_buf_size,
            WriteStrategy::Queue => {
                self.queue.bufs_cnt() < MAX_BUF_LIST_BUFFERS && self.remaining() < self.max_buf_size
            }
        }
    }

    fn headers_mut(&mut self) -> &mut Cursor<Vec<u8>> {
        debug_assert!(!self.queue.has_remaining());
        &mut self.headers
    }
}

impl<B: Buf> fmt::Debug for WriteBuf<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBuf")
            .field("remaining", &self.remaining())
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

impl<B: Buf> Buf for WriteBuf<B> {
    #[inline]
    fn remaining(&self) -> usize {
        self.headers.remaining() + self.queue.remaining()
    }

    #[inline]
    fn chunk(&self) -> &[u8] {
        let headers = self.headers.chunk();
        if !headers.is_empty() {
            headers
        } else {
            self.queue.chunk()
        }
    }

    #[inline]
    fn advance(&mut self, cnt: usize) {
        let hrem = self.headers.remaining();

        match hrem.cmp(&cnt) {
            cmp::Ordering::Equal => self.headers.reset(),
            cmp::Ordering::Greater => self.headers.advance(cnt),
            cmp::Ordering::Less => {
                let qcnt = cnt - hrem;
                self.headers.reset();
                self.queue.advance(qcnt);
            }
        }
    }

    #[inline]
    fn chunks_vectored<'data>(&'data self, dst: &mut [IoSlice<'data>]) -> usize {
        let n = self.headers.chunks_vectored(dst);
        self.queue.chunks_vectored(&mut dst[n..]) + n
    }
}

#[derive(Debug)]
enum WriteStrategy {
    Flatten,
    Queue,
}

/// One read of `io` into `read_buf` (`Buffered::poll_read_from_io`).
#[inline(always)]
fn read_into<T: Read + Unpin>(
    io: &mut T,
    read_buf: &mut BytesMut,
    read_buf_strategy: &mut ReadStrategy,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    // Get the next amount to allocate, but make sure we don't go over
    // the max read buf size configured.
    let next = cmp::min(
        read_buf_strategy.next(),
        read_buf_strategy.max().saturating_sub(read_buf.len()),
    );
    // (patch) Reserve only when less than half of `next` is free (or nothing is): the head
    // just parsed was split off the buffer, and while the message it became is alive the
    // buffer is shared, so reserving the full `next` allocated a new buffer for every
    // message read, when the rest of the old one (most of it, after a small head) could
    // take the next read. The strategy's next size grows as before, at most one read
    // later: a read that filled the buffer leaves less than half of `next` free.
    let remaining = read_buf.capacity() - read_buf.len();
    if remaining < next.div_ceil(2) || remaining == 0 {
        read_buf.reserve(next);
    }

    // SAFETY: ReadBuf and poll_read promise not to set any uninitialized
    // bytes onto `dst`.
    let dst = unsafe { read_buf.chunk_mut().as_uninit_slice_mut() };
    let mut buf = ReadBuf::uninit(dst);
    match Pin::new(io).poll_read(cx, buf.unfilled()) {
        Poll::Ready(Ok(())) => {
            let n = buf.filled().len();
            trace!("received {} bytes", n);
            // Safety: we just read that many bytes into the
            // uninitialized part of the buffer, so this is okay.
            // @tokio pls give me back `poll_read_buf` thanks
            unsafe {
                read_buf.advance_mut(n);
            }
            read_buf_strategy.record(n);
            Poll::Ready(Ok(n))
        }
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
    }
}

/// (patch) What the waker of `Buffered::enable_read_wake` shares with the connection: whether
/// the transport woke it since the last read, and the task to wake.
struct ReadWake {
    woken: AtomicBool,
    task: OnceLock<Waker>,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.get() {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::io::Compat;
    use std::time::Duration;

    use tokio_test::io::Builder as Mock;

    #[tokio::test]
    #[ignore]
    async fn iobuf_write_empty_slice() {
        // TODO(eliza): can i have writev back pls T_T
        // // First, let's just check that the Mock would normally return an
        // // error on an unexpected write, even if the buffer is empty...
        // let mut mock = Mock::new().build();
        // futures_util::future::poll_fn(|cx| {
        //     Pin::new(&mut mock).poll_write_buf(cx, &mut Cursor::new(&[]))
        // })
        // .await
        // .expect_err("should be a broken pipe");

        // // underlying io will return the logic error upon write,
        // // so we are testing that the io_buf does not trigger a write
        // // when there is nothing to flush
        // let mock = Mock::new().build();
        // let mut io_buf = Buffered::<_, Cursor<Vec<u8>>>::new(mock);
        // io_buf.flush().await.expect("should short-circuit flush");
    }

    /// (patch) Within one poll a read that found nothing is not retried; the next poll reads.
    #[test]
    fn a_pending_read_is_not_retried_within_a_poll() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        struct CountingIo {
            reads: Arc<AtomicUsize>,
            data: Option<&'static [u8]>,
        }
        impl crate::rt::Read for CountingIo {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                mut buf: crate::rt::ReadBufCursor<'_>,
            ) -> Poll<io::Result<()>> {
                self.reads.fetch_add(1, Ordering::Relaxed);
                match self.data.take() {
                    Some(data) => {
                        buf.put_slice(data);
                        Poll::Ready(Ok(()))
                    }
                    None => Poll::Pending,
                }
            }
        }
        impl crate::rt::Write for CountingIo {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }

        let reads = Arc::new(AtomicUsize::new(0));
        let io = CountingIo {
            reads: Arc::clone(&reads),
            data: None,
        };
        let mut buffered = Buffered::<_, Cursor<Vec<u8>>>::new(io);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        buffered.start_poll();
        assert!(buffered.poll_read_from_io(&mut cx).is_pending());
        assert!(buffered.poll_read_from_io(&mut cx).is_pending());
        assert!(buffered.is_read_blocked());
        assert_eq!(
            reads.load(Ordering::Relaxed),
            1,
            "not retried in the same poll"
        );
        buffered.io.data = Some(b"abc");
        buffered.start_poll();
        match buffered.poll_read_from_io(&mut cx) {
            Poll::Ready(Ok(3)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(reads.load(Ordering::Relaxed), 2);
        assert!(!buffered.is_read_blocked());
        assert_eq!(buffered.read_buf(), b"abc");
    }

    /// (patch) With `enable_read_wake`, a read that found nothing is not retried in later polls
    /// until the transport wakes its waker, which wakes the connection's task.
    #[cfg(feature = "server")]
    #[test]
    fn a_pending_read_waits_for_the_transport_to_wake() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        use std::task::Wake;

        #[derive(Default)]
        struct Transport {
            reads: AtomicUsize,
            waker: Mutex<Option<Waker>>,
            data: Mutex<Option<&'static [u8]>>,
        }
        struct Io(Arc<Transport>);
        impl crate::rt::Read for Io {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                mut buf: crate::rt::ReadBufCursor<'_>,
            ) -> Poll<io::Result<()>> {
                self.0.reads.fetch_add(1, Ordering::Relaxed);
                match self.0.data.lock().unwrap().take() {
                    Some(data) => {
                        buf.put_slice(data);
                        Poll::Ready(Ok(()))
                    }
                    None => {
                        *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
        impl crate::rt::Write for Io {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        #[derive(Default)]
        struct Task(AtomicUsize);
        impl Wake for Task {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }

        let transport = Arc::new(Transport::default());
        let mut buffered = Buffered::<_, Cursor<Vec<u8>>>::new(Io(Arc::clone(&transport)));
        buffered.enable_read_wake();
        let task = Arc::new(Task::default());
        let waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&waker);
        let reads = || transport.reads.load(Ordering::Relaxed);
        buffered.start_poll();
        assert!(buffered.poll_read_from_io(&mut cx).is_pending());
        assert_eq!(reads(), 1);
        // Later polls, woken by something else: no read.
        for _ in 0..3 {
            buffered.start_poll();
            assert!(buffered.poll_read_from_io(&mut cx).is_pending());
            assert!(buffered.is_read_blocked());
        }
        assert_eq!(reads(), 1, "not retried before the transport woke");
        // The transport wakes the connection's task, and the next poll reads.
        *transport.data.lock().unwrap() = Some(b"abc");
        let transport_waker = transport.waker.lock().unwrap().take().unwrap();
        transport_waker.wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
        buffered.start_poll();
        match buffered.poll_read_from_io(&mut cx) {
            Poll::Ready(Ok(3)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(reads(), 2);
        assert!(!buffered.is_read_blocked());
        // A read that found data is followed by a real read.
        buffered.start_poll();
        assert!(buffered.poll_read_from_io(&mut cx).is_pending());
        assert_eq!(reads(), 3);
        // A wake that only asks to yield (tokio's budget) also leads to a read.
        transport
            .waker
            .lock()
            .unwrap()
            .take()
            .unwrap()
            .wake_by_ref();
        assert_eq!(task.0.load(Ordering::Relaxed), 2);
        buffered.start_poll();
        assert!(buffered.poll_read_from_io(&mut cx).is_pending());
        assert_eq!(reads(), 4);
        // Polled by another task: read with that task's waker, every time.
        let other = Arc::new(Task::default());
        let other_waker = Waker::from(Arc::clone(&other));
        let mut other_cx = Context::from_waker(&other_waker);
        for expected in [5, 6] {
            buffered.start_poll();
            assert!(buffered.poll_read_from_io(&mut other_cx).is_pending());
            assert_eq!(reads(), expected);
            assert!(transport
                .waker
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .will_wake(&other_waker));
        }
    }

    #[cfg(not(miri))]
    #[tokio::test]
    async fn parse_reads_until_blocked() {
        use crate::proto::h1::ClientTransaction;

        let _ = pretty_env_logger::try_init();
        let mock = Mock::new()
            // Split over multiple reads will read all of it
            .read(b"HTTP/1.1 200 OK\r\n")
            .read(b"Server: hyper\r\n")
            // missing last line ending
            .wait(Duration::from_secs(1))
            .build();

        let mut buffered = Buffered::<_, Cursor<Vec<u8>>>::new(Compat::new(mock));

        // We expect a `parse` to be not ready, and so can't await it directly.
        // Rather, this `poll_fn` will wrap the `Poll` result.
        futures_util::future::poll_fn(|cx| {
            let parse_ctx = ParseContext {
                cached_headers: &mut None,
                req_method: &mut None,
                h1_parser_config: Default::default(),
                h1_max_headers: None,
                h1_max_header_size: None,
                preserve_header_case: false,
                #[cfg(feature = "ffi")]
                preserve_header_order: false,
                h09_responses: false,
                #[cfg(feature = "client")]
                on_informational: &mut None,
            };
            assert!(buffered
                .parse::<ClientTransaction>(cx, parse_ctx)
                .is_pending());
            Poll::Ready(())
        })
        .await;

        assert_eq!(
            buffered.read_buf,
            b"HTTP/1.1 200 OK\r\nServer: hyper\r\n"[..]
        );
    }

    /// (patch) The next message is read into the rest of the buffer its predecessor's head
    /// was split from, while that head is still alive: no new buffer per message.
    #[tokio::test]
    async fn next_message_is_read_into_the_rest_of_a_shared_buffer() {
        let first = b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n";
        let second = b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n";
        let mock = Mock::new().read(first).read(second).build();
        let mut buffered = Buffered::<_, Cursor<Vec<u8>>>::new(Compat::new(mock));

        let n = futures_util::future::poll_fn(|cx| buffered.poll_read_from_io(cx))
            .await
            .unwrap();
        assert_eq!(n, first.len());
        // The head becomes a message that is still alive when the next read comes.
        let head = buffered.read_buf.split_to(n).freeze();
        let rest = buffered.read_buf.as_ptr();
        assert_eq!(rest, head.as_ptr().wrapping_add(head.len()));

        let n = futures_util::future::poll_fn(|cx| buffered.poll_read_from_io(cx))
            .await
            .unwrap();
        assert_eq!(n, second.len());
        assert_eq!(&buffered.read_buf[..], &second[..]);
        assert_eq!(
            buffered.read_buf.as_ptr(),
            rest,
            "read into the same buffer"
        );
        assert_eq!(&head[..], &first[..]);
    }

    #[test]
    fn read_strategy_adaptive_increments() {
        let mut strategy = ReadStrategy::default();
        assert_eq!(strategy.next(), 8192);

        // Grows if record == next
        strategy.record(8192);
        assert_eq!(strategy.next(), 16384);

        strategy.record(16384);
        assert_eq!(strategy.next(), 32768);

        // Enormous records still increment at same rate
        strategy.record(usize::MAX);
        assert_eq!(strategy.next(), 65536);

        let max = strategy.max();
        while strategy.next() < max {
            strategy.record(max);
        }

        assert_eq!(strategy.next(), max, "never goes over max");
        strategy.record(max + 1);
        assert_eq!(strategy.next(), max, "never goes over max");
    }

    #[test]
    fn read_strategy_adaptive_decrements() {
        let mut strategy = ReadStrategy::default();
        strategy.record(8192);
        assert_eq!(strategy.next(), 16384);

        strategy.record(1);
        assert_eq!(
            strategy.next(),
            16384,
            "first smaller record doesn't decrement yet"
        );
        strategy.record(8192);
        assert_eq!(strategy.next(), 16384, "record was with range");

        strategy.record(1);
        assert_eq!(
            strategy.next(),
            16384,
            "in-range record should make this the 'first' again"
        );

        strategy.record(1);
        assert_eq!(strategy.next(), 8192, "second smaller record decrements");

        strategy.record(1);
        assert_eq!(strategy.next(), 8192, "first doesn't decrement");
        strategy.record(1);
        assert_eq!(strategy.next(), 8192, "doesn't decrement under minimum");
    }

    #[test]
    fn read_strategy_adaptive_stays_the_same() {
        let mut strategy = ReadStrategy::default();
        strategy.record(8192);
        assert_eq!(strategy.next(), 16384);

        strategy.record(8193);
        assert_eq!(
            strategy.next(),
            16384,
            "first smaller record doesn't decrement yet"
        );

        strategy.record(8193);
        assert_eq!(
            strategy.next(),
            16384,
            "with current step does not decrement"
        );
    }

    #[test]
    fn read_strategy_adaptive_max_fuzz() {
        fn fuzz(max: usize) {
            let mut strategy = ReadStrategy::with_max(max);
            while strategy.next() < max {
                strategy.record(usize::MAX);
            }
            let mut next = strategy.next();
            while next > 8192 {
                strategy.record(1);
                strategy.record(1);
                next = strategy.next();
                assert!(
                    next.is_power_of_two(),
                    "decrement should be powers of two: {} (max = {})",
                    next,
                    max,
                );
            }
        }

        let mut max = 8192;
        while max < usize::MAX {
            fuzz(max);
            max = (max / 2).saturating_mul(3);
        }
        fuzz(usize::MAX);
    }

    #[test]
    #[should_panic]
    #[cfg(debug_assertions)] // needs to trigger a debug_assert
    fn write_buf_requires_non_empty_bufs() {
        let mock = Mock::new().build();
        let mut buffered = Buffered::<_, Cursor<Vec<u8>>>::new(Compat::new(mock));

        buffered.buffer(Cursor::new(Vec::new()));
    }

    /*
    TODO: needs tokio_test::io to allow configure write_buf calls
    #[test]
    fn write_buf_queue() {
        let _ = pretty_env_logger::try_init();

        let mock = AsyncIo::new_buf(vec![], 1024);
        let mut buffered = Buffered::<_, Cursor<Vec<u8>>>::new(mock);


        buffered.headers_buf().extend(b"hello ");
        buffered.buffer(Cursor::new(b"world, ".to_vec()));
        buffered.buffer(Cursor::new(b"it's ".to_vec()));
        buffered.buffer(Cursor::new(b"hyper!".to_vec()));
        assert_eq!(buffered.write_buf.queue.bufs_cnt(), 3);
        buffered.flush().unwrap();

        assert_eq!(buffered.io, b"hello world, it's hyper!");
        assert_eq!(buffered.io.num_writes(), 1);
        assert_eq!(buffered.write_buf.queue.bufs_cnt(), 0);
    }
    */

    #[cfg(not(miri))]
    #[tokio::test]
    async fn write_buf_flatten() {
        let _ = pretty_env_logger::try_init();

        let mock = Mock::new().write(b"hello world, it's hyper!").build();

        let mut buffered = Buffered::<_, Cursor<Vec<u8>>>::new(Compat::new(mock));
        buffered.write_buf.set_strategy(WriteStrategy::Flatten);

        buffered.headers_buf().extend(b"hello ");
        buffered.buffer(Cursor::new(b"world, ".to_vec()));
        buffered.buffer(Cursor::new(b"it's ".to_vec()));
        buffered.buffer(Cursor::new(b"hyper!".to_vec()));
        assert_eq!(buffered.write_buf.queue.bufs_cnt(), 0);

        buffered.flush().await.expect("flush");
    }

    #[test]
    fn write_buf_flatten_partially_flushed() {
        let _ = pretty_env_logger::try_init();

        let b = |s: &str| Cursor::new(s.as_bytes().to_vec());

        let mut write_buf = WriteBuf::<Cursor<Vec<u8>>>::new(WriteStrategy::Flatten);

        write_buf.buffer(b("hello "));
        write_buf.buffer(b("world, "));

        assert_eq!(write_buf.chunk(), b"hello world, ");

        // advance most of the way, but not all
        write_buf.advance(11);

        assert_eq!(write_buf.chunk(), b", ");
        assert_eq!(write_buf.headers.pos, 11);
        assert_eq!(write_buf.headers.bytes.capacity(), INIT_BUFFER_SIZE);

        // there's still room in the headers buffer, so just push on the end
        write_buf.buffer(b("it's hyper!"));

        assert_eq!(write_buf.chunk(), b", it's hyper!");
        assert_eq!(write_buf.headers.pos, 11);

        let rem1 = write_buf.remaining();
        let cap = write_buf.headers.bytes.capacity();

        // but when this would go over capacity, don't copy the old bytes
        write_buf.buffer(Cursor::new(vec![b'X'; cap]));
        assert_eq!(write_buf.remaining(), cap + rem1);
        assert_eq!(write_buf.headers.pos, 0);
    }

    #[cfg(not(miri))]
    /// (patch) A queue flushed with vectored writes: a head and a few buffers (the small
    /// array) or many (the full one), every byte in order, in one write.
    #[tokio::test]
    async fn write_buf_queue_vectored_few_and_many() {
        #[derive(Default)]
        struct Gather {
            written: Vec<u8>,
            writes: usize,
        }

        impl crate::rt::Read for Gather {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: crate::rt::ReadBufCursor<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }

        impl crate::rt::Write for Gather {
            fn poll_write(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.writes += 1;
                self.written.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                self.writes += 1;
                let mut n = 0;
                for buf in bufs {
                    self.written.extend_from_slice(buf);
                    n += buf.len();
                }
                Poll::Ready(Ok(n))
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }

        for count in [0, 1, 2, 3, MAX_BUF_LIST_BUFFERS] {
            let mut buffered = Buffered::<_, Cursor<Vec<u8>>>::new(Gather::default());
            buffered.write_buf.set_strategy(WriteStrategy::Queue);
            buffered.headers_buf().extend(b"head;");
            let mut expected = b"head;".to_vec();
            for i in 0..count {
                let part = format!("buffer {};", i).into_bytes();
                expected.extend_from_slice(&part);
                buffered.buffer(Cursor::new(part));
            }
            assert_eq!(buffered.write_buf.queue.bufs_cnt(), count);
            buffered.flush().await.expect("flush");
            assert_eq!(buffered.write_buf.queue.bufs_cnt(), 0);
            assert_eq!(buffered.io.written, expected, "{} buffers", count);
            assert_eq!(buffered.io.writes, 1, "{} buffers in one write", count);
        }
    }

    #[tokio::test]
    async fn write_buf_queue_disable_auto() {
        let _ = pretty_env_logger::try_init();

        let mock = Mock::new()
            .write(b"hello ")
            .write(b"world, ")
            .write(b"it's ")
            .write(b"hyper!")
            .build();

        let mut buffered = Buffered::<_, Cursor<Vec<u8>>>::new(Compat::new(mock));
        buffered.write_buf.set_strategy(WriteStrategy::Queue);

        // we have 4 buffers, and vec IO disabled, but explicitly said
        // don't try to auto detect (via setting strategy above)

        buffered.headers_buf().extend(b"hello ");
        buffered.buffer(Cursor::new(b"world, ".to_vec()));
        buffered.buffer(Cursor::new(b"it's ".to_vec()));
        buffered.buffer(Cursor::new(b"hyper!".to_vec()));
        assert_eq!(buffered.write_buf.queue.bufs_cnt(), 3);

        buffered.flush().await.expect("flush");

        assert_eq!(buffered.write_buf.queue.bufs_cnt(), 0);
    }

    // #[cfg(feature = "nightly")]
    // #[bench]
    // fn bench_write_buf_flatten_buffer_chunk(b: &mut Bencher) {
    //     let s = "Hello, World!";
    //     b.bytes = s.len() as u64;

    //     let mut write_buf = WriteBuf::<bytes::Bytes>::new();
    //     write_buf.set_strategy(WriteStrategy::Flatten);
    //     b.iter(|| {
    //         let chunk = bytes::Bytes::from(s);
    //         write_buf.buffer(chunk);
    //         ::test::black_box(&write_buf);
    //         write_buf.headers.bytes.clear();
    //     })
    // }
}
