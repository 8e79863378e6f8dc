//! What every virtio device implements, and the state it shares with its
//! transport: interrupt status, configuration generation, needs-reset.
//!
//! A device is split in two halves that meet under one mutex: the transport
//! (vCPU threads, through MMIO) negotiates features, lays out queues and
//! calls [`VirtioDevice::activate`] / [`VirtioDevice::reset`]; the event
//! loop calls [`VirtioDevice::queue_notified`] and
//! [`VirtioDevice::backend_event`] to do the work. Interrupt status lives in
//! [`DeviceSignals`], outside that mutex, so the guest's interrupt
//! acknowledgements never wait for device I/O.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use event_manager::EventSet;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_superio::Trigger;

use crate::GuestMemoryMmap;

/// Device may use indirect descriptors.
pub const VIRTIO_F_RING_INDIRECT_DESC: u32 = 28;
/// used_event / avail_event notification suppression.
pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;
/// Virtio 1.x ("modern") device.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Features every Ember virtio device offers.
pub const COMMON_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_RING_EVENT_IDX) | (1 << VIRTIO_F_RING_INDIRECT_DESC);

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error the driver must reset to recover from.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Virtio device type ids (virtio 1.2 §5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// InterruptStatus bit: a queue's used ring was updated.
pub const INTERRUPT_USED_RING: u32 = 1;
/// InterruptStatus bit: the configuration changed (or needs-reset was set).
pub const INTERRUPT_CONFIG: u32 = 2;

/// An interrupt line a device can raise, whatever its error type.
pub trait IrqLine: Send + Sync {
    /// Raises the interrupt.
    fn raise(&self) -> io::Result<()>;
}

impl<T> IrqLine for T
where
    T: Trigger + Send + Sync,
    T::E: fmt::Debug,
{
    fn raise(&self) -> io::Result<()> {
        self.trigger()
            .map_err(|e| io::Error::other(format!("{e:?}")))
    }
}

/// State shared by a device, its transport and its handles, without a lock.
pub struct DeviceSignals {
    isr: AtomicU32,
    config_generation: AtomicU32,
    needs_reset: AtomicBool,
    driver_ok: AtomicBool,
    irq: Box<dyn IrqLine>,
    interrupts_raised: AtomicU64,
}

impl fmt::Debug for DeviceSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSignals")
            .field("isr", &self.isr)
            .field("config_generation", &self.config_generation)
            .field("needs_reset", &self.needs_reset)
            .finish()
    }
}

impl DeviceSignals {
    /// Signals raising `irq`.
    pub fn new(irq: Box<dyn IrqLine>) -> Self {
        Self {
            isr: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            driver_ok: AtomicBool::new(false),
            irq,
            interrupts_raised: AtomicU64::new(0),
        }
    }

