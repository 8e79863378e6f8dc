//! The device registry: every virtio device of a VM, with its id, its
//! configuration, where it sits (MMIO slot and IRQ) and its runtime handle.
//!
//! Placement is recorded, not derived: a boot hands out the next free slot
//! and IRQ, a restore puts each device back where the snapshot says it was.
//! Each device gets an MMIO slot, an IRQ (a KVM irqfd), one ioeventfd per
//! queue, a DSDT entry and a command-line announcement, and its event-loop
//! subscriber. Adding a device type means one [`VirtioConfig`] variant and
//! one arm in [`DeviceRegistry::attach`].

use std::sync::{Arc, Mutex};

use ember_devices::virtio::block::{Block, BlockHandle, BlockMetrics};
use ember_devices::virtio::net::{Net, NetConfig, NetHandle, NetMetrics};
use ember_devices::virtio::rng::{Rng, RngConfig, RngMetrics};
use ember_devices::virtio::state::TransportState;
use ember_devices::virtio::vsock::{Vsock, VsockConfig, VsockMetrics};
use ember_devices::virtio::{VirtioDevice, VirtioMmioDevice};
use ember_devices::EventFdTrigger;
use event_manager::MutEventSubscriber;
use kvm_ioctls::IoEventAddress;
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{DriveConfig, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager, Placement};
use crate::vm::Vm;

/// Offset of the QueueNotify register in a virtio-mmio window.
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

/// Errors attaching or restoring virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("drive '{id}': {source}")]
    Block {
        id: String,
        source: ember_devices::virtio::block::BlockError,
    },
    #[error("network interface '{id}': {source}")]
    Net {
        id: String,
        source: ember_devices::virtio::net::NetError,
    },
    #[error("vsock: {0}")]
    Vsock(#[from] ember_devices::virtio::vsock::VsockError),
    #[error("entropy device: {0}")]
    Rng(std::io::Error),
    #[error("{kind} '{id}': cannot restore its transport: {source}")]
    Restore {
        kind: &'static str,
        id: String,
        source: ember_devices::virtio::state::RestoreError,
    },
    #[error("two devices have the id '{0}'")]
    DuplicateId(String),
    #[error(transparent)]
    Devices(#[from] DeviceError),
}

/// A virtio device and its configuration: what a VM has, and what a
/// snapshot records to build it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioConfig {
    Block(DriveConfig),
    Net(NetConfig),
    Vsock(VsockConfig),
    Rng(RngConfig),
}

impl VirtioConfig {
    /// The device's id: the drive or interface id, or the kind.
    pub fn id(&self) -> &str {
        match self {
            VirtioConfig::Block(d) => &d.block.drive_id,
            VirtioConfig::Net(n) => &n.iface_id,
            VirtioConfig::Vsock(_) => "vsock",
            VirtioConfig::Rng(_) => "entropy",
        }
    }

    /// What kind of device, in words.
    pub fn kind(&self) -> &'static str {
        match self {
            VirtioConfig::Block(_) => "drive",
            VirtioConfig::Net(_) => "network interface",
            VirtioConfig::Vsock(_) => "vsock",
            VirtioConfig::Rng(_) => "entropy device",
        }
    }

    /// The devices `config` asks for, in guest-visible order: drives (the
    /// root first, so it is /dev/vda), network, vsock, entropy.
    pub fn all(config: &VmConfig) -> Vec<VirtioConfig> {
        let mut v: Vec<VirtioConfig> = config.drives.iter().cloned().map(Self::Block).collect();
        v.extend(config.net.iter().cloned().map(Self::Net));
        v.extend(config.vsock.iter().cloned().map(Self::Vsock));
        v.extend(config.rng.iter().copied().map(Self::Rng));
        v
    }
}

