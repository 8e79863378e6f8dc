//! An in-process fake virtio driver, for tests, fuzzing and benchmarks.
//!
//! [`TestQueue`] lays out a split virtqueue (descriptor table, available
//! and used rings) in a `GuestMemoryMmap` and plays the driver's side of
//! it: writing descriptors, publishing chains, reading used entries.
//! [`MmioDriver`] plays the driver's side of the virtio-mmio registers:
//! reset, feature negotiation, queue setup and DRIVER_OK. [`GuestAlloc`]
//! hands out buffer addresses. Nothing here is used by the VMM.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueState};
use vm_memory::{Address, Bytes, GuestAddress};

use super::device::status;
use super::mmio::reg;
use crate::bus::BusDevice;
use crate::GuestMemoryMmap;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A descriptor as the driver writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// VIRTQ_DESC_F_* flags.
    pub flags: u16,
    /// Next descriptor index when `flags` has NEXT.
    pub next: u16,
}

impl Desc {
    /// A buffer the device reads.
    pub fn readable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            flags: 0,
            next: 0,
        }
    }

    /// A buffer the device writes.
    pub fn writable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            flags: F_WRITE,
            next: 0,
        }
    }

    /// A descriptor pointing to an indirect table of `len` bytes.
    pub fn indirect(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            flags: F_INDIRECT,
            next: 0,
        }
    }

    /// The same descriptor chained to `next`.
    pub fn next(mut self, next: u16) -> Self {
        self.flags |= F_NEXT;
        self.next = next;
        self
    }

    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// The driver's side of one split virtqueue in guest memory.
#[derive(Debug)]
pub struct TestQueue {
    mem: GuestMemoryMmap,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl TestQueue {
    /// Bytes a queue of `size` entries takes from its base address.
    pub fn footprint(size: u16) -> u64 {
        let s = u64::from(size);
        let used = (16 * s + 6 + 2 * s).next_multiple_of(4);
        used + 6 + 8 * s
    }

    /// A queue of `size` entries laid out from `base` (16-byte aligned).
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        let s = u64::from(size);
        let avail = base.unchecked_add(16 * s);
        let used = base.unchecked_add((16 * s + 6 + 2 * s).next_multiple_of(4));
        let zero = vec![0u8; Self::footprint(size) as usize];
        mem.write_slice(&zero, base)
            .expect("queue outside guest memory");
        Self {
            mem: mem.clone(),
            desc: base,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Descriptor table address.
    pub fn desc_addr(&self) -> GuestAddress {
        self.desc
    }

    /// Available ring address.
    pub fn avail_addr(&self) -> GuestAddress {
        self.avail
    }

    /// Used ring address.
    pub fn used_addr(&self) -> GuestAddress {
        self.used
    }

    /// Writes descriptor `index` verbatim.
    pub fn write_desc(&mut self, index: u16, d: Desc) {
        let addr = self.desc.unchecked_add(16 * u64::from(index));
        self.mem.write_slice(&d.bytes(), addr).unwrap();
    }

    /// Writes an indirect table at `addr`, chaining the entries in order.
    pub fn write_indirect_table(&mut self, addr: GuestAddress, descs: &[Desc]) {
        for (i, d) in descs.iter().enumerate() {
            let mut d = *d;
            if i + 1 < descs.len() && d.flags & F_INDIRECT == 0 {
                d = d.next(i as u16 + 1);
            }
            self.mem
                .write_slice(&d.bytes(), addr.unchecked_add(16 * i as u64))
                .unwrap();
        }
    }

    /// Publishes `head` in the available ring.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), self.avail.unchecked_add(4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(
                self.avail_idx.to_le(),
                self.avail.unchecked_add(2),
                Ordering::Release,
            )
            .unwrap();
    }

    /// Writes `descs` as one chain in free table slots and publishes it.
    /// Returns the head index.
    pub fn add_chain(&mut self, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        let n = descs.len() as u16;
        for (i, d) in descs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let mut d = *d;
            if (i as u16) + 1 < n {
                d = d.next((idx + 1) % self.size);
            }
            self.write_desc(idx, d);
        }
        self.next_desc = (head + n.max(1)) % self.size;
        self.push_avail(head);
        head
    }

    /// Publishes several chains and returns their heads.
    pub fn add_chains(&mut self, chains: &[Vec<Desc>]) -> Vec<u16> {
        chains.iter().map(|c| self.add_chain(c)).collect()
    }

    /// The available ring index the driver published.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Sets `used_event` (the EVENT_IDX interrupt threshold).
    pub fn set_used_event(&mut self, v: u16) {
        let addr = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj(v.to_le(), addr).unwrap();
    }

    /// Reads `avail_event` (the device's notification threshold).
    pub fn avail_event(&self) -> u16 {
        let addr = self.used.unchecked_add(4 + 8 * u64::from(self.size));
        u16::from_le(self.mem.read_obj(addr).unwrap())
    }

    /// Reads the used ring's flags.
    pub fn used_flags(&self) -> u16 {
        u16::from_le(self.mem.read_obj(self.used).unwrap())
    }

    /// The used ring index the device published.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(
            self.mem
                .load(self.used.unchecked_add(2), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// New `(id, len)` used entries since the last call.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.used_idx();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let at = self.used.unchecked_add(4 + 8 * slot);
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((u32::from_le(id), u32::from_le(len)));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// A ready device-side `Queue` on this layout, bypassing the transport.
    pub fn queue(&self, event_idx: bool) -> Queue {
        Queue::try_from(QueueState {
            max_size: self.size,
            next_avail: 0,
            next_used: 0,
            event_idx_enabled: event_idx,
            size: self.size,
            ready: true,
            desc_table: self.desc.0,
            avail_ring: self.avail.0,
            used_ring: self.used.0,
        })
        .unwrap()
    }
}

