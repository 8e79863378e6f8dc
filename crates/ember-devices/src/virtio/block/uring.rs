//! The asynchronous block engine on io_uring (`io_engine: "Async"`).
//!
//! Reads, writes and flushes are submitted to a ring whose completions
//! signal an eventfd the event loop watches; each in-flight request keeps
//! its iovec array (pointing into guest memory) in a slot until it
//! completes. The ring has as many entries as the queue, so a request never
//! waits for ring space. On reset, drop, or a change of backing file, all
//! in-flight requests are waited for first, so the kernel never writes to
//! guest memory the device has let go of.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring, Probe};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// What an in-flight request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncKind {
    /// preadv.
    Read,
    /// pwritev.
    Write,
    /// fdatasync.
    Flush,
}

/// An in-flight request's bookkeeping.
#[derive(Debug)]
pub struct InFlight {
    /// Chain head, for the used ring.
    pub head: u16,
    /// Where the status byte goes.
    pub status: GuestAddress,
    /// The operation.
    pub kind: AsyncKind,
    /// Disk offset in bytes.
    pub offset: u64,
    /// Bytes to move.
    pub len: u64,
    /// Guest buffers (kept alive for the kernel until completion).
    pub iovecs: Box<[libc::iovec]>,
}

// SAFETY: the raw pointers in `iovecs` point into guest memory, which is
// shared by design between threads (vCPUs, event loop); the bookkeeping
// itself is owned data. Moving it between threads is sound.
unsafe impl Send for InFlight {}

/// A finished request: the bookkeeping and the kernel's result.
#[derive(Debug)]
pub struct Completion {
    /// What was submitted.
    pub request: InFlight,
    /// Bytes moved, or the error.
    pub result: io::Result<u64>,
}

/// Errors creating the engine.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// The kernel has no io_uring, or it is disabled (sysctl, seccomp).
    #[error("io_uring is not available on this host: {0}")]
    Unavailable(io::Error),
    /// The kernel lacks an operation the engine needs.
    #[error("io_uring lacks the {0} operation on this host")]
    MissingOp(&'static str),
    /// Another setup error.
    #[error("io_uring setup failed: {0}")]
    Setup(io::Error),
}

/// The io_uring engine.
pub struct UringEngine {
    ring: IoUring,
    evt: EventFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    in_flight: usize,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl UringEngine {
    /// A ring of `depth` entries, checked for the operations we use.
    pub fn new(depth: u32) -> Result<Self, UringError> {
        let ring = IoUring::new(depth.next_power_of_two()).map_err(UringError::Unavailable)?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(UringError::Unavailable)?;
        for (code, name) in [
            (opcode::Readv::CODE, "readv"),
            (opcode::Writev::CODE, "writev"),
            (opcode::Fsync::CODE, "fsync"),
        ] {
            if !probe.is_supported(code) {
                return Err(UringError::MissingOp(name));
            }
        }
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(UringError::Setup)?;
        ring.submitter()
            .register_eventfd(evt.as_raw_fd())
            .map_err(UringError::Setup)?;
        let depth = depth as usize;
        Ok(Self {
            ring,
            evt,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            in_flight: 0,
        })
    }

    /// Requests submitted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `req` against `fd`. On `Err` the request is handed back
    /// (no free slot or a full submission queue).
    pub fn push(&mut self, fd: RawFd, req: InFlight) -> Result<(), InFlight> {
        let Some(slot) = self.free.pop() else {
            return Err(req);
        };
        let fd = types::Fd(fd);
        let entry = match req.kind {
            AsyncKind::Read => opcode::Readv::new(fd, req.iovecs.as_ptr(), req.iovecs.len() as u32)
                .offset(req.offset)
                .build(),
            AsyncKind::Write => {
                opcode::Writev::new(fd, req.iovecs.as_ptr(), req.iovecs.len() as u32)
                    .offset(req.offset)
                    .build()
            }
            AsyncKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(slot as u64);
        // The entry's iovec array lives in `self.slots[slot]`, a boxed slice
        // whose address does not move, until `slot`'s completion is reaped;
        // the device drains the ring before releasing guest memory or the file.
        // SAFETY: so the iovecs and the memory they point to outlive the I/O.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.free.push(slot);
            return Err(req);
        }
        self.slots[slot] = Some(req);
        self.in_flight += 1;
        Ok(())
    }

    /// Hands queued requests to the kernel.
    pub fn submit(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }

    /// Collects finished requests (call when the eventfd fires).
    pub fn reap(&mut self) -> Vec<Completion> {
        let _ = self.evt.read();
        let mut done = Vec::new();
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as usize;
            let Some(request) = self.slots.get_mut(slot).and_then(Option::take) else {
                tracing::error!("virtio-blk: io_uring completion for unknown slot {slot}");
                continue;
            };
            self.free.push(slot);
            self.in_flight -= 1;
            let res = cqe.result();
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as u64)
            };
            done.push(Completion { request, result });
        }
        done
    }

    /// Waits for every in-flight request and returns them.
    pub fn drain(&mut self) -> Vec<Completion> {
        let mut all = Vec::new();
        while self.in_flight > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("virtio-blk: io_uring wait failed: {e}");
                    break;
                }
            }
            all.extend(self.reap());
        }
        all
    }
}

impl AsRawFd for UringEngine {
    /// The completion eventfd.
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // The kernel may still write into guest memory for these.
        self.drain();
    }
}
