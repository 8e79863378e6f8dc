//! Configuration in, running VM out.
//!
//! The order matters: guest memory, then the kernel and initrd in it, the
//! KVM VM (irqchip before vCPUs), devices, the machine description (MP
//! table, ACPI, page tables, zero page or PVH start info), and finally the
//! vCPUs, started last so nothing changes under a running guest.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{CMDLINE_START, PVH_INFO_START, ZERO_PAGE_START};
use crate::arch::regs::EntryMode;
use crate::arch::{acpi, boot_params, cpuid, mptable, paging, regs};
use crate::config::{ConsoleOutput, VmConfig, MAX_VCPUS};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::host::{self, HostError, HostVirt};
use crate::loader::{self, BootProtocol, LoadError};
use crate::memory::{self, MemoryError};
use crate::vcpu::{Vcpu, VcpuError, VcpuReporter, Vcpus};
use crate::virtio_devices::{VirtioDevices, VirtioError};
use crate::vm::{Vm, VmError};
use crate::vmm::Vmm;

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
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("{0}")]
    Virtio(#[from] VirtioError),
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

/// Checks what can be checked before touching KVM.
pub fn validate(config: &VmConfig) -> Result<(), BuildError> {
    if config.vcpu_count == 0 || config.vcpu_count > MAX_VCPUS {
        return Err(BuildError::VcpuCount(config.vcpu_count));
    }
    memory::check_size(config.mem_size_mib)?;
    Ok(())
}

/// Builds and starts a VM. The caller adds the returned `Vmm` (and the
/// console input, if wanted) to its event loop.
pub fn build(kvm: &Kvm, host: HostVirt, config: &VmConfig) -> Result<Vmm, BuildError> {
    validate(config)?;
    let mem = memory::create_guest_memory(config.mem_size_mib, config.huge_pages)?;

    let kernel = loader::load_kernel(&mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => {
            let max = kernel
                .setup_header
                .and_then(|h| (h.version >= 0x203).then_some(u64::from(h.initrd_addr_max)));
            Some(loader::load_initrd(&mem, path, kernel.end, max)?)
        }
        None => None,
    };

    let vm = Vm::new(kvm, mem)?;
    let console = console_writer(&config.console)?;
    let mut devices = DeviceManager::new(&vm, console, config.boot_timer)?;
    let virtio = VirtioDevices::attach_all(&vm, &mut devices, config)?;

    let mem = vm.memory();
    let mut extra = Vec::new();
    if let Some(root) = config.drives.iter().find(|d| d.is_root_device) {
        match &root.partuuid {
            Some(uuid) => extra.push(format!("root=PARTUUID={uuid}")),
            None => extra.push("root=/dev/vda".to_string()),
        }
        extra.push(if root.block.is_read_only { "ro" } else { "rw" }.to_string());
    }
    extra.extend_from_slice(devices.cmdline_extra());
    let cmdline = loader::build_cmdline(config.cmdline.as_deref(), &extra)?;
    let cmdline_size = loader::write_cmdline(mem, &cmdline)?;
    let tables = |e: String| BuildError::MachineTables(e);
    mptable::write(mem, config.vcpu_count).map_err(|e| tables(e.to_string()))?;
    let rsdp = acpi::write_tables(mem, config.vcpu_count, devices.acpi_devices())
        .map_err(|e| tables(e.to_string()))?;
    let e820 = boot_params::e820_map(mem);
    let mode = match kernel.protocol {
        BootProtocol::Linux64 => {
            paging::write_boot_page_tables(mem).map_err(|e| tables(e.to_string()))?;
            let zp = boot_params::ZeroPage {
                setup_header: kernel.setup_header,
                cmdline_addr: CMDLINE_START,
                cmdline_size,
                initrd,
                rsdp_addr: Some(rsdp),
            };
            boot_params::write_zero_page(mem, &zp, &e820).map_err(|e| tables(e.to_string()))?;
            EntryMode::Long64 {
                zero_page: ZERO_PAGE_START,
            }
        }
        BootProtocol::Pvh => {
            boot_params::write_pvh_start_info(mem, CMDLINE_START, initrd, Some(rsdp), &e820)
                .map_err(|e| tables(e.to_string()))?;
            EntryMode::Pvh {
                start_info: PVH_INFO_START,
            }
        }
    };
    regs::write_gdt_and_idt(mem, mode).map_err(|e| tables(e.to_string()))?;

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    let msrs = kvm.get_msr_index_list().map_err(BuildError::Cpuid)?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    let buses = devices.buses();
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpu_count));
    for id in 0..config.vcpu_count {
        let mut entries = supported.as_slice().to_vec();
        let topo = cpuid::VcpuTopology {
            id,
            count: config.vcpu_count,
            smt: config.smt,
        };
        cpuid::normalize(&mut entries, topo, tsc_deadline);
        let cpuid = CpuId::from_entries(&entries)
            .map_err(|_| BuildError::MachineTables("too many CPUID entries".into()))?;
        let vcpu = Vcpu::new(vm.fd(), id, &cpuid, msrs.as_slice(), buses.clone(), host)?;
        if id == 0 {
            vcpu.set_boot_entry(kernel.entry.0, mode)?;
        }
        vcpus.push(vcpu);
    }

    let vcpu_evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?);
    let (reporter, reports) = VcpuReporter::new(vcpu_evt.clone());
    let vcpus = Vcpus::start(vcpus, reporter)?;
    Ok(Vmm::new(
        vm,
        devices,
        virtio,
        vcpus,
        reports,
        vcpu_evt,
        config.console_input,
    ))
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
