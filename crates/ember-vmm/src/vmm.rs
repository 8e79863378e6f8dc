//! A running microVM: its vCPU threads, devices and exit handling.
//!
//! `Vmm` is an event-loop subscriber. It watches the guest's reset,
//! power-off and panic events and the vCPU threads' reports, and records
//! the first reason the VM must end as a [`VmExit`]. The control thread
//! runs the loop until [`Vmm::exit`] returns one.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::machine::Machine;
use crate::config::{MachineInfo, RateLimiterConfig};
use crate::device_manager::DeviceManager;
use crate::vcpu::{VcpuControlError, VcpuFault, VcpuReport, VcpuStop, Vcpus};
use crate::virtio_devices::DeviceRegistry;
use crate::vm::Vm;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest rebooted (i8042 reset, ACPI reset, KVM reset event).
    Reboot,
    /// The guest powered off (ACPI S5, KVM shutdown event).
    PowerOff,
    /// The guest kernel panicked (pvpanic or KVM crash event).
    Panic { detail: String },
    /// A vCPU faulted.
    Fault(VcpuFault),
    /// The VMM was asked to stop.
    Stopped,
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Reboot => write!(f, "the guest rebooted"),
            VmExit::PowerOff => write!(f, "the guest powered off"),
            VmExit::Panic { detail } => write!(f, "the guest kernel panicked ({detail})"),
            VmExit::Fault(fault) => write!(f, "{fault}"),
            VmExit::Stopped => write!(f, "the VMM was stopped"),
        }
    }
}

/// The state a running VM is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
}

const TOKEN_RESET: u32 = 1;
const TOKEN_POWER_OFF: u32 = 2;
const TOKEN_PANIC: u32 = 3;
const TOKEN_VCPU: u32 = 4;

