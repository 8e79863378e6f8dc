//! One client connection: a non-blocking Unix stream with its own input and
//! output buffers and deadlines, so a slow or silent client never holds up
//! the others.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::response::Response;

/// Output beyond this is not added to: the client must read first.
pub(crate) const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// Input buffers are shrunk back to this after a large request.
const IDLE_BUFFER_CAPACITY: usize = 4096;

#[derive(Debug)]
pub(crate) struct Connection {
    pub stream: UnixStream,
    pub inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    out_pos: usize,
    /// When the first byte of the current (unfinished) request arrived.
    pub request_started: Option<Instant>,
    /// When the oldest unwritten output was queued.
    pub write_started: Option<Instant>,
    pub last_activity: Instant,
    /// Close once the output is written; read nothing more.
    pub close_after_write: bool,
    /// The client shut down its side (or the stream failed).
    pub peer_closed: bool,
    /// `100 Continue` already sent for the current request.
    pub continue_sent: bool,
    /// The stream failed; drop the connection.
    pub broken: bool,
    /// The events currently registered with epoll.
    pub interest: EventSet,
}

impl Connection {
    pub fn new(stream: UnixStream, now: Instant) -> Self {
        Self {
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            out_pos: 0,
            request_started: None,
            write_started: None,
            last_activity: now,
            close_after_write: false,
            peer_closed: false,
            continue_sent: false,
            broken: false,
            interest: EventSet::IN | EventSet::READ_HANG_UP,
        }
    }

    /// Reads what is available, keeping the input buffer under `cap` bytes.
    pub fn read_available(&mut self, cap: usize, now: Instant) {
        let mut chunk = [0u8; 4096];
        while self.inbuf.len() < cap && !self.peer_closed {
            let want = chunk.len().min(cap - self.inbuf.len());
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => self.peer_closed = true,
                Ok(n) => {
                    if self.inbuf.is_empty() && self.request_started.is_none() {
                        self.request_started = Some(now);
                    }
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    self.last_activity = now;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.peer_closed = true;
                    self.broken = true;
                }
            }
        }
    }

    /// Bytes queued but not yet written.
    pub fn pending_output(&self) -> usize {
        self.outbuf.len() - self.out_pos
    }

    /// Queues raw bytes.
    pub fn queue_raw(&mut self, bytes: &[u8], now: Instant) {
        if self.pending_output() == 0 {
            self.write_started = Some(now);
        }
        self.outbuf.extend_from_slice(bytes);
    }

    /// Queues a response; a closing response ends the connection's input.
    pub fn queue(&mut self, response: &Response, now: Instant) {
        if self.pending_output() == 0 {
            self.write_started = Some(now);
        }
        response.write_to(&mut self.outbuf);
        if response.close {
            self.close_after_write = true;
        }
    }

    /// Writes as much output as the socket takes.
    pub fn flush(&mut self, now: Instant) {
        while self.pending_output() > 0 && !self.broken {
            match self.stream.write(&self.outbuf[self.out_pos..]) {
                Ok(0) => self.broken = true,
                Ok(n) => {
                    self.out_pos += n;
                    self.last_activity = now;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => self.broken = true,
            }
        }
        if self.pending_output() == 0 {
            self.outbuf.clear();
            self.out_pos = 0;
            self.write_started = None;
            if self.outbuf.capacity() > OUTPUT_HIGH_WATER {
                self.outbuf.shrink_to(IDLE_BUFFER_CAPACITY);
            }
        } else {
            // Still waiting on the client: the clock runs from now.
            self.write_started.get_or_insert(now);
        }
    }

    /// Drops the first `n` input bytes (a served request).
    pub fn consume(&mut self, n: usize, now: Instant) {
        self.inbuf.drain(..n.min(self.inbuf.len()));
        self.continue_sent = false;
        self.request_started = if self.inbuf.is_empty() {
            None
        } else {
            Some(now)
        };
        if self.inbuf.is_empty() && self.inbuf.capacity() > IDLE_BUFFER_CAPACITY {
            self.inbuf.shrink_to(IDLE_BUFFER_CAPACITY);
        }
    }

    /// Nothing buffered in either direction: safe to evict.
    pub fn is_idle(&self) -> bool {
        self.inbuf.is_empty() && self.pending_output() == 0
    }

    /// The connection has nothing more to do.
    pub fn is_finished(&self) -> bool {
        if self.broken {
            return true;
        }
        let out_done = self.pending_output() == 0;
        out_done && (self.close_after_write || self.peer_closed)
    }

    /// The epoll events this connection needs now.
    pub fn wanted_interest(&self, input_cap: usize) -> EventSet {
        // After end-of-input, EPOLLRDHUP stays raised: stop asking for it.
        let mut set = if self.peer_closed {
            EventSet::empty()
        } else {
            EventSet::READ_HANG_UP
        };
        let reading = !self.close_after_write
            && !self.peer_closed
            && self.inbuf.len() < input_cap
            && self.pending_output() < OUTPUT_HIGH_WATER;
        if reading {
            set |= EventSet::IN;
        }
        if self.pending_output() > 0 {
            set |= EventSet::OUT;
        }
        set
    }
}