/// Counters of one device, for the metrics system.
#[derive(Clone)]
pub enum DeviceMetrics {
    Block(String, Arc<BlockMetrics>),
    Net(String, Arc<NetMetrics>),
    Vsock(Arc<VsockMetrics>),
    Rng(Arc<RngMetrics>),
}

/// What the API can do to a running device.
#[derive(Clone)]
pub enum DeviceHandle {
    Block(BlockHandle),
    Net(NetHandle),
    Vsock,
    Rng,
}

/// One device in the registry.
pub struct DeviceEntry {
    pub config: VirtioConfig,
    pub placement: Placement,
    pub handle: DeviceHandle,
    pub metrics: DeviceMetrics,
    transport: VirtioMmioDevice,
    /// Keeps the queue-notify eventfds registered with KVM alive.
    _ioeventfds: Vec<EventFd>,
}

/// A device as a snapshot records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub config: VirtioConfig,
    pub placement: Placement,
    pub transport: TransportState,
}

/// The virtio devices of a VM.
#[derive(Default)]
pub struct DeviceRegistry {
    entries: Vec<DeviceEntry>,
}

impl DeviceRegistry {
    /// Creates every device `config` asks for, each at the next free slot.
    pub fn attach_all(
        vm: &Vm,
        dm: &mut DeviceManager,
        config: &VmConfig,
    ) -> Result<Self, VirtioError> {
        let mut me = Self::default();
        for c in VirtioConfig::all(config) {
            me.attach(vm, dm, c, None)?;
        }
        Ok(me)
    }

    /// Creates the recorded devices where they were, in their saved state.
    pub fn restore_all(
        vm: &Vm,
        dm: &mut DeviceManager,
        records: &[DeviceRecord],
    ) -> Result<Self, VirtioError> {
        let mut me = Self::default();
        for r in records {
            me.attach(vm, dm, r.config.clone(), Some((r.placement, &r.transport)))?;
        }
        Ok(me)
    }

    /// Opens the device's host resources and places it: at the next free
    /// slot, or where `restore` says with the transport state it gives.
    pub fn attach(
        &mut self,
        vm: &Vm,
        dm: &mut DeviceManager,
        config: VirtioConfig,
        restore: Option<(Placement, &TransportState)>,
    ) -> Result<(), VirtioError> {
        let id = config.id().to_string();
        if self.entries.iter().any(|e| e.config.id() == id) {
            return Err(VirtioError::DuplicateId(id));
        }
        let placement = match restore {
            Some((p, _)) => dm.claim(p)?,
            None => dm.allocate()?,
        };
        let transport_state = restore.map(|(_, t)| t);
        let (handle, metrics, placed) = match &config {
            VirtioConfig::Block(d) => {
                let dev = Block::shared(&d.block).map_err(|source| VirtioError::Block {
                    id: id.clone(),
                    source,
                })?;
                let handle = BlockHandle::new(&dev);
                let metrics = DeviceMetrics::Block(id.clone(), handle.metrics());
                let placed = place(vm, placement, dev, transport_state);
                (DeviceHandle::Block(handle), metrics, placed)
            }
            VirtioConfig::Net(n) => {
                let dev = Net::shared(n).map_err(|source| VirtioError::Net {
                    id: id.clone(),
                    source,
                })?;
                let handle = NetHandle::new(&dev);
                let metrics = DeviceMetrics::Net(id.clone(), handle.metrics());
                let placed = place(vm, placement, dev, transport_state);
                (DeviceHandle::Net(handle), metrics, placed)
            }
            VirtioConfig::Vsock(v) => {
                let dev = Vsock::shared(v)?;
                let metrics = DeviceMetrics::Vsock(lock(&dev).metrics());
                let placed = place(vm, placement, dev, transport_state);
                (DeviceHandle::Vsock, metrics, placed)
            }
            VirtioConfig::Rng(r) => {
                let dev = Rng::shared(*r).map_err(VirtioError::Rng)?;
                let metrics = DeviceMetrics::Rng(lock(&dev).metrics());
                let placed = place(vm, placement, dev, transport_state);
                (DeviceHandle::Rng, metrics, placed)
            }
        };
        let (transport, ioeventfds) = placed.map_err(|e| match e {
            PlaceError::Devices(d) => VirtioError::Devices(d),
            PlaceError::Restore(source) => VirtioError::Restore {
                kind: config.kind(),
                id: id.clone(),
                source,
            },
        })?;
        dm.add_virtio_mmio(transport.bus_device(), placement)?;
        self.entries.push(DeviceEntry {
            config,
            placement,
            handle,
            metrics,
            transport,
            _ioeventfds: ioeventfds,
        });
        Ok(())
    }

