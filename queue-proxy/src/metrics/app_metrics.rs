//! Layer 10 (spec §3.1, §7.1): the queue-proxy's own request metrics, measured around the
//! reverse proxy, inside the breaker.
//!
//! - `kn_serving_queue_depth` (gauge): at entry, when a breaker exists (CC > 0), the breaker's
//!   in-flight count (waiting + executing, this request included). Set for every request that
//!   reaches the layer, probes too, as upstream.
//! - `kn_serving_invocation_duration_seconds` (histogram, label `http_response_status_code`):
//!   from entry until the response body has been delivered; not for probes. A response that
//!   never completes records `500` if its head had been produced or the inner stages panicked
//!   (upstream recovers the panic and records 500), and `502` if the request was abandoned before
//!   the user container answered (timeout or client gone: upstream's proxy error handler then
//!   writes 502 into the recorder).

use std::fmt;
use std::sync::atomic::AtomicI64;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use hyper::body::Body;
use knative_common::breaker::Breaker;
use knative_common::classify::is_probe;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::body::{Completion, MeteredBody, MeteredFuture};
use super::histogram::{AtomicHistogram, HistogramSnapshot};
use super::status_table::StatusTable;
use super::{label, Metrics, Scope, DURATION_BUCKETS};

pub(crate) const SCOPE: Scope = Scope {
    name: "knative.dev/serving/pkg/queue",
    version: "",
};

/// Gauge value meaning "never set" (the family is then left out, as upstream).
const UNSET: i64 = i64::MIN;

/// The layer-10 instruments.
pub(crate) struct AppInstruments {
    queue_depth: Gauge<i64, AtomicI64>,
    invocations: StatusTable<AtomicHistogram>,
}

impl Default for AppInstruments {
    fn default() -> Self {
        let queue_depth = Gauge::default();
        queue_depth.set(UNSET);
        AppInstruments {
            queue_depth,
            invocations: StatusTable::default(),
        }
    }
}

impl fmt::Debug for AppInstruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppInstruments")
            .field("queue_depth", &self.queue_depth.get())
            .finish_non_exhaustive()
    }
}

/// `http_response_status_code` (if any) and the scope labels.
struct AppLabels {
    status: Option<StatusCode>,
}

impl EncodeLabelSet for AppLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        if let Some(status) = self.status {
            label(encoder, "http_response_status_code", status.as_str())?;
        }
        SCOPE.encode(encoder)
    }
}

impl AppInstruments {
    #[inline]
    pub(crate) fn set_queue_depth(&self, in_flight: usize) {
        self.queue_depth
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
    }

    #[inline]
    pub(crate) fn record(&self, status: u16, seconds: f64) {
        self.invocations.with(
            status,
            || AtomicHistogram::new(&DURATION_BUCKETS),
            |h| h.observe(seconds),
        );
    }

    /// The queue depth, unless never set.
    pub(crate) fn queue_depth(&self) -> Option<i64> {
        Some(self.queue_depth.get()).filter(|d| *d != UNSET)
    }

    /// The invocation histograms by status code, ascending.
    pub(crate) fn invocations(&self) -> Vec<(u16, HistogramSnapshot)> {
        let mut rows = Vec::new();
        let _ = self.invocations.for_each::<()>(|status, h| {
            rows.push((status, h.snapshot()));
            Ok(())
        });
        rows
    }

    /// Writes `kn_serving_invocation_duration_seconds` and `kn_serving_queue_depth` (each left
    /// out while it has no data).
    pub(crate) fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        if !self.invocations.is_empty() {
            let mut family = encoder.encode_descriptor(
                "kn_serving_invocation_duration_seconds",
                "The duration of task execution",
                None,
                MetricType::Histogram,
            )?;
            self.invocations.for_each(|status, histogram| {
                let labels = AppLabels {
                    status: Some(StatusCode::from_u16(status).map_err(|_| fmt::Error)?),
                };
                histogram.encode(family.encode_family(&labels)?)
            })?;
        }
        let depth = self.queue_depth.get();
        if depth != UNSET {
            let mut family = encoder.encode_descriptor(
                "kn_serving_queue_depth",
                "Number of current requests in the queue",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(depth).encode(family.encode_family(&AppLabels { status: None })?)?;
        }
        Ok(())
    }
}

