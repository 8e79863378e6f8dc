//! virtio-blk throughput and IOPS through the device's request path,
//! against raw pread/pwrite on the same file with the same pattern.
//!
//! Method: a 256 MiB file in the temporary directory, fully written first
//! (so reads hit allocated blocks; both sides use the page cache, which
//! makes the comparison measure the device's own overhead rather than the
//! disk). The device side is the real `Block` device brought up over the
//! MMIO transport by the in-process driver; requests are published in
//! batches (a header, the data buffer(s) and a status byte per chain, as
//! Linux lays them out), the queue is processed exactly as on a guest
//! notification, until every request of the batch is complete. Only that
//! is timed: the fake driver's work of building requests (guest CPU time in
//! a VM) is not. The raw
//! side does one pread/pwrite per request, same offsets, same sizes, same
//! buffer. Patterns: 4 KiB random reads and writes (aligned offsets from a
//! fixed xorshift sequence), 1 MiB sequential reads and writes. Both engines
//! (Sync and, when the host has io_uring, Async) are measured.
//!
//! Run: `cargo bench -p ember-devices --bench virtio_blk` (set
//! `EMBER_BENCH_QUICK=1` for a short run).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_devices::virtio::block::{Block, BlockConfig, CacheType, IoEngine};
use ember_devices::virtio::testing::{
    guest_memory, Desc, GuestAlloc, MmioDriver, TempFile, TestQueue,
};
use ember_devices::virtio::{
    VirtioDevice, VirtioMmioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use ember_devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

const FILE_SIZE: u64 = 256 << 20;
const QUEUE: u16 = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    RandRead4k,
    RandWrite4k,
    SeqRead1m,
    SeqWrite1m,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::RandRead4k => "4k-randread",
            Pattern::RandWrite4k => "4k-randwrite",
            Pattern::SeqRead1m => "1m-seqread",
            Pattern::SeqWrite1m => "1m-seqwrite",
        }
    }
    fn block(self) -> u64 {
        match self {
            Pattern::RandRead4k | Pattern::RandWrite4k => 4096,
            _ => 1 << 20,
        }
    }
    fn write(self) -> bool {
        matches!(self, Pattern::RandWrite4k | Pattern::SeqWrite1m)
    }
    /// Byte offsets of `n` requests.
    fn offsets(self, n: usize) -> Vec<u64> {
        let slots = FILE_SIZE / self.block();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n as u64)
            .map(|i| match self {
                Pattern::RandRead4k | Pattern::RandWrite4k => {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % slots) * self.block()
                }
                _ => (i % slots) * self.block(),
            })
            .collect()
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    blk: Arc<Mutex<Block>>,
    q: TestQueue,
    _dev: VirtioMmioDevice,
    hdrs: Vec<u64>,
    data: Vec<u64>,
    status: Vec<u64>,
}

fn rig(file: &TempFile, engine: IoEngine, batch: usize, block: u64) -> Option<Rig> {
    let cfg = BlockConfig {
        drive_id: "bench".into(),
        path_on_host: file.path().to_owned(),
        is_read_only: false,
        cache_type: CacheType::Writeback,
        io_engine: engine,
        rate_limiter: None,
    };
    let blk = Arc::new(Mutex::new(Block::new(&cfg).ok()?));
    let mem_size = batch as u64 * block + (16 << 20);
    let mem = guest_memory(mem_size as usize);
    let dev = VirtioMmioDevice::new(blk.clone(), mem.clone(), NoIrq).unwrap();
    let q = TestQueue::new(&mem, GuestAddress(0x1000), QUEUE);
    MmioDriver::new(dev.bus_device()).bring_up(
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_RING_EVENT_IDX),
        &[&q],
    );
    let mut alloc = GuestAlloc::new(0x10_0000, mem_size);
    let hdrs = (0..batch).map(|_| alloc.alloc(16, 16)).collect();
    let status = (0..batch).map(|_| alloc.alloc(1, 1)).collect();
    let data = (0..batch).map(|_| alloc.alloc(block, 4096)).collect();
    Some(Rig {
        mem,
        blk,
        q,
        _dev: dev,
        hdrs,
        data,
        status,
    })
}

