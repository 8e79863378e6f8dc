//! The first part of the builder, shared by boot and restore: the host
//! resources of a machine. The KVM VM (irqchip before vCPUs), the platform
//! devices, the virtio devices, the vCPUs, and the start of their threads.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;

use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use super::BuildError;
use crate::config::{ConsoleOutput, MachineInfo, VmConfig};
use crate::device_manager::{DeviceManager, LegacyState};
use crate::host::HostVirt;
use crate::vcpu::{Vcpu, VcpuReporter, Vcpus};
use crate::virtio_devices::{DeviceRecord, DeviceRegistry};
use crate::vm::{Vm, VmShell};
use crate::vmm::{RunState, Vmm};
use crate::GuestMemoryMmap;

/// The platform's host side: where the console goes, whether host input
/// reaches it, the boot timer, and (on restore) the legacy devices' state.
pub struct Platform<'a> {
    pub console: &'a ConsoleOutput,
    pub console_input: bool,
    pub boot_timer: bool,
    pub legacy: Option<&'a LegacyState>,
}

/// Which virtio devices to create: from a configuration (placed fresh) or
/// from a snapshot's records (placed where they were, in their state).
pub enum Devices<'a> {
    Boot(&'a VmConfig),
    Restore(&'a [DeviceRecord]),
}

/// A machine whose vCPUs do not exist yet.
pub struct Machine {
    pub vm: Vm,
    pub devices: DeviceManager,
    pub virtio: DeviceRegistry,
}

fn console_writer(out: &ConsoleOutput) -> Result<Box<dyn Write + Send>, BuildError> {
    Ok(match out {
        ConsoleOutput::Stdout => Box::new(std::io::stdout()),
        ConsoleOutput::Sink => Box::new(std::io::sink()),
        ConsoleOutput::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| BuildError::ConsoleOutput {
                    path: path.display().to_string(),
                    source,
                })?,
        ),
    })
}

/// Creates the VM around `memory` (in `shell`, a VM created ahead, if
/// given), and its devices.
pub fn create(
    kvm: &Kvm,
    shell: Option<VmShell>,
    memory: GuestMemoryMmap,
    platform: &Platform<'_>,
    virtio: Devices<'_>,
) -> Result<Machine, BuildError> {
    let vm = match shell {
        Some(shell) => Vm::with_shell(shell, memory)?,
        None => Vm::new(kvm, memory)?,
    };
    let console = console_writer(platform.console)?;
    let mut devices = DeviceManager::new(&vm, console, platform.boot_timer, platform.legacy)?;
    let virtio = match virtio {
        Devices::Boot(config) => DeviceRegistry::attach_all(&vm, &mut devices, config)?,
        Devices::Restore(records) => DeviceRegistry::restore_all(&vm, &mut devices, records)?,
    };
    Ok(Machine {
        vm,
        devices,
        virtio,
    })
}

/// Creates `count` vCPUs on the machine's buses, with nothing set up.
pub fn create_vcpus(
    kvm: &Kvm,
    m: &Machine,
    count: u8,
    host: HostVirt,
) -> Result<Vec<Vcpu>, BuildError> {
    let msrs: Arc<[u32]> = kvm
        .get_msr_index_list()
        .map_err(BuildError::Cpuid)?
        .as_slice()
        .into();
    let buses = m.devices.buses();
    (0..count)
        .map(|id| {
            Vcpu::create(m.vm.fd(), id, buses.clone(), host, msrs.clone()).map_err(BuildError::from)
        })
        .collect()
}

/// Starts the vCPU threads (running, or parked for a restore) and hands
/// the machine over as a running [`Vmm`].
pub fn start(
    m: Machine,
    vcpus: Vec<Vcpu>,
    info: MachineInfo,
    state: RunState,
    platform: &Platform<'_>,
) -> Result<Vmm, BuildError> {
    let vcpu_evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?);
    let (reporter, reports) = VcpuReporter::new(vcpu_evt.clone());
    let vcpus = Vcpus::start(vcpus, reporter, state == RunState::Paused)?;
    Ok(Vmm::new(
        m,
        vcpus,
        reports,
        vcpu_evt,
        info,
        state,
        platform.console_input,
    ))
}
