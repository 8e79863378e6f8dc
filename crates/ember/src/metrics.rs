//! Device counters as metrics sections, in Firecracker's names.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ember_devices::legacy::SerialCounters;
use ember_telemetry::MetricsSource;
use serde_json::{json, Value};

/// The console UART (`uart` section), in Firecracker's names.
pub fn uart_source(counters: Arc<SerialCounters>) -> Arc<dyn MetricsSource> {
    Arc::new(DeltaMetrics::new(
        "uart".to_string(),
        Box::new(move || {
            json!({
                "write_count": counters.out_bytes.load(Ordering::Relaxed),
                "missed_write_count": counters.lost_bytes.load(Ordering::Relaxed),
                "read_count": counters.reads.load(Ordering::Relaxed),
            })
        }),
    ))
}

/// A device's counters (plain totals) reported as changes since the last
/// line, as Firecracker reports counters.
pub struct DeltaMetrics {
    name: String,
    read: Box<dyn Fn() -> Value + Send + Sync>,
    last: Mutex<Value>,
}

impl DeltaMetrics {
    pub fn new(name: String, read: Box<dyn Fn() -> Value + Send + Sync>) -> Self {
        Self {
            name,
            read,
            last: Mutex::new(Value::Null),
        }
    }
}

fn delta(now: &Value, last: &Value) -> Value {
    match (now, last) {
        (Value::Object(n), Value::Object(l)) => Value::Object(
            n.iter()
                .map(|(k, v)| (k.clone(), delta(v, l.get(k).unwrap_or(&Value::Null))))
                .collect(),
        ),
        (Value::Number(n), Value::Number(l)) => match (n.as_u64(), l.as_u64()) {
            (Some(n), Some(l)) => json!(n.saturating_sub(l)),
            _ => now.clone(),
        },
        _ => now.clone(),
    }
}

impl MetricsSource for DeltaMetrics {
    fn name(&self) -> &str {
        &self.name
    }

    fn snapshot(&self) -> Value {
        let now = (self.read)();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let d = delta(&now, &last);
        *last = now;
        d
    }
}

/// The metrics section of each virtio device.
pub fn device_sources(
    devices: &[ember_vmm::virtio_devices::DeviceMetrics],
) -> Vec<Arc<dyn MetricsSource>> {
    use ember_vmm::virtio_devices::DeviceMetrics as D;
    fn reader<T: serde::Serialize + Send + Sync + 'static>(
        m: Arc<T>,
    ) -> Box<dyn Fn() -> Value + Send + Sync> {
        Box::new(move || serde_json::to_value(&*m).unwrap_or(Value::Null))
    }
    devices
        .iter()
        .map(|d| -> Arc<dyn MetricsSource> {
            let (name, read) = match d {
                D::Block(id, m) => (format!("block_{id}"), reader(m.clone())),
                D::Net(id, m) => (format!("net_{id}"), reader(m.clone())),
                D::Vsock(m) => ("vsock".to_string(), reader(m.clone())),
                D::Rng(m) => ("entropy".to_string(), reader(m.clone())),
            };
            Arc::new(DeltaMetrics::new(name, read))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uart_counts_are_reported_since_the_last_line() {
        let c = Arc::new(SerialCounters::default());
        let src = uart_source(c.clone());
        c.out_bytes.store(5, Ordering::Relaxed);
        assert_eq!(src.snapshot()["write_count"], 5);
        c.out_bytes.store(7, Ordering::Relaxed);
        let s = src.snapshot();
        assert_eq!(
            (s["write_count"].as_u64(), s["read_count"].as_u64()),
            (Some(2), Some(0))
        );
        assert_eq!(src.name(), "uart");
    }

    #[test]
    fn deltas_of_nested_counters() {
        let last = json!({"a": 5, "b": {"c": 1}, "s": "x"});
        let now = json!({"a": 7, "b": {"c": 4}, "s": "y", "new": 2});
        assert_eq!(
            delta(&now, &last),
            json!({"a": 2, "b": {"c": 3}, "s": "y", "new": 2})
        );
        assert_eq!(delta(&now, &Value::Null), now);
    }
}
