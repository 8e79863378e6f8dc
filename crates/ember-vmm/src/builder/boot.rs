//! The second part of the builder: the guest set up for a fresh boot. The
//! kernel and initrd in memory, the command line, the machine description
//! (MP table, ACPI, page tables, zero page or PVH start info), each vCPU's
//! CPUID and boot registers. A restore never runs this: all of it is in the
//! snapshot's memory and vCPU states.

use std::sync::OnceLock;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use super::machine::Machine;
use super::BuildError;
use crate::arch::layout::{CMDLINE_START, PVH_INFO_START, ZERO_PAGE_START};
use crate::arch::regs::EntryMode;
use crate::arch::{acpi, boot_params, cpuid, mptable, paging, regs};
use crate::config::VmConfig;
use crate::loader::{self, BootProtocol, LoadedKernel};
use crate::vcpu::Vcpu;
use crate::GuestMemoryMmap;

/// The kernel and initrd, loaded.
pub struct Images {
    kernel: LoadedKernel,
    initrd: Option<(u64, u64)>,
}

/// Loads the kernel and the initrd into guest memory.
pub fn load_images(mem: &GuestMemoryMmap, config: &VmConfig) -> Result<Images, BuildError> {
    let kernel = loader::load_kernel(mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => {
            let max = kernel
                .setup_header
                .and_then(|h| (h.version >= 0x203).then_some(u64::from(h.initrd_addr_max)));
            Some(loader::load_initrd(mem, path, kernel.end, max)?)
        }
        None => None,
    };
    Ok(Images { kernel, initrd })
}

/// Where the boot vCPU enters the guest.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub address: u64,
    pub mode: EntryMode,
}

/// Writes the command line and the machine description for the devices
/// `m` has; returns the boot vCPU's entry.
pub fn describe_machine(
    m: &Machine,
    config: &VmConfig,
    images: &Images,
) -> Result<Entry, BuildError> {
    let mem = m.vm.memory();
    let mut extra = Vec::new();
    if let Some(root) = config.drives.iter().find(|d| d.is_root_device) {
        match &root.partuuid {
            Some(uuid) => extra.push(format!("root=PARTUUID={uuid}")),
            None => extra.push("root=/dev/vda".to_string()),
        }
        extra.push(if root.block.is_read_only { "ro" } else { "rw" }.to_string());
    }
    extra.extend_from_slice(m.devices.cmdline_extra());
    let cmdline = loader::build_cmdline(config.cmdline.as_deref(), &extra)?;
    let cmdline_size = loader::write_cmdline(mem, &cmdline)?;
    let tables = |e: String| BuildError::MachineTables(e);
    mptable::write(mem, config.vcpu_count).map_err(|e| tables(e.to_string()))?;
    let rsdp = acpi::write_tables(mem, config.vcpu_count, m.devices.acpi_devices())
        .map_err(|e| tables(e.to_string()))?;
    let e820 = boot_params::e820_map(mem);
    let mode = match images.kernel.protocol {
        BootProtocol::Linux64 => {
            paging::write_boot_page_tables(mem).map_err(|e| tables(e.to_string()))?;
            let zp = boot_params::ZeroPage {
                setup_header: images.kernel.setup_header,
                cmdline_addr: CMDLINE_START,
                cmdline_size,
                initrd: images.initrd,
                rsdp_addr: Some(rsdp),
            };
            boot_params::write_zero_page(mem, &zp, &e820).map_err(|e| tables(e.to_string()))?;
            EntryMode::Long64 {
                zero_page: ZERO_PAGE_START,
            }
        }
        BootProtocol::Pvh => {
            boot_params::write_pvh_start_info(mem, CMDLINE_START, images.initrd, Some(rsdp), &e820)
                .map_err(|e| tables(e.to_string()))?;
            EntryMode::Pvh {
                start_info: PVH_INFO_START,
            }
        }
    };
    regs::write_gdt_and_idt(mem, mode).map_err(|e| tables(e.to_string()))?;
    Ok(Entry {
        address: images.kernel.entry.0,
        mode,
    })
}

/// KVM_GET_SUPPORTED_CPUID, asked once per process (it is the host's and
/// does not change; the ioctl takes about 0.3 ms).
pub fn supported_cpuid(kvm: &Kvm) -> Result<&'static [kvm_cpuid_entry2], BuildError> {
    static SUPPORTED: OnceLock<Vec<kvm_cpuid_entry2>> = OnceLock::new();
    if let Some(s) = SUPPORTED.get() {
        return Ok(s);
    }
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    Ok(SUPPORTED.get_or_init(|| supported.as_slice().to_vec()))
}

/// The CPUID vCPU `id` of `config`'s machine gets on this host.
pub fn vcpu_cpuid(
    kvm: &Kvm,
    id: u8,
    count: u8,
    smt: bool,
) -> Result<Vec<kvm_cpuid_entry2>, BuildError> {
    let mut entries = supported_cpuid(kvm)?.to_vec();
    let topo = cpuid::VcpuTopology { id, count, smt };
    cpuid::normalize(
        &mut entries,
        topo,
        kvm.check_extension(Cap::TscDeadlineTimer),
    );
    Ok(entries)
}

/// Gives every vCPU its CPUID and boot state, and the boot vCPU its entry.
/// The others wait for the guest's INIT/SIPI in the in-kernel LAPIC.
pub fn configure_vcpus(
    kvm: &Kvm,
    vcpus: &mut [Vcpu],
    config: &VmConfig,
    entry: Entry,
) -> Result<(), BuildError> {
    for vcpu in vcpus.iter_mut() {
        let entries = vcpu_cpuid(kvm, vcpu.id(), config.vcpu_count, config.smt)?;
        let cpuid = CpuId::from_entries(&entries)
            .map_err(|_| BuildError::MachineTables("too many CPUID entries".into()))?;
        vcpu.configure_for_boot(&cpuid)?;
        if vcpu.id() == 0 {
            vcpu.set_boot_entry(entry.address, entry.mode)?;
        }
    }
    Ok(())
}
