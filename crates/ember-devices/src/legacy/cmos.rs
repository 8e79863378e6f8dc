//! A minimal CMOS real-time clock and NVRAM at ports 0x70/0x71.
//!
//! Enough for a guest to read the wall-clock time at boot: the time
//! registers come from a [`Clock`] (the host's, in production), in BCD or
//! binary and 12- or 24-hour form as status register B asks. The other
//! bytes are plain NVRAM. Writes to the time registers are accepted and
//! ignored: the host clock stays the source of truth.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Offset of the index port (0x70).
pub const INDEX_OFFSET: u64 = 0;
/// Offset of the data port (0x71).
pub const DATA_OFFSET: u64 = 1;
/// Number of ports the device spans.
pub const PORT_SPAN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

const B_24_HOUR: u8 = 0x02;
const B_BINARY: u8 = 0x04;

/// A source of wall-clock time.
pub trait Clock: Send {
    /// Seconds since the Unix epoch, UTC.
    fn unix_seconds(&self) -> i64;
}

/// The host's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_seconds(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }
}

/// Calendar fields of a moment in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 1 = Sunday, as the RTC counts.
    pub weekday: u8,
}

impl DateTime {
    /// Converts Unix seconds to a civil UTC date (proleptic Gregorian).
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Shift the epoch to 0000-03-01 so leap days fall at a year's end.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        // 1970-01-01 was a Thursday (weekday 5 when Sunday is 1).
        let weekday = ((days + 4).rem_euclid(7) + 1) as u8;
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
            weekday,
        }
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// The CMOS device.
pub struct Cmos<C: Clock> {
    clock: C,
    index: u8,
    nvram: [u8; 128],
}

impl<C: Clock> Cmos<C> {
    /// A CMOS reading time from `clock`, in 24-hour BCD mode.
    pub fn new(clock: C) -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_STATUS_A as usize] = 0x26;
        nvram[REG_STATUS_B as usize] = B_24_HOUR;
        Self {
            clock,
            index: 0,
            nvram,
        }
    }

    fn encode(&self, v: u8) -> u8 {
        if self.nvram[REG_STATUS_B as usize] & B_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn read_register(&self, reg: u8) -> u8 {
        let now = DateTime::from_unix(self.clock.unix_seconds());
        let b = self.nvram[REG_STATUS_B as usize];
        match reg {
            REG_SECONDS => self.encode(now.second),
            REG_MINUTES => self.encode(now.minute),
            REG_HOURS => {
                if b & B_24_HOUR != 0 {
                    self.encode(now.hour)
                } else {
                    let pm = now.hour >= 12;
                    let h12 = match now.hour % 12 {
                        0 => 12,
                        h => h,
                    };
                    self.encode(h12) | if pm { 0x80 } else { 0 }
                }
            }
            REG_WEEKDAY => self.encode(now.weekday),
            REG_DAY => self.encode(now.day),
            REG_MONTH => self.encode(now.month),
            REG_YEAR => self.encode(now.year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(now.year.div_euclid(100).clamp(0, 99) as u8),
            // Never "update in progress": reads are always consistent.
            REG_STATUS_A => self.nvram[REG_STATUS_A as usize] & 0x7f,
            REG_STATUS_C => 0,
            // Valid RAM and time.
            REG_STATUS_D => 0x80,
            r => self.nvram[r as usize],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY | REG_STATUS_C | REG_STATUS_D => {}
            r => self.nvram[r as usize] = value,
        }
    }
}

impl<C: Clock> BusDevice for Cmos<C> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            INDEX_OFFSET => self.index,
            DATA_OFFSET => self.read_register(self.index),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            // Bit 7 is the NMI mask, not part of the index.
            INDEX_OFFSET => self.index = data[0] & 0x7f,
            DATA_OFFSET => self.write_register(self.index, data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(i64);
    impl Clock for Fixed {
        fn unix_seconds(&self) -> i64 {
            self.0
        }
    }

    fn reg(c: &mut Cmos<Fixed>, r: u8) -> u8 {
        c.write(INDEX_OFFSET, &[r]);
        let mut b = [0u8];
        c.read(DATA_OFFSET, &mut b);
        b[0]
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(
            DateTime::from_unix(0),
            DateTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        // 2000-02-29 12:34:56 UTC, a Tuesday.
        let d = DateTime::from_unix(951_827_696);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.minute, d.second),
            (2000, 2, 29, 12, 34, 56)
        );
        assert_eq!(d.weekday, 3);
        // 2026-11-23 is a Monday.
        let d = DateTime::from_unix(1_795_392_000);
        assert_eq!((d.year, d.month, d.day, d.weekday), (2026, 11, 23, 2));
        // Before the epoch.
        let d = DateTime::from_unix(-1);
        assert_eq!((d.year, d.month, d.day, d.hour), (1969, 12, 31, 23));
    }

    #[test]
    fn time_reads_in_bcd_and_binary() {
        let mut c = Cmos::new(Fixed(951_827_696));
        assert_eq!(reg(&mut c, REG_SECONDS), 0x56);
        assert_eq!(reg(&mut c, REG_HOURS), 0x12);
        assert_eq!(reg(&mut c, REG_YEAR), 0x00);
        assert_eq!(reg(&mut c, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut c, REG_MONTH), 0x02);
        c.write(INDEX_OFFSET, &[REG_STATUS_B]);
        c.write(DATA_OFFSET, &[B_24_HOUR | B_BINARY]);
        assert_eq!(reg(&mut c, REG_SECONDS), 56);
        assert_eq!(reg(&mut c, REG_CENTURY), 20);
        // 12-hour mode: 12:34 is 12 PM.
        c.write(INDEX_OFFSET, &[REG_STATUS_B]);
        c.write(DATA_OFFSET, &[B_BINARY]);
        assert_eq!(reg(&mut c, REG_HOURS), 0x80 | 12);
    }

    #[test]
    fn nvram_and_nmi_bit() {
        let mut c = Cmos::new(Fixed(0));
        c.write(INDEX_OFFSET, &[0x80 | 0x40]);
        c.write(DATA_OFFSET, &[0xab]);
        assert_eq!(reg(&mut c, 0x40), 0xab);
        assert_eq!(reg(&mut c, REG_STATUS_D), 0x80);
        assert_eq!(reg(&mut c, REG_STATUS_A) & 0x80, 0);
        // Time writes are ignored.
        c.write(INDEX_OFFSET, &[REG_SECONDS]);
        c.write(DATA_OFFSET, &[0x59]);
        assert_eq!(reg(&mut c, REG_SECONDS), 0x00);
    }
}
