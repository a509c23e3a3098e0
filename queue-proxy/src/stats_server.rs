//! The autoscaler's view (port 9090, spec §6): the 1 s report loop and `/metrics`, answering the
//! latest `metrics.Stat` as `application/protobuf`.

use std::convert::Infallible;
use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use knative_common::body::{text_error, LocalBody, ProxyBody};
use knative_common::h2::IncomingBody;
use knative_common::stats::{RequestStats, Stat};
use prost::Message;
use tokio::time::Instant;

use crate::admin::NOT_FOUND_BODY;

/// Reporting period (upstream's fixed 1 s ticker).
pub const REPORT_PERIOD: Duration = Duration::from_secs(1);

/// The latest encoded stat.
pub struct PublishedStat {
    pod_name: String,
    started: Instant,
    body: RwLock<Bytes>,
}

impl PublishedStat {
    /// Before the first report the stat holds only the pod name.
    pub fn new(pod_name: String) -> Self {
        let initial = Stat {
            pod_name: pod_name.clone(),
            ..Default::default()
        };
        PublishedStat {
            pod_name,
            started: Instant::now(),
            body: RwLock::new(Bytes::from(initial.encode_to_vec())),
        }
    }

    /// The body to serve now.
    pub fn current(&self) -> Bytes {
        self.body.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Closes a window of `stats` and publishes it.
    pub fn publish(&self, stats: &RequestStats) {
        let stat = stats
            .report()
            .to_stat(&self.pod_name, REPORT_PERIOD, self.started.elapsed());
        *self.body.write().unwrap_or_else(|e| e.into_inner()) = Bytes::from(stat.encode_to_vec());
    }

    /// Publishes every [`REPORT_PERIOD`] from start-up, forever.
    pub async fn run(&'static self, stats: &'static RequestStats) {
        let mut ticker = tokio::time::interval_at(self.started + REPORT_PERIOD, REPORT_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.publish(stats);
        }
    }
}

/// Serves one request on the stats port.
pub async fn handle(
    request: Request<IncomingBody>,
    published: &'static PublishedStat,
) -> Result<Response<ProxyBody>, Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(text_error(StatusCode::NOT_FOUND, NOT_FOUND_BODY));
    }
    let mut response = Response::new(ProxyBody::full(published.current()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/protobuf"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use knative_common::stats::Stat;

    /// The autoscaler reads at most 336 bytes of the body (spec §6.3): the largest possible stat,
    /// with a 253-character pod name (the Kubernetes maximum) and every field non-zero, fits.
    #[test]
    fn largest_stat_fits_the_scraper_limit() {
        let stat = Stat {
            pod_name: "p".repeat(253),
            average_concurrent_requests: f64::MAX,
            average_proxied_concurrent_requests: f64::MAX,
            request_count: f64::MAX,
            proxied_request_count: f64::MAX,
            process_uptime: f64::MAX,
            timestamp: i64::MAX,
        };
        assert!(
            stat.encode_to_vec().len() <= 336,
            "{} bytes",
            stat.encode_to_vec().len()
        );
    }

    #[tokio::test]
    async fn before_the_first_report_only_the_pod_name_is_set() {
        let published = PublishedStat::new("pod-1".into());
        let stat = Stat::decode(published.current()).unwrap();
        assert_eq!(
            stat,
            Stat {
                pod_name: "pod-1".into(),
                ..Default::default()
            }
        );
    }
}
