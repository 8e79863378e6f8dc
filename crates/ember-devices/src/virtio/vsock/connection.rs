//! One vsock stream between a guest socket and a host Unix socket, with
//! virtio-vsock credit accounting.
//!
//! Guest to host: the guest may have at most [`BUF_ALLOC`] bytes that we
//! have received but not yet written to the host socket (it learns our
//! `buf_alloc` and `fwd_cnt` from every header we send). Bytes the host
//! socket cannot take at once wait in `to_host`, which the credit bounds; a
//! guest that sends beyond its credit is reset. Host to guest: we read from
//! the host socket straight into the guest's receive buffers, never more
//! than the guest's advertised free space, so nothing is buffered here.

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::virtio::sg::GuestSg;

/// Receive buffer we advertise per connection (bytes from the guest that
/// may wait for the host socket).
pub const BUF_ALLOC: u32 = 128 * 1024;

/// Pending control packets, as bits.
pub mod ctl {
    /// Send REQUEST (host-initiated connection).
    pub const REQUEST: u8 = 1;
    /// Send RESPONSE (guest-initiated connection accepted).
    pub const RESPONSE: u8 = 2;
    /// Send CREDIT_UPDATE.
    pub const CREDIT_UPDATE: u8 = 4;
    /// Send CREDIT_REQUEST.
    pub const CREDIT_REQUEST: u8 = 8;
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent or queued, waiting for RESPONSE.
    LocalInit {
        /// Reset if the guest has not answered by then.
        deadline: Instant,
    },
    /// Data flows.
    Established,
    /// The host closed; SHUTDOWN sent or queued, waiting for the guest's RST.
    Closing {
        /// Reset if the guest has not answered by then.
        deadline: Instant,
    },
}

/// Why a connection must be reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnError {
    /// The guest sent more than its credit allows.
    CreditViolation,
    /// The host socket failed.
    HostIo,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Epoll token of `stream`.
    pub token: u64,
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    /// State.
    pub state: ConnState,
    /// Control packets to send (`ctl` bits).
    pub ctl: u8,
    /// The host socket has data we have not read (edge-triggered epoll).
    pub readable: bool,
    /// The host socket reached end of file.
    pub host_eof: bool,
    /// The guest will send no more.
    pub guest_shut_send: bool,
    /// The guest will receive no more.
    pub guest_shut_rcv: bool,
    /// We already asked the guest for credit and have no answer yet.
    pub credit_requested: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_reported: Wrapping<u32>,
    to_host: VecDeque<u8>,
}

impl Connection {
    /// A connection on `stream` between `local_port` and `peer_port`.
    pub fn new(
        stream: UnixStream,
        token: u64,
        local_port: u32,
        peer_port: u32,
        state: ConnState,
    ) -> Self {
        Self {
            stream,
            token,
            local_port,
            peer_port,
            state,
            ctl: 0,
            readable: false,
            host_eof: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            credit_requested: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_reported: Wrapping(0),
            to_host: VecDeque::new(),
        }
    }

    /// Records the guest's credit from a header it sent.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can take from us now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Our `fwd_cnt` for a header we send; remembers it as reported.
    pub fn report_fwd_cnt(&mut self) -> u32 {
        self.last_fwd_reported = self.fwd_cnt;
        self.fwd_cnt.0
    }

    /// Counts bytes sent to the guest.
    pub fn sent_to_guest(&mut self, n: u32) {
        self.tx_cnt += Wrapping(n);
    }

    /// Bytes from the guest waiting for the host socket.
    pub fn pending_to_host(&self) -> usize {
        self.to_host.len()
    }

    /// Something to send the guest: control, or data it has room for.
    pub fn has_rx_work(&self) -> bool {
        self.ctl != 0
            || (self.state == ConnState::Established
                && self.readable
                && !self.guest_shut_rcv
                && (self.peer_credit() > 0 || !self.credit_requested))
    }

    /// Takes payload from the guest: writes what the host socket accepts and
    /// keeps the rest, within the guest's credit.
    pub fn recv_from_guest(&mut self, payload: &GuestSg<'_>) -> Result<(), ConnError> {
        let len = payload.len() as u32;
        let buffered = (self.rx_cnt - self.fwd_cnt).0;
        if buffered.saturating_add(len) > BUF_ALLOC {
            return Err(ConnError::CreditViolation);
        }
        self.rx_cnt += Wrapping(len);
        let mut written = 0usize;
        if self.to_host.is_empty() {
            written = payload
                .with_iovecs(|iov| writev(&self.stream, iov))
                .map_err(|_| ConnError::HostIo)?;
        }
        if written < payload.len() {
            let rest = payload.sub(written, payload.len() - written).to_vec();
            self.to_host.extend(rest);
        }
        self.fwd_cnt += Wrapping(written as u32);
        self.maybe_credit_update(false);
        Ok(())
    }

    /// Writes buffered guest bytes to the host socket.
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        let had = !self.to_host.is_empty();
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match io::Write::write(&mut &self.stream, a) {
                Ok(0) => return Err(ConnError::HostIo),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ConnError::HostIo),
            }
        }
        if had {
            self.maybe_credit_update(self.to_host.is_empty());
        }
        Ok(())
    }

    /// Queues a CREDIT_UPDATE when the guest's view of our free space is
    /// stale by a quarter of the buffer, or `drained` and stale at all.
    fn maybe_credit_update(&mut self, drained: bool) {
        let stale = (self.fwd_cnt - self.last_fwd_reported).0;
        if stale >= BUF_ALLOC / 4 || (drained && stale > 0) {
            self.ctl |= ctl::CREDIT_UPDATE;
        }
    }

    /// Reads host data into `buf`, at most `max` bytes.
    pub fn read_from_host(&mut self, buf: &GuestSg<'_>) -> io::Result<usize> {
        let iovecs = buf.iovecs();
        loop {
            // SAFETY: the iovecs describe guest memory held by `buf` for the
            // duration of the call; readv writes at most their total length.
            let n = unsafe {
                libc::readv(
                    self.stream.as_raw_fd(),
                    iovecs.as_ptr(),
                    iovecs.len() as i32,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// writev on a non-blocking stream; WouldBlock counts as 0 bytes.
fn writev(stream: &UnixStream, iovecs: &[libc::iovec]) -> io::Result<usize> {
    if iovecs.is_empty() {
        return Ok(0);
    }
    loop {
        // SAFETY: the iovecs point into guest memory that lives across the
        // call; writev only reads them. MSG_NOSIGNAL is not available for
        // writev, so the VMM must ignore SIGPIPE (Rust programs do).
        let n = unsafe { libc::writev(stream.as_raw_fd(), iovecs.as_ptr(), iovecs.len() as i32) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}
