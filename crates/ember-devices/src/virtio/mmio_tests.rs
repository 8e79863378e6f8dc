//! Tests of the virtio-mmio register file with a fake device.

use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::trigger::test_util::CountingTrigger;
use crate::virtio::device::{ActivateError, Activation, COMMON_FEATURES};
use crate::virtio::testing::{guest_memory, MmioDriver, TestQueue};

#[derive(Default)]
struct FakeDevice {
    active: bool,
    activations: usize,
    resets: usize,
    fail_activation: bool,
    config: Vec<u8>,
    queues_ready: Vec<bool>,
    event_idx: bool,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn offered_features(&self) -> u64 {
        COMMON_FEATURES | (1 << 3)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::device::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if end <= self.config.len() {
            self.config[offset as usize..end].copy_from_slice(data);
        }
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.activations += 1;
        if self.fail_activation {
            return Err(ActivateError::Backend("refused".into()));
        }
        self.queues_ready = a.queues.iter().map(|q| q.ready()).collect();
        self.event_idx = a.queues[0].event_idx_enabled();
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.active = false;
    }
    fn is_active(&self) -> bool {
        self.active
    }
    fn queue_notified(&mut self, _index: usize) {}
    fn queue_positions(&self) -> Vec<(u16, u16)> {
        Vec::new()
    }
}

struct Setup {
    dev: Arc<Mutex<FakeDevice>>,
    driver: MmioDriver,
    irq: CountingTrigger,
    queue_evts: Vec<Arc<EventFd>>,
    activate_evt: Arc<EventFd>,
    mem: crate::GuestMemoryMmap,
}

fn setup() -> Setup {
    let mem = guest_memory(0x10_0000);
    let dev = Arc::new(Mutex::new(FakeDevice {
        config: vec![1, 2, 3, 4, 5, 6, 7, 8],
        ..FakeDevice::default()
    }));
    let irq = CountingTrigger::default();
    let signals = Arc::new(DeviceSignals::new(Box::new(irq.clone())));
    let queue_evts: Vec<_> = (0..2)
        .map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
        .collect();
    let activate_evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let t = MmioTransport::new(
        dev.clone(),
        mem.clone(),
        signals,
        queue_evts.clone(),
        activate_evt.clone(),
    );
    Setup {
        dev,
        driver: MmioDriver::new(Arc::new(Mutex::new(t))),
        irq,
        queue_evts,
        activate_evt,
        mem,
    }
}

const GOOD: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_RING_EVENT_IDX);

#[test]
fn identity_registers() {
    let s = setup();
    assert_eq!(s.driver.read32(reg::MAGIC_VALUE), MAGIC);
    assert_eq!(s.driver.read32(reg::VERSION), 2);
    assert_eq!(s.driver.read32(reg::DEVICE_ID), 42);
    assert_eq!(s.driver.read32(reg::VENDOR_ID), VENDOR);
    assert_eq!(s.driver.device_features(), COMMON_FEATURES | (1 << 3));
    s.driver.write32(reg::DEVICE_FEATURES_SEL, 7);
    assert_eq!(s.driver.read32(reg::DEVICE_FEATURES), 0);
    s.driver.write32(reg::SHM_SEL, 0);
    assert_eq!(s.driver.read32(reg::SHM_LEN_LOW), u32::MAX);
    assert_eq!(s.driver.read32(reg::SHM_LEN_HIGH), u32::MAX);
}

