//! ember's process exit codes.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the guest rebooted or powered off, or the VMM was stopped |
//! | 1 | ember could not set up or boot the VM (bad configuration, kernel, host) |
//! | 2 | bad command-line usage |
//! | 3 | the guest kernel panicked |
//! | 4 | a vCPU faulted (triple fault, KVM internal error, failed entry) |

use ember_vmm::vmm::VmExit;

pub const OK: i32 = 0;
pub const SETUP_ERROR: i32 = 1;
pub const USAGE: i32 = 2;
pub const GUEST_PANIC: i32 = 3;
pub const VCPU_FAULT: i32 = 4;

/// The exit code for how the VM ended.
pub fn for_exit(exit: &VmExit) -> i32 {
    match exit {
        VmExit::Reboot | VmExit::PowerOff | VmExit::Stopped => OK,
        VmExit::Panic { .. } => GUEST_PANIC,
        VmExit::Fault(_) => VCPU_FAULT,
    }
}
