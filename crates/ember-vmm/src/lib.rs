//! Ember's VMM core.
//!
//! Data flows one way: a [`config::VmConfig`] goes to the [`builder`], which
//! creates guest [`memory`], loads the kernel ([`loader`]), creates the KVM
//! [`vm`], places the devices ([`device_manager`]), describes the machine
//! ([`arch`]), and starts the [`vcpu`] threads. The result is a running
//! [`vmm::Vmm`], an event-loop subscriber, driven until the guest exits.

pub mod arch;
pub mod builder;
pub mod config;
pub mod console_input;
pub mod device_manager;
pub mod host;
pub mod loader;
pub mod memfile;
pub mod memory;
pub mod snapshot;
pub mod vcpu;
pub mod virtio_devices;
pub mod vm;
pub mod vmm;

/// The guest memory type used throughout.
pub type GuestMemoryMmap = ember_devices::GuestMemoryMmap;
