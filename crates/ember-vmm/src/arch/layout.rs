//! Where everything lives in guest physical memory and in port-I/O space.
//!
//! ```text
//! 0x0000_0500  boot GDT            0x0000_0520  boot IDT
//! 0x0000_6000  PVH start info, module list and memory map
//! 0x0000_7000  zero page (Linux boot_params)
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories
//! 0x0002_0000  kernel command line (2 KiB)
//! 0x0009_fc00  MP table (last KiB of base memory)
//! 0x000e_0000  RSDP, then the other ACPI tables (up to 1 MiB)
//! 0x0010_0000  kernel (high memory starts here)
//!   ...        RAM up to min(size, 3 GiB)
//! 0xc000_0000  MMIO gap (1 GiB): platform devices, virtio-mmio slots,
//!              IOAPIC at 0xfec0_0000, LAPIC at 0xfee0_0000
//! 0x1_0000_0000  the rest of RAM, when the guest has more than 3 GiB
//! ```

/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (a single null entry).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the page directories (one per GiB identity-mapped).
pub const PDE_START: u64 = 0xb000;
/// GiB identity-mapped by the boot page tables.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line accepted, including the terminating NUL
/// (Linux's x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// MP floating pointer and configuration table.
pub const MPTABLE_START: u64 = EBDA_START;
/// Upper bound of the MP table area.
pub const MPTABLE_END: u64 = 0xa0000;
/// RSDP, in the BIOS area Linux scans; the other tables follow it.
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI area.
pub const ACPI_END: u64 = 0x100000;
/// Start of high memory; kernels load at or above it.
pub const HIMEM_START: u64 = 0x100000;

/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Where RAM continues above the gap.
pub const HIGH_RAM_START: u64 = MMIO_GAP_END;

/// The pvpanic register.
pub const PVPANIC_MMIO_START: u64 = 0xd000_0000;
/// First virtio-mmio slot.
pub const VIRTIO_MMIO_START: u64 = 0xd000_1000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// End (exclusive) of the virtio-mmio window.
pub const VIRTIO_MMIO_END: u64 = 0xd100_0000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's three-page TSS region (Intel needs it; below the LAPIC).
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// KVM's identity-map page (Intel real-mode emulation).
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;

/// Interrupt lines: the IOAPIC has 24 pins.
pub const IOAPIC_PINS: u32 = 24;
/// The i8042 keyboard controller's IRQ.
pub const IRQ_I8042: u32 = 1;
/// COM1's IRQ.
pub const IRQ_COM1: u32 = 4;
/// First IRQ handed to virtio devices.
pub const IRQ_VIRTIO_FIRST: u32 = 5;
/// Last IRQ handed to virtio devices.
pub const IRQ_VIRTIO_LAST: u32 = 23;

/// COM1.
pub const PORT_COM1: u16 = 0x3f8;
/// i8042 data port (the status/command port is +4).
pub const PORT_I8042: u16 = 0x60;
/// CMOS index/data.
pub const PORT_CMOS: u16 = 0x70;
/// The hardware-reduced ACPI sleep control, sleep status and reset registers.
pub const PORT_ACPI_PM: u16 = 0x600;
/// Ember's boot-timer debug port.
pub const PORT_BOOT_TIMER: u16 = 0x440;

// The layout's invariants, checked at compile time.
const _: () = {
    assert!(BOOT_IDT_START + 8 <= PVH_INFO_START);
    assert!(PVH_MEMMAP_START + 24 * 128 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + IDENTITY_MAPPED_GIB * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(ACPI_END == HIMEM_START);
    assert!(PVPANIC_MMIO_START >= MMIO_GAP_START && PVPANIC_MMIO_START < VIRTIO_MMIO_START);
    assert!(VIRTIO_MMIO_END <= IOAPIC_START);
    assert!(IRQ_VIRTIO_LAST < IOAPIC_PINS);
};
