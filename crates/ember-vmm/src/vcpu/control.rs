//! The VMM thread's side of the vCPU threads: start, pause, resume, stop,
//! and save or restore their state (answered by each vCPU's own thread).

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::Killable;

use super::state::VcpuStateError;
use super::{kick, Vcpu, VcpuCommand, VcpuError, VcpuReporter, VcpuResponse, VcpuState};

/// How long a vCPU thread may take to answer a command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors controlling vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuControlError {
    #[error("vCPU {0} did not answer within {RESPONSE_TIMEOUT:?}")]
    Timeout(u8),
    #[error("vCPU {0}'s thread is gone")]
    Gone(u8),
    #[error("vCPU {vcpu} answered {got}, expected {want}")]
    Unexpected {
        vcpu: u8,
        got: &'static str,
        want: &'static str,
    },
    #[error(transparent)]
    State(#[from] VcpuStateError),
    #[error("{count} vCPU states were given for {vcpus} vCPUs")]
    StateCount { count: usize, vcpus: usize },
}

struct Handle {
    id: u8,
    commands: Sender<VcpuCommand>,
    responses: Receiver<VcpuResponse>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    fn send(&self, cmd: VcpuCommand) -> Result<(), VcpuControlError> {
        self.commands
            .send(cmd)
            .map_err(|_| VcpuControlError::Gone(self.id))?;
        if let Some(t) = &self.thread {
            // A failed kick means the thread already exited.
            let _ = t.kill(kick::kick_signal());
        }
        Ok(())
    }

    fn receive(&self, deadline: Instant) -> Result<VcpuResponse, VcpuControlError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.responses.recv_timeout(left) {
            Ok(got) => Ok(got),
            Err(RecvTimeoutError::Timeout) => Err(VcpuControlError::Timeout(self.id)),
            Err(RecvTimeoutError::Disconnected) => Err(VcpuControlError::Gone(self.id)),
        }
    }

    fn unexpected(&self, got: &VcpuResponse, want: &'static str) -> VcpuControlError {
        VcpuControlError::Unexpected {
            vcpu: self.id,
            got: got.name(),
            want,
        }
    }

    fn expect(&self, want: &'static str, deadline: Instant) -> Result<(), VcpuControlError> {
        let got = self.receive(deadline)?;
        if got.name() == want {
            Ok(())
        } else {
            Err(self.unexpected(&got, want))
        }
    }
}

/// All the vCPU threads of a VM.
pub struct Vcpus {
    handles: Vec<Handle>,
}

impl Vcpus {
    /// Starts one thread per vCPU, running the guest, or `parked` until a
    /// restore and a resume.
    pub fn start(
        vcpus: Vec<Vcpu>,
        reporter: VcpuReporter,
        parked: bool,
    ) -> Result<Self, VcpuError> {
        kick::install_handler().map_err(VcpuError::Signal)?;
        let mut handles = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let id = vcpu.id();
            let (cmd_tx, cmd_rx) = mpsc::channel();
            let (resp_tx, resp_rx) = mpsc::channel();
            let reporter = reporter.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .stack_size(128 * 1024)
                .spawn(move || vcpu.run_thread(cmd_rx, resp_tx, reporter, parked))
                .map_err(|source| VcpuError::Spawn { id, source })?;
            handles.push(Handle {
                id,
                commands: cmd_tx,
                responses: resp_rx,
                thread: Some(thread),
            });
        }
        Ok(Self { handles })
    }

    /// Number of vCPUs.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    fn broadcast(
        &self,
        cmd: fn() -> VcpuCommand,
        want: &'static str,
    ) -> Result<(), VcpuControlError> {
        for h in &self.handles {
            h.send(cmd())?;
        }
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        for h in &self.handles {
            h.expect(want, deadline)?;
        }
        Ok(())
    }

    /// Pauses every vCPU; returns once all are parked.
    pub fn pause(&self) -> Result<(), VcpuControlError> {
        self.broadcast(|| VcpuCommand::Pause, "Paused")
    }

    /// Resumes every vCPU.
    pub fn resume(&self) -> Result<(), VcpuControlError> {
        self.broadcast(|| VcpuCommand::Resume, "Resumed")
    }

    /// Reads every vCPU's state, in vCPU order. The vCPUs must be paused.
    pub fn save(&self) -> Result<Vec<VcpuState>, VcpuControlError> {
        for h in &self.handles {
            h.send(VcpuCommand::Save)?;
        }
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        let mut states = Vec::with_capacity(self.handles.len());
        for h in &self.handles {
            match h.receive(deadline)? {
                VcpuResponse::Saved(r) => states.push(*r?),
                other => return Err(h.unexpected(&other, "Saved")),
            }
        }
        Ok(states)
    }

    /// Writes `states` (one per vCPU, in order) into the paused vCPUs.
    pub fn restore(&self, states: Vec<VcpuState>) -> Result<(), VcpuControlError> {
        if states.len() != self.handles.len() {
            return Err(VcpuControlError::StateCount {
                count: states.len(),
                vcpus: self.handles.len(),
            });
        }
        for (h, s) in self.handles.iter().zip(states) {
            h.send(VcpuCommand::Restore(Box::new(s)))?;
        }
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        let mut first_error = None;
        for h in &self.handles {
            match h.receive(deadline)? {
                VcpuResponse::Restored(Ok(())) => {}
                VcpuResponse::Restored(Err(e)) => {
                    first_error.get_or_insert(VcpuControlError::State(e));
                }
                other => return Err(h.unexpected(&other, "Restored")),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops and joins every vCPU thread. Idempotent.
    pub fn stop(&mut self) {
        for h in &self.handles {
            let _ = h.send(VcpuCommand::Stop);
        }
        for h in &mut self.handles {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Vcpus {
    fn drop(&mut self) {
        self.stop();
    }
}
