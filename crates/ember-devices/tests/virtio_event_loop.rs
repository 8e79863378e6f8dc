//! End to end, as the VMM wires devices: the transport on an MMIO bus driven
//! from the test thread (a vCPU), queue notifications through the eventfds
//! a KVM ioeventfd would signal, an `EventManager` on its own thread running
//! the subscribers, and interrupts on an irqfd-style `EventFdTrigger`.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember_devices::virtio::block::{Block, BlockConfig, BlockHandle, CacheType, IoEngine};
use ember_devices::virtio::rng::{Rng, RngConfig};
use ember_devices::virtio::testing::{
    guest_memory, Desc, GuestAlloc, MmioDriver, TempFile, TestQueue,
};
use ember_devices::virtio::vsock::packet::{
    Header, HDR_LEN, HOST_CID, OP_REQUEST, OP_RESPONSE, OP_RW, TYPE_STREAM,
};
use ember_devices::virtio::vsock::{Vsock, VsockConfig};
use ember_devices::virtio::{VirtioMmioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use ember_devices::{Bus, EventFdTrigger, GuestMemoryMmap};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const BASE: u64 = 0xd000_0000;
const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_RING_EVENT_IDX);

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

struct EventLoop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    fn start(subs: Vec<Subscriber>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut em: EventManager<Subscriber> = EventManager::new().unwrap();
            for sub in subs {
                em.add_subscriber(sub);
            }
            while !s.load(Ordering::SeqCst) {
                em.run_with_timeout(20).unwrap();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Waits until the irqfd fires.
fn wait_irq(irq: &EventFd) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while irq.read().is_err() {
        assert!(Instant::now() < deadline, "no interrupt");
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Wired {
    dev: VirtioMmioDevice,
    driver: MmioDriver,
    notifiers: Vec<(u32, EventFd)>,
    irq: EventFdTrigger,
}

fn wire(dev: VirtioMmioDevice, irq: EventFdTrigger) -> Wired {
    let mut bus = Bus::new();
    bus.insert(dev.bus_device(), BASE, 0x1000).unwrap();
    let notifiers = dev.queue_notifiers().unwrap();
    Wired {
        driver: MmioDriver::new(dev.bus_device()),
        dev,
        notifiers,
        irq,
    }
}

impl Wired {
    /// What the guest's QueueNotify write does through a KVM ioeventfd.
    fn kick(&self, queue: u32) {
        self.notifiers[queue as usize].1.write(1).unwrap();
    }
}

#[test]
fn block_device_through_the_event_loop() {
    let file = TempFile::new("e2e-blk", 1 << 20).unwrap();
    let cfg = BlockConfig {
        drive_id: "data".into(),
        path_on_host: file.path().to_owned(),
        is_read_only: false,
        cache_type: CacheType::Writeback,
        io_engine: IoEngine::Sync,
        rate_limiter: None,
    };
    let blk = Arc::new(Mutex::new(Block::new(&cfg).unwrap()));
    let handle = BlockHandle::new(&blk);
    let mem: GuestMemoryMmap = guest_memory(8 << 20);
    let irq = EventFdTrigger::new().unwrap();
    let w = wire(
        VirtioMmioDevice::new(blk, mem.clone(), irq.clone()).unwrap(),
        irq,
    );
    assert_eq!(w.dev.device_type(), 2);
    let _el = EventLoop::start(vec![w.dev.subscriber()]);

    let mut q = TestQueue::new(&mem, GuestAddress(0x1000), 256);
    w.driver.bring_up(FEATURES, &[&q]);
    let mut alloc = GuestAlloc::new(0x10_0000, 8 << 20);
    let hdr = alloc.alloc(16, 16);
    let data = alloc.alloc(4096, 4096);
    let status = alloc.alloc(1, 1);
    let mut h = [0u8; 16];
    h[0] = 1; // OUT
    h[8] = 8; // sector 8
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    mem.write_slice(&[0x42; 4096], GuestAddress(data)).unwrap();
    q.add_chain(&[
        Desc::readable(hdr, 16),
        Desc::readable(data, 4096),
        Desc::writable(status, 1),
    ]);
    w.kick(0);
    wait_irq(w.irq.eventfd());
    assert_eq!(q.take_used(), vec![(0, 1)]);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status)).unwrap(), 0);
    let mut back = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(file.path()).unwrap(),
        &mut back,
        4096,
    )
    .unwrap();
    assert_eq!(back, vec![0x42; 4096]);
    let m = serde_json::to_value(&*handle.metrics()).unwrap();
    assert_eq!(m["write_bytes"], 4096);

    // Reset and bring up again: the event loop follows.
    w.driver.write32(0x70, 0);
    q = TestQueue::new(&mem, GuestAddress(0x1000), 256);
    w.driver.bring_up(FEATURES, &[&q]);
    h[0] = 0; // IN
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    q.add_chain(&[
        Desc::readable(hdr, 16),
        Desc::writable(data, 4096),
        Desc::writable(status, 1),
    ]);
    w.kick(0);
    wait_irq(w.irq.eventfd());
    assert_eq!(q.take_used(), vec![(0, 4097)]);
}

