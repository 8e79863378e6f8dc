//! virtio-blk request parsing and execution on guest-controlled chains:
//! descriptors, indirect tables, headers, discard segments, against a real
//! (small, sparse) file. The first byte picks read-only and EVENT_IDX.

#![no_main]

use std::sync::OnceLock;

use ember_devices::virtio::block::{Block, BlockConfig, CacheType, IoEngine};
use ember_devices::virtio::testing::TempFile;
use ember_devices::virtio::{VirtioDevice, VIRTIO_F_RING_EVENT_IDX};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fn image() -> &'static TempFile {
    static FILE: OnceLock<TempFile> = OnceLock::new();
    FILE.get_or_init(|| TempFile::new("fuzz-blk", 64 * 1024).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let cfg = BlockConfig {
        drive_id: "fuzz".into(),
        path_on_host: image().path().to_owned(),
        is_read_only: mode & 1 != 0,
        cache_type: if mode & 2 != 0 {
            CacheType::Unsafe
        } else {
            CacheType::Writeback
        },
        io_engine: IoEngine::Sync,
        rate_limiter: None,
    };
    let blk = Block::shared(&cfg).unwrap();
    let features = if mode & 4 != 0 {
        1 << VIRTIO_F_RING_EVENT_IDX
    } else {
        0
    };
    let (mem, _dev) = common::bring_up(blk.clone(), features);
    common::scribble(&mem, 1, data);
    blk.lock().unwrap().queue_notified(0);
    blk.lock().unwrap().queue_notified(0);
});
