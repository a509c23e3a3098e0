//! The user-metrics listener (spec §2, port 9091): where it listens and what it answers.
//!
//! Only started when `requestMetrics.protocol` is `prometheus`. `GET /metrics` (and `HEAD`)
//! answer the Prometheus text exposition; other methods on `/metrics` get Go `ServeMux`'s `405`
//! with `Allow: GET, HEAD`; other paths `404 page not found`.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use knative_common::body::{text_error, ProxyBody};
use knative_common::env::Env;
use knative_common::server::{bind_addr, bind_dual_stack, BindError};
use tokio::net::TcpListener;

use super::{Metrics, CONTENT_TYPE};
use crate::admin::NOT_FOUND_BODY;
use crate::observability::{Protocol, RequestMetrics};

/// Port when neither `requestMetrics.endpoint` nor `METRICS_PROMETHEUS_PORT` says otherwise.
pub const DEFAULT_PORT: u16 = 9091;
/// Environment override of the listener's port (1024–65535).
pub const PORT_ENV: &str = "METRICS_PROMETHEUS_PORT";
/// Environment override of the listener's host.
pub const HOST_ENV: &str = "METRICS_PROMETHEUS_HOST";
/// TLS for this listener is configured through these; not supported here.
const TLS_ENVS: [&str; 2] = ["METRICS_PROMETHEUS_TLS_CERT", "METRICS_PROMETHEUS_TLS_KEY"];

/// Body of the `405` (Go's `http.Error` with the status text).
pub const METHOD_NOT_ALLOWED_BODY: &str = "Method Not Allowed\n";

/// Where the user-metrics listener binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddress {
    /// Host name or address; empty means every address, IPv4 and IPv6.
    pub host: String,
    /// Port, 1024–65535.
    pub port: u16,
}

/// The listener's configuration is not usable; each variant names its source.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenerConfigError {
    /// `requestMetrics.endpoint` is not `host:port`.
    #[error(
        "requestMetrics.endpoint {0:?} for the prometheus exporter should be \"host:port\" or \"[host]:port\""
    )]
    Endpoint(String),
    /// The port (from the named source) is not a number in 1024–65535.
    #[error("{source_name} {value:?}: prometheus port should be a number between 1024 and 65535")]
    Port {
        /// `METRICS_PROMETHEUS_PORT` or `requestMetrics.endpoint`.
        source_name: &'static str,
        /// What it held.
        value: String,
    },
    /// TLS for the metrics listener was requested.
    #[error("{0} is set, but TLS on the request-metrics listener is not supported")]
    TlsUnsupported(&'static str),
}

/// Where to serve request metrics: `None` unless `requestMetrics.protocol` is `prometheus`.
/// Starts from `:9091`, then `requestMetrics.endpoint` (`host:port`), then the non-empty
/// `METRICS_PROMETHEUS_HOST` / `METRICS_PROMETHEUS_PORT` variables.
pub fn listen_address(
    config: &RequestMetrics,
    env: &dyn Env,
) -> Result<Option<ListenAddress>, ListenerConfigError> {
    if config.protocol != Protocol::Prometheus {
        return Ok(None);
    }
    let mut host = String::new();
    let mut port = DEFAULT_PORT.to_string();
    let mut port_source = "requestMetrics.endpoint";
    if !config.endpoint.is_empty() {
        let (h, p) = split_endpoint(&config.endpoint)
            .ok_or_else(|| ListenerConfigError::Endpoint(config.endpoint.clone()))?;
        host = h.to_owned();
        port = p.to_owned();
    }
    if let Some(h) = env.var(HOST_ENV).filter(|h| !h.is_empty()) {
        host = h;
    }
    if let Some(p) = env.var(PORT_ENV).filter(|p| !p.is_empty()) {
        port = p;
        port_source = PORT_ENV;
    }
    for name in TLS_ENVS {
        if env.var(name).is_some_and(|v| !v.is_empty()) {
            return Err(ListenerConfigError::TlsUnsupported(name));
        }
    }
    let number = (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .then(|| port.parse::<u16>().ok())
        .flatten()
        .filter(|p| *p >= 1024);
    match number {
        Some(port) => Ok(Some(ListenAddress { host, port })),
        None => Err(ListenerConfigError::Port {
            source_name: port_source,
            value: port,
        }),
    }
}

/// Go's `net.SplitHostPort` for an endpoint: `host:port` or `[host]:port`.
fn split_endpoint(endpoint: &str) -> Option<(&str, &str)> {
    if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return (!host.contains(['[', ']']) && !port.contains(['[', ']', ':']))
            .then_some((host, port));
    }
    let (host, port) = endpoint.rsplit_once(':')?;
    (!host.contains([':', '[', ']']) && !port.contains(['[', ']'])).then_some((host, port))
}

