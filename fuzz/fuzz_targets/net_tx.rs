//! virtio-net transmit (header checks, chains) and receive (buffer
//! gathering, mergeable buffers) against the in-memory back end. The first
//! byte picks features; the last bytes become a frame for the guest.

#![no_main]

use std::sync::{Arc, Mutex};

use ember_devices::virtio::net::{features, FakeBackend, Net, NetConfig};
use ember_devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let fake = FakeBackend::new().unwrap();
    let cfg = NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: "fuzz".into(),
        guest_mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    let net = Arc::new(Mutex::new(
        Net::with_backend(&cfg, Box::new(fake.clone())).unwrap(),
    ));
    let mut f = 0u64;
    for (bit, feature) in [
        (1, features::MRG_RXBUF),
        (2, features::CSUM),
        (4, features::HOST_TSO4),
        (8, features::HOST_TSO6),
        (16, features::GUEST_CSUM),
        (32, features::GUEST_TSO4),
        (64, features::HOST_ECN),
    ] {
        if mode & bit != 0 {
            f |= 1 << feature;
        }
    }
    let (mem, _dev) = common::bring_up(net.clone(), f);
    let split = data.len().saturating_sub(data.len() / 4);
    common::scribble(&mem, 2, &data[..split]);
    fake.inject(data[split..].to_vec());
    let mut n = net.lock().unwrap();
    n.queue_notified(1);
    n.queue_notified(0);
});
