//! Why a request could not be proxied, worded like upstream's Go errors (the text is the body of
//! the 502 the client sees).

use std::net::SocketAddr;

/// A failure to get a response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// TCP connect failed (refused, unreachable, …).
    #[error("dial tcp {addr}: {reason}", addr = .0, reason = go_os_error(.1))]
    Dial(SocketAddr, #[source] std::io::Error),
    /// Every dial attempt timed out.
    #[error("dial tcp {0}: i/o timeout")]
    DialTimeout(SocketAddr),
    /// The TLS handshake on a new connection failed (system-internal TLS): the text is the
    /// verifier's own message when it gave one (e.g. upstream's `san "…" does not have a
    /// matching name in […]`), else `tls: <reason>`.
    #[error("{1}")]
    Tls(SocketAddr, String),
    /// The HTTP handshake on a new connection failed.
    #[error("{text}", text = describe_hyper(.1))]
    Handshake(SocketAddr, #[source] hyper::Error),
    /// The exchange failed before a response head arrived.
    #[error("{text}", text = describe_hyper(.0))]
    Exchange(#[source] hyper::Error),
    /// A pooled HTTP/1.1 connection refused a request handed to it (it was not ready for
    /// one; checkouts hand out ready connections only, so this is not expected).
    #[error("upstream connection not ready for a request")]
    NotReady,
    /// The HTTP/2 connection could not be set up.
    #[error("http2 error: {1}")]
    H2Handshake(SocketAddr, #[source] h2::Error),
    /// The HTTP/2 exchange failed (hyper's wording).
    #[error("http2 error: {0}")]
    H2Exchange(#[source] h2::Error),
    /// The upstream switched to a protocol the client did not ask for.
    #[error("backend tried to switch protocol {got:?} when {requested:?} was requested")]
    UpgradeMismatch {
        /// Requested `Upgrade`.
        requested: String,
        /// Upstream's `Upgrade`.
        got: String,
    },
    /// The request could not be turned into an upstream request.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// A `CONNECT` request: never forwarded (upstream's answer, a `502` that closes the
    /// connection).
    #[error("client sent unsupported CONNECT request")]
    UnsupportedConnect,
}

impl ProxyError {
    /// A [`ProxyError::Tls`] from the handshake's I/O error.
    pub fn tls(addr: SocketAddr, error: &std::io::Error) -> ProxyError {
        let text = match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
                other.0.to_string()
            }
            Some(e) => format!("tls: {e}"),
            None => format!("tls: {error}"),
        };
        ProxyError::Tls(addr, text)
    }
}

/// Go spells OS errors as `connect: <strerror in lower case>`.
fn go_os_error(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_owned(),
        std::io::ErrorKind::TimedOut => "i/o timeout".to_owned(),
        _ => {
            let text = error.to_string();
            // Strip Rust's " (os error N)" suffix; keep the OS wording.
            let text = text.split(" (os error").next().unwrap_or(&text);
            format!("connect: {}", text.to_lowercase())
        }
    }
}

fn describe_hyper(error: &hyper::Error) -> String {
    if error.is_incomplete_message() {
        return "EOF".to_owned();
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text.contains("reset by peer") {
            return "read: connection reset by peer".to_owned();
        }
        text.push_str(": ");
        text.push_str(&cause_text);
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_reads_like_go() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let e = ProxyError::Dial(
            addr,
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(
            e.to_string(),
            "dial tcp 127.0.0.1:8080: connect: connection refused"
        );
    }
}
