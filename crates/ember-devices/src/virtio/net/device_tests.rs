//! virtio-net device tests against the in-memory back end. Tests against a
//! real TAP in a private network namespace are in `tests/virtio_net_tap.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::rate_limiter::{ManualClock, TokenBucketConfig};
use crate::trigger::test_util::CountingTrigger;
use crate::virtio::net::header::{F_NEEDS_CSUM, GSO_TCPV4};
use crate::virtio::net::tap::FakeBackend;
use crate::virtio::net::NetHandle;
use crate::virtio::testing::{guest_memory, Desc, GuestAlloc, MmioDriver, TestQueue};
use crate::virtio::{VirtioMmioDevice, VIRTIO_F_VERSION_1};

const V1: u64 = 1 << VIRTIO_F_VERSION_1;
const MRG: u64 = 1 << features::MRG_RXBUF;
const GSO_RX: u64 = (1 << features::GUEST_CSUM) | (1 << features::GUEST_TSO4);
const GSO_TX: u64 = (1 << features::CSUM) | (1 << features::HOST_TSO4);

struct Rig {
    mem: GuestMemoryMmap,
    net: Arc<Mutex<Net>>,
    fake: FakeBackend,
    rx: TestQueue,
    tx: TestQueue,
    alloc: GuestAlloc,
    _dev: VirtioMmioDevice,
}

fn config() -> NetConfig {
    NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: "unused".into(),
        guest_mac: Some(MacAddr([6, 0, 0, 0, 0, 1])),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    }
}

fn rig(features: u64) -> Rig {
    let fake = FakeBackend::new().unwrap();
    let net = Arc::new(Mutex::new(
        Net::with_backend(&config(), Box::new(fake.clone())).unwrap(),
    ));
    let mem = guest_memory(0x100_0000);
    let dev = VirtioMmioDevice::new(net.clone(), mem.clone(), CountingTrigger::default()).unwrap();
    let rx = TestQueue::new(&mem, GuestAddress(0x1000), QUEUE_SIZE);
    let tx = TestQueue::new(&mem, GuestAddress(0x8000), QUEUE_SIZE);
    MmioDriver::new(dev.bus_device()).bring_up(features | V1, &[&rx, &tx]);
    Rig {
        mem,
        net,
        fake,
        rx,
        tx,
        alloc: GuestAlloc::new(0x10_0000, 0x100_0000),
        _dev: dev,
    }
}

fn frame(hdr: [u8; 12], payload_len: usize) -> Vec<u8> {
    let mut f = hdr.to_vec();
    f.extend((0..payload_len).map(|i| (i % 253) as u8));
    f
}

impl Rig {
    fn send(&mut self, bytes: &[u8]) {
        let at = self.alloc.alloc(bytes.len() as u64, 8);
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        // Header and payload in separate buffers, as Linux does.
        let split = bytes.len().min(12);
        let mut d = vec![Desc::readable(at, split as u32)];
        if bytes.len() > split {
            d.push(Desc::readable(
                at + split as u64,
                (bytes.len() - split) as u32,
            ));
        }
        self.tx.add_chain(&d);
    }

    fn post_rx(&mut self, len: u32) -> u64 {
        let at = self.alloc.alloc(u64::from(len), 8);
        self.rx.add_chain(&[Desc::writable(at, len)]);
        at
    }

    fn kick(&self, q: usize) {
        self.net.lock().unwrap().queue_notified(q);
    }

    fn metrics(&self) -> Arc<NetMetrics> {
        self.net.lock().unwrap().metrics()
    }

    /// Saves the device and restores a new one, on a new back end (a new
    /// TAP in real life), on the same guest memory.
    fn snapshot_and_restore(&mut self) -> crate::virtio::TransportState {
        let state = self._dev.save();
        let fake = FakeBackend::new().unwrap();
        let net = Arc::new(Mutex::new(
            Net::with_backend(&config(), Box::new(fake.clone())).unwrap(),
        ));
        self._dev = VirtioMmioDevice::restore(
            net.clone(),
            self.mem.clone(),
            CountingTrigger::default(),
            &state,
        )
        .unwrap();
        self.net = net;
        self.fake = fake;
        state
    }
}

