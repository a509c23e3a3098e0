use crate::frame::{self, Frame, Kind, Reason};
use crate::frame::{
    DEFAULT_MAX_FRAME_SIZE, DEFAULT_SETTINGS_HEADER_TABLE_SIZE, MAX_MAX_FRAME_SIZE,
};
use crate::proto::Error;

use crate::hpack;

use futures_core::Stream;

use bytes::{Buf, BytesMut};

use std::io;

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::FramedRead as InnerFramedRead;
use tokio_util::codec::Decoder;

// 16 MB "sane default" taken from golang http2
const DEFAULT_SETTINGS_MAX_HEADER_LIST_SIZE: usize = 16 << 20;

const MAX_FIELDS_HINT: usize = 64;

/// (patch) Room for fields added to a decoded map after decoding, beyond the
/// fields it holds: a proxy adds a few to every request (`X-Forwarded-For`,
/// `K-Proxy-Request`, ...) and response (`Date`), and a map sized exactly for
/// its decoded fields reallocated and rehashed on the first of them. Four more
/// entries cost about 400 bytes while the message head is held.
const FIELDS_HEADROOM: usize = 4;

#[derive(Debug)]
pub struct FramedRead<T> {
    inner: InnerFramedRead<T, FrameSplitter>,

    decoder: FrameDecoder,

    /// (patch) The read buffer was freed by `release_idle_buffers`: the next
    /// read probes the socket before allocating it again.
    read_released: bool,
}

/// (patch) The capacity of a read buffer allocated again after a release
/// (tokio-util's initial capacity).
const RELEASED_READ_CAPACITY: usize = 8 * 1024;

/// (patch) The most bytes the probe read of a released connection takes: fewer
/// than a frame header, so that no whole frame can wait in the buffer while
/// tokio-util's next read of the socket is pending.
const PROBE_LEN: usize = frame::HEADER_LEN - 1;

/// (patch) Cuts the read buffer into whole frames (9-byte header included), as
/// tokio-util's `LengthDelimitedCodec` configured for HTTP/2 did (a 3-byte
/// big-endian payload length, 9 bytes added, nothing skipped), in a fraction of
/// its instructions: that codec reads a length field of any width and order.
/// A payload longer than `max_payload` fails with [`FrameTooBig`], which
/// `map_err` turns into a `FRAME_SIZE_ERROR` GOAWAY. The length of a frame whose
/// header was read is kept until the frame is complete, so a smaller maximum
/// set meanwhile applies from the next frame on (as before).
#[derive(Debug)]
pub(super) struct FrameSplitter {
    max_payload: usize,
    /// The whole length of the frame whose header has been read.
    pending: Option<usize>,
}

impl FrameSplitter {
    pub(super) fn new(max_payload: usize) -> Self {
        FrameSplitter {
            max_payload,
            pending: None,
        }
    }
}

/// (patch) A frame's payload length exceeds SETTINGS_MAX_FRAME_SIZE.
#[derive(Debug)]
struct FrameTooBig;

impl std::fmt::Display for FrameTooBig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("frame size too big")
    }
}

impl std::error::Error for FrameTooBig {}

impl Decoder for FrameSplitter {
    type Item = BytesMut;
    type Error = io::Error;

    #[inline]
    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let len = match self.pending {
            Some(len) => len,
            None => {
                if src.len() < 3 {
                    return Ok(None);
                }
                let payload =
                    (usize::from(src[0]) << 16) | (usize::from(src[1]) << 8) | usize::from(src[2]);
                if payload > self.max_payload {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, FrameTooBig));
                }
                frame::HEADER_LEN + payload
            }
        };
        if src.len() < len {
            // Room for the rest of the frame, so that it arrives in as few reads as it can.
            src.reserve(len - src.len());
            self.pending = Some(len);
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(src.split_to(len)))
    }
}

#[derive(Debug)]
struct FrameDecoder {
    // hpack decoder state
    hpack: hpack::Decoder,

    max_header_list_size: usize,

    max_continuation_frames: usize,

    /// Moving average of the field count of recent header blocks, used to
    /// size the next block's `HeaderMap` so decoding it doesn't rehash.
    fields_hint: usize,

    partial: Option<Partial>,
}

/// Partially loaded headers frame
#[derive(Debug)]
struct Partial {
    /// Empty frame
    frame: Continuable,

