//! The KVM virtual machine: its fd, guest memory slots, the in-kernel
//! irqchip and PIT, the irqfd/ioeventfd plumbing devices use, and the
//! VM-wide state a snapshot saves (PICs, IOAPIC, PIT, kvmclock).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use serde::{Deserialize, Serialize};
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
    #[error("cannot warm up memory slots: {0}")]
    Warmup(String),
    #[error("clock_realtime was asked, but the snapshot's kvmclock carries no host realtime stamp (its host's KVM did not give one)")]
    NoRealtimeStamp,
    #[error("cannot register guest memory region {slot} with KVM: {source}")]
    MemorySlot {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

/// The VM-wide state KVM keeps in the kernel.
#[derive(Clone, Serialize, Deserialize)]
pub struct KvmVmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    /// kvmclock, with the host's realtime stamp when KVM gives one.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for KvmVmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVmState")
            .field("clock", &self.clock.clock)
            .field("clock_flags", &self.clock.flags)
            .finish()
    }
}

/// A KVM VM with its guest memory registered.
pub struct Vm {
    fd: VmFd,
    memory: GuestMemoryMmap,
}

/// A KVM VM created ahead of need, before its guest memory is known: the
/// VM fd, the TSS and identity-map addresses, the in-kernel irqchip and PIT,
/// and KVM's memory-slot machinery warmed up.
///
/// The first memory-slot change of a new VM waits for a kernel grace period
/// (measured: 4 to 8 ms, whatever the slot's size), and creating the PIT can
/// wait as long. A shell made on another thread while the process does
/// other work (parsing a snapshot, waiting for an API client) takes those
/// waits off the path to the first guest instruction: registering guest
/// memory in a warmed VM takes about 0.1 ms.
pub struct VmShell {
    fd: VmFd,
}

/// The slot and address of the page used to warm up memory slots: never a
/// guest's, and removed again at once.
const WARMUP_SLOT: u32 = 64;
const WARMUP_GPA: u64 = 0xffff_f000;

impl VmShell {
    /// Creates the VM, its irqchip and PIT, and adds and removes a one-page
    /// memory slot.
    pub fn create(kvm: &Kvm) -> Result<Self, VmError> {
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
        let page =
            vm_memory::MmapRegion::<()>::new(4096).map_err(|e| VmError::Warmup(e.to_string()))?;
        let mut r = kvm_userspace_memory_region {
            slot: WARMUP_SLOT,
            flags: 0,
            guest_phys_addr: WARMUP_GPA,
            memory_size: 4096,
            userspace_addr: page.as_ptr() as u64,
        };
        // SAFETY: `page` is a live private mapping of 4 KiB that outlives
        // the slot: the slot is removed (size 0) right below, before `page`
        // is dropped, and no vCPU exists yet to touch it.
        unsafe { fd.set_user_memory_region(r) }.map_err(setup("warm up memory slots"))?;
        r.memory_size = 0;
        // SAFETY: removing the slot added above; KVM keeps no reference.
        unsafe { fd.set_user_memory_region(r) }.map_err(setup("warm up memory slots"))?;
        Ok(Self { fd })
    }

    /// Creates a shell on a new thread, for [`Vm::with_shell`] later.
    pub fn spawn() -> std::thread::JoinHandle<Result<VmShell, VmError>> {
        std::thread::spawn(|| {
            let kvm = Kvm::new().map_err(VmError::Create)?;
            // The host's CPUID, cached for the builder while we are here.
            let _ = crate::builder::boot::supported_cpuid(&kvm);
            VmShell::create(&kvm)
        })
    }
}

impl Vm {
    /// Creates the VM, the irqchip and PIT, and registers `memory`.
    pub fn new(kvm: &Kvm, memory: GuestMemoryMmap) -> Result<Self, VmError> {
        Self::with_shell(VmShell::create(kvm)?, memory)
    }

    /// Registers `memory` in a VM created ahead ([`VmShell`]).
    pub fn with_shell(shell: VmShell, memory: GuestMemoryMmap) -> Result<Self, VmError> {
        let fd = shell.fd;
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

    /// Reads the irqchip, PIT and clock. The vCPUs must be paused.
    pub fn save_state(&self) -> Result<KvmVmState, VmError> {
        let get = |what| move |source| VmError::Setup { what, source };
        let chip = |id| -> Result<kvm_irqchip, VmError> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut c)
                .map_err(get("read the irqchip"))?;
            Ok(c)
        };
        Ok(KvmVmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(get("read the PIT"))?,
            clock: self.fd.get_clock().map_err(get("read kvmclock"))?,
        })
    }

    /// Writes a saved irqchip, PIT and clock into this (new) VM. With
    /// `clock_realtime`, kvmclock is advanced by the host's wall-clock time
    /// since the snapshot (KVM_CLOCK_REALTIME); otherwise it resumes where
    /// it stopped.
    pub fn restore_state(&self, s: &KvmVmState, clock_realtime: bool) -> Result<(), VmError> {
        let set = |what| move |source| VmError::Setup { what, source };
        // The chip ids come from this code, not from the file.
        for (id, chip) in [
            (KVM_IRQCHIP_PIC_MASTER, &s.pic_master),
            (KVM_IRQCHIP_PIC_SLAVE, &s.pic_slave),
            (KVM_IRQCHIP_IOAPIC, &s.ioapic),
        ] {
            let mut c = *chip;
            c.chip_id = id;
            self.fd
                .set_irqchip(&c)
                .map_err(set("restore the irqchip"))?;
        }
        let mut pit = s.pit;
        pit.flags &=
            kvm_bindings::KVM_PIT_FLAGS_HPET_LEGACY | kvm_bindings::KVM_PIT_FLAGS_SPEAKER_DATA_ON;
        self.fd.set_pit2(&pit).map_err(set("restore the PIT"))?;
        let mut clock = kvm_clock_data {
            clock: s.clock.clock,
            ..Default::default()
        };
        if clock_realtime {
            if s.clock.flags & KVM_CLOCK_REALTIME == 0 {
                return Err(VmError::NoRealtimeStamp);
            }
            clock.flags = KVM_CLOCK_REALTIME;
            clock.realtime = s.clock.realtime;
        }
        self.fd.set_clock(&clock).map_err(set("restore kvmclock"))?;
        Ok(())
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
