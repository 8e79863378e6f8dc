//! Transport save/restore with the entropy device behind it: running and
//! not-yet-running states restore without a handshake, and every state a
//! transport could not have produced is refused before the device is touched.

use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;

use super::*;
use crate::trigger::test_util::CountingTrigger;
use crate::virtio::device::{status, VirtioDevice, COMMON_FEATURES};
use crate::virtio::mmio::reg;
use crate::virtio::rng::{Rng, RngConfig, QUEUE_SIZE};
use crate::virtio::testing::{guest_memory, Desc, MmioDriver, TestQueue};
use crate::virtio::VirtioMmioDevice;

const MEM: usize = 0x40_0000;
const V1: u64 = 1 << VIRTIO_F_VERSION_1;
const EVENT_IDX: u64 = 1 << VIRTIO_F_RING_EVENT_IDX;

fn rng() -> Arc<Mutex<Rng>> {
    Rng::shared(RngConfig::default()).unwrap()
}

/// An entropy device the driver brought up, having served `served` chains.
fn running(features: u64, served: usize) -> (TransportState, GuestMemoryMmap, TestQueue) {
    let mem = guest_memory(MEM);
    let dev = rng();
    let mmio = VirtioMmioDevice::new(dev.clone(), mem.clone(), CountingTrigger::default()).unwrap();
    let mut q = TestQueue::new(&mem, GuestAddress(0x1000), 16);
    MmioDriver::new(mmio.bus_device()).bring_up(features, &[&q]);
    for i in 0..served {
        q.add_chain(&[Desc::writable(0x10000 + 0x100 * i as u64, 32)]);
    }
    dev.lock().unwrap().queue_notified(0);
    assert_eq!(q.take_used().len(), served);
    (mmio.save(), mem, q)
}

fn restore(
    state: &TransportState,
    mem: &GuestMemoryMmap,
) -> (
    Result<VirtioMmioDevice, RestoreError>,
    Arc<Mutex<Rng>>,
    CountingTrigger,
) {
    let dev = rng();
    let irq = CountingTrigger::default();
    let r = VirtioMmioDevice::restore(dev.clone(), mem.clone(), irq.clone(), state);
    (r, dev, irq)
}

#[test]
fn running_state_round_trips_and_the_driver_carries_on() {
    let (state, mem, mut q) = running(V1 | EVENT_IDX, 3);
    assert_eq!(state.device_type, 4);
    assert!(state.activates());
    assert_eq!(
        (state.queues[0].next_avail, state.queues[0].next_used),
        (3, 3)
    );
    assert_eq!(state.queues[0].size, 16);
    let bytes = postcard::to_allocvec(&state).unwrap();
    let decoded: TransportState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, state);

    let (mmio, dev, _) = restore(&decoded, &mem);
    let mmio = mmio.unwrap();
    assert!(dev.lock().unwrap().is_active());
    let drv = MmioDriver::new(mmio.bus_device());
    assert_eq!(
        drv.status(),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
    );
    assert_eq!(drv.read32(reg::QUEUE_READY), 1);
    // No handshake: the guest publishes its next chain on the same ring.
    let head = q.add_chain(&[Desc::writable(0x20000, 48)]);
    dev.lock().unwrap().queue_notified(0);
    assert_eq!(q.take_used(), vec![(u32::from(head), 48)]);
    assert_eq!(q.used_idx(), 4);
    // EVENT_IDX still on: the device published where it wants the next kick.
    assert_eq!(q.avail_event(), 4);
    // And saving the restored device gives the positions it reached.
    let again = mmio.save();
    assert_eq!(
        (again.queues[0].next_avail, again.queues[0].next_used),
        (4, 4)
    );
}

#[test]
fn a_chain_published_before_the_snapshot_is_served_once_after() {
    let mem = guest_memory(MEM);
    let dev = rng();
    let mmio = VirtioMmioDevice::new(dev.clone(), mem.clone(), CountingTrigger::default()).unwrap();
    let mut q = TestQueue::new(&mem, GuestAddress(0x1000), 16);
    MmioDriver::new(mmio.bus_device()).bring_up(V1, &[&q]);
    q.add_chain(&[Desc::writable(0x10000, 8)]);
    dev.lock().unwrap().queue_notified(0);
    // Published, not yet seen by the device when the snapshot is taken.
    let pending = q.add_chain(&[Desc::writable(0x11000, 16)]);
    let state = mmio.save();
    assert_eq!(state.queues[0].next_avail, 1);
    let (restored, dev2, _) = restore(&state, &mem);
    let _restored = restored.unwrap();
    // What the event loop does when the subscriber joins.
    dev2.lock().unwrap().activated();
    assert_eq!(q.take_used(), vec![(0, 8), (u32::from(pending), 16)]);
    dev2.lock().unwrap().activated();
    assert!(q.take_used().is_empty());
}

