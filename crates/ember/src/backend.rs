//! The VMM behind the API: `ember_api::VmmBackend` on top of `ember-vmm`.
//!
//! `start` builds the VM and leaves it in a [`VmSlot`]; the event loop in
//! `run` picks it up and registers it, because a subscriber cannot add
//! subscribers to the loop that is running it.

use std::sync::{Arc, Mutex, MutexGuard};

use ember_api::controller::{BackendError, PrebootChange, VmmBackend};
use ember_api::models::{PartialDrive, PartialNetworkInterface};
use ember_api::resources::VmResources;
use ember_vmm::builder;
use ember_vmm::host::HostVirt;
use ember_vmm::vmm::SharedVmm;
use kvm_ioctls::Kvm;

use crate::resources;

/// The VM once started, shared with the event loop.
#[derive(Default)]
pub struct VmSlot {
    /// The running VM.
    pub vmm: Option<SharedVmm>,
    /// Whether the event loop registered it yet.
    pub registered: bool,
}

/// The slot as shared between the backend and the loop.
pub type SharedSlot = Arc<Mutex<VmSlot>>;

/// Locks the slot, surviving a poisoned lock.
pub fn lock(slot: &SharedSlot) -> MutexGuard<'_, VmSlot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// `VmmBackend` for the real VMM.
pub struct EmberBackend {
    kvm: Kvm,
    host: HostVirt,
    boot_timer: bool,
    slot: SharedSlot,
}

impl EmberBackend {
    pub fn new(kvm: Kvm, host: HostVirt, boot_timer: bool, slot: SharedSlot) -> Self {
        Self {
            kvm,
            host,
            boot_timer,
            slot,
        }
    }

    fn with_vmm<T>(
        &self,
        f: impl FnOnce(&mut ember_vmm::vmm::Vmm) -> Result<T, String>,
    ) -> Result<T, BackendError> {
        let vmm = lock(&self.slot)
            .vmm
            .clone()
            .ok_or_else(|| BackendError::new("the microVM is not running"))?;
        let mut v = vmm.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut v).map_err(BackendError::new)
    }
}

fn not_yet(what: &str) -> BackendError {
    BackendError::new(format!("{what} are not supported by Ember yet"))
}

impl VmmBackend for EmberBackend {
    fn start(&mut self, r: &VmResources) -> Result<(), BackendError> {
        let config = resources::vm_config(r, self.boot_timer).map_err(BackendError::new)?;
        let vmm = builder::build(&self.kvm, self.host, &config)
            .map_err(|e| BackendError::new(e.to_string()))?;
        let mut slot = lock(&self.slot);
        slot.vmm = Some(builder::shared(vmm));
        slot.registered = false;
        Ok(())
    }

    fn pause(&mut self) -> Result<(), BackendError> {
        self.with_vmm(|v| v.pause().map_err(|e| e.to_string()))
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        self.with_vmm(|v| v.resume().map_err(|e| e.to_string()))
    }

    fn send_ctrl_alt_del(&mut self) -> Result<(), BackendError> {
        self.with_vmm(|v| v.send_ctrl_alt_del().map_err(|e| e.to_string()))
    }

    fn update_drive(&mut self, _update: &PartialDrive) -> Result<(), BackendError> {
        Err(not_yet("block devices"))
    }

    fn update_network_interface(
        &mut self,
        _update: &PartialNetworkInterface,
    ) -> Result<(), BackendError> {
        Err(not_yet("network interfaces"))
    }

    fn check_preboot(&mut self, change: PrebootChange<'_>) -> Result<(), BackendError> {
        match change {
            PrebootChange::Drive(_) => Err(not_yet("block devices")),
            PrebootChange::NetworkInterface(_) => Err(not_yet("network interfaces")),
            PrebootChange::Vsock(_) => Err(not_yet("vsock devices")),
            PrebootChange::Entropy(_) => Err(not_yet("entropy devices")),
            PrebootChange::Serial(s) if s.rate_limiter.is_some() => {
                Err(not_yet("serial rate limiters"))
            }
            _ => Ok(()),
        }
    }
}
