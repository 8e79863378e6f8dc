//! Why a vCPU stopped running the guest, said in one line a user can act on.

use std::fmt;

use kvm_ioctls::VcpuFd;

use crate::host::{HostVirt, PVM_EMULATION_HINT};

/// KVM's internal-error sub-reasons (`KVM_INTERNAL_ERROR_*`).
const SUBERROR_EMULATION: u32 = 1;
const SUBERROR_SIMUL_EX: u32 = 2;
const SUBERROR_DELIVERY_EV: u32 = 3;
const SUBERROR_UNEXPECTED_EXIT_REASON: u32 = 4;

/// What ended a vCPU's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// KVM reported a guest power-off (KVM_SYSTEM_EVENT_SHUTDOWN).
    PowerOff,
    /// KVM reported a guest reset (KVM_SYSTEM_EVENT_RESET).
    Reset,
    /// KVM reported a guest crash (KVM_SYSTEM_EVENT_CRASH).
    Crash,
    /// A fault the guest cannot recover from.
    Fault(VcpuFault),
}

/// A vCPU fault, with the registers at the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuFault {
    pub vcpu: u8,
    pub kind: FaultKind,
    pub registers: String,
}

/// The kinds of vCPU fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// KVM_EXIT_SHUTDOWN: the CPU shut down, usually a triple fault.
    TripleFault,
    /// KVM_EXIT_INTERNAL_ERROR with its sub-reason.
    InternalError { suberror: u32, host: HostVirt },
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest.
    FailEntry { reason: u64 },
    /// An exit Ember does not handle.
    Unhandled(String),
    /// KVM_RUN itself failed.
    RunFailed(String),
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::TripleFault => write!(
                f,
                "triple fault (the CPU shut down: an exception could not be delivered)"
            ),
            FaultKind::InternalError { suberror, host } => {
                let what = match *suberror {
                    SUBERROR_EMULATION => "KVM could not emulate an instruction",
                    SUBERROR_SIMUL_EX => "a second exception arrived while delivering one",
                    SUBERROR_DELIVERY_EV => "an event could not be delivered",
                    SUBERROR_UNEXPECTED_EXIT_REASON => {
                        "the hardware exited for an unexpected reason"
                    }
                    _ => "unknown sub-reason",
                };
                write!(f, "KVM internal error {suberror}: {what}")?;
                if *suberror == SUBERROR_EMULATION && *host == HostVirt::PvmOnly {
                    write!(f, "; {PVM_EMULATION_HINT}")?;
                }
                Ok(())
            }
            FaultKind::FailEntry { reason } => {
                write!(
                    f,
                    "failed VM entry (hardware reason {reason:#x}): the vCPU state was invalid"
                )
            }
            FaultKind::Unhandled(exit) => write!(f, "unhandled exit {exit}"),
            FaultKind::RunFailed(e) => write!(f, "KVM_RUN failed: {e}"),
        }
    }
}

impl fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vCPU {} stopped: {}; {}",
            self.vcpu, self.kind, self.registers
        )
    }
}

/// One line with the registers a post-mortem needs.
pub fn register_summary(fd: &VcpuFd) -> String {
    let regs = match fd.get_regs() {
        Ok(r) => r,
        Err(e) => return format!("registers unavailable: {e}"),
    };
    let mut s = format!(
        "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}",
        regs.rip, regs.rsp, regs.rflags, regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi
    );
    if let Ok(sr) = fd.get_sregs() {
        s.push_str(&format!(
            " cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
            sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer, sr.cs.selector
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_failure_on_pvm_explains_itself() {
        let f = VcpuFault {
            vcpu: 0,
            kind: FaultKind::InternalError {
                suberror: 1,
                host: HostVirt::PvmOnly,
            },
            registers: "rip=0x1000".into(),
        };
        let s = f.to_string();
        assert!(s.starts_with("vCPU 0 stopped: KVM internal error 1: KVM could not emulate"));
        assert!(s.contains("PVM-based"));
        assert!(s.ends_with("rip=0x1000"));
        assert!(!s.contains('\n'));
        let hw = FaultKind::InternalError {
            suberror: 1,
            host: HostVirt::Hardware,
        };
        assert!(!hw.to_string().contains("PVM"));
    }

    #[test]
    fn triple_fault_line() {
        let f = VcpuFault {
            vcpu: 2,
            kind: FaultKind::TripleFault,
            registers: "rip=0x0".into(),
        };
        assert_eq!(
            f.to_string(),
            "vCPU 2 stopped: triple fault (the CPU shut down: an exception could not be delivered); rip=0x0"
        );
    }
}
