//! What the guest is told at entry: the e820 memory map, and either the
//! Linux zero page (`struct boot_params`) or the PVH `hvm_start_info`.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::{
    ACPI_END, ACPI_START, EBDA_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved.
pub const E820_RESERVED: u32 = 2;
/// The zero page holds at most this many e820 entries.
pub const E820_MAX_ENTRIES: usize = 128;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Errors writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("the memory map has {0} entries, more than the zero page holds")]
    TooManyE820Entries(usize),
    #[error("cannot write the boot information: {0}")]
    Write(#[from] linux_loader::configurator::Error),
}

/// The e820 map for `mem`: base memory below the EBDA, the EBDA and BIOS
/// area reserved, then every RAM range from 1 MiB up.
pub fn e820_map<M: GuestMemoryBackend>(mem: &M) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        if start == 0 {
            map.push(E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM,
            });
            map.push(E820Entry {
                addr: EBDA_START,
                size: 0xa0000 - EBDA_START,
                kind: E820_RESERVED,
            });
            map.push(E820Entry {
                addr: ACPI_START,
                size: ACPI_END - ACPI_START,
                kind: E820_RESERVED,
            });
            if end > HIMEM_START {
                map.push(E820Entry {
                    addr: HIMEM_START,
                    size: end - HIMEM_START,
                    kind: E820_RAM,
                });
            }
        } else {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Inputs of the zero page.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroPage {
    /// The bzImage's setup header, copied in first (None for an ELF kernel).
    pub setup_header: Option<setup_header>,
    pub cmdline_addr: u64,
    /// Length of the command line including its NUL.
    pub cmdline_size: u32,
    /// Address and size of the initrd.
    pub initrd: Option<(u64, u64)>,
    pub rsdp_addr: Option<u64>,
}

/// Builds `boot_params` for the Linux 64-bit boot protocol.
pub fn build_zero_page(zp: &ZeroPage, e820: &[E820Entry]) -> Result<boot_params, BootParamsError> {
    if e820.len() > E820_MAX_ENTRIES {
        return Err(BootParamsError::TooManyE820Entries(e820.len()));
    }
    let mut params = boot_params::default();
    if let Some(hdr) = zp.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = zp.cmdline_addr as u32;
    params.ext_cmd_line_ptr = (zp.cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = zp.cmdline_size;
    if zp.setup_header.is_none() {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some((addr, size)) = zp.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    if let Some(rsdp) = zp.rsdp_addr {
        params.acpi_rsdp_addr = rsdp;
    }
    for (i, e) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    zp: &ZeroPage,
    e820: &[E820Entry],
) -> Result<(), BootParamsError> {
    let params = build_zero_page(zp, e820)?;
    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<M>(&bp, mem)?;
    Ok(())
}

/// Writes the PVH start info, module list and memory map.
pub fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    cmdline_addr: u64,
    initrd: Option<(u64, u64)>,
    rsdp_addr: Option<u64>,
    e820: &[E820Entry],
) -> Result<(), BootParamsError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: cmdline_addr,
        rsdp_paddr: rsdp_addr.unwrap_or(0),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut bp = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some((addr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        bp = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        let module = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        bp.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    bp.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<M>(&bp, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestMemoryMmap;
    use vm_memory::Bytes;

    fn mem(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
        let r: Vec<(GuestAddress, usize)> =
            ranges.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
        GuestMemoryMmap::from_ranges(&r).unwrap()
    }

    #[test]
    fn e820_for_a_small_guest() {
        let m = mem(&[(0, 128 << 20)]);
        let map = e820_map(&m);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 0xe0000,
                size: 0x20000,
                kind: E820_RESERVED
            }
        );
        assert_eq!(
            map[3],
            E820Entry {
                addr: 1 << 20,
                size: (128 << 20) - (1 << 20),
                kind: E820_RAM
            }
        );
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn e820_for_a_guest_above_4g() {
        let m = mem(&[(0, 3 << 30), (4 << 30, 1 << 30)]);
        let map = e820_map(&m);
        assert_eq!(
            map.last(),
            Some(&E820Entry {
                addr: 4 << 30,
                size: 1 << 30,
                kind: E820_RAM
            })
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4 << 30) - (0x100000 - 0x9fc00));
    }

    #[test]
    fn zero_page_fields() {
        let m = mem(&[(0, 64 << 20)]);
        let zp = ZeroPage {
            cmdline_addr: 0x20000,
            cmdline_size: 12,
            initrd: Some((0x300_0000, 0x1234)),
            rsdp_addr: Some(0xe0000),
            ..Default::default()
        };
        write_zero_page(&m, &zp, &e820_map(&m)).unwrap();
        let bp: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ bp.hdr.boot_flag }, 0xaa55);
        assert_eq!({ bp.hdr.header }, 0x5372_6448);
        assert_eq!({ bp.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ bp.hdr.cmdline_size }, 12);
        assert_eq!({ bp.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ bp.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ bp.hdr.type_of_loader }, 0xff);
        assert_eq!({ bp.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(bp.e820_entries, 4);
        // Raw offsets the boot protocol documents, as tiny guests read them.
        let raw = |off: u64| {
            m.read_obj::<u32>(GuestAddress(ZERO_PAGE_START + off))
                .unwrap()
        };
        assert_eq!(raw(0x228), 0x20000, "cmd_line_ptr");
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(ZERO_PAGE_START + 0x1e8))
                .unwrap(),
            4
        );
        assert_eq!(raw(0x2d0 + 20 * 3 + 16), E820_RAM, "4th entry type");
    }

    #[test]
    fn bzimage_header_is_kept() {
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x20f,
            kernel_alignment: 0x200000,
            ..Default::default()
        };
        let zp = ZeroPage {
            setup_header: Some(hdr),
            cmdline_addr: 0x20000,
            cmdline_size: 1,
            ..Default::default()
        };
        let bp = build_zero_page(&zp, &[]).unwrap();
        assert_eq!(bp.hdr.setup_sects, 27);
        assert_eq!({ bp.hdr.version }, 0x20f);
        assert_eq!({ bp.hdr.kernel_alignment }, 0x200000);
    }

    #[test]
    fn too_many_e820_entries() {
        let e = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: 1
            };
            E820_MAX_ENTRIES + 1
        ];
        assert!(build_zero_page(&ZeroPage::default(), &e).is_err());
    }

    #[test]
    fn pvh_start_info_with_initrd() {
        let m = mem(&[(0, 64 << 20)]);
        let e820 = e820_map(&m);
        write_pvh_start_info(&m, 0x20000, Some((0x200_0000, 4096)), Some(0xe0000), &e820).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.cmdline_paddr, 0x20000);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries as usize, e820.len());
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x200_0000, 4096));
        let last: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(
                PVH_MEMMAP_START + 24 * (e820.len() as u64 - 1),
            ))
            .unwrap();
        assert_eq!(last.addr, 1 << 20);
        assert!(PVH_MEMMAP_START + 24 * E820_MAX_ENTRIES as u64 <= ZERO_PAGE_START);
    }
}