#[test]
fn async_block_device_through_the_event_loop() {
    let file = TempFile::new("e2e-blk-async", 1 << 20).unwrap();
    let cfg = BlockConfig {
        drive_id: "async".into(),
        path_on_host: file.path().to_owned(),
        is_read_only: false,
        cache_type: CacheType::Writeback,
        io_engine: IoEngine::Async,
        rate_limiter: None,
    };
    let blk = match Block::new(&cfg) {
        Ok(b) => Arc::new(Mutex::new(b)),
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    let mem = guest_memory(8 << 20);
    let irq = EventFdTrigger::new().unwrap();
    let w = wire(
        VirtioMmioDevice::new(blk, mem.clone(), irq.clone()).unwrap(),
        irq,
    );
    let _el = EventLoop::start(vec![w.dev.subscriber()]);
    let mut q = TestQueue::new(&mem, GuestAddress(0x1000), 256);
    w.driver.bring_up(FEATURES, &[&q]);
    let mut alloc = GuestAlloc::new(0x10_0000, 8 << 20);
    let mut heads = Vec::new();
    for i in 0..16u8 {
        let hdr = alloc.alloc(16, 16);
        let data = alloc.alloc(512, 512);
        let status = alloc.alloc(1, 1);
        let mut h = [0u8; 16];
        h[0] = 1;
        h[8] = i;
        mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        mem.write_slice(&[i; 512], GuestAddress(data)).unwrap();
        heads.push(q.add_chain(&[
            Desc::readable(hdr, 16),
            Desc::readable(data, 512),
            Desc::writable(status, 1),
        ]));
    }
    w.kick(0);
    let mut used = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while used.len() < 16 {
        assert!(Instant::now() < deadline);
        let _ = w.irq.eventfd().read();
        used.extend(q.take_used());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(used.iter().all(|u| u.1 == 1));
    let mut back = vec![0u8; 16 * 512];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(file.path()).unwrap(),
        &mut back,
        0,
    )
    .unwrap();
    for i in 0..16 {
        assert!(back[i * 512..(i + 1) * 512].iter().all(|&b| b == i as u8));
    }
}

#[test]
fn rng_through_the_event_loop() {
    let rng = Arc::new(Mutex::new(Rng::new(RngConfig::default()).unwrap()));
    let mem = guest_memory(4 << 20);
    let irq = EventFdTrigger::new().unwrap();
    let w = wire(
        VirtioMmioDevice::new(rng, mem.clone(), irq.clone()).unwrap(),
        irq,
    );
    let _el = EventLoop::start(vec![w.dev.subscriber()]);
    let mut q = TestQueue::new(&mem, GuestAddress(0x1000), 256);
    w.driver.bring_up(FEATURES, &[&q]);
    q.add_chain(&[Desc::writable(0x10_0000, 64)]);
    w.kick(0);
    wait_irq(w.irq.eventfd());
    assert_eq!(q.take_used(), vec![(0, 64)]);
}

#[test]
fn vsock_guest_connect_through_the_event_loop() {
    let dir = std::env::temp_dir().join(format!("ember-e2e-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let host = UnixListener::bind(dir.join("v.sock_1024")).unwrap();
    let vsock = Arc::new(Mutex::new(
        Vsock::new(&VsockConfig {
            guest_cid: 3,
            uds_path: uds,
        })
        .unwrap(),
    ));
    let mem = guest_memory(4 << 20);
    let irq = EventFdTrigger::new().unwrap();
    let w = wire(
        VirtioMmioDevice::new(vsock, mem.clone(), irq.clone()).unwrap(),
        irq,
    );
    let _el = EventLoop::start(vec![w.dev.subscriber()]);
    let mut rx = TestQueue::new(&mem, GuestAddress(0x1000), 256);
    let mut tx = TestQueue::new(&mem, GuestAddress(0x8000), 256);
    let ev = TestQueue::new(&mem, GuestAddress(0x10000), 256);
    w.driver.bring_up(FEATURES, &[&rx, &tx, &ev]);
    for i in 0..4 {
        rx.add_chain(&[Desc::writable(0x20_0000 + i * 0x2000, 0x2000)]);
    }
    let pkt = |op, len: u32| Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 5000,
        dst_port: 1024,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    };
    mem.write_slice(&pkt(OP_REQUEST, 0).to_bytes(), GuestAddress(0x10_0000))
        .unwrap();
    tx.add_chain(&[Desc::readable(0x10_0000, HDR_LEN as u32)]);
    w.kick(1);
    wait_irq(w.irq.eventfd());
    let used = rx.take_used();
    assert_eq!(used.len(), 1);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(Header::from_bytes(&raw).op, OP_RESPONSE);
    let (mut s, _) = host.accept().unwrap();
    // Host to guest: the event loop sees the socket and fills a buffer.
    s.write_all(b"ping").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(Instant::now() < deadline);
        got = rx.take_used();
        std::thread::sleep(Duration::from_millis(1));
    }
    let at = 0x20_0000 + u64::from(got[0].0) * 0x2000;
    mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
    let h = Header::from_bytes(&raw);
    assert_eq!((h.op, h.len), (OP_RW, 4));
    // Guest to host.
    mem.write_slice(&pkt(OP_RW, 4).to_bytes(), GuestAddress(0x10_1000))
        .unwrap();
    mem.write_slice(b"pong", GuestAddress(0x10_1000 + HDR_LEN as u64))
        .unwrap();
    tx.add_chain(&[Desc::readable(0x10_1000, HDR_LEN as u32 + 4)]);
    w.kick(1);
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restored_block_device_is_started_by_the_event_loop() {
    let file = TempFile::new("e2e-blk-snap", 1 << 20).unwrap();
    let cfg = BlockConfig {
        drive_id: "data".into(),
        path_on_host: file.path().to_owned(),
        is_read_only: false,
        cache_type: CacheType::Writeback,
        io_engine: IoEngine::Sync,
        rate_limiter: None,
    };
    let mem: GuestMemoryMmap = guest_memory(8 << 20);
    let irq = EventFdTrigger::new().unwrap();
    let w = wire(
        VirtioMmioDevice::new(Block::shared(&cfg).unwrap(), mem.clone(), irq.clone()).unwrap(),
        irq,
    );
    let el = EventLoop::start(vec![w.dev.subscriber()]);
    let mut q = TestQueue::new(&mem, GuestAddress(0x1000), 256);
    w.driver.bring_up(FEATURES, &[&q]);
    let mut alloc = GuestAlloc::new(0x10_0000, 8 << 20);
    // One write per call: header, data, status.
    let mut write = |q: &mut TestQueue, sector: u64, fill: u8| {
        let h = alloc.alloc(16, 16);
        let mut hdr = [0u8; 16];
        hdr[0] = 1;
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&hdr, GuestAddress(h)).unwrap();
        let d = alloc.alloc(512, 512);
        mem.write_slice(&[fill; 512], GuestAddress(d)).unwrap();
        let s = alloc.alloc(1, 1);
        q.add_chain(&[
            Desc::readable(h, 16),
            Desc::readable(d, 512),
            Desc::writable(s, 1),
        ])
    };
    write(&mut q, 0, 1);
    w.kick(0);
    wait_irq(w.irq.eventfd());
    assert_eq!(q.take_used(), vec![(0, 1)]);
    // Published while the vCPUs are being paused: no notification yet.
    let pending = write(&mut q, 1, 2);
    let state = w.dev.save();
    drop(el);

    let irq = EventFdTrigger::new().unwrap();
    let restored = VirtioMmioDevice::restore(
        Block::shared(&cfg).unwrap(),
        mem.clone(),
        irq.clone(),
        &state,
    )
    .unwrap();
    let w = wire(restored, irq);
    // The event loop starts the device when its subscriber joins.
    let _el = EventLoop::start(vec![w.dev.subscriber()]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut used = Vec::new();
    while used.is_empty() {
        assert!(Instant::now() < deadline, "pending request never served");
        used = q.take_used();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(used, vec![(u32::from(pending), 1)]);
    // And the guest's next notification goes through the new ioeventfd.
    let next = write(&mut q, 2, 3);
    w.kick(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut used = Vec::new();
    while used.is_empty() {
        assert!(
            Instant::now() < deadline,
            "request after restore never served"
        );
        used = q.take_used();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(used, vec![(u32::from(next), 1)]);
    let mut back = vec![0u8; 3 * 512];
    std::fs::File::open(file.path())
        .unwrap()
        .read_exact(&mut back)
        .unwrap();
    for (i, chunk) in back.chunks(512).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8 + 1), "sector {i}");
    }
}
