//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2), modern only.
//!
//! [`MmioTransport`] is the register file a vCPU reads and writes. It runs
//! the status state machine (reset, feature negotiation, DRIVER_OK), holds
//! each queue's layout until activation, and then hands validated
//! `virtio_queue::Queue`s to the device. Bad driver behaviour is refused,
//! never a panic: a feature set that was not offered or lacks VERSION_1 does
//! not get FEATURES_OK; an invalid queue size is ignored; a queue whose rings
//! are misaligned or outside guest memory does not become ready; anything
//! that makes activation impossible sets DEVICE_NEEDS_RESET. After FAILED,
//! only a reset is accepted.
//!
//! Registers are 32 bits wide and must be accessed as such; the device
//! configuration space at 0x100 takes any width.
//!
//! For snapshots the transport copies its registers, its signals and each
//! queue's layout, with the ring positions of a running device, into a
//! [`TransportState`], and is rebuilt from a validated one (see
//! [`super::state`]); a running device is activated again directly on
//! queues at the saved positions.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::device::{
    status, Activation, DeviceSignals, VirtioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use super::state::{QueueState as QueueLayout, RestoreError, TransportState};
use crate::bus::BusDevice;
use crate::GuestMemoryMmap;

/// Size of the MMIO window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Register offsets.
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Ember's vendor id ("EMBR"-ish; any value is allowed).
pub const VENDOR: u32 = 0x454d_4252;

/// A queue's layout as the driver writes it, before activation; the ring
/// positions stay 0 here (the device owns them once it runs).
fn fresh_layout(max_size: u16) -> QueueLayout {
    QueueLayout {
        max_size,
        size: max_size,
        ..QueueLayout::default()
    }
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

/// The virtio-mmio register file of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    signals: Arc<DeviceSignals>,
    mem: GuestMemoryMmap,
    queue_evts: Vec<Arc<EventFd>>,
    activate_evt: Arc<EventFd>,
    device_id: u32,
    offered: u64,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a feature bit beyond the 64 we model.
    driver_features_invalid: bool,
    queue_sel: u32,
    queues: Vec<QueueLayout>,
    shm_sel: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_id", &self.device_id)
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .finish()
    }
}

