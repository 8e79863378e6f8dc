//! The pvpanic device (MMIO flavour, ACPI id `QEMU0001`): one byte register
//! the guest kernel writes when it panics.

use vm_superio::Trigger;

use crate::bus::BusDevice;

/// The guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest loaded a crash kernel and is about to run it.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// Size of the MMIO window.
pub const MMIO_SIZE: u64 = 2;

/// The pvpanic device. `E` tells the VMM the guest panicked.
pub struct PvPanic<E: Trigger> {
    event: E,
    last_event: u8,
}

impl<E: Trigger> PvPanic<E> {
    /// A pvpanic device that fires `event` on a guest panic.
    pub fn new(event: E) -> Self {
        Self {
            event,
            last_event: 0,
        }
    }

    /// The bits of the last event the guest reported (0 if none).
    pub fn last_event(&self) -> u8 {
        self.last_event
    }
}

impl<E: Trigger + Send> BusDevice for PvPanic<E> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 && !data.is_empty() {
            // The events we support.
            data[0] = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.is_empty() {
            return;
        }
        let value = data[0] & (PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
        if value == 0 {
            return;
        }
        self.last_event = value;
        if let Err(e) = self.event.trigger() {
            tracing::error!("pvpanic: could not signal the guest panic: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::test_util::CountingTrigger;

    #[test]
    fn panic_write_fires_and_capabilities_read_back() {
        let t = CountingTrigger::default();
        let mut p = PvPanic::new(t.clone());
        let mut b = [0u8];
        p.read(0, &mut b);
        assert_eq!(b[0], 3);
        p.write(0, &[0]);
        p.write(1, &[1]);
        assert_eq!(t.count(), 0);
        p.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(t.count(), 1);
        assert_eq!(p.last_event(), PVPANIC_PANICKED);
        p.write(0, &[0xfc]);
        assert_eq!(t.count(), 1);
    }
}
