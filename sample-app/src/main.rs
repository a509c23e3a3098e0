//! A small user container for demos, tests and benchmarks. Serves HTTP/1.1 and h2c on `$PORT`
//! (default 8080), like a Knative app:
//!
//! - `GET /` — a short greeting;
//! - `GET /sleep?ms=N` — answers after N milliseconds;
//! - `POST /echo` — streams the request body back;
//! - `GET /bytes?n=N` — streams N bytes;
//! - `GET /trailers` — a chunked body followed by gRPC-style trailers;
//! - `GET /headers` — the request head as text;
//! - `GET /concurrency` — current and highest concurrent requests seen, and requests served;
//! - `GET /ws` — websocket echo;
//! - `POST /grpc-echo` — a gRPC-style bidirectional stream (use HTTP/2): every request data frame
//!   is echoed as soon as it arrives, then trailers `grpc-status: 0`.
//!
//! `STARTUP_DELAY_MS` delays listening (a slow-starting app). Every response carries
//! `x-instance: $INSTANCE` when that variable is set (the local stack names its instances).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Body = BoxBody<Bytes, hyper::Error>;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static HIGHEST: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicUsize = AtomicUsize::new(0);
static INSTANCE: std::sync::OnceLock<Option<HeaderValue>> = std::sync::OnceLock::new();

struct Counted;
impl Counted {
    fn enter() -> Self {
        let now = CURRENT.fetch_add(1, Ordering::SeqCst) + 1;
        HIGHEST.fetch_max(now, Ordering::SeqCst);
        TOTAL.fetch_add(1, Ordering::SeqCst);
        Counted
    }
}
impl Drop for Counted {
    fn drop(&mut self) {
        CURRENT.fetch_sub(1, Ordering::SeqCst);
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

fn query_number(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut response = route(req).await;
    if let Some(Some(name)) = INSTANCE.get() {
        response.headers_mut().insert("x-instance", name.clone());
    }
    Ok(response)
}

async fn route(mut req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/concurrency" {
        // Not counted itself: it reports on the other requests.
        return Response::new(full(format!(
            "{{\"current\":{},\"highest\":{},\"total\":{}}}\n",
            CURRENT.load(Ordering::SeqCst),
            HIGHEST.load(Ordering::SeqCst),
            TOTAL.load(Ordering::SeqCst)
        )));
    }
    let counted = Counted::enter();
    let response = match req.uri().path() {
        "/" => Response::new(full("Hello from the Knative sample app!\n")),
        "/sleep" => {
            tokio::time::sleep(Duration::from_millis(query_number(&req, "ms"))).await;
            Response::new(full("slept\n"))
        }
        "/echo" => {
            // Stream the body back; the counter lives until the echo ends.
            let body = req.into_body().map_frame(move |f| {
                let _keep = &counted;
                f
            });
            return Response::new(body.boxed());
        }
        "/grpc-echo" => {
            // Data frames go back as they come; the request's trailers are replaced by ours.
            let mut ok = HeaderMap::new();
            ok.insert("grpc-status", HeaderValue::from_static("0"));
            let stream = futures_util::stream::unfold(
                (req.into_body(), Some(ok), counted),
                |(mut body, mut trailers, counted)| async move {
                    loop {
                        match body.frame().await {
                            Some(Ok(frame)) if frame.is_data() => {
                                return Some((Ok(frame), (body, trailers, counted)))
                            }
                            Some(Ok(_)) => continue,
                            Some(Err(e)) => return Some((Err(e), (body, None, counted))),
                            None => {
                                let t = trailers.take()?;
                                return Some((Ok(Frame::trailers(t)), (body, None, counted)));
                            }
                        }
                    }
                },
            );
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            return response;
        }
        "/bytes" => {
            let mut left = query_number(&req, "n");
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::poll_fn(move |_| {
                if left == 0 {
                    return std::task::Poll::Ready(None);
                }
                let n = left.min(chunk.len() as u64) as usize;
                left -= n as u64;
                std::task::Poll::Ready(Some(Ok::<_, hyper::Error>(Frame::data(chunk.slice(..n)))))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("ok"));
            let frames = vec![
                Ok(Frame::data(Bytes::from_static(b"chunk-1;"))),
                Ok(Frame::data(Bytes::from_static(b"chunk-2;"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(
                futures_util::stream::iter(frames),
            )));
            response.headers_mut().insert(
                "trailer",
                HeaderValue::from_static("grpc-status, grpc-message"),
            );
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            response
        }
        "/headers" => {
            let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (name, value) in req.headers() {
                text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
            }
            Response::new(full(text))
        }
        "/ws" => return websocket(&mut req),
        _ => {
            let mut r = Response::new(full("not found\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    drop(counted);
    response
}

fn websocket(req: &mut Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("expected a websocket upgrade\n"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header"),
    );
    r
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let delay: u64 = std::env::var("STARTUP_DELAY_MS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    INSTANCE.get_or_init(|| {
        std::env::var("INSTANCE")
            .ok()
            .and_then(|v| HeaderValue::from_str(&v).ok())
    });
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("sample-app listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    hyper::service::service_fn(handle),
                )
                .await;
        });
    }
}
