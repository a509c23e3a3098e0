//! Adversarial clients built from raw bytes: HTTP/2 frames written by hand (rapid reset,
//! CONTINUATION floods), slow clients and request-smuggling payloads. Used by the hardening tests
//! of both proxies.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub const DATA: u8 = 0x0;
/// HEADERS.
pub const HEADERS: u8 = 0x1;
/// RST_STREAM.
pub const RST_STREAM: u8 = 0x3;
/// SETTINGS.
pub const SETTINGS: u8 = 0x4;
/// GOAWAY.
pub const GOAWAY: u8 = 0x7;
/// CONTINUATION.
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
/// END_HEADERS.
pub const END_HEADERS: u8 = 0x4;
/// SETTINGS ACK.
pub const ACK: u8 = 0x1;

/// Error code `ENHANCE_YOUR_CALM`.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
/// Error code `CANCEL`.
pub const CANCEL: u32 = 0x8;

/// One frame: 9-byte header then payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The preface plus an empty SETTINGS frame.
pub fn client_start() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// An HPACK block for `GET http://<authority>/` (static-table indexes plus one literal).
pub fn get_block(authority: &str) -> Vec<u8> {
    // :method GET (2), :scheme http (6), :path / (4), :authority literal without indexing (1).
    let mut block = vec![0x82, 0x86, 0x84, 0x01];
    block.push(authority.len() as u8);
    block.extend_from_slice(authority.as_bytes());
    block
}

/// A literal header field without indexing, new name (HPACK §6.2.2), for short names and
/// values up to 126 bytes.
pub fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value);
    out
}

/// The rapid-reset attack (CVE-2023-44487): `streams` requests each cancelled at once.
pub fn rapid_reset(authority: &str, streams: u32) -> Vec<u8> {
    let block = get_block(authority);
    let mut out = client_start();
    for i in 0..streams {
        let id = 2 * i + 1;
        out.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        out.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    out
}

/// The start of a CONTINUATION flood (CVE-2024-27316 family): a HEADERS frame without
/// END_HEADERS; follow it with [`continuation`] frames that never end the block.
pub fn continuation_start(authority: &str) -> Vec<u8> {
    let mut out = client_start();
    out.extend(frame(HEADERS, END_STREAM, 1, &get_block(authority)));
    out
}

/// One CONTINUATION frame of stream 1 carrying `fields` literal headers of ~120 bytes each,
/// without END_HEADERS.
pub fn continuation(fields: usize) -> Vec<u8> {
    let field = literal("x-flood", &[b'a'; 110]);
    let payload: Vec<u8> = std::iter::repeat_n(field, fields).flatten().collect();
    frame(CONTINUATION, 0, 1, &payload)
}

/// A frame read back from the server.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY frame.
    pub fn goaway_code(&self) -> Option<u32> {
        (self.kind == GOAWAY && self.payload.len() >= 8)
            .then(|| u32::from_be_bytes(self.payload[4..8].try_into().unwrap()))
    }

    /// SETTINGS parameters `(id, value)`.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        if self.kind != SETTINGS || self.flags & ACK != 0 {
            return Vec::new();
        }
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

/// Reads frames until the server closes the connection, fails, or `limit` passes; `stop`
/// ends early once it returns true for a frame read. Returns the frames and whether the
/// connection was closed (EOF or error) within `limit`.
pub async fn read_frames(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
    mut stop: impl FnMut(&Frame) -> bool,
) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    let result = tokio::time::timeout(limit, async {
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            let frame = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            let done = stop(&frame);
            frames.push(frame);
            if done {
                return;
            }
        }
    })
    .await;
    (frames, result.is_ok())
}

/// Whether the server closes `stream` (EOF or reset) within `limit`, reading and discarding
/// whatever it sends first.
pub async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A connection that has written `bytes` (and nothing more).
pub async fn connect_and_send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}
