//! The durable websocket to the autoscaler (spec §6.4, §6.5; knative.dev/pkg `websocket`).
//!
//! One background task owns the socket:
//!
//! 1. **Dial** rounds: up to [`BACKOFF_STEPS`] attempts, each bounded by [`HANDSHAKE_TIMEOUT`],
//!    separated by exponential backoff ([`BACKOFF_INITIAL`] × [`BACKOFF_FACTOR`]ⁿ plus up to
//!    [`BACKOFF_JITTER`] of random extra); when a round fails a new one starts immediately, forever.
//! 2. **Connected**: [`AutoscalerConnection::is_connected`] turns true, `reachable` = 1. A ping is
//!    written every [`PING_PERIOD`]; the read deadline is [`PONG_TIMEOUT`] after connecting and is
//!    pushed back by every pong. Batches handed to [`AutoscalerConnection::send`] are written as
//!    binary messages.
//! 3. **Broken** on any read error, a close frame (e.g. 1012 "restarting" from an autoscaler
//!    shutting down), end of stream, read deadline or write error: `is_connected` turns false,
//!    `reachable` = 0, `errors` += 1, a close is attempted and the task dials again.
//!
//! The shutdown signal closes the socket (close frame, best effort) and ends the task.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use knative_common::stats::WireStatMessages;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on one dial: TCP connect plus websocket handshake (gorilla `HandshakeTimeout`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// First backoff delay between two dial attempts.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Growth of the backoff delay per attempt.
pub const BACKOFF_FACTOR: f64 = 1.3;
/// Maximum random extra on each delay, as a fraction of it.
pub const BACKOFF_JITTER: f64 = 0.5;
/// Dial attempts per backoff round.
pub const BACKOFF_STEPS: u32 = 20;
/// Read deadline after connecting and after each pong.
pub const PONG_TIMEOUT: Duration = Duration::from_secs(10);
/// Ping period: a third of [`PONG_TIMEOUT`].
pub const PING_PERIOD: Duration = Duration::from_nanos(10_000_000_000 / 3);
/// Batches that may wait for the socket writer before new ones are dropped (Rust port only;
/// Go spawns one goroutine per batch instead).
pub const SEND_QUEUE_CAPACITY: usize = 1024;
/// Largest message accepted from the autoscaler (which never sends application messages).
pub const MAX_INCOMING_MESSAGE: usize = 1 << 20;
/// Bound on writing one message, and on the closing handshake.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest timer used; larger configured durations are clamped (tokio instants can overflow).
const MAX_TIMER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Exponential backoff between dial attempts (k8s `wait.Backoff`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Multiplier applied after each delay.
    pub factor: f64,
    /// Each delay gets a random extra in `[0, jitter × delay)`.
    pub jitter: f64,
    /// Attempts per round (at least one is made).
    pub steps: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: BACKOFF_INITIAL,
            factor: BACKOFF_FACTOR,
            jitter: BACKOFF_JITTER,
            steps: BACKOFF_STEPS,
        }
    }
}

impl Backoff {
    /// The delays slept between the attempts of one round, before jitter (`steps − 1` of them).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let factor = self.factor;
        std::iter::successors(Some(self.initial), move |d| {
            Some(scale(*d, factor).unwrap_or(*d))
        })
        .take(self.steps.saturating_sub(1) as usize)
    }

    /// `delay` plus a random extra of up to `jitter × delay`.
    pub fn jittered(&self, delay: Duration) -> Duration {
        if self.jitter.is_nan() || self.jitter <= 0.0 {
            return delay;
        }
        let extra = scale(delay, self.jitter * random_fraction()).unwrap_or(Duration::ZERO);
        delay.saturating_add(extra)
    }
}

/// `d × f`, or `None` if that is not a valid duration.
fn scale(d: Duration, f: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(d.as_secs_f64() * f).ok()
}