/// A layer-10 measurement in progress.
pub struct AppCompletion {
    metrics: &'static Metrics,
    start: Instant,
    status: u16,
}

impl Completion for AppCompletion {
    fn respond(&mut self, status: StatusCode) {
        self.status = status.as_u16();
    }

    fn complete(self, _response_bytes: u64) {
        self.metrics
            .app()
            .record(self.status, self.start.elapsed().as_secs_f64());
    }

    fn abort(self, responded: bool) {
        let status = if responded || std::thread::panicking() {
            500
        } else {
            502
        };
        self.metrics
            .app()
            .record(status, self.start.elapsed().as_secs_f64());
    }
}

/// Tower layer for layer 10, placed between the breaker and the reverse proxy; `None` metrics
/// (request metrics off) passes everything through.
#[derive(Clone, Copy, Debug)]
pub struct AppMetricsLayer {
    metrics: Option<&'static Metrics>,
    breaker: Option<&'static Breaker>,
}

impl AppMetricsLayer {
    /// Records into `metrics`; the queue depth is read from `breaker` (none when CC = 0).
    pub fn new(metrics: Option<&'static Metrics>, breaker: Option<&'static Breaker>) -> Self {
        AppMetricsLayer { metrics, breaker }
    }
}

impl<S> Layer<S> for AppMetricsLayer {
    type Service = AppMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AppMetricsService {
            inner,
            metrics: self.metrics,
            breaker: self.breaker,
        }
    }
}

/// See [`AppMetricsLayer`].
#[derive(Clone, Debug)]
pub struct AppMetricsService<S> {
    inner: S,
    metrics: Option<&'static Metrics>,
    breaker: Option<&'static Breaker>,
}

impl<S, ReqB, B> Service<Request<ReqB>> for AppMetricsService<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: Body,
{
    type Response = Response<MeteredBody<B, AppCompletion>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future, AppCompletion>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let completion = self.metrics.and_then(|metrics| {
            if let Some(breaker) = self.breaker {
                metrics.app().set_queue_depth(breaker.pending());
            }
            (!is_probe(request.headers())).then(|| AppCompletion {
                metrics,
                start: Instant::now(),
                status: 200,
            })
        });
        let head = request.method() == http::Method::HEAD;
        MeteredFuture::new(self.inner.call(request), completion, head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::body::Frame;
    use knative_common::body::{BodyError, LocalBody, ProxyBody};
    use knative_common::proxy::TunnelScope;

    use crate::metrics::tests::{golden, header_lines, label_keys};
    use crate::metrics::Resource;

    const SCOPE_LABELS: &str = "otel_scope_name=\"knative.dev/serving/pkg/queue\",\
otel_scope_schema_url=\"\",otel_scope_version=\"\"";

    fn metrics() -> &'static Metrics {
        let env: HashMap<&str, &str> = HashMap::new();
        Box::leak(Box::new(Metrics::new(Resource::from_env(&env))))
    }