#[test]
fn transmit_hands_frames_to_the_backend() {
    let mut r = rig(0);
    let f = frame([0; 12], 100);
    r.send(&f);
    r.kick(TX);
    assert_eq!(r.tx.take_used(), vec![(0, 0)]);
    assert_eq!(r.fake.wire.lock().unwrap().from_guest, vec![f]);
    assert_eq!(r.metrics().tx_bytes.load(Ordering::Relaxed), 112);
}

#[test]
fn malformed_transmits_are_dropped_and_counted() {
    let mut r = rig(0);
    // Too short.
    r.send(&[0u8; 10]);
    // TSO not negotiated.
    let mut h = [0u8; 12];
    h[0] = F_NEEDS_CSUM;
    h[1] = GSO_TCPV4;
    h[4] = 0xa8;
    h[5] = 5;
    r.send(&frame(h, 3000));
    // Device-writable buffer in a transmit chain.
    let at = r.alloc.alloc(100, 8);
    r.tx.add_chain(&[Desc::writable(at, 100)]);
    // Buffer outside guest memory.
    r.tx.add_chain(&[Desc::readable(0xffff_0000, 100)]);
    r.kick(TX);
    assert_eq!(r.tx.take_used().len(), 4);
    assert!(r.fake.wire.lock().unwrap().from_guest.is_empty());
    assert_eq!(r.metrics().tx_malformed.load(Ordering::Relaxed), 4);
    // A backend error drops the frame and the device carries on.
    r.fake.wire.lock().unwrap().fail_next_write = Some(libc::EIO);
    r.send(&frame([0; 12], 60));
    r.send(&frame([0; 12], 61));
    r.kick(TX);
    assert_eq!(r.fake.wire.lock().unwrap().from_guest.len(), 1);
    assert_eq!(r.metrics().tx_errors.load(Ordering::Relaxed), 1);
}

#[test]
fn tso_frames_pass_when_negotiated() {
    let mut r = rig(GSO_TX);
    let mut h = [0u8; 12];
    h[0] = F_NEEDS_CSUM;
    h[1] = GSO_TCPV4;
    h[2] = 54;
    h[4] = 0xa8;
    h[5] = 5;
    h[6] = 34;
    h[8] = 16;
    r.send(&frame(h, 30000));
    r.kick(TX);
    assert_eq!(r.fake.wire.lock().unwrap().from_guest.len(), 1);
}

#[test]
fn receive_without_mrg_uses_one_buffer_per_frame() {
    let mut r = rig(0);
    let a = r.post_rx(1530);
    let f = frame([0; 12], 500);
    r.fake.inject(f.clone());
    r.net
        .lock()
        .unwrap()
        .backend_event(TOKEN_BACKEND, EventSet::IN);
    assert_eq!(r.rx.take_used(), vec![(0, 512)]);
    let mut got = vec![0u8; 512];
    r.mem.read_slice(&mut got, GuestAddress(a)).unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(&got[12..], &f[12..]);
}

#[test]
fn receive_waits_for_buffers_and_loses_nothing() {
    let mut r = rig(0);
    r.fake.inject(frame([0; 12], 100));
    r.fake.inject(frame([0; 12], 200));
    r.net
        .lock()
        .unwrap()
        .backend_event(TOKEN_BACKEND, EventSet::IN);
    assert!(r.rx.take_used().is_empty());
    assert_eq!(r.fake.wire.lock().unwrap().to_guest.len(), 2);
    r.post_rx(1530);
    r.kick(RX);
    assert_eq!(r.rx.take_used(), vec![(0, 112)]);
    r.post_rx(1530);
    r.kick(RX);
    assert_eq!(r.rx.take_used(), vec![(1, 212)]);
    assert!(r.metrics().rx_no_buffers.load(Ordering::Relaxed) >= 1);
}

