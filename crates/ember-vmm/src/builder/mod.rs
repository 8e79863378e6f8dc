//! Configuration in, running VM out. The builder has two parts:
//!
//! - [`machine`] creates the host resources, shared by boot and restore:
//!   the KVM VM around the guest memory it is given, the platform devices,
//!   the virtio devices (placed fresh, or where a snapshot recorded them),
//!   the vCPUs, and finally the running [`Vmm`].
//! - [`boot`] sets the guest up for a fresh boot: the kernel and initrd in
//!   memory, the command line, the machine description (MP table, ACPI,
//!   page tables, zero page or PVH start info) and the boot vCPU's entry.
//!
//! A restore (`crate::snapshot::restore`) uses the first part with memory
//! mapped from a snapshot and device and vCPU states from it, and never the
//! second.

pub mod boot;
pub mod machine;

use std::sync::{Arc, Mutex};

use kvm_ioctls::Kvm;

use crate::config::{VmConfig, MAX_VCPUS};
use crate::device_manager::DeviceError;
use crate::host::{self, HostError, HostVirt};
use crate::loader::LoadError;
use crate::memory::{self, MemoryError};
use crate::vcpu::{VcpuControlError, VcpuError};
use crate::virtio_devices::VirtioError;
use crate::vm::{VmError, VmShell};
use crate::vmm::{RunState, Vmm};

/// Everything that can stop a VM from being built. Each variant's message
/// is one clear sentence.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Host(#[from] HostError),
    #[error("vcpu_count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u8),
    #[error("{0}")]
    Memory(#[from] MemoryError),
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    Vm(#[from] VmError),
    #[error("{0}")]
    Devices(#[from] DeviceError),
    #[error("cannot open the console output '{path}': {source}")]
    ConsoleOutput {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot describe the machine: {0}")]
    MachineTables(String),
    #[error("cannot read the host's supported CPUID: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error("{0}")]
    Vcpu(#[from] VcpuError),
    #[error("{0}")]
    VcpuControl(#[from] VcpuControlError),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("{0}")]
    Virtio(#[from] VirtioError),
}

/// Checks what can be checked before touching KVM.
pub fn validate(config: &VmConfig) -> Result<(), BuildError> {
    if config.vcpu_count == 0 || config.vcpu_count > MAX_VCPUS {
        return Err(BuildError::VcpuCount(config.vcpu_count));
    }
    memory::check_size(config.mem_size_mib)?;
    Ok(())
}

/// Builds and boots a VM. The caller adds the returned `Vmm` (and the
/// console input, if wanted) to its event loop.
pub fn build(kvm: &Kvm, host: HostVirt, config: &VmConfig) -> Result<Vmm, BuildError> {
    build_in(kvm, host, config, || None)
}

/// [`build`], in a VM created ahead of time when `shell` gives one. It is
/// asked for the VM only once the kernel is loaded, so that work overlaps
/// the VM's creation.
pub fn build_in(
    kvm: &Kvm,
    host: HostVirt,
    config: &VmConfig,
    shell: impl FnOnce() -> Option<VmShell>,
) -> Result<Vmm, BuildError> {
    validate(config)?;
    let mem = memory::create_guest_memory(config.mem_size_mib, config.huge_pages)?;
    let kernel = boot::load_images(&mem, config)?;
    let platform = machine::Platform {
        console: &config.console,
        console_input: config.console_input,
        boot_timer: config.boot_timer,
        legacy: None,
    };
    let m = machine::create(kvm, shell(), mem, &platform, machine::Devices::Boot(config))?;
    let entry = boot::describe_machine(&m, config, &kernel)?;
    let mut vcpus = machine::create_vcpus(kvm, &m, config.vcpu_count, host)?;
    boot::configure_vcpus(kvm, &mut vcpus, config, entry)?;
    machine::start(m, vcpus, config.machine(), RunState::Running, &platform)
}

/// Opens KVM for `build`, printing the PVM warning once when it applies.
pub fn open_host() -> Result<(Kvm, HostVirt), BuildError> {
    let kvm = host::open_kvm()?;
    Ok((kvm, host::detect_virt()))
}

/// Convenience for callers that share the `Vmm` with subscribers.
pub fn shared(vmm: Vmm) -> Arc<Mutex<Vmm>> {
    Arc::new(Mutex::new(vmm))
}
