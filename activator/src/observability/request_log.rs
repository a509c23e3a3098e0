//! The activator's request log (spec §7.3): one line per request with a valid revision, written
//! atomically to stdout once the response is over, rendered by the shared Go-template engine of
//! `knative_common::request_log`. `.Revision.PodName`, `.Revision.PodIP` and `.TraceID` are always
//! empty here, as upstream.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use go_text_template::{LogEntry, RevisionInfo};
use http::{HeaderMap, Method, Request, Uri, Version};
use knative_common::request_log::RequestLine;
use tokio::time::Instant;

use super::config::DynamicObservability;
use crate::discovery::RevisionSpec;

/// `.Revision` of a revision: name, namespace, service and configuration labels.
pub fn revision_info(revision: &RevisionSpec) -> RevisionInfo {
    RevisionInfo {
        name: revision.id.name.clone(),
        namespace: revision.id.namespace.clone(),
        service: revision.service.clone(),
        configuration: revision.configuration.clone(),
        pod_name: String::new(),
        pod_ip: String::new(),
    }
}

/// The request facts a line needs, captured when the request enters the chain.
#[derive(Debug)]
pub struct LogLine {
    settings: Arc<DynamicObservability>,
    revision: Arc<RevisionInfo>,
    remote_addr: SocketAddr,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    content_length: i64,
    start: Instant,
}

impl LogLine {
    /// Captures `request` (the settings in force now render the line).
    pub fn capture<B: http_body::Body>(
        settings: Arc<DynamicObservability>,
        revision: Arc<RevisionInfo>,
        remote_addr: SocketAddr,
        request: &Request<B>,
    ) -> Self {
        let content_length = match request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            Some(n) => n,
            None if request.body().is_end_stream() => 0,
            None => -1,
        };
        LogLine {
            settings,
            revision,
            remote_addr,
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            content_length,
            start: Instant::now(),
        }
    }

    /// Renders the line for a response with `status` and `size` body bytes and writes it to
    /// stdout in one write.
    pub fn write(self, status: u16, size: u64) {
        let mut line = Vec::with_capacity(256);
        self.render(status, size, &mut line);
        let _ = std::io::stdout().lock().write_all(&line);
    }

    /// Renders the line into `out`.
    pub fn render(&self, status: u16, size: u64, out: &mut Vec<u8>) {
        let RequestLine {
            proto,
            proto_major: major,
            proto_minor: minor,
            target,
            host,
        } = RequestLine::of(self.version, &self.uri, &self.headers);
        let remote = self.remote_addr.to_string();
        let entry = LogEntry {
            method: self.method.as_str(),
            url: target,
            request_uri: target,
            proto,
            proto_major: major,
            proto_minor: minor,
            host,
            remote_addr: &remote,
            content_length: self.content_length,
            headers: &self.headers,
            status,
            response_size: size,
            latency_secs: self.start.elapsed().as_secs_f64(),
            revision: &self.revision,
            // Always empty in the activator (§7.3).
            trace_id: "",
        };
        if let Some(template) = &self.settings.request_log_template {
            template.render(&entry, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::throttler::RevisionId;
    use go_text_template::DEFAULT_TEMPLATE;

    fn settings(template: &str) -> Arc<DynamicObservability> {
        let data: BTreeMap<String, String> = [
            ("logging.enable-request-log", "true"),
            ("logging.request-log-template", template),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Arc::new(DynamicObservability::parse(&data).unwrap())
    }

    fn render(template: &str, spec: &RevisionSpec) -> String {
        let request = Request::builder()
            .method("POST")
            .uri("/path?q=1")
            .header("host", "rev.ns.svc.cluster.local")
            .header("user-agent", "curl/8")
            .header("content-length", "3")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"abc")))
            .unwrap();
        let line = LogLine::capture(
            settings(template),
            Arc::new(revision_info(spec)),
            "10.0.0.9:4321".parse().unwrap(),
            &request,
        );
        let mut out = Vec::new();
        line.render(201, 12, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn revision_fields_render_with_empty_pod_fields() {
        let mut spec = RevisionSpec::new(RevisionId::new("testNs", "testRevision"));
        spec.service = "testSvc".into();
        spec.configuration = "testConfig".into();
        let line = render(
            "{{.Revision.Name}}, {{.Revision.Namespace}}, {{.Revision.Service}}, {{.Revision.Configuration}}, {{.Revision.PodName}}, {{.Revision.PodIP}}",
            &spec,
        );
        assert_eq!(line, "testRevision, testNs, testSvc, testConfig, , \n");
        let bare = RevisionSpec::new(RevisionId::new("ns", "r"));
        assert_eq!(
            render("{{.Revision.Service}}|{{.Revision.Configuration}}", &bare),
            "|\n"
        );
    }

    #[test]
    fn default_template_shape() {
        let spec = RevisionSpec::new(RevisionId::new("ns", "rev"));
        let line = render(DEFAULT_TEMPLATE, &spec);
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        let http = &value["httpRequest"];
        assert_eq!(http["requestMethod"], "POST");
        assert_eq!(http["requestUrl"], "/path?q=1");
        assert_eq!(http["requestSize"], "3");
        assert_eq!(http["status"], 201);
        assert_eq!(http["responseSize"], "12");
        assert_eq!(http["userAgent"], "curl/8");
        assert_eq!(http["remoteIp"], "10.0.0.9:4321");
        assert_eq!(http["serverIp"], "");
        assert_eq!(http["protocol"], "HTTP/1.1");
        assert!(http["latency"].as_str().unwrap().ends_with('s'));
        assert_eq!(value["traceId"], "");
    }
}
