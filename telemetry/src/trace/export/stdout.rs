//! The `stdout` exporter: each span as one line of compact JSON on standard output, in the
//! shape of Go's `stdouttrace` exporter (`Name`, `SpanContext`, `Parent`, `SpanKind`,
//! `StartTime`, `EndTime`, `Attributes`, `Events`, `Links`, `Status`, `Dropped*`,
//! `ChildSpanCount`, `Resource`, `InstrumentationScope`, `InstrumentationLibrary`).
//!
//! Lines are written whole under the stdout lock, so they never interleave with the request log
//! or the process log.

use std::io::Write;
use std::time::SystemTime;

use serde_json::{json, Value as Json};

use super::{ExportError, ExportFuture, SpanExporter};
use crate::trace::context::{SpanId, TraceId};
use crate::trace::resource::Resource;
use crate::trace::span::{KeyValue, SpanData, Value};

/// Where the lines go.
pub enum Sink {
    /// The process's standard output.
    Stdout,
    /// Any writer (tests).
    Writer(Box<dyn Write + Send>),
}

/// See the module documentation.
pub struct StdoutExporter {
    sink: Sink,
}

impl Default for StdoutExporter {
    fn default() -> Self {
        StdoutExporter::new()
    }
}

impl StdoutExporter {
    /// Writes to standard output.
    pub fn new() -> Self {
        StdoutExporter { sink: Sink::Stdout }
    }

    /// Writes to `writer`.
    pub fn to_writer(writer: Box<dyn Write + Send>) -> Self {
        StdoutExporter {
            sink: Sink::Writer(writer),
        }
    }
}

/// Go's `time.Time` JSON form (RFC 3339 with nanoseconds, trailing zeros trimmed) in UTC.
pub fn rfc3339_nano(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
    let nanos = since.subsec_nanos();
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

fn attribute_json(key: &str, value: &Value) -> Json {
    let (kind, value) = match value {
        Value::Int(n) => ("INT64", json!(n)),
        Value::Bool(b) => ("BOOL", json!(b)),
        Value::Float(f) => ("FLOAT64", json!(f)),
        other => ("STRING", json!(other.text().unwrap_or_default())),
    };
    json!({"Key": key, "Value": {"Type": kind, "Value": value}})
}

fn context_json(
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    state: &str,
    remote: bool,
) -> Json {
    json!({
        "TraceID": trace_id.to_string(),
        "SpanID": span_id.to_string(),
        "TraceFlags": if sampled { "01" } else { "00" },
        "TraceState": state,
        "Remote": remote,
    })
}

/// The resource as Go encodes an attribute set: sorted by key.
fn resource_json(resource: &Resource) -> Json {
    let mut attributes: Vec<(&str, &str)> = resource.iter().collect();
    attributes.sort_by(|a, b| a.0.cmp(b.0));
    Json::Array(
        attributes
            .into_iter()
            .map(|(k, v)| json!({"Key": k, "Value": {"Type": "STRING", "Value": v}}))
            .collect(),
    )
}

/// One span as Go's `stdouttrace` writes it (without the trailing newline).
pub fn span_line(span: &SpanData, resource: &Json) -> String {
    let state = span
        .context
        .trace_state
        .as_ref()
        .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
        .unwrap_or_default();
    let parent = match span.parent_span_id {
        Some(id) => context_json(
            span.context.trace_id,
            id,
            span.parent_sampled,
            &state,
            span.parent_remote,
        ),
        None => context_json(TraceId::INVALID, SpanId::INVALID, false, "", false),
    };
    let scope = json!({
        "Name": span.scope.name,
        "Version": span.scope.version,
        "SchemaURL": "",
        "Attributes": null,
    });
    let attributes: Vec<Json> = span
        .attributes
        .iter()
        .map(|KeyValue { key, value }| attribute_json(key, value))
        .collect();
    json!({
        "Name": span.name,
        "SpanContext": context_json(
            span.context.trace_id,
            span.context.span_id,
            span.context.sampled,
            &state,
            false,
        ),
        "Parent": parent,
        "SpanKind": span.kind as u8,
        "StartTime": rfc3339_nano(span.start),
        "EndTime": rfc3339_nano(span.end),
        "Attributes": if attributes.is_empty() { Json::Null } else { Json::Array(attributes) },
        "Events": null,
        "Links": null,
        "Status": {"Code": span.status.code.as_str(), "Description": span.status.message},
        "DroppedAttributes": span.attributes.dropped(),
        "DroppedEvents": 0,
        "DroppedLinks": 0,
        "ChildSpanCount": 0,
        "Resource": resource,
        "InstrumentationScope": scope.clone(),
        "InstrumentationLibrary": scope,
    })
    .to_string()
}

impl SpanExporter for StdoutExporter {
    fn export<'a>(
        &'a mut self,
        batch: &'a [Box<SpanData>],
        resource: &'a Resource,
    ) -> ExportFuture<'a> {
        let resource = resource_json(resource);
        let mut text = String::new();
        for span in batch {
            text.push_str(&span_line(span, &resource));
            text.push('\n');
        }
        let written = match &mut self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            Sink::Writer(w) => w.write_all(text.as_bytes()).and_then(|()| w.flush()),
        };
        Box::pin(
            async move { written.map_err(|e| ExportError::new(format!("writing spans: {e}"))) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_time_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.12Z");
        let t = SystemTime::UNIX_EPOCH + Duration::new(951_782_400, 1);
        assert_eq!(rfc3339_nano(t), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(rfc3339_nano(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
