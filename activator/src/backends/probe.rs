//! The queue-proxy health probe (spec §5.4): `GET http://<dest>/healthz` with
//! `K-Network-Probe: queue` and `User-Agent: Knative-Activator-Probe` (plus `Host` and
//! `K-Passthrough-Lb: true` in passthrough-LB mode). Success ⇔ status 200 and body exactly
//! `queue`; "not mesh" ⇔ an HTTP response whose status is neither 502 nor 503.
//!
//! Each probe uses its own HTTP/1 connection (closed afterwards), so a probe that is abandoned at
//! its round's deadline leaves nothing behind.

use std::fmt::Write as _;
use std::future::Future;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use knative_common::headers::{
    ACTIVATOR_PROBE_UA_PREFIX, K_NETWORK_PROBE, K_PASSTHROUGH_LB, PROBE_QUEUE,
};
use md5::{Digest, Md5};
use tokio::net::TcpStream;

/// The probe path (`network.ProbePath`).
pub const PROBE_PATH: &str = "/healthz";

/// Largest probe response body read (a healthy one is 5 bytes).
const MAX_PROBE_BODY: usize = 4096;

/// Longest Kubernetes object name (`kmeta.ChildName`'s `longest`).
const MAX_NAME_LEN: usize = 63;

/// The outcome of one probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeResult {
    /// Status 200 and body `queue`.
    pub ok: bool,
    /// An HTTP response was received whose status is neither 502 nor 503 (so the failure cannot
    /// be a mesh's doing).
    pub not_mesh: bool,
    /// Why it failed (`None` when `ok`).
    pub error: Option<String>,
}

impl ProbeResult {
    /// A successful probe.
    pub fn success() -> Self {
        ProbeResult {
            ok: true,
            not_mesh: true,
            error: None,
        }
    }

    /// A failure without HTTP response (dial error, timeout, reset…): possibly mesh.
    pub fn transport_error(error: impl Into<String>) -> Self {
        ProbeResult {
            ok: false,
            not_mesh: false,
            error: Some(error.into()),
        }
    }

    /// The deadline of the probe (round) passed.
    pub fn timed_out() -> Self {
        ProbeResult::transport_error("probe timed out (context deadline exceeded)")
    }
}

/// Probes one dest. The caller bounds the time (the future may be dropped at any point).
pub trait Prober: Send + Sync + 'static {
    /// Probes `dest` (`ip:port`); `passthrough_host` is `Some(<rev>-private.<ns>)` in
    /// passthrough-LB mode.
    fn probe(
        &self,
        dest: &str,
        passthrough_host: Option<&str>,
    ) -> impl Future<Output = ProbeResult> + Send;
}

/// The real prober: HTTP/1 over a fresh TCP connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpProber;

impl Prober for HttpProber {
    fn probe(
        &self,
        dest: &str,
        passthrough_host: Option<&str>,
    ) -> impl Future<Output = ProbeResult> + Send {
        probe_queue(dest, passthrough_host)
    }
}

/// Sends the queue-proxy probe to `dest` and classifies the answer (spec §5.4).
pub async fn probe_queue(dest: &str, passthrough_host: Option<&str>) -> ProbeResult {
    let (status, body) = match exchange(dest, passthrough_host).await {
        Ok(answer) => answer,
        Err(error) => return ProbeResult::transport_error(error),
    };
    let not_mesh = status != StatusCode::BAD_GATEWAY && status != StatusCode::SERVICE_UNAVAILABLE;
    if status != StatusCode::OK {
        return ProbeResult {
            ok: false,
            not_mesh,
            error: Some(format!(
                "unexpected status code: want [200], got {}",
                status.as_u16()
            )),
        };
    }
    match body {
        Ok(body) if body.as_ref() == PROBE_QUEUE.as_bytes() => ProbeResult::success(),
        Ok(body) => ProbeResult {
            ok: false,
            not_mesh,
            error: Some(format!(
                "unexpected body: want {PROBE_QUEUE:?}, got {:?}",
                String::from_utf8_lossy(&body[..body.len().min(64)])
            )),
        },
        Err(error) => ProbeResult {
            ok: false,
            not_mesh,
            error: Some(error),
        },
    }
}

type Answer = (StatusCode, Result<Bytes, String>);

/// One request on a fresh connection: the status, and the body when the status is 200.
async fn exchange(dest: &str, passthrough_host: Option<&str>) -> Result<Answer, String> {
    let host = HeaderValue::from_str(passthrough_host.unwrap_or(dest))
        .map_err(|_| format!("invalid host {dest:?}"))?;
    let mut request = Request::get(PROBE_PATH)
        .header(HOST, host)
        .header(K_NETWORK_PROBE, PROBE_QUEUE)
        .header(USER_AGENT, ACTIVATOR_PROBE_UA_PREFIX)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    if passthrough_host.is_some() {
        request
            .headers_mut()
            .insert(K_PASSTHROUGH_LB, HeaderValue::from_static("true"));
    }
    let stream = TcpStream::connect(dest)
        .await
        .map_err(|e| format!("dial tcp {dest}: {e}"))?;
    let _ = stream.set_nodelay(true);
    // Canonical header case (`K-Network-Probe`, `User-Agent`), as Go's prober writes it.
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let answer = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status != StatusCode::OK {
            return Ok((status, Ok(Bytes::new())));
        }
        let body = Limited::new(response.into_body(), MAX_PROBE_BODY)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .map_err(|e| format!("reading the probe body: {e}"));
        Ok((status, body))
    };
    tokio::pin!(connection);
    tokio::pin!(answer);
    tokio::select! {
        result = &mut answer => result,
        closed = &mut connection => match closed {
            Err(error) => Err(error.to_string()),
            // The connection ended cleanly: whatever it delivered is buffered in `answer`.
            Ok(()) => answer.await,
        },
    }
}

/// The private Service of a revision (`names.PrivateService` = `kmeta.ChildName(rev,
/// "-private")`): `<rev>-private`, or, when that exceeds 63 characters, the first 23 characters of
/// the name, the lowercase hex MD5 of the whole name, then `-private`.
pub fn private_service_name(revision: &str) -> String {
    const SUFFIX: &str = "-private";
    if revision.len() + SUFFIX.len() <= MAX_NAME_LEN {
        return format!("{revision}{SUFFIX}");
    }
    let head_len = MAX_NAME_LEN - SUFFIX.len() - 32;
    // Revision names are ASCII; fall back to the nearest char boundary otherwise.
    let mut cut = head_len.min(revision.len());
    while !revision.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Md5::digest(revision.as_bytes());
    let mut name = String::with_capacity(MAX_NAME_LEN);
    name.push_str(&revision[..cut]);
    for byte in digest {
        let _ = write!(name, "{byte:02x}");
    }
    name.push_str(SUFFIX);
    name
}
