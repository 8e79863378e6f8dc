//! A vCPU's architectural state, as KVM hands it out: everything the guest
//! can observe of one CPU. Saved and restored by the vCPU's own thread,
//! which owns the `VcpuFd` (see the `Save`/`Restore` commands).
//!
//! The kernel structures travel as their raw bytes (kvm-bindings' `serde`
//! feature), as Firecracker's snapshots do; MSRs travel as `(index, value)`
//! pairs.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Everything the guest can see of one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's index (its APIC id).
    pub id: u8,
    /// The CPUID the VMM gave the vCPU (KVM_SET_CPUID2). Not what
    /// KVM_GET_CPUID2 reads back: on some hosts (PVM) KVM adds bits there
    /// that it does not report as supported, and the configuration is what
    /// a restore must set again.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR KVM reports as saveable and could read, in KVM's order.
    pub msrs: Vec<(u32, u64)>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state (the legacy 4 KiB KVM_GET_XSAVE area).
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// The guest TSC's frequency, 0 when KVM could not tell.
    pub tsc_khz: u32,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("id", &self.id)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("cpuid_entries", &self.cpuid.len())
            .field("msrs", &self.msrs.len())
            .field("mp_state", &self.mp_state.mp_state)
            .finish()
    }
}

/// Why a vCPU's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("cannot read the {what} of vCPU {id}: {source}")]
    Get {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot restore the {what} of vCPU {id}: {source}")]
    Set {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM refused MSR {index:#x} of vCPU {id} while restoring it")]
    Msr { id: u8, index: u32 },
    #[error("the state has {0} CPUID entries, more than KVM takes")]
    Cpuid(usize),
    #[error("this host's XSAVE area is {0} bytes, larger than the 4 KiB Ember saves (AMX is not supported)")]
    XsaveTooLarge(usize),
    #[error("the state of vCPU {found} was given to vCPU {id}")]
    WrongVcpu { id: u8, found: u8 },
}

/// The maximum number of CPUID entries a state may carry (KVM's own limit).
pub const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// Reads MSRs `indices` in chunks KVM accepts. KVM stops at the first MSR
/// it cannot read; that one is skipped (it is not saveable on this host)
/// and reading goes on after it.
fn read_msrs(fd: &VcpuFd, id: u8, indices: &[u32]) -> Result<Vec<(u32, u64)>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let n = rest.len().min(KVM_MAX_MSR_ENTRIES);
        let entries: Vec<kvm_msr_entry> = rest[..n]
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| VcpuStateError::Msr { id, index: rest[0] })?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Get {
                id,
                what: "MSRs",
                source,
            })?;
        let read = read.min(n);
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        if read < n {
            tracing::debug!(
                "vCPU {id}: MSR {:#x} is not readable; not saved",
                rest[read]
            );
        }
        // Past what was read, and past the one KVM refused, if any.
        rest = &rest[(read + 1).min(n)..];
    }
    Ok(out)
}

/// Reads the whole state of a vCPU, whose CPUID was set to `cpuid`. The
/// vCPU must not be running.
pub fn save(
    fd: &VcpuFd,
    id: u8,
    cpuid: &[kvm_cpuid_entry2],
    msr_indices: &[u32],
) -> Result<VcpuState, VcpuStateError> {
    let get = |what: &'static str| move |source| VcpuStateError::Get { id, what, source };
    let cpuid = cpuid.to_vec();
    // The order of these reads does not matter; restore has an order.
    Ok(VcpuState {
        id,
        cpuid,
        mp_state: fd.get_mp_state().map_err(get("MP state"))?,
        regs: fd.get_regs().map_err(get("registers"))?,
        sregs: fd.get_sregs().map_err(get("special registers"))?,
        xsave: fd.get_xsave().map_err(get("XSAVE area"))?,
        xcrs: fd.get_xcrs().map_err(get("XCRs"))?,
        debug_regs: fd.get_debug_regs().map_err(get("debug registers"))?,
        lapic: fd.get_lapic().map_err(get("LAPIC"))?,
        msrs: read_msrs(fd, id, msr_indices)?,
        events: fd.get_vcpu_events().map_err(get("events"))?,
        tsc_khz: fd.get_tsc_khz().unwrap_or(0),
    })
}

/// Writes a saved state into a freshly created vCPU, in the order KVM
/// needs: CPUID first (MSRs and XSAVE are checked against it), the MP state
/// and registers, the FPU, the LAPIC, then MSRs (the TSC before the
/// TSC-deadline timer, as KVM lists them), and pending events last.
pub fn restore(fd: &VcpuFd, id: u8, s: &VcpuState) -> Result<(), VcpuStateError> {
    if s.id != id {
        return Err(VcpuStateError::WrongVcpu { id, found: s.id });
    }
    let set = |what: &'static str| move |source| VcpuStateError::Set { id, what, source };
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| VcpuStateError::Cpuid(s.cpuid.len()))?;
    fd.set_cpuid2(&cpuid).map_err(set("CPUID"))?;
    fd.set_mp_state(s.mp_state).map_err(set("MP state"))?;
    fd.set_regs(&s.regs).map_err(set("registers"))?;
    fd.set_sregs(&s.sregs).map_err(set("special registers"))?;
    // SAFETY: `s.xsave` is a whole `kvm_xsave` (4 KiB). The builder refuses
    // hosts whose XSAVE area is larger (`check_xsave_size`), so KVM reads
    // no byte past it.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(set("XSAVE area"))?;
    fd.set_xcrs(&s.xcrs).map_err(set("XCRs"))?;
    fd.set_debug_regs(&s.debug_regs)
        .map_err(set("debug registers"))?;
    fd.set_lapic(&s.lapic).map_err(set("LAPIC"))?;
    for chunk in s.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::Msr {
            id,
            index: chunk[0].0,
        })?;
        let written = fd.set_msrs(&msrs).map_err(set("MSRs"))?;
        if written < entries.len() {
            return Err(VcpuStateError::Msr {
                id,
                index: entries[written].index,
            });
        }
    }
    fd.set_vcpu_events(&s.events).map_err(set("events"))?;
    Ok(())
}

/// Refuses hosts whose XSAVE area does not fit the 4 KiB `kvm_xsave`.
pub fn check_xsave_size(kvm: &kvm_ioctls::Kvm) -> Result<(), VcpuStateError> {
    let size = kvm.check_extension_int(kvm_ioctls::Cap::Xsave2);
    let size = usize::try_from(size).unwrap_or(0);
    if size > std::mem::size_of::<kvm_xsave>() {
        return Err(VcpuStateError::XsaveTooLarge(size));
    }
    Ok(())
}
