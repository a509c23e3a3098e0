//! The reference point of the load benchmark: a bare hyper reverse proxy with hyper-util's pooled
//! legacy client and nothing else (no limits, no stats, no header rules). The queue-proxy, doing
//! all its work, is measured against it.
//!
//! Usage: `bare-hop <listen port> <upstream port>`.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen: u16 = args.next().unwrap_or_else(|| "8013".into()).parse()?;
    let upstream: u16 = args.next().unwrap_or_else(|| "8080".into()).parse()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], listen))).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let uri: Uri = format!("http://127.0.0.1:{upstream}{pq}")
                        .parse()
                        .expect("valid URI");
                    *req.uri_mut() = uri;
                    Ok::<_, Infallible>(match client.request(req).await {
                        Ok(response) => response.map(http_body_util::Either::Left),
                        Err(_) => {
                            let mut r = http::Response::new(http_body_util::Either::Right(
                                http_body_util::Empty::new(),
                            ));
                            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                            r
                        }
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
