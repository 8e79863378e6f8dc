//! The logger: a minimal [`tracing::Subscriber`] with Firecracker's `/logger`
//! semantics.
//!
//! One line per event:
//! `2024-02-29T12:34:56.123456789 [instance:thread:LEVEL:file:line] message key=value`
//! where `:LEVEL` appears with `show_level` and `:file:line` with
//! `show_log_origin`. Until [`LoggerHandle::configure`] is called, warnings
//! and errors go to standard error. Configuration may be repeated; fields
//! left out keep their current value, except that the level becomes `Info`
//! the first time the logger is configured without one (Firecracker's
//! documented default).
//!
//! Spans are accepted (so instrumented code works) but not printed.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use crate::metrics::{Counter, MetricsSource};
use crate::sink::{open_sink, Sink, SinkError, WriteOutcome};
use crate::time::rfc3339_nanos;

/// A log level as the `/logger` endpoint names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing is logged.
    Off = 0,
    /// Errors only.
    Error = 1,
    /// Warnings and errors.
    Warning = 2,
    /// Informational messages and above.
    Info = 3,
    /// Debug messages and above.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

/// The level names accepted by [`LogLevel::from_str`], for error messages.
pub const LEVEL_NAMES: &str = "Error, Warning, Info, Debug, Trace, Off";

impl FromStr for LogLevel {
    type Err = String;

    /// Parses a level name, ignoring case; `Warn` is accepted for `Warning`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "error" => Ok(Self::Error),
            "warning" | "warn" => Ok(Self::Warning),
            "info" => Ok(Self::Info),
            "debug" => Ok(Self::Debug),
            "trace" => Ok(Self::Trace),
            _ => Err(format!(
                "unknown log level {s:?}; expected one of {LEVEL_NAMES} (any case)"
            )),
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "Off",
            Self::Error => "Error",
            Self::Warning => "Warning",
            Self::Info => "Info",
            Self::Debug => "Debug",
            Self::Trace => "Trace",
        })
    }
}

impl LogLevel {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Off,
            1 => Self::Error,
            2 => Self::Warning,
            3 => Self::Info,
            4 => Self::Debug,
            _ => Self::Trace,
        }
    }

    fn rank(level: &Level) -> u8 {
        match *level {
            Level::ERROR => 1,
            Level::WARN => 2,
            Level::INFO => 3,
            Level::DEBUG => 4,
            Level::TRACE => 5,
        }
    }

    /// Whether an event at `level` passes this filter.
    pub fn allows(self, level: &Level) -> bool {
        Self::rank(level) <= self as u8
    }

    fn as_filter(self) -> LevelFilter {
        match self {
            Self::Off => LevelFilter::OFF,
            Self::Error => LevelFilter::ERROR,
            Self::Warning => LevelFilter::WARN,
            Self::Info => LevelFilter::INFO,
            Self::Debug => LevelFilter::DEBUG,
            Self::Trace => LevelFilter::TRACE,
        }
    }
}

/// A (partial) logger configuration; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoggerOptions {
    /// The most verbose level written.
    pub level: Option<LogLevel>,
    /// A file or named pipe for the log lines (standard error until set).
    pub log_path: Option<PathBuf>,
    /// Print the level of each line.
    pub show_level: Option<bool>,
    /// Print the source file and line of each line.
    pub show_log_origin: Option<bool>,
    /// Only log events whose target (module path) starts with this; an
    /// empty string removes the filter.
    pub module: Option<String>,
}

/// Why the logger could not be (re)configured.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log path could not be opened.
    #[error("cannot open the log destination: {0}")]
    Sink(#[from] SinkError),
}

#[derive(Debug)]
struct Settings {
    sink: Option<Sink>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
    configured: bool,
}

#[derive(Debug)]
struct Shared {
    level: AtomicU8,
    instance_id: Mutex<String>,
    settings: Mutex<Settings>,
    next_span: AtomicU64,
    missed_log_count: Counter,
    log_fails: Counter,
}

impl Shared {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn level(&self) -> LogLevel {
        LogLevel::from_u8(self.level.load(Ordering::Relaxed))
    }
}

/// The subscriber to install with [`tracing::subscriber::set_global_default`].
#[derive(Debug)]
pub struct Logger {
    shared: Arc<Shared>,
}

/// A handle that reconfigures an installed [`Logger`] from any thread.
#[derive(Debug, Clone)]
pub struct LoggerHandle {
    shared: Arc<Shared>,
}

