//! Connection-memory checks (issue 17): many idle keep-alive connections (HTTP/1.1, or h2c with
//! prior knowledge), a burst of concurrent ones, and the resident set of the process serving
//! them, polled until it settles.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `VmRSS` of `pid` in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Sends `request` on `stream` and reads one whole `200` response (`Content-Length` framed).
pub async fn roundtrip(stream: &mut TcpStream, request: &[u8]) {
    stream.write_all(request).await.expect("write request");
    read_response(stream).await;
}

async fn read_response(stream: &mut TcpStream) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(
            n > 0,
            "closed before the response ended: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("content-length"))
            .expect("a Content-Length response");
        if buf.len() >= end + 4 + length {
            return;
        }
    }
}

/// Opens `n` connections one after another, each sending `request` once and reading the
/// response; they stay open (idle) while the returned streams live.
pub async fn open_idle(addr: SocketAddr, n: usize, request: &[u8]) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        roundtrip(&mut stream, request).await;
        streams.push(stream);
    }
    streams
}

/// `n` connections with one request each, all in flight together, all answered, then closed.
pub async fn burst(addr: SocketAddr, n: usize, request: &[u8]) {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("write request");
        streams.push(stream);
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| tokio::spawn(async move { read_response(&mut s).await }))
        .collect();
    for task in tasks {
        task.await.expect("burst response");
    }
}

