//! Ember's telemetry: the logger and the metrics system.
//!
//! - [`logger`]: a small [`tracing::Subscriber`] that writes one line per
//!   event to standard error, a file or a named pipe, with Firecracker's
//!   `/logger` options (level, origin, level tag, module filter). The binary
//!   installs it once at startup; the API reconfigures it at run time.
//! - [`metrics`]: a registry of metric sources (devices, the API server, the
//!   VMM) that is written as one JSON line per flush to a file or named pipe,
//!   on demand (`FlushMetrics`) and periodically ([`periodic`]).
//! - [`sink`]: the non-blocking file/FIFO writer both use.
//!
//! Nothing here allocates on the hot path beyond formatting one line, and no
//! async runtime is involved.

pub mod logger;
pub mod metrics;
pub mod periodic;
pub mod sink;
mod time;

pub use logger::{LogLevel, Logger, LoggerError, LoggerHandle, LoggerOptions};
pub use metrics::{Counter, Gauge, MetricsError, MetricsRegistry, MetricsSource};
pub use periodic::{PeriodicFlush, DEFAULT_FLUSH_INTERVAL};
pub use sink::{open_sink, Sink, SinkError};
