//! A Go `text/template` subset for Knative request logs, and the per-request line renderer.
//!
//! The queue-proxy (`requestLogTemplate` in `OBSERVABILITY_CONFIG`) and the activator
//! (`logging.request-log-template` in config-observability) both render one line per request with a
//! user-supplied Go template. Upstream executes it with Go's `text/template` against
//! `RequestLogTemplateInput{Request *http.Request, Response, Revision, TraceID}`; this crate
//! reproduces that output byte for byte for the constructs below.
//!
//! # Supported template language
//!
//! - text and actions `{{ }}`, trim markers `{{- ` / ` -}}`, comments `{{/* */}}`;
//! - pipelines `a | b`, parenthesised pipelines, `$` (the root data), field chains;
//! - `{{if}}` / `{{else if}}` / `{{else}}` / `{{end}}`, `{{with}}` (+ `{{else with}}`),
//!   `{{range}}` over `[]string`, header maps and ints (with `{{else}}`, `{{break}}`, `{{continue}}`);
//! - literals: strings (`"…"` with Go escapes, raw `` `…` ``), chars, ints (decimal, `0x`, `0o`, `0b`,
//!   octal, `_`), floats, `true`/`false`, `nil`;
//! - functions: `and`, `or`, `not`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `html`, `js`, `urlquery`,
//!   `index`, `len`, `print`, `printf`, `println` with Go's semantics (`fmt` verbs
//!   `v s d q x X o O b c U t e E f F g G`, flags, width, precision, `*`).
//!
//! Data: `.Request.{Method, URL, Proto, ProtoMajor, ProtoMinor, Host, RemoteAddr, RequestURI,
//! ContentLength, Header}` and the methods `UserAgent`, `Referer`, `ProtoAtLeast`;
//! `.Request.Header.Get "X"` / `.Values "X"` (case-insensitive), `index .Request.Header "X-Y"` and
//! `.Request.Header.X` (exact canonical key, as a Go map lookup); `.Request.URL.{Path, RawQuery,
//! Scheme, Host, Fragment, Opaque, String, RequestURI, EscapedPath, Hostname, Port}`;
//! `.Response.{Code, Size, Latency}`; `.Revision.{Name, Namespace, Service, Configuration, PodName,
//! PodIP}`; `.TraceID`. Values print as Go's `fmt` would (`[a b]` for `[]string`,
//! `map[K:[v]]` for the header map, shortest-round-trip `%v` floats, …).
//!
//! # Not supported (rejected at parse time, so the caller can log it and disable request logs)
//!
//! Variable declarations/assignments (`$x := …`), `{{template}}`, `{{define}}`, `{{block}}`, the
//! `call` and `slice` functions, complex and hexadecimal-float literals, explicit argument indexes
//! in `printf` (`%[1]d` renders as a bad verb). Request fields that have no meaning here
//! (`.Request.Body`, `.Request.TLS`, `.Request.Form`, …) fail at execution time like a missing
//! field does, which writes the `Invalid request log template:` line. Printing `.Request` or `.`
//! itself (Go would print pointers) is an execution error too.
//!
//! # Differences from upstream kept on purpose
//!
//! - On an execution error Go has already written the part of the output produced before the
//!   failing action, then appends the `Invalid request log template: …` line; [`RequestLogTemplate::render`]
//!   writes only the `Invalid request log template: …` line, so a log line is never half a JSON
//!   object.
//! - The `Host` header is absent from `.Request.Header` (Go's server moves it to `.Request.Host`).
//! - Safety limits Go does not have: one rendered entry may not exceed 1 MiB and `{{range}}` may
//!   not iterate more than 100 000 times per entry; beyond that the entry fails like an execution
//!   error. Parenthesis and block nesting is limited to 100 levels (a parse error beyond).
//! - `%x`/`%X` of a float render as a bad verb (`%!x(float64=…)`) instead of a hexadecimal float.
//!
//! Rendering the default template (and any template made of field chains, `js`/`html`/`urlquery`,
//! `print*`, comparisons and `if`/`with`) does not allocate beyond growing the output buffer.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod escape;
mod exec;
mod gofmt;
mod lexer;
mod parse;
mod trace_id;
mod unicode_tables;

#[cfg(test)]
mod tests;

use std::fmt;

pub use trace_id::trace_id;

/// Knative's default request-log template (config-observability `logging.request-log-template`, also
/// the queue-proxy's built-in default `DefaultRequestLogTemplate` in knative/serving
/// `pkg/observability`).
pub const DEFAULT_TEMPLATE: &str = r#"{"httpRequest": {"requestMethod": "{{.Request.Method}}", "requestUrl": "{{js .Request.RequestURI}}", "requestSize": "{{.Request.ContentLength}}", "status": {{.Response.Code}}, "responseSize": "{{.Response.Size}}", "userAgent": "{{js .Request.UserAgent}}", "remoteIp": "{{js .Request.RemoteAddr}}", "serverIp": "{{.Revision.PodIP}}", "referer": "{{js .Request.Referer}}", "latency": "{{.Response.Latency}}s", "protocol": "{{.Request.Proto}}"}, "traceId": "{{.TraceID}}"}"#;

