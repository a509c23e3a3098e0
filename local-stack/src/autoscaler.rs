//! The autoscaler **stand-in** of the local harness. Not a product component, and not Knative's
//! KPA: just enough to close the loop on a laptop.
//!
//! Inputs, on the real wire formats:
//! - the activator's websocket (spec activator §6.4): binary frames, each one protobuf
//!   `WireStatMessages`; the first request of an idle revision arrives as a "poke" right away;
//! - each queue-proxy's stats port (`GET /metrics`, `Accept: application/protobuf`, one
//!   `metrics.Stat`), scraped once per tick.
//!
//! Observed concurrency = the activator's latest average (requests it holds or proxies) + for every
//! instance, its average minus its proxied average (requests that reached it without the
//! activator). The activator's figure counts only while it is fresh (2 ticks).
//!
//! The rule ([`Scaler::decide`]): `wanted = ceil(observed / target)`, at least 1 when anything is
//! observed, at most `max_scale`. Scale-up is immediate. Scale-down goes to the highest `wanted`
//! seen during the stable window (the initial scale counts as seen when the stand-in starts), and
//! the last instance goes only after `scale_to_zero_grace` with nothing observed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use knative_common::stats::{Stat, WireStatMessages};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::client::HttpClient;

/// The scaling rule's knobs (flags of `knative-local`).
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingConfig {
    /// Concurrency one instance should carry (default: containerConcurrency).
    pub target: f64,
    /// Most instances.
    pub max_scale: usize,
    /// Instances started with the stack (they prove the app starts).
    pub initial_scale: usize,
    /// Scale-down uses the highest wish seen over this window.
    pub stable_window: Duration,
    /// Nothing observed for this long: scale to zero.
    pub scale_to_zero_grace: Duration,
    /// How often stats are scraped and the rule applied.
    pub tick: Duration,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            target: 2.0,
            max_scale: 5,
            initial_scale: 1,
            stable_window: Duration::from_secs(6),
            scale_to_zero_grace: Duration::from_secs(8),
            tick: Duration::from_secs(1),
        }
    }
}

/// The scaling rule with its short memory.
#[derive(Debug)]
pub struct Scaler {
    config: ScalingConfig,
    wishes: VecDeque<(Instant, usize)>,
    last_busy: Instant,
}

impl Scaler {
    /// A scaler that counts `initial_scale` as wished at `now` (so the initial instances stay
    /// for one stable window, instead of being scaled down at the first tick, before any
    /// request had a chance to arrive) and considers `now` the last busy moment (so the last
    /// of them stays until the scale-to-zero grace has passed).
    pub fn new(config: ScalingConfig, now: Instant) -> Scaler {
        let wishes = VecDeque::from([(now, config.initial_scale)]);
        Scaler {
            config,
            wishes,
            last_busy: now,
        }
    }

    /// The instance count wanted at `now` for `observed` concurrency with `current` instances.
    pub fn decide(&mut self, now: Instant, observed: f64, current: usize) -> usize {
        let max = self.config.max_scale;
        let wish = if observed > 0.0 {
            let target = self.config.target.max(0.01);
            ((observed / target).ceil() as usize).clamp(1, max.max(1))
        } else {
            0
        };
        if wish > 0 {
            self.last_busy = now;
        }
        self.wishes.push_back((now, wish));
        while let Some((at, _)) = self.wishes.front() {
            if now.duration_since(*at) > self.config.stable_window {
                self.wishes.pop_front();
            } else {
                break;
            }
        }
        if wish >= current {
            return wish;
        }
        let window_max = self.wishes.iter().map(|(_, w)| *w).max().unwrap_or(0);
        if window_max > 0 {
            return window_max;
        }
        if now.duration_since(self.last_busy) >= self.config.scale_to_zero_grace {
            0
        } else {
            current.min(1)
        }
    }
}

/// What the stand-in learned from the activator's websocket.
#[derive(Clone, Debug, Default)]
pub struct ActivatorView {
    /// Websocket connections accepted so far.
    pub connections: usize,
    /// Whether a connection is open now.
    pub connected: bool,
    /// The latest average concurrency for the revision, with its arrival time.
    pub latest: Option<(Instant, f64)>,
    /// Sum of `request_count` over all messages for the revision.
    pub requests_counted: f64,
    /// Messages for the revision so far (pokes included).
    pub messages: u64,
    /// Frames that were not a decodable binary `WireStatMessages`.
    pub bad_frames: u64,
}

