//! One `grpc` probe attempt: `grpc.health.v1.Health/Check` over h2c to `127.0.0.1:<port>`
//! (spec §4.3). Success means the call completed with `grpc-status: 0` and the response status
//! is `SERVING`.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;

use super::net::{dial, h2c_handshake, join_host_port, PROBE_USER_AGENT};

/// Host every gRPC probe dials, whatever the probe says.
const GRPC_HOST: &str = "127.0.0.1";
/// Path of the standard health-checking method.
pub(crate) const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// Largest response body read; a health response is a few bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct HealthCheckRequest {
    /// Service name; empty asks about the server as a whole.
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct HealthCheckResponse {
    /// `ServingStatus`: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `ServingStatus.SERVING`.
pub(crate) const SERVING: i32 = 1;

fn serving_status_name(status: i32) -> String {
    match status {
        0 => "UNKNOWN".to_owned(),
        1 => "SERVING".to_owned(),
        2 => "NOT_SERVING".to_owned(),
        3 => "SERVICE_UNKNOWN".to_owned(),
        other => other.to_string(),
    }
}

fn code_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("Code({code})"), |n| (*n).to_owned())
}

/// Prefixes a message with the 5-byte gRPC frame header (uncompressed, big-endian length).
pub(crate) fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// Reads the single message of a unary response body.
fn unframe(body: &[u8]) -> Result<&[u8], String> {
    let Some((&[flag, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
        return Err("health rpc probe failed: response has no message".to_owned());
    };
    if flag != 0 {
        return Err("health rpc probe failed: compressed response not supported".to_owned());
    }
    let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
    rest.get(..len)
        .ok_or_else(|| "health rpc probe failed: truncated response message".to_owned())
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn status_error(code: u32, headers: &HeaderMap, timeout: Duration) -> String {
    let message = headers
        .get("grpc-message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let rpc = format!("rpc error: code = {} desc = {message}", code_name(code));
    match code {
        12 => format!(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health) {rpc}"
        ),
        4 => format!("health rpc did not complete within {timeout:?}: {rpc}"),
        _ => format!("health rpc probe failed: {rpc}"),
    }
}

/// `grpc-timeout` header value in milliseconds (at most 8 digits).
fn grpc_timeout(timeout: Duration) -> String {
    format!("{}m", timeout.as_millis().clamp(1, 99_999_999))
}

/// One attempt, bounded by `timeout` from connect to the last trailer.
pub(crate) async fn attempt(port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, check(port, service, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(format!("health rpc did not complete within {timeout:?}")),
    }
}

async fn check(port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let addr = join_host_port(GRPC_HOST, port);
    let stream = dial(GRPC_HOST, port)
        .await
        .map_err(|e| format!("failed to connect service at {addr:?}: {e}"))?;
    let (mut sender, _connection) = h2c_handshake::<Full<Bytes>>(stream)
        .await
        .map_err(|e| format!("failed to connect service at {addr:?}: {e}"))?;
    let message = HealthCheckRequest {
        service: service.to_owned(),
    }
    .encode_to_vec();
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{HEALTH_CHECK_PATH}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, PROBE_USER_AGENT)
        .header("grpc-timeout", grpc_timeout(timeout))
        .body(Full::new(frame(&message)))
        .map_err(|e| format!("health rpc probe failed: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("health rpc probe failed: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!(
            "health rpc probe failed: unexpected HTTP status code {}",
            response.status().as_u16()
        ));
    }
    let headers = response.headers().clone();
    // A trailers-only response carries the status in the headers.
    if let Some(code) = grpc_status(&headers).filter(|&c| c != 0) {
        return Err(status_error(code, &headers, timeout));
    }
    let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("health rpc probe failed: {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    let (code, status_headers) = match grpc_status(&trailers) {
        Some(code) => (code, &trailers),
        None => (
            grpc_status(&headers)
                .ok_or_else(|| "health rpc probe failed: response has no grpc-status".to_owned())?,
            &headers,
        ),
    };
    if code != 0 {
        return Err(status_error(code, status_headers, timeout));
    }
    let reply = HealthCheckResponse::decode(unframe(&body)?)
        .map_err(|e| format!("health rpc probe failed: bad response: {e}"))?;
    if reply.status == SERVING {
        Ok(())
    } else {
        Err(format!(
            "service unhealthy (responded with {:?})",
            serving_status_name(reply.status)
        ))
    }
}
