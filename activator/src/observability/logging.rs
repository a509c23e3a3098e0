//! Process logs (spec §7.4): zap-style JSON lines on stdout with `knative.dev/controller` and
//! `knative.dev/pod`, shaped by `config-logging`'s `zap-logger-config` and filtered by
//! `loglevel.activator`, which can change at any time (a reloadable level filter; the tracing
//! callsite cache is rebuilt on every change, so disabled levels stay free).

use std::sync::OnceLock;

use knative_telemetry::logging::{level_filter, KnativeJson, LogFormat};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, Registry};

type Stdout = fn() -> std::io::Stdout;
type FmtLayer = fmt::Layer<Registry, DefaultFields, KnativeJson, Stdout>;
type WithFmt = Layered<reload::Layer<FmtLayer, Registry>, Registry>;

/// Handles to change the installed logger.
pub struct LogControl {
    format: reload::Handle<FmtLayer, Registry>,
    level: reload::Handle<LevelFilter, WithFmt>,
    fields: Vec<(&'static str, String)>,
}

static CONTROL: OnceLock<LogControl> = OnceLock::new();

fn fmt_layer(fields: Vec<(&'static str, String)>, format: LogFormat) -> FmtLayer {
    fmt::layer()
        .event_format(KnativeJson::with_format("activator", fields, format))
        .with_writer(std::io::stdout as Stdout)
}

/// Installs the JSON logger (Knative's shipped zap format, `level`) with the fixed `fields`.
/// Later calls do nothing (the first logger stays).
pub fn init(fields: Vec<(&'static str, String)>, level: &str) {
    if CONTROL.get().is_some() {
        return;
    }
    let (format_layer, format) =
        reload::Layer::new(fmt_layer(fields.clone(), LogFormat::knative()));
    let (level_layer, level) = reload::Layer::new(level_filter(level));
    let installed = tracing_subscriber::registry()
        .with(format_layer)
        .with(level_layer)
        .try_init()
        .is_ok();
    if installed {
        let _ = CONTROL.set(LogControl {
            format,
            level,
            fields,
        });
    }
}

/// The effective level name: `loglevel.activator` if set, else the zap configuration's level,
/// else `fallback`.
pub fn effective_level<'a>(configured: &'a str, zap_config: &'a str, fallback: &'a str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    if !zap_config.trim().is_empty() {
        let (format, problem) = LogFormat::from_zap_config(zap_config);
        if problem.is_none() {
            return format.level;
        }
    }
    fallback.to_owned()
}

/// Applies `zap-logger-config` (startup only, as upstream builds its logger once). An invalid
/// configuration keeps Knative's format and logs why.
pub fn apply_zap_config(zap_config: &str) {
    if zap_config.trim().is_empty() {
        return;
    }
    let (format, problem) = LogFormat::from_zap_config(zap_config);
    if let Some(problem) = problem {
        tracing::error!("{problem}; keeping the default log format");
        return;
    }
    if let Some(control) = CONTROL.get() {
        let layer = fmt_layer(control.fields.clone(), format);
        if let Err(error) = control.format.reload(layer) {
            tracing::error!(%error, "cannot apply zap-logger-config");
        }
    }
}

/// Sets the level (zap names; unknown → info). Returns whether a logger was there to change.
pub fn set_level(level: &str) -> bool {
    let Some(control) = CONTROL.get() else {
        return false;
    };
    control.level.reload(level_filter(level)).is_ok()
}

/// The current level filter, if the logger is installed.
pub fn current_level() -> Option<LevelFilter> {
    CONTROL
        .get()
        .and_then(|c| c.level.with_current(|l| *l).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_precedence() {
        assert_eq!(effective_level("debug", "", "info"), "debug");
        assert_eq!(effective_level("", r#"{"level":"warn"}"#, "info"), "warn");
        assert_eq!(effective_level("", "{not json", "error"), "error");
        assert_eq!(effective_level("", "", "info"), "info");
    }

    #[test]
    fn reloadable_level() {
        init(vec![("knative.dev/pod", "p".into())], "info");
        // Another test (or the harness) may have installed a subscriber first; only check the
        // reload path when ours is in place.
        if CONTROL.get().is_some() {
            assert!(set_level("debug"));
            assert_eq!(current_level(), Some(LevelFilter::DEBUG));
            assert!(set_level("error"));
            assert_eq!(current_level(), Some(LevelFilter::ERROR));
        }
    }
}