impl Logger {
    /// A logger for the instance `instance_id`, writing warnings and errors
    /// to standard error until configured.
    pub fn new(instance_id: &str) -> Self {
        Self {
            shared: Arc::new(Shared {
                level: AtomicU8::new(LogLevel::Warning as u8),
                instance_id: Mutex::new(instance_id.to_string()),
                settings: Mutex::new(Settings {
                    sink: None,
                    show_level: false,
                    show_origin: false,
                    module: None,
                    configured: false,
                }),
                next_span: AtomicU64::new(1),
                missed_log_count: Counter::new(),
                log_fails: Counter::new(),
            }),
        }
    }

    /// A handle for later reconfiguration.
    pub fn handle(&self) -> LoggerHandle {
        LoggerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Creates a logger, installs it as the process-wide subscriber and
    /// returns its handle. Fails if a global subscriber already exists.
    pub fn install_global(instance_id: &str) -> Result<LoggerHandle, String> {
        let logger = Self::new(instance_id);
        let handle = logger.handle();
        tracing::subscriber::set_global_default(logger).map_err(|e| e.to_string())?;
        Ok(handle)
    }
}

impl LoggerHandle {
    /// Applies `options`. On error nothing changes.
    pub fn configure(&self, options: &LoggerOptions) -> Result<(), LoggerError> {
        let new_sink = match &options.log_path {
            Some(path) => Some(open_sink(path)?),
            None => None,
        };
        {
            let mut s = self.shared.settings();
            if let Some(sink) = new_sink {
                s.sink = Some(sink);
            }
            if let Some(v) = options.show_level {
                s.show_level = v;
            }
            if let Some(v) = options.show_log_origin {
                s.show_origin = v;
            }
            if let Some(m) = &options.module {
                s.module = if m.is_empty() { None } else { Some(m.clone()) };
            }
            let level = match options.level {
                Some(l) => Some(l),
                None if !s.configured => Some(LogLevel::Info),
                None => None,
            };
            if let Some(l) = level {
                self.shared.level.store(l as u8, Ordering::Relaxed);
            }
            s.configured = true;
        }
        // Our `max_level_hint` changed: let tracing recompute its fast-path
        // filter. Must run without our lock held.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    }

    /// The current level.
    pub fn level(&self) -> LogLevel {
        self.shared.level()
    }

    /// Changes the instance id printed in each line.
    pub fn set_instance_id(&self, id: &str) {
        let mut guard = self
            .shared
            .instance_id
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *guard = id.to_string();
    }

    /// The logger's own counters, as the `logger` metrics section.
    pub fn metrics_source(&self) -> Arc<dyn MetricsSource> {
        Arc::new(LoggerMetrics {
            shared: self.shared.clone(),
        })
    }
}

struct LoggerMetrics {
    shared: Arc<Shared>,
}

impl MetricsSource for LoggerMetrics {
    fn name(&self) -> &str {
        "logger"
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "missed_log_count": self.shared.missed_log_count.take_delta(),
            "log_fails": self.shared.log_fails.take_delta(),
        })
    }
}

/// Collects an event's message and fields into one line.
struct LineVisitor<'a> {
    out: &'a mut String,
    message: String,
}

impl Visit for LineVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.out, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.out, " {}={:?}", field.name(), value);
        }
    }
}

fn level_tag(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

impl Shared {
    fn module_allows(settings: &Settings, target: &str) -> bool {
        match &settings.module {
            None => true,
            Some(m) => target.starts_with(m.as_str()),
        }
    }

    fn format_line(&self, settings: &Settings, event: &Event<'_>) -> String {
        let meta = event.metadata();
        let mut fields = String::new();
        let mut visitor = LineVisitor {
            out: &mut fields,
            message: String::new(),
        };
        event.record(&mut visitor);
        let message = visitor.message;
        let thread = std::thread::current();
        let mut line = String::with_capacity(64 + message.len() + fields.len());
        line.push_str(&rfc3339_nanos(SystemTime::now()));
        line.push_str(" [");
        line.push_str(&self.instance_id.lock().unwrap_or_else(|p| p.into_inner()));
        line.push(':');
        line.push_str(thread.name().unwrap_or("unnamed"));
        if settings.show_level {
            line.push(':');
            line.push_str(level_tag(meta.level()));
        }
        if settings.show_origin {
            let _ = write!(
                line,
                ":{}:{}",
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0)
            );
        }
        line.push_str("] ");
        line.push_str(&message);
        line.push_str(&fields);
        line.push('\n');
        line
    }
}