/// The websocket endpoint the activator reports to (`ACTIVATOR_AUTOSCALER_URL`).
pub struct StatsEndpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    view: Arc<Mutex<ActivatorView>>,
    /// Notified when a message for the revision arrives while it may be scaled to zero.
    pub poked: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StatsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StatsEndpoint {
    /// Listens on `127.0.0.1:<ephemeral>` for the activator's stats of `namespace/name`.
    pub async fn start(namespace: &str, name: &str) -> std::io::Result<StatsEndpoint> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let view = Arc::new(Mutex::new(ActivatorView::default()));
        let poked = Arc::new(Notify::new());
        let (ns, rev) = (namespace.to_owned(), name.to_owned());
        let (task_view, task_poked) = (Arc::clone(&view), Arc::clone(&poked));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (view, poked) = (Arc::clone(&task_view), Arc::clone(&task_poked));
                let (ns, rev) = (ns.clone(), rev.clone());
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    update(&view, |v| {
                        v.connections += 1;
                        v.connected = true;
                    });
                    // Reading also answers the activator's pings.
                    while let Some(Ok(message)) = ws.next().await {
                        let Message::Binary(bytes) = message else {
                            if message.is_text() {
                                update(&view, |v| v.bad_frames += 1);
                            }
                            continue;
                        };
                        let Ok(batch) = WireStatMessages::decode(&bytes[..]) else {
                            update(&view, |v| v.bad_frames += 1);
                            continue;
                        };
                        let now = Instant::now();
                        for m in batch.messages {
                            let (true, Some(stat)) = (m.namespace == ns && m.name == rev, m.stat)
                            else {
                                continue;
                            };
                            update(&view, |v| {
                                v.latest = Some((now, stat.average_concurrent_requests));
                                v.requests_counted += stat.request_count;
                                v.messages += 1;
                            });
                            if stat.average_concurrent_requests > 0.0 {
                                poked.notify_one();
                            }
                        }
                    }
                    update(&view, |v| v.connected = false);
                });
            }
        });
        Ok(StatsEndpoint {
            addr,
            view,
            poked,
            task,
        })
    }

    /// The URL to give the activator.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// A copy of what was learned so far.
    pub fn view(&self) -> ActivatorView {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The activator's concurrency if its latest report is younger than `fresh`, else 0.
    pub fn activator_concurrency(&self, now: Instant, fresh: Duration) -> f64 {
        match self.view().latest {
            Some((at, value)) if now.saturating_duration_since(at) <= fresh => value,
            _ => 0.0,
        }
    }
}

fn update(view: &Mutex<ActivatorView>, f: impl FnOnce(&mut ActivatorView)) {
    f(&mut view.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Scrapes one queue-proxy's stats port (`GET /metrics` as protobuf).
pub async fn scrape(client: &HttpClient, stats: SocketAddr) -> Result<Stat, String> {
    let reply = client
        .get(stats, "/metrics", &[("accept", "application/protobuf")])
        .await
        .map_err(|e| e.to_string())?;
    if !reply.status.is_success() {
        return Err(format!("stats port answered {}", reply.status));
    }
    Stat::decode(reply.body).map_err(|e| format!("undecodable metrics.Stat: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ScalingConfig {
        ScalingConfig {
            target: 2.0,
            max_scale: 4,
            initial_scale: 1,
            stable_window: Duration::from_secs(5),
            scale_to_zero_grace: Duration::from_secs(8),
            tick: Duration::from_secs(1),
        }
    }

    #[test]
    fn scales_up_at_once_and_caps_at_max() {
        let t0 = Instant::now();
        let mut s = Scaler::new(config(), t0);
        assert_eq!(s.decide(t0, 0.5, 0), 1, "anything observed wakes one");
        assert_eq!(s.decide(t0, 5.0, 1), 3, "ceil(5 / 2)");
        assert_eq!(s.decide(t0, 100.0, 3), 4, "max_scale");
    }

    #[test]
    fn scales_down_after_the_stable_window_then_to_zero_after_grace() {
        let t0 = Instant::now();
        let mut s = Scaler::new(config(), t0);
        assert_eq!(s.decide(t0, 8.0, 0), 4);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(s.decide(at(1), 2.0, 4), 4, "within the window: keep 4");
        assert_eq!(s.decide(at(4), 2.0, 4), 4);
        assert_eq!(s.decide(at(6), 2.0, 4), 1, "8.0 left the window");
        assert_eq!(s.decide(at(7), 0.0, 1), 1);
        assert_eq!(s.decide(at(12), 0.0, 1), 1, "idle 6 s of 8");
        assert_eq!(s.decide(at(14), 0.0, 1), 0, "idle 8 s: zero");
        assert_eq!(s.decide(at(15), 0.0, 0), 0);
    }

    #[test]
    fn initial_instances_stay_for_the_stable_window() {
        let t0 = Instant::now();
        let config = ScalingConfig {
            initial_scale: 3,
            ..config()
        };
        let mut s = Scaler::new(config, t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(
            s.decide(at(0), 0.0, 3),
            3,
            "not scaled down at the first tick"
        );
        assert_eq!(s.decide(at(4), 2.0, 3), 3, "within the window: keep 3");
        assert_eq!(
            s.decide(at(6), 2.0, 3),
            1,
            "the initial scale left the window"
        );
    }

    #[test]
    fn initial_instances_wait_for_the_grace_period() {
        let t0 = Instant::now();
        let mut s = Scaler::new(config(), t0);
        assert_eq!(s.decide(t0 + Duration::from_secs(3), 0.0, 1), 1);
        assert_eq!(s.decide(t0 + Duration::from_secs(9), 0.0, 1), 0);
    }
}