impl ListenAddress {
    /// Binds the listener: every address (dual-stack) for an empty host, else the host's first
    /// resolved address.
    pub fn bind(&self) -> Result<TcpListener, BindError> {
        if self.host.is_empty() {
            return bind_dual_stack(self.port);
        }
        let resolved: Option<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|source| BindError {
                port: self.port,
                source,
            })?
            .next();
        let addr = resolved.ok_or_else(|| BindError {
            port: self.port,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no address for host {:?}", self.host),
            ),
        })?;
        bind_addr(addr)
    }
}

/// Serves one request on the user-metrics port.
pub async fn handle<B>(
    request: Request<B>,
    metrics: &'static Metrics,
) -> Result<Response<ProxyBody>, Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(text_error(StatusCode::NOT_FOUND, NOT_FOUND_BODY));
    }
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut response = text_error(StatusCode::METHOD_NOT_ALLOWED, METHOD_NOT_ALLOWED_BODY);
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(metrics.encode())
    };
    let mut response = Response::new(ProxyBody::Full {
        bytes: (!body.is_empty()).then_some(body),
    });
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use http_body_util::BodyExt;

    use crate::metrics::Resource;

    fn prometheus(endpoint: &str) -> RequestMetrics {
        RequestMetrics {
            protocol: Protocol::Prometheus,
            endpoint: endpoint.to_owned(),
            ..Default::default()
        }
    }

    fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn address_defaults_overrides_and_errors() {
        let none = env(&[]);
        assert_eq!(listen_address(&RequestMetrics::default(), &none), Ok(None));
        let grpc = RequestMetrics {
            protocol: Protocol::Grpc,
            ..Default::default()
        };
        assert_eq!(listen_address(&grpc, &env(&[(PORT_ENV, "x")])), Ok(None));
        assert_eq!(
            listen_address(&prometheus(""), &none),
            Ok(Some(ListenAddress {
                host: String::new(),
                port: 9091
            }))
        );
        assert_eq!(
            listen_address(&prometheus("127.0.0.1:9555"), &none),
            Ok(Some(ListenAddress {
                host: "127.0.0.1".into(),
                port: 9555
            }))
        );
        assert_eq!(
            listen_address(&prometheus("[::1]:9555"), &env(&[(PORT_ENV, "9666")])),
            Ok(Some(ListenAddress {
                host: "::1".into(),
                port: 9666
            }))
        );
        assert_eq!(
            listen_address(
                &prometheus(""),
                &env(&[(HOST_ENV, "localhost"), (PORT_ENV, "")])
            ),
            Ok(Some(ListenAddress {
                host: "localhost".into(),
                port: 9091
            }))
        );
        for bad in ["80", "70000", "x", "+9091", "0"] {
            let error = listen_address(&prometheus(""), &env(&[(PORT_ENV, bad)])).unwrap_err();
            assert!(error.to_string().contains(PORT_ENV), "{error}");
        }
        let error = listen_address(&prometheus(":80"), &none).unwrap_err();
        assert!(
            error.to_string().contains("requestMetrics.endpoint"),
            "{error}"
        );
        for bad in ["9091", "a:b:c", "[::1]9091"] {
            assert_eq!(
                listen_address(&prometheus(bad), &none),
                Err(ListenerConfigError::Endpoint(bad.into()))
            );
        }
        assert!(matches!(
            listen_address(
                &prometheus(""),
                &env(&[("METRICS_PROMETHEUS_TLS_CERT", "/c")])
            ),
            Err(ListenerConfigError::TlsUnsupported(_))
        ));
    }

    fn metrics() -> &'static Metrics {
        Box::leak(Box::new(Metrics::new(Resource::from_env(&env(&[])))))
    }

    async fn call(method: Method, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let response = handle(request, metrics()).await.unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test]
    async fn routes_and_methods() {
        let (status, headers, body) = call(Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[http::header::CONTENT_TYPE], CONTENT_TYPE);
        assert!(std::str::from_utf8(&body)
            .unwrap()
            .contains("# TYPE target_info gauge"));

        let (status, headers, body) = call(Method::HEAD, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[http::header::CONTENT_TYPE], CONTENT_TYPE);
        assert!(body.is_empty());

        let (status, headers, body) = call(Method::POST, "/metrics").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[http::header::ALLOW], "GET, HEAD");
        assert_eq!(&body[..], METHOD_NOT_ALLOWED_BODY.as_bytes());

        for path in ["/", "/metrics/", "/other"] {
            let (status, _, body) = call(Method::GET, path).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(&body[..], b"404 page not found\n");
        }
    }

    #[tokio::test]
    async fn binds_loopback() {
        let address = ListenAddress {
            host: "127.0.0.1".into(),
            port: 0,
        };
        // Port 0 is refused by listen_address; bind itself accepts it (tests only).
        let listener = address.bind().unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
    }
}