impl Subscriber for Logger {
    fn register_callsite(&self, _meta: &'static Metadata<'static>) -> Interest {
        // Level and module filter change at run time: ask every time.
        Interest::sometimes()
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        if !self.shared.level().allows(meta.level()) {
            return false;
        }
        if meta.is_span() {
            return true;
        }
        Shared::module_allows(&self.shared.settings(), meta.target())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.shared.level().as_filter())
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.shared.next_span.fetch_add(1, Ordering::Relaxed).max(1))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let settings = self.shared.settings();
        if !Shared::module_allows(&settings, event.metadata().target()) {
            return;
        }
        let line = self.shared.format_line(&settings, event);
        let result = match &settings.sink {
            Some(sink) => sink.write_line(line.as_bytes()),
            None => std::io::stderr()
                .lock()
                .write_all(line.as_bytes())
                .map(|()| WriteOutcome::Written),
        };
        match result {
            Ok(WriteOutcome::Written) => {}
            Ok(WriteOutcome::Dropped) => self.shared.missed_log_count.inc(),
            Err(_) => self.shared.log_fails.inc(),
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_log(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ember-log-{tag}-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn level_names_parse_in_any_case() {
        assert_eq!("warning".parse::<LogLevel>(), Ok(LogLevel::Warning));
        assert_eq!("WARN".parse::<LogLevel>(), Ok(LogLevel::Warning));
        assert_eq!("Off".parse::<LogLevel>(), Ok(LogLevel::Off));
        assert_eq!("tRaCe".parse::<LogLevel>(), Ok(LogLevel::Trace));
        assert!("verbose"
            .parse::<LogLevel>()
            .unwrap_err()
            .contains("Warning"));
        assert!(LogLevel::Info.allows(&Level::WARN));
        assert!(!LogLevel::Info.allows(&Level::DEBUG));
        assert!(!LogLevel::Off.allows(&Level::ERROR));
    }

    #[test]
    fn writes_filtered_formatted_lines_to_a_file() {
        let path = temp_log("file");
        let logger = Logger::new("vm-7");
        let handle = logger.handle();
        tracing::subscriber::with_default(logger, || {
            handle
                .configure(&LoggerOptions {
                    log_path: Some(path.clone()),
                    show_level: Some(true),
                    show_log_origin: Some(true),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(handle.level(), LogLevel::Info);
            tracing::info!(answer = 42, "hello {}", "world");
            tracing::debug!("hidden at Info");
            handle
                .configure(&LoggerOptions {
                    level: Some(LogLevel::Debug),
                    show_log_origin: Some(false),
                    module: Some("ember_telemetry::nowhere".into()),
                    ..Default::default()
                })
                .unwrap();
            tracing::warn!("filtered out by module");
            handle
                .configure(&LoggerOptions {
                    module: Some(String::new()),
                    ..Default::default()
                })
                .unwrap();
            tracing::debug!("now visible");
            handle
                .configure(&LoggerOptions {
                    level: Some(LogLevel::Off),
                    ..Default::default()
                })
                .unwrap();
            tracing::error!("off means off");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains(" [vm-7:"), "{}", lines[0]);
        assert!(lines[0].contains(":INFO:"), "{}", lines[0]);
        assert!(lines[0].contains("logger.rs:"), "{}", lines[0]);
        assert!(
            lines[0].ends_with("] hello world answer=42"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains(":DEBUG] now visible"), "{}", lines[1]);
        // The timestamp leads each line.
        assert_eq!(&lines[0][4..5], "-");
        assert_eq!(&lines[0][10..11], "T");
    }

    #[test]
    fn bad_path_changes_nothing() {
        let logger = Logger::new("x");
        let handle = logger.handle();
        let err = handle
            .configure(&LoggerOptions {
                log_path: Some(PathBuf::from("/nonexistent-dir/ember.log")),
                level: Some(LogLevel::Trace),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
        assert_eq!(handle.level(), LogLevel::Warning);
    }

    #[test]
    fn metrics_source_reports_deltas() {
        let logger = Logger::new("x");
        let handle = logger.handle();
        logger.shared.missed_log_count.add(3);
        let src = handle.metrics_source();
        assert_eq!(src.name(), "logger");
        assert_eq!(src.snapshot()["missed_log_count"], 3);
        assert_eq!(src.snapshot()["missed_log_count"], 0);
    }
}