struct NoIrq;
impl ember_devices::Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// Runs `offsets` through the device in batches; returns the elapsed time.
fn run_device(r: &mut Rig, p: Pattern, offsets: &[u64]) -> Duration {
    let batch = r.hdrs.len();
    let block = p.block() as u32;
    let mut total = Duration::ZERO;
    for chunk in offsets.chunks(batch) {
        for (i, off) in chunk.iter().enumerate() {
            let mut h = [0u8; 16];
            h[0] = u8::from(p.write());
            h[8..16].copy_from_slice(&(off / 512).to_le_bytes());
            r.mem.write_slice(&h, GuestAddress(r.hdrs[i])).unwrap();
            let data = if p.write() {
                Desc::readable(r.data[i], block)
            } else {
                Desc::writable(r.data[i], block)
            };
            r.q.add_chain(&[
                Desc::readable(r.hdrs[i], 16),
                data,
                Desc::writable(r.status[i], 1),
            ]);
        }
        let start = Instant::now();
        r.blk.lock().unwrap().queue_notified(0);
        let mut done = r.q.take_used().len();
        while done < chunk.len() {
            // Async engine: completions arrive on its eventfd.
            r.blk
                .lock()
                .unwrap()
                .backend_event(1, event_manager::EventSet::IN);
            done += r.q.take_used().len();
        }
        total += start.elapsed();
    }
    let t = total;
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(r.status[0])).unwrap(), 0);
    t
}

/// The same requests with pread/pwrite, cycling through as many buffers as
/// the device batch uses (so both sides touch the same amount of memory).
fn run_raw(file: &std::fs::File, p: Pattern, offsets: &[u64], batch: usize) -> Duration {
    let mut bufs: Vec<Vec<u8>> = (0..batch)
        .map(|_| vec![0x5au8; p.block() as usize])
        .collect();
    let start = Instant::now();
    for (i, &off) in offsets.iter().enumerate() {
        let buf = &mut bufs[i % batch];
        if p.write() {
            file.write_all_at(buf, off).unwrap();
        } else {
            file.read_exact_at(buf, off).unwrap();
        }
    }
    start.elapsed()
}

fn main() {
    let quick = std::env::var_os("EMBER_BENCH_QUICK").is_some();
    let file = TempFile::new("bench-blk", 0).unwrap();
    {
        let f = OpenOptions::new().write(true).open(file.path()).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        for i in 0..FILE_SIZE >> 20 {
            f.write_all_at(&chunk, i << 20).unwrap();
        }
        f.sync_all().unwrap();
    }
    let raw_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file.path())
        .unwrap();
    println!(
        "virtio-blk vs raw pread/pwrite, {} MiB file, page cache warm",
        FILE_SIZE >> 20
    );
    println!(
        "{:<7} {:<13} {:>12} {:>12} {:>12} {:>12} {:>7}",
        "engine", "pattern", "dev MiB/s", "dev IOPS", "raw MiB/s", "raw IOPS", "ratio"
    );
    for engine in [IoEngine::Sync, IoEngine::Async] {
        for p in [
            Pattern::RandRead4k,
            Pattern::RandWrite4k,
            Pattern::SeqRead1m,
            Pattern::SeqWrite1m,
        ] {
            let (n, batch) = match (p.block(), quick) {
                (4096, false) => (200_000, 128),
                (4096, true) => (20_000, 128),
                (_, false) => (2048, 32),
                (_, true) => (256, 32),
            };
            let Some(mut r) = rig(&file, engine, batch, p.block()) else {
                println!("{:<7} (unavailable on this host)", "Async");
                break;
            };
            let offsets = p.offsets(n);
            // Warm-up, then alternate device and raw runs; keep the best of 3.
            run_device(&mut r, p, &offsets[..n / 10]);
            run_raw(&raw_file, p, &offsets[..n / 10], batch);
            let mut dev = Duration::MAX;
            let mut raw = Duration::MAX;
            for _ in 0..3 {
                dev = dev.min(run_device(&mut r, p, &offsets));
                raw = raw.min(run_raw(&raw_file, p, &offsets, batch));
            }
            let mib = (n as u64 * p.block()) as f64 / (1 << 20) as f64;
            let e = if engine == IoEngine::Sync {
                "Sync"
            } else {
                "Async"
            };
            println!(
                "{:<7} {:<13} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>6.1}%",
                e,
                p.name(),
                mib / dev.as_secs_f64(),
                n as f64 / dev.as_secs_f64(),
                mib / raw.as_secs_f64(),
                n as f64 / raw.as_secs_f64(),
                100.0 * raw.as_secs_f64() / dev.as_secs_f64()
            );
        }
    }
}
