//! The hardware-reduced ACPI sleep and reset registers.
//!
//! The FADT points the guest at these three one-byte I/O registers; the
//! DSDT's `\_S5` package gives the sleep type for soft-off. A guest
//! `poweroff` writes `SLP_TYP(5) | SLP_EN` to the sleep control register; an
//! ACPI reboot writes [`RESET_VALUE`] to the reset register.
//!
//! Snapshots: the block has no state. Every register reads as zero and a
//! write only raises the power-off or reset event, so a restored VM gets a
//! block built with [`AcpiPm::new`].

use vm_superio::Trigger;

use crate::bus::BusDevice;

/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;
/// Number of ports the block spans.
pub const PORT_SPAN: u64 = 3;
/// The value the guest writes to the reset register.
pub const RESET_VALUE: u8 = 0x0f;
/// The sleep type the DSDT's `\_S5` names for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// The register block. `P` requests power-off, `R` requests a reset.
pub struct AcpiPm<P: Trigger, R: Trigger> {
    power_off: P,
    reset: R,
}

impl<P: Trigger, R: Trigger> AcpiPm<P, R> {
    /// A block signalling `power_off` and `reset`.
    pub fn new(power_off: P, reset: R) -> Self {
        Self { power_off, reset }
    }
}

impl<P: Trigger + Send, R: Trigger + Send> BusDevice for AcpiPm<P, R> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken"; everything else reads as zero.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        let v = data[0];
        match offset {
            SLEEP_CONTROL_OFFSET => {
                let sleep_type = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if v & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE {
                    if let Err(e) = self.power_off.trigger() {
                        tracing::error!("acpi: could not signal power-off: {e:?}");
                    }
                } else if v & SLP_EN != 0 {
                    tracing::warn!("acpi: guest asked for unsupported sleep type {sleep_type}");
                }
            }
            RESET_OFFSET if v == RESET_VALUE => {
                if let Err(e) = self.reset.trigger() {
                    tracing::error!("acpi: could not signal reset: {e:?}");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::test_util::CountingTrigger;

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let off = CountingTrigger::default();
        let rst = CountingTrigger::default();
        let mut pm = AcpiPm::new(off.clone(), rst.clone());
        // SLP_TYP without SLP_EN: nothing.
        pm.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << 2]);
        // S3 with SLP_EN: unsupported, nothing.
        pm.write(SLEEP_CONTROL_OFFSET, &[(3 << 2) | SLP_EN]);
        assert_eq!(off.count(), 0);
        pm.write(SLEEP_CONTROL_OFFSET, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(off.count(), 1);
        pm.write(RESET_OFFSET, &[1]);
        assert_eq!(rst.count(), 0);
        pm.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(rst.count(), 1);
        pm.write(SLEEP_CONTROL_OFFSET, &[0xff, 0xff]);
        assert_eq!(off.count(), 1);
    }
}
