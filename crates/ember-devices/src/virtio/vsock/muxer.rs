//! The host side of vsock, in Firecracker's hybrid design: guest streams
//! become Unix-socket streams.
//!
//! - Guest connects to the host (CID 2) on port P: we connect to the Unix
//!   socket `<uds_path>_P`, where a host program listens.
//! - A host program connects to `<uds_path>` (we listen there), writes
//!   `CONNECT P\n`, and once the guest's listener on port P accepts, reads
//!   `OK <host port>\n`; then the stream is joined.
//!
//! All host sockets sit in one private epoll set (edge-triggered), whose fd
//! the event loop watches. Limits keep a guest (or host program) from making
//! us allocate without bound: connections, half-open host connections,
//! queued resets, and per-connection buffering (see `connection`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ctl, ConnError, ConnState, Connection, BUF_ALLOC};
use super::packet::*;
use super::VsockMetrics;
use crate::virtio::device::inc;
use crate::virtio::sg::GuestSg;

/// Most connections at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Most host connections that have not yet sent their CONNECT line.
pub const MAX_HANDSHAKES: usize = 64;
/// Most resets waiting for receive buffers; more are dropped.
pub const MAX_QUEUED_RESETS: usize = 256;
/// Time a host program has to send CONNECT, and the guest to answer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the guest has to acknowledge a host-side close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(250);
const CONNECT_LINE_MAX: usize = 32;
const FIRST_HOST_PORT: u32 = 1 << 30;
const TOKEN_LISTENER: u64 = 0;

type Key = (u32, u32);

struct Handshake {
    stream: UnixStream,
    deadline: Instant,
}

/// The vsock back end.
pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    conns: HashMap<Key, Connection>,
    tokens: HashMap<u64, Key>,
    handshakes: HashMap<u64, Handshake>,
    host_ports: HashSet<u32>,
    resets: VecDeque<Key>,
    rx_queue: VecDeque<Key>,
    next_token: u64,
    next_host_port: u32,
    metrics: Arc<VsockMetrics>,
}

impl std::fmt::Debug for VsockMuxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockMuxer")
            .field("uds_path", &self.uds_path)
            .field("connections", &self.conns.len())
            .finish()
    }
}

/// Connects without blocking to the Unix socket at `path`.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the returned fd is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own; OwnedFd closes it on error.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes for the call.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r < 0 {
        // Unix stream sockets never connect in the background: EAGAIN means
        // the listener's backlog is full, which we treat as a refusal.
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

