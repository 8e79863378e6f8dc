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
//!
//! Snapshots: [`VirtioMmioDevice::save`] settles the device's work in
//! progress and returns its [`TransportState`];
//! [`VirtioMmioDevice::restore`] puts a freshly built device behind a
//! transport in that state. A device that was running is activated on the
//! spot with its queues at the saved ring positions, and the activation
//! eventfd is signalled, so when the subscriber joins the event loop it
//! watches the backend and runs every queue once, exactly as after a
//! guest's DRIVER_OK. See [`super::state`] for what is and is not saved.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::device::{BackendFd, DeviceSignals, IrqLine, VirtioDevice};
use super::mmio::MmioTransport;
use super::state::{RestoreError, TransportState};
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
        let signals = Arc::new(DeviceSignals::new(Box::new(irq)));
        Self::build(
            device,
            signals,
            |device, signals, queue_evts, activate_evt| {
                Ok(MmioTransport::new(
                    device,
                    mem,
                    signals,
                    queue_evts,
                    activate_evt,
                ))
            },
        )
        .map_err(|e| match e {
            RestoreError::EventFd(e) => e,
            other => io::Error::other(other.to_string()),
        })
    }

    /// Settles the device's work in progress (see
    /// [`VirtioDevice::prepare_save`]) and returns the transport's state,
    /// with the ring positions of a running device. Call it with the vCPUs
    /// paused and from the event-loop thread (or with the loop stopped).
    /// The device keeps running normally afterwards.
    pub fn save(&self) -> TransportState {
        lock_transport(&self.transport).save_state()
    }

    /// Puts `device`, freshly built from its configuration, behind a
    /// transport in `state`, on guest memory `mem` raising `irq`.
    ///
    /// The state is validated against the device and guest memory before
    /// anything is changed. If the driver had set DRIVER_OK (and neither
    /// FAILED nor DEVICE_NEEDS_RESET is set), the device is activated with
    /// its queues at the saved ring positions and EVENT_IDX as negotiated,
    /// with no guest handshake, and [`VirtioDevice::restored`] is called;
    /// the event loop starts it when the subscriber joins. An interrupt
    /// pending in the saved interrupt status is raised again.
    pub fn restore<D, I>(
        device: Arc<Mutex<D>>,
        mem: GuestMemoryMmap,
        irq: I,
        state: &TransportState,
    ) -> Result<Self, RestoreError>
    where
        D: VirtioDevice,
        I: IrqLine + 'static,
    {
        Self::restore_dyn(device, mem, Box::new(irq), state)
    }

    fn restore_dyn(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        irq: Box<dyn IrqLine>,
        state: &TransportState,
    ) -> Result<Self, RestoreError> {
        {
            let d = lock(&device);
            if d.is_active() {
                return Err(RestoreError::DeviceActive);
            }
            state.validate(
                d.device_type(),
                d.queue_max_sizes(),
                d.offered_features(),
                &mem,
            )?;
        }
        let signals = Arc::new(DeviceSignals::from_saved(
            irq,
            state.isr,
            state.config_generation,
            state.needs_reset,
            state.driver_ok,
        ));
        let dev = Self::build(
            device,
            signals,
            |device, signals, queue_evts, activate_evt| {
                MmioTransport::from_state(device, mem, signals, queue_evts, activate_evt, state)
            },
        )?;
        if dev.signals.driver_ok() {
            dev.signals.repeat_pending();
        }
        Ok(dev)
    }

    /// The eventfds, the transport (made by `transport`) and the subscriber.
    fn build(
        device: Arc<Mutex<dyn VirtioDevice>>,
        signals: Arc<DeviceSignals>,
        transport: impl FnOnce(
            Arc<Mutex<dyn VirtioDevice>>,
            Arc<DeviceSignals>,
            Vec<Arc<EventFd>>,
            Arc<EventFd>,
        ) -> Result<MmioTransport, RestoreError>,
    ) -> Result<Self, RestoreError> {
        let (nqueues, device_type) = {
            let d = lock(&device);
            (d.queue_max_sizes().len(), d.device_type())
        };
        let queue_evts = (0..nqueues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        let activate_evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let transport = transport(
            device.clone(),
            signals.clone(),
            queue_evts.clone(),
            activate_evt.clone(),
        )?;
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

fn lock_transport(t: &Arc<Mutex<MmioTransport>>) -> MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`VirtioMmioDevice`]'s [`ember_state::Persist::restore`] needs: the
/// device built from its configuration, guest memory and the interrupt.
pub struct VirtioRestoreArgs {
    /// The freshly built device.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    /// Guest memory, already restored.
    pub mem: GuestMemoryMmap,
    /// The device's interrupt line.
    pub irq: Box<dyn IrqLine>,
}

impl std::fmt::Debug for VirtioRestoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VirtioRestoreArgs")
    }
}

impl<'a> ember_state::Persist<'a> for VirtioMmioDevice {
    type State = TransportState;
    type ConstructorArgs = VirtioRestoreArgs;
    type Error = RestoreError;

    fn save(&self) -> TransportState {
        VirtioMmioDevice::save(self)
    }

    fn restore(args: VirtioRestoreArgs, state: &TransportState) -> Result<Self, RestoreError> {
        Self::restore_dyn(args.device, args.mem, args.irq, state)
    }
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