#[test]
fn feature_negotiation_refuses_unoffered_or_legacy() {
    let s = setup();
    assert!(!s.driver.negotiate(GOOD | (1 << 5)));
    assert!(!s.driver.negotiate(1 << VIRTIO_F_RING_EVENT_IDX));
    assert!(s.driver.negotiate(GOOD | (1 << 3)));
    // Feature writes after FEATURES_OK are ignored.
    s.driver.write32(reg::DRIVER_FEATURES_SEL, 0);
    s.driver.write32(reg::DRIVER_FEATURES, 0);
    let t = s.driver.read32(reg::STATUS);
    assert_ne!(t & status::FEATURES_OK, 0);
    // A bit beyond 64 is refused too.
    s.driver.write32(reg::STATUS, 0);
    s.driver
        .write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    s.driver.write32(reg::DRIVER_FEATURES_SEL, 1);
    s.driver.write32(reg::DRIVER_FEATURES, 1);
    s.driver.write32(reg::DRIVER_FEATURES_SEL, 2);
    s.driver.write32(reg::DRIVER_FEATURES, 1);
    s.driver.write32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(s.driver.status() & status::FEATURES_OK, 0);
}

#[test]
fn status_bits_need_their_predecessors_and_cannot_be_cleared() {
    let s = setup();
    s.driver
        .write32(reg::STATUS, status::DRIVER_OK | status::FEATURES_OK);
    assert_eq!(s.driver.status(), 0);
    assert_eq!(s.dev.lock().unwrap().activations, 0);
    s.driver
        .write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    s.driver.write32(reg::STATUS, status::ACKNOWLEDGE);
    assert_eq!(s.driver.status(), status::ACKNOWLEDGE | status::DRIVER);
}

#[test]
fn queue_layout_is_validated() {
    let s = setup();
    assert!(s.driver.negotiate(GOOD));
    let q = TestQueue::new(&s.mem, GuestAddress(0x1000), 16);
    s.driver.write32(reg::QUEUE_SEL, 0);
    assert_eq!(s.driver.read32(reg::QUEUE_NUM_MAX), 16);
    // Not a power of two, too big, zero: ignored (the size stays 16).
    for bad in [12, 32, 0] {
        s.driver.write32(reg::QUEUE_NUM, bad);
    }
    assert!(s.driver.setup_queue(0, &q));
    // Rings outside guest memory are refused.
    s.driver.write32(reg::QUEUE_SEL, 1);
    s.driver.write32(reg::QUEUE_NUM, 8);
    s.driver.write32(reg::QUEUE_DESC_LOW, 0xfff_0000);
    s.driver.write32(reg::QUEUE_DRIVER_LOW, 0x3000);
    s.driver.write32(reg::QUEUE_DEVICE_LOW, 0x4000);
    s.driver.write32(reg::QUEUE_READY, 1);
    assert_eq!(s.driver.read32(reg::QUEUE_READY), 0);
    // Misaligned used ring is refused.
    s.driver.write32(reg::QUEUE_DESC_LOW, 0x2000);
    s.driver.write32(reg::QUEUE_DEVICE_LOW, 0x4002);
    s.driver.write32(reg::QUEUE_READY, 1);
    assert_eq!(s.driver.read32(reg::QUEUE_READY), 0);
    // Non-existent queue reads max 0.
    s.driver.write32(reg::QUEUE_SEL, 5);
    assert_eq!(s.driver.read32(reg::QUEUE_NUM_MAX), 0);
    s.driver.write32(reg::QUEUE_READY, 1);
    assert_eq!(s.driver.read32(reg::QUEUE_READY), 0);
}

#[test]
fn driver_ok_activates_with_validated_queues() {
    let s = setup();
    let q = TestQueue::new(&s.mem, GuestAddress(0x1000), 16);
    s.driver.bring_up(GOOD, &[&q]);
    let d = s.dev.lock().unwrap();
    assert_eq!(d.activations, 1);
    assert_eq!(d.queues_ready, vec![true, false]);
    assert!(d.event_idx);
    drop(d);
    assert_eq!(s.activate_evt.read().unwrap(), 1);
    // Queue layout is frozen after DRIVER_OK.
    s.driver.write32(reg::QUEUE_SEL, 0);
    s.driver.write32(reg::QUEUE_READY, 0);
    assert_eq!(s.driver.read32(reg::QUEUE_READY), 1);
}

