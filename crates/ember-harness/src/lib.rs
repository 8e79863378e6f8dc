//! Test support for Ember: runs real Linux guests under ember inside a
//! nested, emulated KVM host.
//!
//! This machine's `/dev/kvm` is PVM-based and cannot boot a stock Linux
//! guest, so real guests run one level down (see
//! `/work/shared/ENVIRONMENT.md`):
//!
//! ```text
//! QEMU (TCG, -cpu EPYC,+svm)            <- qemu.rs, host.rs
//!   L1: Debian cloud kernel + kvm-amd   <- artifacts::debian_kernel, scripts/nested/
//!     ember (the VMM under test)
//!       L2: guest kernel + initramfs    <- artifacts::{microvm_kernel, GuestImage}
//! ```
//!
//! A test describes a batch of *scenarios* (busybox sh scripts run inside
//! L1, where `$EMBER` is the ember binary and `$EMBER_L2` holds the L2
//! files), runs them in one L1 boot with [`NestedHost::run`], and gets a
//! [`RunReport`]: per scenario its exit code and console section, plus wall
//! time, retries and whether L1 hung. [`NestedHost::start`] instead hands
//! back a [`RunningHost`] to watch the console and kill QEMU mid-run; the
//! [`ScratchDisk`] can be read afterwards.
//!
//! Only one emulated host runs at a time (a `flock` under the cache
//! directory), every boot has a hard timeout, and a hung or dead L1 is
//! retried once, which the report counts.

pub mod artifacts;
pub mod console;
pub mod error;
pub mod host;
pub mod l2;
pub mod lock;
pub mod qemu;
pub mod scratch;
pub mod util;

pub use artifacts::{
    debian_kernel, kvm_smoke, microvm_kernel, static_c_program, DebianKernel, GuestImage,
    MicrovmKernel,
};
pub use console::{BootTimer, ConsoleParser, GuestOutput, GuestRun, ScenarioSection};
pub use error::{HarnessError, Result};
pub use host::{
    find_ember, FailedAttempt, NestedHost, PreparedHost, RunReport, Scenario, ScenarioResult,
};
pub use l2::{ember_ready, L2Boot};
pub use lock::HostLock;
pub use qemu::{Attempt, QemuSpec, RunningHost};
pub use scratch::{ScratchDisk, ScratchEntry};
pub use util::{cache_dir, qemu_available, repo_root};
