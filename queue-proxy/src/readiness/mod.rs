//! Readiness probing of the user container (spec §4).
//!
//! The queue-proxy never probes in the background: a health check with `K-Network-Probe: queue`
//! calls [`Readiness::check`], which runs every configured probe once (normal mode) or
//! repeatedly for a short window (aggressive mode, `periodSeconds: 0`) and reports whether all
//! of them passed. Concurrent checks share one run.
//!
//! Layout: `config` decodes `SERVING_READINESS_PROBE`, `net`/`http`/`grpc` make single
//! attempts, `run` turns attempts into a run, and `tls` holds the `HTTPS` client settings.

mod config;
mod grpc;
mod http;
mod net;
mod run;
mod tls;

#[cfg(test)]
mod tests;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

pub use config::ProbeConfigError;

/// Spacing of aggressive attempts (fixed rate, first attempt immediately).
pub const AGGRESSIVE_INTERVAL: Duration = Duration::from_millis(50);
/// How long an aggressive run keeps trying before it reports "not ready".
pub const AGGRESSIVE_WINDOW: Duration = Duration::from_secs(10);
/// Timeout of each aggressive attempt.
pub const AGGRESSIVE_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);

/// Timing of aggressive probing (`periodSeconds: 0`). [`Default`] gives the upstream values;
/// other values exist so tests do not have to wait ten seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggressiveTimings {
    /// Spacing between attempt starts.
    pub interval: Duration,
    /// Length of one run.
    pub window: Duration,
    /// Timeout of each attempt.
    pub attempt_timeout: Duration,
}

impl Default for AggressiveTimings {
    fn default() -> Self {
        AggressiveTimings {
            interval: AGGRESSIVE_INTERVAL,
            window: AGGRESSIVE_WINDOW,
            attempt_timeout: AGGRESSIVE_ATTEMPT_TIMEOUT,
        }
    }
}

/// The user container's readiness probes, decoded once at startup and run on demand.
pub struct Readiness {
    probes: Vec<run::ProbeState>,
    autodetect_h2: bool,
    timings: AggressiveTimings,
    tls: tls::TlsClient,
    errors: run::ErrorSink,
    /// Result channel of the run in progress, if any (single flight).
    in_flight: Mutex<Option<watch::Receiver<Option<bool>>>>,
}

impl Readiness {
    /// Decodes the probes.
    ///
    /// `json` is the value of `SERVING_READINESS_PROBE` (empty means the container is always
    /// ready); `multi` is `ENABLE_MULTI_CONTAINER_PROBES` (the value is then a JSON array of
    /// probes, else a single probe object); `http2_autodetect` is
    /// `ENABLE_HTTP2_AUTO_DETECTION`.
    pub fn from_env(
        json: &str,
        multi: bool,
        http2_autodetect: bool,
    ) -> Result<Readiness, ProbeConfigError> {
        Readiness::from_env_with_timings(
            json,
            multi,
            http2_autodetect,
            AggressiveTimings::default(),
        )
    }

    /// [`Readiness::from_env`] with other aggressive-mode timings (for tests).
    pub fn from_env_with_timings(
        json: &str,
        multi: bool,
        http2_autodetect: bool,
        timings: AggressiveTimings,
    ) -> Result<Readiness, ProbeConfigError> {
        let specs = if json.is_empty() {
            Vec::new()
        } else {
            config::decode(json, multi)?
        };
        Ok(Readiness {
            probes: specs.into_iter().map(run::ProbeState::new).collect(),
            autodetect_h2: http2_autodetect,
            timings,
            tls: tls::TlsClient::default(),
            errors: run::ErrorSink::Stderr,
            in_flight: Mutex::new(None),
        })
    }

    /// Runs all probes in parallel, or joins the run already in progress, and returns `true`
    /// iff every probe passed.
    ///
    /// Concurrent callers share one run; the first call after a run finished starts a new one.
    /// The run is spawned on the Tokio runtime, so it completes even if every caller goes away.
    pub async fn check(&'static self) -> bool {
        if self.probes.is_empty() {
            return true;
        }
        let mut result = self.join_or_start();
        // An error means the run ended without a result (it panicked): not ready.
        result
            .wait_for(Option::is_some)
            .await
            .map(|value| value.unwrap_or(false))
            .unwrap_or(false)
    }

    fn join_or_start(&'static self) -> watch::Receiver<Option<bool>> {
        let mut slot = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(receiver) = slot.as_ref() {
            // A closed channel means the run died; start another one.
            if receiver.has_changed().is_ok() {
                return receiver.clone();
            }
        }
        let (sender, receiver) = watch::channel(None);
        *slot = Some(receiver.clone());
        drop(slot);
        tokio::spawn(async move {
            let ready = self.run_all().await;
            let mut slot = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *slot = None;
            sender.send_replace(Some(ready));
        });
        receiver
    }
}
