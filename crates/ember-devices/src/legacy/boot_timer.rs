//! The boot timer: a debug port the guest writes [`MAGIC`] to when it
//! reaches a milestone (its first instruction, or its init). The device then
//! writes one line with the time since the VMM process started, the VMM's
//! CPU time so far and the host's monotonic clock, which benchmarks read to
//! time a boot from outside the process.
//!
//! Snapshots: the device has no guest-visible state (it reads as zero), so
//! a restored VM gets one built with [`BootTimer::new`]. Its mark counter
//! only numbers the host-side lines and starts again at 0.

use std::io::Write;
use std::sync::OnceLock;

use crate::bus::BusDevice;

/// The value that marks a milestone.
pub const MAGIC: u8 = 123;

/// A snapshot of the host's clocks, taken when the guest writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// CLOCK_MONOTONIC, in nanoseconds.
    pub monotonic_ns: u64,
    /// CPU time this process has used, user plus system, in microseconds.
    pub process_cpu_us: u64,
}

/// A source of [`Stamp`]s.
pub trait StampSource: Send {
    /// Reads the clocks now.
    fn stamp(&self) -> Stamp;
}

/// The host's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostClocks;

impl StampSource for HostClocks {
    fn stamp(&self) -> Stamp {
        Stamp {
            monotonic_ns: clock_ns(libc::CLOCK_MONOTONIC),
            process_cpu_us: clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) / 1000,
        }
    }
}

static PROCESS_START_NS: OnceLock<u64> = OnceLock::new();

/// Records "now" as the VMM process's start, for `since_start_us`. The
/// binary calls this first thing in `main`; later calls do nothing.
pub fn mark_process_start() {
    let _ = PROCESS_START_NS.set(clock_ns(libc::CLOCK_MONOTONIC));
}

/// CLOCK_MONOTONIC at process start, if marked.
pub fn process_start_ns() -> Option<u64> {
    PROCESS_START_NS.get().copied()
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own and reads nothing else.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The boot-timer device.
pub struct BootTimer<S: StampSource, W: Write> {
    clocks: S,
    out: W,
    marks: u32,
}

impl<S: StampSource, W: Write> BootTimer<S, W> {
    /// A boot timer reporting to `out`.
    pub fn new(clocks: S, out: W) -> Self {
        Self {
            clocks,
            out,
            marks: 0,
        }
    }
}

impl<S: StampSource, W: Write + Send> BusDevice for BootTimer<S, W> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&MAGIC) {
            return;
        }
        let s = self.clocks.stamp();
        let since = match process_start_ns() {
            Some(start) => format!(
                " since_start_us={}",
                s.monotonic_ns.saturating_sub(start) / 1000
            ),
            None => String::new(),
        };
        let _ = writeln!(
            self.out,
            "ember-boot-timer: mark={}{since} cpu_us={} monotonic_ns={}",
            self.marks, s.process_cpu_us, s.monotonic_ns
        );
        let _ = self.out.flush();
        self.marks = self.marks.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;
    impl StampSource for Fake {
        fn stamp(&self) -> Stamp {
            Stamp {
                monotonic_ns: 42,
                process_cpu_us: 7,
            }
        }
    }

    #[test]
    fn magic_writes_a_line_others_do_not() {
        let mut t = BootTimer::new(Fake, Vec::new());
        t.write(0, &[1]);
        t.write(1, &[MAGIC]);
        t.write(0, &[MAGIC]);
        t.write(0, &[MAGIC, 0, 0, 0]);
        let s = String::from_utf8(t.out).unwrap();
        // The process start is not marked in unit tests.
        assert_eq!(
            s,
            "ember-boot-timer: mark=0 cpu_us=7 monotonic_ns=42\n\
             ember-boot-timer: mark=1 cpu_us=7 monotonic_ns=42\n"
        );
    }

    #[test]
    fn host_clocks_move_forward() {
        let a = HostClocks.stamp();
        let b = HostClocks.stamp();
        assert!(b.monotonic_ns >= a.monotonic_ns && a.monotonic_ns > 0);
    }
}