    fn raise(&self, bit: u32) {
        self.isr.fetch_or(bit, Ordering::SeqCst);
        self.interrupts_raised.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.irq.raise() {
            tracing::warn!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// The device put buffers in a used ring.
    pub fn signal_used_queue(&self) {
        self.raise(INTERRUPT_USED_RING);
    }

    /// The device's configuration space changed.
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        if self.driver_ok.load(Ordering::SeqCst) {
            self.raise(INTERRUPT_CONFIG);
        }
    }

    /// The device found the driver's state unusable (a corrupt ring, say).
    /// It sets DEVICE_NEEDS_RESET and notifies the driver (virtio 1.2 §2.1.2).
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            tracing::warn!("virtio: device needs reset");
            if self.driver_ok.load(Ordering::SeqCst) {
                self.raise(INTERRUPT_CONFIG);
            }
        }
    }

    /// True once [`Self::set_needs_reset`] was called, until the reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The InterruptStatus register.
    pub fn interrupt_status(&self) -> u32 {
        self.isr.load(Ordering::SeqCst)
    }

    /// The driver acknowledged the given InterruptStatus bits.
    pub fn ack(&self, bits: u32) {
        self.isr.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// True while the device is activated: configuration changes then
    /// raise an interrupt.
    pub fn driver_ok(&self) -> bool {
        self.driver_ok.load(Ordering::SeqCst)
    }

    /// Signals restored from a snapshot, raising `irq`.
    pub(crate) fn from_saved(
        irq: Box<dyn IrqLine>,
        isr: u32,
        config_generation: u32,
        needs_reset: bool,
        driver_ok: bool,
    ) -> Self {
        let s = Self::new(irq);
        s.isr.store(isr, Ordering::SeqCst);
        s.config_generation
            .store(config_generation, Ordering::SeqCst);
        s.needs_reset.store(needs_reset, Ordering::SeqCst);
        s.driver_ok.store(driver_ok, Ordering::SeqCst);
        s
    }

    /// Raises the line again if interrupt status bits are pending (after a
    /// restore: an interrupt in flight when the snapshot was taken must not
    /// be lost; the driver tolerates a repeated one, it reads the status).
    pub(crate) fn repeat_pending(&self) {
        let bits = self.interrupt_status();
        if bits != 0 {
            self.raise(bits);
        }
    }

    /// How many interrupts were raised (for tests and metrics).
    pub fn interrupts_raised(&self) -> u64 {
        self.interrupts_raised.load(Ordering::Relaxed)
    }

    pub(crate) fn set_driver_ok(&self, ok: bool) {
        self.driver_ok.store(ok, Ordering::SeqCst);
    }

    /// Back to power-on state (device reset); the generation keeps counting.
    pub(crate) fn reset(&self) {
        self.isr.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        self.driver_ok.store(false, Ordering::SeqCst);
    }
}

/// What a device receives when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    /// Guest memory, for the rings and buffers.
    pub mem: GuestMemoryMmap,
    /// One per queue the device declared; those the driver did not enable
    /// have `ready() == false`. EVENT_IDX is already set on them if agreed.
    pub queues: Vec<Queue>,
    /// The features the driver accepted.
    pub features: u64,
    /// Interrupt and needs-reset signalling.
    pub signals: std::sync::Arc<DeviceSignals>,
}

impl Activation {
    /// True when the driver accepted feature bit `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.features & (1 << bit) != 0
    }

    /// Fails unless the given queues are ready.
    pub fn require_ready(
        &self,
        queues: impl IntoIterator<Item = usize>,
    ) -> Result<(), ActivateError> {
        for q in queues {
            if !self.queues.get(q).is_some_and(|q| q.ready()) {
                return Err(ActivateError::QueueNotReady(q));
            }
        }
        Ok(())
    }
}

/// Why a device refused to activate. The transport then sets
/// DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs was not enabled by the driver.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// The backend could not be set up for the negotiated features.
    #[error("backend: {0}")]
    Backend(String),
}

/// A file descriptor the event loop should watch while the device is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendFd {
    /// The fd; it must stay open as long as the device exists.
    pub fd: RawFd,
    /// Passed back to [`VirtioDevice::backend_event`].
    pub token: u32,
    /// Readiness to wait for (add `EventSet::EDGE_TRIGGERED` for edge mode).
    pub events: EventSet,
}

/// A virtio device's behaviour, independent of the transport.
pub trait VirtioDevice: Send + 'static {
    /// The virtio device type id.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver (must include VIRTIO_F_VERSION_1).
    fn offered_features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes the configuration space; ignored by default.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// The driver set DRIVER_OK: take the queues and start.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: drop the queues, stop all I/O.
    fn reset(&mut self);
    /// True between a successful activation and the next reset.
    fn is_active(&self) -> bool;
    /// Event loop: the driver notified queue `index`.
    fn queue_notified(&mut self, index: usize);
    /// Event loop: the device became active; by default, process every
    /// queue once (notifications may have come before the event loop knew).
    fn activated(&mut self) {
        for i in 0..self.queue_max_sizes().len() {
            self.queue_notified(i);
        }
    }
    /// Before a snapshot (vCPUs paused): finish or give back the work in
    /// progress that the transport state cannot describe, so that the queue
    /// positions read next are the whole truth. The device stays usable.
    fn prepare_save(&mut self) {}
    /// `(next_avail, next_used)` of each queue, in queue order, while the
    /// device is active (it owns the queues then); empty when inactive.
    fn queue_positions(&self) -> Vec<(u16, u16)>;
    /// Right after a restore activated the device on the saved queues
    /// (before the event loop starts it with [`Self::activated`]): react to
    /// host resources that did not survive the snapshot.
    fn restored(&mut self) {}
    /// Backend fds to watch while active.
    fn backend_fds(&self) -> Vec<BackendFd> {
        Vec::new()
    }
    /// Event loop: a backend fd is ready.
    fn backend_event(&mut self, token: u32, events: EventSet) {
        let _ = (token, events);
    }
}

