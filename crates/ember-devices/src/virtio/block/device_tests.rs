//! virtio-blk device tests: a fake driver against real files.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::rate_limiter::{ManualClock, TokenBucketConfig};
use crate::trigger::test_util::CountingTrigger;
use crate::virtio::block::request::{T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES};
use crate::virtio::block::{BlockHandle, IoEngine};
use crate::virtio::testing::{guest_memory, Desc, GuestAlloc, MmioDriver, TempFile, TestQueue};
use crate::virtio::{status, VirtioMmioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};

const MIB: u64 = 1 << 20;
const V1: u64 = 1 << VIRTIO_F_VERSION_1;

struct Rig {
    mem: GuestMemoryMmap,
    cfg: BlockConfig,
    file: TempFile,
    blk: Arc<Mutex<Block>>,
    dev: VirtioMmioDevice,
    q: TestQueue,
    irq: CountingTrigger,
    alloc: GuestAlloc,
}

fn config(file: &TempFile) -> BlockConfig {
    BlockConfig {
        drive_id: "rootfs".into(),
        path_on_host: file.path().to_owned(),
        is_read_only: false,
        cache_type: CacheType::Writeback,
        io_engine: IoEngine::Sync,
        rate_limiter: None,
    }
}

fn rig_with(features: u64, f: impl FnOnce(&mut BlockConfig)) -> Option<Rig> {
    let file = TempFile::new("blk", 4 * MIB).unwrap();
    let mut cfg = config(&file);
    f(&mut cfg);
    let blk = match Block::shared(&cfg.clone()) {
        Ok(b) => b,
        Err(BlockError::Uring(e)) => {
            eprintln!("skipping: {e}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let mem = guest_memory(16 * MIB as usize);
    let irq = CountingTrigger::default();
    let dev = VirtioMmioDevice::new(blk.clone(), mem.clone(), irq.clone()).unwrap();
    let q = TestQueue::new(&mem, GuestAddress(0x1000), QUEUE_SIZE);
    MmioDriver::new(dev.bus_device()).bring_up(features | V1, &[&q]);
    Some(Rig {
        mem,
        cfg,
        file,
        blk,
        dev,
        q,
        irq,
        alloc: GuestAlloc::new(0x10_0000, 16 * MIB),
    })
}

fn rig() -> Rig {
    rig_with(0, |_| {}).unwrap()
}

impl Rig {
    fn header(&mut self, kind: u32, sector: u64) -> u64 {
        let at = self.alloc.alloc(16, 16);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
        at
    }

    fn status_buf(&mut self) -> u64 {
        let at = self.alloc.alloc(1, 1);
        self.mem.write_obj(0xaau8, GuestAddress(at)).unwrap();
        at
    }

    /// Runs one request; returns (used len, status byte).
    fn request(&mut self, kind: u32, sector: u64, data: &[Desc]) -> (u32, u8) {
        let h = self.header(kind, sector);
        let s = self.status_buf();
        let mut chain = vec![Desc::readable(h, 16)];
        chain.extend_from_slice(data);
        chain.push(Desc::writable(s, 1));
        self.q.add_chain(&chain);
        self.run();
        let used = self.q.take_used();
        assert_eq!(used.len(), 1);
        (used[0].1, self.mem.read_obj(GuestAddress(s)).unwrap())
    }

    fn run(&mut self) {
        self.blk.lock().unwrap().queue_notified(0);
        // The async engine completes on its eventfd.
        for _ in 0..1000 {
            let inflight = self
                .blk
                .lock()
                .unwrap()
                .engine
                .as_ref()
                .map_or(0, |e| e.in_flight());
            if inflight == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            self.blk
                .lock()
                .unwrap()
                .backend_event(TOKEN_URING, EventSet::IN);
        }
    }

    /// Publishes a request without notifying the device; returns the
    /// status byte's address.
    fn publish(&mut self, kind: u32, sector: u64, data: &[Desc]) -> u64 {
        let h = self.header(kind, sector);
        let s = self.status_buf();
        let mut chain = vec![Desc::readable(h, 16)];
        chain.extend_from_slice(data);
        chain.push(Desc::writable(s, 1));
        self.q.add_chain(&chain);
        s
    }

    /// Saves the device, builds a new one from the same configuration and
    /// restores it on the same guest memory, as the VMM does. The driver
    /// side (rings, buffers) is untouched.
    fn snapshot_and_restore(&mut self) -> crate::virtio::TransportState {
        let state = self.dev.save();
        let blk = Block::shared(&self.cfg).unwrap();
        self.dev =
            VirtioMmioDevice::restore(blk.clone(), self.mem.clone(), self.irq.clone(), &state)
                .unwrap();
        self.blk = blk;
        state
    }

    fn buffer(&mut self, bytes: &[u8]) -> u64 {
        let at = self.alloc.alloc(bytes.len() as u64, 512);
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        at
    }
}

fn write_then_read(r: &mut Rig) {
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    let a = r.buffer(&data[..4096]);
    let b = r.buffer(&data[4096..]);
    let (len, st) = r.request(
        T_OUT,
        10,
        &[Desc::readable(a, 4096), Desc::readable(b, 4096)],
    );
    assert_eq!((len, st), (1, S_OK));
    let mut on_disk = vec![0u8; 8192];
    std::fs::File::open(r.file.path())
        .unwrap()
        .read_exact_at(&mut on_disk, 10 * 512)
        .unwrap();
    assert_eq!(on_disk, data);
    let out = r.alloc.alloc(8192, 512);
    let (len, st) = r.request(T_IN, 10, &[Desc::writable(out, 8192)]);
    assert_eq!((len, st), (8193, S_OK));
    let mut back = vec![0u8; 8192];
    r.mem.read_slice(&mut back, GuestAddress(out)).unwrap();
    assert_eq!(back, data);
}

#[test]
fn write_then_read_round_trips_through_the_file() {
    let mut r = rig();
    write_then_read(&mut r);
    let m = r.blk.lock().unwrap().metrics();
    assert_eq!(m.write_bytes.load(Ordering::Relaxed), 8192);
    assert_eq!(m.read_count.load(Ordering::Relaxed), 1);
    assert!(r.irq.count() >= 2);
}

#[test]
fn async_engine_round_trips_and_flushes() {
    let Some(mut r) = rig_with(0, |c| c.io_engine = IoEngine::Async) else {
        return;
    };
    write_then_read(&mut r);
    assert_eq!(r.request(T_FLUSH, 0, &[]), (1, S_OK));
    let a = r.alloc.alloc(512, 512);
    assert_eq!(r.request(T_IN, 8191, &[Desc::writable(a, 512)]).1, S_OK);
    assert_eq!(r.request(T_IN, 8192, &[Desc::writable(a, 512)]).1, S_IOERR);
    // Reset with requests in flight drains them first.
    let h = r.header(T_IN, 0);
    let s = r.status_buf();
    r.q.add_chain(&[
        Desc::readable(h, 16),
        Desc::writable(a, 512),
        Desc::writable(s, 1),
    ]);
    r.blk.lock().unwrap().queue_notified(0);
    MmioDriver::new(r.dev.bus_device()).write32(crate::virtio::mmio::reg::STATUS, 0);
    assert_eq!(
        r.blk.lock().unwrap().engine.as_ref().unwrap().in_flight(),
        0
    );
}

#[test]
fn features_follow_config() {
    let r = rig();
    let f = r.blk.lock().unwrap().offered_features();
    assert_ne!(f & (1 << features::FLUSH), 0);
    assert_ne!(f & (1 << features::DISCARD), 0);
    assert_eq!(f & (1 << features::RO), 0);
    let ro = rig_with(1 << features::RO, |c| {
        c.is_read_only = true;
        c.cache_type = CacheType::Unsafe;
    })
    .unwrap();
    let f = ro.blk.lock().unwrap().offered_features();
    assert_ne!(f & (1 << features::RO), 0);
    assert_eq!(f & (1 << features::FLUSH), 0);
    assert_eq!(f & (1 << features::WRITE_ZEROES), 0);
    // Capacity in config space.
    let cap = MmioDriver::new(ro.dev.bus_device()).read_config(0, 8);
    assert_eq!(u64::from_le_bytes(cap.try_into().unwrap()), 4 * MIB / 512);
}

#[test]
fn read_only_refuses_writes_and_unsafe_flush_does_not_sync() {
    let mut r = rig_with(1 << features::RO, |c| {
        c.is_read_only = true;
        c.cache_type = CacheType::Unsafe;
    })
    .unwrap();
    let a = r.buffer(&[1u8; 512]);
    assert_eq!(r.request(T_OUT, 0, &[Desc::readable(a, 512)]), (1, S_IOERR));
    assert_eq!(r.request(T_FLUSH, 0, &[]), (1, S_OK));
    assert_eq!(
        r.request(T_DISCARD, 0, &[Desc::readable(a, 16)]).1,
        S_UNSUPP
    );
    let mut on_disk = [9u8; 512];
    std::fs::File::open(r.file.path())
        .unwrap()
        .read_exact_at(&mut on_disk, 0)
        .unwrap();
    assert_eq!(on_disk, [0u8; 512]);
}

#[test]
fn get_id_returns_the_drive_id() {
    let mut r = rig();
    let a = r.alloc.alloc(20, 1);
    assert_eq!(r.request(T_GET_ID, 0, &[Desc::writable(a, 20)]), (21, S_OK));
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(a)).unwrap();
    assert_eq!(&id[..6], b"rootfs");
    assert_eq!(&id[6..], &[0u8; 14]);
}

fn segment(r: &mut Rig, sector: u64, sectors: u32, flags: u32) -> u64 {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&sector.to_le_bytes());
    b[8..12].copy_from_slice(&sectors.to_le_bytes());
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    r.buffer(&b)
}

#[test]
fn discard_and_write_zeroes_punch_holes() {
    let mut r = rig();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(r.file.path())
        .unwrap();
    file.write_all_at(&vec![0x5a; MIB as usize], 0).unwrap();
    file.sync_all().unwrap();
    let blocks_before = std::fs::metadata(r.file.path()).unwrap().blocks();
    let seg = segment(&mut r, 0, 1024, 0);
    assert_eq!(
        r.request(T_DISCARD, 0, &[Desc::readable(seg, 16)]),
        (1, S_OK)
    );
    let blocks_after = std::fs::metadata(r.file.path()).unwrap().blocks();
    assert!(
        blocks_after < blocks_before,
        "{blocks_after} < {blocks_before}"
    );
    let seg = segment(&mut r, 1024, 8, 1);
    assert_eq!(
        r.request(T_WRITE_ZEROES, 0, &[Desc::readable(seg, 16)]).1,
        S_OK
    );
    let seg = segment(&mut r, 1032, 8, 0);
    assert_eq!(
        r.request(T_WRITE_ZEROES, 0, &[Desc::readable(seg, 16)]).1,
        S_OK
    );
    let mut back = vec![1u8; MIB as usize / 2 + 8192];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    let mut tail = [0u8; 512];
    file.read_exact_at(&mut tail, 1040 * 512).unwrap();
    assert_eq!(tail, [0x5a; 512]);
}

#[test]
fn malformed_chains_never_touch_memory_outside_and_get_errors() {
    let mut r = rig();
    // Data buffer outside guest memory: chain refused, used len 0.
    let h = r.header(T_IN, 0);
    let s = r.status_buf();
    r.q.add_chain(&[
        Desc::readable(h, 16),
        Desc::writable(0xffff_0000, 512),
        Desc::writable(s, 1),
    ]);
    r.run();
    assert_eq!(r.q.take_used(), vec![(0, 0)]);
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(s)).unwrap(), 0xaa);
    // Missing status descriptor: used len 0.
    let h = r.header(T_FLUSH, 0);
    r.q.add_chain(&[Desc::readable(h, 16)]);
    r.run();
    assert_eq!(r.q.take_used()[0].1, 0);
    // Read past the end of the disk (lying sector): IOERR, file untouched.
    let a = r.alloc.alloc(4096, 512);
    assert_eq!(
        r.request(T_IN, 4 * MIB / 512 - 4, &[Desc::writable(a, 4096)])
            .1,
        S_IOERR
    );
    // Length not a multiple of 512.
    assert_eq!(r.request(T_OUT, 0, &[Desc::readable(a, 100)]).1, S_IOERR);
    // Wrong direction: write data marked device-writable.
    assert_eq!(r.request(T_OUT, 0, &[Desc::writable(a, 512)]).1, S_IOERR);
    // Header split over two buffers is fine (any layout).
    let h = r.header(T_IN, 0);
    let s = r.status_buf();
    r.q.add_chain(&[
        Desc::readable(h, 8),
        Desc::readable(h + 8, 8),
        Desc::writable(a, 512),
        Desc::writable(s, 1),
    ]);
    r.run();
    assert_eq!(r.q.take_used()[0].1, 513);
    // Unknown type.
    assert_eq!(r.request(99, 0, &[]).1, S_UNSUPP);
    // The device is still healthy.
    assert!(!r.dev.signals().needs_reset());
    write_then_read(&mut r);
}

