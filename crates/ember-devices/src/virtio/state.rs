//! Snapshot state of a virtio-mmio device, and its validation.
//!
//! [`TransportState`] is everything the guest can see of a virtio device
//! apart from its configuration space: the transport registers, the
//! interrupt and configuration-generation signals, and each queue's layout
//! and ring positions ([`QueueState`]). It is taken with
//! [`super::VirtioMmioDevice::save`] and applied with
//! [`super::VirtioMmioDevice::restore`] to a device freshly built from its
//! configuration; a device that was running is activated again directly,
//! with no handshake, and the guest carries on with the same rings.
//!
//! What is not in it, and why:
//! - The devices' own state is derived from their configuration and the
//!   negotiated features: the block configuration space (capacity) from the
//!   disk, the drive id, the net MAC and TAP offloads, the vsock CID. The
//!   VMM rebuilds each device from its configuration before restoring.
//! - Work in progress is settled before the state is taken
//!   ([`super::VirtioDevice::prepare_save`]): block waits for its io_uring
//!   requests and completes them to the guest; net gives back the receive
//!   buffers it held (the queue's `next_avail` moves back over them, so the
//!   restored device takes them again).
//! - Host connections do not survive: a restored vsock device sends the
//!   guest VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, as Firecracker does.
//! - Rate limiters are not saved: a restored limiter starts with full
//!   buckets.
//!
//! A state is untrusted input. Every field is checked against the device
//! it is applied to and against guest memory before the device is touched,
//! and a state that no running transport could have produced is refused
//! with a [`RestoreError`].

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::device::{
    status, ActivateError, INTERRUPT_CONFIG, INTERRUPT_USED_RING, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
};
use crate::GuestMemoryMmap;

/// Every status bit the transport keeps (DEVICE_NEEDS_RESET is a signal).
const KNOWN_STATUS: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK | status::FAILED;

/// One queue: its layout as the driver wrote it and, once the device runs,
/// where the device is in the rings.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    /// QueueNumMax: the device's maximum size.
    pub max_size: u16,
    /// QueueNum: the size the driver chose (a power of two, at most max).
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (available) ring address.
    pub driver: u64,
    /// Device (used) ring address.
    pub device: u64,
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
}

impl QueueState {
    /// The `virtio_queue::Queue` this state describes, or `None` if sizes or
    /// alignments are invalid.
    pub(crate) fn to_queue(self, event_idx: bool) -> Option<Queue> {
        Queue::try_from(virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc,
            avail_ring: self.driver,
            used_ring: self.device,
        })
        .ok()
    }
}

/// All the guest-visible state of a virtio-mmio transport and its signals.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TransportState {
    /// The virtio device type id; must match the device restored onto.
    pub device_type: u32,
    /// The Status register, without DEVICE_NEEDS_RESET (see `needs_reset`).
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// The driver wrote a feature bit beyond 63.
    pub driver_features_invalid: bool,
    /// QueueSel.
    pub queue_sel: u32,
    /// SHMSel.
    pub shm_sel: u32,
    /// One per device queue, in order.
    pub queues: Vec<QueueState>,
    /// InterruptStatus.
    pub isr: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// DEVICE_NEEDS_RESET is set.
    pub needs_reset: bool,
    /// The device was activated (configuration interrupts are delivered).
    pub driver_ok: bool,
}

impl TransportState {
    /// True when restoring this state activates the device: the driver had
    /// set DRIVER_OK and neither gave up (FAILED) nor was told to reset.
    pub fn activates(&self) -> bool {
        self.status & status::DRIVER_OK != 0
            && self.status & status::FAILED == 0
            && !self.needs_reset
    }

    /// True when the driver accepted VIRTIO_F_RING_EVENT_IDX.
    pub(crate) fn event_idx(&self) -> bool {
        self.driver_features & (1 << VIRTIO_F_RING_EVENT_IDX) != 0
    }

    /// Checks the state against the device it is for (`device_type`, queue
    /// `max_sizes`, `offered` features) and guest memory.
    pub(crate) fn validate(
        &self,
        device_type: u32,
        max_sizes: &[u16],
        offered: u64,
        mem: &GuestMemoryMmap,
    ) -> Result<(), RestoreError> {
        if self.device_type != device_type {
            return Err(RestoreError::DeviceType {
                device: device_type,
                state: self.device_type,
            });
        }
        if self.queues.len() != max_sizes.len() {
            return Err(RestoreError::QueueCount {
                device: max_sizes.len(),
                state: self.queues.len(),
            });
        }
        self.validate_status(offered)?;
        if self.isr & !(INTERRUPT_USED_RING | INTERRUPT_CONFIG) != 0 {
            return Err(RestoreError::InterruptStatus(self.isr));
        }
        let features_ok = self.status & status::FEATURES_OK != 0;
        for (i, (q, &max)) in self.queues.iter().zip(max_sizes).enumerate() {
            if q.max_size != max {
                return Err(RestoreError::QueueMaxSize {
                    queue: i,
                    device: max,
                    state: q.max_size,
                });
            }
            if q.size == 0 || q.size > max || !q.size.is_power_of_two() {
                return Err(RestoreError::QueueSize {
                    queue: i,
                    size: q.size,
                    max,
                });
            }
            if !q.ready {
                continue;
            }
            if !features_ok {
                return Err(RestoreError::QueueReadyTooEarly { queue: i });
            }
            match q.to_queue(self.event_idx()) {
                Some(queue) if queue.is_valid(mem) => {}
                _ => return Err(RestoreError::QueueLayout { queue: i }),
            }
        }
        Ok(())
    }

