use http::{HeaderMap, HeaderValue};

use super::*;

fn revision() -> RevisionInfo {
    RevisionInfo {
        name: "rev".into(),
        namespace: "ns".into(),
        service: "svc".into(),
        configuration: "cfg".into(),
        pod_name: "pn".into(),
        pod_ip: "ip".into(),
    }
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("example.com"));
    h.insert("user-agent", HeaderValue::from_static("curl/7.88.1"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.append("x-multi", HeaderValue::from_static("a"));
    h.append("x-multi", HeaderValue::from_static("b"));
    h
}

fn entry<'a>(headers: &'a HeaderMap, rev: &'a RevisionInfo) -> LogEntry<'a> {
    LogEntry {
        method: "GET",
        url: "/x?y=1",
        request_uri: "/x?y=1",
        proto: "HTTP/1.1",
        proto_major: 1,
        proto_minor: 1,
        host: "example.com",
        remote_addr: "127.0.0.1:45512",
        content_length: 0,
        headers,
        status: 200,
        response_size: 19,
        latency_secs: 0.5,
        revision: rev,
        trace_id: "",
    }
}

fn render_entry(tmpl: &str, e: &LogEntry<'_>) -> String {
    let t = RequestLogTemplate::parse(tmpl).unwrap_or_else(|err| panic!("parse {tmpl:?}: {err}"));
    let mut out = Vec::new();
    t.render(e, &mut out);
    String::from_utf8(out).expect("utf-8 output")
}

/// Renders with the default fixture.
fn render(tmpl: &str) -> String {
    let h = headers();
    let rev = revision();
    render_entry(tmpl, &entry(&h, &rev))
}

/// Renders with the default fixture and strips the one trailing newline.
fn line(tmpl: &str) -> String {
    let mut s = render(tmpl);
    assert_eq!(
        s.pop(),
        Some('\n'),
        "template {tmpl:?} output must end with a newline"
    );
    s
}

fn invalid_line() -> &'static str {
    "Invalid request log template: method: GET, response code: 200, latency: 0.5, url: /x?y=1\n"
}

