//! Parses arbitrary UTF-8 as a request-log template and renders it for a fixed entry.
//! Neither step may panic, overflow the stack or run away (`cargo fuzz run request_log_template`).
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use go_text_template::{LogEntry, RequestLogTemplate, RevisionInfo};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    headers: HeaderMap,
    revision: RevisionInfo,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.com"));
        headers.insert(
            "user-agent",
            HeaderValue::from_static("curl/7.88.1 \"<x>\""),
        );
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b=c&d"));
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert("x-bin", HeaderValue::from_bytes(b"\xff\xfe\tx").unwrap());
        Fixture {
            headers,
            revision: RevisionInfo {
                name: "rev".into(),
                namespace: "ns".into(),
                service: "svc".into(),
                configuration: "cfg".into(),
                pod_name: "pod".into(),
                pod_ip: "10.0.0.1".into(),
            },
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(template) = RequestLogTemplate::parse(text) else {
        return;
    };
    let f = fixture();
    let entry = LogEntry {
        method: "POST",
        url: "/a%20b/c?x=1&y=%2F",
        request_uri: "/a%20b/c?x=1&y=%2F",
        proto: "HTTP/1.1",
        proto_major: 1,
        proto_minor: 1,
        host: "example.com",
        remote_addr: "127.0.0.1:45512",
        content_length: -1,
        headers: &f.headers,
        status: 200,
        response_size: 19,
        latency_secs: 0.003309125,
        revision: &f.revision,
        trace_id: go_text_template::trace_id(&f.headers),
    };
    let mut out = Vec::new();
    template.render(&entry, &mut out);
    // Rendering twice gives the same line: no state leaks between renders.
    let mut again = Vec::new();
    template.render(&entry, &mut again);
    assert_eq!(out, again);
});
