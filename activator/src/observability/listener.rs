//! The metrics listener (spec §1.5, port 9090): `GET /metrics` answers the Prometheus text of
//! [`ActivatorMetrics`]; only started when `metrics-protocol: prometheus`.

use std::convert::Infallible;
use std::future::Ready;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use knative_common::body::{text_error, ProxyBody};
use knative_common::env::{Env, EnvError};
use knative_telemetry::metrics::CONTENT_TYPE;
use tower_service::Service;

use super::metrics::ActivatorMetrics;

/// Default port of the metrics listener.
pub const DEFAULT_PORT: u16 = 9090;
/// Port variable (1024–65535).
pub const PORT_ENV: &str = "METRICS_PROMETHEUS_PORT";
/// Host variable (empty: every address).
pub const HOST_ENV: &str = "METRICS_PROMETHEUS_HOST";

/// Where `/metrics` listens: `(host, port)`; an empty host means every address.
pub fn listen_address(env: &dyn Env) -> Result<(String, u16), EnvError> {
    let host = env.var(HOST_ENV).unwrap_or_default();
    let port = match env.var(PORT_ENV).filter(|p| !p.is_empty()) {
        None => DEFAULT_PORT,
        Some(text) => text
            .parse::<u16>()
            .ok()
            .filter(|p| *p >= 1024)
            .ok_or(EnvError::Invalid {
                name: PORT_ENV,
                value: text,
                expected: "a port number between 1024 and 65535",
            })?,
    };
    Ok((host, port))
}

/// Resolves `(host, port)` to the address to bind (`None`: all addresses, dual stack).
pub fn resolve(host: &str, port: u16) -> std::io::Result<Option<SocketAddr>> {
    if host.is_empty() {
        return Ok(None);
    }
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()?
        .next()
        .map(Some)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no address for {HOST_ENV} {host:?}"),
            )
        })
}

/// The `/metrics` service.
#[derive(Clone, Copy, Debug)]
pub struct MetricsService(pub &'static ActivatorMetrics);

impl<B> Service<Request<B>> for MetricsService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        std::future::ready(Ok(answer(self.0, request.method(), request.uri().path())))
    }
}

fn answer(metrics: &'static ActivatorMetrics, method: &Method, path: &str) -> Response<ProxyBody> {
    if path != "/metrics" {
        return text_error(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = text_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let body = if method == Method::HEAD {
        None
    } else {
        Some(Bytes::from(metrics.encode()))
    };
    let mut response = Response::new(ProxyBody::Full { bytes: body });
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn port_defaults_and_bounds() {
        let env: HashMap<&str, &str> = HashMap::new();
        assert_eq!(listen_address(&env).unwrap(), (String::new(), 9090));
        for bad in ["80", "70000", "x", "1023"] {
            let env: HashMap<&str, &str> = [(PORT_ENV, bad)].into_iter().collect();
            let e = listen_address(&env).unwrap_err().to_string();
            assert!(e.contains(PORT_ENV) && e.contains(bad), "{e}");
        }
        let env: HashMap<&str, &str> = [(PORT_ENV, "19090"), (HOST_ENV, "127.0.0.1")]
            .into_iter()
            .collect();
        assert_eq!(listen_address(&env).unwrap(), ("127.0.0.1".into(), 19090));
        assert_eq!(resolve("", 1).unwrap(), None);
        assert!(resolve("127.0.0.1", 9090).unwrap().is_some());
    }

    #[test]
    fn routes() {
        let m: &'static ActivatorMetrics =
            Box::leak(Box::new(ActivatorMetrics::new("p", "ns", "activator")));
        assert_eq!(answer(m, &Method::GET, "/metrics").status(), StatusCode::OK);
        assert_eq!(answer(m, &Method::GET, "/").status(), StatusCode::NOT_FOUND);
        assert_eq!(
            answer(m, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
