//! Connection-memory checks (issue 17): many idle keep-alive HTTP/1.1 connections, a burst of
//! concurrent ones, and the resident set of the process serving them, polled until it settles.

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

/// Opens `idle` keep-alive connections to `addr` (one `request` each), waits up to `settle` for
/// `pid`'s resident set to grow by at most `limit_kib` per connection, asserts it did, checks
/// that every 25th connection still serves a request, and returns the connections.
pub async fn assert_idle_connections_small(
    addr: SocketAddr,
    pid: u32,
    request: &[u8],
    idle: usize,
    limit_kib: u64,
    settle: Duration,
) -> Vec<TcpStream> {
    drop(open_idle(addr, 10, request).await); // warm-up: pool, caches
    let before = vm_rss_kib(pid);
    let mut streams = open_idle(addr, idle, request).await;
    let limit = before + limit_kib * idle as u64;
    let (rss, settled) = wait_rss(pid, settle, |rss| rss <= limit).await;
    let per_connection = rss.saturating_sub(before) as f64 / idle as f64;
    println!("{idle} idle connections: VmRSS {before} -> {rss} KiB, {per_connection:.1} KiB each");
    assert!(
        settled,
        "{idle} idle keep-alive connections: {per_connection:.1} KiB each after {settle:?} \
         (limit {limit_kib} KiB)"
    );
    // Parked connections serve their next request as before.
    for stream in streams.iter_mut().step_by(25) {
        roundtrip(stream, request).await;
    }
    streams
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
