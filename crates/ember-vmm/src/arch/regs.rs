//! vCPU register state at boot: general registers, segments and control
//! registers for the chosen entry mode, FPU, boot MSRs and the LAPIC's
//! local interrupt pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::gdt::{boot_gdt, segment_from_descriptor, GdtKind};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the guest is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Long64 { zero_page: u64 },
    /// PVH: 32-bit protected mode, paging off, EBX = start info.
    Pvh { start_info: u64 },
}

impl EntryMode {
    fn gdt_kind(self) -> GdtKind {
        match self {
            EntryMode::Long64 { .. } => GdtKind::LongMode,
            EntryMode::Pvh { .. } => GdtKind::Protected32,
        }
    }
}

/// Errors setting registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT/IDT: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot set vCPU {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM refused the boot MSR {index:#x}")]
    Msr { index: u32 },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// Writes the boot GDT and an empty IDT into guest memory.
pub fn write_gdt_and_idt<M: GuestMemoryBackend>(mem: &M, mode: EntryMode) -> Result<(), RegsError> {
    let gdt = boot_gdt(mode.gdt_kind());
    let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    Ok(())
}

/// The special registers for `mode`, starting from the vCPU's current ones.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let gdt = boot_gdt(mode.gdt_kind());
    let code = segment_from_descriptor(gdt[2], 2);
    let data = segment_from_descriptor(gdt[3], 3);
    let tss = segment_from_descriptor(gdt[4], 4);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match mode {
        EntryMode::Long64 { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// The general registers for `mode`.
pub fn boot_regs(entry: u64, mode: EntryMode) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Long64 { zero_page } => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = zero_page;
        }
        EntryMode::Pvh { start_info } => regs.rbx = start_info,
    }
    regs
}

/// Sets the boot vCPU's registers to enter the kernel at `entry`.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64, mode: EntryMode) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    vcpu.set_sregs(&boot_sregs(sregs, mode))
        .map_err(kvm("special registers"))?;
    vcpu.set_regs(&boot_regs(entry, mode))
        .map_err(kvm("registers"))?;
    Ok(())
}

/// x87 control word and MXCSR as after FNINIT/reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))
}

/// MSR indices and their boot values.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (0x174, 0),               // IA32_SYSENTER_CS
        (0x175, 0),               // IA32_SYSENTER_ESP
        (0x176, 0),               // IA32_SYSENTER_EIP
        (0xc000_0081, 0),         // STAR
        (0xc000_0082, 0),         // LSTAR
        (0xc000_0083, 0),         // CSTAR
        (0xc000_0084, 0),         // SYSCALL_MASK
        (0xc000_0102, 0),         // KERNEL_GS_BASE
        (0x10, 0),                // TSC
        (0x1a0, 1),               // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 0x6), // MTRRdefType: enabled, write-back
    ]
}

/// Sets the boot MSRs that KVM supports (`supported` is KVM's MSR list).
pub fn setup_msrs(vcpu: &VcpuFd, supported: &[u32]) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .filter(|(i, _)| supported.contains(i))
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msr { index: 0 })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::Msr {
            index: entries[set].index,
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, off: usize) -> u32 {
    let b = &state.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        state.regs[off + i] = *byte as _;
    }
}

/// Sets a delivery mode (bits 8..=10) in an LVT value.
pub fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 delivers ExtINT (the 8259), LINT1 delivers NMI.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut state = vcpu.get_lapic().map_err(kvm("LAPIC"))?;
    let lvt0 = lapic_reg(&state, APIC_LVT0);
    set_lapic_reg(
        &mut state,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&state, APIC_LVT1);
    set_lapic_reg(
        &mut state,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&state).map_err(kvm("LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_entry_registers() {
        let s = boot_sregs(
            kvm_sregs::default(),
            EntryMode::Long64 { zero_page: 0x7000 },
        );
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.cs.l), (0x10, 1));
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.gdt.limit, 39);
        let r = boot_regs(0x100_0000, EntryMode::Long64 { zero_page: 0x7000 });
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, 0x7000, BOOT_STACK_POINTER, 2)
        );
    }

    #[test]
    fn pvh_entry_registers() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Pvh { start_info: 0x6000 });
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.cr0 & CR0_PE, CR0_PE);
        assert_eq!((s.cr4, s.efer), (0, 0));
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
        let r = boot_regs(0x100_0400, EntryMode::Pvh { start_info: 0x6000 });
        assert_eq!((r.rip, r.rbx), (0x100_0400, 0x6000));
    }

    #[test]
    fn lvt_delivery_modes() {
        assert_eq!(
            with_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(with_delivery_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
    }

    #[test]
    fn gdt_in_memory() {
        use crate::GuestMemoryMmap;
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        write_gdt_and_idt(&m, EntryMode::Long64 { zero_page: 0 }).unwrap();
        let cs: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 16)).unwrap();
        assert_eq!(cs, 0x00af_9b00_0000_ffff);
    }
}