#[test]
fn corrupt_avail_index_sets_needs_reset() {
    let mut r = rig();
    // Publish an avail idx far beyond the queue size.
    r.mem
        .write_obj(1000u16, GuestAddress(r.q.avail_addr().0 + 2))
        .unwrap();
    r.run();
    assert!(r.dev.signals().needs_reset());
    let st = MmioDriver::new(r.dev.bus_device()).status();
    assert_ne!(st & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut r = rig_with(1 << VIRTIO_F_RING_EVENT_IDX, |_| {}).unwrap();
    let a = r.alloc.alloc(512, 512);
    // Ask for an interrupt only once used idx passes 2.
    r.q.set_used_event(2);
    let before = r.irq.count();
    r.request(T_IN, 0, &[Desc::writable(a, 512)]);
    r.request(T_IN, 0, &[Desc::writable(a, 512)]);
    assert_eq!(r.irq.count(), before);
    r.request(T_IN, 0, &[Desc::writable(a, 512)]);
    assert_eq!(r.irq.count(), before + 1);
    // The device publishes avail_event so the driver knows when to notify.
    assert_eq!(r.q.avail_event(), r.q.avail_idx());
}

#[test]
fn path_update_changes_capacity_and_signals_config() {
    let r = rig();
    let handle = BlockHandle::new(&r.blk);
    let bigger = TempFile::new("blk2", 8 * MIB).unwrap();
    let gen = r.dev.signals().config_generation();
    let irqs = r.irq.count();
    handle.update_path(bigger.path()).unwrap();
    assert_eq!(r.blk.lock().unwrap().capacity(), 8 * MIB / 512);
    assert_eq!(r.dev.signals().config_generation(), gen + 1);
    assert_eq!(r.irq.count(), irqs + 1);
    let cap = MmioDriver::new(r.dev.bus_device()).read_config(0, 8);
    assert_eq!(u64::from_le_bytes(cap.try_into().unwrap()), 8 * MIB / 512);
    assert!(handle
        .update_path(std::path::Path::new("/nonexistent/x"))
        .is_err());
    assert_eq!(handle.metrics().path_updates.load(Ordering::Relaxed), 1);
    let json = serde_json::to_value(&*handle.metrics()).unwrap();
    assert_eq!(json["path_updates"], 1);
}

#[test]
fn rate_limiter_throttles_and_resumes_on_timer() {
    let mut r = rig();
    let clock = ManualClock::default();
    let cfg = RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 4096,
            one_time_burst: 0,
            refill_time: 100,
        }),
        ops: None,
    };
    r.blk
        .lock()
        .unwrap()
        .set_rate_limiter(RateLimiter::with_clock(&cfg, Box::new(clock.clone())).unwrap());
    let a = r.alloc.alloc(4096, 512);
    for _ in 0..2 {
        let h = r.header(T_IN, 0);
        let s = r.status_buf();
        r.q.add_chain(&[
            Desc::readable(h, 16),
            Desc::writable(a, 4096),
            Desc::writable(s, 1),
        ]);
    }
    r.run();
    assert_eq!(r.q.take_used().len(), 1);
    clock.advance(Duration::from_millis(100));
    r.blk
        .lock()
        .unwrap()
        .backend_event(TOKEN_RATE_LIMITER, EventSet::IN);
    assert_eq!(r.q.take_used().len(), 1);
    // Runtime update to unlimited.
    BlockHandle::new(&r.blk).update_rate_limiter(&RateLimiterConfig::default());
    assert_eq!(r.request(T_IN, 0, &[Desc::writable(a, 4096)]).1, S_OK);
}

