//! The admin listener (port 8022, spec §5.2): `/wait-for-drain`, the user containers' preStop hook.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use knative_common::body::{empty, text_error, ProxyBody};
use knative_common::drain::Drainer;
use knative_common::h2::IncomingBody;

/// Body of every unknown path (Go's `http.NotFound`).
pub const NOT_FOUND_BODY: &str = "404 page not found\n";

/// How long `/wait-for-drain` waits for SIGTERM before it concludes the pod is not terminating.
pub const SIGTERM_WATCHDOG: Duration = Duration::from_secs(1);

/// Serves one admin request.
pub async fn handle(
    request: Request<IncomingBody>,
    drainer: &'static Drainer,
    sigterm: &'static AtomicBool,
) -> Result<Response<ProxyBody>, Infallible> {
    if request.uri().path() != "/wait-for-drain" {
        return Ok(text_error(StatusCode::NOT_FOUND, NOT_FOUND_BODY));
    }
    // If no SIGTERM follows, the user container is merely restarting (liveness probe): do not
    // block its restart; health checks fail only for about a second.
    tokio::spawn(async move {
        tokio::time::sleep(SIGTERM_WATCHDOG).await;
        if !sigterm.load(Ordering::Acquire) {
            drainer.reset();
        }
    });
    drainer.drain().await;
    Ok(empty(StatusCode::OK))
}
