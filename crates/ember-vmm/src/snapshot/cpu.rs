//! Can this host run the vCPUs a snapshot describes? The CPU vendor must be
//! the same, every CPUID feature bit the guest saw must be one this host's
//! KVM offers for the same topology, the XSAVE area must fit, and the TSC
//! must tick at the saved frequency (within 250 ppm, the tolerance NTP
//! absorbs) or KVM must be able to scale it.

use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::{Cap, Kvm};

use super::RestoreError;
use crate::builder::boot::vcpu_cpuid;
use crate::config::MachineInfo;
use crate::vcpu::{state::check_xsave_size, VcpuState};

/// Registers of CPUID leaves that list features: (leaf, subleaf, register).
const FEATURE_REGISTERS: &[(u32, u32, Reg)] = &[
    (0x1, 0, Reg::Ecx),
    (0x1, 0, Reg::Edx),
    (0x7, 0, Reg::Ebx),
    (0x7, 0, Reg::Ecx),
    (0x7, 0, Reg::Edx),
    (0x7, 1, Reg::Eax),
    (0xd, 0, Reg::Eax),
    (0xd, 1, Reg::Eax),
    (0x8000_0001, 0, Reg::Ecx),
    (0x8000_0001, 0, Reg::Edx),
    (0x8000_0008, 0, Reg::Ebx),
];

/// Names of well-known feature bits, for the message.
const NAMES: &[(u32, u32, Reg, u32, &str)] = &[
    (0x1, 0, Reg::Ecx, 0, "sse3"),
    (0x1, 0, Reg::Ecx, 9, "ssse3"),
    (0x1, 0, Reg::Ecx, 12, "fma"),
    (0x1, 0, Reg::Ecx, 19, "sse4.1"),
    (0x1, 0, Reg::Ecx, 20, "sse4.2"),
    (0x1, 0, Reg::Ecx, 25, "aes"),
    (0x1, 0, Reg::Ecx, 26, "xsave"),
    (0x1, 0, Reg::Ecx, 28, "avx"),
    (0x1, 0, Reg::Ecx, 30, "rdrand"),
    (0x7, 0, Reg::Ebx, 2, "sgx"),
    (0x7, 0, Reg::Ebx, 5, "avx2"),
    (0x7, 0, Reg::Ebx, 16, "avx512f"),
    (0x7, 0, Reg::Ebx, 18, "rdseed"),
    (0x7, 0, Reg::Ebx, 29, "sha"),
    (0x7, 0, Reg::Ecx, 9, "vaes"),
    (0x7, 0, Reg::Edx, 22, "amx-bf16"),
    (0x7, 0, Reg::Edx, 24, "amx-tile"),
    (0x7, 0, Reg::Edx, 25, "amx-int8"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    fn of(self, e: &kvm_cpuid_entry2) -> u32 {
        match self {
            Reg::Eax => e.eax,
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        }
    }
}

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, sub: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && (e.index == sub || (sub == 0 && e.flags & 1 == 0)))
}

fn vendor(entries: &[kvm_cpuid_entry2]) -> String {
    match find(entries, 0, 0) {
        Some(e) => {
            let bytes: Vec<u8> = [e.ebx, e.edx, e.ecx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .collect();
            String::from_utf8_lossy(&bytes)
                .trim_end_matches('\0')
                .to_string()
        }
        None => "an unknown vendor".to_string(),
    }
}

/// The feature bits `saved` has and `host` lacks, named.
pub fn missing_features(saved: &[kvm_cpuid_entry2], host: &[kvm_cpuid_entry2]) -> Vec<String> {
    let mut missing = Vec::new();
    for &(leaf, sub, reg) in FEATURE_REGISTERS {
        let Some(s) = find(saved, leaf, sub) else {
            continue;
        };
        let have = find(host, leaf, sub).map_or(0, |h| reg.of(h));
        let lack = reg.of(s) & !have;
        for bit in (0..32).filter(|b| lack & (1 << b) != 0) {
            let name = NAMES
                .iter()
                .find(|n| (n.0, n.1, n.2, n.3) == (leaf, sub, reg, bit))
                .map(|n| format!("{} (", n.4))
                .unwrap_or_default();
            let close = if name.is_empty() { "" } else { ")" };
            missing.push(format!(
                "{name}CPUID {leaf:#x}.{sub} {} bit {bit}{close}",
                reg.name()
            ));
        }
    }
    missing
}

/// Checks the vendor, the feature bits of every vCPU and the XSAVE size.
pub fn check_host(
    kvm: &Kvm,
    machine: &MachineInfo,
    vcpus: &[VcpuState],
) -> Result<(), RestoreError> {
    check_xsave_size(kvm).map_err(|e| RestoreError::Cpu(e.to_string()))?;
    for v in vcpus {
        let host = vcpu_cpuid(kvm, v.id, machine.vcpu_count, machine.smt)?;
        let (saved_vendor, host_vendor) = (vendor(&v.cpuid), vendor(&host));
        if saved_vendor != host_vendor {
            return Err(RestoreError::Cpu(format!(
                "the snapshot was taken on a {saved_vendor} CPU and this host's CPU is {host_vendor}"
            )));
        }
        let missing = missing_features(&v.cpuid, &host);
        if !missing.is_empty() {
            return Err(RestoreError::Cpu(format!(
                "the guest's vCPU {} uses CPU features this host's KVM does not offer: {}",
                v.id,
                missing.join(", ")
            )));
        }
    }
    Ok(())
}

/// What to do about the TSC frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscPlan {
    /// Same frequency (within tolerance), or unknown on either side.
    Keep,
    /// Different, and KVM can scale: set every vCPU to the saved one.
    Scale(u32),
}

/// Tolerance in parts per million.
pub const TSC_TOLERANCE_PPM: u64 = 250;

/// Compares the saved TSC frequency with this host's.
pub fn tsc_plan(kvm: &Kvm, saved_khz: u32, host_khz: Option<u32>) -> Result<TscPlan, RestoreError> {
    let Some(host_khz) = host_khz.filter(|&k| k != 0) else {
        return Ok(TscPlan::Keep);
    };
    if saved_khz == 0 {
        return Ok(TscPlan::Keep);
    }
    let diff = u64::from(saved_khz.abs_diff(host_khz));
    if diff * 1_000_000 <= u64::from(saved_khz) * TSC_TOLERANCE_PPM {
        return Ok(TscPlan::Keep);
    }
    if kvm.check_extension(Cap::TscControl) {
        return Ok(TscPlan::Scale(saved_khz));
    }
    Err(RestoreError::Tsc {
        saved_khz,
        host_khz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, r: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: r[0],
            ebx: r[1],
            ecx: r[2],
            edx: r[3],
            ..Default::default()
        }
    }

    #[test]
    fn missing_bits_are_named() {
        let host = vec![leaf(7, 0, [0, 1 << 5, 0, 0]), leaf(1, 0, [0, 0, 0, 0])];
        let saved = vec![leaf(7, 0, [0, (1 << 5) | (1 << 2) | (1 << 3), 0, 0])];
        let m = missing_features(&saved, &host);
        assert_eq!(
            m,
            vec![
                "sgx (CPUID 0x7.0 EBX bit 2)".to_string(),
                "CPUID 0x7.0 EBX bit 3".to_string()
            ]
        );
        assert!(missing_features(&host, &host).is_empty());
    }
}