/// A number in `[0, 1)`; good enough for jitter.
fn random_fraction() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Timings of the connection; [`Default`] is the upstream behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionConfig {
    /// Bound on one dial (TCP connect + handshake).
    pub handshake_timeout: Duration,
    /// Backoff between dial attempts.
    pub backoff: Backoff,
    /// Ping period while connected.
    pub ping_period: Duration,
    /// Read deadline after connecting and after each pong.
    pub pong_timeout: Duration,
    /// Batches queued for the writer before [`AutoscalerConnection::send`] drops new ones.
    pub send_queue: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            backoff: Backoff::default(),
            ping_period: PING_PERIOD,
            pong_timeout: PONG_TIMEOUT,
            send_queue: SEND_QUEUE_CAPACITY,
        }
    }
}

/// Why [`AutoscalerConnection::send`] dropped a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No connection right now (Go: `ErrConnectionNotEstablished`).
    #[error("connection has not yet been established")]
    NotConnected,
    /// The writer is [`ConnectionConfig::send_queue`] batches behind.
    #[error("send queue full")]
    QueueFull,
}

/// The durable sending websocket to the autoscaler; see the module documentation.
#[derive(Debug)]
pub struct AutoscalerConnection {
    url: String,
    /// Writer of the current connection; `Some` exactly while connected.
    writer: RwLock<Option<mpsc::Sender<Message>>>,
    connected: AtomicBool,
    reachable: AtomicI64,
    errors: AtomicU64,
    done: watch::Sender<bool>,
}

enum Outcome {
    Shutdown,
    Broken(String),
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl AutoscalerConnection {
    /// Starts the connection task with the default timings. Must be called within a tokio
    /// runtime. The task ends when `shutdown` becomes `true` (if its sender is dropped without
    /// that, the connection simply lives on).
    pub fn spawn(url: String, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        Self::spawn_with_config(url, ConnectionConfig::default(), shutdown)
    }

    /// [`spawn`](Self::spawn) with explicit timings.
    pub fn spawn_with_config(
        url: String,
        config: ConnectionConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let conn = Arc::new(AutoscalerConnection {
            url,
            writer: RwLock::new(None),
            connected: AtomicBool::new(false),
            reachable: AtomicI64::new(0),
            errors: AtomicU64::new(0),
            done: watch::Sender::new(false),
        });
        tokio::spawn(Arc::clone(&conn).run(config, shutdown));
        conn
    }

    /// The URL dialled.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True while a connection is established (health, §2.1).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// `kn.activator.stats.conn.reachable{peer="autoscaler"}`: 1 while connected, else 0.
    pub fn reachable(&self) -> i64 {
        self.reachable.load(Ordering::Acquire)
    }

    /// `kn.activator.stats.conn.errors{peer="autoscaler"}`: connections lost so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Acquire)
    }

