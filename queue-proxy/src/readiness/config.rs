//! Decoding of `SERVING_READINESS_PROBE` (spec §4.2).
//!
//! The value is a Kubernetes `core/v1` `Probe` in JSON, or a JSON array of them in multi-container
//! mode. Decoding is lenient the way Go's `encoding/json` is: unknown keys are ignored, `null`
//! counts as absent, and a probe without any handler is accepted here and only fails when it is
//! run. Only a port that can never be dialed (non-numeric, or outside 0–65535) is rejected up
//! front, as is JSON of the wrong shape.

use serde::Deserialize;
use serde_json::Value;

/// Why `SERVING_READINESS_PROBE` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeConfigError {
    /// The value is not JSON of the expected shape (an object, or an array in multi mode).
    #[error("SERVING_READINESS_PROBE is not a valid {expected}: {source}")]
    Json {
        /// What the value should have been.
        expected: &'static str,
        /// The decoder's complaint.
        source: serde_json::Error,
    },
    /// A port is neither an integer nor a string of decimal digits.
    #[error("SERVING_READINESS_PROBE: {location} must be a port number, got {value}")]
    PortNotNumeric {
        /// Which probe field, e.g. `probe 0 httpGet.port`.
        location: String,
        /// The offending JSON value.
        value: String,
    },
    /// A port is a number outside 0–65535.
    #[error("SERVING_READINESS_PROBE: {location} {value} is out of range (0-65535)")]
    PortOutOfRange {
        /// Which probe field, e.g. `probe 0 tcpSocket.port`.
        location: String,
        /// The offending number.
        value: String,
    },
}

/// One decoded probe: its handler plus the timing fields the queue-proxy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeSpec {
    pub handler: Handler,
    /// Per-attempt timeout in normal mode.
    pub timeout_seconds: i32,
    /// `0` selects aggressive mode.
    pub period_seconds: i32,
    /// Consecutive successes needed in aggressive mode.
    pub success_threshold: i32,
}

/// What one probe attempt does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handler {
    /// `httpGet`.
    Http(HttpAction),
    /// `tcpSocket`.
    Tcp { host: String, port: u16 },
    /// `grpc`: always dialed at `127.0.0.1:<port>`.
    Grpc { port: u16, service: String },
    /// `exec`: never executed by the queue-proxy; always fails.
    Exec,
    /// No handler at all; always fails.
    None,
}

/// The `httpGet` action as written, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpAction {
    /// Lower-cased scheme; `http` when absent.
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// Path as written; it may lack the leading `/` and may carry a `?query`.
    pub path: String,
    /// Extra request headers, in order.
    pub headers: Vec<(String, String)>,
}