/// `(next_avail, next_used)` of `queues`, for
/// [`VirtioDevice::queue_positions`].
pub fn positions<'q>(queues: impl IntoIterator<Item = &'q Queue>) -> Vec<(u16, u16)> {
    queues
        .into_iter()
        .map(|q| (q.next_avail(), q.next_used()))
        .collect()
}

/// Copies `src[offset..]` into `data`; bytes past the end read as zero.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if offset >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - offset);
    data[..n].copy_from_slice(&src[offset..offset + n]);
}

/// Adds `n` to a metrics counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a metrics counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Puts `(head, len)` in the used ring and raises the interrupt when the
/// driver asked for one (EVENT_IDX). A failure means the ring is corrupt:
/// the device is marked needing reset and false is returned.
pub fn complete(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    signals: &DeviceSignals,
    head: u16,
    len: u32,
) -> bool {
    if let Err(e) = queue.add_used(mem, head, len) {
        tracing::warn!("virtio: cannot add to used ring: {e}");
        signals.set_needs_reset();
        return false;
    }
    true
}

/// Pops the next available chain. When the ring is empty it re-arms driver
/// notifications (with EVENT_IDX: publishes `avail_event`) and looks once
/// more, so a chain published meanwhile is not missed. A corrupt available
/// ring marks the device as needing reset and yields nothing.
pub fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    signals: &DeviceSignals,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    for _ in 0..2 {
        match queue.iter(mem) {
            Ok(mut it) => {
                if let Some(c) = it.next() {
                    return Some(c);
                }
            }
            Err(e) => {
                tracing::warn!("virtio: bad available ring: {e}");
                signals.set_needs_reset();
                return None;
            }
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!("virtio: cannot re-arm notifications: {e}");
                signals.set_needs_reset();
                return None;
            }
        }
    }
    None
}

/// Puts the last popped chain back (the device could not handle it now).
pub fn undo_pop(queue: &mut Queue) {
    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
}

/// Raises the used-ring interrupt if the driver wants one now.
pub fn notify_if_needed(queue: &mut Queue, mem: &GuestMemoryMmap, signals: &DeviceSignals) {
    match queue.needs_notification(mem) {
        Ok(true) => signals.signal_used_queue(),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!("virtio: cannot read used_event: {e}");
            signals.set_needs_reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::test_util::CountingTrigger;

    #[test]
    fn config_interrupts_only_after_driver_ok() {
        let irq = CountingTrigger::default();
        let s = DeviceSignals::new(Box::new(irq.clone()));
        s.signal_config_change();
        assert_eq!(irq.count(), 0);
        assert_eq!(s.config_generation(), 1);
        s.set_driver_ok(true);
        s.signal_config_change();
        assert_eq!(irq.count(), 1);
        assert_eq!(s.interrupt_status(), INTERRUPT_CONFIG);
        s.signal_used_queue();
        assert_eq!(s.interrupt_status(), INTERRUPT_CONFIG | INTERRUPT_USED_RING);
        s.ack(INTERRUPT_CONFIG);
        assert_eq!(s.interrupt_status(), INTERRUPT_USED_RING);
        s.set_needs_reset();
        s.set_needs_reset();
        assert_eq!(irq.count(), 3);
        s.reset();
        assert!(!s.needs_reset());
        assert_eq!(s.interrupt_status(), 0);
    }

    #[test]
    fn config_bytes_past_end_read_zero() {
        let mut out = [0xffu8; 4];
        read_config_bytes(&[1, 2, 3], 1, &mut out);
        assert_eq!(out, [2, 3, 0, 0]);
        read_config_bytes(&[1, 2, 3], u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }
}
