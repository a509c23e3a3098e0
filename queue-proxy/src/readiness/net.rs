//! Connection helpers shared by the probe kinds, and the TCP attempt itself.

use std::time::Duration;

use hyper::body::Body;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// `User-Agent` of every probe request. Upstream leaves the Kubernetes version empty (spec §4.3).
pub(crate) const PROBE_USER_AGENT: &str = "kube-probe//";

/// `host:port`, with brackets around IPv6 literals.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Opens a TCP connection to `host:port` (a name is resolved first).
pub(crate) async fn dial(host: &str, port: u16) -> Result<TcpStream, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("dial tcp {}: {e}", join_host_port(host, port)))
}

/// One TCP attempt: connect within `timeout`, then close.
pub(crate) async fn tcp_attempt(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, dial(host, port)).await {
        Ok(Ok(stream)) => {
            drop(stream);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "dial tcp {}: i/o timeout after {timeout:?}",
            join_host_port(host, port)
        )),
    }
}

/// Aborts a spawned connection driver when dropped, so that an attempt that is abandoned (for
/// example on timeout) never leaves a connection behind.
pub(crate) struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Spawns `future` (a hyper connection driver) on the current runtime.
    pub(crate) fn spawn<F>(future: F) -> Self
    where
        F: std::future::Future + Send + 'static,
    {
        AbortOnDrop(tokio::spawn(async move {
            let _ = future.await;
        }))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// HTTP/2 with prior knowledge over an already connected plaintext socket.
pub(crate) async fn h2c_handshake<B>(
    stream: TcpStream,
) -> Result<(http2::SendRequest<B>, AbortOnDrop), String>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("h2c handshake failed: {e}"))?;
    Ok((sender, AbortOnDrop::spawn(connection)))
}
