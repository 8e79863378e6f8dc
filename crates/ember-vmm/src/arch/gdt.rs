//! The boot GDT and the segment registers KVM needs to match it.
//!
//! The Linux 64-bit boot protocol wants flat segments at selectors 0x10
//! (`__BOOT_CS`) and 0x18 (`__BOOT_DS`); PVH wants flat 32-bit segments.
//! Both GDTs also carry a TSS descriptor, as VMX requires a usable TR.

use kvm_bindings::kvm_segment;

/// Selector of the boot code segment.
pub const BOOT_CS: u16 = 0x10;
/// Selector of the boot data segment.
pub const BOOT_DS: u16 = 0x18;
/// Selector of the boot TSS.
pub const BOOT_TSS: u16 = 0x20;

/// Access/flag words (bits 8..=23 of the descriptor's high dword shifted
/// down): present, ring 0, and code or data type; G/L/D as named.
const CODE64_FLAGS: u16 = 0xa09b; // G, L, P, S, code exec/read accessed
const CODE32_FLAGS: u16 = 0xc09b; // G, D, P, S, code exec/read accessed
const DATA_FLAGS: u16 = 0xc093; // G, B, P, S, data read/write accessed
const TSS_FLAGS: u16 = 0x008b; // P, 32-bit TSS busy

/// Builds one 8-byte descriptor.
pub fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// Decodes a descriptor into the form KVM_SET_SREGS takes.
pub fn segment_from_descriptor(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages.
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// Which GDT to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GdtKind {
    /// 64-bit code segment (Linux 64-bit boot protocol).
    LongMode,
    /// 32-bit code segment (PVH).
    Protected32,
}

/// The boot GDT: null, null, code at 0x10, data at 0x18, TSS at 0x20.
pub fn boot_gdt(kind: GdtKind) -> [u64; 5] {
    let code = match kind {
        GdtKind::LongMode => CODE64_FLAGS,
        GdtKind::Protected32 => CODE32_FLAGS,
    };
    [
        0,
        0,
        descriptor(code, 0, 0xfffff),
        descriptor(DATA_FLAGS, 0, 0xfffff),
        descriptor(TSS_FLAGS, 0, 0x67),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment() {
        let gdt = boot_gdt(GdtKind::LongMode);
        assert_eq!(gdt[2], 0x00af_9b00_0000_ffff);
        let cs = segment_from_descriptor(gdt[2], 2);
        assert_eq!(cs.selector, BOOT_CS);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
    }

    #[test]
    fn data_and_tss_segments() {
        let gdt = boot_gdt(GdtKind::LongMode);
        assert_eq!(gdt[3], 0x00cf_9300_0000_ffff);
        let ds = segment_from_descriptor(gdt[3], 3);
        assert_eq!(ds.selector, BOOT_DS);
        assert_eq!((ds.type_, ds.db, ds.l, ds.limit), (3, 1, 0, 0xffff_ffff));
        let tr = segment_from_descriptor(gdt[4], 4);
        assert_eq!(tr.selector, BOOT_TSS);
        assert_eq!(
            (tr.type_, tr.s, tr.limit, tr.g, tr.present),
            (0xb, 0, 0x67, 0, 1)
        );
    }

    #[test]
    fn pvh_code_segment_is_32_bit() {
        let cs = segment_from_descriptor(boot_gdt(GdtKind::Protected32)[2], 2);
        assert_eq!((cs.l, cs.db), (0, 1));
    }

    #[test]
    fn base_bits_round_trip() {
        let d = descriptor(DATA_FLAGS, 0x1234_5678, 0xabcde);
        let s = segment_from_descriptor(d, 1);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcd_efff);
        assert_eq!(segment_from_descriptor(0, 0).unusable, 1);
    }
}
