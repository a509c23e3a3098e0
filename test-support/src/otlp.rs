//! An OTLP collector for tests, built from the OpenTelemetry crates rather than by hand: `grpc`
//! export calls are served by opentelemetry-proto's tonic `TraceService` and `MetricsService`
//! servers, and `http/protobuf` posts are decoded into opentelemetry-proto's messages. It listens
//! on a free loopback port for HTTP/1.1 and h2c, answers every export with success, and hands
//! each decoded request to the test.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower_service::Service;

/// One export request as the collector received it.
#[derive(Debug)]
pub struct Export<T> {
    /// Request path (`/v1/traces`, or the gRPC method path).
    pub path: String,
    /// Whether it came as a gRPC call.
    pub grpc: bool,
    /// Request headers (gRPC: the call's metadata).
    pub headers: HeaderMap,
    /// The decoded export request.
    pub request: T,
}

/// A running collector; exports arrive on [`OtlpCollector::traces`] and
/// [`OtlpCollector::metrics`].
pub struct OtlpCollector {
    addr: SocketAddr,
    /// Trace export requests, in arrival order.
    pub traces: mpsc::UnboundedReceiver<Export<ExportTraceServiceRequest>>,
    /// Metrics export requests, in arrival order.
    pub metrics: mpsc::UnboundedReceiver<Export<ExportMetricsServiceRequest>>,
}

struct Sink {
    traces: mpsc::UnboundedSender<Export<ExportTraceServiceRequest>>,
    metrics: mpsc::UnboundedSender<Export<ExportMetricsServiceRequest>>,
}

#[tonic::codegen::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let _ = self.traces.send(Export {
            path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export".to_owned(),
            grpc: true,
            headers,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::codegen::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let _ = self.metrics.send(Export {
            path: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export".to_owned(),
            grpc: true,
            headers,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl OtlpCollector {
    /// Starts the collector on 127.0.0.1 (a free port).
    pub async fn start() -> OtlpCollector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (traces_tx, traces) = mpsc::unbounded_channel();
        let (metrics_tx, metrics) = mpsc::unbounded_channel();
        let sink = std::sync::Arc::new(Sink {
            traces: traces_tx,
            metrics: metrics_tx,
        });
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let sink = sink.clone();
                    async move { Ok::<_, Infallible>(handle(sink, request).await) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        OtlpCollector {
            addr,
            traces,
            metrics,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn handle(
    sink: std::sync::Arc<Sink>,
    request: Request<Incoming>,
) -> Response<tonic::body::Body> {
    let grpc = request
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = request.uri().path().to_owned();
    if grpc {
        let response = if path.starts_with("/opentelemetry.proto.collector.metrics.v1.") {
            MetricsServiceServer::from_arc(sink).call(request).await
        } else {
            TraceServiceServer::from_arc(sink).call(request).await
        };
        return match response {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    let headers = request.headers().clone();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let reply = if path.ends_with("/v1/metrics") {
        let request = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request");
        let _ = sink.metrics.send(Export {
            path,
            grpc: false,
            headers,
            request,
        });
        ExportMetricsServiceResponse::default().encode_to_vec()
    } else {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace request");
        let _ = sink.traces.send(Export {
            path,
            grpc: false,
            headers,
            request,
        });
        ExportTraceServiceResponse::default().encode_to_vec()
    };
    Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(tonic::body::Body::new(Full::new(Bytes::from(reply))))
        .unwrap()
}
