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
