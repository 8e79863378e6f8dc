//! CPUID normalization: turn what KVM supports into what each vCPU reports.
//!
//! Starting from `KVM_GET_SUPPORTED_CPUID`, every vCPU gets its own APIC id
//! and a consistent topology (one socket, `count` logical CPUs, one or two
//! threads per core), the hypervisor bit and KVM's paravirtual leaves, and
//! loses the features the VMM cannot back (MONITOR/MWAIT, nested VMX/SVM,
//! the PMU, thermal and power management, performance capabilities).

use kvm_bindings::kvm_cpuid_entry2;

/// The CPU vendor, from leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// What a vCPU's CPUID must say about itself.
#[derive(Debug, Clone, Copy)]
pub struct VcpuTopology {
    /// This vCPU's index, which is also its APIC id.
    pub id: u8,
    /// Number of vCPUs.
    pub count: u8,
    /// Two threads per core.
    pub smt: bool,
}

impl VcpuTopology {
    fn threads_per_core(&self) -> u32 {
        if self.smt && self.count > 1 {
            2
        } else {
            1
        }
    }

    fn cores(&self) -> u32 {
        u32::from(self.count).div_ceil(self.threads_per_core())
    }
}

/// Bits needed to number `n` things (ceil(log2 n)).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]; // "KVMKVMKVM\0\0\0"

// Leaf 1.
const L1_ECX_MONITOR: u32 = 1 << 3;
const L1_ECX_VMX: u32 = 1 << 5;
const L1_ECX_PDCM: u32 = 1 << 15;
const L1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const L1_ECX_HYPERVISOR: u32 = 1 << 31;
const L1_EDX_HTT: u32 = 1 << 28;
// Leaf 6.
const L6_EAX_ARAT: u32 = 1 << 2;
// Leaf 0x8000_0001.
const LE1_ECX_SVM: u32 = 1 << 2;
const LE1_ECX_CMP_LEGACY: u32 = 1 << 1;

