//! Attaches the configured virtio devices: each gets an MMIO slot, an IRQ
//! (a KVM irqfd), one ioeventfd per queue, a DSDT entry and a command-line
//! announcement, and its event-loop subscriber. Keeps the handles the API
//! uses for post-boot updates, and the device counters for metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ember_devices::virtio::block::{Block, BlockHandle, BlockMetrics};
use ember_devices::virtio::net::{Net, NetHandle, NetMetrics};
use ember_devices::virtio::rng::{Rng, RngMetrics};
use ember_devices::virtio::vsock::{Vsock, VsockHandle, VsockMetrics};
use ember_devices::virtio::{VirtioDevice, VirtioMmioDevice};
use ember_devices::EventFdTrigger;
use event_manager::MutEventSubscriber;
use kvm_ioctls::IoEventAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::device_manager::{DeviceError, DeviceManager};
use crate::vm::Vm;

/// Offset of the QueueNotify register in a virtio-mmio window.
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

/// Errors attaching virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("drive '{id}': {detail}")]
    Block { id: String, detail: String },
    #[error("network interface '{id}': {detail}")]
    Net { id: String, detail: String },
    #[error("vsock: {0}")]
    Vsock(String),
    #[error("entropy device: {0}")]
    Rng(String),
    #[error(transparent)]
    Devices(#[from] DeviceError),
}

/// Counters of one device, for the metrics system.
#[derive(Clone)]
pub enum DeviceMetrics {
    Block(String, Arc<BlockMetrics>),
    Net(String, Arc<NetMetrics>),
    Vsock(Arc<VsockMetrics>),
    Rng(Arc<RngMetrics>),
}

/// The virtio devices of a VM and their runtime handles.
#[derive(Default)]
pub struct VirtioDevices {
    devices: Vec<VirtioMmioDevice>,
    /// Keeps the queue-notify eventfds registered with KVM alive.
    ioeventfds: Vec<EventFd>,
    pub blocks: BTreeMap<String, BlockHandle>,
    pub nets: BTreeMap<String, NetHandle>,
    pub vsock: Option<VsockHandle>,
    pub metrics: Vec<DeviceMetrics>,
}

impl VirtioDevices {
    /// Creates every device `config` asks for, in guest-visible order:
    /// drives (the root first, so it is /dev/vda), network, vsock, entropy.
    pub fn attach_all(
        vm: &Vm,
        dm: &mut DeviceManager,
        config: &VmConfig,
    ) -> Result<Self, VirtioError> {
        let mut me = Self::default();
        for drive in &config.drives {
            let id = drive.block.drive_id.clone();
            let dev = Block::shared(&drive.block).map_err(|e| VirtioError::Block {
                id: id.clone(),
                detail: e.to_string(),
            })?;
            let handle = BlockHandle::new(&dev);
            me.metrics
                .push(DeviceMetrics::Block(id.clone(), handle.metrics()));
            me.attach(vm, dm, dev)?;
            me.blocks.insert(id, handle);
        }
        for net in &config.net {
            let id = net.iface_id.clone();
            let dev = Net::shared(net).map_err(|e| VirtioError::Net {
                id: id.clone(),
                detail: e.to_string(),
            })?;
            let handle = NetHandle::new(&dev);
            me.metrics
                .push(DeviceMetrics::Net(id.clone(), handle.metrics()));
            me.attach(vm, dm, dev)?;
            me.nets.insert(id, handle);
        }
        if let Some(v) = &config.vsock {
            let dev = Arc::new(Mutex::new(
                Vsock::new(v).map_err(|e| VirtioError::Vsock(e.to_string()))?,
            ));
            let handle = VsockHandle::new(&dev);
            me.metrics.push(DeviceMetrics::Vsock(handle.metrics()));
            me.attach(vm, dm, dev)?;
            me.vsock = Some(handle);
        }
        if let Some(r) = &config.rng {
            let dev = Rng::shared(*r).map_err(|e| VirtioError::Rng(e.to_string()))?;
            let metrics = dev.lock().unwrap_or_else(|e| e.into_inner()).metrics();
            me.metrics.push(DeviceMetrics::Rng(metrics));
            me.attach(vm, dm, dev)?;
        }
        Ok(me)
    }

    fn attach<D: VirtioDevice>(
        &mut self,
        vm: &Vm,
        dm: &mut DeviceManager,
        dev: Arc<Mutex<D>>,
    ) -> Result<(), VirtioError> {
        let base = dm.allocate_mmio_slot()?;
        let irq = dm.allocate_irq()?;
        let irqfd = EventFdTrigger::new().map_err(DeviceError::EventFd)?;
        vm.register_irqfd(irqfd.eventfd(), irq)
            .map_err(DeviceError::from)?;
        let mmio =
            VirtioMmioDevice::new(dev, vm.memory().clone(), irqfd).map_err(DeviceError::EventFd)?;
        for (index, evt) in mmio.queue_notifiers().map_err(DeviceError::EventFd)? {
            vm.register_ioeventfd(
                &evt,
                IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                index,
            )
            .map_err(DeviceError::from)?;
            self.ioeventfds.push(evt);
        }
        dm.add_virtio_mmio(mmio.bus_device(), base, irq)?;
        self.devices.push(mmio);
        Ok(())
    }

    /// The event-loop subscribers of every device.
    pub fn subscribers(&self) -> Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>> {
        self.devices.iter().map(|d| d.subscriber()).collect()
    }
}
