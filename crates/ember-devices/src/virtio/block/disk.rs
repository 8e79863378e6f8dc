//! A raw disk image: a regular file or a host block device, read and
//! written with vectored syscalls straight from and into guest memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::request::SECTOR_SIZE;

/// Most iovecs one preadv/pwritev takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// An open disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    read_only: bool,
    size: u64,
    block_device: bool,
}

impl Disk {
    /// Opens `path`; read-only opens it O_RDONLY.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        let meta = file.metadata()?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        }
        let size = file.seek(SeekFrom::End(0))?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                "virtio-blk: {} is {size} bytes, not a multiple of 512; the tail is unreachable",
                path.display()
            );
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            read_only,
            size,
            block_device,
        })
    }

    /// Path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in whole sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// True when opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// True for a host block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Reads exactly the iovecs' total length at `offset`.
    pub fn read_at(&self, offset: u64, iovecs: &[libc::iovec]) -> io::Result<()> {
        self.vectored(offset, iovecs, false)
    }

    /// Writes exactly the iovecs' total length at `offset`.
    pub fn write_at(&self, offset: u64, iovecs: &[libc::iovec]) -> io::Result<()> {
        self.vectored(offset, iovecs, true)
    }

    fn vectored(&self, mut offset: u64, iovecs: &[libc::iovec], write: bool) -> io::Result<()> {
        // Copied only if a transfer comes back short and must resume.
        let mut iovs = std::borrow::Cow::Borrowed(iovecs);
        let mut start = 0usize;
        while start < iovs.len() {
            if iovs[start].iov_len == 0 {
                start += 1;
                continue;
            }
            let batch = &iovs[start..iovs.len().min(start + IOV_MAX)];
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let n = if write {
                // SAFETY: every iovec points into mapped guest memory (from
                // GuestSg::iovecs) that stays mapped for this call; pwritev
                // only reads from them. The count is at most IOV_MAX.
                unsafe {
                    libc::pwritev(
                        self.file.as_raw_fd(),
                        batch.as_ptr(),
                        batch.len() as i32,
                        off,
                    )
                }
            } else {
                // SAFETY: as above; preadv writes into at most the iovecs'
                // lengths of mapped, writable guest memory.
                unsafe {
                    libc::preadv(
                        self.file.as_raw_fd(),
                        batch.as_ptr(),
                        batch.len() as i32,
                        off,
                    )
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let mut n = n as usize;
            offset += n as u64;
            while n > 0 && start < iovs.len() {
                let len = iovs[start].iov_len;
                if n >= len {
                    n -= len;
                    start += 1;
                } else {
                    // Partial transfer: resume inside this iovec.
                    let iov = &mut iovs.to_mut()[start];
                    iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(n).cast();
                    iov.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Makes completed writes durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `[offset, offset + len)`; reads of it then return zeros.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes `[offset, offset + len)`, keeping it allocated when `unmap`
    /// is false. Falls back to writing zeros where fallocate cannot.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let r = if unmap {
            self.punch_hole(offset, len)
        } else {
            self.fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zero_bytes(offset, len)
            }
            other => other,
        }
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let zeros = vec![0u8; 64 * 1024];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            // SAFETY: fallocate on our own open fd; no memory is passed.
            let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// The iovecs left after the first `n` bytes were transferred.
pub fn skip_iovecs(iovecs: &[libc::iovec], mut n: usize) -> Vec<libc::iovec> {
    let mut out = Vec::with_capacity(iovecs.len());
    for iov in iovecs {
        if n >= iov.iov_len {
            n -= iov.iov_len;
            continue;
        }
        out.push(libc::iovec {
            iov_base: iov.iov_base.cast::<u8>().wrapping_add(n).cast(),
            iov_len: iov.iov_len - n,
        });
        n = 0;
    }
    out
}

impl AsRawFd for Disk {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
