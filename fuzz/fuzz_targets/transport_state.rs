//! Snapshot restore of the virtio-mmio transport from hostile bytes: the
//! input is decoded as a postcard `TransportState` and restored onto a
//! fresh entropy device and a fresh network device (one queue and two) over
//! a small guest memory. Refusals are fine; a panic, a hang or an unbounded
//! allocation is a bug. A state that restores is then driven a little:
//! register reads, queue notifications and another save.

#![no_main]

use std::sync::{Arc, Mutex};

use ember_devices::virtio::mmio::reg;
use ember_devices::virtio::net::{FakeBackend, Net, NetConfig};
use ember_devices::virtio::rng::{Rng, RngConfig};
use ember_devices::virtio::testing::{guest_memory, MmioDriver};
use ember_devices::virtio::{TransportState, VirtioDevice, VirtioMmioDevice};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fn exercise<D: VirtioDevice>(dev: Arc<Mutex<D>>, state: &TransportState) {
    let mem = guest_memory(common::MEM_SIZE);
    let Ok(mmio) = VirtioMmioDevice::restore(dev.clone(), mem, common::NoIrq, state) else {
        return;
    };
    let drv = MmioDriver::new(mmio.bus_device());
    for r in [reg::STATUS, reg::QUEUE_READY, reg::INTERRUPT_STATUS] {
        drv.read32(r);
    }
    let n = dev.lock().unwrap().queue_max_sizes().len();
    for i in 0..n {
        dev.lock().unwrap().queue_notified(i);
    }
    dev.lock().unwrap().activated();
    let _ = mmio.save();
    // The guest resets the device and it comes back as new.
    drv.write32(reg::STATUS, 0);
}

fuzz_target!(|data: &[u8]| {
    let Ok(state) = postcard::from_bytes::<TransportState>(data) else {
        return;
    };
    exercise(Rng::shared(RngConfig::default()).unwrap(), &state);
    let cfg = NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: "fuzz".into(),
        guest_mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    let net = Net::with_backend(&cfg, Box::new(FakeBackend::new().unwrap())).unwrap();
    exercise(Arc::new(Mutex::new(net)), &state);
});
