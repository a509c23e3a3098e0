//! Probe runs: all probes in parallel, each in normal or aggressive mode (spec §4.4, §4.5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::{Handler, ProbeSpec};
use super::{grpc, http, net, Readiness};

/// One probe and its count of consecutive successful aggressive attempts. The count survives
/// runs (it is only reset by a failed attempt), so once ready a later run passes on its first
/// good attempt.
pub(crate) struct ProbeState {
    pub spec: ProbeSpec,
    pub successes: AtomicU64,
}

impl ProbeState {
    pub(crate) fn new(spec: ProbeSpec) -> ProbeState {
        ProbeState {
            spec,
            successes: AtomicU64::new(0),
        }
    }
}

/// Where run failures are written: one line each on standard error, as upstream does.
pub(crate) enum ErrorSink {
    Stderr,
    #[cfg(test)]
    Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>),
}

impl ErrorSink {
    fn line(&self, text: &str) {
        match self {
            ErrorSink::Stderr => eprintln!("{text}"),
            #[cfg(test)]
            ErrorSink::Capture(lines) => lines
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(text.to_owned()),
        }
    }
}

/// Normal-mode attempt timeout; a missing or non-positive `timeoutSeconds` means 1 s (the
/// Kubernetes default; the controller never sends less).
fn normal_timeout(timeout_seconds: i32) -> Duration {
    let seconds = u64::try_from(timeout_seconds).unwrap_or(0).max(1);
    Duration::from_secs(seconds)
}

impl Readiness {
    /// One run of every probe, in parallel; the first error to occur is printed.
    pub(super) async fn run_all(&'static self) -> bool {
        let mut tasks = JoinSet::new();
        for index in 0..self.probes.len() {
            tasks.spawn(self.run_probe(index));
        }
        let mut ready = true;
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let outcome = joined.unwrap_or_else(|e| Err(format!("probe task failed: {e}")));
            if let Err(error) = outcome {
                ready = false;
                first_error.get_or_insert(error);
            }
        }
        if let Some(error) = first_error {
            self.errors.line(&error);
        }
        ready
    }

    async fn run_probe(&'static self, index: usize) -> Result<(), String> {
        let Some(probe) = self.probes.get(index) else {
            return Err("no probe found".to_owned());
        };
        match probe.spec.handler {
            // Neither is retried: they can never succeed.
            Handler::Exec | Handler::None => {
                self.attempt(&probe.spec.handler, Duration::ZERO).await
            }
            _ if probe.spec.period_seconds == 0 => self.aggressive(probe).await,
            _ => {
                let timeout = normal_timeout(probe.spec.timeout_seconds);
                self.attempt(&probe.spec.handler, timeout).await
            }
        }
    }

    async fn attempt(&self, handler: &Handler, timeout: Duration) -> Result<(), String> {
        match handler {
            Handler::Http(action) => {
                http::attempt(action, self.autodetect_h2, timeout, &self.tls).await
            }
            Handler::Tcp { host, port } => net::tcp_attempt(host, *port, timeout).await,
            Handler::Grpc { port, service } => grpc::attempt(*port, service, timeout).await,
            // Exec probes are turned into TCP probes by the controller; never run them here.
            Handler::Exec => Err("exec probe not supported".to_owned()),
            Handler::None => Err("no probe found".to_owned()),
        }
    }

    /// Attempts at a fixed rate until the consecutive-success count reaches the threshold or
    /// the window ends.
    async fn aggressive(&self, probe: &ProbeState) -> Result<(), String> {
        let timings = self.timings;
        let threshold = u64::try_from(probe.spec.success_threshold)
            .unwrap_or(0)
            .max(1);
        let start = Instant::now();
        let deadline = start + timings.window;
        let mut next_tick = start;
        let mut failures: u64 = 0;
        let mut last_error = None;
        loop {
            match self
                .attempt(&probe.spec.handler, timings.attempt_timeout)
                .await
            {
                Ok(()) => {
                    let count = probe
                        .successes
                        .fetch_add(1, Ordering::SeqCst)
                        .saturating_add(1);
                    if count >= threshold {
                        return Ok(());
                    }
                }
                Err(error) => {
                    probe.successes.store(0, Ordering::SeqCst);
                    failures += 1;
                    last_error = Some(error);
                }
            }
            let now = Instant::now();
            next_tick = next_after(next_tick, timings.interval, now);
            if now >= deadline || next_tick >= deadline {
                break;
            }
            tokio::time::sleep_until(next_tick).await;
        }
        if let Some(error) = last_error {
            self.errors.line(&format!(
                "aggressive probe error (failed {failures} times): {error}"
            ));
        }
        Err(format!(
            "readiness probe did not pass within {:?}",
            timings.window
        ))
    }
}

/// The first tick of the fixed-rate schedule `previous + k * interval` (k ≥ 1) that is not in
/// the past; ticks missed while an attempt ran are skipped.
fn next_after(previous: Instant, interval: Duration, now: Instant) -> Instant {
    let next = previous + interval;
    if next >= now || interval.is_zero() {
        return next.max(now);
    }
    let behind = now.duration_since(next).as_nanos();
    let skipped = behind / interval.as_nanos() + 1;
    let skipped = u32::try_from(skipped).unwrap_or(u32::MAX);
    next + interval.saturating_mul(skipped)
}
