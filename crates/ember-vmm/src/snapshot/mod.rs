//! Snapshots: everything the guest can see, saved to two files and restored
//! in a new process.
//!
//! - The **state file** ([`MicrovmState`] in `ember-state`'s envelope:
//!   magic, format version, checksum): the machine's shape, every vCPU,
//!   the VM-wide KVM state, every device with where it sits, and what
//!   identifies the memory file.
//! - The **memory file** ([`crate::memfile`]): guest RAM, sparse, mapped
//!   `MAP_PRIVATE` on restore.
//!
//! Host resources are not state: a restore opens the disks, TAPs and the
//! vsock socket again (the TAP and socket may be overridden), starts new
//! threads, and the guest's vsock connections to the host are reset.
//!
//! Both files are hostile input. [`load_state`] checks the envelope, decodes
//! with the decoder of the file's version, then [`MicrovmState::check`]s
//! every count and size before anything is created from it.

pub mod cpu;
mod create;
pub mod restore;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use create::{SnapshotError, SnapshotInfo};
pub use restore::{restore, restore_in, RestoreError, RestoreOptions};

use crate::config::{MachineInfo, MAX_VCPUS};
use crate::device_manager::LegacyState;
use crate::memfile::MemoryFileInfo;
use crate::memory::{self, MIN_MEM_MIB};
use crate::vcpu::state::MAX_CPUID_ENTRIES;
use crate::vcpu::VcpuState;
use crate::virtio_devices::DeviceRecord;
use crate::vm::KvmVmState;

/// The largest state file read: a 32-vCPU guest with many devices takes
/// well under 1 MiB.
pub const MAX_STATE_BYTES: u64 = 16 << 20;
/// The most MSRs a vCPU state may carry.
pub const MAX_MSRS: usize = 4096;
/// The most virtio devices a state may carry (one per virtio IRQ).
pub const MAX_DEVICES: usize = 19;

/// What identifies the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryState {
    /// Bytes of guest RAM (the memory file's size).
    pub size: u64,
    /// The memory file's digest.
    pub digest: u64,
    /// Pages of data in it (not holes).
    pub data_pages: u64,
}

impl From<MemoryFileInfo> for MemoryState {
    fn from(i: MemoryFileInfo) -> Self {
        Self {
            size: i.size,
            digest: i.digest,
            data_pages: i.data_pages,
        }
    }
}

impl From<MemoryState> for MemoryFileInfo {
    fn from(m: MemoryState) -> Self {
        Self {
            size: m.size,
            digest: m.digest,
            data_pages: m.data_pages,
        }
    }
}

/// Everything a snapshot saves but guest RAM (format version 1).
#[derive(Serialize, Deserialize)]
pub struct MicrovmState {
    pub machine: MachineInfo,
    pub memory: MemoryState,
    pub vm: KvmVmState,
    pub vcpus: Vec<VcpuState>,
    pub legacy: LegacyState,
    pub virtio: Vec<DeviceRecord>,
}

impl std::fmt::Debug for MicrovmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicrovmState")
            .field("machine", &self.machine)
            .field("memory", &self.memory)
            .field("vcpus", &self.vcpus.len())
            .field("virtio", &self.virtio.len())
            .finish()
    }
}

fn invalid(msg: String) -> RestoreError {
    RestoreError::Invalid(msg)
}

impl MicrovmState {
    /// Checks that the state is self-consistent and fits this Ember, before
    /// anything is built from it.
    pub fn check(&self) -> Result<(), RestoreError> {
        let m = &self.machine;
        if m.vcpu_count == 0 || m.vcpu_count > MAX_VCPUS {
            return Err(invalid(format!(
                "it describes {} vCPUs; Ember runs 1 to {MAX_VCPUS}",
                m.vcpu_count
            )));
        }
        if self.vcpus.len() != usize::from(m.vcpu_count) {
            return Err(invalid(format!(
                "it describes a machine of {} vCPUs but holds the state of {}",
                m.vcpu_count,
                self.vcpus.len()
            )));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if usize::from(v.id) != i {
                return Err(invalid(format!(
                    "vCPU state {i} claims to be vCPU {}",
                    v.id
                )));
            }
            if v.cpuid.len() > MAX_CPUID_ENTRIES {
                return Err(invalid(format!(
                    "vCPU {i} has {} CPUID entries (at most {MAX_CPUID_ENTRIES})",
                    v.cpuid.len()
                )));
            }
            if v.msrs.len() > MAX_MSRS {
                return Err(invalid(format!(
                    "vCPU {i} has {} MSRs (at most {MAX_MSRS})",
                    v.msrs.len()
                )));
            }
        }
        if m.mem_size_mib < MIN_MEM_MIB || m.mem_size_mib > memory::MAX_MEM_MIB {
            return Err(invalid(format!(
                "it describes {} MiB of guest memory",
                m.mem_size_mib
            )));
        }
        let bytes = (m.mem_size_mib as u64) << 20;
        if self.memory.size != bytes {
            return Err(invalid(format!(
                "it describes {} MiB of guest memory but a memory file of {} bytes",
                m.mem_size_mib, self.memory.size
            )));
        }
        if self.memory.data_pages > bytes / crate::memfile::PAGE {
            return Err(invalid(
                "its memory file has more pages than the guest".into(),
            ));
        }
        if self.virtio.len() > MAX_DEVICES {
            return Err(invalid(format!(
                "it has {} virtio devices (at most {MAX_DEVICES})",
                self.virtio.len()
            )));
        }
        Ok(())
    }
}

/// Reads, checks and decodes a state file.
pub fn load_state(path: &Path) -> Result<MicrovmState, RestoreError> {
    let bytes = ember_state::read_capped(path, MAX_STATE_BYTES)?;
    let state = decode_state(&bytes)?;
    Ok(state)
}

/// Checks and decodes the bytes of a state file: the envelope, the payload
/// with the decoder of its version, then [`MicrovmState::check`].
pub fn decode_state(bytes: &[u8]) -> Result<MicrovmState, RestoreError> {
    let env = ember_state::open(bytes)?;
    let state: MicrovmState = match env.version {
        // Later versions decode their own layout here and convert.
        1 => env.decode()?,
        v => {
            return Err(RestoreError::State(ember_state::StateError::BadHeader(
                format!("no decoder for format version {v}"),
            )))
        }
    };
    state.check()?;
    Ok(state)
}
