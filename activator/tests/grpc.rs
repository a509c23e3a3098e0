//! gRPC end to end: a real gRPC server (tonic, served with hyper's HTTP/2 server) behind a real
//! queue-proxy behind the activator, all h2c, with a tonic client. Unary and bidirectional
//! streaming calls keep their messages, metadata and `grpc-status` trailers (OK and errors, also
//! after messages), and a slow reader of a 100 MiB server stream makes neither proxy buffer it:
//! HTTP/2 flow control holds the server back.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::{self, Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tonic::codec::ProstCodec;
use tonic::{Code, Status, Streaming};

const REVISION: &str = "grpc-00001";
/// Size of each message of the large server stream.
const CHUNK: usize = 64 * 1024;
/// The large server stream.
const LARGE: u64 = 100 << 20;
/// How much of it the slow reader reads before it stops.
const READ_FIRST: u64 = 4 << 20;
/// Bound on what may sit between the server and the stopped reader (every hop's HTTP/2 windows
/// and socket buffers), and on each proxy's RSS growth meanwhile: far below the 100 MiB that
/// buffering the stream would take.
const IN_FLIGHT_BOUND: u64 = 40 << 20;

/// The one message type of the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
    /// Download: how many bytes to stream back.
    #[prost(uint64, tag = "3")]
    size: u64,
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// A gRPC server on a free loopback port: `test.Echo/Unary`, `/Chat` (bidirectional: one reply
/// per message) and `/Download` (server stream of `size` bytes), counting the bytes it produced.
struct GrpcServer {
    port: u16,
    produced: Arc<AtomicU64>,
}

async fn grpc_server() -> GrpcServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| route(request, counter.clone()));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    GrpcServer { port, produced }
}

async fn route(
    request: http::Request<Incoming>,
    produced: Arc<AtomicU64>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
    Ok(match request.uri().path() {
        "/test.Echo/Unary" => grpc.unary(tower::service_fn(unary), request).await,
        "/test.Echo/Chat" => grpc.streaming(tower::service_fn(chat), request).await,
        "/test.Echo/Download" => {
            let service = tower::service_fn(move |r| download(r, produced.clone()));
            grpc.server_streaming(service, request).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    })
}

async fn unary(request: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
    let msg = request.into_inner();
    if msg.text == "fail" {
        return Err(Status::failed_precondition("told to fail"));
    }
    let mut response = tonic::Response::new(Msg {
        text: format!("echo: {}", msg.text),
        ..Msg::default()
    });
    response
        .metadata_mut()
        .insert("x-served-by", "tonic".parse().expect("metadata value"));
    Ok(response)
}

// tonic's streams carry `Result<_, Status>`, a large error type by clippy's measure.
#[allow(clippy::result_large_err)]
async fn chat(
    request: tonic::Request<Streaming<Msg>>,
) -> Result<tonic::Response<MsgStream>, Status> {
    let replies = request.into_inner().map(|msg| {
        let msg = msg?;
        if msg.text == "fail" {
            return Err(Status::aborted("told to fail mid-stream"));
        }
        Ok(Msg {
            text: format!("echo: {}", msg.text),
            ..Msg::default()
        })
    });
    Ok(tonic::Response::new(Box::pin(replies)))
}

async fn download(
    request: tonic::Request<Msg>,
    produced: Arc<AtomicU64>,
) -> Result<tonic::Response<MsgStream>, Status> {
    let size = request.into_inner().size;
    // Lazy: a message is made only when the server's HTTP/2 stream has room for more.
    let chunks = stream::unfold(0u64, move |sent| {
        let produced = produced.clone();
        async move {
            if sent >= size {
                return None;
            }
            let n = CHUNK.min((size - sent) as usize);
            produced.fetch_add(n as u64, Ordering::Relaxed);
            let msg = Msg {
                data: vec![b'x'; n],
                ..Msg::default()
            };
            Some((Ok(msg), sent + n as u64))
        }
    });
    Ok(tonic::Response::new(Box::pin(chunks)))
}

/// A tonic channel over one hyper h2c (prior knowledge) connection.
#[derive(Clone)]
struct H2Channel(http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for H2Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

async fn grpc_client(addr: std::net::SocketAddr) -> tonic::client::Grpc<H2Channel> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    let origin = format!("http://{addr}").parse().expect("origin");
    let mut client = tonic::client::Grpc::with_origin(H2Channel(sender), origin);
    client.ready().await.expect("connection ready");
    client
}

/// A request routed to the test revision by the activator.
fn to_revision<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("knative-serving-namespace", NS.parse().expect("value"));
    metadata.insert("knative-serving-revision", REVISION.parse().expect("value"));
    request
}