/// Errors controlling a running VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("the VM is not running")]
    NotRunning,
    #[error(transparent)]
    Vcpu(#[from] VcpuControlError),
    #[error("cannot inject Ctrl+Alt+Del: {0}")]
    Keyboard(#[from] ember_devices::legacy::i8042::InjectError),
    #[error("no such device: {0}")]
    NoSuchDevice(String),
    #[error("drive '{id}': {source}")]
    Drive {
        id: String,
        source: ember_devices::virtio::block::BlockError,
    },
}

/// A running microVM.
pub struct Vmm {
    // Field order is drop order: stop the vCPUs before the VM goes away.
    pub(crate) vcpus: Vcpus,
    pub(crate) virtio: DeviceRegistry,
    pub(crate) devices: DeviceManager,
    pub(crate) vm: Vm,
    vcpu_reports: Receiver<VcpuReport>,
    vcpu_evt: Arc<EventFd>,
    pub(crate) state: RunState,
    pub(crate) exit: Option<VmExit>,
    console_input: bool,
    pub(crate) info: MachineInfo,
}

impl Vmm {
    pub(crate) fn new(
        m: Machine,
        vcpus: Vcpus,
        vcpu_reports: Receiver<VcpuReport>,
        vcpu_evt: Arc<EventFd>,
        info: MachineInfo,
        state: RunState,
        console_input: bool,
    ) -> Self {
        Self {
            vcpus,
            virtio: m.virtio,
            devices: m.devices,
            vm: m.vm,
            vcpu_reports,
            vcpu_evt,
            state,
            exit: None,
            console_input,
            info,
        }
    }

    /// The machine's shape.
    pub fn info(&self) -> MachineInfo {
        self.info
    }

    /// Whether the configuration asked for host input on the console.
    pub fn console_input(&self) -> bool {
        self.console_input
    }

    /// Why the VM ended, once it has.
    pub fn exit(&self) -> Option<&VmExit> {
        self.exit.as_ref()
    }

    /// Running or paused.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// The VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The devices.
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// The virtio devices and their runtime handles.
    pub fn virtio(&self) -> &DeviceRegistry {
        &self.virtio
    }

    /// Points drive `id` at a new backing file and/or changes its limits.
    pub fn update_drive(
        &mut self,
        id: &str,
        path: Option<&std::path::Path>,
        limiter: Option<&RateLimiterConfig>,
    ) -> Result<(), VmmError> {
        if self.exit.is_some() {
            return Err(VmmError::NotRunning);
        }
        let handle = self
            .virtio
            .block(id)
            .ok_or_else(|| VmmError::NoSuchDevice(format!("drive '{id}'")))?;
        if let Some(p) = path {
            handle.update_path(p).map_err(|source| VmmError::Drive {
                id: id.to_string(),
                source,
            })?;
        }
        if let Some(l) = limiter {
            handle.update_rate_limiter(l);
        }
        Ok(())
    }

    /// Changes the rate limiters of network interface `id`.
    pub fn update_net(
        &mut self,
        id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), VmmError> {
        if self.exit.is_some() {
            return Err(VmmError::NotRunning);
        }
        let handle = self
            .virtio
            .net(id)
            .ok_or_else(|| VmmError::NoSuchDevice(format!("network interface '{id}'")))?;
        handle.update_rate_limiters(rx, tx);
        Ok(())
    }

    /// Pauses every vCPU.
    pub fn pause(&mut self) -> Result<(), VmmError> {
        if self.exit.is_some() {
            return Err(VmmError::NotRunning);
        }
        self.vcpus.pause()?;
        self.state = RunState::Paused;
        Ok(())
    }

    /// Resumes every vCPU.
    pub fn resume(&mut self) -> Result<(), VmmError> {
        if self.exit.is_some() {
            return Err(VmmError::NotRunning);
        }
        self.vcpus.resume()?;
        self.state = RunState::Running;
        Ok(())
    }

    /// Presses Ctrl+Alt+Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), VmmError> {
        if self.exit.is_some() {
            return Err(VmmError::NotRunning);
        }
        let mut kbd = self
            .devices
            .keyboard
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        kbd.inject_ctrl_alt_del()?;
        Ok(())
    }

    /// Ends the VM: records `Stopped` (unless it already ended) and stops
    /// the vCPU threads.
    pub fn stop(&mut self) {
        if self.exit.is_none() {
            self.exit = Some(VmExit::Stopped);
        }
        self.vcpus.stop();
    }

    fn set_exit(&mut self, exit: VmExit) {
        if self.exit.is_none() {
            tracing::info!("{exit}");
            self.exit = Some(exit);
            self.vcpus.stop();
        }
    }

    fn drain_vcpu_reports(&mut self) {
        while let Ok(report) = self.vcpu_reports.try_recv() {
            let exit = match report.stop {
                VcpuStop::PowerOff => VmExit::PowerOff,
                VcpuStop::Reset => VmExit::Reboot,
                VcpuStop::Crash => VmExit::Panic {
                    detail: format!("KVM crash event from vCPU {}", report.vcpu),
                },
                VcpuStop::Fault(f) => VmExit::Fault(f),
            };
            self.set_exit(exit);
        }
    }
}

impl MutEventSubscriber for Vmm {
    fn init(&mut self, ops: &mut EventOps) {
        let e = &self.devices.events;
        for (fd, token) in [
            (e.reset.eventfd(), TOKEN_RESET),
            (e.power_off.eventfd(), TOKEN_POWER_OFF),
            (e.panic.eventfd(), TOKEN_PANIC),
            (&*self.vcpu_evt, TOKEN_VCPU),
        ] {
            if let Err(err) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                tracing::error!("cannot watch a VM event: {err}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_RESET => {
                let _ = self.devices.events.reset.eventfd().read();
                self.set_exit(VmExit::Reboot);
            }
            TOKEN_POWER_OFF => {
                let _ = self.devices.events.power_off.eventfd().read();
                self.set_exit(VmExit::PowerOff);
            }
            TOKEN_PANIC => {
                let _ = self.devices.events.panic.eventfd().read();
                let bits = self
                    .devices
                    .pvpanic
                    .lock()
                    .map(|p| p.last_event())
                    .unwrap_or(0);
                self.set_exit(VmExit::Panic {
                    detail: format!("pvpanic event {bits:#x}"),
                });
            }
            TOKEN_VCPU => {
                let _ = self.vcpu_evt.read();
                self.drain_vcpu_reports();
            }
            _ => {}
        }
    }
}

/// A `Vmm` shared with event-loop subscribers that need it.
pub type SharedVmm = Arc<Mutex<Vmm>>;
