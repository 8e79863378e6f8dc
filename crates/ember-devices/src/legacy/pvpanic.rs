//! The pvpanic device (MMIO flavour, ACPI id `QEMU0001`): one byte register
//! the guest kernel writes when it panics.
//!
//! Its snapshot state is [`PvPanicState`]: the last event the guest
//! reported (the guest itself only ever reads the capability bits).

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;

use super::LegacyStateError;
use crate::bus::BusDevice;

/// The guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest loaded a crash kernel and is about to run it.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// Size of the MMIO window.
pub const MMIO_SIZE: u64 = 2;

/// The pvpanic device's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PvPanicState {
    /// The event bits the guest last reported (0 if none).
    pub last_event: u8,
}

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

    /// The device's state.
    pub fn state(&self) -> PvPanicState {
        PvPanicState {
            last_event: self.last_event,
        }
    }

    /// A device in `state` that fires `event` on a guest panic; only the
    /// event bits the device knows are accepted. Restoring fires nothing:
    /// the VMM saw the event when it happened.
    pub fn from_state(event: E, state: &PvPanicState) -> Result<Self, LegacyStateError> {
        if state.last_event & !(PVPANIC_PANICKED | PVPANIC_CRASH_LOADED) != 0 {
            return Err(LegacyStateError::InvalidValue {
                device: "pvpanic",
                field: "last_event",
                value: u32::from(state.last_event),
            });
        }
        Ok(Self {
            event,
            last_event: state.last_event,
        })
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

impl<'a, E: Trigger> ember_state::Persist<'a> for PvPanic<E> {
    type State = PvPanicState;
    /// What [`PvPanic::new`] takes: the panic event trigger.
    type ConstructorArgs = E;
    type Error = LegacyStateError;

    fn save(&self) -> PvPanicState {
        self.state()
    }

    fn restore(event: E, state: &PvPanicState) -> Result<Self, LegacyStateError> {
        Self::from_state(event, state)
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

    #[test]
    fn state_round_trips_and_hostile_events_are_refused() {
        use ember_state::Persist;
        let mut a = PvPanic::new(CountingTrigger::default());
        a.write(0, &[PVPANIC_CRASH_LOADED]);
        let saved = Persist::save(&a);
        let decoded: PvPanicState =
            postcard::from_bytes(&postcard::to_allocvec(&saved).unwrap()).unwrap();
        let t = CountingTrigger::default();
        let mut b = <PvPanic<CountingTrigger> as Persist>::restore(t.clone(), &decoded).unwrap();
        assert_eq!(b.last_event(), PVPANIC_CRASH_LOADED);
        assert_eq!(t.count(), 0);
        let mut caps = [0u8];
        b.read(0, &mut caps);
        assert_eq!(caps[0], 3);
        b.write(0, &[PVPANIC_PANICKED]);
        assert_eq!((t.count(), b.last_event()), (1, PVPANIC_PANICKED));
        for bad in [4u8, 0x80, 0xff] {
            assert_eq!(
                PvPanic::from_state(t.clone(), &PvPanicState { last_event: bad }).map(|_| ()),
                Err(LegacyStateError::InvalidValue {
                    device: "pvpanic",
                    field: "last_event",
                    value: u32::from(bad)
                })
            );
        }
    }
}
