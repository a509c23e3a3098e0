//! A stand-in for the autoscaler's websocket endpoint (spec §6.4): accepts websocket connections
//! on `127.0.0.1:<ephemeral>`, decodes every binary message as one `WireStatMessages` batch and
//! records it with the time it was received.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use knative_common::stats::{WireStatMessage, WireStatMessages};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// One received batch.
#[derive(Clone, Debug)]
pub struct Batch {
    /// When the frame was read.
    pub at: Instant,
    /// Its messages.
    pub messages: Vec<WireStatMessage>,
}

#[derive(Debug, Default)]
struct Recorded {
    batches: Vec<Batch>,
    connections: usize,
    /// Text frames or undecodable binary frames (must stay empty).
    bad_frames: Vec<String>,
}

/// The receiver; it stops with the test's runtime.
#[derive(Clone)]
pub struct StatsReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    /// Bumped on every change of `recorded`.
    version: Arc<watch::Sender<u64>>,
}

impl StatsReceiver {
    /// Starts listening on an ephemeral port.
    pub async fn start() -> StatsReceiver {
        StatsReceiver::start_on(0).await
    }

    /// Starts listening on `127.0.0.1:port`.
    pub async fn start_on(port: u16) -> StatsReceiver {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind stats receiver");
        let addr = listener.local_addr().expect("stats receiver addr");
        let receiver = StatsReceiver {
            addr,
            recorded: Arc::default(),
            version: Arc::new(watch::Sender::new(0)),
        };
        let this = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let this = this.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    this.update(|r| r.connections += 1);
                    // Reading also answers the activator's pings.
                    while let Some(Ok(message)) = ws.next().await {
                        let at = Instant::now();
                        match message {
                            Message::Binary(bytes) => match WireStatMessages::decode(&bytes[..]) {
                                Ok(batch) => this.update(|r| {
                                    r.batches.push(Batch {
                                        at,
                                        messages: batch.messages,
                                    })
                                }),
                                Err(e) => this.update(|r| r.bad_frames.push(e.to_string())),
                            },
                            Message::Text(text) => {
                                this.update(|r| r.bad_frames.push(format!("text frame {text:?}")))
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        receiver
    }

    fn update(&self, f: impl FnOnce(&mut Recorded)) {
        f(&mut self.recorded.lock().unwrap());
        self.version.send_modify(|v| *v += 1);
    }

    /// The URL to give the activator (`ACTIVATOR_AUTOSCALER_URL`).
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Every batch so far.
    pub fn batches(&self) -> Vec<Batch> {
        self.recorded.lock().unwrap().batches.clone()
    }

    /// Websocket connections accepted so far.
    pub fn connections(&self) -> usize {
        self.recorded.lock().unwrap().connections
    }

    /// Frames that were not a binary `WireStatMessages`.
    pub fn bad_frames(&self) -> Vec<String> {
        self.recorded.lock().unwrap().bad_frames.clone()
    }

    /// Every message for revision `namespace/name`, with its batch's receive time.
    pub fn messages_for(&self, namespace: &str, name: &str) -> Vec<(Instant, WireStatMessage)> {
        self.batches()
            .into_iter()
            .flat_map(|b| {
                let at = b.at;
                b.messages
                    .into_iter()
                    .filter(|m| m.namespace == namespace && m.name == name)
                    .map(move |m| (at, m))
            })
            .collect()
    }

    /// Sum of `request_count` over every message for the revision: the number of requests the
    /// activator has counted in (the poke counts the first one, ticks report the rest).
    pub fn requests_counted(&self, namespace: &str, name: &str) -> f64 {
        self.messages_for(namespace, name)
            .iter()
            .filter_map(|(_, m)| m.stat.as_ref())
            .map(|s| s.request_count)
            .sum()
    }

    /// Waits until `check` returns `Some` on the recorded state (re-checked on every change),
    /// panicking with `what` after `limit`.
    pub async fn wait_for<T>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&StatsReceiver) -> Option<T>,
    ) -> T {
        let mut rx = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            rx.borrow_and_update();
            if let Some(value) = check(self) {
                return value;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(_) => {}
                Err(_) => panic!(
                    "timed out after {limit:?} waiting for {what}; batches so far: {:#?}",
                    self.batches()
                ),
            }
        }
    }
}
