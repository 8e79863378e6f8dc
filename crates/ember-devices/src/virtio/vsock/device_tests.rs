//! virtio-vsock tests: a fake guest driver against real Unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::trigger::test_util::CountingTrigger;
use crate::virtio::testing::{guest_memory, Desc, GuestAlloc, MmioDriver, TestQueue};
use crate::virtio::vsock::connection::BUF_ALLOC;
use crate::virtio::vsock::packet::*;
use crate::virtio::vsock::{VsockHandle, VsockMetrics};
use crate::virtio::{VirtioMmioDevice, VIRTIO_F_VERSION_1};

const CID: u64 = 3;

struct Rig {
    dir: PathBuf,
    mem: GuestMemoryMmap,
    vsock: Arc<Mutex<Vsock>>,
    rx: TestQueue,
    tx: TestQueue,
    ev: TestQueue,
    alloc: GuestAlloc,
    rx_bufs: std::collections::HashMap<u32, u64>,
    _dev: VirtioMmioDevice,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rig() -> Rig {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ember-vsock-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = VsockConfig {
        guest_cid: CID as u32,
        uds_path: dir.join("v.sock"),
    };
    let vsock = Vsock::shared(&cfg).unwrap();
    let mem = guest_memory(0x200_0000);
    let dev =
        VirtioMmioDevice::new(vsock.clone(), mem.clone(), CountingTrigger::default()).unwrap();
    let rx = TestQueue::new(&mem, GuestAddress(0x1000), QUEUE_SIZE);
    let tx = TestQueue::new(&mem, GuestAddress(0x8000), QUEUE_SIZE);
    let ev = TestQueue::new(&mem, GuestAddress(0x10000), QUEUE_SIZE);
    MmioDriver::new(dev.bus_device()).bring_up(1 << VIRTIO_F_VERSION_1, &[&rx, &tx, &ev]);
    Rig {
        dir,
        mem,
        vsock,
        rx,
        tx,
        ev,
        alloc: GuestAlloc::new(0x10_0000, 0x200_0000),
        rx_bufs: Default::default(),
        _dev: dev,
    }
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 1 << 20,
        fwd_cnt: 0,
    }
}

impl Rig {
    fn send(&mut self, h: Header, payload: &[u8]) {
        let at = self.alloc.alloc((HDR_LEN + payload.len()) as u64, 8);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(at + HDR_LEN as u64))
            .unwrap();
        let mut d = vec![Desc::readable(at, HDR_LEN as u32)];
        if !payload.is_empty() {
            d.push(Desc::readable(at + HDR_LEN as u64, payload.len() as u32));
        }
        self.tx.add_chain(&d);
        self.vsock.lock().unwrap().queue_notified(TX);
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let at = self.alloc.alloc(4096 + HDR_LEN as u64, 8);
            let head = self
                .rx
                .add_chain(&[Desc::writable(at, 4096 + HDR_LEN as u32)]);
            self.rx_bufs.insert(u32::from(head), at);
        }
        self.vsock.lock().unwrap().queue_notified(RX);
    }

    /// Packets the device put in the receive queue.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.rx
            .take_used()
            .into_iter()
            .map(|(id, len)| {
                let at = self.rx_bufs[&id];
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
                let h = Header::from_bytes(b[..HDR_LEN].try_into().unwrap());
                (h, b[HDR_LEN..].to_vec())
            })
            .collect()
    }

    /// Lets host socket events reach the device, then collects packets.
    fn poll(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for _ in 0..50 {
            self.vsock
                .lock()
                .unwrap()
                .backend_event(TOKEN_EPOLL, EventSet::IN);
            out.extend(self.received());
            if !out.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        out
    }

    fn metrics(&self) -> Arc<VsockMetrics> {
        self.vsock.lock().unwrap().metrics()
    }

    /// Saves the device and restores a new one listening on `uds_name` in
    /// the rig's directory (the VMM may override the path), on the same
    /// guest memory.
    fn snapshot_and_restore(&mut self, uds_name: &str) -> crate::virtio::TransportState {
        let state = self._dev.save();
        let cfg = VsockConfig {
            guest_cid: CID as u32,
            uds_path: self.dir.join(uds_name),
        };
        let vsock = Vsock::shared(&cfg).unwrap();
        self._dev = VirtioMmioDevice::restore(
            vsock.clone(),
            self.mem.clone(),
            CountingTrigger::default(),
            &state,
        )
        .unwrap();
        self.vsock = vsock;
        state
    }
}