#[test]
fn reset_and_reactivation() {
    let mut r = rig();
    let drv = MmioDriver::new(r.dev.bus_device());
    drv.write32(crate::virtio::mmio::reg::STATUS, 0);
    assert!(!r.blk.lock().unwrap().is_active());
    r.q = TestQueue::new(&r.mem, GuestAddress(0x1000), QUEUE_SIZE);
    drv.bring_up(V1, &[&r.q]);
    write_then_read(&mut r);
}

#[test]
fn restored_drive_carries_on_with_the_same_ring() {
    let mut r = rig_with(1 << VIRTIO_F_RING_EVENT_IDX, |_| {}).unwrap();
    write_then_read(&mut r);
    // A write published but not yet seen by the device at snapshot time.
    let data = r.buffer(&[0x42; 512]);
    let st = r.publish(T_OUT, 100, &[Desc::readable(data, 512)]);
    let state = r.snapshot_and_restore();
    assert_eq!(
        (state.queues[0].next_avail, state.queues[0].next_used),
        (2, 2)
    );
    assert!(r.blk.lock().unwrap().is_active());
    // The event loop runs every queue once when the subscriber joins.
    r.blk.lock().unwrap().activated();
    assert_eq!(r.q.take_used(), vec![(7, 1)]);
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(st)).unwrap(), S_OK);
    let mut on_disk = [0u8; 512];
    std::fs::File::open(r.file.path())
        .unwrap()
        .read_exact_at(&mut on_disk, 100 * 512)
        .unwrap();
    assert_eq!(on_disk, [0x42; 512]);
    // Nothing is done twice, and the guest goes on without a handshake.
    r.blk.lock().unwrap().activated();
    assert!(r.q.take_used().is_empty());
    write_then_read(&mut r);
    assert_eq!(r.q.used_idx(), 5);
    assert_eq!(r.q.avail_event(), r.q.avail_idx());
}