    /// Queues `batch` as one binary message holding its protobuf encoding. Never blocks; if not
    /// connected (or the writer is far behind) the batch is logged and dropped, and `false` is
    /// returned. Batches are written in the order queued.
    pub fn send(&self, batch: WireStatMessages) -> bool {
        match self.try_send(&batch) {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(
                    error = %err,
                    stat_message_count = batch.messages.len(),
                    "Autoscaler is not reachable from activator. Stats were not sent."
                );
                false
            }
        }
    }

    /// [`send`](Self::send) without the logging.
    pub fn try_send(&self, batch: &WireStatMessages) -> Result<(), SendError> {
        let guard = self.writer.read().unwrap_or_else(|e| e.into_inner());
        let Some(writer) = guard.as_ref() else {
            return Err(SendError::NotConnected);
        };
        writer
            .try_send(Message::Binary(batch.encode_to_vec()))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => SendError::NotConnected,
            })
    }

    /// Resolves once the task has ended after the shutdown signal.
    pub async fn closed(&self) {
        let mut done = self.done.subscribe();
        let _ = done.wait_for(|done| *done).await;
    }

    fn set_writer(&self, writer: Option<mpsc::Sender<Message>>) {
        *self.writer.write().unwrap_or_else(|e| e.into_inner()) = writer;
    }

    async fn run(self: Arc<Self>, config: ConnectionConfig, mut shutdown: watch::Receiver<bool>) {
        loop {
            tracing::info!(url = %self.url, "Connecting to autoscaler");
            let socket = tokio::select! {
                _ = shutdown_requested(&mut shutdown) => break,
                socket = self.dial_round(&config) => socket,
            };
            let Some(socket) = socket else {
                tracing::error!(url = %self.url, "Failed connecting to autoscaler, starting a new backoff round");
                continue;
            };
            match self.serve(socket, &config, &mut shutdown).await {
                Outcome::Shutdown => break,
                Outcome::Broken(reason) => {
                    tracing::error!(url = %self.url, error = %reason, "Autoscaler connection lost, reconnecting");
                }
            }
        }
        tracing::info!(url = %self.url, "Autoscaler connection shut down");
        self.done.send_replace(true);
    }

    /// One backoff round; `None` if every attempt failed.
    async fn dial_round(&self, config: &ConnectionConfig) -> Option<Socket> {
        let mut delays = config.backoff.delays();
        loop {
            match self.dial(config).await {
                Ok(socket) => return Some(socket),
                Err(err) => {
                    tracing::error!(url = %self.url, error = %err, "Websocket connection could not be established");
                }
            }
            sleep(config.backoff.jittered(delays.next()?).min(MAX_TIMER)).await;
        }
    }

    async fn dial(&self, config: &ConnectionConfig) -> Result<Socket, String> {
        let ws_config = WebSocketConfig {
            max_message_size: Some(MAX_INCOMING_MESSAGE),
            max_frame_size: Some(MAX_INCOMING_MESSAGE),
            ..WebSocketConfig::default()
        };
        let dial =
            tokio_tungstenite::connect_async_with_config(self.url.as_str(), Some(ws_config), true);
        match timeout(config.handshake_timeout.min(MAX_TIMER), dial).await {
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("websocket handshake timed out".to_owned()),
        }
    }

    /// Runs one established connection until it breaks or shutdown is requested.
    async fn serve(
        &self,
        socket: Socket,
        config: &ConnectionConfig,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::channel(config.send_queue.max(1));
        self.set_writer(Some(tx));
        self.connected.store(true, Ordering::Release);
        self.reachable.store(1, Ordering::Release);
        tracing::info!(url = %self.url, "Autoscaler connection established");

        let ping_period = config
            .ping_period
            .clamp(Duration::from_millis(1), MAX_TIMER);
        let pong_timeout = config.pong_timeout.min(MAX_TIMER);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_period, ping_period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut deadline = Instant::now() + pong_timeout;

        let outcome = loop {
            tokio::select! {
                _ = shutdown_requested(shutdown) => break Outcome::Shutdown,
                _ = sleep_until(deadline) => {
                    break Outcome::Broken("read deadline exceeded: no pong".to_owned());
                }
                _ = ping.tick() => {
                    if let Err(err) = write(&mut sink, Message::Ping(Vec::new())).await {
                        break Outcome::Broken(format!("failed to send ping: {err}"));
                    }
                }
                Some(msg) = rx.recv() => {
                    if let Err(err) = write(&mut sink, msg).await {
                        break Outcome::Broken(format!("failed to send stats: {err}"));
                    }
                }
                frame = stream.next() => match frame {
                    Some(Ok(Message::Pong(_))) => deadline = Instant::now() + pong_timeout,
                    Some(Ok(Message::Close(frame))) => {
                        let reason = frame.map_or_else(
                            || "close frame received".to_owned(),
                            |f| format!("close frame received: {} {}", u16::from(f.code), f.reason),
                        );
                        break Outcome::Broken(reason);
                    }
                    // Application messages and pings (answered by tungstenite) are ignored.
                    Some(Ok(_)) => {}
                    Some(Err(err)) => break Outcome::Broken(err.to_string()),
                    None => break Outcome::Broken("connection closed".to_owned()),
                },
            }
        };

        self.set_writer(None);
        self.connected.store(false, Ordering::Release);
        self.reachable.store(0, Ordering::Release);
        if matches!(outcome, Outcome::Broken(_)) {
            self.errors.fetch_add(1, Ordering::AcqRel);
        }
        // Best effort: a close frame (or the reply to the peer's), then drop the socket.
        let _ = timeout(CLOSE_TIMEOUT, sink.close()).await;
        outcome
    }
}

async fn write<S>(sink: &mut S, msg: Message) -> Result<(), String>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    match timeout(WRITE_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("write timed out".to_owned()),
    }
}

