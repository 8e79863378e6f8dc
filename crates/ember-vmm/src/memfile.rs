//! The memory file of a snapshot: guest RAM, region after region, as
//! Firecracker lays it out, written sparse (pages that read as zero are
//! holes) and identified by a digest.
//!
//! The digest is XXH3-64 over every non-zero 4 KiB page, in file order, each
//! hashed as its page index (u64, little endian) followed by its bytes. It
//! does not depend on where the file system put holes, so a copied file
//! (`cp --sparse=never`, say) still verifies. Computing it on load reads
//! only the data extents (`SEEK_DATA`/`SEEK_HOLE`): the cost grows with the
//! memory the guest had touched, not with its size.
//!
//! On restore the file is mapped `MAP_PRIVATE`: clones of one snapshot share
//! its clean pages in the page cache and each pays only for what it dirties.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};
use xxhash_rust::xxh3::Xxh3;

use crate::GuestMemoryMmap;

/// The page size of the memory file and of its digest.
pub const PAGE: u64 = 4096;

/// What identifies a memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFileInfo {
    /// Its size: the guest's RAM.
    pub size: u64,
    /// The digest (see the module documentation).
    pub digest: u64,
    /// Pages written (not holes).
    pub data_pages: u64,
}

/// Why a memory file could not be written, checked or mapped.
#[derive(Debug, thiserror::Error)]
pub enum MemFileError {
    #[error("memory file {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("the memory file {path} has {found} bytes, the snapshot's guest has {expected} bytes of RAM: it is truncated or belongs to another snapshot")]
    Size {
        path: String,
        expected: u64,
        found: u64,
    },
    #[error("the memory file {path} does not match the snapshot (its content hashes to {found:#018x}, the snapshot recorded {expected:#018x}): it is damaged or belongs to another snapshot")]
    Digest {
        path: String,
        expected: u64,
        found: u64,
    },
    #[error("cannot map guest memory from {path}: {detail}")]
    Map { path: String, detail: String },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> MemFileError + '_ {
    move |source| MemFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only splits the
        // slice at the alignment boundaries.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Which pages of an anonymous mapping may hold data: present or swapped
/// according to `/proc/self/pagemap`. Pages that are neither were never
/// touched and read as zero. `None` when pagemap cannot be read (then
/// every page is looked at).
fn touched_pages(addr: usize, pages: usize) -> Option<Vec<bool>> {
    let f = File::open("/proc/self/pagemap").ok()?;
    let mut out = Vec::with_capacity(pages);
    let mut buf = vec![0u8; 8 * 65536];
    let first = (addr as u64 / PAGE) * 8;
    let mut done = 0usize;
    while done < pages {
        let n = (pages - done).min(65536);
        let bytes = &mut buf[..n * 8];
        f.read_exact_at(bytes, first + done as u64 * 8).ok()?;
        for e in bytes.chunks_exact(8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(e);
            let v = u64::from_le_bytes(a);
            out.push(v & (3 << 62) != 0);
        }
        done += n;
    }
    Some(out)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes guest RAM to `path` and returns what identifies it. The file is
/// written beside `path` and renamed over it, so a VM running from the old
/// file (a restored VM snapshotting to the path it was restored from) keeps
/// its pages. The caller guarantees that nothing writes guest memory
/// meanwhile (vCPUs paused, called on the thread that runs the devices).
pub fn write(mem: &GuestMemoryMmap, path: &Path) -> Result<MemoryFileInfo, MemFileError> {
    let tmp = temp_path(path);
    let result = write_to(mem, &tmp);
    match result {
        Ok(info) => {
            std::fs::rename(&tmp, path).map_err(io_err(path))?;
            Ok(info)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_to(mem: &GuestMemoryMmap, path: &Path) -> Result<MemoryFileInfo, MemFileError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    let size: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(size).map_err(io_err(path))?;
    let mut hasher = Xxh3::new();
    let mut data_pages = 0u64;
    let mut file_offset = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let base = region.as_ptr();
        // SAFETY: [base, base + len) is this region's live mapping, owned by
        // `mem` for the duration of the call; the caller guarantees no one
        // writes guest memory meanwhile, so reading it as bytes is sound.
        let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, len) };
        let pages = len / PAGE as usize;
        let touched = if region.file_offset().is_none() {
            touched_pages(base as usize, pages)
        } else {
            None
        };
        let mut run_start: Option<usize> = None;
        let flush = |start: usize, end: usize| -> Result<(), MemFileError> {
            let from = start * PAGE as usize;
            let to = end * PAGE as usize;
            file.write_all_at(&bytes[from..to], file_offset + from as u64)
                .map_err(io_err(path))
        };
        for p in 0..pages {
            let page = &bytes[p * PAGE as usize..(p + 1) * PAGE as usize];
            let data = touched.as_ref().is_none_or(|t| t[p]) && !is_zero(page);
            if data {
                let index = file_offset / PAGE + p as u64;
                hasher.update(&index.to_le_bytes());
                hasher.update(page);
                data_pages += 1;
                run_start.get_or_insert(p);
            } else if let Some(start) = run_start.take() {
                flush(start, p)?;
            }
        }
        if let Some(start) = run_start.take() {
            flush(start, pages)?;
        }
        file_offset += len as u64;
    }
    Ok(MemoryFileInfo {
        size,
        digest: hasher.digest(),
        data_pages,
    })
}

/// The next data extent at or after `from`: `(start, end)`, or `None` past
/// the last one. File systems without SEEK_DATA report the whole file.
fn next_data(file: &File, from: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on an fd we own; it moves only the file offset.
    let start = unsafe { libc::lseek(fd, from as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) if from < size => Ok(Some((from, size))),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some((start as u64, (end as u64).min(size))))
}

/// Opens a memory file and checks it against the snapshot: its size, then
/// its digest.
pub fn open_verified(path: &Path, info: &MemoryFileInfo) -> Result<File, MemFileError> {
    let file = File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() || meta.len() != info.size {
        return Err(MemFileError::Size {
            path: path.display().to_string(),
            expected: info.size,
            found: meta.len(),
        });
    }
    let found = digest_of(&file, info.size).map_err(io_err(path))?;
    if found != info.digest {
        return Err(MemFileError::Digest {
            path: path.display().to_string(),
            expected: info.digest,
            found,
        });
    }
    Ok(file)
}

/// The digest of a memory file of `size` bytes, reading data extents only.
pub fn digest_of(file: &File, size: u64) -> io::Result<u64> {
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    // The next page not yet hashed: extents are aligned down to pages and
    // never hash a page twice.
    let mut next_page = 0u64;
    let mut at = 0u64;
    while at < size {
        let Some((start, end)) = next_data(file, at, size)? else {
            break;
        };
        let mut page = (start / PAGE).max(next_page);
        let last = end.div_ceil(PAGE);
        while page < last {
            let n = ((last - page) as usize).min(buf.len() / PAGE as usize);
            let chunk = &mut buf[..n * PAGE as usize];
            file.read_exact_at(chunk, page * PAGE)?;
            for (i, p) in chunk.chunks_exact(PAGE as usize).enumerate() {
                if !is_zero(p) {
                    hasher.update(&(page + i as u64).to_le_bytes());
                    hasher.update(p);
                }
            }
            page += n as u64;
        }
        next_page = last;
        at = last * PAGE;
    }
    Ok(hasher.digest())
}

/// Maps guest RAM from a verified memory file: each `(address, length)`
/// range from its offset in the file, `MAP_PRIVATE` (copy on write). With
/// `huge_pages` the file is read into anonymous 2 MiB pages instead, as a
/// regular file cannot back hugetlb memory.
pub fn map_private(
    file: &File,
    path: &Path,
    ranges: &[(GuestAddress, u64)],
    huge_pages: bool,
) -> Result<GuestMemoryMmap, MemFileError> {
    let map_err = |detail: String| MemFileError::Map {
        path: path.display().to_string(),
        detail,
    };
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for &(start, len) in ranges {
        let size = usize::try_from(len).map_err(|_| map_err(format!("{len} bytes")))?;
        let region = if huge_pages {
            let r = MmapRegion::build(
                None,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_NORESERVE
                    | libc::MAP_HUGETLB
                    | libc::MAP_HUGE_2MB,
            )
            .map_err(|e| map_err(e.to_string()))?;
            // SAFETY: `r` is a fresh private mapping of `size` bytes that
            // nothing else references yet.
            let dst = unsafe { std::slice::from_raw_parts_mut(r.as_ptr(), size) };
            file.read_exact_at(dst, offset).map_err(io_err(path))?;
            r
        } else {
            let fd = file.try_clone().map_err(io_err(path))?;
            MmapRegion::build(
                Some(FileOffset::new(fd, offset)),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            )
            .map_err(|e| map_err(e.to_string()))?
        };
        let region = GuestRegionMmap::new(region, start)
            .ok_or_else(|| map_err(format!("region at {:#x} overflows", start.0)))?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ember-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn guest(mib: usize) -> GuestMemoryMmap {
        crate::memory::create_guest_memory(mib, false).unwrap()
    }

    #[test]
    fn a_written_file_is_sparse_verifies_and_maps_back() {
        let mem = guest(16);
        mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x5000))
            .unwrap();
        mem.write_slice(b"end", GuestAddress((16 << 20) - 3))
            .unwrap();
        let path = dir().join("mem1");
        let info = write(&mem, &path).unwrap();
        assert_eq!(info.size, 16 << 20);
        assert_eq!(info.data_pages, 2);
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "not sparse: {} blocks",
            meta.blocks()
        );
        let file = open_verified(&path, &info).unwrap();
        let ranges = crate::memory::ram_ranges(16 << 20);
        let back = map_private(&file, &path, &ranges, false).unwrap();
        let v: u64 = back.read_obj(GuestAddress(0x5000)).unwrap();
        assert_eq!(v, 0x1122_3344_5566_7788);
        // Private: writing the restored memory does not touch the file.
        back.write_obj(1u64, GuestAddress(0x5000)).unwrap();
        let again = open_verified(&path, &info);
        assert!(again.is_ok());
    }

    #[test]
    fn damaged_truncated_and_foreign_files_are_refused() {
        let mem = guest(8);
        mem.write_obj(42u64, GuestAddress(0x9000)).unwrap();
        let path = dir().join("mem2");
        let info = write(&mem, &path).unwrap();
        // A bit flipped in a data page.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[43], 0x9000).unwrap();
        assert!(matches!(
            open_verified(&path, &info),
            Err(MemFileError::Digest { .. })
        ));
        // A bit set in a hole.
        f.write_all_at(&[42], 0x9000).unwrap();
        open_verified(&path, &info).unwrap();
        f.write_all_at(&[1], 0x20_0000).unwrap();
        assert!(matches!(
            open_verified(&path, &info),
            Err(MemFileError::Digest { .. })
        ));
        f.write_all_at(&[0], 0x20_0000).unwrap();
        open_verified(&path, &info).unwrap();
        // Truncated.
        f.set_len(info.size - PAGE).unwrap();
        let e = open_verified(&path, &info).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = open_verified(&dir().join("missing"), &info).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn the_digest_ignores_where_holes_are() {
        let mem = guest(4);
        mem.write_obj(7u64, GuestAddress(0x3000)).unwrap();
        let path = dir().join("mem3");
        let info = write(&mem, &path).unwrap();
        // The same content, fully allocated.
        let dense = dir().join("mem3-dense");
        std::fs::write(&dense, std::fs::read(&path).unwrap()).unwrap();
        let f = File::open(&dense).unwrap();
        assert_eq!(digest_of(&f, info.size).unwrap(), info.digest);
    }
}
