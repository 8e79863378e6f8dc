//! Restoring a snapshot into this (fresh) process.
//!
//! Every check that can fail on the files or the host runs before anything
//! is created: the state file's envelope and consistency, the overrides,
//! the CPU and XSAVE size, the memory file's size and digest. Then the
//! machine is built with the builder's first part: memory mapped from the
//! file, the VM with its saved irqchip, PIT and clock, the devices where
//! they were and in their state, and the vCPUs, whose threads start parked
//! and restore their own state. Any failure drops all of it: no VM is left
//! half built.

use std::path::PathBuf;
use std::time::Instant;

use kvm_ioctls::Kvm;

use super::cpu::{self, TscPlan};
use super::{load_state, MicrovmState};
use crate::builder::machine::{self, Devices, Platform};
use crate::builder::BuildError;
use crate::config::ConsoleOutput;
use crate::host::HostVirt;
use crate::memfile::{self, MemFileError};
use crate::memory;
use crate::vcpu::VcpuControlError;
use crate::virtio_devices::VirtioConfig;
use crate::vm::{VmError, VmShell};
use crate::vmm::{RunState, Vmm, VmmError};

/// Why a snapshot could not be restored. Each message is one sentence
/// about the file or the host.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the snapshot state file is unusable: {0}")]
    State(#[from] ember_state::StateError),
    #[error("the snapshot state is inconsistent: {0}")]
    Invalid(String),
    #[error("this host cannot run the snapshot: {0}")]
    Cpu(String),
    #[error("this host cannot run the snapshot: it was taken with a TSC of {saved_khz} kHz, this host's TSC runs at {host_khz} kHz, and this host's KVM cannot scale the TSC (no KVM_CAP_TSC_CONTROL)")]
    Tsc { saved_khz: u32, host_khz: u32 },
    #[error("{0}")]
    Memory(#[from] MemFileError),
    #[error("network_overrides names the interface '{0}', which the snapshot does not have")]
    UnknownInterface(String),
    #[error("vsock_override was given, but the snapshot has no vsock device")]
    NoVsock,
    #[error("cannot rebuild the machine: {0}")]
    Build(#[from] BuildError),
    #[error("cannot restore the VM: {0}")]
    Vm(#[from] VmError),
    #[error("cannot restore the vCPUs: {0}")]
    Vcpus(#[from] VcpuControlError),
    #[error("cannot resume the restored VM: {0}")]
    Resume(#[from] VmmError),
}

/// What to restore, and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub state_path: PathBuf,
    pub mem_path: PathBuf,
    /// Resume the vCPUs once restored (else the VM stays paused).
    pub resume: bool,
    /// Advance kvmclock by the wall-clock time since the snapshot.
    pub clock_realtime: bool,
    /// `(iface_id, host_dev_name)`: a new TAP for an interface.
    pub net_overrides: Vec<(String, String)>,
    /// A new Unix socket path for the vsock device.
    pub vsock_override: Option<PathBuf>,
    pub console: ConsoleOutput,
    pub console_input: bool,
    pub boot_timer: bool,
}

impl RestoreOptions {
    /// Restore `state_path` with `mem_path`, paused, console on stdout.
    pub fn new(state_path: impl Into<PathBuf>, mem_path: impl Into<PathBuf>) -> Self {
        Self {
            state_path: state_path.into(),
            mem_path: mem_path.into(),
            resume: false,
            clock_realtime: false,
            net_overrides: Vec::new(),
            vsock_override: None,
            console: ConsoleOutput::Stdout,
            console_input: false,
            boot_timer: false,
        }
    }
}

/// Points devices at the host resources the caller chose.
fn apply_overrides(state: &mut MicrovmState, opts: &RestoreOptions) -> Result<(), RestoreError> {
    for (iface, tap) in &opts.net_overrides {
        let net = state.virtio.iter_mut().find_map(|r| match &mut r.config {
            VirtioConfig::Net(n) if &n.iface_id == iface => Some(n),
            _ => None,
        });
        match net {
            Some(n) => n.host_dev_name = tap.clone(),
            None => return Err(RestoreError::UnknownInterface(iface.clone())),
        }
    }
    if let Some(path) = &opts.vsock_override {
        let vsock = state.virtio.iter_mut().find_map(|r| match &mut r.config {
            VirtioConfig::Vsock(v) => Some(v),
            _ => None,
        });
        match vsock {
            Some(v) => v.uds_path = path.clone(),
            None => return Err(RestoreError::NoVsock),
        }
    }
    Ok(())
}

/// How long each phase of a restore took, for the log.
struct Phases {
    start: Instant,
    last: Instant,
    done: Vec<(&'static str, u128)>,
}

impl Phases {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn mark(&mut self, what: &'static str) {
        let now = Instant::now();
        self.done.push((what, (now - self.last).as_micros()));
        self.last = now;
    }

    fn report(&self) -> String {
        let parts: Vec<String> = self
            .done
            .iter()
            .map(|(w, us)| format!("{w} {us} us"))
            .collect();
        parts.join(", ")
    }
}

/// The restored machine's devices, in words, for logs.
fn describe(state: &MicrovmState) -> String {
    let ids: Vec<&str> = state.virtio.iter().map(|r| r.config.id()).collect();
    format!(
        "{} vCPUs, {} MiB, devices [{}]",
        state.machine.vcpu_count,
        state.machine.mem_size_mib,
        ids.join(", ")
    )
}

/// Restores the snapshot `opts` names. The returned VM is paused, or
/// running with `opts.resume`.
pub fn restore(kvm: &Kvm, host: HostVirt, opts: &RestoreOptions) -> Result<Vmm, RestoreError> {
    restore_in(kvm, host, opts, || None)
}

/// [`restore`], in a VM created ahead of time when `shell` gives one. It is
/// asked for the VM only once both files are read and checked, so that
/// work overlaps the VM's creation.
pub fn restore_in(
    kvm: &Kvm,
    host: HostVirt,
    opts: &RestoreOptions,
    shell: impl FnOnce() -> Option<VmShell>,
) -> Result<Vmm, RestoreError> {
    let mut t = Phases::new();
    let mut state = load_state(&opts.state_path)?;
    apply_overrides(&mut state, opts)?;
    t.mark("state");
    cpu::check_host(kvm, &state.machine, &state.vcpus)?;
    t.mark("cpu check");
    let file = memfile::open_verified(&opts.mem_path, &state.memory.into())?;
    t.mark("memory file verified");
    let ranges = memory::ram_ranges(state.memory.size);
    let mem = memfile::map_private(&file, &opts.mem_path, &ranges, state.machine.huge_pages)?;
    let platform = Platform {
        console: &opts.console,
        console_input: opts.console_input,
        boot_timer: opts.boot_timer,
        legacy: Some(&state.legacy),
    };
    let shell = shell();
    t.mark("VM created ahead");
    let m = machine::create(kvm, shell, mem, &platform, Devices::Restore(&state.virtio))?;
    t.mark("machine and devices");
    m.vm.restore_state(&state.vm, opts.clock_realtime)?;
    let vcpus = machine::create_vcpus(kvm, &m, state.machine.vcpu_count, host)?;
    let saved_khz = state.vcpus.first().map_or(0, |v| v.tsc_khz);
    match cpu::tsc_plan(kvm, saved_khz, vcpus.first().and_then(|v| v.tsc_khz()))? {
        TscPlan::Keep => {}
        TscPlan::Scale(khz) => {
            for v in &vcpus {
                v.set_tsc_khz(khz)
                    .map_err(|e| RestoreError::Cpu(format!("cannot scale the TSC: {e}")))?;
            }
        }
    }
    t.mark("VM state and vCPUs created");
    let mut vmm = machine::start(m, vcpus, state.machine, RunState::Paused, &platform)?;
    vmm.vcpus.restore(std::mem::take(&mut state.vcpus))?;
    t.mark("vCPU threads and states");
    if opts.resume {
        vmm.resume()?;
        t.mark("resumed");
    }
    tracing::info!(
        "restored {} from {} in {:?} ({})",
        describe(&state),
        opts.state_path.display(),
        t.start.elapsed(),
        t.report()
    );
    Ok(vmm)
}