#[test]
fn failed_activation_sets_needs_reset_and_reset_recovers() {
    let s = setup();
    s.dev.lock().unwrap().fail_activation = true;
    let q = TestQueue::new(&s.mem, GuestAddress(0x1000), 16);
    assert!(s.driver.negotiate(GOOD));
    assert!(s.driver.setup_queue(0, &q));
    let st = s.driver.driver_ok();
    assert_ne!(st & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(s.irq.count(), 1);
    assert_eq!(s.driver.ack_interrupt(), 2);
    s.dev.lock().unwrap().fail_activation = false;
    s.driver.write32(reg::STATUS, 0);
    assert_eq!(s.driver.status(), 0);
    s.driver.bring_up(GOOD, &[&q]);
    assert!(s.dev.lock().unwrap().active);
    // Reset of an active device resets it and wakes the event loop.
    let _ = s.activate_evt.read();
    let resets = s.dev.lock().unwrap().resets;
    s.driver.write32(reg::STATUS, 0);
    assert!(!s.dev.lock().unwrap().active);
    assert_eq!(s.dev.lock().unwrap().resets, resets + 1);
    assert_eq!(s.activate_evt.read().unwrap(), 1);
    // And it comes back.
    s.driver.bring_up(GOOD, &[&q]);
    assert_eq!(s.dev.lock().unwrap().activations, 3);
}

#[test]
fn writes_after_failed_are_ignored_until_reset() {
    let s = setup();
    assert!(s.driver.negotiate(GOOD));
    let st = s.driver.status();
    s.driver.write32(reg::STATUS, st | status::FAILED);
    s.driver.write32(reg::QUEUE_SEL, 0);
    s.driver.write32(reg::QUEUE_NUM, 4);
    s.driver
        .write32(reg::STATUS, st | status::FAILED | status::DRIVER_OK);
    assert_eq!(s.driver.status() & status::DRIVER_OK, 0);
    s.driver.write32(reg::CONFIG, 0xdead);
    assert_eq!(s.driver.read_config(0, 2), vec![1, 2]);
    s.driver.write32(reg::STATUS, 0);
    assert_eq!(s.driver.status(), 0);
}

#[test]
fn config_space_any_width_and_registers_only_32_bit() {
    let s = setup();
    assert_eq!(s.driver.read_config(2, 3), vec![3, 4, 5]);
    assert_eq!(s.driver.read_config(6, 4), vec![7, 8, 0, 0]);
    s.driver.write32(reg::CONFIG + 4, 0x0a0b_0c0d);
    assert_eq!(s.driver.read_config(4, 4), vec![0xd, 0xc, 0xb, 0xa]);
    let bus = s.driver.read32(reg::CONFIG_GENERATION);
    assert_eq!(bus, 0);
    // 16-bit register read answers 0; unaligned 32-bit too.
    let t = MmioDriver::new(Arc::new(Mutex::new(MmioTransport::new(
        s.dev.clone(),
        s.mem.clone(),
        Arc::new(DeviceSignals::new(Box::new(CountingTrigger::default()))),
        vec![],
        s.activate_evt.clone(),
    ))));
    assert_eq!(t.read32(reg::MAGIC_VALUE + 1), 0);
}

#[test]
fn queue_notify_register_falls_back_to_the_eventfd() {
    let s = setup();
    s.driver.notify(1);
    assert_eq!(s.queue_evts[1].read().unwrap(), 1);
    // Out-of-range index is ignored.
    s.driver.notify(7);
    assert!(s.queue_evts[0].read().is_err());
}

#[test]
fn random_register_traffic_never_panics() {
    let s = setup();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % 0x140) & !3;
        let val = (x >> 20) as u32;
        if x & 1 == 0 {
            s.driver.write32(off, val);
        } else {
            s.driver.read32(off);
        }
    }
}
