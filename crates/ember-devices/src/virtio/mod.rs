//! Virtio 1.x devices on the virtio-mmio transport.
//!
//! - [`mmio`]: the transport's register file ([`mmio::MmioTransport`]).
//! - [`device`]: the [`VirtioDevice`] trait and shared interrupt state.
//! - [`facade`]: [`VirtioMmioDevice`], what the VMM wires (bus device,
//!   queue eventfds, event-loop subscriber).
//! - [`state`]: the snapshot state of a device on its transport
//!   ([`TransportState`]) and its validation.
//! - [`sg`]: descriptor chains checked and turned into guest-memory
//!   scatter-gather lists.
//! - [`block`], [`net`], [`vsock`], [`rng`]: the devices.
//! - `testing` (feature `test-utils`): an in-process fake driver.

pub mod block;
pub mod device;
pub mod facade;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod sg;
pub mod state;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod vsock;

pub use device::{
    device_type, status, ActivateError, Activation, BackendFd, DeviceSignals, IrqLine,
    VirtioDevice, COMMON_FEATURES, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
};
pub use facade::{VirtioMmioDevice, VirtioRestoreArgs};
pub use mmio::{MmioTransport, MMIO_WINDOW_SIZE};
pub use state::{QueueState, RestoreError, TransportState};
