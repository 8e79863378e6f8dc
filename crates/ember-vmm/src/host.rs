//! Host checks: can this host's KVM run a microVM, and what kind of KVM is
//! it? Every failure here is one sentence telling the user what to do.

use std::io;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// The path of the KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// What virtualization the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostVirt {
    /// VT-x or AMD-V: standard guest kernels run.
    Hardware,
    /// PVM (KVM without VT-x/AMD-V): only PVM-built kernels and tiny
    /// guests run; kernel-mode code is emulated and XSAVE/XRSTOR and most
    /// SSE/x87 instructions cannot be.
    PvmOnly,
    /// Neither flag nor PVM was seen.
    Unknown,
}

/// The warning printed once at start on a PVM-only host.
pub const PVM_WARNING: &str = "warning: this host's KVM is PVM-based (no VT-x/AMD-V): standard Linux guest kernels cannot run here, only PVM-built kernels and tiny test guests; use a host with hardware virtualization, or Ember's nested test host (./scripts/demo runs a guest there; see scripts/nested/README.md)";

/// Why a guest died of an emulation failure on a PVM-only host.
pub const PVM_EMULATION_HINT: &str = "this host's KVM is PVM-based (no VT-x/AMD-V): it emulates guest kernel code and cannot emulate XSAVE/XRSTOR or most SSE and x87 instructions, which every standard Linux kernel runs while setting up its FPU; use a host with VT-x/AMD-V, or Ember's nested test host (./scripts/demo runs a guest there; see scripts/nested/README.md)";

/// Errors opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{KVM_DEVICE} does not exist: this host has no KVM; enable VT-x/AMD-V in the firmware and load the kvm_intel or kvm_amd module, or run Ember on a machine that provides {KVM_DEVICE}")]
    NoKvm,
    #[error("{KVM_DEVICE} is not accessible to this user: add the user to the group that owns it (usually 'kvm', e.g. `sudo usermod -aG kvm $USER`, then log in again) or run as root")]
    NoAccess,
    #[error("cannot open {KVM_DEVICE}: {0}")]
    Open(io::Error),
    #[error("{KVM_DEVICE} speaks KVM API version {0}, Ember needs version 12")]
    ApiVersion(i32),
    #[error("this host's KVM lacks {0}, which Ember needs")]
    MissingCap(&'static str),
}

/// Opens KVM and checks the capabilities Ember relies on.
pub fn open_kvm() -> Result<Kvm, HostError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => HostError::NoKvm,
        libc::EACCES | libc::EPERM => HostError::NoAccess,
        errno => HostError::Open(io::Error::from_raw_os_error(errno)),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(HostError::ApiVersion(version));
    }
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
        (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
        (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
        (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID (KVM_CAP_EXT_CPUID)"),
        (
            Cap::ImmediateExit,
            "immediate exit (KVM_CAP_IMMEDIATE_EXIT)",
        ),
    ] {
        if !kvm.check_extension(cap) {
            return Err(HostError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Classifies the host from `/sys/module` and `/proc/cpuinfo`.
pub fn detect_virt() -> HostVirt {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    classify(Path::new("/sys/module/kvm_pvm").exists(), &cpuinfo)
}

/// Classification from what was read (testable).
pub fn classify(pvm_module_loaded: bool, cpuinfo: &str) -> HostVirt {
    let has_hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_hw {
        HostVirt::Hardware
    } else if pvm_module_loaded {
        HostVirt::PvmOnly
    } else {
        HostVirt::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
        let amd = "flags\t\t: fpu svm\n";
        let plain = "flags\t\t: fpu sse hypervisor\n";
        assert_eq!(classify(false, intel), HostVirt::Hardware);
        assert_eq!(classify(true, amd), HostVirt::Hardware);
        assert_eq!(classify(true, plain), HostVirt::PvmOnly);
        assert_eq!(classify(false, plain), HostVirt::Unknown);
        assert_eq!(classify(false, "flags : vmxx svmm"), HostVirt::Unknown);
    }

    #[test]
    fn this_host_opens_kvm() {
        if !Path::new(KVM_DEVICE).exists() {
            eprintln!("SKIPPED this_host_opens_kvm: no {KVM_DEVICE} on this machine");
            return;
        }
        open_kvm().expect("KVM usable");
    }

    #[test]
    fn messages_tell_the_user_what_to_do() {
        assert!(HostError::NoKvm
            .to_string()
            .contains("load the kvm_intel or kvm_amd module"));
        assert!(HostError::NoAccess.to_string().contains("kvm"));
        assert!(PVM_WARNING.contains("standard Linux guest kernels cannot run"));
    }
}