    /// Partial header payload
    buf: BytesMut,

    continuation_frames_count: usize,
}

#[derive(Debug)]
enum Continuable {
    // (patch) Boxed: the frames `load` made in their box.
    Headers(Box<frame::Headers>),
    PushPromise(Box<frame::PushPromise>),
}

impl<T> FramedRead<T> {
    pub fn new(inner: InnerFramedRead<T, FrameSplitter>) -> FramedRead<T> {
        let decoder = FrameDecoder::new(inner.decoder().max_payload);
        FramedRead {
            inner,
            decoder,
            read_released: false,
        }
    }

    /// (patch) Frees the read buffer and the HPACK decoder's scratch buffer
    /// when no byte of a frame is buffered; the read buffer is allocated again
    /// once bytes arrive. Returns whether the buffers were freed.
    pub fn release_idle_buffers(&mut self) -> bool {
        if !self.inner.read_buffer().is_empty() || self.decoder.partial.is_some() {
            return false;
        }
        *self.inner.read_buffer_mut() = BytesMut::new();
        self.read_released = true;
        self.decoder.hpack.release_buffer();
        true
    }

    pub fn get_ref(&self) -> &T {
        self.inner.get_ref()
    }

    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    /// Returns the current max frame size setting
    #[inline]
    pub fn max_frame_size(&self) -> usize {
        self.inner.decoder().max_payload
    }

    /// Updates the max frame size setting.
    ///
    /// Must be within 16,384 and 16,777,215.
    #[inline]
    pub fn set_max_frame_size(&mut self, val: usize) {
        assert!(DEFAULT_MAX_FRAME_SIZE as usize <= val && val <= MAX_MAX_FRAME_SIZE as usize);
        self.inner.decoder_mut().max_payload = val;
        // Update max CONTINUATION frames too, since its based on this
        self.decoder.set_max_frame_size(val);
    }

    /// Update the max header list size setting.
    #[inline]
    pub fn set_max_header_list_size(&mut self, val: usize) {
        self.decoder
            .set_max_header_list_size(val, self.max_frame_size());
    }

    /// Update the header table size setting.
    #[inline]
    pub fn set_header_table_size(&mut self, val: usize) {
        self.decoder.set_header_table_size(val);
    }
}

fn calc_max_continuation_frames(header_max: usize, frame_max: usize) -> usize {
    // At least this many frames needed to use max header list size
    let min_frames_for_list = (header_max / frame_max).max(1);
    // Some padding for imperfectly packed frames
    // 25% without floats
    let padding = min_frames_for_list >> 2;
    min_frames_for_list.saturating_add(padding).max(5)
}

impl FrameDecoder {
    fn new(max_frame_size: usize) -> Self {
        let max_header_list_size = DEFAULT_SETTINGS_MAX_HEADER_LIST_SIZE;
        FrameDecoder {
            hpack: hpack::Decoder::new(DEFAULT_SETTINGS_HEADER_TABLE_SIZE),
            max_header_list_size,
            max_continuation_frames: calc_max_continuation_frames(
                max_header_list_size,
                max_frame_size,
            ),
            fields_hint: 0,
            partial: None,
        }
    }

    fn update_fields_hint(&mut self, len: usize) {
        // The newest block weighs 1/4. Rounding up keeps a steady count from
        // decaying, and the cap bounds what one huge block makes later ones reserve.
        let len = len.min(MAX_FIELDS_HINT);
        self.fields_hint = (self.fields_hint * 3 + len + 3) / 4;
    }

    fn set_max_frame_size(&mut self, val: usize) {
        self.max_continuation_frames = calc_max_continuation_frames(self.max_header_list_size, val);
    }

    fn set_max_header_list_size(&mut self, val: usize, max_frame_size: usize) {
        self.max_header_list_size = val;
        // Update max CONTINUATION frames too, since its based on this
        self.max_continuation_frames = calc_max_continuation_frames(val, max_frame_size);
    }

    fn set_header_table_size(&mut self, val: usize) {
        self.hpack.queue_size_update(val);
    }

    fn decode(&mut self, bytes: BytesMut) -> Result<Option<Frame>, Error> {
        decode_frame(self, bytes)
    }
}

