//! One `httpGet` probe attempt (spec §4.3).
//!
//! A fresh connection per request (no keep-alive), `GET` with `User-Agent: kube-probe//` and the
//! probe's own headers, redirects followed for at most 10 requests in all, and a final status in
//! 200–399 counting as ready. With HTTP/2 auto-detection on, every attempt first asks over h2c
//! prior knowledge and falls back to HTTP/1.1.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::config::HttpAction;
use super::net::{dial, h2c_handshake, join_host_port, AbortOnDrop, PROBE_USER_AGENT};
use super::tls::TlsClient;

/// Go's client gives up when a redirect would make the 11th request.
const MAX_REQUESTS: usize = 10;

/// Headers from `httpHeaders` that are not sent as given: Go's client writes its own `Host` and
/// the first `User-Agent`, and connection-level headers are managed by the transport.
const SKIPPED_CUSTOM_HEADERS: [HeaderName; 9] = [
    header::HOST,
    header::USER_AGENT,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TRAILER,
    header::CONNECTION,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Redirect-related request headers that are not forwarded to a different host.
const SENSITIVE_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::WWW_AUTHENTICATE,
    header::COOKIE,
    HeaderName::from_static("cookie2"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    /// HTTP/1.1, over TLS when the scheme is `https`.
    Http1,
    /// HTTP/2 with prior knowledge over plaintext, whatever the scheme says (as upstream's h2c
    /// transport does).
    H2c,
}

/// Where one request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// Lower-cased scheme.
    pub scheme: String,
    /// Host to dial, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `Host` header / `:authority`.
    pub authority: String,
    /// Always starts with `/`; already percent-encoded where needed.
    pub path_and_query: String,
}

impl Target {
    /// `<scheme>://<host>:<port>/<path without one leading slash>`, query kept, fragment dropped.
    pub(crate) fn from_action(action: &HttpAction) -> Target {
        let path = action.path.strip_prefix('/').unwrap_or(&action.path);
        let host = action
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Target {
            scheme: action.scheme.clone(),
            authority: join_host_port(&host, action.port),
            host,
            port: action.port,
            path_and_query: escape(&format!("/{path}")),
        }
    }

