//! Legacy PC devices: the UART console, the i8042 keyboard controller, the
//! CMOS RTC, pvpanic, the ACPI sleep/reset registers and the boot timer.
//!
//! # Snapshots
//!
//! Each device with guest-visible state hands it out as a plain serde value
//! (`state()`) and is rebuilt from one plus the same host resources its
//! `new` takes (`from_state()`); each also implements
//! [`ember_state::Persist`]. A state is checked before it is used: a state
//! no running device could be in is refused with a [`LegacyStateError`].
//!
//! | device | state |
//! |---|---|
//! | [`SerialPort`] | [`SerialPortState`]: the 16550 registers and the receive FIFO |
//! | [`I8042`] | [`I8042State`]: configuration byte, output buffer, pending command, keyboard mode |
//! | [`Cmos`] | [`CmosState`]: index register and NVRAM (the time is the host's clock, not state) |
//! | [`PvPanic`] | [`PvPanicState`]: the last event the guest reported |
//! | [`AcpiPm`] | none: its registers read as zero and writes only raise events |
//! | [`BootTimer`] | none: it only writes host-side log lines (their mark numbers restart at 0) |

pub mod acpi_pm;
pub mod boot_timer;
pub mod cmos;
pub mod i8042;
pub mod pvpanic;
pub mod serial;

pub use acpi_pm::AcpiPm;
pub use boot_timer::BootTimer;
pub use cmos::{Clock, Cmos, CmosState, SystemClock};
pub use i8042::{I8042State, PendingInput, I8042};
pub use pvpanic::{PvPanic, PvPanicState};
pub use serial::{SerialCounters, SerialPort, SerialPortState};

/// Why a saved legacy-device state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyStateError {
    /// A buffer is longer than the device's.
    #[error("{device} state: {field} holds {len} bytes, more than the {max} the device has")]
    TooLong {
        /// The device.
        device: &'static str,
        /// The field.
        field: &'static str,
        /// Its length in the state.
        len: usize,
        /// The device's capacity.
        max: usize,
    },
    /// A fixed-size array has the wrong length.
    #[error("{device} state: {field} has {len} bytes, the device has exactly {expected}")]
    WrongLength {
        /// The device.
        device: &'static str,
        /// The field.
        field: &'static str,
        /// Its length in the state.
        len: usize,
        /// The device's size.
        expected: usize,
    },
    /// A register value the device can never hold.
    #[error("{device} state: {field} = {value:#x} is not a value the device can hold")]
    InvalidValue {
        /// The device.
        device: &'static str,
        /// The field.
        field: &'static str,
        /// The value in the state.
        value: u32,
    },
    /// The restored device could not raise its pending interrupt.
    #[error("{device}: cannot raise the restored interrupt: {reason}")]
    Trigger {
        /// The device.
        device: &'static str,
        /// Why.
        reason: String,
    },
}
