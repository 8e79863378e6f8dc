//! The VMM thread: one event loop that answers the API, runs the devices,
//! and ends when the VM does.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use ember_api::controller::VmmBackend;
use ember_api::endpoint::ApiEndpoint;
use ember_telemetry::{MetricsRegistry, PeriodicFlush, DEFAULT_FLUSH_INTERVAL};
use ember_vmm::console_input::ConsoleInput;
use ember_vmm::vmm::{SharedVmm, VmExit};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use crate::backend::{lock, SharedSlot};
use crate::terminal::{stdin_is_interactive_or_stream, RawTerminal};

/// The event loop type the binary uses.
pub type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Registers a freshly started VM with the loop: its own events, console
/// input and metrics.
fn register(
    event_loop: &mut Loop,
    vmm: &SharedVmm,
    metrics: &MetricsRegistry,
    terminal: &mut Option<RawTerminal>,
) {
    event_loop.add_subscriber(vmm.clone());
    let v = vmm.lock().unwrap_or_else(|e| e.into_inner());
    for sub in v.virtio().subscribers() {
        event_loop.add_subscriber(sub);
    }
    let devices = v.devices();
    metrics.register(crate::metrics::uart_source(
        devices.console_counters.clone(),
    ));
    for source in crate::metrics::device_sources(&v.virtio().metrics()) {
        metrics.register(source);
    }
    if v.console_input() && stdin_is_interactive_or_stream() {
        if let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() {
            *terminal = Some(RawTerminal::enable());
            let input = ConsoleInput::new(
                File::from(fd),
                devices.console.clone(),
                devices.console_input_drained.clone(),
            );
            event_loop.add_subscriber(Arc::new(Mutex::new(input)));
        }
    }
}

/// Runs until the VM ends; returns how it ended.
pub fn run<B: VmmBackend + Send + 'static>(
    endpoint: ApiEndpoint<B>,
    slot: SharedSlot,
    metrics: Arc<MetricsRegistry>,
) -> Result<VmExit, String> {
    let mut event_loop = Loop::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
    event_loop.add_subscriber(Arc::new(Mutex::new(endpoint)));
    let flush = PeriodicFlush::new(metrics.clone(), DEFAULT_FLUSH_INTERVAL)
        .map_err(|e| format!("cannot create the metrics timer: {e}"))?;
    event_loop.add_subscriber(Arc::new(Mutex::new(flush)));
    let mut terminal = None;
    let mut current: Option<SharedVmm> = None;
    let exit = loop {
        // A VM started by the last request (or before the loop) joins now;
        // once one runs, no other can start.
        if current.is_none() {
            let mut s = lock(&slot);
            if let (Some(vmm), false) = (s.vmm.clone(), s.registered) {
                s.registered = true;
                drop(s);
                register(&mut event_loop, &vmm, &metrics, &mut terminal);
                current = Some(vmm);
            }
        }
        if let Some(vmm) = &current {
            if let Some(exit) = vmm.lock().unwrap_or_else(|e| e.into_inner()).exit() {
                break Ok(exit.clone());
            }
        }
        if let Err(e) = event_loop.run() {
            break Err(format!("event loop failure: {e}"));
        }
    };
    if let Some(mut t) = terminal {
        t.restore();
    }
    if let Some(vmm) = current {
        vmm.lock().unwrap_or_else(|e| e.into_inner()).stop();
    }
    let _ = metrics.flush();
    exit
}
