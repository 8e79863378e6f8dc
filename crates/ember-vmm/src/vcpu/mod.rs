//! vCPUs: creation and boot-time setup, the per-thread run loop that
//! dispatches port-I/O and MMIO exits to the buses, and the control
//! channel the VMM thread uses to pause, resume, stop, save and restore
//! each thread. A vCPU's state is read and written only by its own thread,
//! which owns the `VcpuFd`: the commands carry the state.

mod control;
pub mod exit;
mod kick;
pub mod state;

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;

use ember_devices::Bus;
use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

pub use control::{VcpuControlError, Vcpus};
pub use exit::{FaultKind, VcpuFault, VcpuStop};
pub use state::{VcpuState, VcpuStateError};

use crate::arch::regs::{self, EntryMode, RegsError};
use crate::host::HostVirt;

/// Commands from the VMM thread to a vCPU thread.
#[derive(Debug)]
pub enum VcpuCommand {
    Pause,
    Resume,
    Stop,
    /// Read the vCPU's state (only while paused).
    Save,
    /// Write a saved state into the vCPU (only while paused).
    Restore(Box<VcpuState>),
}

/// A vCPU thread's answers.
#[derive(Debug)]
pub enum VcpuResponse {
    Paused,
    Resumed,
    Stopped,
    Saved(Result<Box<VcpuState>, VcpuStateError>),
    Restored(Result<(), VcpuStateError>),
    /// Save or restore was asked of a running vCPU.
    NotPaused,
}

impl VcpuResponse {
    /// The response's name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            VcpuResponse::Paused => "Paused",
            VcpuResponse::Resumed => "Resumed",
            VcpuResponse::Stopped => "Stopped",
            VcpuResponse::Saved(_) => "Saved",
            VcpuResponse::Restored(_) => "Restored",
            VcpuResponse::NotPaused => "NotPaused",
        }
    }
}

/// A vCPU that stopped the guest, reported to the VMM thread.
#[derive(Debug, Clone)]
pub struct VcpuReport {
    pub vcpu: u8,
    pub stop: VcpuStop,
}

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {id}: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("cannot set the CPUID of vCPU {id}: {source}")]
    Cpuid { id: u8, source: kvm_ioctls::Error },
    #[error("cannot set up vCPU {id}: {source}")]
    Regs { id: u8, source: RegsError },
    #[error("cannot start the thread of vCPU {id}: {source}")]
    Spawn { id: u8, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// Where a vCPU reports that it stopped the guest.
#[derive(Clone)]
pub struct VcpuReporter {
    tx: Sender<VcpuReport>,
    evt: Arc<EventFd>,
}

impl VcpuReporter {
    /// A reporter and the receiving end; `evt` wakes the VMM's event loop.
    pub fn new(evt: Arc<EventFd>) -> (Self, Receiver<VcpuReport>) {
        let (tx, rx) = mpsc::channel();
        (Self { tx, evt }, rx)
    }

    fn report(&self, vcpu: u8, stop: VcpuStop) {
        let _ = self.tx.send(VcpuReport { vcpu, stop });
        let _ = self.evt.write(1);
    }
}

/// A configured vCPU, not yet running.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    host: HostVirt,
    /// The MSRs KVM can save (KVM_GET_MSR_INDEX_LIST).
    msr_indices: Arc<[u32]>,
    /// The CPUID set on the vCPU (for snapshots).
    cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
}

/// Where a vCPU thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Running the guest.
    Running,
    /// Paused by the VMM.
    Parked,
    /// The guest stopped it (reset, power-off, fault): waiting for Stop.
    Halted,
}

