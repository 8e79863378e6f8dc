//! Ember's VMM core.
//!
//! Data flows one way: a [`config::VmConfig`] goes to the [`builder`], which
//! creates guest [`memory`], loads the kernel ([`loader`]), creates the KVM
//! [`vm`], places the devices ([`device_manager`]), describes the machine
//! ([`arch`]), and starts the [`vcpu`] threads. The result is a running
//! [`vmm::Vmm`] driven by an event loop until the guest exits.

pub mod arch;
pub mod loader;
pub mod memory;

/// The guest memory type used throughout.
pub type GuestMemoryMmap = ember_devices::GuestMemoryMmap;
