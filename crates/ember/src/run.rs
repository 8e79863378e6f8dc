//! Boots a VM from a `VmConfig` and runs its event loop until it ends.

use std::fs::File;
use std::sync::{Arc, Mutex};

use ember_vmm::builder::{self, BuildError};
use ember_vmm::config::VmConfig;
use ember_vmm::console_input::ConsoleInput;
use ember_vmm::host::{HostVirt, PVM_WARNING};
use ember_vmm::vmm::VmExit;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use crate::terminal::{stdin_is_interactive_or_stream, RawTerminal};

/// The event loop type the binary uses.
pub type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Errors running a VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error("event loop failure: {0}")]
    EventLoop(String),
}

/// Boots `config` and runs until the guest ends; returns how it ended.
pub fn boot_and_run(config: &VmConfig) -> Result<VmExit, RunError> {
    let (kvm, host) = builder::open_host()?;
    if host == HostVirt::PvmOnly {
        eprintln!("ember: {PVM_WARNING}");
    }
    let mut event_loop = Loop::new().map_err(|e| RunError::EventLoop(e.to_string()))?;
    let mut terminal = None;
    let vmm = builder::shared(builder::build(&kvm, host, config)?);
    event_loop.add_subscriber(vmm.clone());
    if config.console_input && stdin_is_interactive_or_stream() {
        let (console, drained) = {
            let v = vmm.lock().unwrap_or_else(|e| e.into_inner());
            (
                v.devices().console.clone(),
                v.devices().console_input_drained.clone(),
            )
        };
        if let Ok(fd) = std::io::stdin().lock().as_fd_owned() {
            terminal = Some(RawTerminal::enable());
            event_loop.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
                File::from(fd),
                console,
                drained,
            ))));
        }
    }
    let exit = loop {
        if let Err(e) = event_loop.run() {
            break Err(RunError::EventLoop(e.to_string()));
        }
        let v = vmm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(exit) = v.exit() {
            break Ok(exit.clone());
        }
    };
    if let Some(mut t) = terminal {
        t.restore();
    }
    vmm.lock().unwrap_or_else(|e| e.into_inner()).stop();
    exit
}

trait AsFdOwned {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd>;
}

impl AsFdOwned for std::io::StdinLock<'_> {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned()
    }
}