/// Decodes a frame.
///
/// This function is intentionally de-generified and outlined because it is very large.
fn decode_frame(decoder: &mut FrameDecoder, mut bytes: BytesMut) -> Result<Option<Frame>, Error> {
    let span = tracing::trace_span!("FramedRead::decode_frame", offset = bytes.len());
    let _e = span.enter();

    tracing::trace!("decoding frame from {}B", bytes.len());

    // Parse the head
    let head = frame::Head::parse(&bytes);

    if decoder.partial.is_some() && head.kind() != Kind::Continuation {
        proto_err!(conn: "expected CONTINUATION, got {:?}", head.kind());
        return Err(Error::library_go_away(Reason::PROTOCOL_ERROR));
    }

    let kind = head.kind();

    tracing::trace!(frame.kind = ?kind);

    macro_rules! header_block {
        ($frame:ident, $head:ident, $bytes:ident) => ({
            // Drop the frame header
            $bytes.advance(frame::HEADER_LEN);

            // Parse the header frame w/o parsing the payload
            let (mut frame, mut payload) = match frame::$frame::load($head, $bytes, decoder.fields_hint + FIELDS_HEADROOM) {
                Ok(res) => res,
                Err(frame::Error::InvalidDependencyId) => {
                    proto_err!(stream: "invalid HEADERS dependency ID");
                    // A stream cannot depend on itself. An endpoint MUST
                    // treat this as a stream error (Section 5.4.2) of type
                    // `PROTOCOL_ERROR`.
                    return Err(Error::library_reset($head.stream_id(), Reason::PROTOCOL_ERROR));
                },
                Err(e) => {
                    proto_err!(conn: "failed to load frame; err={:?}", e);
                    return Err(Error::library_go_away(Reason::PROTOCOL_ERROR));
                }
            };

            let is_end_headers = frame.is_end_headers();

            // Load the HPACK encoded headers
            match frame.load_hpack(&mut payload, decoder.max_header_list_size, &mut decoder.hpack) {
                Ok(_) => {},
                Err(frame::Error::Hpack(hpack::DecoderError::NeedMore(_))) if !is_end_headers => {},
                Err(frame::Error::MalformedMessage) => {
                    let id = $head.stream_id();
                    proto_err!(stream: "malformed header block; stream={:?}", id);
                    return Err(Error::library_reset(id, Reason::PROTOCOL_ERROR));
                },
                Err(frame::Error::HeaderListWayTooLarge) => {
                    proto_err!(conn: "decoded header list size over abuse limit");
                    return Err(Error::library_go_away_data(
                        Reason::ENHANCE_YOUR_CALM,
                        "header_list_way_too_large",
                    ));
                },
                Err(e) => {
                    proto_err!(conn: "failed HPACK decoding; err={:?}", e);
                    return Err(Error::library_go_away(Reason::PROTOCOL_ERROR));
                }
            }

            if is_end_headers {
                frame.into()
            } else {
                tracing::trace!("loaded partial header block");
                // Defer returning the frame
                decoder.partial = Some(Partial {
                    frame: Continuable::$frame(frame),
                    buf: payload,
                    continuation_frames_count: 0,
                });

                return Ok(None);
            }
        });
    }

    let frame = match kind {
        Kind::Settings => {
            let res = frame::Settings::load(head, &bytes[frame::HEADER_LEN..]);

            res.map_err(|e| {
                proto_err!(conn: "failed to load SETTINGS frame; err={:?}", e);
                Error::library_go_away(Reason::PROTOCOL_ERROR)
            })?
            .into()
        }
        Kind::Ping => {
            let res = frame::Ping::load(head, &bytes[frame::HEADER_LEN..]);

            res.map_err(|e| {
                proto_err!(conn: "failed to load PING frame; err={:?}", e);
                Error::library_go_away(Reason::PROTOCOL_ERROR)
            })?
            .into()
        }
        Kind::WindowUpdate => {
            let res = frame::WindowUpdate::load(head, &bytes[frame::HEADER_LEN..]);

            res.map_err(|e| {
                proto_err!(conn: "failed to load WINDOW_UPDATE frame; err={:?}", e);
                Error::library_go_away(Reason::PROTOCOL_ERROR)
            })?
            .into()
        }
        Kind::Data => {
            bytes.advance(frame::HEADER_LEN);
            let res = frame::Data::load(head, bytes.freeze());

            // TODO: Should this always be connection level? Probably not...
            res.map_err(|e| {
                proto_err!(conn: "failed to load DATA frame; err={:?}", e);
                Error::library_go_away(Reason::PROTOCOL_ERROR)
            })?
            .into()
        }
        Kind::Headers => header_block!(Headers, head, bytes),
        Kind::Reset => {
            let res = frame::Reset::load(head, &bytes[frame::HEADER_LEN..]);
            res.map_err(|e| {
                proto_err!(conn: "failed to load RESET frame; err={:?}", e);
                Error::library_go_away(Reason::PROTOCOL_ERROR)
            })?
            .into()
        }
        Kind::GoAway => {
            let res = frame::GoAway::load(head, &bytes[frame::HEADER_LEN..]);
            res.map_err(|e| {
                proto_err!(conn: "failed to load GO_AWAY frame; err={:?}", e);
                Error::library_go_away(Reason::PROTOCOL_ERROR)
            })?
            .into()
        }
        Kind::PushPromise => header_block!(PushPromise, head, bytes),
        Kind::Priority => {
            if head.stream_id() == 0 {
                // Invalid stream identifier
                proto_err!(conn: "invalid stream ID 0");
                return Err(Error::library_go_away(Reason::PROTOCOL_ERROR));
            }

            match frame::Priority::load(head, &bytes[frame::HEADER_LEN..]) {
                Ok(frame) => frame.into(),
                Err(frame::Error::InvalidDependencyId) => {
                    // A stream cannot depend on itself. An endpoint MUST
                    // treat this as a stream error (Section 5.4.2) of type
                    // `PROTOCOL_ERROR`.
                    let id = head.stream_id();
                    proto_err!(stream: "PRIORITY invalid dependency ID; stream={:?}", id);
                    return Err(Error::library_reset(id, Reason::PROTOCOL_ERROR));
                }
                Err(e) => {
                    proto_err!(conn: "failed to load PRIORITY frame; err={:?};", e);
                    return Err(Error::library_go_away(Reason::PROTOCOL_ERROR));
                }
            }
        }
        Kind::Continuation => {
            let is_end_headers = (head.flag() & 0x4) == 0x4;

            let mut partial = match decoder.partial.take() {
                Some(partial) => partial,
                None => {
                    proto_err!(conn: "received unexpected CONTINUATION frame");
                    return Err(Error::library_go_away(Reason::PROTOCOL_ERROR));
                }
            };

            // The stream identifiers must match
            if partial.frame.stream_id() != head.stream_id() {
                proto_err!(conn: "CONTINUATION frame stream ID does not match previous frame stream ID");
                return Err(Error::library_go_away(Reason::PROTOCOL_ERROR));
            }

            // Check for CONTINUATION flood
            if is_end_headers {
                partial.continuation_frames_count = 0;
            } else {
                let cnt = partial.continuation_frames_count + 1;
                if cnt > decoder.max_continuation_frames {
                    tracing::debug!(
                        "too_many_continuations, max = {}",
                        decoder.max_continuation_frames
                    );
                    return Err(Error::library_go_away_data(
                        Reason::ENHANCE_YOUR_CALM,
                        "too_many_continuations",
                    ));
                } else {
                    partial.continuation_frames_count = cnt;
                }
            }

            // Extend the buf
            if partial.buf.is_empty() {
                partial.buf = bytes.split_off(frame::HEADER_LEN);
            } else {
                if partial.frame.is_over_size() {
                    // If there was left over bytes previously, they may be
                    // needed to continue decoding, even though we will
                    // be ignoring this frame. This is done to keep the HPACK
                    // decoder state up-to-date.
                    //
                    // Still, we need to be careful, because if a malicious
                    // attacker were to try to send a gigantic string, such
                    // that it fits over multiple header blocks, we could
                    // grow memory uncontrollably again, and that'd be a shame.
                    //
                    // Instead, we use a simple heuristic to determine if
                    // we should continue to ignore decoding, or to tell
                    // the attacker to go away.
                    if partial.buf.len() + bytes.len() > decoder.max_header_list_size {
                        proto_err!(conn: "CONTINUATION frame header block size over ignorable limit");
                        return Err(Error::library_go_away(Reason::COMPRESSION_ERROR));
                    }
                }
                partial.buf.extend_from_slice(&bytes[frame::HEADER_LEN..]);
            }

            match partial.frame.load_hpack(
                &mut partial.buf,
                decoder.max_header_list_size,
                &mut decoder.hpack,
            ) {
                Ok(_) => {}
                Err(frame::Error::Hpack(hpack::DecoderError::NeedMore(_))) if !is_end_headers => {}
                Err(frame::Error::MalformedMessage) => {
                    let id = head.stream_id();
                    proto_err!(stream: "malformed CONTINUATION frame; stream={:?}", id);
                    return Err(Error::library_reset(id, Reason::PROTOCOL_ERROR));
                }
                Err(frame::Error::HeaderListWayTooLarge) => {
                    proto_err!(conn: "decoded CONTINUATION header list size over abuse limit");
                    return Err(Error::library_go_away_data(
                        Reason::ENHANCE_YOUR_CALM,
                        "header_list_way_too_large",
                    ));
                }
                Err(e) => {
                    proto_err!(conn: "failed HPACK decoding; err={:?}", e);
                    return Err(Error::library_go_away(Reason::PROTOCOL_ERROR));
                }
            }

            if is_end_headers {
                partial.frame.into()
            } else {
                decoder.partial = Some(partial);
                return Ok(None);
            }
        }
        Kind::Unknown => {
            // Unknown frames are ignored
            return Ok(None);
        }
    };

    if let Frame::Headers(ref headers) = frame {
        decoder.update_fields_hint(headers.fields().keys_len());
    }

    Ok(Some(frame))
}

