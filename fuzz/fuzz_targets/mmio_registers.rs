//! Arbitrary register traffic on the virtio-mmio transport (with an rng
//! device behind it): reads and writes of any width at any offset, status
//! sequences, queue layouts and notifications, in any order.

#![no_main]

use std::sync::{Arc, Mutex};

use ember_devices::virtio::rng::{Rng, RngConfig};
use ember_devices::virtio::testing::guest_memory;
use ember_devices::virtio::{VirtioDevice, VirtioMmioDevice};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let rng = Arc::new(Mutex::new(Rng::new(RngConfig::default()).unwrap()));
    let mem = guest_memory(common::MEM_SIZE);
    let dev = VirtioMmioDevice::new(rng.clone(), mem, common::NoIrq).unwrap();
    let bus = dev.bus_device();
    for op in data.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0x1ff);
        let value = [op[3], op[4], op[5], op[6]];
        let width = [1, 2, 4, 8][usize::from(op[0] >> 6)];
        match op[0] & 3 {
            0 => {
                let mut b = [0u8; 8];
                bus.lock().unwrap().read(offset, &mut b[..width]);
            }
            1 | 2 => {
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&value);
                bus.lock().unwrap().write(offset, &b[..width.min(8)]);
            }
            _ => rng.lock().unwrap().queue_notified(0),
        }
    }
});
