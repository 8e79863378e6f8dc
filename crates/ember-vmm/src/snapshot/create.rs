//! Creating a full snapshot of a paused VM.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{MemoryState, MicrovmState};
use crate::memfile::{self, MemFileError, MemoryFileInfo};
use crate::vcpu::VcpuControlError;
use crate::vm::VmError;
use crate::vmm::{RunState, Vmm};

/// Why a snapshot could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the microVM is not running")]
    NotRunning,
    #[error("the microVM must be paused to be snapshotted")]
    NotPaused,
    #[error("cannot save the vCPUs: {0}")]
    Vcpus(#[from] VcpuControlError),
    #[error("cannot save the VM: {0}")]
    Vm(#[from] VmError),
    #[error("cannot write the memory file: {0}")]
    Memory(#[from] MemFileError),
    #[error("cannot write the snapshot: {0}")]
    State(#[from] ember_state::StateError),
}

/// What a snapshot took.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotInfo {
    /// Size of the state file.
    pub state_bytes: u64,
    /// The memory file.
    pub memory: MemoryFileInfo,
    /// Time to write both.
    pub duration: Duration,
}

impl Vmm {
    /// Writes a full snapshot: the state to `state_path`, guest RAM to
    /// `mem_path`. The VM must be paused; it stays paused. Runs on the
    /// thread that runs the devices, so devices are quiet meanwhile.
    pub fn snapshot(
        &mut self,
        state_path: &Path,
        mem_path: &Path,
    ) -> Result<SnapshotInfo, SnapshotError> {
        if self.exit.is_some() {
            return Err(SnapshotError::NotRunning);
        }
        if self.state != RunState::Paused {
            return Err(SnapshotError::NotPaused);
        }
        let start = Instant::now();
        let vcpus = self.vcpus.save()?;
        let vm = self.vm.save_state()?;
        let legacy = self.devices.save_legacy();
        // Devices finish their in-flight I/O (into guest memory) and give
        // back held buffers before memory is written.
        let virtio = self.virtio.save();
        let memory = memfile::write(self.vm.memory(), mem_path)?;
        let state = MicrovmState {
            machine: self.info,
            memory: MemoryState::from(memory),
            vm,
            vcpus,
            legacy,
            virtio,
        };
        let bytes = ember_state::seal(&state)?;
        ember_state::write_atomically(state_path, &bytes)?;
        let info = SnapshotInfo {
            state_bytes: bytes.len() as u64,
            memory,
            duration: start.elapsed(),
        };
        tracing::info!(
            "snapshot: {} bytes of state, {} of {} pages of memory, {:?}",
            info.state_bytes,
            memory.data_pages,
            memory.size / memfile::PAGE,
            info.duration
        );
        Ok(info)
    }
}
