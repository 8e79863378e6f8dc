//! The KVM virtual machine: its fd, guest memory slots, the in-kernel
//! irqchip and PIT, and the irqfd/ioeventfd plumbing devices use.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};
use crate::GuestMemoryMmap;

/// Errors creating or wiring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot create the KVM VM: {0}")]
    Create(kvm_ioctls::Error),
    #[error("cannot {what}: {source}")]
    Setup {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot register guest memory region {slot} with KVM: {source}")]
    MemorySlot {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

/// A KVM VM with its guest memory registered.
pub struct Vm {
    fd: VmFd,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// Creates the VM, the irqchip and PIT, and registers `memory`.
    pub fn new(kvm: &Kvm, memory: GuestMemoryMmap) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        let setup = |what| move |source| VmError::Setup { what, source };
        fd.set_tss_address(KVM_TSS_START as usize)
            .map_err(setup("set the TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_START)
            .map_err(setup("set the identity map address"))?;
        fd.create_irq_chip()
            .map_err(setup("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(setup("create the in-kernel PIT"))?;
        for (slot, region) in memory.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping owned by `memory`, which
            // this Vm keeps alive for as long as the VM fd exists.
            unsafe { fd.set_user_memory_region(r) }.map_err(|source| VmError::MemorySlot {
                slot: slot as u32,
                source,
            })?;
        }
        Ok(Self { fd, memory })
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Makes writes to `evt` raise interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Setup {
                what: "register an irqfd",
                source,
            })
    }

    /// Makes guest writes of `datamatch` to `addr` signal `evt` in-kernel.
    pub fn register_ioeventfd(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &addr, datamatch)
            .map_err(|source| VmError::Setup {
                what: "register an ioeventfd",
                source,
            })
    }
}
