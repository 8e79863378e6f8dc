//! virtio-rng on guest-controlled chains.

#![no_main]

use ember_devices::virtio::rng::{Rng, RngConfig};
use ember_devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let rng = Rng::shared(RngConfig::default()).unwrap();
    let (mem, _dev) = common::bring_up(rng.clone(), 0);
    common::scribble(&mem, 1, data);
    rng.lock().unwrap().queue_notified(0);
});