#[test]
fn snapshot_completes_async_requests_in_flight_first() {
    let Some(mut r) = rig_with(0, |c| c.io_engine = IoEngine::Async) else {
        return;
    };
    write_then_read(&mut r);
    let mut statuses = Vec::new();
    for i in 0..4u64 {
        let a = r.buffer(&[i as u8 + 1; 4096]);
        statuses.push(r.publish(T_OUT, 200 + 8 * i, &[Desc::readable(a, 4096)]));
    }
    let flush = r.publish(T_FLUSH, 0, &[]);
    statuses.push(flush);
    // Submitted to io_uring, not reaped.
    r.blk.lock().unwrap().queue_notified(0);
    assert!(r.blk.lock().unwrap().engine.as_ref().unwrap().in_flight() > 0);
    let state = r.snapshot_and_restore();
    // Every request went to the used ring before the state was taken.
    assert_eq!(
        (state.queues[0].next_avail, state.queues[0].next_used),
        (7, 7)
    );
    let used = r.q.take_used();
    assert_eq!(used.len(), 5);
    for s in &statuses {
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(*s)).unwrap(), S_OK);
    }
    let mut on_disk = [0u8; 4096];
    let f = std::fs::File::open(r.file.path()).unwrap();
    f.read_exact_at(&mut on_disk, (200 + 24) * 512).unwrap();
    assert_eq!(on_disk, [4u8; 4096]);
    // The restored drive, on its own io_uring, serves the same ring.
    r.blk.lock().unwrap().activated();
    assert!(r.q.take_used().is_empty());
    write_then_read(&mut r);
    assert_eq!(r.q.used_idx(), 9);
}
