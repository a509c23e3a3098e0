//! Process logs as JSON lines with the keys Knative's log pipelines expect (queue-proxy §9.1,
//! activator §7.4): `severity`, `timestamp`, `logger`, `caller`, `message`, plus fixed fields
//! such as `knative.dev/key` and `knative.dev/pod`.

use std::fmt::Write as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as Knative zap-style JSON.
pub struct KnativeJson {
    logger: &'static str,
    fields: Vec<(&'static str, String)>,
}

impl KnativeJson {
    /// Lines name `logger` and carry `fields` (e.g. `knative.dev/pod`).
    pub fn new(logger: &'static str, fields: Vec<(&'static str, String)>) -> Self {
        KnativeJson { logger, fields }
    }
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Fields {
    message: String,
    extra: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.extra.push((field.name(), format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.extra.push((field.name(), value.to_owned()));
        }
    }
}

impl<S, N> FormatEvent<S, N> for KnativeJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = humantime_rfc3339();
        let caller = format!(
            "{}:{}",
            meta.file().unwrap_or("?"),
            meta.line().unwrap_or(0)
        );
        let mut line = serde_json::Map::new();
        line.insert("severity".into(), severity(meta.level()).into());
        line.insert("timestamp".into(), now.into());
        line.insert("logger".into(), self.logger.into());
        line.insert("caller".into(), caller.into());
        line.insert("message".into(), fields.message.into());
        for (k, v) in fields.extra {
            line.insert(k.into(), v.into());
        }
        for (k, v) in &self.fields {
            line.insert((*k).into(), v.clone().into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// UTC time in RFC 3339 with milliseconds, without a date/time dependency.
fn humantime_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
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
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        now.subsec_millis()
    )
}

/// Maps `SERVING_LOGGING_LEVEL` (zap names) to a filter; unknown or empty → info.
pub fn level_filter(level: &str) -> tracing::level_filters::LevelFilter {
    use tracing::level_filters::LevelFilter;
    match level.trim().to_ascii_lowercase().as_str() {
        "debug" => LevelFilter::DEBUG,
        "warn" => LevelFilter::WARN,
        "error" | "dpanic" | "panic" | "fatal" => LevelFilter::ERROR,
        _ => LevelFilter::INFO,
    }
}

/// Installs the JSON logger on stdout.
pub fn init(logger: &'static str, fields: Vec<(&'static str, String)>, level: &str) {
    let _ = tracing_subscriber::fmt()
        .event_format(KnativeJson::new(logger, fields))
        .with_max_level(level_filter(level))
        .with_writer(std::io::stdout)
        .try_init();
}