#[test]
fn oversized_frame_for_the_buffer_is_dropped_not_stalled() {
    let mut r = rig(0);
    r.post_rx(256);
    r.fake.inject(frame([0; 12], 1000));
    r.fake.inject(frame([0; 12], 100));
    r.kick(RX);
    assert_eq!(r.rx.take_used(), vec![(0, 112)]);
    assert_eq!(r.metrics().rx_dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn mergeable_buffers_carry_a_large_gso_frame() {
    let mut r = rig(MRG | GSO_RX);
    assert_eq!(
        r.fake.wire.lock().unwrap().offloads,
        offload::CSUM | offload::TSO4
    );
    let mut bufs = Vec::new();
    for _ in 0..50 {
        bufs.push(r.post_rx(1526));
    }
    let f = frame([0; 12], 5000);
    r.fake.inject(f.clone());
    r.kick(RX);
    let used = r.rx.take_used();
    assert_eq!(used.len(), 4);
    assert_eq!(used.iter().map(|u| u.1).sum::<u32>(), 5012);
    let mut got = Vec::new();
    for (i, (_, len)) in used.iter().enumerate() {
        let mut b = vec![0u8; *len as usize];
        r.mem.read_slice(&mut b, GuestAddress(bufs[i])).unwrap();
        got.extend(b);
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 4);
    assert_eq!(&got[12..], &f[12..]);
    // Too few buffers for a maximum GSO frame: the device waits.
    let mut r = rig(MRG | GSO_RX);
    r.post_rx(1526);
    r.fake.inject(frame([0; 12], 100));
    r.kick(RX);
    assert!(r.rx.take_used().is_empty());
    for _ in 0..50 {
        r.post_rx(1526);
    }
    r.kick(RX);
    assert_eq!(r.rx.take_used(), vec![(0, 112)]);
}

#[test]
fn rate_limiters_throttle_both_directions() {
    let mut r = rig(0);
    let clock = ManualClock::default();
    let cfg = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time: 100,
        }),
    };
    let mk = || RateLimiter::with_clock(&cfg, Box::new(clock.clone())).unwrap();
    r.net.lock().unwrap().set_rate_limiters(mk(), mk());
    for _ in 0..2 {
        r.send(&frame([0; 12], 60));
    }
    r.kick(TX);
    assert_eq!(r.tx.take_used().len(), 1);
    clock.advance(Duration::from_millis(100));
    r.net
        .lock()
        .unwrap()
        .backend_event(TOKEN_TX_LIMITER, EventSet::IN);
    assert_eq!(r.tx.take_used().len(), 1);
    for _ in 0..3 {
        r.post_rx(1530);
        r.fake.inject(frame([0; 12], 60));
    }
    r.kick(RX);
    assert_eq!(r.rx.take_used().len(), 1);
    // Lift the limits at runtime.
    NetHandle::new(&r.net).update_rate_limiters(Some(&RateLimiterConfig::default()), None);
    r.net
        .lock()
        .unwrap()
        .backend_event(TOKEN_RX_LIMITER, EventSet::IN);
    assert_eq!(r.rx.take_used().len(), 2);
}

#[test]
fn mac_in_config_space_and_features() {
    let r = rig(0);
    let n = r.net.lock().unwrap();
    assert_ne!(n.offered_features() & (1 << features::MAC), 0);
    let mut b = [0u8; 6];
    n.read_config(0, &mut b);
    assert_eq!(b, [6, 0, 0, 0, 0, 1]);
}

