//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), MADT and DSDT.
//!
//! Built with the `acpi_tables` crate. The DSDT lists the platform devices
//! (console UART, PS/2 keyboard, RTC, pvpanic) and every virtio-mmio
//! device, which is how stock distribution kernels find them, plus the
//! `\_S5` sleep package for ACPI power-off. The FADT points the guest at
//! the sleep and reset registers of `ember_devices::legacy::AcpiPm`.

use acpi_tables::aml::{
    self, Device, EISAName, Interrupt, Memory32Fixed, Name, Package, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use ember_devices::legacy::acpi_pm;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use zerocopy::{Immutable, IntoBytes};

use super::layout::{ACPI_END, ACPI_START, IOAPIC_START, LAPIC_START, PORT_ACPI_PM};
use super::mptable::ioapic_id;

const OEM_ID: [u8; 6] = *b"EMBER ";
const OEM_REVISION: u32 = 1;
/// FADT IA-PC boot architecture flags: an 8042 is present, no VGA.
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// MADT flag: the machine has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;

/// A device's ACPI hardware id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hid {
    /// A compressed EISA id such as `PNP0501`.
    Eisa(&'static str),
    /// A string id such as `LNRO0005`.
    Str(&'static str),
}

/// A resource in a device's `_CRS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// I/O ports.
    Io { base: u16, len: u8 },
    /// A fixed 32-bit memory range.
    Mem32 { base: u32, len: u32 },
    /// An edge-triggered, active-high, exclusive interrupt (a GSI).
    Irq(u32),
}

/// A device for the DSDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiDevice {
    /// Four-character ACPI name.
    pub name: String,
    pub hid: Hid,
    pub uid: u32,
    pub resources: Vec<Resource>,
}

/// Errors writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI device name {0:?} must be four characters")]
    BadName(String),
    #[error("the ACPI tables do not fit below {ACPI_END:#x}")]
    TooBig,
    #[error("cannot write the ACPI tables: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// Interrupt Source Override (MADT type 2).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// Local APIC NMI (MADT type 4).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    processor_uid: u8,
    flags: u16,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

fn device_aml(dev: &AcpiDevice, sink: &mut Vec<u8>) -> Result<(), AcpiError> {
    if dev.name.len() != 4 || !dev.name.is_ascii() {
        return Err(AcpiError::BadName(dev.name.clone()));
    }
    let hid_value: Box<dyn Aml> = match dev.hid {
        Hid::Eisa(id) => Box::new(EISAName::new(id)),
        Hid::Str(id) => Box::new(id),
    };
    let hid = Name::new("_HID".into(), hid_value.as_ref());
    let uid = Name::new("_UID".into(), &dev.uid);
    let resources: Vec<Box<dyn Aml>> = dev
        .resources
        .iter()
        .map(|r| -> Box<dyn Aml> {
            match *r {
                Resource::Io { base, len } => Box::new(IO::new(base, base, 1, len)),
                Resource::Mem32 { base, len } => Box::new(Memory32Fixed::new(true, base, len)),
                Resource::Irq(gsi) => Box::new(Interrupt::new(true, true, false, false, gsi)),
            }
        })
        .collect();
    let template = ResourceTemplate::new(resources.iter().map(|b| b.as_ref()).collect());
    let crs = Name::new("_CRS".into(), &template);
    Device::new(dev.name.as_str().into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
    Ok(())
}

/// The DSDT's AML body.
pub fn dsdt_body(devices: &[AcpiDevice]) -> Result<Vec<u8>, AcpiError> {
    let mut devs = Vec::new();
    for d in devices {
        device_aml(d, &mut devs)?;
    }
    struct Raw(Vec<u8>);
    impl Aml for Raw {
        fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
            sink.vec(&self.0);
        }
    }
    let raw = Raw(devs);
    let mut body = Vec::new();
    Scope::new("\\_SB_".into(), vec![&raw]).to_aml_bytes(&mut body);
    let s5_type = acpi_pm::S5_SLEEP_TYPE;
    let zero = aml::ZERO;
    let s5 = Package::new(vec![&s5_type, &s5_type, &zero, &zero]);
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);
    Ok(body)
}

fn sdt_bytes(signature: [u8; 4], table_id: [u8; 8], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut sdt = Sdt::new(signature, 36, revision, OEM_ID, table_id, OEM_REVISION);
    sdt.append_slice(body);
    sdt.as_slice().to_vec()
}

fn fadt_bytes(dsdt_addr: u64) -> Vec<u8> {
    let io_byte = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut b = FADTBuilder::new(OEM_ID, *b"EMBERFAC", OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    b.iapc_boot_arch = (IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_NO_VGA).into();
    b.sleep_control_reg = io_byte(PORT_ACPI_PM + acpi_pm::SLEEP_CONTROL_OFFSET as u16);
    b.sleep_status_reg = io_byte(PORT_ACPI_PM + acpi_pm::SLEEP_STATUS_OFFSET as u16);
    b.reset_reg = io_byte(PORT_ACPI_PM + acpi_pm::RESET_OFFSET as u16);
    b.reset_value = acpi_pm::RESET_VALUE;
    let mut bytes = Vec::new();
    b.finalize().to_aml_bytes(&mut bytes);
    bytes
}

fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = sum.wrapping_neg();
}

fn madt_bytes(num_cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"EMBERAPC",
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_START as u32),
    );
    for id in 0..num_cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(ioapic_id(num_cpus), IOAPIC_START as u32, 0));
    // KVM routes the PIT (ISA IRQ 0) to IOAPIC pin 2.
    madt.add_structure(InterruptSourceOverride {
        kind: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: 2,
        flags: 0,
    });
    madt.add_structure(LocalApicNmi {
        kind: 4,
        length: 6,
        processor_uid: 0xff,
        flags: 0,
        lint: 1,
    });
    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    bytes[40..44].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    fix_checksum(&mut bytes);
    bytes
}

fn align16(a: u64) -> u64 {
    (a + 15) & !15
}

/// Every table, placed: (address, bytes). The first is the RSDP.
pub fn build_tables(
    num_cpus: u8,
    devices: &[AcpiDevice],
) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let rsdp_addr = ACPI_START;
    let dsdt_addr = align16(rsdp_addr + Rsdp::len() as u64);
    let dsdt = sdt_bytes(*b"DSDT", *b"EMBERDSD", 6, &dsdt_body(devices)?);
    let fadt_addr = align16(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt_bytes(dsdt_addr);
    let madt_addr = align16(fadt_addr + fadt.len() as u64);
    let madt = madt_bytes(num_cpus);
    let xsdt_addr = align16(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, *b"EMBERXSD", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    if xsdt_addr + xsdt_bytes.len() as u64 > ACPI_END {
        return Err(AcpiError::TooBig);
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    Ok(vec![
        (rsdp_addr, rsdp),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (xsdt_addr, xsdt_bytes),
    ])
}

/// Writes the tables into guest memory and returns the RSDP's address.
pub fn write_tables<M: GuestMemoryBackend>(
    mem: &M,
    num_cpus: u8,
    devices: &[AcpiDevice],
) -> Result<u64, AcpiError> {
    let tables = build_tables(num_cpus, devices)?;
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))?;
    }
    Ok(tables[0].0)
}

#[cfg(test)]
#[path = "acpi_tests.rs"]
mod tests;