    fn url(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme, self.authority, self.path_and_query
        )
    }

    /// Resolves a `Location` header against this target.
    pub(crate) fn resolve(&self, location: &str) -> Result<Target, String> {
        let location = location.split('#').next().unwrap_or_default();
        if location.starts_with("//") {
            return Target::absolute(&format!("{}:{location}", self.scheme));
        }
        if has_scheme(location) {
            return Target::absolute(location);
        }
        let base = self.path_and_query.split('?').next().unwrap_or_default();
        let path_and_query = if location.is_empty() {
            self.path_and_query.clone()
        } else if location.starts_with('/') {
            location.to_owned()
        } else if location.starts_with('?') {
            format!("{base}{location}")
        } else {
            let dir = base.rfind('/').map_or("/", |i| &base[..=i]);
            format!("{dir}{location}")
        };
        Ok(Target {
            path_and_query: escape(&path_and_query),
            ..self.clone()
        })
    }

    fn absolute(url: &str) -> Result<Target, String> {
        let uri: http::Uri = escape(url)
            .parse()
            .map_err(|e| format!("failed to parse Location header {url:?}: {e}"))?;
        let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        let authority = uri
            .authority()
            .ok_or_else(|| format!("failed to parse Location header {url:?}: no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let default_port = if scheme == "https" { 443 } else { 80 };
        let authority_text = authority.as_str();
        let authority_text = authority_text
            .rsplit_once('@')
            .map_or(authority_text, |(_, a)| a);
        Ok(Target {
            port: authority.port_u16().unwrap_or(default_port),
            authority: authority_text.to_owned(),
            host,
            scheme,
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// `true` when `s` starts with a URI scheme followed by `:`.
fn has_scheme(s: &str) -> bool {
    match s.find(':') {
        Some(i) if i > 0 => {
            s.as_bytes()[0].is_ascii_alphabetic()
                && s[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        }
        _ => false,
    }
}

/// Drops a fragment and percent-encodes bytes that may not appear in a request target.
fn escape(s: &str) -> String {
    let s = s.split('#').next().unwrap_or_default();
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b <= b' ' || b >= 0x7f || b"\"<>\\^`{|}".contains(&b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// The probe's `httpHeaders` as a header map (appending, so repeated names keep all values).
pub(crate) fn custom_headers(headers: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid probe header field name {name:?}"))?;
        if SKIPPED_CUSTOM_HEADERS.contains(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| format!("invalid probe header field value for {name}"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn is_ready(status: StatusCode) -> bool {
    (200..400).contains(&status.as_u16())
}

fn not_ready(status: StatusCode) -> String {
    format!(
        "HTTP probe did not respond Ready, got status code: {}",
        status.as_u16()
    )
}

/// One attempt of an `httpGet` probe; each request it makes gets the whole `timeout`.
pub(crate) async fn attempt(
    action: &HttpAction,
    autodetect_h2: bool,
    timeout: Duration,
    tls: &TlsClient,
) -> Result<(), String> {
    let target = Target::from_action(action);
    let custom = custom_headers(&action.headers)?;
    if !autodetect_h2 {
        let status = request(Proto::Http1, &target, &custom, timeout, tls, true).await?;
        return if is_ready(status) {
            Ok(())
        } else {
            Err(not_ready(status))
        };
    }
    // Detection requests carry only the User-Agent.
    let plain = HeaderMap::new();
    if let Ok(status) = request(Proto::H2c, &target, &plain, timeout, tls, false).await {
        if is_ready(status) {
            let status = request(Proto::H2c, &target, &custom, timeout, tls, true).await?;
            return if is_ready(status) {
                Ok(())
            } else {
                Err(not_ready(status))
            };
        }
    }
    // Upstream treats a ready HTTP/1.1 answer here as the attempt's success (spec §4.3 quirk).
    match request(Proto::Http1, &target, &plain, timeout, tls, false).await {
        Ok(status) if is_ready(status) => Ok(()),
        Ok(status) => Err(format!(
            "failed to run HTTP protocol probe with error: {}",
            not_ready(status)
        )),
        Err(e) => Err(format!("failed to run HTTP protocol probe with error: {e}")),
    }
}

/// Sends `GET` (following redirects) and returns the final status. With `drain`, the final body
/// is read and discarded within what is left of `timeout`; errors while doing so do not matter.
pub(crate) async fn request(
    proto: Proto,
    target: &Target,
    headers: &HeaderMap,
    timeout: Duration,
    tls: &TlsClient,
    drain: bool,
) -> Result<StatusCode, String> {
    let deadline = Instant::now() + timeout;
    let (response, connection) =
        match tokio::time::timeout_at(deadline, fetch(proto, target, headers, tls)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(format!(
                    "Get \"{}\": timeout ({timeout:?}) exceeded while awaiting headers",
                    target.url()
                ))
            }
        };
    let status = response.status();
    if drain {
        let mut body = response.into_body();
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    }
    drop(connection);
    Ok(status)
}

/// Follows redirects the way Go's client does for a `GET`.
async fn fetch(
    proto: Proto,
    start: &Target,
    headers: &HeaderMap,
    tls: &TlsClient,
) -> Result<(Response<Incoming>, AbortOnDrop), String> {
    let mut target = start.clone();
    let mut headers = headers.clone();
    let mut requests = 0;
    loop {
        requests += 1;
        let (response, connection) = send_once(proto, &target, &headers, tls)
            .await
            .map_err(|e| format!("Get \"{}\": {e}", target.url()))?;
        let status = response.status();
        let follows = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .filter(|l| follows && !l.is_empty());
        let Some(location) = location else {
            return Ok((response, connection));
        };
        if requests >= MAX_REQUESTS {
            return Err(format!(
                "Get \"{}\": stopped after {MAX_REQUESTS} redirects",
                target.url()
            ));
        }
        let next = target
            .resolve(&location)
            .map_err(|e| format!("Get \"{}\": {e}", target.url()))?;
        if next.host != target.host {
            for name in &SENSITIVE_HEADERS {
                headers.remove(name);
            }
        }
        target = next;
    }
}

fn build_request(
    proto: Proto,
    target: &Target,
    headers: &HeaderMap,
) -> Result<Request<Empty<Bytes>>, String> {
    let builder = Request::builder().method(Method::GET);
    let builder = match proto {
        Proto::Http1 => builder
            .uri(target.path_and_query.as_str())
            .header(header::HOST, target.authority.as_str())
            .header(header::CONNECTION, "close"),
        Proto::H2c => builder.uri(target.url()),
    };
    let mut request = builder
        .body(Empty::new())
        .map_err(|e| format!("error constructing probe request: {e}"))?;
    let map = request.headers_mut();
    map.insert(
        header::USER_AGENT,
        HeaderValue::from_static(PROBE_USER_AGENT),
    );
    for (name, value) in headers {
        map.append(name, value.clone());
    }
    Ok(request)
}

async fn send_once(
    proto: Proto,
    target: &Target,
    headers: &HeaderMap,
    tls: &TlsClient,
) -> Result<(Response<Incoming>, AbortOnDrop), String> {
    let https = match target.scheme.as_str() {
        "http" => false,
        "https" => true,
        other => return Err(format!("unsupported protocol scheme {other:?}")),
    };
    let request = build_request(proto, target, headers)?;
    let stream = dial(&target.host, target.port).await?;
    match proto {
        Proto::H2c => {
            let (mut sender, connection) = h2c_handshake(stream).await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("h2c request failed: {e}"))?;
            Ok((response, connection))
        }
        Proto::Http1 if https => {
            let config = tls.config()?;
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| format!("invalid TLS server name {:?}: {e}", target.host))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            http1_send(stream, request).await
        }
        Proto::Http1 => http1_send(stream, request).await,
    }
}

async fn http1_send<IO>(
    io: IO,
    request: Request<Empty<Bytes>>,
) -> Result<(Response<Incoming>, AbortOnDrop), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake failed: {e}"))?;
    let connection = AbortOnDrop::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP/1.1 request failed: {e}"))?;
    Ok((response, connection))
}
