//! Device counters as metrics sections, in Firecracker's names.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ember_devices::legacy::SerialCounters;
use ember_telemetry::MetricsSource;
use serde_json::{json, Value};

/// The console UART (`uart` section): counts since the last line.
pub struct UartMetrics {
    counters: Arc<SerialCounters>,
    last: Mutex<[u64; 3]>,
}

impl UartMetrics {
    pub fn new(counters: Arc<SerialCounters>) -> Self {
        Self {
            counters,
            last: Mutex::new([0; 3]),
        }
    }
}

impl MetricsSource for UartMetrics {
    fn name(&self) -> &str {
        "uart"
    }

    fn snapshot(&self) -> Value {
        let now = [
            self.counters.out_bytes.load(Ordering::Relaxed),
            self.counters.lost_bytes.load(Ordering::Relaxed),
            self.counters.reads.load(Ordering::Relaxed),
        ];
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let d: Vec<u64> = now
            .iter()
            .zip(last.iter())
            .map(|(n, l)| n.saturating_sub(*l))
            .collect();
        *last = now;
        json!({"write_count": d[0], "missed_write_count": d[1], "read_count": d[2]})
    }
}
