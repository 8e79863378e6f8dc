//! Parses the generated tables back, as a guest would, and checks them.

use super::*;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
}

/// A flat view of guest memory holding the tables.
struct Mem(Vec<(u64, Vec<u8>)>);

impl Mem {
    fn table(&self, addr: u64) -> &[u8] {
        let (_, b) = self
            .0
            .iter()
            .find(|(a, _)| *a == addr)
            .expect("table at address");
        b
    }

    /// Follows RSDP -> XSDT -> tables; checks every checksum and length.
    fn tables_by_signature(&self) -> Vec<(String, u64)> {
        let rsdp = self.table(ACPI_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[..20]), "RSDP v1 checksum");
        assert!(sums_to_zero(&rsdp[..36]), "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
        let xsdt = self.table(u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(u32_at(xsdt, 4) as usize, xsdt.len());
        assert!(sums_to_zero(xsdt));
        let mut out = Vec::new();
        for i in (36..xsdt.len()).step_by(8) {
            let addr = u64_at(xsdt, i);
            let t = self.table(addr);
            assert_eq!(u32_at(t, 4) as usize, t.len(), "length of {:?}", &t[..4]);
            assert!(sums_to_zero(t), "checksum of {:?}", &t[..4]);
            out.push((String::from_utf8(t[..4].to_vec()).unwrap(), addr));
        }
        out
    }
}

fn devices() -> Vec<AcpiDevice> {
    vec![
        AcpiDevice {
            name: "COM1".into(),
            hid: Hid::Eisa("PNP0501"),
            uid: 0,
            resources: vec![
                Resource::Io {
                    base: 0x3f8,
                    len: 8,
                },
                Resource::Irq(4),
            ],
        },
        AcpiDevice {
            name: "PEVT".into(),
            hid: Hid::Str("QEMU0001"),
            uid: 0,
            resources: vec![Resource::Mem32 {
                base: 0xd000_0000,
                len: 2,
            }],
        },
        AcpiDevice {
            name: "V000".into(),
            hid: Hid::Str("LNRO0005"),
            uid: 0,
            resources: vec![
                Resource::Mem32 {
                    base: 0xd000_1000,
                    len: 0x1000,
                },
                Resource::Irq(5),
            ],
        },
    ]
}

#[test]
fn rsdp_reaches_fadt_and_madt_with_valid_checksums() {
    let mem = Mem(build_tables(2, &devices()).unwrap());
    let sigs: Vec<String> = mem
        .tables_by_signature()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(sigs, vec!["FACP", "APIC"]);
    for (addr, bytes) in &mem.0 {
        assert!(*addr >= ACPI_START && addr + bytes.len() as u64 <= ACPI_END);
    }
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
    let mem = Mem(build_tables(1, &[]).unwrap());
    let fadt_addr = mem.tables_by_signature()[0].1;
    let f = mem.table(fadt_addr);
    let flags = u32_at(f, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(u16_at(f, 109) & IAPC_BOOT_ARCH_8042, IAPC_BOOT_ARCH_8042);
    // RESET_REG (GAS at 116): system I/O, 8 bits, the reset port.
    assert_eq!(f[116], 1);
    assert_eq!(f[117], 8);
    assert_eq!(u64_at(f, 120), u64::from(PORT_ACPI_PM) + 2);
    assert_eq!(f[128], acpi_pm::RESET_VALUE);
    // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
    assert_eq!(f[244], 1);
    assert_eq!(u64_at(f, 248), u64::from(PORT_ACPI_PM));
    assert_eq!(u64_at(f, 260), u64::from(PORT_ACPI_PM) + 1);
    // X_DSDT at 140 points at a valid DSDT.
    let dsdt = mem.table(u64_at(f, 140));
    assert_eq!(&dsdt[..4], b"DSDT");
    assert!(sums_to_zero(dsdt));
}

#[test]
fn madt_lists_every_cpu_the_ioapic_the_pit_override_and_nmi() {
    let mem = Mem(build_tables(3, &[]).unwrap());
    let m = mem.table(mem.tables_by_signature()[1].1);
    assert_eq!(u32_at(m, 36), LAPIC_START as u32);
    assert_eq!(u32_at(m, 40), MADT_PCAT_COMPAT);
    let mut off = 44;
    let (mut cpus, mut ioapics, mut isos, mut nmis) = (vec![], vec![], vec![], vec![]);
    while off < m.len() {
        let (kind, len) = (m[off], m[off + 1] as usize);
        assert!(len >= 2);
        let e = &m[off..off + len];
        match kind {
            0 => cpus.push((e[2], e[3], u32_at(e, 4))),
            1 => ioapics.push((e[2], u32_at(e, 4), u32_at(e, 8))),
            2 => isos.push((e[3], u32_at(e, 4))),
            4 => nmis.push((e[2], e[5])),
            k => panic!("unexpected MADT entry {k}"),
        }
        off += len;
    }
    assert_eq!(off, m.len());
    assert_eq!(cpus, vec![(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
    assert_eq!(ioapics, vec![(3, IOAPIC_START as u32, 0)]);
    assert_eq!(isos, vec![(0, 2)]);
    assert_eq!(nmis, vec![(0xff, 1)]);
}

#[test]
fn dsdt_names_devices_and_s5() {
    let body = dsdt_body(&devices()).unwrap();
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"LNRO0005"));
    assert!(has(b"QEMU0001"));
    assert!(has(b"_S5_"));
    assert!(has(b"COM1") && has(b"V000") && has(b"PEVT"));
    assert!(matches!(
        dsdt_body(&[AcpiDevice {
            name: "TOOLONG".into(),
            hid: Hid::Str("X"),
            uid: 0,
            resources: vec![]
        }]),
        Err(AcpiError::BadName(_))
    ));
}

/// Disassembles the DSDT with ACPICA's `iasl` and checks what it decoded.
#[test]
fn iasl_decodes_the_dsdt() {
    let Ok(out) = std::process::Command::new("iasl").arg("-v").output() else {
        eprintln!(
            "SKIPPED iasl_decodes_the_dsdt: iasl not installed (apt-get install acpica-tools)"
        );
        return;
    };
    assert!(out.status.success() || !out.stdout.is_empty());
    let dir = std::env::temp_dir().join(format!("ember-iasl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tables = build_tables(2, &devices()).unwrap();
    let dsdt = &tables[1].1;
    std::fs::write(dir.join("dsdt.dat"), dsdt).unwrap();
    let status = std::process::Command::new("iasl")
        .current_dir(&dir)
        .args(["-d", "dsdt.dat"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "iasl: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    for needle in [
        "Device (COM1)",
        "EisaId (\"PNP0501\")",
        "\"LNRO0005\"",
        "\"QEMU0001\"",
        "Memory32Fixed (ReadWrite,",
        "0xD0001000",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "IO (Decode16,",
        "Name (_S5, Package",
    ] {
        assert!(dsl.contains(needle), "missing {needle:?} in:\n{dsl}");
    }
}