/// Polls `pid`'s resident set every 100 ms until `ok(kib)` holds or `deadline` passes; returns
/// the last reading and whether it held.
pub async fn wait_rss(pid: u32, deadline: Duration, ok: impl Fn(u64) -> bool) -> (u64, bool) {
    let until = Instant::now() + deadline;
    loop {
        let rss = vm_rss_kib(pid);
        if ok(rss) {
            return (rss, true);
        }
        if Instant::now() >= until {
            return (rss, false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The request each connection of [`assert_idle_connections_small`] sends.
#[derive(Clone, Copy, Debug)]
pub enum Wire<'a> {
    /// An HTTP/1.1 keep-alive request (whole, head and body), answered `200` with a
    /// `Content-Length`.
    H1(&'a [u8]),
    /// h2c with prior knowledge: `GET /` with these header fields besides the pseudo-header
    /// fields (`:authority` is `127.0.0.1`), answered `200`.
    H2c(&'a [(&'a str, &'a str)]),
}

/// A client connection of the memory checks.
#[derive(Debug)]
pub enum IdleConn {
    H1(TcpStream),
    H2c(H2cConn),
}

impl Wire<'_> {
    fn protocol(&self) -> &'static str {
        match self {
            Wire::H1(_) => "HTTP/1.1",
            Wire::H2c(_) => "h2c",
        }
    }
}

impl IdleConn {
    async fn open(addr: SocketAddr, wire: Wire<'_>) -> IdleConn {
        let mut conn = match wire {
            Wire::H1(_) => IdleConn::H1(TcpStream::connect(addr).await.expect("connect")),
            Wire::H2c(_) => IdleConn::H2c(H2cConn::connect(addr).await),
        };
        conn.roundtrip(wire).await;
        conn
    }

    async fn roundtrip(&mut self, wire: Wire<'_>) {
        match (self, wire) {
            (IdleConn::H1(stream), Wire::H1(request)) => roundtrip(stream, request).await,
            (IdleConn::H2c(conn), Wire::H2c(headers)) => conn.get(headers).await,
            _ => panic!("a connection of another protocol"),
        }
    }
}

/// Opens `idle` keep-alive connections to `addr` (one request each, as `wire` says), waits up
/// to `settle` for `pid`'s resident set to grow by at most `limit_kib` per connection, asserts
/// it did, checks that every 25th connection still serves a request, and returns the
/// connections.
pub async fn assert_idle_connections_small(
    addr: SocketAddr,
    pid: u32,
    wire: Wire<'_>,
    idle: usize,
    limit_kib: u64,
    settle: Duration,
) -> Vec<IdleConn> {
    // Warm-up: pool, caches.
    for _ in 0..10 {
        drop(IdleConn::open(addr, wire).await);
    }
    let before = vm_rss_kib(pid);
    let mut conns = Vec::with_capacity(idle);
    for _ in 0..idle {
        conns.push(IdleConn::open(addr, wire).await);
    }
    let limit = before + limit_kib * idle as u64;
    let (rss, settled) = wait_rss(pid, settle, |rss| rss <= limit).await;
    let per_connection = rss.saturating_sub(before) as f64 / idle as f64;
    let protocol = wire.protocol();
    println!(
        "{idle} idle {protocol} connections: VmRSS {before} -> {rss} KiB, {per_connection:.1} KiB each"
    );
    assert!(
        settled,
        "{idle} idle keep-alive {protocol} connections: {per_connection:.1} KiB each after \
         {settle:?} (limit {limit_kib} KiB)"
    );
    // Idle connections (parked, or with their buffers given back) serve their next request.
    for conn in conns.iter_mut().step_by(25) {
        conn.roundtrip(wire).await;
    }
    conns
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_DATA: u8 = 0;
const H2_HEADERS: u8 = 1;
const H2_RST_STREAM: u8 = 3;
const H2_SETTINGS: u8 = 4;
const H2_GOAWAY: u8 = 7;
const H2_END_STREAM: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;
const H2_ACK: u8 = 0x1;

fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An h2c client connection (prior knowledge) sending one `GET /` at a time, as
/// benches/conn_memory.py does: header fields as literals without indexing, so the server's
/// HPACK table stays empty.
#[derive(Debug)]
pub struct H2cConn {
    stream: TcpStream,
    next_id: u32,
    buf: Vec<u8>,
}

impl H2cConn {
    /// Connects and sends the preface and an empty SETTINGS frame.
    pub async fn connect(addr: SocketAddr) -> H2cConn {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut out = H2_PREFACE.to_vec();
        h2_frame(&mut out, H2_SETTINGS, 0, 0, &[]);
        stream.write_all(&out).await.expect("write preface");
        H2cConn {
            stream,
            next_id: 1,
            buf: Vec::new(),
        }
    }

    /// Sends `GET /` with `headers` on a new stream and reads frames until that stream's
    /// `200` response has ended (acknowledging the server's SETTINGS on the way).
    pub async fn get(&mut self, headers: &[(&str, &str)]) {
        let id = self.next_id;
        self.next_id += 2;
        // :method GET, :scheme http, :path / (static table), :authority as a literal.
        let mut block = vec![0x82, 0x86, 0x84, 0x01, 9];
        block.extend_from_slice(b"127.0.0.1");
        for (name, value) in headers {
            assert!(name.len() < 127 && value.len() < 127);
            block.extend_from_slice(&[0x00, name.len() as u8]);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::new();
        h2_frame(
            &mut out,
            H2_HEADERS,
            H2_END_STREAM | H2_END_HEADERS,
            id,
            &block,
        );
        self.stream.write_all(&out).await.expect("write request");
        let mut chunk = [0u8; 4096];
        loop {
            while self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() < 9 + len {
                    break;
                }
                let frame: Vec<u8> = self.buf.drain(..9 + len).collect();
                let (kind, flags) = (frame[3], frame[4]);
                let stream =
                    u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & !(1 << 31);
                let payload = &frame[9..];
                match kind {
                    H2_SETTINGS if flags & H2_ACK == 0 => {
                        let mut ack = Vec::new();
                        h2_frame(&mut ack, H2_SETTINGS, H2_ACK, 0, &[]);
                        self.stream
                            .write_all(&ack)
                            .await
                            .expect("write SETTINGS ack");
                    }
                    H2_RST_STREAM | H2_GOAWAY => {
                        panic!("frame type {kind} on stream {stream}: {payload:?}")
                    }
                    H2_HEADERS if stream == id => {
                        // `:status: 200` is entry 8 of the static table: 0x88.
                        assert_eq!(
                            payload.first(),
                            Some(&0x88),
                            "not a 200 response: {payload:?}"
                        );
                        if flags & H2_END_STREAM != 0 {
                            return;
                        }
                    }
                    H2_DATA if stream == id && flags & H2_END_STREAM != 0 => return,
                    _ => {}
                }
            }
            let n = self.stream.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "closed before the response on stream {id} ended");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Sends a burst of `n` concurrent connections to `addr` and asserts that `pid`'s resident set
/// returns within `limit_kib` of its idle figure within `settle`.
pub async fn assert_memory_goes_back(
    addr: SocketAddr,
    pid: u32,
    request: &[u8],
    n: usize,
    limit_kib: u64,
    settle: Duration,
) {
    drop(open_idle(addr, 10, request).await);
    let idle_rss = vm_rss_kib(pid);
    burst(addr, n, request).await;
    let peak = vm_rss_kib(pid);
    let limit = idle_rss + limit_kib;
    let (rss, settled) = wait_rss(pid, settle, |rss| rss <= limit).await;
    println!("burst of {n}: VmRSS idle {idle_rss} KiB, peak {peak} KiB, then {rss} KiB");
    assert!(
        settled,
        "{rss} KiB {settle:?} after a burst of {n} connections (idle {idle_rss} KiB, limit {limit} KiB)"
    );
}
