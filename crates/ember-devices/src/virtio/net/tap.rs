//! The network back end: a small trait, the real TAP device, and an
//! in-memory fake for unit tests.
//!
//! Frames cross the trait with their 12-byte virtio-net header in front
//! (the TAP is opened with IFF_VNET_HDR and TUNSETVNETHDRSZ 12, so the
//! kernel reads and writes exactly that layout). Reads and writes use
//! readv/writev straight on guest memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::header::VNET_HDR_LEN;
use crate::virtio::sg::GuestSg;

/// TUN offload flags (TUNSETOFFLOAD).
pub mod offload {
    /// The host may hand us partially checksummed packets.
    pub const CSUM: u32 = 0x01;
    /// TCPv4 segmentation offload.
    pub const TSO4: u32 = 0x02;
    /// TCPv6 segmentation offload.
    pub const TSO6: u32 = 0x04;
    /// TSO with ECN bits.
    pub const TSO_ECN: u32 = 0x08;
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// Where frames go to and come from.
pub trait NetBackend: Send {
    /// Reads one frame (header included) into `bufs`; returns its length.
    /// `WouldBlock` when none is pending.
    fn read_frame(&mut self, bufs: &GuestSg<'_>) -> io::Result<usize>;
    /// Writes one frame (header included) from `bufs`.
    fn write_frame(&mut self, bufs: &GuestSg<'_>) -> io::Result<usize>;
    /// Sets the offloads the guest accepts on receive (TUN_F_* bits).
    fn set_offloads(&mut self, flags: u32) -> io::Result<()>;
    /// Fd that becomes readable (edge-triggered) when frames arrive.
    fn readable_fd(&self) -> RawFd;
}

/// `struct ifreq` with the flags member (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// A TAP device opened with a virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the TAP interface `name` (created if it does not exist
    /// and we may create it), non-blocking, with a 12-byte vnet header.
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a
        // valid, writable 40-byte ifreq that outlives the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points to a live local.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                TUNSETVNETHDRSZ,
                &hdr_len as *const libc::c_int,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            file,
            name: name.to_owned(),
        })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, bufs: &GuestSg<'_>) -> io::Result<usize> {
        let iovecs = bufs.iovecs();
        let (fd, count) = (self.file.as_raw_fd(), iovecs.len() as i32);
        loop {
            // SAFETY: the iovecs point into mapped guest memory described by
            // `bufs`, which lives across the call; readv writes at most
            // their total length.
            let n = unsafe { libc::readv(fd, iovecs.as_ptr(), count) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn write_frame(&mut self, bufs: &GuestSg<'_>) -> io::Result<usize> {
        let iovecs = bufs.iovecs();
        loop {
            // SAFETY: as for readv; writev only reads the guest buffers.
            let n = unsafe {
                libc::writev(self.file.as_raw_fd(), iovecs.as_ptr(), iovecs.len() as i32)
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

    fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory passed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn readable_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(any(test, feature = "test-utils"))]
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};
#[cfg(any(test, feature = "test-utils"))]
use vmm_sys_util::eventfd::EventFd;

/// The shared state of a [`FakeBackend`], which tests inspect and feed.
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Default)]
pub struct FakeWire {
    /// Frames waiting to be received by the guest (header included).
    pub to_guest: VecDeque<Vec<u8>>,
    /// Frames the guest sent (header included).
    pub from_guest: Vec<Vec<u8>>,
    /// Offload flags last set.
    pub offloads: u32,
    /// Error to return from the next write, if any.
    pub fail_next_write: Option<i32>,
}

/// An in-memory back end for unit tests and fuzzing.
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Clone)]
pub struct FakeBackend {
    /// What the fake has seen and will deliver.
    pub wire: Arc<Mutex<FakeWire>>,
    evt: Arc<EventFd>,
}

#[cfg(any(test, feature = "test-utils"))]
impl FakeBackend {
    /// An empty fake.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            wire: Arc::default(),
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// Queues a frame for the guest and signals readability.
    pub fn inject(&self, frame: Vec<u8>) {
        self.wire.lock().unwrap().to_guest.push_back(frame);
        let _ = self.evt.write(1);
    }
}

#[cfg(any(test, feature = "test-utils"))]
impl NetBackend for FakeBackend {
    fn read_frame(&mut self, bufs: &GuestSg<'_>) -> io::Result<usize> {
        let mut w = self.wire.lock().unwrap();
        let Some(frame) = w.to_guest.pop_front() else {
            let _ = self.evt.read();
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if frame.len() > bufs.len() {
            // As the kernel's tun does: the frame is consumed and dropped.
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        bufs.write_at(0, &frame);
        Ok(frame.len())
    }

    fn write_frame(&mut self, bufs: &GuestSg<'_>) -> io::Result<usize> {
        let mut w = self.wire.lock().unwrap();
        if let Some(e) = w.fail_next_write.take() {
            return Err(io::Error::from_raw_os_error(e));
        }
        w.from_guest.push(bufs.to_vec());
        Ok(bufs.len())
    }

    fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        self.wire.lock().unwrap().offloads = flags;
        Ok(())
    }

    fn readable_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}
