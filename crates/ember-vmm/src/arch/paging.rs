//! Identity-mapped boot page tables for the 64-bit entry.
//!
//! One PML4 entry, one PDPT with an entry per GiB, and one page directory
//! per GiB made of 2 MiB pages. The first 4 GiB are mapped, which covers
//! the kernel, the zero page, the command line and the MMIO gap, so tiny
//! guests can reach the LAPIC and device registers without paging setup.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{IDENTITY_MAPPED_GIB, PDE_START, PDPTE_START, PML4_START};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Writing the tables failed: guest memory does not cover them.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot page tables: {0}")]
pub struct PagingError(#[from] vm_memory::GuestMemoryError);

/// The page tables' contents, as (address, entries) pairs.
pub fn boot_page_tables() -> Vec<(u64, Vec<u64>)> {
    let mut tables = Vec::new();
    tables.push((PML4_START, vec![PDPTE_START | PRESENT | WRITABLE]));
    let pdpt = (0..IDENTITY_MAPPED_GIB)
        .map(|gib| (PDE_START + gib * 0x1000) | PRESENT | WRITABLE)
        .collect();
    tables.push((PDPTE_START, pdpt));
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = (0..512u64)
            .map(|i| ((gib << 30) + (i << 21)) | PRESENT | WRITABLE | PAGE_SIZE_2M)
            .collect();
        tables.push((PDE_START + gib * 0x1000, pd));
    }
    tables
}

/// Writes the tables into guest memory; CR3 is [`PML4_START`].
pub fn write_boot_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), PagingError> {
    for (addr, entries) in boot_page_tables() {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(addr))?;
    }
    Ok(())
}

/// Walks the tables in guest memory the way the MMU would, for tests.
pub fn translate<M: GuestMemoryBackend>(mem: &M, cr3: u64, va: u64) -> Option<u64> {
    let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).ok();
    let pml4e = read((cr3 & !0xfff) + ((va >> 39) & 0x1ff) * 8)?;
    if pml4e & PRESENT == 0 {
        return None;
    }
    let pdpte = read((pml4e & 0x000f_ffff_ffff_f000) + ((va >> 30) & 0x1ff) * 8)?;
    if pdpte & PRESENT == 0 {
        return None;
    }
    let pde = read((pdpte & 0x000f_ffff_ffff_f000) + ((va >> 21) & 0x1ff) * 8)?;
    if pde & PRESENT == 0 || pde & PAGE_SIZE_2M == 0 {
        return None;
    }
    Some((pde & 0x000f_ffff_ffe0_0000) + (va & 0x1f_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestMemoryMmap;

    #[test]
    fn first_four_gib_are_identity_mapped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_page_tables(&mem).unwrap();
        for va in [
            0u64,
            0x1000,
            0x7000,
            0x20000,
            0x100_0000,
            0x3fff_ffff,
            0x4000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, PML4_START, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, PML4_START, 1 << 32), None);
        assert_eq!(translate(&mem, PML4_START, 1 << 39), None);
    }

    #[test]
    fn too_small_memory_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        assert!(write_boot_page_tables(&mem).is_err());
    }
}
