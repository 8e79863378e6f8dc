//! Tiny hand-written guests for tests and benchmarks. They run directly on
//! any `/dev/kvm`, including PVM hosts that cannot run a stock kernel: a
//! few hundred instructions of kernel-mode code, no FPU or SSE.
//!
//! | image | what it does |
//! |---|---|
//! | `hello.elf` | prints a greeting on COM1, reboots (i8042) |
//! | `counter.elf` | increments the u64 at guest address 0x12000 forever |
//! | `bootinfo.elf` | prints entry registers, the command line and the e820 map, powers off (ACPI) |
//! | `triple_fault.elf` | triple faults |
//! | `panic.elf` | reports a panic through pvpanic |
//! | `boot_timer.elf` | signals the boot timer, reboots |
//! | `idle.elf` | prints, signals the boot timer, halts forever |
//! | `smp.elf` | starts every AP with INIT/SIPI, reports who came up, reboots |
//! | `pvh.elf` | enters through the PVH note, prints the start info, reboots |
//! | `bzhello.bzImage` | a bzImage that prints and reboots |
//! | `ticker.elf` | prints `tick <n>` every few hundred thousand instructions, forever |
//! | `kbd.elf` | prints the first eight keyboard bytes it polls from the i8042, reboots |
//! | `snapcount.elf` | prints a banner once, then counts at 0x12000 and prints `count <hex>` every 16384 |
//! | `spin_timer.elf` | writes the boot-timer port in a tight loop (first instruction after a restore) |
//! | `xsave.elf` | runs XSAVE in kernel mode like Linux FPU setup (fails on PVM hosts), reboots |

use std::path::PathBuf;

/// The path of a built guest image, e.g. `image("hello.elf")`.
pub fn image(name: &str) -> PathBuf {
    PathBuf::from(env!("OUT_DIR")).join(name)
}

/// Guest physical address of `counter.elf`'s counter.
pub const COUNTER_ADDR: u64 = 0x12000;