impl Vcpu {
    /// Creates vCPU `id`, with nothing set up yet: see
    /// [`Vcpu::configure_for_boot`], or restore a saved state.
    pub fn create(
        vm: &VmFd,
        id: u8,
        buses: (Arc<Bus>, Arc<Bus>),
        host: HostVirt,
        msr_indices: Arc<[u32]>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Self {
            id,
            fd,
            io_bus: buses.0,
            mmio_bus: buses.1,
            host,
            msr_indices,
            cpuid: Vec::new(),
        })
    }

    /// Sets up a vCPU for a fresh boot: its CPUID, the boot MSRs, the FPU
    /// and the LAPIC's local interrupt pins.
    pub fn configure_for_boot(&mut self, cpuid: &CpuId) -> Result<(), VcpuError> {
        let id = self.id;
        self.fd
            .set_cpuid2(cpuid)
            .map_err(|source| VcpuError::Cpuid { id, source })?;
        self.cpuid = cpuid.as_slice().to_vec();
        let wrap = |source| VcpuError::Regs { id, source };
        regs::setup_msrs(&self.fd, &self.msr_indices).map_err(wrap)?;
        regs::setup_fpu(&self.fd).map_err(wrap)?;
        regs::setup_lapic(&self.fd).map_err(wrap)?;
        Ok(())
    }

    /// Makes this the boot vCPU, entering the guest at `entry`. The others
    /// wait for the guest's INIT/SIPI in the in-kernel LAPIC.
    pub fn set_boot_entry(&self, entry: u64, mode: EntryMode) -> Result<(), VcpuError> {
        regs::setup_boot_vcpu(&self.fd, entry, mode).map_err(|source| VcpuError::Regs {
            id: self.id,
            source,
        })
    }

    /// The guest TSC frequency KVM gives this vCPU, if it can tell.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok()
    }

    /// Sets the guest TSC frequency (needs KVM_CAP_TSC_CONTROL).
    pub fn set_tsc_khz(&self, khz: u32) -> Result<(), kvm_ioctls::Error> {
        self.fd.set_tsc_khz(khz)
    }

    /// This vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    fn fault(&self, kind: FaultKind) -> VcpuStop {
        VcpuStop::Fault(VcpuFault {
            vcpu: self.id,
            kind,
            registers: exit::register_summary(&self.fd),
        })
    }

    /// Tells a kvmclock guest it was stopped on purpose, so its watchdogs do
    /// not report a soft lockup after a long pause. EINVAL: the guest does
    /// not use kvmclock.
    fn tell_guest_clock_it_was_paused(&self) {
        if let Err(e) = self.fd.kvmclock_ctrl() {
            if e.errno() != libc::EINVAL {
                tracing::warn!("vCPU {}: KVM_KVMCLOCK_CTRL failed: {e}", self.id);
            }
        }
    }

    fn internal_error_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so the kernel
        // filled the `internal` member of the exit union.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    /// Runs the guest until its next exit and handles it; returns why the
    /// vCPU must stop, if it must.
    fn run_once(&mut self) -> Option<VcpuStop> {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return None;
            }
            Err(e) => return Some(self.fault(FaultKind::RunFailed(e.to_string()))),
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                if !self.io_bus.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            VcpuExit::IoOut(port, data) => {
                self.io_bus.write(u64::from(port), data);
            }
            VcpuExit::MmioRead(addr, data) => {
                if !self.mmio_bus.read(addr, data) {
                    data.fill(0);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                self.mmio_bus.write(addr, data);
            }
            // With the in-kernel irqchip, HLT is handled by KVM; if it ever
            // reaches us, running again waits for the next interrupt.
            VcpuExit::Hlt => {}
            VcpuExit::Shutdown => return Some(self.fault(FaultKind::TripleFault)),
            VcpuExit::FailEntry(reason, _) => {
                return Some(self.fault(FaultKind::FailEntry { reason }));
            }
            VcpuExit::InternalError => {
                let suberror = self.internal_error_suberror();
                let host = self.host;
                return Some(self.fault(FaultKind::InternalError { suberror, host }));
            }
            VcpuExit::SystemEvent(kind, _) => {
                return Some(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => VcpuStop::Reset,
                    KVM_SYSTEM_EVENT_CRASH => VcpuStop::Crash,
                    other => self.fault(FaultKind::Unhandled(format!("system event {other}"))),
                });
            }
            other => {
                let name = format!("{other:?}");
                return Some(self.fault(FaultKind::Unhandled(name)));
            }
        }
        None
    }

    /// The thread body: runs the guest until stopped by a command or by
    /// the guest. A vCPU started `parked` waits for commands (a restore,
    /// then a resume) before it first runs.
    fn run_thread(
        mut self,
        commands: Receiver<VcpuCommand>,
        responses: Sender<VcpuResponse>,
        reporter: VcpuReporter,
        parked: bool,
    ) {
        kick::bind(self.fd.get_kvm_run());
        let mut mode = if parked { Mode::Parked } else { Mode::Running };
        loop {
            // Commands first: a kick only makes KVM_RUN return. Parked or
            // halted, the thread waits for the next one.
            let command = match mode {
                Mode::Running => match commands.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(VcpuCommand::Stop),
                },
                Mode::Parked | Mode::Halted => Some(commands.recv().unwrap_or(VcpuCommand::Stop)),
            };
            let response = match command {
                Some(VcpuCommand::Stop) => break,
                Some(VcpuCommand::Pause) => {
                    if mode == Mode::Running {
                        self.tell_guest_clock_it_was_paused();
                        mode = Mode::Parked;
                    }
                    VcpuResponse::Paused
                }
                Some(VcpuCommand::Resume) => {
                    if mode == Mode::Parked {
                        mode = Mode::Running;
                    }
                    VcpuResponse::Resumed
                }
                Some(VcpuCommand::Save) if mode != Mode::Running => VcpuResponse::Saved(
                    state::save(&self.fd, self.id, &self.cpuid, &self.msr_indices).map(Box::new),
                ),
                Some(VcpuCommand::Restore(s)) if mode != Mode::Running => {
                    let r = state::restore(&self.fd, self.id, &s);
                    if r.is_ok() {
                        self.cpuid = s.cpuid;
                    }
                    VcpuResponse::Restored(r)
                }
                Some(VcpuCommand::Save | VcpuCommand::Restore(_)) => VcpuResponse::NotPaused,
                None => {
                    if let Some(stop) = self.run_once() {
                        reporter.report(self.id, stop);
                        // Stay (answering pauses) until stopped, so the VMM
                        // sees a uniform shutdown.
                        mode = Mode::Halted;
                    }
                    continue;
                }
            };
            let _ = responses.send(response);
        }
        kick::unbind();
        let _ = responses.send(VcpuResponse::Stopped);
    }
}
