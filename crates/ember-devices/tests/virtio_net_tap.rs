//! virtio-net against a real TAP device. Each test runs its body on a
//! thread that first moves into a network namespace of its own
//! (unshare(CLONE_NEWNET)), so the TAP never exists in the host's
//! namespace. The host side of the wire is an AF_PACKET socket bound to the
//! TAP. Skipped, with the reason printed, when not root or without
//! /dev/net/tun.

#![allow(dead_code)]

mod tap_util;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ember_devices::virtio::net::{features, MacAddr, Net, NetConfig};
use ember_devices::virtio::testing::{guest_memory, Desc, GuestAlloc, MmioDriver, TestQueue};
use ember_devices::virtio::{VirtioDevice, VirtioMmioDevice, VIRTIO_F_VERSION_1};
use ember_devices::EventFdTrigger;
use tap_util::{frame, in_private_netns, PacketSocket, TEST_ETHERTYPE};
use vm_memory::{Bytes, GuestAddress};

fn net_config(tap: &str) -> NetConfig {
    NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: tap.into(),
        guest_mac: Some(MacAddr([6, 0, 0xac, 0x10, 0, 2])),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    }
}

#[test]
fn frames_cross_a_real_tap_both_ways() {
    in_private_netns("frames_cross_a_real_tap_both_ways", || {
        let net = Arc::new(Mutex::new(Net::new(&net_config("emtap0")).unwrap()));
        let wire = PacketSocket::open("emtap0");
        let mem = guest_memory(16 << 20);
        let irq = EventFdTrigger::new().unwrap();
        let dev = VirtioMmioDevice::new(net.clone(), mem.clone(), irq).unwrap();
        let mut rx = TestQueue::new(&mem, GuestAddress(0x1000), 256);
        let mut tx = TestQueue::new(&mem, GuestAddress(0x8000), 256);
        let feats = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << features::MRG_RXBUF)
            | (1 << features::CSUM)
            | (1 << features::GUEST_CSUM)
            | (1 << features::GUEST_TSO4)
            | (1 << features::HOST_TSO4);
        // Offloads are applied to the real TAP with TUNSETOFFLOAD.
        MmioDriver::new(dev.bus_device()).bring_up(feats, &[&rx, &tx]);
        let mut alloc = GuestAlloc::new(0x10_0000, 16 << 20);

        // Guest to host.
        let f = frame(TEST_ETHERTYPE, 300);
        let at = alloc.alloc(12 + f.len() as u64, 8);
        mem.write_slice(&[0u8; 12], GuestAddress(at)).unwrap();
        mem.write_slice(&f, GuestAddress(at + 12)).unwrap();
        tx.add_chain(&[
            Desc::readable(at, 12),
            Desc::readable(at + 12, f.len() as u32),
        ]);
        net.lock().unwrap().queue_notified(1);
        assert_eq!(tx.take_used().len(), 1);
        assert_eq!(wire.recv_matching(TEST_ETHERTYPE), Some(f));

        // Host to guest: post enough mergeable buffers, inject, kick.
        let mut bufs = Vec::new();
        for _ in 0..64 {
            let b = alloc.alloc(2048, 8);
            bufs.push(b);
            rx.add_chain(&[Desc::writable(b, 2048)]);
        }
        let g = frame(TEST_ETHERTYPE, 1000);
        wire.send(&g);
        let mut delivered = None;
        for _ in 0..200 {
            net.lock().unwrap().queue_notified(0);
            for (id, len) in rx.take_used() {
                let mut b = vec![0u8; len as usize];
                mem.read_slice(&mut b, GuestAddress(bufs[id as usize]))
                    .unwrap();
                // Skip the namespace's own chatter (IPv6 autoconf and such).
                if b.len() >= 26 && b[24..26] == TEST_ETHERTYPE.to_be_bytes() {
                    delivered = Some(b);
                }
            }
            if delivered.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let b = delivered.expect("frame not delivered to the guest");
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1);
        assert_eq!(&b[12..], &g[..]);
        let m = net.lock().unwrap().metrics();
        assert!(m.rx_packets.load(Ordering::Relaxed) >= 1);
        assert_eq!(m.tx_packets.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn missing_tap_name_is_a_clear_error() {
    let err = Net::new(&net_config("this-name-is-far-too-long-for-ifnamsiz")).unwrap_err();
    assert!(err.to_string().contains("invalid interface name"), "{err}");
}
