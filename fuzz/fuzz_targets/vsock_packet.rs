//! virtio-vsock packet parsing and the connection state machine on
//! guest-controlled transmit chains (requests to ports without listeners,
//! data for unknown connections, credit updates, shutdowns), with receive
//! and event buffers also under the fuzzer's control.

#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use ember_devices::virtio::vsock::{Vsock, VsockConfig};
use ember_devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "ember-fuzz-vsock-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed) % 4
    ));
    let cfg = VsockConfig {
        guest_cid: 3,
        uds_path: path,
    };
    let vsock = Vsock::shared(&cfg).unwrap();
    let (mem, _dev) = common::bring_up(vsock.clone(), 0);
    common::scribble(&mem, 3, data);
    let mut v = vsock.lock().unwrap();
    v.queue_notified(1);
    v.queue_notified(0);
    v.queue_notified(2);
});