impl<T> FramedRead<T>
where
    T: AsyncRead + Unpin,
{
    /// (patch) After `release_idle_buffers`: reads up to `PROBE_LEN` bytes
    /// into a stack buffer, and only once that read is ready allocates the
    /// read buffer again (with the bytes read). A pending probe holds no
    /// buffer. End of stream is left to the next read; an error is returned.
    #[cold]
    fn poll_probe(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut probe = [0u8; PROBE_LEN];
        let mut probe = ReadBuf::new(&mut probe);
        ready!(Pin::new(self.inner.get_mut()).poll_read(cx, &mut probe))?;
        let buf = self.inner.read_buffer_mut();
        buf.reserve(RELEASED_READ_CAPACITY);
        buf.extend_from_slice(probe.filled());
        self.read_released = false;
        Poll::Ready(Ok(()))
    }
}

impl<T> Stream for FramedRead<T>
where
    T: AsyncRead + Unpin,
{
    type Item = Result<Frame, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let span = tracing::trace_span!("FramedRead::poll_next");
        let _e = span.enter();
        if self.read_released {
            if let Err(e) = ready!(self.poll_probe(cx)) {
                return Poll::Ready(Some(Err(map_err(e))));
            }
        }
        loop {
            tracing::trace!("poll");
            let bytes = match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => return Poll::Ready(Some(Err(map_err(e)))),
                None => return Poll::Ready(None),
            };

            tracing::trace!(read.bytes = bytes.len());
            if let Some(frame) = self.decoder.decode(bytes)? {
                tracing::debug!(?frame, "received");
                return Poll::Ready(Some(Ok(frame)));
            }
        }
    }
}