#[test]
fn guest_connects_to_host_listener_and_data_flows() {
    let mut r = rig();
    let host = UnixListener::bind(r.dir.join("v.sock_52")).unwrap();
    r.post_rx(8);
    r.send(hdr(OP_REQUEST, 1000, 52), &[]);
    let got = r.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, OP_RESPONSE);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (52, 1000));
    assert_eq!(got[0].0.dst_cid, CID);
    assert_eq!(got[0].0.buf_alloc, BUF_ALLOC);
    let (mut s, _) = host.accept().unwrap();
    let mut rw = hdr(OP_RW, 1000, 52);
    rw.len = 5;
    r.send(rw, b"hello");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    s.write_all(b"world").unwrap();
    let got = r.poll();
    assert_eq!(got[0].0.op, OP_RW);
    assert_eq!(got[0].1, b"world");
    // Guest closes: the device acknowledges with RST and closes the socket.
    let mut sd = hdr(OP_SHUTDOWN, 1000, 52);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    r.send(sd, &[]);
    let got = r.received();
    assert_eq!(got[0].0.op, OP_RST);
    assert_eq!(s.read(&mut b).unwrap(), 0);
    assert_eq!(r.vsock.lock().unwrap().connections(), 0);
}

#[test]
fn connect_to_missing_listener_is_reset() {
    let mut r = rig();
    r.post_rx(2);
    r.send(hdr(OP_REQUEST, 1000, 77), &[]);
    assert_eq!(r.received()[0].0.op, OP_RST);
    assert_eq!(r.metrics().conns_refused.load(Ordering::Relaxed), 1);
}

#[test]
fn host_initiated_connect_handshake() {
    let mut r = rig();
    r.post_rx(8);
    let mut s = UnixStream::connect(r.dir.join("v.sock")).unwrap();
    s.write_all(b"CONNECT 1234\nearly").unwrap();
    let got = r.poll();
    assert_eq!(got[0].0.op, OP_REQUEST);
    assert_eq!(got[0].0.dst_port, 1234);
    let host_port = got[0].0.src_port;
    assert!(host_port >= 1 << 30);
    let mut resp = hdr(OP_RESPONSE, 1234, host_port);
    resp.buf_alloc = 4096;
    r.send(resp, &[]);
    let mut line = [0u8; 16];
    let expect = format!("OK {host_port}\n");
    s.read_exact(&mut line[..expect.len()]).unwrap();
    assert_eq!(&line[..expect.len()], expect.as_bytes());
    // Bytes written after the CONNECT line reach the guest.
    let got = r.poll();
    assert_eq!(got[0].0.op, OP_RW);
    assert_eq!(got[0].1, b"early");
    // Host closes: the guest gets SHUTDOWN, answers RST, connection gone.
    drop(s);
    let got = r.poll();
    assert_eq!(got[0].0.op, OP_SHUTDOWN);
    r.send(hdr(OP_RST, 1234, host_port), &[]);
    assert_eq!(r.vsock.lock().unwrap().connections(), 0);
}