/// A bump allocator for guest buffers.
#[derive(Debug, Clone)]
pub struct GuestAlloc {
    next: u64,
    end: u64,
}

impl GuestAlloc {
    /// Allocates from `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        Self { next: start, end }
    }

    /// `len` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let at = self.next.next_multiple_of(align);
        assert!(at + len <= self.end, "guest allocator exhausted");
        self.next = at + len;
        at
    }
}

/// The driver's side of the virtio-mmio registers.
pub struct MmioDriver {
    bus: Arc<Mutex<dyn BusDevice>>,
}

impl std::fmt::Debug for MmioDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MmioDriver")
    }
}

impl MmioDriver {
    /// Drives the register file `bus` (a transport's `bus_device()`).
    pub fn new(bus: Arc<Mutex<dyn BusDevice>>) -> Self {
        Self { bus }
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.bus.lock().unwrap().read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: u64, v: u32) {
        self.bus.lock().unwrap().write(offset, &v.to_le_bytes());
    }

    /// Reads `len` bytes of device configuration at `offset`.
    pub fn read_config(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.bus.lock().unwrap().read(reg::CONFIG + offset, &mut b);
        b
    }

    /// The device's offered features.
    pub fn device_features(&self) -> u64 {
        self.write32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read32(reg::DEVICE_FEATURES);
        self.write32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read32(reg::DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Status register.
    pub fn status(&self) -> u32 {
        self.read32(reg::STATUS)
    }

    /// Resets, acknowledges and writes `features`; returns whether the
    /// device accepted them (FEATURES_OK stuck).
    pub fn negotiate(&self, features: u64) -> bool {
        self.write32(reg::STATUS, 0);
        self.write32(reg::STATUS, status::ACKNOWLEDGE);
        self.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write32(reg::DRIVER_FEATURES_SEL, 0);
        self.write32(reg::DRIVER_FEATURES, features as u32);
        self.write32(reg::DRIVER_FEATURES_SEL, 1);
        self.write32(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write32(reg::STATUS, s);
        self.status() & status::FEATURES_OK != 0
    }

    /// Programs queue `index` with `q`'s layout and enables it; returns
    /// whether QueueReady reads back as 1.
    pub fn setup_queue(&self, index: u32, q: &TestQueue) -> bool {
        self.write32(reg::QUEUE_SEL, index);
        self.write32(reg::QUEUE_NUM, u32::from(q.size()));
        let w = |lo, hi, a: GuestAddress| {
            self.write32(lo, a.0 as u32);
            self.write32(hi, (a.0 >> 32) as u32);
        };
        w(reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, q.desc_addr());
        w(
            reg::QUEUE_DRIVER_LOW,
            reg::QUEUE_DRIVER_HIGH,
            q.avail_addr(),
        );
        w(reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH, q.used_addr());
        self.write32(reg::QUEUE_READY, 1);
        self.read32(reg::QUEUE_READY) == 1
    }

    /// Sets DRIVER_OK; returns the resulting status.
    pub fn driver_ok(&self) -> u32 {
        let s = self.status() & !status::DEVICE_NEEDS_RESET;
        self.write32(reg::STATUS, s | status::DRIVER_OK);
        self.status()
    }

    /// Notifies queue `index` through the QueueNotify register.
    pub fn notify(&self, index: u32) {
        self.write32(reg::QUEUE_NOTIFY, index);
    }

    /// Reads and acknowledges the interrupt status.
    pub fn ack_interrupt(&self) -> u32 {
        let isr = self.read32(reg::INTERRUPT_STATUS);
        self.write32(reg::INTERRUPT_ACK, isr);
        isr
    }

    /// Negotiates `features`, sets up `queues` in order and sets DRIVER_OK.
    /// Panics if any step is refused (test convenience).
    pub fn bring_up(&self, features: u64, queues: &[&TestQueue]) {
        assert!(self.negotiate(features), "features refused");
        for (i, q) in queues.iter().enumerate() {
            assert!(self.setup_queue(i as u32, q), "queue {i} refused");
        }
        let s = self.driver_ok();
        assert_eq!(s & status::DEVICE_NEEDS_RESET, 0, "device needs reset");
        assert_ne!(s & status::DRIVER_OK, 0);
    }
}

/// Guest memory of `size` bytes at address 0.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory")
}

/// A file in the temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempFile {
    path: std::path::PathBuf,
}

impl TempFile {
    /// A new empty file named after `tag`, of `len` bytes (sparse).
    pub fn new(tag: &str, len: u64) -> std::io::Result<Self> {
        use std::sync::atomic::AtomicU64;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ember-{tag}-{}-{n}", std::process::id()));
        let f = std::fs::File::create(&path)?;
        f.set_len(len)?;
        Ok(Self { path })
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