    /// Every device, in placement order.
    pub fn entries(&self) -> &[DeviceEntry] {
        &self.entries
    }

    /// The handle of drive `id`.
    pub fn block(&self, id: &str) -> Option<&BlockHandle> {
        self.entries.iter().find_map(|e| match &e.handle {
            DeviceHandle::Block(h) if e.config.id() == id => Some(h),
            _ => None,
        })
    }

    /// The handle of network interface `id`.
    pub fn net(&self, id: &str) -> Option<&NetHandle> {
        self.entries.iter().find_map(|e| match &e.handle {
            DeviceHandle::Net(h) if e.config.id() == id => Some(h),
            _ => None,
        })
    }

    /// The counters of every device.
    pub fn metrics(&self) -> Vec<DeviceMetrics> {
        self.entries.iter().map(|e| e.metrics.clone()).collect()
    }

    /// The event-loop subscribers of every device.
    pub fn subscribers(&self) -> Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>> {
        self.entries
            .iter()
            .map(|e| e.transport.subscriber())
            .collect()
    }

    /// Quiesces every device (in-flight I/O finished, held buffers given
    /// back) and records it. Call with the vCPUs paused, on the thread that
    /// runs the devices.
    pub fn save(&self) -> Vec<DeviceRecord> {
        self.entries
            .iter()
            .map(|e| DeviceRecord {
                config: e.config.clone(),
                placement: e.placement,
                transport: e.transport.save(),
            })
            .collect()
    }
}

fn lock<T>(m: &Arc<Mutex<T>>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum PlaceError {
    Devices(DeviceError),
    Restore(ember_devices::virtio::state::RestoreError),
}

impl From<DeviceError> for PlaceError {
    fn from(e: DeviceError) -> Self {
        PlaceError::Devices(e)
    }
}

/// Puts `dev` behind a transport wired to KVM: an irqfd for its IRQ and
/// one ioeventfd per queue on its QueueNotify register.
fn place<D: VirtioDevice>(
    vm: &Vm,
    at: Placement,
    dev: Arc<Mutex<D>>,
    restore: Option<&TransportState>,
) -> Result<(VirtioMmioDevice, Vec<EventFd>), PlaceError> {
    let irqfd = EventFdTrigger::new().map_err(DeviceError::EventFd)?;
    vm.register_irqfd(irqfd.eventfd(), at.irq)
        .map_err(DeviceError::from)?;
    let mem = vm.memory().clone();
    let mmio = match restore {
        None => VirtioMmioDevice::new(dev, mem, irqfd).map_err(DeviceError::EventFd)?,
        Some(state) => {
            VirtioMmioDevice::restore(dev, mem, irqfd, state).map_err(PlaceError::Restore)?
        }
    };
    let mut ioeventfds = Vec::new();
    for (index, evt) in mmio.queue_notifiers().map_err(DeviceError::EventFd)? {
        vm.register_ioeventfd(
            &evt,
            IoEventAddress::Mmio(at.mmio_base + QUEUE_NOTIFY_OFFSET),
            index,
        )
        .map_err(DeviceError::from)?;
        ioeventfds.push(evt);
    }
    Ok((mmio, ioeventfds))
}