#[test]
fn bad_connect_lines_are_dropped() {
    let mut r = rig();
    let mut a = UnixStream::connect(r.dir.join("v.sock")).unwrap();
    a.write_all(b"CONNECT banana\n").unwrap();
    let mut b = UnixStream::connect(r.dir.join("v.sock")).unwrap();
    b.write_all(&[b'x'; 64]).unwrap();
    r.poll();
    let mut buf = [0u8; 4];
    a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // Closed by the device: end of file, or a reset if bytes were unread.
    let closed = |r: std::io::Result<usize>| {
        matches!(r, Ok(0)) || matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    };
    assert!(closed(a.read(&mut buf)));
    assert!(closed(b.read(&mut buf)));
    assert_eq!(r.metrics().handshake_failures.load(Ordering::Relaxed), 2);
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let mut r = rig();
    let host = UnixListener::bind(r.dir.join("v.sock_52")).unwrap();
    r.post_rx(8);
    let mut req = hdr(OP_REQUEST, 1000, 52);
    req.buf_alloc = 100;
    r.send(req, &[]);
    r.received();
    let (mut s, _) = host.accept().unwrap();
    s.write_all(&[7u8; 1000]).unwrap();
    let got = r.poll();
    assert_eq!(got[0].1.len(), 100);
    let got = if got.len() > 1 {
        got[1..].to_vec()
    } else {
        r.poll()
    };
    assert_eq!(got[0].0.op, OP_CREDIT_REQUEST);
    let mut upd = hdr(OP_CREDIT_UPDATE, 1000, 52);
    upd.buf_alloc = 100;
    upd.fwd_cnt = 100;
    r.send(upd, &[]);
    let got = r.received();
    assert_eq!(got[0].1.len(), 100);
}

#[test]
fn guest_exceeding_credit_is_reset_and_buffering_is_bounded() {
    let mut r = rig();
    let host = UnixListener::bind(r.dir.join("v.sock_52")).unwrap();
    r.post_rx(64);
    r.send(hdr(OP_REQUEST, 1000, 52), &[]);
    r.received();
    let (_s, _) = host.accept().unwrap();
    let chunk = vec![1u8; 60_000];
    let mut reset = false;
    for _ in 0..200 {
        let mut rw = hdr(OP_RW, 1000, 52);
        rw.len = chunk.len() as u32;
        r.send(rw, &chunk);
        if r.received().iter().any(|p| p.0.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset);
    assert_eq!(r.metrics().credit_violations.load(Ordering::Relaxed), 1);
    assert_eq!(r.vsock.lock().unwrap().connections(), 0);
}

#[test]
fn malformed_packets_are_dropped_or_reset() {
    let mut r = rig();
    r.post_rx(8);
    // Header shorter than 44 bytes.
    let at = r.alloc.alloc(64, 8);
    r.tx.add_chain(&[Desc::readable(at, 20)]);
    // Lying length.
    let mut lie = hdr(OP_RW, 1, 2);
    lie.len = 4000;
    r.send(lie, b"abc");
    // Spoofed source CID: dropped silently.
    let mut spoof = hdr(OP_REQUEST, 1, 2);
    spoof.src_cid = 9;
    r.send(spoof, &[]);
    r.vsock.lock().unwrap().queue_notified(TX);
    assert!(r.received().is_empty());
    // Wrong destination, unknown op, data for no connection: reset.
    let mut other = hdr(OP_REQUEST, 1, 2);
    other.dst_cid = 5;
    r.send(other, &[]);
    r.send(hdr(42, 1, 2), &[]);
    let mut rw = hdr(OP_RW, 1, 2);
    rw.len = 1;
    r.send(rw, b"x");
    let got = r.received();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|p| p.0.op == OP_RST));
    // A reset for nothing gets no answer.
    r.send(hdr(OP_RST, 1, 2), &[]);
    assert!(r.received().is_empty());
    assert_eq!(r.metrics().malformed_packets.load(Ordering::Relaxed), 5);
}

#[test]
fn resets_are_bounded_when_the_guest_never_reads() {
    let mut r = rig();
    for i in 0..(crate::virtio::vsock::muxer::MAX_QUEUED_RESETS + 100) {
        let mut rw = hdr(OP_RW, i as u32, 2);
        rw.len = 0;
        r.send(rw, &[]);
        r.tx.take_used();
    }
    assert_eq!(r.metrics().resets_dropped.load(Ordering::Relaxed), 100);
    r.post_rx(200);
    assert_eq!(r.received().len(), 200);
}