impl VsockMuxer {
    /// Listens on `uds_path` (replacing a stale socket file there).
    pub fn new(guest_cid: u64, uds_path: &Path, metrics: Arc<VsockMetrics>) -> io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(uds_path)?;
            }
        }
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, TOKEN_LISTENER),
        )?;
        let timer = TimerFd::new()?;
        crate::rate_limiter::set_nonblocking(timer.as_raw_fd())?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            epoll,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            host_ports: HashSet::new(),
            resets: VecDeque::new(),
            rx_queue: VecDeque::new(),
            next_token: 1,
            next_host_port: FIRST_HOST_PORT,
            metrics,
        })
    }

    /// The private epoll fd, for the event loop.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The housekeeping timer fd, for the event loop.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection and half-open handshake (transport reset).
    pub fn reset_all(&mut self) {
        for (_, c) in self.conns.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            inc(&self.metrics.conns_removed);
        }
        for (_, h) in self.handshakes.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                h.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.tokens.clear();
        self.host_ports.clear();
        self.resets.clear();
        self.rx_queue.clear();
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn watch(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events | EventSet::EDGE_TRIGGERED, token),
        )
    }

    fn queue_reset(&mut self, key: Key) {
        if self.resets.len() >= MAX_QUEUED_RESETS {
            inc(&self.metrics.resets_dropped);
            return;
        }
        self.resets.push_back(key);
    }

    fn schedule(&mut self, key: Key) {
        self.rx_queue.push_back(key);
        // Stale or duplicate keys are skipped when popped; keep it bounded.
        if self.rx_queue.len() > 4 * MAX_CONNECTIONS {
            let live: HashSet<Key> = self.rx_queue.drain(..).collect();
            self.rx_queue.extend(live);
        }
    }

    fn remove(&mut self, key: Key) -> Option<Connection> {
        let c = self.conns.remove(&key)?;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            c.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        self.tokens.remove(&c.token);
        self.host_ports.remove(&c.local_port);
        inc(&self.metrics.conns_removed);
        Some(c)
    }

    fn kill(&mut self, key: Key) {
        if self.remove(key).is_some() {
            self.queue_reset(key);
        }
    }

    /// Answers a packet we do not accept with a reset for its ports.
    pub fn refuse(&mut self, h: &Header) {
        self.queue_reset((h.dst_port, h.src_port));
    }

    /// Handles one valid packet from the guest (see `validate_guest_packet`).
    pub fn handle_guest_packet(&mut self, h: &Header, payload: &GuestSg<'_>) {
        let key = (h.dst_port, h.src_port);
        if h.op == OP_REQUEST {
            self.guest_connect(h, key);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op != OP_RST {
                self.queue_reset(key);
            }
            return;
        };
        c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        match h.op {
            OP_RESPONSE => {
                if !matches!(c.state, ConnState::LocalInit { .. }) {
                    self.kill(key);
                    return;
                }
                c.state = ConnState::Established;
                let line = format!("OK {}\n", c.local_port);
                // A fresh socket's buffer takes a short line at once.
                if (&c.stream).write_all(line.as_bytes()).is_err() {
                    self.kill(key);
                    return;
                }
                inc(&self.metrics.host_conns_established);
            }
            OP_RST => {
                self.remove(key);
                return;
            }
            OP_SHUTDOWN => {
                c.guest_shut_rcv |= h.flags & SHUTDOWN_RCV != 0;
                c.guest_shut_send |= h.flags & SHUTDOWN_SEND != 0;
                if c.guest_shut_rcv && c.guest_shut_send {
                    // Full close: best-effort flush, then acknowledge with RST.
                    let _ = c.flush_to_host();
                    self.kill(key);
                    return;
                }
                if c.guest_shut_send && c.pending_to_host() == 0 {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            OP_RW => {
                if c.state != ConnState::Established || c.guest_shut_send {
                    self.kill(key);
                    return;
                }
                match c.recv_from_guest(payload) {
                    Ok(()) => {
                        inc(&self.metrics.tx_packets);
                        crate::virtio::device::add(&self.metrics.tx_bytes, payload.len() as u64);
                    }
                    Err(e) => {
                        if e == ConnError::CreditViolation {
                            inc(&self.metrics.credit_violations);
                        }
                        self.kill(key);
                        return;
                    }
                }
            }
            OP_CREDIT_REQUEST => c.ctl |= ctl::CREDIT_UPDATE,
            _ => {} // CREDIT_UPDATE: the credit was recorded above.
        }
        if self.conns.get(&key).is_some_and(Connection::has_rx_work) {
            self.schedule(key);
        }
    }

    fn guest_connect(&mut self, h: &Header, key: Key) {
        if self.conns.contains_key(&key) {
            self.kill(key);
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            inc(&self.metrics.conns_refused);
            self.queue_reset(key);
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), h.dst_port));
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connect to {}: {e}", path.display());
                inc(&self.metrics.conns_refused);
                self.queue_reset(key);
                return;
            }
        };
        let token = self.new_token();
        if self
            .watch(stream.as_raw_fd(), token, EventSet::IN | EventSet::OUT)
            .is_err()
        {
            self.queue_reset(key);
            return;
        }
        let mut c = Connection::new(stream, token, key.0, key.1, ConnState::Established);
        c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        c.ctl |= ctl::RESPONSE;
        self.conns.insert(key, c);
        self.tokens.insert(token, key);
        inc(&self.metrics.conns_added);
        self.schedule(key);
    }

    /// True when there is something to send to the guest.
    pub fn has_rx_work(&self) -> bool {
        !self.resets.is_empty() || !self.rx_queue.is_empty()
    }

    fn header(&self, local: u32, peer: u32, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local,
            dst_port: peer,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: 0,
        }
    }

    /// Fills one guest receive buffer (`buf`, at least a header long) with
    /// the next packet; returns the bytes written, or None if there is
    /// nothing to send.
    pub fn fill_rx(&mut self, buf: &GuestSg<'_>) -> Option<usize> {
        if let Some((local, peer)) = self.resets.pop_front() {
            buf.write_at(0, &self.header(local, peer, OP_RST).to_bytes());
            return Some(HDR_LEN);
        }
        while let Some(key) = self.rx_queue.pop_front() {
            let Some(c) = self.conns.get(&key) else {
                continue;
            };
            if !c.has_rx_work() {
                continue;
            }
            if let Some(n) = self.fill_from(key, buf) {
                if self.conns.get(&key).is_some_and(Connection::has_rx_work) {
                    self.rx_queue.push_back(key);
                }
                return Some(n);
            }
        }
        None
    }

    fn fill_from(&mut self, key: Key, buf: &GuestSg<'_>) -> Option<usize> {
        let mut h = self.header(key.0, key.1, 0);
        let c = self.conns.get_mut(&key)?;
        for (bit, op) in [
            (ctl::REQUEST, OP_REQUEST),
            (ctl::RESPONSE, OP_RESPONSE),
            (ctl::CREDIT_UPDATE, OP_CREDIT_UPDATE),
        ] {
            if c.ctl & bit != 0 {
                c.ctl &= !bit;
                h.op = op;
                h.fwd_cnt = c.report_fwd_cnt();
                buf.write_at(0, &h.to_bytes());
                return Some(HDR_LEN);
            }
        }
        let credit = c.peer_credit() as usize;
        if credit == 0 {
            c.ctl &= !ctl::CREDIT_REQUEST;
            if c.credit_requested {
                return None;
            }
            c.credit_requested = true;
            h.op = OP_CREDIT_REQUEST;
            h.fwd_cnt = c.report_fwd_cnt();
            buf.write_at(0, &h.to_bytes());
            return Some(HDR_LEN);
        }
        let room = (buf.len() - HDR_LEN).min(MAX_PAYLOAD).min(credit);
        match c.read_from_host(&buf.sub(HDR_LEN, room)) {
            Ok(0) if room > 0 => {
                // The host closed: tell the guest, wait for its RST.
                c.host_eof = true;
                c.readable = false;
                c.state = ConnState::Closing {
                    deadline: Instant::now() + CLOSE_TIMEOUT,
                };
                h.op = OP_SHUTDOWN;
                h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                h.fwd_cnt = c.report_fwd_cnt();
                buf.write_at(0, &h.to_bytes());
                self.arm_timer();
                Some(HDR_LEN)
            }
            Ok(n) => {
                c.sent_to_guest(n as u32);
                h.op = OP_RW;
                h.len = n as u32;
                h.fwd_cnt = c.report_fwd_cnt();
                buf.write_at(0, &h.to_bytes());
                inc(&self.metrics.rx_packets);
                crate::virtio::device::add(&self.metrics.rx_bytes, n as u64);
                Some(HDR_LEN + n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.readable = false;
                None
            }
            Err(_) => {
                self.kill(key);
                None
            }
        }
    }

    /// Handles readiness on host sockets (call when the epoll fd fires).
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("vsock: epoll wait failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let token = ev.data();
                let set = ev.event_set();
                if token == TOKEN_LISTENER {
                    self.accept_all();
                } else if self.handshakes.contains_key(&token) {
                    self.read_connect_line(token);
                } else if let Some(&key) = self.tokens.get(&token) {
                    self.conn_ready(key, set);
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn conn_ready(&mut self, key: Key, set: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            c.readable = true;
        }
        if set.contains(EventSet::OUT) && c.pending_to_host() > 0 {
            if c.flush_to_host().is_err() {
                self.kill(key);
                return;
            }
            if c.guest_shut_send && c.pending_to_host() == 0 {
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
        }
        if c.has_rx_work() {
            self.schedule(key);
        }
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("vsock: accept failed: {e}");
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES || self.conns.len() >= MAX_CONNECTIONS {
                inc(&self.metrics.conns_refused);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.new_token();
            if self.watch(stream.as_raw_fd(), token, EventSet::IN).is_err() {
                continue;
            }
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                },
            );
            self.arm_timer();
            // Data may already be there (edge-triggered).
            self.read_connect_line(token);
        }
    }

    fn drop_handshake(&mut self, token: u64) {
        if let Some(h) = self.handshakes.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                h.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            inc(&self.metrics.handshake_failures);
        }
    }

    fn read_connect_line(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get(&token) else {
            return;
        };
        let mut peek = [0u8; CONNECT_LINE_MAX];
        // SAFETY: recv with MSG_PEEK writes at most `peek.len()` bytes into
        // our local buffer.
        let n = unsafe {
            libc::recv(
                hs.stream.as_raw_fd(),
                peek.as_mut_ptr().cast(),
                peek.len(),
                libc::MSG_PEEK,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                self.drop_handshake(token);
            }
            return;
        }
        let n = n as usize;
        let Some(nl) = peek[..n].iter().position(|&b| b == b'\n') else {
            if n == 0 || n == CONNECT_LINE_MAX {
                // Closed, or a line too long to be a CONNECT.
                self.drop_handshake(token);
            }
            return;
        };
        // Consume exactly the line; what follows is data for the guest.
        let mut line = vec![0u8; nl + 1];
        if io::Read::read_exact(&mut &hs.stream, &mut line).is_err() {
            self.drop_handshake(token);
            return;
        }
        let port = std::str::from_utf8(&line[..nl])
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(peer_port) = port else {
            self.drop_handshake(token);
            return;
        };
        let Some(local_port) = self.alloc_host_port(peer_port) else {
            self.drop_handshake(token);
            return;
        };
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        let key = (local_port, peer_port);
        let mut c = Connection::new(
            hs.stream,
            token,
            local_port,
            peer_port,
            ConnState::LocalInit {
                deadline: Instant::now() + HANDSHAKE_TIMEOUT,
            },
        );
        // Needed for OUT readiness from now on.
        let _ = self.epoll.ctl(
            ControlOperation::Modify,
            c.stream.as_raw_fd(),
            EpollEvent::new(
                EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
                token,
            ),
        );
        c.ctl |= ctl::REQUEST;
        self.conns.insert(key, c);
        self.tokens.insert(token, key);
        self.host_ports.insert(local_port);
        inc(&self.metrics.conns_added);
        self.schedule(key);
    }

    fn alloc_host_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            if !self.host_ports.contains(&p) && !self.conns.contains_key(&(p, peer_port)) {
                return Some(p);
            }
        }
        None
    }

    fn arm_timer(&mut self) {
        if !self.timer_armed && self.timer.reset(TICK, Some(TICK)).is_ok() {
            self.timer_armed = true;
        }
    }

    /// Expires handshakes and unanswered requests or closes (call when the
    /// timer fd fires).
    pub fn on_timer(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let late: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            self.drop_handshake(t);
        }
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| match c.state {
                ConnState::LocalInit { deadline } | ConnState::Closing { deadline } => {
                    deadline <= now
                }
                ConnState::Established => false,
            })
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            self.kill(k);
        }
        let waiting = !self.handshakes.is_empty()
            || self
                .conns
                .values()
                .any(|c| c.state != ConnState::Established);
        if !waiting && self.timer.clear().is_ok() {
            self.timer_armed = false;
        }
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
