//! The Intel MultiProcessor table (MP spec 1.4), for guests booted with
//! `acpi=off` or without ACPI support.
//!
//! It lists every vCPU's local APIC, one ISA bus, the IOAPIC, the ISA
//! interrupt routing (IRQ 0 on pin 2, as KVM routes the PIT) and the local
//! interrupts (LINT0 ExtINT, LINT1 NMI). It lives in the last KiB of base
//! memory, where Linux looks for it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{IOAPIC_PINS, IOAPIC_START, LAPIC_START, MPTABLE_END, MPTABLE_START};

/// Most vCPUs the table has room for.
pub const MAX_CPUS: u8 = 32;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INT: u8 = 3;
const ENTRY_LOCAL_INT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6; features FPU and APIC.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("the MP table supports at most {MAX_CPUS} vCPUs, got {0}")]
    TooManyCpus(u8),
    #[error("the MP table does not fit below {MPTABLE_END:#x}")]
    TooBig,
    #[error("cannot write the MP table: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The IOAPIC's id: after every local APIC id.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

/// Builds the table for `num_cpus` vCPUs as it sits at `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..num_cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic = ioapic_id(num_cpus);
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    // ISA IRQs on IOAPIC pins. The 8259 reaches the CPUs through LINT0
    // (below), not through IOAPIC pin 0: KVM's IOAPIC does not route it.
    let io_int =
        |kind: u8, src_irq: u8, pin: u8| [ENTRY_IO_INT, kind, 0, 0, 0, src_irq, ioapic, pin];
    for irq in 0..IOAPIC_PINS as u8 {
        let pin = match irq {
            0 => 2,
            2 => continue,
            n => n,
        };
        entries.extend_from_slice(&io_int(INT_TYPE_INT, irq, pin));
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INT, kind, 0, 0, 0, 0, 0xff, lint]);
        count += 1;
    }

    let config_addr = base + FLOATING_LEN as u64;
    let table_len = HEADER_LEN + entries.len();
    if config_addr + table_len as u64 > MPTABLE_END {
        return Err(MpTableError::TooBig);
    }

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"EMBER   ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    let mut config = header;
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(config_addr as u32).to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend_from_slice(&config);
    Ok(out)
}

/// Writes the MP table for `num_cpus` vCPUs at [`MPTABLE_START`].
pub fn write<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(num_cpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a guest learns from the table.
    #[derive(Debug, Default)]
    struct Parsed {
        cpus: Vec<(u8, u8)>,
        ioapics: Vec<(u8, u32)>,
        io_ints: Vec<(u8, u8, u8)>,
        local_ints: Vec<(u8, u8)>,
        buses: Vec<String>,
    }

    /// Parses the table the way Linux's mpparse does, checking checksums.
    fn parse(bytes: &[u8], base: u64) -> Parsed {
        assert_eq!(&bytes[..4], b"_MP_");
        assert_eq!(bytes[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let phys = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
        let cfg = &bytes[(phys - base) as usize..];
        assert_eq!(&cfg[..4], b"PCMP");
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(cfg[..len].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([cfg[34], cfg[35]]);
        assert_eq!(
            u32::from_le_bytes(cfg[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        let mut p = Parsed::default();
        let mut off = HEADER_LEN;
        for _ in 0..count {
            let e = &cfg[off..];
            off += match e[0] {
                ENTRY_PROCESSOR => {
                    p.cpus.push((e[1], e[3]));
                    20
                }
                ENTRY_BUS => {
                    p.buses.push(String::from_utf8(e[2..8].to_vec()).unwrap());
                    8
                }
                ENTRY_IOAPIC => {
                    p.ioapics
                        .push((e[1], u32::from_le_bytes(e[4..8].try_into().unwrap())));
                    8
                }
                ENTRY_IO_INT => {
                    p.io_ints.push((e[1], e[5], e[7]));
                    8
                }
                ENTRY_LOCAL_INT => {
                    p.local_ints.push((e[1], e[7]));
                    8
                }
                t => panic!("unknown entry type {t}"),
            };
        }
        assert_eq!(off, len, "entry count and length agree");
        p
    }

    #[test]
    fn describes_every_cpu_and_the_interrupt_routing() {
        let bytes = build(4, MPTABLE_START).unwrap();
        let p = parse(&bytes, MPTABLE_START);
        assert_eq!(p.cpus, vec![(0, 3), (1, 1), (2, 1), (3, 1)]);
        assert_eq!(p.ioapics, vec![(4, 0xfec0_0000)]);
        assert_eq!(p.buses, vec!["ISA   "]);
        assert!(
            !p.io_ints.iter().any(|&(t, _, _)| t == INT_TYPE_EXTINT),
            "8259 via LINT0 only"
        );
        assert!(p.io_ints.contains(&(INT_TYPE_INT, 0, 2)), "PIT on pin 2");
        assert!(p.io_ints.contains(&(INT_TYPE_INT, 4, 4)));
        assert!(p.io_ints.contains(&(INT_TYPE_INT, 23, 23)));
        assert!(!p
            .io_ints
            .iter()
            .any(|&(t, src, _)| t == INT_TYPE_INT && src == 2));
        assert_eq!(p.local_ints, vec![(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)]);
    }

    #[test]
    fn thirty_two_cpus_fit_in_the_ebda() {
        let bytes = build(32, MPTABLE_START).unwrap();
        assert!(MPTABLE_START + bytes.len() as u64 <= MPTABLE_END);
        assert_eq!(parse(&bytes, MPTABLE_START).cpus.len(), 32);
    }

    #[test]
    fn bad_cpu_counts_are_refused() {
        assert!(matches!(
            build(0, MPTABLE_START),
            Err(MpTableError::TooManyCpus(0))
        ));
        assert!(matches!(
            build(33, MPTABLE_START),
            Err(MpTableError::TooManyCpus(33))
        ));
    }
}
