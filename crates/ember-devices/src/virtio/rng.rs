//! virtio-rng (entropy device, virtio 1.2 §5.4), backed by getrandom(2).
//!
//! One queue of device-writable buffers; each is filled with random bytes
//! (at most [`MAX_BYTES_PER_REQUEST`] per chain, so a guest cannot make one
//! request cost unbounded work) and returned with the count written. An
//! optional rate limiter charges bytes and requests; when throttled the
//! device stops and resumes from the limiter's timerfd.

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use event_manager::EventSet;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::device::{
    add, complete, device_type, inc, next_chain, notify_if_needed, positions, undo_pop,
    ActivateError, Activation, BackendFd, DeviceSignals, VirtioDevice, COMMON_FEATURES,
};
use super::sg::{parse_chain, ChainLimits};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::GuestMemoryMmap;

/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes handed out per request.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

const TOKEN_RATE_LIMITER: u32 = 0;

/// Configuration of the entropy device (Firecracker's `EntropyDeviceConfig`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngConfig {
    /// Optional limit on bytes and requests.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Counters of the entropy device.
#[derive(Debug, Default, Serialize)]
pub struct RngMetrics {
    /// Activations refused.
    pub activate_fails: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// Random bytes handed to the guest.
    pub bytes: AtomicU64,
    /// Malformed chains (returned with length 0).
    pub invalid_requests: AtomicU64,
    /// getrandom failures.
    pub host_errors: AtomicU64,
    /// Times the rate limiter stopped processing.
    pub rate_limited: AtomicU64,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    signals: Arc<DeviceSignals>,
}

/// The entropy device.
pub struct Rng {
    active: Option<Active>,
    limiter: RateLimiter,
    metrics: Arc<RngMetrics>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .finish()
    }
}

/// Fills `buf` from the host's getrandom(2).
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes;
        // getrandom writes at most that many bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

impl Rng {
    /// A new device.
    pub fn new(config: RngConfig) -> std::io::Result<Self> {
        Ok(Self {
            active: None,
            limiter: RateLimiter::new(&config.rate_limiter.unwrap_or_default())?,
            metrics: Arc::new(RngMetrics::default()),
            buf: vec![0u8; MAX_BYTES_PER_REQUEST],
        })
    }

    /// A new device behind a mutex, as [`super::VirtioMmioDevice::new`] wants.
    pub fn shared(config: RngConfig) -> std::io::Result<Arc<Mutex<Self>>> {
        Ok(Arc::new(Mutex::new(Self::new(config)?)))
    }