/// Static revision information exposed to the template as `.Revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevisionInfo {
    /// `.Revision.Name` (`SERVING_REVISION`).
    pub name: String,
    /// `.Revision.Namespace` (`SERVING_NAMESPACE`).
    pub namespace: String,
    /// `.Revision.Service` (`SERVING_SERVICE`; may be empty).
    pub service: String,
    /// `.Revision.Configuration` (`SERVING_CONFIGURATION`).
    pub configuration: String,
    /// `.Revision.PodName` (`SERVING_POD`; always empty in the activator).
    pub pod_name: String,
    /// `.Revision.PodIP` (`SERVING_POD_IP`; always empty in the activator).
    pub pod_ip: String,
}

/// Everything one request-log line can show: the template's `.Request`, `.Response`, `.Revision`
/// and `.TraceID`.
#[derive(Debug, Clone, Copy)]
pub struct LogEntry<'a> {
    /// `.Request.Method`.
    pub method: &'a str,
    /// `.Request.URL` as Go prints it: for a server request the path and `?query` of the request
    /// target (`/x?y=1`); an absolute-form target keeps its `scheme://host` prefix.
    pub url: &'a str,
    /// `.Request.RequestURI`: the raw request target as received.
    pub request_uri: &'a str,
    /// `.Request.Proto`: `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`.
    pub proto: &'a str,
    /// `.Request.ProtoMajor`.
    pub proto_major: u8,
    /// `.Request.ProtoMinor`.
    pub proto_minor: u8,
    /// `.Request.Host`: the original Host / `:authority`.
    pub host: &'a str,
    /// `.Request.RemoteAddr` (`ip:port`).
    pub remote_addr: &'a str,
    /// `.Request.ContentLength`: −1 when unknown.
    pub content_length: i64,
    /// `.Request.Header` (the `host` entry is hidden, as in Go).
    pub headers: &'a http::HeaderMap,
    /// `.Response.Code`.
    pub status: u16,
    /// `.Response.Size`: body bytes written.
    pub response_size: u64,
    /// `.Response.Latency` in seconds.
    pub latency_secs: f64,
    /// `.Revision`.
    pub revision: &'a RevisionInfo,
    /// `.TraceID` (see [`trace_id`]).
    pub trace_id: &'a str,
}

/// A template that failed to parse. The message follows Go's `text/template` wording where one
/// exists, prefixed with the position (1-based line and column) of the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Malformed template text (unclosed action, bad literal, misplaced `{{end}}`, …).
    #[error("template: requestLog:{line}:{col}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        col: usize,
        /// What is wrong.
        message: String,
    },
    /// A function name that is not one of the template built-ins.
    #[error("template: requestLog:{line}:{col}: function \"{name}\" not defined")]
    UndefinedFunction {
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        col: usize,
        /// The identifier used as a function.
        name: String,
    },
    /// Valid Go template syntax that this implementation does not execute.
    #[error("template: requestLog:{line}:{col}: {what} is not supported by this request-log template engine")]
    Unsupported {
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        col: usize,
        /// The construct.
        what: String,
    },
}

/// A parsed request-log template, ready to render lines. Parse once, render per request.
pub struct RequestLogTemplate {
    tree: Option<parse::Tree>,
}

impl fmt::Debug for RequestLogTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLogTemplate")
            .field("empty", &self.is_empty())
            .finish()
    }
}

impl RequestLogTemplate {
    /// Parses `text`. An empty text is valid and renders nothing (request logging off).
    ///
    /// As upstream does, a `\n` is appended to a non-empty text that does not end with one, so that
    /// every rendered entry is a line.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Ok(Self { tree: None });
        }
        let tree = if text.ends_with('\n') {
            parse::parse(text)?
        } else {
            let mut owned = String::with_capacity(text.len() + 1);
            owned.push_str(text);
            owned.push('\n');
            parse::parse(&owned)?
        };
        Ok(Self { tree: Some(tree) })
    }

    /// True for the empty template, which renders nothing.
    pub fn is_empty(&self) -> bool {
        self.tree.is_none()
    }

    /// Renders one entry into `out` (appending; `out` is not cleared). The empty template writes
    /// nothing.
    ///
    /// If executing the template fails (a missing field, a function given a wrong type, …) the
    /// output of this call is replaced by
    /// `Invalid request log template: method: <M>, response code: <code>, latency: <secs>, url: <url>\n`.
    pub fn render(&self, entry: &LogEntry<'_>, out: &mut Vec<u8>) {
        let Some(tree) = &self.tree else {
            return;
        };
        let start = out.len();
        if exec::execute(tree, entry, out).is_err() {
            out.truncate(start);
            out.extend_from_slice(b"Invalid request log template: method: ");
            out.extend_from_slice(entry.method.as_bytes());
            out.extend_from_slice(b", response code: ");
            gofmt::write_int(out, i64::from(entry.status));
            out.extend_from_slice(b", latency: ");
            gofmt::write_float_v(out, entry.latency_secs);
            out.extend_from_slice(b", url: ");
            out.extend_from_slice(entry.url.as_bytes());
            out.push(b'\n');
        }
    }
}
