//! Shared set-up for the device fuzz targets: a small guest, a device
//! brought up by the fake driver with 16-entry queues, and the fuzzer's
//! bytes laid over the descriptor tables, available rings and buffers.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use ember_devices::virtio::testing::{guest_memory, MmioDriver, TestQueue};
use ember_devices::virtio::{VirtioDevice, VirtioMmioDevice, VIRTIO_F_VERSION_1};
use ember_devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

/// Guest memory size: descriptor addresses below this are valid.
pub const MEM_SIZE: usize = 1 << 20;
/// Entries per queue.
pub const QSIZE: u16 = 16;
/// Where buffers the fuzzer points at usually live.
pub const DATA_BASE: u64 = 0x1_0000;

/// Counts interrupts; the fuzz targets ignore them.
#[derive(Default)]
pub struct NoIrq;

impl ember_devices::Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// A device brought up with `features` (VERSION_1 added) on fresh memory.
pub fn bring_up<D: VirtioDevice>(
    dev: Arc<Mutex<D>>,
    features: u64,
) -> (GuestMemoryMmap, VirtioMmioDevice) {
    let mem = guest_memory(MEM_SIZE);
    let n = dev.lock().unwrap().queue_max_sizes().len();
    let mmio = VirtioMmioDevice::new(dev, mem.clone(), NoIrq).unwrap();
    let queues: Vec<TestQueue> = (0..n)
        .map(|i| TestQueue::new(&mem, GuestAddress(0x1000 * (i as u64 + 1)), QSIZE))
        .collect();
    let refs: Vec<&TestQueue> = queues.iter().collect();
    MmioDriver::new(mmio.bus_device()).bring_up(features | (1 << VIRTIO_F_VERSION_1), &refs);
    (mem, mmio)
}

/// Lays `data` over each of `queues` queues' descriptor table and
/// available ring (ring index included), then over the buffer area.
pub fn scribble(mem: &GuestMemoryMmap, queues: usize, data: &[u8]) {
    let ring = 16 * usize::from(QSIZE) + 4 + 2 * usize::from(QSIZE) + 2;
    let mut rest = data;
    for i in 0..queues {
        let n = rest.len().min(ring);
        let base = 0x1000 * (i as u64 + 1);
        mem.write_slice(&rest[..n], GuestAddress(base)).unwrap();
        rest = &rest[n..];
    }
    let n = rest.len().min(MEM_SIZE - DATA_BASE as usize);
    mem.write_slice(&rest[..n], GuestAddress(DATA_BASE))
        .unwrap();
}
