//! virtio-net packet rate through a real TAP, against raw TAP I/O.
//!
//! Method: everything runs on a thread moved into a private network
//! namespace (unshare(CLONE_NEWNET)), where the bench creates two TAPs.
//! Transmit: the real `Net` device (brought up over MMIO by the in-process
//! driver, MRG_RXBUF and offloads negotiated) gets batches of 128 frames in
//! its transmit queue (header and frame in separate buffers, as Linux lays
//! them out) and processes them as on a guest notification: one writev per
//! frame into the TAP. Only the device's processing is timed; the fake
//! driver's work of filling the ring (guest CPU time in a VM) is not. Raw: the same frames written with writev straight to
//! the second TAP's fd. Receive: frames are pushed into the TAP from an
//! AF_PACKET socket in batches of 200 (below the TAP's queue length), then
//! drained by the device into posted receive buffers, against draining them
//! with readv from the other TAP; only the drain is timed. The raw side
//! cycles through as many buffers as the device uses, so both touch the
//! same amount of memory. Frame sizes: 64
//! and 1514 bytes. Needs root and /dev/net/tun; otherwise it says why and
//! exits.
//!
//! Run: `cargo bench -p ember-devices --bench virtio_net` (set
//! `EMBER_BENCH_QUICK=1` for a short run).

#[path = "../tests/tap_util/mod.rs"]
#[allow(dead_code)]
mod tap_util;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_devices::virtio::net::{features, Net, NetConfig, Tap};
use ember_devices::virtio::testing::{guest_memory, Desc, GuestAlloc, MmioDriver, TestQueue};
use ember_devices::virtio::{
    VirtioDevice, VirtioMmioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use ember_devices::GuestMemoryMmap;
use tap_util::{frame, in_private_netns, PacketSocket, TEST_ETHERTYPE};
use vm_memory::{Bytes, GuestAddress};

const TX_BATCH: usize = 128;
const RX_BATCH: usize = 200;

struct NoIrq;
impl ember_devices::Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    net: Arc<Mutex<Net>>,
    rx: TestQueue,
    tx: TestQueue,
    tx_bufs: Vec<u64>,
    rx_bufs: Vec<u64>,
    _dev: VirtioMmioDevice,
}

fn rig(tap: &str) -> Rig {
    let cfg = NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: tap.into(),
        guest_mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    let net = Arc::new(Mutex::new(Net::new(&cfg).unwrap()));
    let mem = guest_memory(64 << 20);
    let dev = VirtioMmioDevice::new(net.clone(), mem.clone(), NoIrq).unwrap();
    let rx = TestQueue::new(&mem, GuestAddress(0x1000), 256);
    let tx = TestQueue::new(&mem, GuestAddress(0x8000), 256);
    let f = (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_F_RING_EVENT_IDX)
        | (1 << features::MRG_RXBUF)
        | (1 << features::CSUM)
        | (1 << features::GUEST_CSUM);
    MmioDriver::new(dev.bus_device()).bring_up(f, &[&rx, &tx]);
    let mut alloc = GuestAlloc::new(0x10_0000, 64 << 20);
    let tx_bufs = (0..TX_BATCH).map(|_| alloc.alloc(2048, 64)).collect();
    let rx_bufs = (0..256).map(|_| alloc.alloc(2048, 64)).collect();
    Rig {
        mem,
        net,
        rx,
        tx,
        tx_bufs,
        rx_bufs,
        _dev: dev,
    }
}

fn device_tx(r: &mut Rig, f: &[u8], rounds: usize) -> Duration {
    for &b in &r.tx_bufs {
        r.mem.write_slice(&[0u8; 12], GuestAddress(b)).unwrap();
        r.mem.write_slice(f, GuestAddress(b + 12)).unwrap();
    }
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        // The driver's share (a guest's CPU time) is not timed.
        for &b in &r.tx_bufs {
            r.tx.add_chain(&[
                Desc::readable(b, 12),
                Desc::readable(b + 12, f.len() as u32),
            ]);
        }
        let start = Instant::now();
        r.net.lock().unwrap().queue_notified(1);
        total += start.elapsed();
        assert_eq!(r.tx.take_used().len(), TX_BATCH);
    }
    total
}