#[test]
fn held_receive_buffer_is_used_by_the_restored_device() {
    let mut r = rig(0);
    r.send(&frame([0; 12], 60));
    r.kick(TX);
    assert_eq!(r.tx.take_used(), vec![(0, 0)]);
    // The device takes the guest's buffer and waits for a frame.
    let buf = r.post_rx(1530);
    r.kick(RX);
    let state = r.snapshot_and_restore();
    // It was given back: the restored device takes it again.
    assert_eq!(
        (state.queues[RX].next_avail, state.queues[RX].next_used),
        (0, 0)
    );
    assert_eq!(
        (state.queues[TX].next_avail, state.queues[TX].next_used),
        (1, 1)
    );
    assert!(r.rx.take_used().is_empty());
    // Offloads follow the restored features on the new TAP.
    assert_eq!(r.fake.wire.lock().unwrap().offloads, 0);
    let f = frame([0; 12], 300);
    r.fake.inject(f.clone());
    r.net.lock().unwrap().activated();
    assert_eq!(r.rx.take_used(), vec![(0, 312)]);
    let mut got = vec![0u8; 312];
    r.mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(&got[12..], &f[12..]);
    // Transmit carries on too.
    let g = frame([0; 12], 70);
    r.send(&g);
    r.kick(TX);
    assert_eq!(r.tx.take_used(), vec![(2, 0)]);
    assert_eq!(r.fake.wire.lock().unwrap().from_guest, vec![g]);
}

#[test]
fn held_mergeable_buffers_are_used_in_order_after_restore() {
    let mut r = rig(MRG | GSO_RX);
    let bufs: Vec<u64> = (0..10).map(|_| r.post_rx(1526)).collect();
    // Ten buffers are not enough for a 64 KiB frame: all held, waiting.
    r.kick(RX);
    assert!(r.rx.take_used().is_empty());
    let state = r.snapshot_and_restore();
    assert_eq!(state.queues[RX].next_avail, 0);
    assert_eq!(
        r.fake.wire.lock().unwrap().offloads,
        offload::CSUM | offload::TSO4
    );
    for _ in 0..40 {
        r.post_rx(1526);
    }
    let f = frame([0; 12], 5000);
    r.fake.inject(f.clone());
    r.kick(RX);
    let used = r.rx.take_used();
    assert_eq!(
        used.iter().map(|u| u.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let mut got = Vec::new();
    for (i, (_, len)) in used.iter().enumerate() {
        let mut b = vec![0u8; *len as usize];
        r.mem.read_slice(&mut b, GuestAddress(bufs[i])).unwrap();
        got.extend(b);
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 4);
    assert_eq!(&got[12..], &f[12..]);
}

#[test]
fn saving_leaves_the_running_device_usable() {
    let mut r = rig(0);
    r.post_rx(1530);
    r.kick(RX);
    let state = r._dev.save();
    assert_eq!(state.queues[RX].next_avail, 0);
    // The same device takes the buffer again when a frame comes.
    r.fake.inject(frame([0; 12], 40));
    r.net
        .lock()
        .unwrap()
        .backend_event(TOKEN_BACKEND, EventSet::IN);
    assert_eq!(r.rx.take_used(), vec![(0, 52)]);
}

#[test]
fn buffers_held_before_a_malformed_chain_are_returned_empty_never_twice() {
    let mut r = rig(MRG | GSO_RX);
    r.post_rx(1526);
    let at = r.alloc.alloc(100, 8);
    r.rx.add_chain(&[Desc::readable(at, 100)]);
    r.post_rx(1526);
    r.kick(RX);
    // The malformed chain is returned at once; the two good ones are held.
    let mut seen = r.rx.take_used();
    assert_eq!(seen, vec![(1, 0)]);
    let state = r.snapshot_and_restore();
    // The one held before it cannot be un-taken: returned empty. The one
    // after it is given back.
    assert_eq!(state.queues[RX].next_avail, 2);
    let returned = r.rx.take_used();
    assert_eq!(returned, vec![(0, 0)]);
    seen.extend(returned);
    for _ in 0..50 {
        r.post_rx(1526);
    }
    r.fake.inject(frame([0; 12], 100));
    r.kick(RX);
    let after = r.rx.take_used();
    assert_eq!(after, vec![(2, 112)]);
    seen.extend(after);
    let mut ids: Vec<u32> = seen.iter().map(|u| u.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), seen.len(), "a buffer was used twice: {seen:?}");
}
