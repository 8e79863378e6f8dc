//! The metrics system: counters fed by the VMM, the devices and the API
//! server, written as one JSON object per line to a file or named pipe.
//!
//! Each line looks like
//! `{"utc_timestamp_ms":1709210096123,"api_server":{...},"block_rootfs":{...}}`:
//! one key per registered [`MetricsSource`]. As in Firecracker, a
//! [`Counter`] reports how much it grew since the previous line (so lines can
//! be summed), while a [`Gauge`] reports its current value.
//!
//! The registry is written on `FlushMetrics`, periodically (see
//! [`crate::periodic`]), and not at all until `/metrics` configured a path.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde_json::{Map, Value};

use crate::sink::{open_sink, Sink, SinkError, WriteOutcome};
use crate::time::unix_millis;

/// A monotonically increasing count, reported as the increase since the
/// previous flush.
#[derive(Debug, Default)]
pub struct Counter {
    total: AtomicU64,
    reported: AtomicU64,
}

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        }
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// The total since creation.
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The increase since the previous call, which becomes the new baseline.
    /// Call it once per metrics line.
    pub fn take_delta(&self) -> u64 {
        let now = self.count();
        let before = self.reported.swap(now, Ordering::Relaxed);
        now.wrapping_sub(before)
    }
}

/// A value that is reported as it is (a size, a latency).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Something that contributes one section to each metrics line.
///
/// `snapshot` is called exactly once per written line, so counters should
/// report [`Counter::take_delta`].
pub trait MetricsSource: Send + Sync {
    /// The section's key in the JSON line, e.g. `"block_rootfs"`.
    fn name(&self) -> &str;
    /// The section's content, usually an object of numbers.
    fn snapshot(&self) -> Value;
}

/// Why metrics could not be configured or written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `/metrics` was already configured once.
    #[error("Reinitialization of metrics not allowed.")]
    AlreadyInitialized,
    /// The path could not be opened.
    #[error("cannot open the metrics destination: {0}")]
    Sink(#[from] SinkError),
    /// Writing the line failed.
    #[error("cannot write metrics: {0}")]
    Write(std::io::Error),
}

struct State {
    sink: Option<Sink>,
    sources: Vec<Arc<dyn MetricsSource>>,
}

/// The set of metric sources and the destination they are written to.
pub struct MetricsRegistry {
    state: Mutex<State>,
    missed_metrics_count: Counter,
    metrics_fails: Counter,
    lines_written: Counter,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry")
            .field("configured", &self.is_configured())
            .finish()
    }
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

static GLOBAL: OnceLock<Arc<MetricsRegistry>> = OnceLock::new();

