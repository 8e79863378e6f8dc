//! The VMM behind the API: `ember_api::VmmBackend` on top of `ember-vmm`.
//!
//! `start` builds the VM and leaves it in a [`VmSlot`]; the event loop in
//! `run` picks it up and registers it, because a subscriber cannot add
//! subscribers to the loop that is running it. The run state the API
//! reports is read from the slot: no VM means "Not started".
//!
//! A snapshot load restores the VM paused (the controller resumes it when
//! asked) and answers with the restored VM's resources.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use ember_api::controller::{BackendError, PrebootChange, VmmBackend};
use ember_api::models::{
    PartialDrive, PartialNetworkInterface, SnapshotCreateParams, SnapshotLoadParams, VmState,
};
use ember_api::resources::VmResources;
use ember_vmm::builder;
use ember_vmm::config::ConsoleOutput;
use ember_vmm::host::HostVirt;
use ember_vmm::snapshot::{self, RestoreOptions, SnapshotError};
use ember_vmm::vm::{VmError, VmShell};
use ember_vmm::vmm::{RunState, SharedVmm, VmmError};
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
    /// Where a restored guest's console goes (`--console-out`), stdout
    /// by default.
    restore_console: Option<PathBuf>,
    /// A KVM VM being created ahead of need (see `ember_vmm::vm::VmShell`).
    prewarm: Option<JoinHandle<Result<VmShell, VmError>>>,
}

impl EmberBackend {
    pub fn new(
        kvm: Kvm,
        host: HostVirt,
        boot_timer: bool,
        slot: SharedSlot,
        restore_console: Option<PathBuf>,
    ) -> Self {
        Self {
            kvm,
            host,
            boot_timer,
            slot,
            restore_console,
            prewarm: Some(VmShell::spawn()),
        }
    }

    fn with_vmm<T>(
        &self,
        f: impl FnOnce(&mut ember_vmm::vmm::Vmm) -> Result<T, VmmError>,
    ) -> Result<T, BackendError> {
        let vmm = lock(&self.slot)
            .vmm
            .clone()
            .ok_or(BackendError::NotRunning)?;
        let mut v = vmm.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut v).map_err(|e| match e {
            VmmError::NotRunning => BackendError::NotRunning,
            other => BackendError::failed(other),
        })
    }
}

/// The VM created ahead, once it is ready; `None` makes the builder create
/// one itself (and report any error).
fn join(prewarm: Option<JoinHandle<Result<VmShell, VmError>>>) -> Option<VmShell> {
    match prewarm?.join() {
        Ok(Ok(shell)) => Some(shell),
        Ok(Err(e)) => {
            tracing::debug!("creating a VM ahead failed: {e}");
            None
        }
        Err(_) => None,
    }
}

impl VmmBackend for EmberBackend {
    fn run_state(&self) -> VmState {
        let Some(vmm) = lock(&self.slot).vmm.clone() else {
            return VmState::NotStarted;
        };
        let state = vmm.lock().unwrap_or_else(|e| e.into_inner()).state();
        match state {
            RunState::Running => VmState::Running,
            RunState::Paused => VmState::Paused,
        }
    }

    fn start(&mut self, r: &VmResources) -> Result<(), BackendError> {
        let config =
            resources::vm_config(r, self.boot_timer).map_err(BackendError::InvalidConfig)?;
        let prewarm = self.prewarm.take();
        let vmm = builder::build_in(&self.kvm, self.host, &config, || join(prewarm))
            .map_err(BackendError::failed)?;
        let mut slot = lock(&self.slot);
        slot.vmm = Some(builder::shared(vmm));
        slot.registered = false;
        Ok(())
    }

    fn pause(&mut self) -> Result<(), BackendError> {
        self.with_vmm(|v| v.pause())
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        self.with_vmm(|v| v.resume())
    }

    fn send_ctrl_alt_del(&mut self) -> Result<(), BackendError> {
        self.with_vmm(|v| v.send_ctrl_alt_del())
    }

    fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<(), BackendError> {
        let vmm = lock(&self.slot)
            .vmm
            .clone()
            .ok_or(BackendError::NotRunning)?;
        let mut v = vmm.lock().unwrap_or_else(|e| e.into_inner());
        v.snapshot(
            std::path::Path::new(&params.snapshot_path),
            std::path::Path::new(&params.mem_file_path),
        )
        .map(|_| ())
        .map_err(|e| match e {
            SnapshotError::NotRunning => BackendError::NotRunning,
            other => BackendError::failed(other),
        })
    }

    fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> Result<VmResources, BackendError> {
        let console = match &self.restore_console {
            Some(p) => ConsoleOutput::File(p.clone()),
            None => ConsoleOutput::Stdout,
        };
        let opts = RestoreOptions {
            resume: false,
            clock_realtime: params.clock_realtime.unwrap_or(false),
            net_overrides: params
                .network_overrides()
                .iter()
                .map(|o| (o.iface_id.clone(), o.host_dev_name.clone()))
                .collect(),
            vsock_override: params
                .vsock_override
                .as_ref()
                .map(|v| PathBuf::from(&v.uds_path)),
            console_input: console == ConsoleOutput::Stdout,
            console,
            boot_timer: self.boot_timer,
            ..RestoreOptions::new(&params.snapshot_path, params.mem_path())
        };
        let prewarm = self.prewarm.take();
        let vmm = snapshot::restore_in(&self.kvm, self.host, &opts, || join(prewarm))
            .map_err(BackendError::failed)?;
        let restored = resources::restored(&vmm);
        let mut slot = lock(&self.slot);
        slot.vmm = Some(builder::shared(vmm));
        slot.registered = false;
        Ok(restored)
    }

    fn update_drive(&mut self, update: &PartialDrive) -> Result<(), BackendError> {
        let path = update.path_on_host.as_ref().map(std::path::PathBuf::from);
        let limiter = update.rate_limiter.as_ref().map(resources::limiter);
        self.with_vmm(|v| v.update_drive(&update.drive_id, path.as_deref(), limiter.as_ref()))
    }

    fn update_network_interface(
        &mut self,
        update: &PartialNetworkInterface,
    ) -> Result<(), BackendError> {
        let rx = update.rx_rate_limiter.as_ref().map(resources::limiter);
        let tx = update.tx_rate_limiter.as_ref().map(resources::limiter);
        self.with_vmm(|v| v.update_net(&update.iface_id, rx.as_ref(), tx.as_ref()))
    }

    fn check_preboot(&mut self, change: PrebootChange<'_>) -> Result<(), BackendError> {
        match change {
            PrebootChange::Drive(d) if d.socket.is_some() => Err(BackendError::Unsupported(
                "a vhost-user drive (the socket field)",
            )),
            PrebootChange::NetworkInterface(n) if n.mtu.is_some() => Err(
                BackendError::Unsupported("a network interface MTU (the mtu field)"),
            ),
            PrebootChange::Serial(s) if s.rate_limiter.is_some() => {
                Err(BackendError::Unsupported("a serial console rate limiter"))
            }
            _ => Ok(()),
        }
    }
}