fn map_err(err: io::Error) -> Error {
    if let io::ErrorKind::InvalidData = err.kind() {
        if let Some(custom) = err.get_ref() {
            if custom.is::<FrameTooBig>() {
                return Error::library_go_away(Reason::FRAME_SIZE_ERROR);
            }
        }
    }
    err.into()
}

// ===== impl Continuable =====

impl Continuable {
    fn stream_id(&self) -> frame::StreamId {
        match *self {
            Continuable::Headers(ref h) => h.stream_id(),
            Continuable::PushPromise(ref p) => p.stream_id(),
        }
    }

    fn is_over_size(&self) -> bool {
        match *self {
            Continuable::Headers(ref h) => h.is_over_size(),
            Continuable::PushPromise(ref p) => p.is_over_size(),
        }
    }

    fn load_hpack(
        &mut self,
        src: &mut BytesMut,
        max_header_list_size: usize,
        decoder: &mut hpack::Decoder,
    ) -> Result<(), frame::Error> {
        match *self {
            Continuable::Headers(ref mut h) => h.load_hpack(src, max_header_list_size, decoder),
            Continuable::PushPromise(ref mut p) => p.load_hpack(src, max_header_list_size, decoder),
        }
    }
}

impl<T> From<Continuable> for Frame<T> {
    fn from(cont: Continuable) -> Self {
        match cont {
            Continuable::Headers(mut headers) => {
                headers.set_end_headers();
                headers.into()
            }
            Continuable::PushPromise(mut push) => {
                push.set_end_headers();
                push.into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use http::HeaderMap;

    fn headers_frame(stream_id: u32, fields: usize) -> BytesMut {
        let mut block = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
        for i in 0..fields {
            let name = format!("x-h-{i}");
            block.push(0x00); // literal without indexing, new name
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.extend_from_slice(&[1, b'v']);
        }
        let mut frame = BytesMut::new();
        frame.put_uint(block.len() as u64, 3);
        frame.put_u8(0x01); // HEADERS
        frame.put_u8(0x04); // END_HEADERS
        frame.put_u32(stream_id);
        frame.extend_from_slice(&block);
        frame
    }

    fn decode_fields(decoder: &mut FrameDecoder, stream_id: u32, fields: usize) -> HeaderMap {
        match decode_frame(decoder, headers_frame(stream_id, fields)) {
            Ok(Some(Frame::Headers(headers))) => headers.into_fields(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn header_block_reserves_recent_field_count() {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE as usize);
        // (patch) Room for the fields a proxy adds, even before any hint.
        assert!(decode_fields(&mut decoder, 1, 0).capacity() >= FIELDS_HEADROOM);

        for id in (3..40).step_by(2) {
            decode_fields(&mut decoder, id, 20);
        }
        assert_eq!(decoder.fields_hint, 20);
        // Reserved up front, before a single field was decoded into it.
        assert!(decode_fields(&mut decoder, 41, 0).capacity() >= 20 + FIELDS_HEADROOM);

        for id in (43..80).step_by(2) {
            decode_fields(&mut decoder, id, 1000);
        }
        assert_eq!(decoder.fields_hint, MAX_FIELDS_HINT);
    }
}

#[cfg(test)]
mod frame_splitter_tests {
    // (patch) The splitter cuts what tokio-util's length-delimited codec cut.
    use super::{map_err, FrameSplitter};
    use crate::frame::Reason;
    use crate::proto::Error;
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    fn frame(payload: usize) -> Vec<u8> {
        let mut f = vec![(payload >> 16) as u8, (payload >> 8) as u8, payload as u8];
        f.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    #[test]
    fn cuts_whole_frames_across_reads() {
        let mut splitter = FrameSplitter::new(16_384);
        let mut wire = frame(0);
        wire.extend(frame(10));
        wire.extend(frame(300));
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        // One byte at a time: every partial state is visited.
        for byte in wire.iter() {
            src.extend_from_slice(&[*byte]);
            while let Some(f) = splitter.decode(&mut src).unwrap() {
                out.push(f);
            }
        }
        let lens: Vec<usize> = out.iter().map(|f| f.len()).collect();
        assert_eq!(lens, [9, 19, 309]);
        assert_eq!(&out[2][..], &frame(300)[..]);
        assert!(src.is_empty());
    }

    #[test]
    fn an_oversized_payload_is_a_frame_size_error() {
        let mut splitter = FrameSplitter::new(16_384);
        let mut src = BytesMut::from(&frame(16_384)[..3]);
        assert!(splitter.decode(&mut src).unwrap().is_none());
        let mut splitter = FrameSplitter::new(16_384);
        let mut src = BytesMut::from(&frame(16_385)[..3]);
        let err = splitter.decode(&mut src).unwrap_err();
        assert!(matches!(
            map_err(err),
            Error::GoAway(_, Reason::FRAME_SIZE_ERROR, _)
        ));
    }

    #[test]
    fn a_lower_maximum_applies_from_the_next_frame() {
        let mut splitter = FrameSplitter::new(20_000);
        let wire = frame(18_000);
        let mut src = BytesMut::from(&wire[..100]);
        assert!(splitter.decode(&mut src).unwrap().is_none());
        splitter.max_payload = 16_384;
        src.extend_from_slice(&wire[100..]);
        assert_eq!(splitter.decode(&mut src).unwrap().unwrap().len(), 18_009);
        src.extend_from_slice(&frame(18_000)[..3]);
        assert!(splitter.decode(&mut src).is_err());
    }
}
