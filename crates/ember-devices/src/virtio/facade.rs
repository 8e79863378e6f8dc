//! What the VMM wires: a virtio device on the MMIO transport, its queue
//! notification eventfds and its event-loop subscriber.
//!
//! ```text
//!   vCPU thread ── MMIO exit ──► MmioTransport (BusDevice) ──┐ activate/reset
//!   vCPU thread ── QueueNotify ─► KVM ioeventfd (queue evt) ─┼──────────────┐
//!                                                             ▼              ▼
//!   event-loop thread ◄── epoll ── VirtioSubscriber ── locks ── device (Arc<Mutex<D>>)
//!   device ── irqfd (EventFdTrigger) ──► KVM ──► guest interrupt
//! ```
//!
//! Activation happens on a vCPU thread: the transport calls the device's
//! `activate` and then signals the activation eventfd; the subscriber, on
//! the event-loop thread, then registers the device's backend fds and runs
//! its queues once. A reset signals the same eventfd and the subscriber
//! unregisters the backend fds.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::device::{BackendFd, DeviceSignals, IrqLine, VirtioDevice};
use super::mmio::MmioTransport;
use crate::bus::BusDevice;
use crate::GuestMemoryMmap;

/// Event token of the activation eventfd.
const TOKEN_ACTIVATE: u32 = 0x1_0000;
/// Backend tokens are offset by this.
const TOKEN_BACKEND_BASE: u32 = 0x2_0000;

/// A virtio device on the MMIO transport, ready to wire into a VM.
pub struct VirtioMmioDevice {
    transport: Arc<Mutex<MmioTransport>>,
    subscriber: Arc<Mutex<VirtioSubscriber>>,
    queue_evts: Vec<Arc<EventFd>>,
    signals: Arc<DeviceSignals>,
    device_type: u32,
}

impl std::fmt::Debug for VirtioMmioDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioMmioDevice")
            .field("device_type", &self.device_type)
            .field("queues", &self.queue_evts.len())
            .finish()
    }
}

impl VirtioMmioDevice {
    /// Puts `device` behind a transport. `irq` raises the device's
    /// interrupt (an [`crate::EventFdTrigger`] registered as a KVM irqfd).
    pub fn new<D, I>(device: Arc<Mutex<D>>, mem: GuestMemoryMmap, irq: I) -> io::Result<Self>
    where
        D: VirtioDevice,
        I: IrqLine + 'static,
    {
        let device: Arc<Mutex<dyn VirtioDevice>> = device;
        let nqueues = lock(&device).queue_max_sizes().len();
        let queue_evts = (0..nqueues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        let activate_evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let signals = Arc::new(DeviceSignals::new(Box::new(irq)));
        let device_type = lock(&device).device_type();
        let transport = MmioTransport::new(
            device.clone(),
            mem,
            signals.clone(),
            queue_evts.clone(),
            activate_evt.clone(),
        );
        let subscriber = VirtioSubscriber {
            device,
            queue_evts: queue_evts.clone(),
            activate_evt,
            registered: Vec::new(),
        };
        Ok(Self {
            transport: Arc::new(Mutex::new(transport)),
            subscriber: Arc::new(Mutex::new(subscriber)),
            queue_evts,
            signals,
            device_type,
        })
    }

    /// The register file, for the MMIO bus at `[base, base + 0x1000)`.
    pub fn bus_device(&self) -> Arc<Mutex<dyn BusDevice>> {
        self.transport.clone()
    }

    /// The transport itself (tests and diagnostics).
    pub fn transport(&self) -> Arc<Mutex<MmioTransport>> {
        self.transport.clone()
    }

    /// `(queue index, eventfd)` pairs: register each as a KVM ioeventfd at
    /// `base + 0x50` (QueueNotify), 4 bytes, with datamatch = queue index.
    /// The eventfds are duplicates; the device keeps the originals.
    pub fn queue_notifiers(&self) -> io::Result<Vec<(u32, EventFd)>> {
        self.queue_evts
            .iter()
            .enumerate()
            .map(|(i, e)| Ok((i as u32, e.try_clone()?)))
            .collect()
    }

    /// The event-loop half: add it to the VMM's `EventManager`.
    pub fn subscriber(&self) -> Arc<Mutex<dyn MutEventSubscriber + Send>> {
        self.subscriber.clone()
    }

    /// The virtio device type id (1 net, 2 block, 4 rng, 19 vsock).
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Interrupt status, config generation and needs-reset (tests, metrics).
    pub fn signals(&self) -> Arc<DeviceSignals> {
        self.signals.clone()
    }
}

fn lock(d: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// The event-loop half of a virtio device.
pub struct VirtioSubscriber {
    device: Arc<Mutex<dyn VirtioDevice>>,
    queue_evts: Vec<Arc<EventFd>>,
    activate_evt: Arc<EventFd>,
    registered: Vec<BackendFd>,
}

impl VirtioSubscriber {
    fn backend_events(b: &BackendFd) -> Events {
        Events::with_data_raw(b.fd, TOKEN_BACKEND_BASE + b.token, b.events)
    }

    /// Brings the registered backend fds in line with the device's state.
    fn sync_backend(&mut self, ops: &mut EventOps) {
        let (active, wanted) = {
            let d = lock(&self.device);
            let active = d.is_active();
            (active, if active { d.backend_fds() } else { Vec::new() })
        };
        for b in std::mem::take(&mut self.registered) {
            if let Err(e) = ops.remove(Self::backend_events(&b)) {
                tracing::warn!("virtio: cannot unwatch backend fd {}: {e:?}", b.fd);
            }
        }
        for b in wanted {
            match ops.add(Self::backend_events(&b)) {
                Ok(()) => self.registered.push(b),
                Err(e) => tracing::error!("virtio: cannot watch backend fd {}: {e:?}", b.fd),
            }
        }
        if active {
            lock(&self.device).activated();
        }
    }
}

impl MutEventSubscriber for VirtioSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            self.activate_evt.as_ref(),
            TOKEN_ACTIVATE,
            EventSet::IN,
        )) {
            tracing::error!("virtio: cannot watch the activation eventfd: {e:?}");
        }
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt.as_ref(), i as u32, EventSet::IN)) {
                tracing::error!("virtio: cannot watch queue {i} eventfd: {e:?}");
            }
        }
        // The device may have been activated before the subscriber joined.
        self.sync_backend(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        if token == TOKEN_ACTIVATE {
            let _ = self.activate_evt.read();
            self.sync_backend(ops);
        } else if let Some(evt) = self.queue_evts.get(token as usize) {
            // EAGAIN only means another thread consumed it; still process.
            let _ = evt.read();
            let mut d = lock(&self.device);
            if d.is_active() {
                d.queue_notified(token as usize);
            }
        } else if token >= TOKEN_BACKEND_BASE {
            let mut d = lock(&self.device);
            if d.is_active() {
                d.backend_event(token - TOKEN_BACKEND_BASE, events.event_set());
            }
        }
    }
}
