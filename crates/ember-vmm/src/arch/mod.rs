//! x86_64 machine description and boot: the physical memory layout, the
//! boot-time GDT and page tables, vCPU registers and CPUID, and the tables
//! that tell the guest what the machine looks like (MP table, ACPI, e820).

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod regs;