fn parse_err(tmpl: &str) -> TemplateError {
    match RequestLogTemplate::parse(tmpl) {
        Ok(_) => panic!("{tmpl:?} must not parse"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Golden output of the upstream queue-proxy (shared/spec/golden/queue-proxy-request-log.txt).

#[test]
fn golden_default_template_lines() {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1:8012"));
    h.insert("user-agent", HeaderValue::from_static("curl/7.88.1"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    let rev = RevisionInfo {
        name: "hello-00001".into(),
        namespace: "default".into(),
        service: "hello".into(),
        configuration: "hello".into(),
        pod_name: "hello-00001-deployment-abc".into(),
        pod_ip: "127.0.0.1".into(),
    };
    let tmpl = RequestLogTemplate::parse(DEFAULT_TEMPLATE).unwrap();
    let mut out = Vec::new();
    for (port, latency) in [(45512, 0.003309125), (45520, 0.000536699)] {
        let remote = format!("127.0.0.1:{port}");
        let mut e = entry(&h, &rev);
        e.remote_addr = &remote;
        e.latency_secs = latency;
        tmpl.render(&e, &mut out);
    }
    let want = concat!(
        r#"{"httpRequest": {"requestMethod": "GET", "requestUrl": "/x?y\u003D1", "requestSize": "0", "status": 200, "responseSize": "19", "userAgent": "curl/7.88.1", "remoteIp": "127.0.0.1:45512", "serverIp": "127.0.0.1", "referer": "", "latency": "0.003309125s", "protocol": "HTTP/1.1"}, "traceId": ""}"#,
        "\n",
        r#"{"httpRequest": {"requestMethod": "GET", "requestUrl": "/x?y\u003D1", "requestSize": "0", "status": 200, "responseSize": "19", "userAgent": "curl/7.88.1", "remoteIp": "127.0.0.1:45520", "serverIp": "127.0.0.1", "referer": "", "latency": "0.000536699s", "protocol": "HTTP/1.1"}, "traceId": ""}"#,
        "\n",
    );
    assert_eq!(String::from_utf8(out).unwrap(), want);
}

#[test]
fn default_template_with_trace_and_escapes() {
    let mut h = HeaderMap::new();
    h.insert(
        "user-agent",
        HeaderValue::from_static("Mozilla/5.0 \"x\" <y>"),
    );
    h.insert("referer", HeaderValue::from_static("http://a/?b=c&d='e'"));
    let rev = revision();
    let mut e = entry(&h, &rev);
    e.method = "POST";
    e.request_uri = "/p\\q";
    e.content_length = -1;
    e.proto = "HTTP/2.0";
    e.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    e.latency_secs = 5.1e-05;
    e.status = 503;
    e.response_size = 0;
    assert_eq!(
        render_entry(DEFAULT_TEMPLATE, &e),
        concat!(
            r#"{"httpRequest": {"requestMethod": "POST", "requestUrl": "/p\\q", "requestSize": "-1", "status": 503, "responseSize": "0", "userAgent": "Mozilla/5.0 \"x\" \u003Cy\u003E", "remoteIp": "127.0.0.1:45512", "serverIp": "ip", "referer": "http://a/?b\u003Dc\u0026d\u003D\'e\'", "latency": "5.1e-05s", "protocol": "HTTP/2.0"}, "traceId": "4bf92f3577b34da6a3ce929d0e0e4736"}"#,
            "\n"
        )
    );
}

// ---------------------------------------------------------------------------------------------
// pkg/http/request_log_test.go

#[test]
fn empty_template_renders_nothing() {
    let t = RequestLogTemplate::parse("").unwrap();
    assert!(t.is_empty());
    let h = headers();
    let rev = revision();
    let mut out = b"keep".to_vec();
    t.render(&entry(&h, &rev), &mut out);
    assert_eq!(out, b"keep");
    assert!(!RequestLogTemplate::parse("x").unwrap().is_empty());
}

#[test]
fn set_template_cases() {
    let h = headers();
    let rev = revision();
    let mut e = entry(&h, &rev);
    e.method = "POST";
    e.url = "http://example.com/testpage";
    e.content_length = 4;
    assert_eq!(
        render_entry("{{.Request.URL}}\n", &e),
        "http://example.com/testpage\n"
    );
    assert_eq!(render_entry("{{.Request.ContentLength}}", &e), "4\n");
    assert!(matches!(
        parse_err("{{}}"),
        TemplateError::Syntax { line: 1, col: 1, ref message } if message == "missing value for command"
    ));
}

#[test]
fn revision_fields() {
    assert_eq!(
        line("{{.Revision.Name}}, {{.Revision.Namespace}}, {{.Revision.Service}}, {{.Revision.Configuration}}, {{.Revision.PodName}}, {{.Revision.PodIP}}"),
        "rev, ns, svc, cfg, pn, ip"
    );
    // The activator's revision has no pod name/IP.
    let h = headers();
    let rev = RevisionInfo {
        name: "testRevision".into(),
        namespace: "testNs".into(),
        service: "testSvc".into(),
        configuration: "testConfig".into(),
        ..RevisionInfo::default()
    };
    assert_eq!(
        render_entry(
            "{{.Revision.Name}}, {{.Revision.Namespace}}, {{.Revision.Service}}, {{.Revision.Configuration}}, {{.Revision.PodName}}, {{.Revision.PodIP}}",
            &entry(&h, &rev)
        ),
        "testRevision, testNs, testSvc, testConfig, , \n"
    );
}

#[test]
fn failed_execution_writes_invalid_line() {
    let h = headers();
    let rev = revision();
    let mut e = entry(&h, &rev);
    e.url = "http://example.com";
    let got = render_entry("{{.Request.Something}}", &e);
    assert!(got.starts_with("Invalid request log template: "), "{got}");
    assert_eq!(
        got,
        "Invalid request log template: method: GET, response code: 200, latency: 0.5, url: http://example.com\n"
    );
    // Output produced before the failing action is dropped; earlier lines in `out` are kept.
    let t = RequestLogTemplate::parse(r#"{"a": "{{.Request.Method}}", "b": {{.Response.Nope}}}"#)
        .unwrap();
    let mut out = b"previous\n".to_vec();
    t.render(&entry(&h, &rev), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("previous\n{}", invalid_line())
    );
    // Latency in the error line uses %v too.
    let mut e = entry(&h, &rev);
    e.latency_secs = 1e-7;
    assert_eq!(
        render_entry("{{.Nope}}", &e),
        "Invalid request log template: method: GET, response code: 200, latency: 1e-07, url: /x?y=1\n"
    );
}

#[test]
fn missing_fields_everywhere_fail() {
    for t in [
        "{{.Nope}}",
        "{{.Request.Body}}",
        "{{.Response.Nope}}",
        "{{.Revision.Nope}}",
        "{{.TraceID.Nope}}",
        "{{.Request.Method.Nope}}",
        "{{.Request.Header.Get}}",
        "{{.Request.Header.Get 1}}",
        "{{.Request.UserAgent 1}}",
        "{{.Request.Method 1}}",
        "{{js .Nope}}",
        "{{with .Revision}}{{.Method}}{{end}}",
        "{{.Request}}",
        "{{.}}",
        "{{nil}}",
        "{{1 2}}",
        "{{.Request.Header.Set \"a\" \"b\"}}",
    ] {
        assert_eq!(render(t), invalid_line(), "template {t:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// pkg/http/trace_test.go and trace_integration_test.go

fn trace_of(pairs: &[(&'static str, &'static str)]) -> String {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_static(v));
    }
    trace_id(&h).to_owned()
}

#[test]
fn extract_trace_id() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        trace_of(&[("traceparent", tp)]),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        trace_of(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(
        trace_of(&[("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7")]),
        "80f198ee56343ba864fe8b2a57d3eff7"
    );
    assert_eq!(
        trace_of(&[("X-B3-Traceid", "463ac35c9f6413ad48485a3953bb6124")]),
        "463ac35c9f6413ad48485a3953bb6124"
    );
    assert_eq!(
        trace_of(&[
            ("traceparent", tp),
            ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7")
        ]),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        trace_of(&[("X-B3-TraceId", "463ac35c9f6413ad")]),
        "463ac35c9f6413ad"
    );
    assert_eq!(trace_of(&[("Content-Type", "application/json")]), "");
    assert_eq!(trace_of(&[]), "");
    assert_eq!(trace_of(&[("traceparent", "invalid")]), "");
    assert_eq!(trace_of(&[("traceparent", "00")]), "");
    // Quirks kept from upstream: no validation, fall-through to B3 without a '-'.
    assert_eq!(trace_of(&[("traceparent", "00-")]), "");
    assert_eq!(trace_of(&[("traceparent", "a-b")]), "b");
    assert_eq!(
        trace_of(&[("traceparent", "invalid"), ("x-b3-traceid", "abc")]),
        "abc"
    );
    assert_eq!(
        trace_of(&[("traceparent", ""), ("x-b3-traceid", "abc")]),
        "abc"
    );
}

#[test]
fn trace_id_in_request_log() {
    let rev = revision();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (
            &[
                ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("X-B3-SpanId", "00f067aa0ba902b7"),
            ],
            "80f198ee56343ba864fe8b2a57d3eff7",
        ),
        (
            &[
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7"),
            ],
            "0af7651916cd43dd8448eb211c80319c",
        ),
        (&[], ""),
    ];
    for (pairs, want) in cases {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut e = entry(&h, &rev);
        e.trace_id = trace_id(&h);
        assert_eq!(
            render_entry(
                r#"{"traceId": "{{.TraceID}}", "status": {{.Response.Code}}}"#,
                &e
            ),
            format!("{{\"traceId\": \"{want}\", \"status\": 200}}\n")
        );
    }
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let mut e = entry(&h, &rev);
    e.method = "POST";
    e.trace_id = trace_id(&h);
    assert_eq!(
        render_entry(
            r#"{"httpRequest": {"requestMethod": "{{.Request.Method}}", "status": {{.Response.Code}}}, "traceId": "{{.TraceID}}"}"#,
            &e
        ),
        "{\"httpRequest\": {\"requestMethod\": \"POST\", \"status\": 200}, \"traceId\": \"4bf92f3577b34da6a3ce929d0e0e4736\"}\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Escaping

#[test]
fn js_escapes_exactly_like_go() {
    let cases: &[(&[u8], &str)] = &[
        (b"\\", r"\\"),
        (b"'", r"\'"),
        (b"\"", r#"\""#),
        (b"<", r"\u003C"),
        (b">", r"\u003E"),
        (b"&", r"\u0026"),
        (b"=", r"\u003D"),
        (b"\x00", r"\u0000"),
        (b"\n", r"\u000A"),
        (b"\r\t", r"\u000D\u0009"),
        (b"\x1f", r"\u001F"),
        (b"\x7f", "\x7f"),
        (b" /?#+-_.:;@!$%()*,[]{}|^~`", " /?#+-_.:;@!$%()*,[]{}|^~`"),
        ("é日本😀".as_bytes(), "é日本😀"),
        ("\u{a0}".as_bytes(), r"\u00A0"),
        ("\u{ad}".as_bytes(), r"\u00AD"),
        ("\u{85}".as_bytes(), r"\u0085"),
        ("\u{2028}\u{2029}".as_bytes(), r"\u2028\u2029"),
        ("\u{200b}".as_bytes(), r"\u200B"),
        ("\u{feff}".as_bytes(), r"\uFEFF"),
        ("\u{e000}".as_bytes(), r"\uE000"),
        ("\u{e0001}".as_bytes(), r"\uE0001"),
        ("\u{10ffff}".as_bytes(), r"\u10FFFF"),
        ("\u{3000}".as_bytes(), r"\u3000"),
        // Unassigned in Unicode 15.0.
        ("\u{378}".as_bytes(), r"\u0378"),
        ("a=b&c".as_bytes(), r"a\u003Db\u0026c"),
    ];
    for (input, want) in cases {
        let mut out = Vec::new();
        escape::js_escape(input, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), *want, "input {input:?}");
    }
    // Invalid UTF-8 bytes are copied as they are (they decode as the printable U+FFFD).
    let mut out = Vec::new();
    escape::js_escape(b"a\xffb\xc3", &mut out);
    assert_eq!(out, b"a\xffb\xc3");
}

#[test]
fn js_function_on_values() {
    assert_eq!(line(r#"{{js "a<b>"}}"#), r"a\u003Cb\u003E");
    assert_eq!(line("{{js .Response.Code}}"), "200");
    assert_eq!(line("{{js .Response.Latency}}"), "0.5");
    assert_eq!(line("{{js 1 2}}"), "1 2");
    assert_eq!(line(r#"{{js "a" "=" 3}}"#), r"a\u003D3");
    assert_eq!(line("{{js .Request.Header.Nope}}"), r"\u003Cno value\u003E");
    assert_eq!(line("{{js .Response}}"), "{200 19 0.5}");
    assert_eq!(line("{{js}}"), "");
    assert_eq!(line("{{.Request.RequestURI | js}}"), r"/x?y\u003D1");
    // As in Go, a method used as an argument gets no arguments.
    assert_eq!(
        render("{{js .Request.Header.Values \"X-Multi\"}}"),
        invalid_line()
    );
    assert_eq!(line("{{js (.Request.Header.Values \"X-Multi\")}}"), "[a b]");
    assert_eq!(line("{{js (index .Request.Header \"X-Multi\")}}"), "[a b]");
}

#[test]
fn html_and_urlquery() {
    assert_eq!(
        line(r#"{{html "<a href='x'>&\"</a>"}}"#),
        "&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;"
    );
    assert_eq!(line(r#"{{html "\x00"}}"#), "\u{FFFD}");
    assert_eq!(
        line(r#"{{urlquery "a b&c=d/é~-_."}}"#),
        "a+b%26c%3Dd%2F%C3%A9~-_."
    );
    assert_eq!(line("{{urlquery .Request.RequestURI}}"), "%2Fx%3Fy%3D1");
}

// ---------------------------------------------------------------------------------------------
// Float formatting (Go's %v is strconv.FormatFloat(f, 'g', -1, 64): exponent when exp < -4 || exp >= 6)

fn fv(x: f64) -> String {
    let mut out = Vec::new();
    gofmt::write_float_v(&mut out, x);
    String::from_utf8(out).unwrap()
}

#[test]
fn float_v_formatting() {
    for (x, want) in [
        (0.003309125, "0.003309125"),
        (0.000536699, "0.000536699"),
        (5.1e-05, "5.1e-05"),
        (1e6, "1e+06"),
        (1.0, "1"),
        (0.5, "0.5"),
        (0.0, "0"),
        (-0.0, "-0"),
        (100.0, "100"),
        (123456.0, "123456"),
        (999999.0, "999999"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (0.000012345, "1.2345e-05"),
        (1e21, "1e+21"),
        (1e100, "1e+100"),
        (1.5e-300, "1.5e-300"),
        (5e-324, "5e-324"),
        (f64::MAX, "1.7976931348623157e+308"),
        (0.1 + 0.2, "0.30000000000000004"),
        (-2.5, "-2.5"),
        (12.0, "12"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
    ] {
        assert_eq!(fv(x), want, "{x:e}");
    }
    let h = headers();
    let rev = revision();
    let mut e = entry(&h, &rev);
    e.latency_secs = 1e6;
    assert_eq!(render_entry("{{.Response.Latency}}s", &e), "1e+06s\n");
}

#[test]
fn printf_floats() {
    for (f, x, want) in [
        ("%f", 1.5, "1.500000"),
        ("%.3f", 0.0033, "0.003"),
        ("%.3f", 0.003309125, "0.003"),
        ("%.0f", 0.5, "0"),
        ("%.0f", 1.5, "2"),
        ("%.0f", 2.5, "2"),
        ("%.1f", 0.25, "0.2"),
        ("%.2f", 1.125, "1.12"),
        ("%+.1f", 2.25, "+2.2"),
        ("%8.3f", 9.87654, "   9.877"),
        ("%-8.2f|", 9.87654, "9.88    |"),
        ("%08.3f", -9.87654, "-009.877"),
        ("%08.3f", 9.87654, "0009.877"),
        ("% .2f", 1.0, " 1.00"),
        ("%.2f", -0.001, "-0.00"),
        ("%e", 1234.5678, "1.234568e+03"),
        ("%E", 0.000123, "1.230000E-04"),
        ("%.0e", 2.5, "2e+00"),
        ("%g", 0.00001234, "1.234e-05"),
        ("%g", 100000.0, "100000"),
        ("%g", 1e6, "1e+06"),
        ("%.2g", 123.0, "1.2e+02"),
        ("%.3g", 1.0, "1"),
        ("%.3g", 100000.0, "1e+05"),
        ("%.10g", 0.5, "0.5"),
        ("%G", 1e-7, "1E-07"),
        ("%v", 0.003309125, "0.003309125"),
        ("%.2v", 9.87654, "9.9"),
        ("%6v|", 0.5, "   0.5|"),
        ("%5.1f", f64::NAN, "  NaN"),
        ("%05.1f", f64::INFINITY, " +Inf"),
        ("%+v", f64::NAN, "NaN"),
        ("%+f", f64::NAN, "+NaN"),
        ("%+.1f", 1.0, "+1.0"),
        ("%b", 1.0, "4503599627370496p-52"),
        ("%d", 1.5, "%!d(float64=1.5)"),
    ] {
        let h = headers();
        let rev = revision();
        let mut e = entry(&h, &rev);
        e.latency_secs = x;
        assert_eq!(
            render_entry(&format!("{{{{printf {f:?} .Response.Latency}}}}"), &e),
            format!("{want}\n"),
            "printf {f:?} {x}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// printf / print / println

#[test]
fn printf_ints_strings_and_errors() {
    for (tmpl, want) in [
        (r#"{{printf "%d" 42}}"#, "42"),
        (r#"{{printf "%5d|" 42}}"#, "   42|"),
        (r#"{{printf "%-5d|" 42}}"#, "42   |"),
        (r#"{{printf "%05d" -42}}"#, "-0042"),
        (r#"{{printf "%+d" 5}}"#, "+5"),
        (r#"{{printf "%.3d" 7}}"#, "007"),
        (r#"{{printf "%.0d|" 0}}"#, "|"),
        (r#"{{printf "%3.0d|" 0}}"#, "   |"),
        (
            r#"{{printf "%x %X %#x %o %#o %O %b %#b" 255 255 255 8 8 8 5 5}}"#,
            "ff FF 0xff 10 010 0o10 101 0b101",
        ),
        (r#"{{printf "%#06x" 1}}"#, "0x000001"),
        (r#"{{printf "%c%c" 65 0x1F600}}"#, "A😀"),
        (r#"{{printf "%q" 65}}"#, "'A'"),
        (r#"{{printf "%U" 0x1F600}}"#, "U+1F600"),
        (r#"{{printf "%#U" 65}}"#, "U+0041 'A'"),
        (r#"{{printf "%s" "hi"}}"#, "hi"),
        (r#"{{printf "%10s|" "hi"}}"#, "        hi|"),
        (r#"{{printf "%-10s|" "hi"}}"#, "hi        |"),
        (r#"{{printf "%.2s" "héllo"}}"#, "hé"),
        (r#"{{printf "%5.1s|" "abc"}}"#, "    a|"),
        (
            r#"{{printf "%q" "a\"b\n\x01é\u2028"}}"#,
            r#""a\"b\n\x01é\u2028""#,
        ),
        (r#"{{printf "%+q" "é"}}"#, r#""\u00e9""#),
        (r#"{{printf "%#q" "a\"b"}}"#, "`a\"b`"),
        (r#"{{printf "%x" "hi"}}"#, "6869"),
        (r#"{{printf "% X" "hi"}}"#, "68 69"),
        (r#"{{printf "%#x" "hi"}}"#, "0x6869"),
        (r#"{{printf "%v %t" true false}}"#, "true false"),
        (
            r#"{{printf "%T %T %T %T" 1 "a" 1.5 .Request.Header}}"#,
            "int string float64 http.Header",
        ),
        (r#"{{printf "%T" .Request.ContentLength}}"#, "int64"),
        (r#"{{printf "%d" "x"}}"#, "%!d(string=x)"),
        (r#"{{printf "%s" 5}}"#, "%!s(int=5)"),
        (r#"{{printf "%z" 1}}"#, "%!z(int=1)"),
        (r#"{{printf "%d %d" 1}}"#, "1 %!d(MISSING)"),
        (
            r#"{{printf "%d" 1 "a" 2.5}}"#,
            "1%!(EXTRA string=a, float64=2.5)",
        ),
        (r#"{{printf "100%%"}}"#, "100%"),
        (r#"{{printf "abc%"}}"#, "abc%!(NOVERB)"),
        (r#"{{printf "%*d|" 4 7}}"#, "   7|"),
        (r#"{{printf "%-*d|" 4 7}}"#, "7   |"),
        (r#"{{printf "%.*f" 2 1.23456}}"#, "1.23"),
        (r#"{{printf "%*d" "x" 7}}"#, "%!(BADWIDTH)7"),
        (r#"{{printf "%v" nil}}"#, "<nil>"),
        (r#"{{printf "%s" nil}}"#, "%!s(<nil>)"),
        (r#"{{printf "%v" .Request.Header.Nope}}"#, "<nil>"),
        (
            r#"{{printf "%v|%s" .Request.URL .Request.URL}}"#,
            "/x?y=1|/x?y=1",
        ),
        (r#"{{printf "%v" .Response}}"#, "&{200 19 0.5}"),
        (
            r#"{{printf "%+v" .Revision}}"#,
            "&{Name:rev Namespace:ns Service:svc Configuration:cfg PodName:pn PodIP:ip}",
        ),
        (
            r#"{{printf "%#v" .Response}}"#,
            "&http.RequestLogResponse{Code:200, Size:19, Latency:0.5}",
        ),
        (
            r#"{{printf "%v" (index .Request.Header "X-Multi")}}"#,
            "[a b]",
        ),
        (
            r#"{{printf "%q" (index .Request.Header "X-Multi")}}"#,
            r#"["a" "b"]"#,
        ),
        (
            r#"{{printf "%#v" (index .Request.Header "X-Multi")}}"#,
            r#"[]string{"a", "b"}"#,
        ),
        (
            r#"{{printf "%#v" (index .Request.Header "Nope")}}"#,
            "[]string(nil)",
        ),
        (
            r#"{{printf "%d" (index .Request.Header "X-Multi")}}"#,
            "[%!d(string=a) %!d(string=b)]",
        ),
        (r#"{{printf "%s-%s" "x" .Request.Method}}"#, "x-GET"),
        (r#"{{.Request.Method | printf "%s-%s" "x"}}"#, "x-GET"),
        (r#"{{printf "%d" (len .Request.Method)}}"#, "3"),
        (
            r#"{{printf "%v" .Request.Header}}"#,
            "map[Accept:[*/*] User-Agent:[curl/7.88.1] X-Multi:[a b]]",
        ),
        (
            r#"{{printf "%#v" .Request.Header}}"#,
            r#"http.Header{"Accept":[]string{"*/*"}, "User-Agent":[]string{"curl/7.88.1"}, "X-Multi":[]string{"a", "b"}}"#,
        ),
    ] {
        assert_eq!(line(tmpl), want, "template {tmpl}");
    }
    // printf needs a string format.
    assert_eq!(render("{{printf 1}}"), invalid_line());
    assert_eq!(render("{{printf}}"), invalid_line());
}

#[test]
fn print_and_println() {
    assert_eq!(line(r#"{{print 1 2 "a" 3 "b" "c"}}"#), "1 2a3bc");
    assert_eq!(line(r#"{{print .Response.Code .Response.Size}}"#), "200 19");
    assert_eq!(
        line(r#"{{print .Request.Method .Response.Code}}"#),
        "GET200"
    );
    assert_eq!(line(r#"{{print nil 1}}"#), "<nil> 1");
    assert_eq!(line(r#"{{print .Request.Header.Nope}}"#), "<nil>");
    assert_eq!(line(r#"{{print .Response}}"#), "&{200 19 0.5}");
    assert_eq!(line(r#"{{print}}"#), "");
    assert_eq!(render(r#"{{println 1 "a"}}"#), "1 a\n\n");
}

// ---------------------------------------------------------------------------------------------
// Data model

#[test]
fn request_fields_and_methods() {
    for (tmpl, want) in [
        ("{{.Request.Method}}", "GET"),
        ("{{.Request.URL}}", "/x?y=1"),
        ("{{.Request.RequestURI}}", "/x?y=1"),
        (
            "{{.Request.Proto}} {{.Request.ProtoMajor}} {{.Request.ProtoMinor}}",
            "HTTP/1.1 1 1",
        ),
        ("{{.Request.Host}}", "example.com"),
        ("{{.Request.RemoteAddr}}", "127.0.0.1:45512"),
        ("{{.Request.ContentLength}}", "0"),
        (
            "{{.Request.UserAgent}}|{{.Request.Referer}}",
            "curl/7.88.1|",
        ),
        (
            "{{.Request.ProtoAtLeast 1 1}} {{.Request.ProtoAtLeast 2 0}}",
            "true false",
        ),
        ("{{.Request.Header.Get \"x-MULTI\"}}", "a"),
        ("{{.Request.Header.Get \"Nope\"}}", ""),
        ("{{.Request.Header.Get \"Host\"}}", ""),
        ("{{.Request.Header.Values \"x-multi\"}}", "[a b]"),
        ("{{.Request.Header.Values \"nope\"}}", "[]"),
        ("{{\"X-Multi\" | .Request.Header.Get}}", "a"),
        ("{{.Request.Header.Accept}}", "[*/*]"),
        ("{{.Request.Header.Nope}}", "<no value>"),
        ("{{.Request.Header.Host}}", "<no value>"),
        (
            "{{.Request.Header}}",
            "map[Accept:[*/*] User-Agent:[curl/7.88.1] X-Multi:[a b]]",
        ),
        ("{{len .Request.Header}}", "3"),
        ("{{index .Request.Header \"X-Multi\"}}", "[a b]"),
        ("{{index .Request.Header \"X-Multi\" 1}}", "b"),
        ("{{index .Request.Header \"x-multi\"}}", "[]"),
        ("{{index .Request.Header \"X-B3-Traceid\"}}", "[]"),
        ("{{index .Request.Header \"Nope\"}}", "[]"),
        ("{{index .Request.Method 0}}", "71"),
        (
            "{{index .Request.Header}}",
            "map[Accept:[*/*] User-Agent:[curl/7.88.1] X-Multi:[a b]]",
        ),
        ("{{len (index .Request.Header \"X-Multi\")}}", "2"),
        ("{{len .Request.Method}}", "3"),
        (
            "{{.Response.Code}} {{.Response.Size}} {{.Response.Latency}}",
            "200 19 0.5",
        ),
        ("{{.Response}}", "{200 19 0.5}"),
        ("{{.Revision}}", "{rev ns svc cfg pn ip}"),
        ("{{.TraceID}}", ""),
        ("{{$.Request.Method}}", "GET"),
        (
            "{{with .Revision}}{{$.Request.Method}}-{{.Name}}{{end}}",
            "GET-rev",
        ),
    ] {
        assert_eq!(line(tmpl), want, "template {tmpl}");
    }
    for bad in [
        "{{index .Request.Header \"X-Multi\" 2}}",
        "{{index .Request.Header \"X-Multi\" -1}}",
        "{{index .Request.Header 1}}",
        "{{index .Request.Header.Nope 0}}",
        "{{index nil 0}}",
        "{{len .Response.Code}}",
        "{{len .Request.Header.Nope}}",
        "{{.Request.ProtoAtLeast 1}}",
    ] {
        assert_eq!(render(bad), invalid_line(), "template {bad}");
    }
}

#[test]
fn url_fields() {
    let h = headers();
    let rev = revision();
    let mut e = entry(&h, &rev);
    e.url = "/a%20b/c?x=1&y=%2F";
    for (tmpl, want) in [
        ("{{.Request.URL.Path}}", "/a b/c"),
        ("{{.Request.URL.RawQuery}}", "x=1&y=%2F"),
        ("{{.Request.URL.Scheme}}|{{.Request.URL.Host}}", "|"),
        ("{{.Request.URL.String}}", "/a%20b/c?x=1&y=%2F"),
        ("{{.Request.URL.RequestURI}}", "/a%20b/c?x=1&y=%2F"),
        ("{{.Request.URL.EscapedPath}}", "/a%20b/c"),
    ] {
        assert_eq!(render_entry(tmpl, &e), format!("{want}\n"), "{tmpl}");
    }
    e.url = "http://Example.com:8080/p";
    assert_eq!(
        render_entry("{{.Request.URL.Scheme}} {{.Request.URL.Host}} {{.Request.URL.Hostname}} {{.Request.URL.Port}} {{.Request.URL.Path}}", &e),
        "http Example.com:8080 Example.com 8080 /p\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Control structures, literals, pipelines

#[test]
fn control_structures() {
    for (tmpl, want) in [
        ("{{if .Request.Header.Get \"X-Multi\"}}yes{{else}}no{{end}}", "yes"),
        ("{{if .TraceID}}yes{{else}}no{{end}}", "no"),
        ("{{if eq .Response.Code 200}}ok{{end}}", "ok"),
        ("{{if eq .Response.Code 404 500 200}}ok{{end}}", "ok"),
        ("{{if ne .Response.Code 200}}x{{else if lt .Response.Size 10}}small{{else if ge .Response.Size 10}}big{{end}}", "big"),
        ("{{if .Request.Header.Nope}}a{{else}}b{{end}}", "b"),
        ("{{with .Revision}}{{.Name}}{{end}}", "rev"),
        ("{{with .TraceID}}{{.}}{{else}}none{{end}}", "none"),
        ("{{with .TraceID}}x{{else with .Revision.Name}}{{.}}{{end}}", "rev"),
        ("{{range .Request.Header.Values \"X-Multi\"}}[{{.}}]{{end}}", "[a][b]"),
        ("{{range .Request.Header.Values \"Nope\"}}x{{else}}empty{{end}}", "empty"),
        ("{{range 3}}{{.}}{{end}}", "012"),
        ("{{range 5}}{{if eq . 1}}{{continue}}{{end}}{{if eq . 3}}{{break}}{{end}}{{.}}{{end}}", "02"),
        ("{{range .Request.Header}}{{index . 0}};{{end}}", "*/*;curl/7.88.1;a;"),
        ("{{range .Request.Header.Nope}}x{{else}}nil{{end}}", "nil"),
        ("{{and 1 0 2}}|{{and 1 2}}|{{or 0 \"\" \"x\"}}|{{or 0 \"\"}}", "0|2|x|"),
        ("{{not .TraceID}} {{not 1}}", "true false"),
        ("{{lt 1 2}} {{gt \"b\" \"a\"}} {{le 2 2}} {{ge 1 2}} {{ne 1 2}} {{eq \"a\" \"a\"}}", "true true true false true true"),
        ("{{eq .Request.Method \"GET\"}} {{eq .Request.ContentLength 0}}", "true true"),
        ("{{eq 1.5 1.5}} {{lt 0.1 0.2}}", "true true"),
        ("{{.Request.Method | eq \"GET\"}}", "true"),
    ] {
        assert_eq!(line(tmpl), want, "template {tmpl}");
    }
    for bad in [
        "{{eq .Response.Latency 1}}",
        "{{lt true false}}",
        "{{eq 1}}",
        "{{eq .Request.Header .Request.Header}}",
        "{{not}}",
        "{{lt 1}}",
        "{{and .Request.Header.Nope 1}}",
        "{{range .Request.Method}}x{{end}}",
        "{{range 200000}}{{end}}",
    ] {
        assert_eq!(render(bad), invalid_line(), "template {bad}");
    }
}

#[test]
fn literals() {
    for (tmpl, want) in [
        (r#"{{"a\tb\x41\u00e9\101"}}"#, "a\tbAéA"),
        ("{{`raw\\n`}}", "raw\\n"),
        ("{{'a'}} {{'\\n'}} {{'é'}}", "97 10 233"),
        (
            "{{0x10}} {{0o17}} {{0b101}} {{010}} {{08}} {{1_000}}",
            "16 15 5 8 8 1000",
        ),
        (
            "{{1e3}} {{1.5}} {{-3}} {{+4}} {{.5}} {{1.0}}",
            "1000 1.5 -3 4 0.5 1",
        ),
        ("{{true}} {{false}}", "true false"),
        ("{{-9223372036854775808}}", "-9223372036854775808"),
        ("{{(1)}}", "1"),
        ("{{.Request.Method|printf \"%s\"|js}}", "GET"),
        ("{{.Request.Method |}}", "GET"),
    ] {
        assert_eq!(line(tmpl), want, "template {tmpl}");
    }
}

#[test]
fn text_trim_markers_comments_and_newline() {
    assert_eq!(render("a  {{- .Request.Method -}}  b"), "aGETb\n");
    assert_eq!(render("a \n\t{{- \"x\" }} \n"), "ax \n");
    assert_eq!(render("{{/* comment */}}x"), "x\n");
    assert_eq!(render("a {{- /* multi\nline */ -}} b\n"), "ab\n");
    assert_eq!(render("{{-3}}"), "-3\n");
    assert_eq!(render("{{3 -}}\n"), "3");
    assert_eq!(render("x\n"), "x\n");
    assert_eq!(render("x"), "x\n");
    assert_eq!(render("\n"), "\n");
    assert_eq!(render("{{\"a\\n\"}}"), "a\n\n");
    assert_eq!(render("no actions at all}} {"), "no actions at all}} {\n");
    assert_eq!(render("{{\"}}\"}}"), "}}\n");
    assert_eq!(
        render("line1\nline2 {{.Request.Method}}"),
        "line1\nline2 GET\n"
    );
}

#[test]
fn parse_errors() {
    for bad in [
        "{{}}",
        "{{ }}",
        "{{- -}}",
        "{{.Request.Method",
        "{{.Request.Method}",
        "{{end}}",
        "{{else}}",
        "{{if .TraceID}}x",
        "{{if}}{{end}}",
        "{{with}}{{end}}",
        "{{range .X}}{{else}}{{else}}{{end}}",
        "{{\"abc}}",
        "{{'ab'}}",
        "{{`abc}}",
        "{{\"\\q\"}}",
        "{{(}}",
        "{{)}}",
        "{{(.X}}",
        "{{.X | \"x\"}}",
        "{{.X | 3}}",
        "{{.X || .Y}}",
        "{{| .X}}",
        "{{.X-}}",
        "{{3x}}",
        "{{0x}}",
        "{{1__0}}",
        "{{99999999999999999999}}",
        "{{\"a\".Foo}}",
        "{{.X if}}",
        "{{break}}",
        "{{range .X}}{{else}}{{break}}{{end}}",
        "{{/* unclosed",
        "{{/* c */ x}}",
        "{{$x}}",
        "{{.X :}}",
        "{{.X ;}}",
        "{{.X ∑}}",
    ] {
        let err = parse_err(bad);
        assert!(
            matches!(err, TemplateError::Syntax { .. }),
            "{bad:?} gave {err:?}"
        );
    }
    assert!(matches!(
        parse_err("{{foo .Request.Method}}"),
        TemplateError::UndefinedFunction { ref name, .. } if name == "foo"
    ));
    assert!(matches!(
        parse_err("abc\n  {{bar}}"),
        TemplateError::UndefinedFunction {
            line: 2,
            col: 5,
            ..
        }
    ));
    for unsupported in [
        "{{$x := 1}}",
        "{{$x = 1}}",
        "{{range $i, $e := .X}}{{end}}",
        "{{with $x := .X}}{{end}}",
        "{{template \"x\"}}",
        "{{define \"x\"}}{{end}}",
        "{{block \"x\" .}}{{end}}",
        "{{slice .X 1}}",
        "{{call .X}}",
        "{{1i}}",
        "{{0x1p-2}}",
    ] {
        assert!(
            matches!(parse_err(unsupported), TemplateError::Unsupported { .. }),
            "{unsupported:?}"
        );
    }
    // Errors display like Go's.
    assert_eq!(
        parse_err("{{}}").to_string(),
        "template: requestLog:1:1: missing value for command"
    );
    assert_eq!(
        parse_err("x {{nope}}").to_string(),
        "template: requestLog:1:5: function \"nope\" not defined"
    );
}

#[test]
fn deep_nesting_is_rejected_not_overflowing() {
    let deep = format!("{{{{{}1{}}}}}", "(".repeat(5000), ")".repeat(5000));
    assert!(RequestLogTemplate::parse(&deep).is_err());
    let deep_if = format!("{}x{}", "{{if 1}}".repeat(5000), "{{end}}".repeat(5000));
    assert!(RequestLogTemplate::parse(&deep_if).is_err());
    let ok = format!("{{{{{}1{}}}}}", "(".repeat(50), ")".repeat(50));
    assert_eq!(render(&ok), "1\n");
}

#[test]
fn huge_output_fails_cleanly() {
    assert_eq!(
        render(r#"{{range 100000}}{{printf "%1000d" 1}}{{end}}"#),
        invalid_line()
    );
    assert_eq!(
        render(r#"{{printf "%1000000d%1000000d" 1 2}}"#),
        invalid_line()
    );
    assert_eq!(
        render(r#"{{printf "%10000000d" 1}}"#),
        "%!(NOVERB)%!(EXTRA int=1)\n"
    );
}

#[test]
fn template_is_send_sync_and_reusable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RequestLogTemplate>();
    let t = RequestLogTemplate::parse("{{.Request.Method}} {{.Response.Code}}").unwrap();
    let h = headers();
    let rev = revision();
    let mut out = Vec::new();
    for status in [200u16, 404, 503] {
        let mut e = entry(&h, &rev);
        e.status = status;
        t.render(&e, &mut out);
    }
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "GET 200\nGET 404\nGET 503\n"
    );
}

#[test]
fn never_panics_on_odd_templates() {
    let h = headers();
    let rev = revision();
    let e = entry(&h, &rev);
    let samples = [
        "{{",
        "}}",
        "{{{",
        "{{-",
        "{{- ",
        "{{-}}",
        "{{ -}}",
        "{{.",
        "{{$",
        "{{'",
        "{{\"\\",
        "{{`",
        "{{/*",
        "{{/**/",
        "{{/**/}}",
        "{{.A.B.C.D}}",
        "{{(.)}}",
        "{{((.))}}",
        "{{index}}",
        "{{index . }}",
        "{{index .Request.Header \"\" }}",
        "{{printf \"%\" }}",
        "{{printf \"%.\" }}",
        "{{printf \"%-+# 0123.456v\" 1}}",
        "{{printf \"%9999999999d\" 1}}",
        "{{printf \"%.9999999999f\" 1.0}}",
        "{{printf \"%*.*f\" -5 -1 1.0}}",
        "{{printf \"\\xff%\\xff\" 1}}",
        "{{js \"\\xff\\xfe\"}}",
        "{{range .Request.Header}}{{range .}}{{.}}{{end}}{{end}}",
        "{{range 3}}{{range 3}}{{.}}{{end}}{{end}}",
        "{{with 0}}{{else}}{{end}}",
        "{{if 1}}{{else if 0}}{{else}}{{end}}",
        "é{{\"ü\"}}ö",
        "{{.Response.Latency.X}}",
        "{{(js).Foo}}",
        "{{print (print)}}",
        "{{.Request.URL.Path.X}}",
        "{{printf \"%c %q %U\" -1 -1 -1}}",
        "{{printf \"%c\" 0xD800}}",
        "{{printf \"%x\" -255}}",
        "{{index \"\" 0}}",
        "{{index \"abc\" 3}}",
        "{{printf \"%v\" (index \"abc\" 1)}}",
    ];
    for s in samples {
        if let Ok(t) = RequestLogTemplate::parse(s) {
            let mut out = Vec::new();
            t.render(&e, &mut out);
        }
    }
    assert_eq!(line("{{printf \"%x\" -255}}"), "-ff");
    assert_eq!(
        line("{{printf \"%c|%q\" -1 0xD800}}"),
        "\u{FFFD}|'\u{FFFD}'"
    );
}