/// Raw writes cycle through as many buffers as the device's batch uses, so
/// both sides touch the same amount of memory.
fn raw_tx(tap: &Tap, f: &[u8], rounds: usize) -> Duration {
    let bufs: Vec<Vec<u8>> = (0..TX_BATCH)
        .map(|_| {
            let mut b = vec![0u8; 12];
            b.extend_from_slice(f);
            b
        })
        .collect();
    let fd = ember_devices::virtio::net::NetBackend::readable_fd(tap);
    let start = Instant::now();
    for i in 0..rounds * TX_BATCH {
        let b = &bufs[i % TX_BATCH];
        let iov = [
            libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: 12,
            },
            libc::iovec {
                iov_base: b[12..].as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            },
        ];
        // SAFETY: both iovecs point into a live buffer; writev reads them.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
        assert!(n > 0);
    }
    start.elapsed()
}

fn device_rx(r: &mut Rig, wire: &PacketSocket, f: &[u8], rounds: usize) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        for _ in 0..RX_BATCH {
            wire.send(f);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut got = 0;
        while got < RX_BATCH && Instant::now() < deadline {
            // The driver's share (a guest's CPU time) is not timed.
            while r.rx.avail_idx().wrapping_sub(r.rx.used_idx()) < 200 {
                let b = r.rx_bufs[usize::from(r.rx.avail_idx() % 256)];
                r.rx.add_chain(&[Desc::writable(b, 2048)]);
            }
            let start = Instant::now();
            r.net.lock().unwrap().queue_notified(0);
            total += start.elapsed();
            got += r.rx.take_used().len();
        }
    }
    total
}

fn raw_rx(tap: &Tap, wire: &PacketSocket, f: &[u8], rounds: usize) -> Duration {
    let fd = ember_devices::virtio::net::NetBackend::readable_fd(tap);
    // As many 2 KiB buffers as the device's ring holds, used in turn.
    let mut bufs: Vec<Vec<u8>> = (0..256).map(|_| vec![0u8; 2048]).collect();
    let mut next = 0usize;
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        for _ in 0..RX_BATCH {
            wire.send(f);
        }
        let start = Instant::now();
        let mut got = 0;
        while got < RX_BATCH && start.elapsed() < Duration::from_secs(1) {
            let buf = &mut bufs[next % 256];
            let iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: the iovec points to our live buffer; readv writes at
            // most its length.
            let n = unsafe { libc::readv(fd, &iov, 1) };
            if n > 0 {
                got += 1;
                next += 1;
            }
        }
        total += start.elapsed();
    }
    total
}

fn main() {
    in_private_netns("virtio_net bench", || {
        let quick = std::env::var_os("EMBER_BENCH_QUICK").is_some();
        let rounds = if quick { 200 } else { 2000 };
        let mut r = rig("embn0");
        let dev_wire = PacketSocket::open("embn0");
        let mut raw_tap = Tap::open("embn1").unwrap();
        // The same TAP offloads the device sets for the features it got.
        ember_devices::virtio::net::NetBackend::set_offloads(
            &mut raw_tap,
            ember_devices::virtio::net::tap::offload::CSUM,
        )
        .unwrap();
        let raw_wire = PacketSocket::open("embn1");
        println!("virtio-net vs raw TAP I/O, private netns, one thread");
        println!(
            "{:<4} {:>6} {:>14} {:>14} {:>7}",
            "dir", "bytes", "device pps", "raw pps", "ratio"
        );
        for len in [64usize, 1514] {
            let f = frame(TEST_ETHERTYPE, len - 14);
            device_tx(&mut r, &f, rounds / 10);
            raw_tx(&raw_tap, &f, rounds / 10);
            let mut d = Duration::MAX;
            let mut w = Duration::MAX;
            for _ in 0..3 {
                d = d.min(device_tx(&mut r, &f, rounds));
                w = w.min(raw_tx(&raw_tap, &f, rounds));
            }
            let n = (rounds * TX_BATCH) as f64;
            println!(
                "{:<4} {:>6} {:>14.0} {:>14.0} {:>6.1}%",
                "tx",
                len,
                n / d.as_secs_f64(),
                n / w.as_secs_f64(),
                100.0 * w.as_secs_f64() / d.as_secs_f64()
            );
            let rx_rounds = rounds / 20;
            let mut d = Duration::MAX;
            let mut w = Duration::MAX;
            for _ in 0..3 {
                d = d.min(device_rx(&mut r, &dev_wire, &f, rx_rounds));
                w = w.min(raw_rx(&raw_tap, &raw_wire, &f, rx_rounds));
            }
            let n = (rx_rounds * RX_BATCH) as f64;
            println!(
                "{:<4} {:>6} {:>14.0} {:>14.0} {:>6.1}%",
                "rx",
                len,
                n / d.as_secs_f64(),
                n / w.as_secs_f64(),
                100.0 * w.as_secs_f64() / d.as_secs_f64()
            );
        }
    });
}
