//! Periodic metrics flushing, as an `event_manager` subscriber driven by a
//! timerfd, so the VMM event loop writes metrics every minute without a
//! thread of its own.

use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

use crate::metrics::MetricsRegistry;

/// Firecracker's flush period.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Flushes a [`MetricsRegistry`] every `interval` once registered with an
/// `event_manager::EventManager`.
#[derive(Debug)]
pub struct PeriodicFlush {
    timer: TimerFd,
    interval: Duration,
    registry: Arc<MetricsRegistry>,
}

impl PeriodicFlush {
    /// A subscriber flushing `registry` every `interval`. The timer starts
    /// when the subscriber is added to an event manager.
    pub fn new(registry: Arc<MetricsRegistry>, interval: Duration) -> std::io::Result<Self> {
        let timer = TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(Self {
            timer,
            interval,
            registry,
        })
    }
}

impl MutEventSubscriber for PeriodicFlush {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            return;
        }
        // Consume the expiration count; the fd is readable, so this returns
        // at once.
        if self.timer.wait().is_err() {
            tracing::warn!("metrics timer read failed");
        }
        if let Err(e) = self.registry.flush() {
            tracing::warn!("periodic metrics flush failed: {e}");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.timer.reset(self.interval, Some(self.interval)) {
            tracing::error!("cannot arm the metrics timer: {e}");
            return;
        }
        if let Err(e) = ops.add(Events::new_raw(self.timer.as_raw_fd(), EventSet::IN)) {
            tracing::error!("cannot watch the metrics timer: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, SubscriberOps};

    #[test]
    fn flushes_on_each_tick() {
        let path = std::env::temp_dir().join(format!("ember-periodic-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let reg = Arc::new(MetricsRegistry::new());
        reg.configure(&path).unwrap();
        let mut mgr: EventManager<PeriodicFlush> = EventManager::new().unwrap();
        mgr.add_subscriber(PeriodicFlush::new(reg.clone(), Duration::from_millis(20)).unwrap());
        let start = std::time::Instant::now();
        while reg.lines_written() < 2 && start.elapsed() < Duration::from_secs(5) {
            mgr.run_with_timeout(100).unwrap();
        }
        assert!(reg.lines_written() >= 2);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count() as u64,
            reg.lines_written()
        );
    }
}