fn text(text: &str) -> Msg {
    Msg {
        text: text.to_owned(),
        ..Msg::default()
    }
}

/// The chain: activator -> queue-proxy (CC 0, h2c to the app) -> the gRPC server.
struct Chain {
    server: GrpcServer,
    qp: QueueProxy,
    activator: Activator,
    _stats: StatsReceiver,
}

async fn chain() -> Chain {
    let server = grpc_server().await;
    let port = server.port;
    let qp = tokio::task::spawn_blocking(move || QueueProxy::start(port, REVISION, 0))
        .await
        .expect("start queue-proxy");
    let stats = StatsReceiver::start().await;
    let activator = ActivatorConfig::new(&stats.url())
        .revisions(&[Rev::new(REVISION, 0).h2c().ready([qp.addr()])])
        .start();
    activator.wait_healthy().await;
    Chain {
        server,
        qp,
        activator,
        _stats: stats,
    }
}

/// Waits (bounded) until the revision's pod is probed and a unary call goes through.
async fn first_unary(client: &mut tonic::client::Grpc<H2Channel>) -> tonic::Response<Msg> {
    eventually(DEADLINE, "a unary call through the chain", || {
        let mut client = client.clone();
        async move {
            client.ready().await.ok()?;
            client
                .unary(
                    to_revision(text("hello")),
                    PathAndQuery::from_static("/test.Echo/Unary"),
                    ProstCodec::default(),
                )
                .await
                .ok()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_bidirectional_streaming_through_activator_and_queue_proxy() {
    let mut chain = chain().await;
    let mut client = grpc_client(chain.activator.h2c_addr()).await;

    // Unary: the reply, its response metadata, grpc-status 0.
    let response = first_unary(&mut client).await;
    assert_eq!(response.get_ref().text, "echo: hello");
    assert_eq!(response.metadata().get("x-served-by").unwrap(), "tonic");

    // Unary error: code and message arrive intact (trailers-only response).
    client.ready().await.expect("ready");
    let status = client
        .unary::<Msg, Msg, _>(
            to_revision(text("fail")),
            PathAndQuery::from_static("/test.Echo/Unary"),
            ProstCodec::default(),
        )
        .await
        .expect_err("the server failed the call");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "told to fail");

    // Bidirectional: each reply arrives before the next message is sent (nothing waits for
    // the end of the request stream), then grpc-status 0 in the trailers.
    for (messages, fail) in [(5, false), (3, true)] {
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let outbound = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        client.ready().await.expect("ready");
        let response = tokio::time::timeout(
            DEADLINE,
            client.streaming(
                to_revision(outbound),
                PathAndQuery::from_static("/test.Echo/Chat"),
                ProstCodec::<Msg, Msg>::default(),
            ),
        )
        .await
        .expect("response head before the request stream ends")
        .expect("chat call");
        let mut inbound = response.into_inner();
        for i in 0..messages {
            tx.send(text(&format!("m{i}")))
                .await
                .expect("request stream open");
            let reply = tokio::time::timeout(DEADLINE, inbound.message())
                .await
                .expect("reply before the next message")
                .expect("reply")
                .expect("a message");
            assert_eq!(reply.text, format!("echo: m{i}"));
        }
        if fail {
            // An error status after messages: it travels in the trailers.
            tx.send(text("fail")).await.expect("request stream open");
            let status = tokio::time::timeout(DEADLINE, inbound.message())
                .await
                .expect("the error status")
                .expect_err("the server failed the stream");
            assert_eq!(status.code(), Code::Aborted);
            assert_eq!(status.message(), "told to fail mid-stream");
        } else {
            drop(tx);
            let end = tokio::time::timeout(DEADLINE, inbound.message())
                .await
                .expect("end of the reply stream");
            assert!(matches!(end, Ok(None)), "{end:?}");
            let trailers = inbound
                .trailers()
                .await
                .expect("trailers")
                .expect("trailers present");
            assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        }
    }
    chain.qp.assert_healthy();
    chain.activator.assert_healthy();
}

/// Flow control end to end: the reader takes 4 MiB of a 100 MiB stream and stops. The server
/// must stall a bounded distance ahead (every hop's windows and socket buffers), and neither
/// proxy's RSS may grow by anything like the stream; then the reader takes the rest, and the
/// stream ends with grpc-status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_of_a_large_stream_is_not_buffered_by_either_proxy() {
    let mut chain = chain().await;
    let mut client = grpc_client(chain.activator.h2c_addr()).await;
    first_unary(&mut client).await;
    let act_pid = chain.activator.pid();
    let qp_pid = chain.qp.pid();
    let rss = |pid| rss_kib(pid).expect("RSS") * 1024;
    let (act_before, qp_before) = (rss(act_pid), rss(qp_pid));

    client.ready().await.expect("ready");
    let request = Msg {
        size: LARGE,
        ..Msg::default()
    };
    let response = client
        .server_streaming(
            to_revision(request),
            PathAndQuery::from_static("/test.Echo/Download"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .expect("download call");
    let mut inbound = response.into_inner();
    let mut read = 0u64;
    while read < READ_FIRST {
        let msg = tokio::time::timeout(DEADLINE, inbound.message())
            .await
            .expect("a message")
            .expect("no error")
            .expect("not the end");
        read += msg.data.len() as u64;
    }

    // The reader stops. Wait until the server stalls (no progress for 500 ms).
    let started = Instant::now();
    let mut last = chain.server.produced.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_millis(500) {
        assert!(started.elapsed() < DEADLINE, "the server never stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = chain.server.produced.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
    let ahead = last - read;
    let act_growth = rss(act_pid).saturating_sub(act_before);
    let qp_growth = rss(qp_pid).saturating_sub(qp_before);
    eprintln!(
        "slow reader: read {} MiB, server produced {} MiB ({} MiB in flight); RSS growth: \
         activator {:.1} MiB, queue-proxy {:.1} MiB",
        read >> 20,
        last >> 20,
        ahead >> 20,
        act_growth as f64 / (1 << 20) as f64,
        qp_growth as f64 / (1 << 20) as f64
    );
    assert!(
        ahead < IN_FLIGHT_BOUND,
        "the server got {ahead} bytes ahead of the reader"
    );
    assert!(
        act_growth < IN_FLIGHT_BOUND,
        "activator RSS grew by {act_growth} bytes"
    );
    assert!(
        qp_growth < IN_FLIGHT_BOUND,
        "queue-proxy RSS grew by {qp_growth} bytes"
    );

    // The rest, then grpc-status 0.
    while let Some(msg) = tokio::time::timeout(DEADLINE, inbound.message())
        .await
        .expect("a message")
        .expect("no error")
    {
        read += msg.data.len() as u64;
    }
    assert_eq!(read, LARGE);
    let trailers = inbound
        .trailers()
        .await
        .expect("trailers")
        .expect("trailers present");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    chain.qp.assert_healthy();
    chain.activator.assert_healthy();
}