    fn validate_status(&self, offered: u64) -> Result<(), RestoreError> {
        let s = self.status;
        if s & !KNOWN_STATUS != 0 {
            return Err(RestoreError::StatusBits(s));
        }
        // Each step of the initialisation needs the one before it.
        for (bit, needs) in [
            (status::DRIVER, status::ACKNOWLEDGE),
            (status::FEATURES_OK, status::DRIVER),
            (status::DRIVER_OK, status::FEATURES_OK),
        ] {
            if s & bit != 0 && s & needs == 0 {
                return Err(RestoreError::StatusOrder(s));
            }
        }
        // Feature writes are only taken between DRIVER and FEATURES_OK.
        if s & status::DRIVER == 0 && (self.driver_features != 0 || self.driver_features_invalid) {
            return Err(RestoreError::FeaturesWithoutDriver(self.driver_features));
        }
        if s & status::FEATURES_OK != 0 {
            if self.driver_features & !offered != 0 {
                return Err(RestoreError::UnofferedFeatures {
                    features: self.driver_features,
                    offered,
                });
            }
            if self.driver_features_invalid || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0
            {
                return Err(RestoreError::FeaturesNotAccepted(self.driver_features));
            }
        }
        if (self.driver_ok || self.needs_reset) && s & status::DRIVER_OK == 0 {
            return Err(RestoreError::SignalsWithoutDriverOk(s));
        }
        Ok(())
    }
}

/// Why a [`TransportState`] could not be restored. Nothing was changed on
/// the device when validation fails.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The state is for another kind of device.
    #[error("the state is for virtio device type {state}, the device is type {device}")]
    DeviceType {
        /// The device's type.
        device: u32,
        /// The state's type.
        state: u32,
    },
    /// The state has a different number of queues than the device.
    #[error("the state has {state} queues, the device has {device}")]
    QueueCount {
        /// The device's queue count.
        device: usize,
        /// The state's queue count.
        state: usize,
    },
    /// A queue's maximum size differs from the device's.
    #[error("queue {queue}: the state's maximum size is {state}, the device's is {device}")]
    QueueMaxSize {
        /// The queue.
        queue: usize,
        /// The device's maximum.
        device: u16,
        /// The state's maximum.
        state: u16,
    },
    /// A queue size that is zero, too large, or not a power of two.
    #[error("queue {queue}: size {size} is not a power of two between 1 and {max}")]
    QueueSize {
        /// The queue.
        queue: usize,
        /// The state's size.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A ready queue's rings are misaligned or not inside guest memory.
    #[error("queue {queue}: its rings are misaligned or outside guest memory")]
    QueueLayout {
        /// The queue.
        queue: usize,
    },
    /// A queue is ready although features were never accepted.
    #[error("queue {queue} is ready before FEATURES_OK")]
    QueueReadyTooEarly {
        /// The queue.
        queue: usize,
    },
    /// The status has bits the transport never sets.
    #[error("status {0:#x} has unknown bits")]
    StatusBits(u32),
    /// A status bit is set without the step before it.
    #[error("status {0:#x} skips a step (DRIVER needs ACKNOWLEDGE, FEATURES_OK needs DRIVER, DRIVER_OK needs FEATURES_OK)")]
    StatusOrder(u32),
    /// Driver features recorded before the driver set DRIVER.
    #[error("driver features {0:#x} recorded before the driver set DRIVER")]
    FeaturesWithoutDriver(u64),
    /// FEATURES_OK with features the device did not offer.
    #[error("FEATURES_OK with driver features {features:#x} the device did not offer (offered {offered:#x})")]
    UnofferedFeatures {
        /// The state's driver features.
        features: u64,
        /// What the device offers.
        offered: u64,
    },
    /// FEATURES_OK with features the transport refuses (no VERSION_1, or a
    /// bit beyond 63).
    #[error("FEATURES_OK with driver features {0:#x} the transport refuses")]
    FeaturesNotAccepted(u64),
    /// Driver-OK or needs-reset signalled without DRIVER_OK in the status.
    #[error("status {0:#x} lacks DRIVER_OK but the signals say the device was activated")]
    SignalsWithoutDriverOk(u32),
    /// Interrupt status bits that do not exist.
    #[error("interrupt status {0:#x} has unknown bits")]
    InterruptStatus(u32),
    /// The device given to restore onto is already running.
    #[error("the device is already active; restore needs a freshly built device")]
    DeviceActive,
    /// The device refused the restored activation.
    #[error("the device refused activation: {0}")]
    Activate(#[from] ActivateError),
    /// The queue or activation eventfds cannot be created.
    #[error("cannot create the device's eventfds: {0}")]
    EventFd(#[from] std::io::Error),
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