    /// Replaces the rate limiter (with a limiter on a test clock, say).
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) {
        self.limiter = limiter;
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    fn process(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if self.limiter.is_blocked() {
            return;
        }
        let limits = ChainLimits {
            max_descriptors: usize::from(a.queue.size()),
            max_bytes: u64::from(u32::MAX),
        };
        let mut used_any = false;
        while let Some(chain) = next_chain(&mut a.queue, &a.mem, &a.signals) {
            let head = chain.head_index();
            let len = match parse_chain(&a.mem, chain, limits) {
                Ok(c) => {
                    let n = c.writable.len().min(MAX_BYTES_PER_REQUEST);
                    if !self.limiter.is_unlimited() && !self.limiter.consume(n as u64) {
                        // Give the chain back; the timer resumes us.
                        undo_pop(&mut a.queue);
                        inc(&self.metrics.rate_limited);
                        break;
                    }
                    match fill_random(&mut self.buf[..n]) {
                        Ok(()) => {
                            c.writable.write_at(0, &self.buf[..n]);
                            inc(&self.metrics.requests);
                            add(&self.metrics.bytes, n as u64);
                            n as u32
                        }
                        Err(e) => {
                            tracing::warn!("virtio-rng: getrandom failed: {e}");
                            inc(&self.metrics.host_errors);
                            0
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("virtio-rng: bad chain: {e}");
                    inc(&self.metrics.invalid_requests);
                    0
                }
            };
            if !complete(&mut a.queue, &a.mem, &a.signals, head, len) {
                return;
            }
            used_any = true;
        }
        if used_any {
            notify_if_needed(&mut a.queue, &a.mem, &a.signals);
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn offered_features(&self) -> u64 {
        COMMON_FEATURES
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, mut a: Activation) -> Result<(), ActivateError> {
        if let Err(e) = a.require_ready([0]) {
            inc(&self.metrics.activate_fails);
            return Err(e);
        }
        let queue = a.queues.swap_remove(0);
        self.active = Some(Active {
            mem: a.mem,
            queue,
            signals: a.signals,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.limiter.reset_timer();
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .as_ref()
            .map(|a| positions([&a.queue]))
            .unwrap_or_default()
    }

    fn queue_notified(&mut self, _index: usize) {
        self.process();
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        vec![BackendFd {
            fd: self.limiter.as_raw_fd(),
            token: TOKEN_RATE_LIMITER,
            events: EventSet::IN,
        }]
    }

    fn backend_event(&mut self, token: u32, _events: EventSet) {
        if token == TOKEN_RATE_LIMITER && self.limiter.on_timer() {
            self.process();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::{ManualClock, TokenBucketConfig};
    use crate::trigger::test_util::CountingTrigger;
    use crate::virtio::testing::{guest_memory, Desc, MmioDriver, TestQueue};
    use crate::virtio::{VirtioMmioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
    use vm_memory::{Bytes, GuestAddress};

    const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1;

    fn bring_up(
        rng: Arc<Mutex<Rng>>,
        features: u64,
    ) -> (VirtioMmioDevice, TestQueue, CountingTrigger) {
        let mem = guest_memory(0x40_0000);
        let irq = CountingTrigger::default();
        let dev = VirtioMmioDevice::new(rng, mem.clone(), irq.clone()).unwrap();
        let q = TestQueue::new(&mem, GuestAddress(0x1000), 16);
        MmioDriver::new(dev.bus_device()).bring_up(features, &[&q]);
        (dev, q, irq)
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let rng = Rng::shared(RngConfig::default()).unwrap();
        let (_dev, mut q, irq) = bring_up(rng.clone(), FEATURES);
        q.add_chain(&[Desc::writable(0x10000, 64), Desc::writable(0x20000, 64)]);
        rng.lock().unwrap().queue_notified(0);
        assert_eq!(q.take_used(), vec![(0, 128)]);
        assert_eq!(irq.count(), 1);
        assert_eq!(
            rng.lock()
                .unwrap()
                .metrics()
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            128
        );
    }

    #[test]
    fn malformed_chains_get_length_zero_and_oversized_are_capped() {
        let rng = Rng::shared(RngConfig::default()).unwrap();
        let (_dev, mut q, _) = bring_up(rng.clone(), FEATURES);
        q.add_chain(&[Desc::writable(0xfff_0000, 64)]);
        q.add_chain(&[Desc::writable(0x10000, 0x20_0000)]);
        q.add_chain(&[Desc::readable(0x10000, 16)]);
        rng.lock().unwrap().queue_notified(0);
        let used = q.take_used();
        assert_eq!(used.len(), 3);
        assert_eq!(used[0].1, 0);
        assert_eq!(used[1].1, MAX_BYTES_PER_REQUEST as u32);
        assert_eq!(used[2].1, 0);
    }

    #[test]
    fn random_bytes_differ_between_requests() {
        let rng = Rng::shared(RngConfig::default()).unwrap();
        let mem = guest_memory(0x40_0000);
        let dev =
            VirtioMmioDevice::new(rng.clone(), mem.clone(), CountingTrigger::default()).unwrap();
        let mut q = TestQueue::new(&mem, GuestAddress(0x1000), 16);
        MmioDriver::new(dev.bus_device()).bring_up(FEATURES, &[&q]);
        q.add_chain(&[Desc::writable(0x10000, 32)]);
        q.add_chain(&[Desc::writable(0x20000, 32)]);
        rng.lock().unwrap().queue_notified(0);
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        mem.read_slice(&mut a, GuestAddress(0x10000)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0x20000)).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }

    #[test]
    fn rate_limiter_stops_and_timer_resumes() {
        let clock = ManualClock::default();
        let cfg = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 100,
                one_time_burst: 0,
                refill_time: 100,
            }),
            ops: None,
        };
        let rng = Rng::shared(RngConfig::default()).unwrap();
        rng.lock()
            .unwrap()
            .set_rate_limiter(RateLimiter::with_clock(&cfg, Box::new(clock.clone())).unwrap());
        let (_dev, mut q, _) = bring_up(rng.clone(), FEATURES | (1 << VIRTIO_F_RING_EVENT_IDX));
        q.add_chain(&[Desc::writable(0x10000, 60)]);
        q.add_chain(&[Desc::writable(0x20000, 60)]);
        rng.lock().unwrap().queue_notified(0);
        assert_eq!(q.take_used(), vec![(0, 60)]);
        // Notifications while blocked do nothing.
        rng.lock().unwrap().queue_notified(0);
        assert!(q.take_used().is_empty());
        clock.advance(std::time::Duration::from_millis(20));
        rng.lock()
            .unwrap()
            .backend_event(TOKEN_RATE_LIMITER, EventSet::IN);
        assert_eq!(q.take_used(), vec![(1, 60)]);
    }
}