/// Reads the vendor from leaf 0.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    match entries.iter().find(|e| e.function == 0) {
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e) => {
            Vendor::Intel
        }
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Normalizes `entries` (a copy of the supported CPUID) for one vCPU.
/// `tsc_deadline` says whether KVM can emulate the TSC-deadline timer.
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, topo: VcpuTopology, tsc_deadline: bool) {
    let vendor = vendor(entries);
    let apic_id = u32::from(topo.id);
    let count = u32::from(topo.count);
    let threads = topo.threads_per_core();
    let cores = topo.cores();

    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (count.min(255) << 16);
                e.ecx &= !(L1_ECX_MONITOR | L1_ECX_VMX | L1_ECX_PDCM | L1_ECX_TSC_DEADLINE);
                e.ecx |= L1_ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= L1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= L1_EDX_HTT;
                } else {
                    e.edx &= !L1_EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters: who shares each cache.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count } else { threads };
                e.eax &= 0x3ff;
                if e.eax & 0x1f != 0 {
                    e.eax |= ((cores.max(1) - 1) & 0x3f) << 26;
                    e.eax |= ((sharing.max(1) - 1) & 0xfff) << 14;
                }
            }
            // MONITOR/MWAIT parameters: not offered.
            0x5 => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            0x6 => {
                let arat = e.eax & L6_EAX_ARAT;
                (e.eax, e.ebx, e.ecx, e.edx) = (arat, 0, 0, 0);
            }
            // Architectural performance monitoring: no PMU.
            0xa => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            0xb | 0x1f => {
                let (shift, logical, level_type) = match e.index {
                    0 => (bits_for(threads), threads, 1),
                    1 => (bits_for(threads) + bits_for(cores), count, 2),
                    _ => (0, 0, 0),
                };
                e.eax = shift;
                e.ebx = logical;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = apic_id;
            }
            0x4000_0000 => {
                e.eax = e.eax.max(0x4000_0001);
                (e.ebx, e.ecx, e.edx) = (KVM_SIGNATURE[0], KVM_SIGNATURE[1], KVM_SIGNATURE[2]);
            }
            0x8000_0001 => {
                e.ecx &= !LE1_ECX_SVM;
                if vendor == Vendor::Amd {
                    // One package: legacy core-count semantics only with >1 core.
                    if cores > 1 {
                        e.ecx |= LE1_ECX_CMP_LEGACY;
                    } else {
                        e.ecx &= !LE1_ECX_CMP_LEGACY;
                    }
                }
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                e.ecx = ((bits_for(count).max(1)) << 12) | ((count.max(1) - 1) & 0xff);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                e.eax = apic_id;
                e.ebx = ((threads - 1) << 8) | (apic_id / threads);
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }

    // Make sure the KVM leaves exist even when KVM did not list them.
    if !entries.iter().any(|e| e.function == 0x4000_0000) {
        entries.push(kvm_cpuid_entry2 {
            function: 0x4000_0000,
            eax: 0x4000_0001,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
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

    fn intel_supported() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            leaf(1, 0, [0x806c1, 0x0010_0800, 0xffff_ffff, 0xffff_ffff]),
            leaf(4, 0, [0x0000_0121, 0, 0, 0]),
            leaf(4, 3, [0x0000_0163, 0, 0, 0]),
            leaf(5, 0, [0x40, 0x40, 3, 0x1120]),
            leaf(6, 0, [0xffff, 1, 9, 0]),
            leaf(0xa, 0, [0x0704_3008, 0, 0, 0]),
            leaf(0xb, 0, [0, 0, 0, 0]),
            leaf(0xb, 1, [0, 0, 0, 0]),
            leaf(0x8000_0001, 0, [0, 0, 0xffff_ffff, 0]),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn apic_id_and_count_in_leaf_1() {
        let mut v = intel_supported();
        normalize(
            &mut v,
            VcpuTopology {
                id: 3,
                count: 4,
                smt: false,
            },
            true,
        );
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & L1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & (L1_ECX_MONITOR | L1_ECX_VMX | L1_ECX_PDCM), 0);
        assert_ne!(l1.ecx & L1_ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & L1_EDX_HTT, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt_and_no_deadline_without_kvm_support() {
        let mut v = intel_supported();
        normalize(
            &mut v,
            VcpuTopology {
                id: 0,
                count: 1,
                smt: false,
            },
            false,
        );
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.edx & L1_EDX_HTT, 0);
        assert_eq!(l1.ecx & L1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn x2apic_topology_leaves() {
        let mut v = intel_supported();
        normalize(
            &mut v,
            VcpuTopology {
                id: 5,
                count: 6,
                smt: true,
            },
            true,
        );
        let smt = find(&v, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (1, 2, 0x100, 5));
        let core = find(&v, 0xb, 1);
        // 3 cores need 2 bits, plus 1 SMT bit.
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
    }

    #[test]
    fn cache_sharing_in_leaf_4() {
        let mut v = intel_supported();
        normalize(
            &mut v,
            VcpuTopology {
                id: 0,
                count: 4,
                smt: false,
            },
            true,
        );
        let l1d = find(&v, 4, 0);
        assert_eq!(l1d.eax >> 26, 3, "4 cores per package");
        assert_eq!((l1d.eax >> 14) & 0xfff, 0, "L1 private to a thread");
        let l3 = find(&v, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 shared by all 4");
    }

    #[test]
    fn unbacked_features_are_removed() {
        let mut v = intel_supported();
        normalize(
            &mut v,
            VcpuTopology {
                id: 0,
                count: 1,
                smt: false,
            },
            true,
        );
        let l5 = find(&v, 5, 0);
        assert_eq!((l5.eax, l5.ebx, l5.ecx, l5.edx), (0, 0, 0, 0));
        let l6 = find(&v, 6, 0);
        assert_eq!((l6.eax, l6.ebx, l6.ecx), (L6_EAX_ARAT, 0, 0));
        assert_eq!(find(&v, 0xa, 0).eax, 0);
        assert_eq!(find(&v, 0x8000_0001, 0).ecx & LE1_ECX_SVM, 0);
    }

    #[test]
    fn kvm_leaf_is_present_with_its_signature() {
        let mut v = intel_supported();
        normalize(
            &mut v,
            VcpuTopology {
                id: 0,
                count: 1,
                smt: false,
            },
            true,
        );
        let k = find(&v, 0x4000_0000, 0);
        let mut sig = Vec::new();
        for r in [k.ebx, k.ecx, k.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig[..9], b"KVMKVMKVM");
        assert!(k.eax >= 0x4000_0001);
    }

    #[test]
    fn amd_topology_leaves() {
        let mut v = vec![
            leaf(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            leaf(1, 0, [0, 0, 0, 0]),
            leaf(0x8000_0001, 0, [0, 0, LE1_ECX_SVM | (1 << 22), 0]),
            leaf(0x8000_0008, 0, [0x3030, 0, 0, 0]),
            leaf(0x8000_001e, 0, [0, 0, 0, 0]),
        ];
        assert_eq!(vendor(&v), Vendor::Amd);
        normalize(
            &mut v,
            VcpuTopology {
                id: 2,
                count: 4,
                smt: true,
            },
            false,
        );
        let e8 = find(&v, 0x8000_0008, 0);
        assert_eq!(e8.ecx & 0xff, 3);
        let e1e = find(&v, 0x8000_001e, 0);
        assert_eq!(e1e.eax, 2);
        assert_eq!((e1e.ebx >> 8) & 0xff, 1, "two threads per core");
        assert_eq!(e1e.ebx & 0xff, 1, "core id");
        let ext = find(&v, 0x8000_0001, 0);
        assert_eq!(ext.ecx & LE1_ECX_SVM, 0);
        assert_ne!(ext.ecx & LE1_ECX_CMP_LEGACY, 0);
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(bits_for), [0, 1, 2, 2, 3, 5]);
    }
}
