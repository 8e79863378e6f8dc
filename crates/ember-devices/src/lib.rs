//! Ember's emulated devices.
//!
//! Every device here is a plain state machine: it owns no thread and no file
//! descriptor of its own choosing. It is generic over how it raises an
//! interrupt ([`Trigger`]), how it reports events to the VMM, and where its
//! output goes. The VMM (`ember-vmm`) places devices on a [`bus::Bus`] and
//! wires their triggers to KVM irqfds and eventfds. Tests drive them
//! in-process with fake triggers.

pub mod bus;
pub mod legacy;
pub mod rate_limiter;
pub mod trigger;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use trigger::{EventFdTrigger, Trigger};
pub use virtio::VirtioMmioDevice;

/// The guest memory type every device works on.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