    fn breaker(cc: usize) -> &'static Breaker {
        Box::leak(Box::new(Breaker::for_container_concurrency(cc).unwrap()))
    }

    /// A user container answering `ok` after `delay`.
    fn app(
        delay: Duration,
    ) -> impl Service<Request<()>, Response = Response<ProxyBody>, Error = Infallible> + Clone {
        tower::service_fn(move |_req: Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Response::new(ProxyBody::full(Bytes::from_static(b"ok"))))
        })
    }

    fn sample(text: &str, name: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    }

    fn series(suffix: &str, status: u16, le: Option<&str>) -> String {
        let le = le.map_or(String::new(), |le| format!("le=\"{le}\","));
        format!(
            "kn_serving_invocation_duration_seconds_{suffix}{{{le}http_response_status_code=\"{status}\",{SCOPE_LABELS}}}"
        )
    }

    #[tokio::test(start_paused = true)]
    async fn m1_queue_depth_and_one_second_invocation() {
        let m = metrics();
        let b = breaker(1);
        // The request itself holds the breaker's only slot when it reaches layer 10.
        let _admitted = b.try_permit().unwrap();
        let mut svc = AppMetricsLayer::new(Some(m), Some(b)).layer(app(Duration::from_secs(1)));
        let response = svc.call(Request::new(())).await.unwrap();
        assert_eq!(
            &response.into_body().collect().await.unwrap().to_bytes()[..],
            b"ok"
        );

        let text = m.encode();
        assert_eq!(
            sample(&text, &format!("kn_serving_queue_depth{{{SCOPE_LABELS}}}")).as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            sample(&text, &series("count", 200, None)).as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(&text, &series("sum", 200, None)).as_deref(),
            Some("1.0")
        );
        // The sample is in (0.75, 1]: 0 up to 0.75, 1 from 1 on.
        assert_eq!(
            sample(&text, &series("bucket", 200, Some("0.75"))).as_deref(),
            Some("0")
        );
        assert_eq!(
            sample(&text, &series("bucket", 200, Some("1.0"))).as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(&text, &series("bucket", 200, Some("+Inf"))).as_deref(),
            Some("1")
        );
        // The 14 bounds of §7.1, then +Inf.
        let bounds: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("kn_serving_invocation_duration_seconds_bucket"))
            .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        assert_eq!(
            bounds,
            [
                "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0",
                "2.5", "5.0", "7.5", "10.0", "+Inf"
            ]
        );

        // Same HELP/TYPE lines and label keys as the upstream capture.
        let golden = golden();
        if !golden.is_empty() {
            for family in [
                "kn_serving_invocation_duration_seconds",
                "kn_serving_queue_depth",
            ] {
                assert_eq!(header_lines(&text, family), header_lines(&golden, family));
            }
            for sample in [
                "kn_serving_invocation_duration_seconds_bucket",
                "kn_serving_invocation_duration_seconds_sum",
                "kn_serving_invocation_duration_seconds_count",
                "kn_serving_queue_depth",
            ] {
                assert_eq!(label_keys(&text, sample), label_keys(&golden, sample));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn m2_probes_add_nothing_to_the_histogram() {
        let m = metrics();
        let mut svc = AppMetricsLayer::new(Some(m), Some(breaker(2))).layer(app(Duration::ZERO));
        let response = svc.call(Request::new(())).await.unwrap();
        response.into_body().collect().await.unwrap();
        for (name, value) in [
            ("k-network-probe", "queue"),
            ("k-network-probe", "anything"),
            ("k-kubelet-probe", "1"),
            ("user-agent", "kube-probe/1.30"),
        ] {
            let request = Request::builder().header(name, value).body(()).unwrap();
            let response = svc.call(request).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        let text = m.encode();
        assert_eq!(
            sample(&text, &series("count", 200, None)).as_deref(),
            Some("1")
        );
        // The queue depth is still sampled for probes (upstream records it first).
        assert!(text.contains("kn_serving_queue_depth{"));
    }

    #[tokio::test(start_paused = true)]
    async fn m3_panic_records_500_and_propagates() {
        let m = metrics();
        let panicking = tower::service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if true {
                panic!("handler panic");
            }
            Ok::<Response<ProxyBody>, Infallible>(Response::new(ProxyBody::empty()))
        });
        let mut svc = AppMetricsLayer::new(Some(m), None).layer(panicking);
        let call = svc.call(Request::new(()));
        let joined = tokio::spawn(call).await;
        assert!(
            joined.err().is_some_and(|e| e.is_panic()),
            "the panic propagates"
        );
        let text = m.encode();
        assert_eq!(
            sample(&text, &series("count", 500, None)).as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(&text, &series("sum", 500, None)).as_deref(),
            Some("1.0")
        );
        assert!(
            !text.contains("kn_serving_queue_depth"),
            "no breaker, no gauge"
        );
    }

    #[tokio::test]
    async fn aborted_body_records_500() {
        let m = metrics();
        let failing = tower::service_fn(|_req: Request<()>| async {
            let frames: Vec<Result<Frame<Bytes>, BodyError>> = vec![
                Ok(Frame::data(Bytes::from_static(b"partial"))),
                Err("upstream connection reset".into()),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            Ok::<_, Infallible>(Response::new(body))
        });
        let mut svc = AppMetricsLayer::new(Some(m), None).layer(failing);
        let response = svc.call(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.into_body().collect().await.is_err());

        // A body dropped half-way (client gone) is an abort too.
        let slow = tower::service_fn(|_req: Request<()>| async {
            let frames: Vec<Result<Frame<Bytes>, BodyError>> = vec![
                Ok(Frame::data(Bytes::from_static(b"a"))),
                Ok(Frame::data(Bytes::from_static(b"b"))),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            Ok::<_, Infallible>(Response::new(body))
        });
        let mut svc = AppMetricsLayer::new(Some(m), None).layer(slow);
        let mut body = svc.call(Request::new(())).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);

        let text = m.encode();
        assert_eq!(
            sample(&text, &series("count", 500, None)).as_deref(),
            Some("2")
        );
        assert!(!text.contains("http_response_status_code=\"200\""));
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_before_the_response_records_502() {
        let m = metrics();
        let mut svc = AppMetricsLayer::new(Some(m), None).layer(app(Duration::from_secs(10)));
        let call = svc.call(Request::new(()));
        // The timeout layer (outside) gives up after 1 s and drops the call.
        assert!(tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .is_err());
        let text = m.encode();
        assert_eq!(
            sample(&text, &series("count", 502, None)).as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(&text, &series("sum", 502, None)).as_deref(),
            Some("1.0")
        );
    }

    #[tokio::test]
    async fn upgraded_connection_records_200_when_the_tunnel_closes() {
        let m = metrics();
        let upgrading = tower::service_fn(|_req: Request<()>| async {
            // Neither side can really upgrade here, so the tunnel task ends at once.
            let mut down = Request::new(());
            let mut up = Response::new(());
            let scope =
                TunnelScope::start(hyper::upgrade::on(&mut down), hyper::upgrade::on(&mut up));
            let mut response = Response::new(ProxyBody::empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.extensions_mut().insert(scope);
            Ok::<_, Infallible>(response)
        });
        let mut svc = AppMetricsLayer::new(Some(m), None).layer(upgrading);
        let response = svc.call(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert!(
            !m.encode().contains("kn_serving_invocation"),
            "open while the tunnel is"
        );
        drop(response);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let text = m.encode();
        assert_eq!(
            sample(&text, &series("count", 200, None)).as_deref(),
            Some("1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn disabled_metrics_pass_through() {
        let mut svc = AppMetricsLayer::new(None, Some(breaker(1))).layer(app(Duration::ZERO));
        let response = svc.call(Request::new(())).await.unwrap();
        assert_eq!(
            &response.into_body().collect().await.unwrap().to_bytes()[..],
            b"ok"
        );
    }

    /// Per-request cost of layer 10 (gauge store + one histogram observation):
    /// `cargo test -p queue-proxy --lib app_per_request_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn app_per_request_cost() {
        let m = metrics();
        let b = breaker(10);
        let n = 1_000_000u32;
        let started = std::time::Instant::now();
        for _ in 0..n {
            m.app().set_queue_depth(b.pending());
            let mut done = AppCompletion {
                metrics: m,
                start: Instant::now(),
                status: 200,
            };
            done.respond(StatusCode::OK);
            done.complete(2);
        }
        println!("layer 10 per request: {:?}", started.elapsed() / n);
    }
}