impl MmioTransport {
    /// A transport for `device`; `queue_evts` has one eventfd per queue and
    /// `activate_evt` wakes the event loop on activation and reset.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        signals: Arc<DeviceSignals>,
        queue_evts: Vec<Arc<EventFd>>,
        activate_evt: Arc<EventFd>,
    ) -> Self {
        let (device_id, offered, max_sizes) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.offered_features(),
                d.queue_max_sizes().to_vec(),
            )
        };
        Self {
            device,
            signals,
            mem,
            queue_evts,
            activate_evt,
            device_id,
            offered,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_invalid: false,
            queue_sel: 0,
            queues: max_sizes.into_iter().map(fresh_layout).collect(),
            shm_sel: 0,
        }
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        let mut s = self.status;
        if self.signals.needs_reset() {
            s |= status::DEVICE_NEEDS_RESET;
        }
        s
    }

    /// The features the driver wrote.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    fn selected_queue(&mut self) -> Option<&mut QueueLayout> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn queue_config_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0
            && self.status & (status::DRIVER_OK | status::FAILED) == 0
    }

    fn read_register(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.device_id,
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => u32::from(q.is_some_and(|q| q.ready)),
            reg::INTERRUPT_STATUS => self.signals.interrupt_status(),
            reg::STATUS => self.status(),
            reg::CONFIG_GENERATION => self.signals.config_generation(),
            // No shared memory regions: length reads as all ones (-1).
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        if self.status & status::FAILED != 0 && offset != reg::STATUS {
            tracing::debug!("virtio-mmio: write to {offset:#x} after FAILED ignored");
            return;
        }
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => self.write_driver_features(v),
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if self.queue_config_allowed() {
                    if let Some(q) = self.selected_queue() {
                        if v != 0 && v <= u32::from(q.max_size) && v.is_power_of_two() {
                            q.size = v as u16;
                        } else {
                            tracing::warn!("virtio-mmio: invalid queue size {v} ignored");
                        }
                    }
                }
            }
            reg::QUEUE_READY => self.write_queue_ready(v),
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                if !self.queue_config_allowed() {
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    return;
                };
                if q.ready {
                    // The driver must not change a live queue's layout.
                    return;
                }
                match offset {
                    reg::QUEUE_DESC_LOW => set_low(&mut q.desc, v),
                    reg::QUEUE_DESC_HIGH => set_high(&mut q.desc, v),
                    reg::QUEUE_DRIVER_LOW => set_low(&mut q.driver, v),
                    reg::QUEUE_DRIVER_HIGH => set_high(&mut q.driver, v),
                    reg::QUEUE_DEVICE_LOW => set_low(&mut q.device, v),
                    _ => set_high(&mut q.device, v),
                }
            }
            reg::QUEUE_NOTIFY => {
                // Normally a KVM ioeventfd catches this write before it gets
                // here; without one, forward it to the same eventfd.
                if let Some(evt) = self.queue_evts.get((v & 0xffff) as usize) {
                    if let Err(e) = evt.write(1) {
                        tracing::warn!("virtio-mmio: cannot signal queue notify: {e}");
                    }
                }
            }
            reg::INTERRUPT_ACK => self.signals.ack(v),
            reg::STATUS => self.write_status(v),
            reg::SHM_SEL => self.shm_sel = v,
            _ => tracing::debug!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        let s = self.status;
        if s & status::DRIVER == 0 || s & (status::FEATURES_OK | status::DRIVER_OK) != 0 {
            tracing::warn!("virtio-mmio: feature write in status {s:#x} ignored");
            return;
        }
        match self.driver_features_sel {
            0 => set_low(&mut self.driver_features, v),
            1 => set_high(&mut self.driver_features, v),
            _ => {
                if v != 0 {
                    self.driver_features_invalid = true;
                }
            }
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        if !self.queue_config_allowed() {
            return;
        }
        let mem = self.mem.clone();
        let event_idx = self.driver_features & (1 << VIRTIO_F_RING_EVENT_IDX) != 0;
        let Some(q) = self.selected_queue() else {
            return;
        };
        if v == 0 {
            q.ready = false;
            return;
        }
        let mut candidate = *q;
        candidate.ready = true;
        match candidate.to_queue(event_idx) {
            Some(queue) if queue.is_valid(&mem) => q.ready = true,
            _ => tracing::warn!(
                "virtio-mmio: queue with size {} at {:#x}/{:#x}/{:#x} refused",
                candidate.size,
                candidate.desc,
                candidate.driver,
                candidate.device
            ),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if self.status & status::FAILED != 0 {
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device; the driver echoes it.
        let v = v & !status::DEVICE_NEEDS_RESET;
        if v & self.status != self.status {
            tracing::warn!(
                "virtio-mmio: driver cleared status bits ({:#x} -> {v:#x}); ignored",
                self.status
            );
            return;
        }
        let new = v & !self.status;
        if new & status::FAILED != 0 {
            self.status |= status::FAILED;
            tracing::info!("virtio-mmio: driver set FAILED");
            return;
        }
        if new & status::ACKNOWLEDGE != 0 {
            self.status |= status::ACKNOWLEDGE;
        }
        if new & status::DRIVER != 0 && self.status & status::ACKNOWLEDGE != 0 {
            self.status |= status::DRIVER;
        }
        if new & status::FEATURES_OK != 0 && self.status & status::DRIVER != 0 {
            if self.features_acceptable() {
                self.status |= status::FEATURES_OK;
            } else {
                tracing::warn!(
                    "virtio-mmio: driver features {:#x} refused (offered {:#x})",
                    self.driver_features,
                    self.offered
                );
            }
        }
        if new & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 {
            self.status |= status::DRIVER_OK;
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        !self.driver_features_invalid
            && self.driver_features & !self.offered == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & (1 << VIRTIO_F_RING_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, layout) in self.queues.iter().enumerate() {
            let q = if layout.ready {
                layout.to_queue(event_idx)
            } else {
                Queue::new(layout.max_size).ok()
            };
            match q {
                Some(q) => queues.push(q),
                None => {
                    tracing::warn!("virtio-mmio: queue {i} cannot be built");
                    self.signals.set_needs_reset();
                    return;
                }
            }
        }
        self.signals.set_driver_ok(true);
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            features: self.driver_features,
            signals: self.signals.clone(),
        };
        let result = lock(&self.device).activate(activation);
        match result {
            Ok(()) => self.wake_event_loop(),
            Err(e) => {
                tracing::warn!(
                    "virtio-mmio: device {} activation failed: {e}",
                    self.device_id
                );
                self.signals.set_needs_reset();
            }
        }
    }

    fn wake_event_loop(&self) {
        if let Err(e) = self.activate_evt.write(1) {
            tracing::error!("virtio-mmio: cannot wake the event loop: {e}");
        }
    }

    /// Resets the device to its power-on state (the driver wrote 0).
    pub fn reset(&mut self) {
        let was_active = {
            let mut d = lock(&self.device);
            let active = d.is_active();
            d.reset();
            active
        };
        self.signals.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_invalid = false;
        self.queue_sel = 0;
        self.shm_sel = 0;
        for q in &mut self.queues {
            *q = fresh_layout(q.max_size);
        }
        if was_active {
            self.wake_event_loop();
        }
    }

    /// Settles the device's work in progress and copies the transport's
    /// state out, with the live ring positions of an active device.
    pub(crate) fn save_state(&self) -> TransportState {
        let positions = {
            let mut d = lock(&self.device);
            d.prepare_save();
            if d.is_active() {
                d.queue_positions()
            } else {
                Vec::new()
            }
        };
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, layout)| {
                let (next_avail, next_used) = positions.get(i).copied().unwrap_or((0, 0));
                QueueLayout {
                    next_avail,
                    next_used,
                    ..*layout
                }
            })
            .collect();
        TransportState {
            device_type: self.device_id,
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            driver_features_invalid: self.driver_features_invalid,
            queue_sel: self.queue_sel,
            shm_sel: self.shm_sel,
            queues,
            isr: self.signals.interrupt_status(),
            config_generation: self.signals.config_generation(),
            needs_reset: self.signals.needs_reset(),
            driver_ok: self.signals.driver_ok(),
        }
    }

    /// A transport in the saved `state`, which [`TransportState::validate`]
    /// accepted for `device`. When the state was running, the device is
    /// activated on queues at the saved ring positions, told it was
    /// restored, and the event loop is woken to start it.
    pub(crate) fn from_state(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        signals: Arc<DeviceSignals>,
        queue_evts: Vec<Arc<EventFd>>,
        activate_evt: Arc<EventFd>,
        state: &TransportState,
    ) -> Result<Self, RestoreError> {
        let mut t = Self::new(device, mem, signals, queue_evts, activate_evt);
        t.status = state.status;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.driver_features = state.driver_features;
        t.driver_features_invalid = state.driver_features_invalid;
        t.queue_sel = state.queue_sel;
        t.shm_sel = state.shm_sel;
        for (layout, q) in t.queues.iter_mut().zip(&state.queues) {
            *layout = QueueLayout {
                next_avail: 0,
                next_used: 0,
                ..*q
            };
        }
        if state.activates() {
            t.restore_activation(state)?;
        }
        Ok(t)
    }

    fn restore_activation(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        let event_idx = state.event_idx();
        let mut queues = Vec::with_capacity(state.queues.len());
        for (i, q) in state.queues.iter().enumerate() {
            let queue = if q.ready {
                q.to_queue(event_idx)
            } else {
                Queue::new(q.max_size).ok()
            };
            queues.push(queue.ok_or(RestoreError::QueueLayout { queue: i })?);
        }
        self.signals.set_driver_ok(true);
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            features: self.driver_features,
            signals: self.signals.clone(),
        };
        {
            let mut d = lock(&self.device);
            d.activate(activation)?;
            d.restored();
        }
        self.wake_event_loop();
        Ok(())
    }

    /// The activation eventfd's raw fd (for tests).
    pub fn activate_fd(&self) -> i32 {
        self.activate_evt.as_raw_fd()
    }
}

fn lock(d: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & status::FAILED == 0 {
                lock(&self.device).write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