#[test]
fn transport_reset_event_and_config_cid() {
    let mut r = rig();
    let mut cid = [0u8; 8];
    r.vsock.lock().unwrap().read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let handle = VsockHandle::new(&r.vsock);
    handle.reset_transport();
    assert!(r.ev.take_used().is_empty());
    let at = r.alloc.alloc(4, 4);
    r.ev.add_chain(&[Desc::writable(at, 4)]);
    r.vsock.lock().unwrap().queue_notified(EVQ);
    assert_eq!(r.ev.take_used(), vec![(0, 4)]);
    assert_eq!(
        r.mem.read_obj::<u32>(GuestAddress(at)).unwrap(),
        EVENT_TRANSPORT_RESET
    );
    assert_eq!(handle.metrics().transport_resets.load(Ordering::Relaxed), 1);
}

#[test]
fn invalid_cids_are_refused() {
    for cid in [0, 1, 2, u32::MAX] {
        let cfg = VsockConfig {
            guest_cid: cid,
            uds_path: std::env::temp_dir().join("ember-never"),
        };
        assert!(matches!(Vsock::new(&cfg), Err(VsockError::InvalidCid(_))));
    }
}

#[test]
fn restored_device_resets_the_transport_and_serves_new_connections() {
    let mut r = rig();
    let old = UnixListener::bind(r.dir.join("v.sock_52")).unwrap();
    r.post_rx(8);
    r.send(hdr(OP_REQUEST, 1000, 52), &[]);
    assert_eq!(r.received()[0].0.op, OP_RESPONSE);
    let (mut old_stream, _) = old.accept().unwrap();
    // The guest keeps an event buffer posted, as Linux does.
    let ev_at = r.alloc.alloc(8, 8);
    r.mem
        .write_obj(0xffff_ffffu32, GuestAddress(ev_at))
        .unwrap();
    let ev_head = r.ev.add_chain(&[Desc::writable(ev_at, 8)]);
    r.vsock.lock().unwrap().queue_notified(EVQ);
    assert!(r.ev.take_used().is_empty());

    let state = r.snapshot_and_restore("restored.sock");
    assert_eq!(state.queues[RX].next_used, 1);
    // The guest is told at once that its connections are gone.
    assert_eq!(r.ev.take_used(), vec![(u32::from(ev_head), 4)]);
    assert_eq!(
        r.mem.read_obj::<u32>(GuestAddress(ev_at)).unwrap(),
        EVENT_TRANSPORT_RESET
    );
    assert_eq!(r.metrics().transport_resets.load(Ordering::Relaxed), 1);
    assert_eq!(r.vsock.lock().unwrap().connections(), 0);
    // The old device is gone with its host connections.
    let mut b = [0u8; 1];
    assert_eq!(old_stream.read(&mut b).unwrap(), 0);

    // New connections work on the same rings, through the new socket path.
    let host = UnixListener::bind(r.dir.join("restored.sock_53")).unwrap();
    r.send(hdr(OP_REQUEST, 1001, 53), &[]);
    let got = r.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, OP_RESPONSE);
    let (mut s, _) = host.accept().unwrap();
    let mut rw = hdr(OP_RW, 1001, 53);
    rw.len = 2;
    r.send(rw, b"hi");
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hi");
    // The receive buffers posted before the snapshot are used in order.
    assert_eq!(r.rx.used_idx(), 2);
}

#[test]
fn transport_reset_waits_for_an_event_buffer_after_restore() {
    let mut r = rig();
    r.snapshot_and_restore("v2.sock");
    assert!(r.ev.take_used().is_empty());
    let at = r.alloc.alloc(4, 4);
    r.ev.add_chain(&[Desc::writable(at, 4)]);
    r.vsock.lock().unwrap().queue_notified(EVQ);
    assert_eq!(r.ev.take_used(), vec![(0, 4)]);
    assert_eq!(r.metrics().transport_resets.load(Ordering::Relaxed), 1);
    // Exactly one event.
    r.ev.add_chain(&[Desc::writable(at, 4)]);
    r.vsock.lock().unwrap().queue_notified(EVQ);
    assert!(r.ev.take_used().is_empty());
}
