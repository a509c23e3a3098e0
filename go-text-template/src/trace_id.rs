//! `.TraceID` of the request log (knative/serving `pkg/http.ExtractTraceID`).

use http::HeaderMap;

/// The trace id shown as `.TraceID`: the second `-`-separated field of the first `traceparent`
/// value when that value is non-empty and contains a `-` (W3C wins); otherwise the first
/// `X-B3-TraceId` value; otherwise `""`.
///
/// Like upstream, the `traceparent` field is not validated (`00-` yields `""`, a value without
/// `-` falls through to B3). A value that is not valid UTF-8 yields `""`.
pub fn trace_id(headers: &HeaderMap) -> &str {
    if let Some(tp) = headers.get("traceparent") {
        let b = tp.as_bytes();
        if !b.is_empty() {
            // strings.SplitN(tp, "-", 3); len(parts) >= 2 → parts[1]
            if let Some(first) = b.iter().position(|&c| c == b'-') {
                let rest = &b[first + 1..];
                let end = rest.iter().position(|&c| c == b'-').unwrap_or(rest.len());
                return std::str::from_utf8(&rest[..end]).unwrap_or("");
            }
        }
    }
    if let Some(b3) = headers.get("x-b3-traceid") {
        if !b3.is_empty() {
            return std::str::from_utf8(b3.as_bytes()).unwrap_or("");
        }
    }
    ""
}