/// Resolves once `true` is observed; never if the sender is dropped first.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knative_common::stats::{Stat, WireStatMessage};
    use std::sync::atomic::AtomicUsize;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    fn fast() -> ConnectionConfig {
        ConnectionConfig {
            handshake_timeout: Duration::from_secs(2),
            backoff: Backoff {
                initial: Duration::from_millis(10),
                factor: 1.3,
                jitter: 0.5,
                steps: 5,
            },
            ping_period: Duration::from_millis(50),
            pong_timeout: Duration::from_millis(300),
            send_queue: 16,
        }
    }

    fn batch(n: usize) -> WireStatMessages {
        WireStatMessages {
            messages: (0..n)
                .map(|i| WireStatMessage {
                    namespace: "ns".into(),
                    name: format!("rev-{i}"),
                    stat: Some(Stat {
                        pod_name: "activator-1".into(),
                        average_concurrent_requests: 1.5 + i as f64,
                        request_count: i as f64,
                        ..Stat::default()
                    }),
                })
                .collect(),
        }
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out waiting for: {what}"
            );
            sleep(Duration::from_millis(5)).await;
        }
    }

    async fn listener() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", l.local_addr().unwrap());
        (l, url)
    }

    async fn accept(l: &TcpListener) -> WebSocketStream<TcpStream> {
        let (tcp, _) = l.accept().await.unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    }

    /// Reads frames (answering pings) until the stream ends; forwards binary payloads and counts
    /// pings.
    async fn drain(
        mut ws: WebSocketStream<TcpStream>,
        binaries: mpsc::UnboundedSender<Vec<u8>>,
        pings: Arc<AtomicUsize>,
    ) {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Binary(b) => {
                    let _ = binaries.send(b);
                }
                Message::Ping(_) => {
                    pings.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    }

    // §11 item 28: batches arrive as binary messages that decode to what was sent.
    #[tokio::test]
    async fn batches_are_binary_messages_of_wire_stat_messages() {
        let (l, url) = listener().await;
        let (_stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, fast(), stop);
        let ws = accept(&l).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(drain(ws, tx, Arc::new(AtomicUsize::new(0))));
        eventually("connected", || conn.is_connected()).await;
        assert_eq!(conn.reachable(), 1);

        let sent = [batch(3), batch(1), batch(0)];
        for b in &sent {
            assert!(conn.send(b.clone()));
        }
        for want in &sent {
            let got = rx.recv().await.unwrap();
            let got = WireStatMessages::decode(got.as_slice()).unwrap();
            assert_eq!(&got, want);
        }
        let keys: Vec<_> = sent[0]
            .messages
            .iter()
            .map(|m| format!("{}/{}", m.namespace, m.name))
            .collect();
        assert_eq!(keys, ["ns/rev-0", "ns/rev-1", "ns/rev-2"]);
        assert_eq!(conn.errors(), 0);
    }

    // §11 item 28: a send failure is reported, not a crash.
    #[tokio::test]
    async fn send_while_disconnected_is_dropped() {
        let (l, url) = listener().await;
        drop(l); // nothing listens there any more
        let (_stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, fast(), stop);
        assert!(!conn.is_connected());
        assert!(!conn.send(batch(2)));
        assert_eq!(conn.try_send(&batch(1)), Err(SendError::NotConnected));
        sleep(Duration::from_millis(100)).await;
        assert!(!conn.is_connected());
        assert_eq!((conn.reachable(), conn.errors()), (0, 0));
    }

    #[tokio::test]
    async fn reconnects_after_close_1012() {
        let (l, url) = listener().await;
        let (_stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, fast(), stop);
        let mut ws = accept(&l).await;
        eventually("connected", || conn.is_connected()).await;
        ws.close(Some(CloseFrame {
            code: CloseCode::Restart,
            reason: "autoscaler restarting".into(),
        }))
        .await
        .unwrap();
        // The client dials again at once but the server is not accepting yet: disconnected.
        eventually("disconnected", || !conn.is_connected()).await;
        assert_eq!((conn.reachable(), conn.errors()), (0, 1));
        assert!(!conn.send(batch(1)));
        // Our close frame is answered.
        let reply = timeout(Duration::from_secs(2), ws.next()).await.unwrap();
        assert!(
            matches!(reply, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
            "{reply:?}"
        );

        let ws = accept(&l).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(drain(ws, tx, Arc::new(AtomicUsize::new(0))));
        eventually("reconnected", || conn.is_connected()).await;
        assert_eq!(conn.reachable(), 1);
        assert!(conn.send(batch(2)));
        let got = WireStatMessages::decode(rx.recv().await.unwrap().as_slice()).unwrap();
        assert_eq!(got, batch(2));
    }

    #[tokio::test]
    async fn reconnects_after_tcp_drop() {
        let (l, url) = listener().await;
        let (_stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, fast(), stop);
        let ws = accept(&l).await;
        eventually("connected", || conn.is_connected()).await;
        drop(ws);
        eventually("disconnected", || !conn.is_connected()).await;
        assert_eq!(conn.errors(), 1);
        let _ws = accept(&l).await;
        eventually("reconnected", || conn.is_connected()).await;
        assert_eq!((conn.reachable(), conn.errors()), (1, 1));
    }

    #[tokio::test]
    async fn pings_are_answered_and_keep_the_connection() {
        let (l, url) = listener().await;
        let (_stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, fast(), stop);
        let ws = accept(&l).await;
        let pings = Arc::new(AtomicUsize::new(0));
        let (tx, _rx) = mpsc::unbounded_channel();
        tokio::spawn(drain(ws, tx, Arc::clone(&pings)));
        // Well past the 300 ms read deadline: the pongs extend it.
        sleep(Duration::from_millis(800)).await;
        assert!(pings.load(Ordering::SeqCst) >= 5, "{pings:?}");
        assert!(conn.is_connected());
        assert_eq!(conn.errors(), 0);
    }

    #[tokio::test]
    async fn missing_pongs_hit_the_read_deadline() {
        let (l, url) = listener().await;
        let (_stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, fast(), stop);
        // Never read, so never pong.
        let _silent = accept(&l).await;
        eventually("connected", || conn.is_connected()).await;
        let started = std::time::Instant::now();
        eventually("deadline", || conn.errors() == 1).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        let _ws = accept(&l).await;
        eventually("reconnected", || conn.is_connected()).await;
    }

    #[tokio::test]
    async fn garbage_frames_cause_a_reconnect_not_a_panic() {
        let (l, url) = listener().await;
        let (_stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, fast(), stop);
        let mut ws = accept(&l).await;
        eventually("connected", || conn.is_connected()).await;
        ws.get_mut().write_all(&[0xff; 64]).await.unwrap();
        eventually("disconnected", || conn.errors() == 1).await;
        let (tcp, _) = l.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        eventually("reconnected", || conn.is_connected()).await;
        // An oversized text message is refused too.
        ws.send(Message::Text("x".repeat(MAX_INCOMING_MESSAGE + 1)))
            .await
            .unwrap();
        eventually("disconnected again", || conn.errors() == 2).await;
        let _ws = accept(&l).await;
        eventually("reconnected again", || conn.is_connected()).await;
    }

    #[tokio::test]
    async fn handshake_timeout_and_backoff_rounds_retry_forever() {
        let (l, url) = listener().await;
        let mut config = fast();
        config.handshake_timeout = Duration::from_millis(50);
        config.backoff.steps = 2;
        let (_stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, config, stop);
        // Accept TCP but never answer the handshake: each attempt times out.
        let mut held = Vec::new();
        for _ in 0..5 {
            let (tcp, _) = timeout(Duration::from_secs(3), l.accept())
                .await
                .expect("another dial attempt")
                .unwrap();
            held.push(tcp);
        }
        assert!(!conn.is_connected());
        // A proper server is finally reached (a dial that already gave up may be in the
        // backlog, so keep accepting).
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                        let (tx, _rx) = mpsc::unbounded_channel();
                        drain(ws, tx, Arc::new(AtomicUsize::new(0))).await;
                    }
                });
            }
        });
        eventually("connected", || conn.is_connected()).await;
        assert_eq!(conn.errors(), 0);
    }

    #[tokio::test]
    async fn shutdown_closes_the_socket_and_ends_the_task() {
        let (l, url) = listener().await;
        let (stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, fast(), stop);
        let mut ws = accept(&l).await;
        eventually("connected", || conn.is_connected()).await;
        stop_tx.send_replace(true);
        timeout(Duration::from_secs(2), conn.closed())
            .await
            .expect("task ended");
        assert!(!conn.is_connected());
        assert_eq!((conn.reachable(), conn.errors()), (0, 0));
        loop {
            match timeout(Duration::from_secs(2), ws.next()).await.unwrap() {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
        assert!(!conn.send(batch(1)));
    }

    #[tokio::test]
    async fn shutdown_while_dialing() {
        let (l, url) = listener().await;
        drop(l);
        let (stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, fast(), stop);
        sleep(Duration::from_millis(30)).await;
        stop_tx.send_replace(true);
        timeout(Duration::from_secs(2), conn.closed())
            .await
            .expect("task ended");
    }

    #[tokio::test]
    async fn invalid_url_is_retried_without_panicking() {
        let (_stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config("not a url".into(), fast(), stop);
        sleep(Duration::from_millis(100)).await;
        assert!(!conn.is_connected());
        assert!(!conn.send(batch(1)));
    }

    #[tokio::test]
    async fn absurd_timings_do_not_panic() {
        let (l, url) = listener().await;
        let config = ConnectionConfig {
            handshake_timeout: Duration::MAX,
            backoff: Backoff {
                initial: Duration::MAX,
                factor: f64::MAX,
                jitter: f64::MAX,
                steps: u32::MAX,
            },
            ping_period: Duration::MAX,
            pong_timeout: Duration::MAX,
            send_queue: 0,
        };
        let (stop_tx, stop) = watch::channel(false);
        let conn = AutoscalerConnection::spawn_with_config(url, config, stop);
        let ws = accept(&l).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(drain(ws, tx, Arc::new(AtomicUsize::new(0))));
        eventually("connected", || conn.is_connected()).await;
        assert!(conn.send(batch(1)));
        assert_eq!(
            WireStatMessages::decode(rx.recv().await.unwrap().as_slice()).unwrap(),
            batch(1)
        );
        stop_tx.send_replace(true);
        timeout(Duration::from_secs(2), conn.closed())
            .await
            .expect("task ended");
    }

    #[test]
    fn default_timings() {
        let c = ConnectionConfig::default();
        assert_eq!(c.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.pong_timeout, Duration::from_secs(10));
        assert_eq!(c.ping_period, Duration::from_nanos(3_333_333_333));
        assert_eq!(
            c.backoff,
            Backoff {
                initial: Duration::from_millis(100),
                factor: 1.3,
                jitter: 0.5,
                steps: 20
            }
        );
    }

    #[test]
    fn backoff_delays_grow_by_the_factor() {
        let b = Backoff::default();
        let delays: Vec<_> = b.delays().collect();
        assert_eq!(delays.len(), 19, "20 attempts, 19 sleeps");
        let ms: Vec<f64> = delays.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        for (i, got) in ms.iter().enumerate() {
            let want = 100.0 * 1.3f64.powi(i as i32);
            assert!((got - want).abs() < 1e-3, "delay {i}: {got} vs {want}");
        }
        for d in &delays {
            for _ in 0..20 {
                let j = b.jittered(*d);
                assert!(j >= *d && j <= d.mul_f64(1.5), "{j:?} for {d:?}");
            }
        }
        let no_jitter = Backoff { jitter: 0.0, ..b };
        assert_eq!(no_jitter.jittered(delays[3]), delays[3]);
        // Nonsense values neither panic nor stop the iteration.
        let weird = Backoff {
            initial: Duration::MAX,
            factor: f64::NAN,
            jitter: f64::INFINITY,
            steps: 3,
        };
        let delays: Vec<_> = weird.delays().collect();
        assert_eq!(delays, vec![Duration::MAX, Duration::MAX]);
        assert_eq!(
            weird.jittered(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
        assert_eq!(Backoff { steps: 0, ..b }.delays().count(), 0);
    }
}
