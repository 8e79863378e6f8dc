//! A minimal CMOS real-time clock and NVRAM at ports 0x70/0x71.
//!
//! Enough for a guest to read the wall-clock time at boot: the time
//! registers come from a [`Clock`] (the host's, in production), in BCD or
//! binary and 12- or 24-hour form as status register B asks. The other
//! bytes are plain NVRAM. Writes to the time registers are accepted and
//! ignored: the host clock stays the source of truth.
//!
//! Its snapshot state is [`CmosState`]: the index register and the NVRAM
//! bytes. The time is read from the host's clock and is not state: a
//! restored guest reads the time of the host it runs on.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::LegacyStateError;
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

/// Bytes of NVRAM (the index register has 7 bits).
pub const NVRAM_SIZE: usize = 128;
const DEVICE: &str = "cmos";

/// The CMOS's guest-visible state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CmosState {
    /// The register the next data-port access goes to (0 to 127).
    pub index: u8,
    /// The NVRAM, exactly [`NVRAM_SIZE`] bytes (time bytes included, though
    /// reads of those come from the clock).
    pub nvram: Vec<u8>,
}

impl CmosState {
    /// Refuses an index beyond the NVRAM or an NVRAM of the wrong size.
    pub fn validate(&self) -> Result<(), LegacyStateError> {
        if usize::from(self.index) >= NVRAM_SIZE {
            return Err(LegacyStateError::InvalidValue {
                device: DEVICE,
                field: "index",
                value: u32::from(self.index),
            });
        }
        if self.nvram.len() != NVRAM_SIZE {
            return Err(LegacyStateError::WrongLength {
                device: DEVICE,
                field: "nvram",
                len: self.nvram.len(),
                expected: NVRAM_SIZE,
            });
        }
        Ok(())
    }
}

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
    nvram: [u8; NVRAM_SIZE],
}

impl<C: Clock> Cmos<C> {
    /// A CMOS reading time from `clock`, in 24-hour BCD mode.
    pub fn new(clock: C) -> Self {
        let mut nvram = [0u8; NVRAM_SIZE];
        nvram[REG_STATUS_A as usize] = 0x26;
        nvram[REG_STATUS_B as usize] = B_24_HOUR;
        Self {
            clock,
            index: 0,
            nvram,
        }
    }

    /// The guest-visible state.
    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            nvram: self.nvram.to_vec(),
        }
    }

    /// A CMOS in `state`, reading time from `clock`. The state is validated
    /// first.
    pub fn from_state(clock: C, state: &CmosState) -> Result<Self, LegacyStateError> {
        state.validate()?;
        let mut nvram = [0u8; NVRAM_SIZE];
        nvram.copy_from_slice(&state.nvram);
        Ok(Self {
            clock,
            index: state.index,
            nvram,
        })
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

impl<'a, C: Clock> ember_state::Persist<'a> for Cmos<C> {
    type State = CmosState;
    /// What [`Cmos::new`] takes: the clock.
    type ConstructorArgs = C;
    type Error = LegacyStateError;

    fn save(&self) -> CmosState {
        self.state()
    }

    fn restore(clock: C, state: &CmosState) -> Result<Self, LegacyStateError> {
        Self::from_state(clock, state)
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

    /// Every register as the guest reads it, then the index it leaves.
    fn guest_view(c: &mut Cmos<Fixed>) -> Vec<u8> {
        let mut b = [0u8];
        c.read(INDEX_OFFSET, &mut b);
        let mut out = vec![b[0]];
        c.read(DATA_OFFSET, &mut b);
        out.push(b[0]);
        out.extend((0..NVRAM_SIZE as u8).map(|r| reg(c, r)));
        out
    }

    #[test]
    fn restored_cmos_answers_the_guest_as_the_original() {
        let mut a = Cmos::new(Fixed(951_827_696));
        // Binary 12-hour mode, some NVRAM, and the index left on 0x41.
        c_write(&mut a, REG_STATUS_B, B_BINARY);
        c_write(&mut a, 0x40, 0xab);
        c_write(&mut a, 0x7f, 0xcd);
        a.write(INDEX_OFFSET, &[0x80 | 0x41]);
        let saved = a.state();
        assert_eq!(saved.index, 0x41);
        let decoded: CmosState =
            postcard::from_bytes(&postcard::to_allocvec(&saved).unwrap()).unwrap();
        assert_eq!(decoded, saved);

        let expected = guest_view(&mut a);
        c_write(&mut a, 0x40, 0x00);
        assert_ne!(a.state(), saved);
        // The clock is the restoring host's: same time here, same answers.
        let mut b = Cmos::from_state(Fixed(951_827_696), &decoded).unwrap();
        assert_eq!(guest_view(&mut b), expected);
        // 12:34:56 read in binary 12-hour form.
        assert_eq!(reg(&mut b, REG_HOURS), 0x80 | 12);
        assert_eq!(reg(&mut b, 0x40), 0xab);
        // A later host time is read as such.
        let mut c = Cmos::from_state(Fixed(951_827_696 + 3), &decoded).unwrap();
        assert_eq!(reg(&mut c, REG_SECONDS), 59);
    }

    fn c_write(c: &mut Cmos<Fixed>, r: u8, v: u8) {
        c.write(INDEX_OFFSET, &[r]);
        c.write(DATA_OFFSET, &[v]);
    }

    #[test]
    fn hostile_cmos_states_are_refused() {
        use ember_state::Persist;
        let good = Cmos::new(Fixed(0)).state();
        assert!(<Cmos<Fixed> as Persist>::restore(Fixed(0), &good).is_ok());
        let mut s = good.clone();
        s.index = 0x80;
        assert!(matches!(
            Cmos::from_state(Fixed(0), &s),
            Err(LegacyStateError::InvalidValue { field: "index", .. })
        ));
        for len in [0, 127, 129, 1 << 16] {
            let mut s = good.clone();
            s.nvram = vec![0; len];
            assert!(matches!(
                Cmos::from_state(Fixed(0), &s),
                Err(LegacyStateError::WrongLength { len: l, .. }) if l == len
            ));
        }
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
