//! Legacy PC devices: the UART console, the i8042 keyboard controller, the
//! CMOS RTC, pvpanic, the ACPI sleep/reset registers and the boot timer.

pub mod acpi_pm;
pub mod boot_timer;
pub mod cmos;
pub mod i8042;
pub mod pvpanic;
pub mod serial;

pub use acpi_pm::AcpiPm;
pub use boot_timer::BootTimer;
pub use cmos::{Clock, Cmos, SystemClock};
pub use i8042::I8042;
pub use pvpanic::PvPanic;
pub use serial::{SerialCounters, SerialPort};