impl MetricsRegistry {
    /// An empty, unconfigured registry.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                sink: None,
                sources: Vec::new(),
            }),
            missed_metrics_count: Counter::new(),
            metrics_fails: Counter::new(),
            lines_written: Counter::new(),
        }
    }

    /// The process-wide registry, for code that has no handle passed in.
    /// The binary should hand this same registry to the API controller
    /// (`Telemetry::metrics`) and to [`crate::PeriodicFlush`].
    pub fn global() -> Arc<MetricsRegistry> {
        GLOBAL
            .get_or_init(|| Arc::new(MetricsRegistry::new()))
            .clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a source; it appears in every following line.
    pub fn register(&self, source: Arc<dyn MetricsSource>) {
        self.state().sources.push(source);
    }

    /// Removes every source named `name`.
    pub fn unregister(&self, name: &str) {
        self.state().sources.retain(|s| s.name() != name);
    }

    /// Sets the destination. Allowed once, as in Firecracker.
    pub fn configure(&self, path: &Path) -> Result<(), MetricsError> {
        let mut state = self.state();
        if state.sink.is_some() {
            return Err(MetricsError::AlreadyInitialized);
        }
        state.sink = Some(open_sink(path)?);
        Ok(())
    }

    /// Whether a destination is set.
    pub fn is_configured(&self) -> bool {
        self.state().sink.is_some()
    }

    /// How many lines were written so far.
    pub fn lines_written(&self) -> u64 {
        self.lines_written.count()
    }

    fn render_locked(&self, state: &State) -> String {
        let mut sections: BTreeMap<String, Value> = BTreeMap::new();
        for source in &state.sources {
            let snap = source.snapshot();
            match (sections.get_mut(source.name()), snap) {
                (Some(Value::Object(existing)), Value::Object(more)) => existing.extend(more),
                (_, snap) => {
                    sections.insert(source.name().to_string(), snap);
                }
            }
        }
        // The registry's own counters join the logger's section.
        let own = [
            (
                "missed_metrics_count",
                self.missed_metrics_count.take_delta(),
            ),
            ("metrics_fails", self.metrics_fails.take_delta()),
        ];
        let logger = sections
            .entry("logger".to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = logger {
            for (k, v) in own {
                map.insert(k.to_string(), Value::from(v));
            }
        }
        let mut line = Map::new();
        line.insert("utc_timestamp_ms".into(), Value::from(unix_millis()));
        line.extend(sections);
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        text
    }

    /// Writes one line if a destination is set. Returns whether a line was
    /// written; a full pipe drops the line (counted) and returns `Ok(false)`.
    pub fn flush(&self) -> Result<bool, MetricsError> {
        let state = self.state();
        let Some(sink) = &state.sink else {
            return Ok(false);
        };
        let line = self.render_locked(&state);
        match sink.write_line(line.as_bytes()) {
            Ok(WriteOutcome::Written) => {
                self.lines_written.inc();
                Ok(true)
            }
            Ok(WriteOutcome::Dropped) => {
                self.missed_metrics_count.inc();
                Ok(false)
            }
            Err(e) => {
                self.metrics_fails.inc();
                Err(MetricsError::Write(e))
            }
        }
    }

    /// Renders one line without writing it (it still advances counters'
    /// baselines). Meant for tests and debugging.
    pub fn render(&self) -> String {
        let state = self.state();
        self.render_locked(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Dev {
        name: String,
        reads: Counter,
        queue: Gauge,
    }

    impl MetricsSource for Dev {
        fn name(&self) -> &str {
            &self.name
        }
        fn snapshot(&self) -> Value {
            serde_json::json!({"reads": self.reads.take_delta(), "queue": self.queue.get()})
        }
    }

    fn temp(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ember-metrics-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn counters_report_deltas_and_gauges_values() {
        let c = Counter::new();
        c.add(5);
        assert_eq!(c.take_delta(), 5);
        assert_eq!(c.take_delta(), 0);
        c.inc();
        assert_eq!(c.take_delta(), 1);
        assert_eq!(c.count(), 6);
        let g = Gauge::new();
        g.set(9);
        assert_eq!(g.get(), 9);
    }

    #[test]
    fn lines_go_to_the_file_only_once_configured() {
        let reg = MetricsRegistry::new();
        let dev = Arc::new(Dev {
            name: "block_root".into(),
            reads: Counter::new(),
            queue: Gauge::new(),
        });
        reg.register(dev.clone());
        assert!(!reg.flush().unwrap());
        let path = temp("lines");
        reg.configure(&path).unwrap();
        assert!(matches!(
            reg.configure(&path),
            Err(MetricsError::AlreadyInitialized)
        ));
        dev.reads.add(7);
        dev.queue.set(3);
        assert!(reg.flush().unwrap());
        dev.reads.add(1);
        assert!(reg.flush().unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["block_root"]["reads"], 7);
        assert_eq!(lines[1]["block_root"]["reads"], 1);
        assert_eq!(lines[1]["block_root"]["queue"], 3);
        assert!(lines[0]["utc_timestamp_ms"].as_u64().unwrap() > 0);
        assert_eq!(lines[0]["logger"]["metrics_fails"], 0);
        assert_eq!(reg.lines_written(), 2);
        reg.unregister("block_root");
        assert!(reg.render().find("block_root").is_none());
    }

    #[test]
    fn global_is_one_registry() {
        assert!(Arc::ptr_eq(
            &MetricsRegistry::global(),
            &MetricsRegistry::global()
        ));
    }

    #[test]
    fn same_named_sections_merge() {
        let reg = MetricsRegistry::new();
        struct A(&'static str);
        impl MetricsSource for A {
            fn name(&self) -> &str {
                "shared"
            }
            fn snapshot(&self) -> Value {
                serde_json::json!({ self.0: 1 })
            }
        }
        reg.register(Arc::new(A("a")));
        reg.register(Arc::new(A("b")));
        let v: Value = serde_json::from_str(&reg.render()).unwrap();
        assert_eq!(v["shared"]["a"], 1);
        assert_eq!(v["shared"]["b"], 1);
    }
}