/// Host used when a probe does not name one.
const DEFAULT_HOST: &str = "127.0.0.1";

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawProbe {
    http_get: Option<RawHttpGet>,
    tcp_socket: Option<RawTcpSocket>,
    grpc: Option<RawGrpc>,
    exec: Option<serde::de::IgnoredAny>,
    timeout_seconds: Option<i32>,
    period_seconds: Option<i32>,
    success_threshold: Option<i32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawHttpGet {
    host: Option<String>,
    port: Option<Value>,
    path: Option<String>,
    scheme: Option<String>,
    http_headers: Option<Vec<Option<RawHeader>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawHeader {
    name: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTcpSocket {
    host: Option<String>,
    port: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawGrpc {
    port: Option<Value>,
    service: Option<String>,
}

/// Decodes the variable's value. The caller handles the empty string (no probes at all).
pub(crate) fn decode(json: &str, multi: bool) -> Result<Vec<ProbeSpec>, ProbeConfigError> {
    let expected = if multi {
        "JSON array of probes"
    } else {
        "JSON probe object"
    };
    let fail = |source| ProbeConfigError::Json { expected, source };
    let value: Value = serde_json::from_str(json).map_err(fail)?;
    let items = if multi {
        match value {
            // Go decodes `null` into a nil slice: no probes.
            Value::Null => Vec::new(),
            Value::Array(items) => items,
            other => return Err(fail(shape_error("an array", &other))),
        }
    } else {
        vec![value]
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            check_shape(&item).map_err(fail)?;
            let raw: Option<RawProbe> = serde_json::from_value(item).map_err(fail)?;
            convert(index, raw.unwrap_or_default())
        })
        .collect()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn shape_error(expected: &str, got: &Value) -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom(format!(
        "expected {expected}, got {}",
        kind(got)
    ))
}

/// Rejects arrays where objects belong (serde would accept them as tuple-like structs; Go
/// does not).
fn check_shape(probe: &Value) -> Result<(), serde_json::Error> {
    let object_or_null = |v: &Value, what: &str| match v {
        Value::Null | Value::Object(_) => Ok(()),
        other => Err(shape_error(what, other)),
    };
    object_or_null(probe, "a probe object")?;
    let Value::Object(fields) = probe else {
        return Ok(());
    };
    for key in ["httpGet", "tcpSocket", "grpc", "exec"] {
        if let Some(v) = fields.get(key) {
            object_or_null(v, &format!("an object for {key}"))?;
        }
    }
    if let Some(headers) = fields.get("httpGet").and_then(|h| h.get("httpHeaders")) {
        match headers {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    object_or_null(item, "an object in httpGet.httpHeaders")?;
                }
            }
            other => return Err(shape_error("an array for httpGet.httpHeaders", other)),
        }
    }
    Ok(())
}

fn convert(index: usize, raw: RawProbe) -> Result<ProbeSpec, ProbeConfigError> {
    let handler = if let Some(http) = raw.http_get {
        let headers = http
            .http_headers
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .map(|h| (h.name.unwrap_or_default(), h.value.unwrap_or_default()))
            .collect();
        Handler::Http(HttpAction {
            scheme: http
                .scheme
                .filter(|s| !s.is_empty())
                .map_or_else(|| "http".to_owned(), |s| s.to_ascii_lowercase()),
            host: host_or_default(http.host),
            port: port(index, "httpGet.port", http.port)?,
            path: http.path.unwrap_or_default(),
            headers,
        })
    } else if let Some(tcp) = raw.tcp_socket {
        Handler::Tcp {
            host: host_or_default(tcp.host),
            port: port(index, "tcpSocket.port", tcp.port)?,
        }
    } else if let Some(grpc) = raw.grpc {
        Handler::Grpc {
            port: port(index, "grpc.port", grpc.port)?,
            service: grpc.service.unwrap_or_default(),
        }
    } else if raw.exec.is_some() {
        Handler::Exec
    } else {
        Handler::None
    };
    Ok(ProbeSpec {
        handler,
        timeout_seconds: raw.timeout_seconds.unwrap_or(0),
        period_seconds: raw.period_seconds.unwrap_or(0),
        success_threshold: raw.success_threshold.unwrap_or(0),
    })
}

fn host_or_default(host: Option<String>) -> String {
    host.filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_HOST.to_owned())
}

/// An IntOrString port. Absent or `null` means 0, which is accepted and simply fails to connect.
fn port(index: usize, field: &str, value: Option<Value>) -> Result<u16, ProbeConfigError> {
    let location = || format!("probe {index} {field}");
    let out_of_range = |value: String| ProbeConfigError::PortOutOfRange {
        location: location(),
        value,
    };
    let not_numeric = |value: &Value| ProbeConfigError::PortNotNumeric {
        location: location(),
        value: value.to_string(),
    };
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => u16::try_from(i).map_err(|_| out_of_range(i.to_string())),
            None if n.is_u64() => Err(out_of_range(n.to_string())),
            None => Err(not_numeric(&Value::Number(n))),
        },
        Some(Value::String(s)) => {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(not_numeric(&Value::String(s)));
            }
            // All digits: the only possible failure is overflow.
            s.parse::<u16>().map_err(|_| out_of_range(format!("{s:?}")))
        }
        Some(other) => Err(not_numeric(&other)),
    }
}