#[test]
fn registers_signals_and_selectors_are_restored() {
    let (mut state, mem, _) = running(V1, 0);
    state.isr = 1;
    state.config_generation = 7;
    state.queue_sel = 5;
    state.device_features_sel = 1;
    let (mmio, _, irq) = restore(&state, &mem);
    let drv = MmioDriver::new(mmio.unwrap().bus_device());
    // The pending used-ring interrupt is raised again, and still pending.
    assert_eq!(irq.count(), 1);
    assert_eq!(drv.read32(reg::INTERRUPT_STATUS), 1);
    assert_eq!(drv.read32(reg::CONFIG_GENERATION), 7);
    assert_eq!(drv.read32(reg::QUEUE_NUM_MAX), 0);
    assert_eq!(
        drv.read32(reg::DEVICE_FEATURES),
        (COMMON_FEATURES >> 32) as u32
    );
    // Nothing pending: no interrupt.
    state.isr = 0;
    let (_, _, irq) = restore(&state, &mem);
    assert_eq!(irq.count(), 0);
}

#[test]
fn state_saved_before_driver_ok_restores_an_inactive_device_the_guest_finishes() {
    let mem = guest_memory(MEM);
    let dev = rng();
    let mmio = VirtioMmioDevice::new(dev, mem.clone(), CountingTrigger::default()).unwrap();
    let drv = MmioDriver::new(mmio.bus_device());
    let mut q = TestQueue::new(&mem, GuestAddress(0x1000), 8);
    assert!(drv.negotiate(V1 | EVENT_IDX));
    assert!(drv.setup_queue(0, &q));
    let state = mmio.save();
    assert!(!state.activates());
    assert_eq!(state.queues[0].size, 8);

    let (restored, dev, _) = restore(&state, &mem);
    let restored = restored.unwrap();
    assert!(!dev.lock().unwrap().is_active());
    let drv = MmioDriver::new(restored.bus_device());
    assert_eq!(drv.read32(reg::QUEUE_READY), 1);
    assert_eq!(drv.read32(reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    // The guest goes on where it stopped: DRIVER_OK.
    assert_ne!(drv.driver_ok() & status::DRIVER_OK, 0);
    assert!(dev.lock().unwrap().is_active());
    q.add_chain(&[Desc::writable(0x10000, 16)]);
    dev.lock().unwrap().queue_notified(0);
    assert_eq!(q.take_used(), vec![(0, 16)]);

    // A device never touched restores as new.
    let fresh = VirtioMmioDevice::new(rng(), mem.clone(), CountingTrigger::default()).unwrap();
    let (restored, dev, _) = restore(&fresh.save(), &mem);
    let drv = MmioDriver::new(restored.unwrap().bus_device());
    assert_eq!(drv.status(), 0);
    let mut q = TestQueue::new(&mem, GuestAddress(0x2000), 16);
    drv.bring_up(V1, &[&q]);
    q.add_chain(&[Desc::writable(0x10000, 4)]);
    dev.lock().unwrap().queue_notified(0);
    assert_eq!(q.take_used(), vec![(0, 4)]);
}

#[test]
fn failed_or_needs_reset_states_restore_inactive_until_the_guest_resets() {
    let (state, mem, _) = running(V1, 1);
    for (failed, needs_reset) in [(true, false), (false, true)] {
        let mut s = state.clone();
        if failed {
            s.status |= status::FAILED;
        }
        s.needs_reset = needs_reset;
        assert!(!s.activates());
        let (restored, dev, _) = restore(&s, &mem);
        let restored = restored.unwrap();
        assert!(!dev.lock().unwrap().is_active());
        let drv = MmioDriver::new(restored.bus_device());
        if failed {
            assert_ne!(drv.status() & status::FAILED, 0);
        } else {
            assert_ne!(drv.status() & status::DEVICE_NEEDS_RESET, 0);
        }
        let mut q = TestQueue::new(&mem, GuestAddress(0x3000), 16);
        drv.bring_up(V1, &[&q]);
        q.add_chain(&[Desc::writable(0x10000, 4)]);
        dev.lock().unwrap().queue_notified(0);
        assert_eq!(q.take_used(), vec![(0, 4)]);
    }
}

#[test]
fn persist_trait_restores_through_boxed_arguments() {
    use ember_state::Persist;
    let (state, mem, mut q) = running(V1, 2);
    let dev = rng();
    let args = crate::virtio::facade::VirtioRestoreArgs {
        device: dev.clone(),
        mem: mem.clone(),
        irq: Box::new(CountingTrigger::default()),
    };
    let mmio = <VirtioMmioDevice as Persist>::restore(args, &state).unwrap();
    assert_eq!(Persist::save(&mmio), state);
    q.add_chain(&[Desc::writable(0x10000, 4)]);
    dev.lock().unwrap().queue_notified(0);
    assert_eq!(q.take_used(), vec![(2, 4)]);
}

/// Restores `state` onto a fresh device, expecting a refusal that leaves
/// the device untouched.
fn refused(state: &TransportState, mem: &GuestMemoryMmap) -> RestoreError {
    let (r, dev, irq) = restore(state, mem);
    let e = r.expect_err("hostile state accepted");
    assert!(!dev.lock().unwrap().is_active());
    assert_eq!(irq.count(), 0);
    e
}

#[test]
fn hostile_device_and_queue_states_are_refused() {
    let (good, mem, _) = running(V1 | EVENT_IDX, 1);
    let mut s = good.clone();
    s.device_type = 2;
    assert!(matches!(
        refused(&s, &mem),
        RestoreError::DeviceType {
            device: 4,
            state: 2
        }
    ));
    for n in [0, 2, 100_000] {
        let mut s = good.clone();
        s.queues = vec![good.queues[0]; n];
        assert!(matches!(
            refused(&s, &mem),
            RestoreError::QueueCount { device: 1, state } if state == n
        ));
    }
    let mut s = good.clone();
    s.queues[0].max_size = 1024;
    assert!(matches!(
        refused(&s, &mem),
        RestoreError::QueueMaxSize { queue: 0, .. }
    ));
    for size in [0, 3, 24, 512, u16::MAX] {
        let mut s = good.clone();
        s.queues[0].size = size;
        assert!(matches!(
            refused(&s, &mem),
            RestoreError::QueueSize { queue: 0, size: z, max: 256 } if z == size
        ));
    }
    // Rings outside guest memory, straddling its end, wrapping, misaligned.
    let end = MEM as u64;
    for (desc, driver, device) in [
        (0xffff_0000, 0x2000, 0x3000),
        (0x1000, end - 4, 0x3000),
        (0x1000, 0x2000, end - 8),
        (u64::MAX - 15, 0x2000, 0x3000),
        (0x1008, 0x2000, 0x3000),
        (0x1000, 0x2001, 0x3000),
        (0x1000, 0x2000, 0x3002),
    ] {
        let mut s = good.clone();
        s.queues[0].desc = desc;
        s.queues[0].driver = driver;
        s.queues[0].device = device;
        assert!(
            matches!(refused(&s, &mem), RestoreError::QueueLayout { queue: 0 }),
            "{desc:#x} {driver:#x} {device:#x}"
        );
    }
    // The layout of a queue that is not ready is whatever the driver wrote.
    let mut s = good.clone();
    s.status &= !status::DRIVER_OK;
    s.driver_ok = false;
    s.queues[0].ready = false;
    s.queues[0].desc = 0xffff_0000;
    let (r, _, _) = restore(&s, &mem);
    assert!(r.is_ok());
    // A ready queue before features were accepted.
    let mut s = good.clone();
    s.status = status::ACKNOWLEDGE | status::DRIVER;
    s.driver_ok = false;
    assert!(matches!(
        refused(&s, &mem),
        RestoreError::QueueReadyTooEarly { queue: 0 }
    ));
}

#[test]
fn hostile_status_feature_and_signal_states_are_refused() {
    let (good, mem, _) = running(V1 | EVENT_IDX, 1);
    for bits in [status::DEVICE_NEEDS_RESET, 0x10, 0x20, 0x100, 1 << 31] {
        let mut s = good.clone();
        s.status |= bits;
        assert!(matches!(refused(&s, &mem), RestoreError::StatusBits(_)));
    }
    for st in [
        status::DRIVER,
        status::ACKNOWLEDGE | status::FEATURES_OK,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    ] {
        let mut s = good.clone();
        s.status = st;
        assert!(matches!(refused(&s, &mem), RestoreError::StatusOrder(_)));
    }
    let mut s = good.clone();
    s.status = status::ACKNOWLEDGE;
    s.driver_ok = false;
    s.queues[0].ready = false;
    assert!(matches!(
        refused(&s, &mem),
        RestoreError::FeaturesWithoutDriver(_)
    ));
    let mut s = good.clone();
    s.driver_features |= 1 << 5;
    assert!(matches!(
        refused(&s, &mem),
        RestoreError::UnofferedFeatures { .. }
    ));
    let mut s = good.clone();
    s.driver_features = EVENT_IDX;
    assert!(matches!(
        refused(&s, &mem),
        RestoreError::FeaturesNotAccepted(_)
    ));
    let mut s = good.clone();
    s.driver_features_invalid = true;
    assert!(matches!(
        refused(&s, &mem),
        RestoreError::FeaturesNotAccepted(_)
    ));
    // Before FEATURES_OK, what the driver wrote is kept as the transport
    // keeps it: FEATURES_OK will refuse it later.
    let mut s = good.clone();
    s.status = status::ACKNOWLEDGE | status::DRIVER;
    s.driver_ok = false;
    s.queues[0].ready = false;
    s.driver_features |= 1 << 5;
    let (r, _, _) = restore(&s, &mem);
    let drv = MmioDriver::new(r.unwrap().bus_device());
    drv.write32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(drv.status() & status::FEATURES_OK, 0);
    // Signals of an activated device without DRIVER_OK.
    for (driver_ok, needs_reset) in [(true, false), (false, true)] {
        let mut s = good.clone();
        s.status &= !status::DRIVER_OK;
        s.driver_ok = driver_ok;
        s.needs_reset = needs_reset;
        assert!(matches!(
            refused(&s, &mem),
            RestoreError::SignalsWithoutDriverOk(_)
        ));
    }
    for isr in [4, 0x100, u32::MAX] {
        let mut s = good.clone();
        s.isr = isr;
        assert!(matches!(refused(&s, &mem), RestoreError::InterruptStatus(i) if i == isr));
    }
}

#[test]
fn restore_refuses_a_running_device_and_reports_a_refused_activation() {
    let (state, mem, _) = running(V1, 1);
    let dev = rng();
    let mmio = VirtioMmioDevice::new(dev.clone(), mem.clone(), CountingTrigger::default()).unwrap();
    let q = TestQueue::new(&mem, GuestAddress(0x1000), 16);
    MmioDriver::new(mmio.bus_device()).bring_up(V1, &[&q]);
    let r = VirtioMmioDevice::restore(dev, mem.clone(), CountingTrigger::default(), &state);
    assert!(matches!(r, Err(RestoreError::DeviceActive)));
    // DRIVER_OK with the one queue the device needs not ready: the device
    // refuses to start, and restore says so.
    let mut s = state;
    s.queues[0].ready = false;
    let e = refused(&s, &mem);
    assert!(
        matches!(e, RestoreError::Activate(ActivateError::QueueNotReady(0))),
        "{e}"
    );
}

#[test]
fn wild_ring_positions_mark_the_device_broken_without_panicking() {
    let (mut state, mem, mut q) = running(V1 | EVENT_IDX, 1);
    state.queues[0].next_avail = 0x8000;
    state.queues[0].next_used = 0xffff;
    let (r, dev, _) = restore(&state, &mem);
    let mmio = r.unwrap();
    q.add_chain(&[Desc::writable(0x10000, 4)]);
    dev.lock().unwrap().queue_notified(0);
    assert!(q.take_used().is_empty());
    assert!(mmio.signals().needs_reset());
}

#[test]
fn mutated_encoded_states_never_panic() {
    // Real states (running, pre-DRIVER_OK), encoded, then bytes flipped,
    // inserted and cut: whatever decodes must restore or be refused, and a
    // restored device must survive the guest's next moves.
    let (running_state, mem, _) = running(V1 | EVENT_IDX, 3);
    let mut pre = running_state.clone();
    pre.status &= !status::DRIVER_OK;
    pre.driver_ok = false;
    let seeds = [
        postcard::to_allocvec(&running_state).unwrap(),
        postcard::to_allocvec(&pre).unwrap(),
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut decoded, mut restored) = (0, 0);
    for i in 0..3000 {
        let mut bytes = seeds[i % 2].clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % bytes.len();
            match next() % 3 {
                0 => bytes[at] = next() as u8,
                1 => bytes.insert(at, next() as u8),
                _ => {
                    bytes.remove(at);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        let Ok(state) = postcard::from_bytes::<TransportState>(&bytes) else {
            continue;
        };
        decoded += 1;
        let (r, dev, _) = restore(&state, &mem);
        let Ok(mmio) = r else {
            assert!(!dev.lock().unwrap().is_active());
            continue;
        };
        restored += 1;
        dev.lock().unwrap().activated();
        let _ = mmio.save();
        MmioDriver::new(mmio.bus_device()).write32(reg::STATUS, 0);
        assert!(!dev.lock().unwrap().is_active());
    }
    // The mutations reach both sides of the validation.
    assert!(decoded > 300, "{decoded}");
    assert!(restored > 30, "{restored}");
}
