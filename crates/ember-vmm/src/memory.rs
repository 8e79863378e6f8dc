//! Guest memory: anonymous mappings laid out around the MMIO gap.

use std::io;

use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};

use crate::arch::layout::{HIGH_RAM_START, MMIO_GAP_START};
use crate::GuestMemoryMmap;

/// Smallest guest Ember boots: the kernel loads at 1 MiB.
pub const MIN_MEM_MIB: usize = 2;
/// Largest guest the layout can address (1 TiB).
pub const MAX_MEM_MIB: usize = 1 << 20;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Too small to hold the boot structures and a kernel.
    #[error("guest memory of {0} MiB is too small: at least {MIN_MEM_MIB} MiB is needed")]
    TooSmall(usize),
    /// More than the host has, or more than the layout addresses.
    #[error("guest memory of {requested} MiB is more than this host's {host} MiB of RAM")]
    MoreThanHost { requested: usize, host: usize },
    /// Larger than the address layout supports.
    #[error("guest memory of {0} MiB is more than Ember supports ({MAX_MEM_MIB} MiB)")]
    TooLarge(usize),
    /// mmap failed.
    #[error("cannot map {size_mib} MiB of guest memory{hint}: {source}")]
    Mmap {
        size_mib: usize,
        hint: &'static str,
        source: io::Error,
    },
    /// vm-memory refused the region set.
    #[error("cannot build the guest memory map: {0}")]
    Regions(String),
}

/// The RAM ranges for a guest of `mem_bytes`: below the gap, then above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, u64)> {
    let low = mem_bytes.min(MMIO_GAP_START);
    let mut v = vec![(GuestAddress(0), low)];
    if mem_bytes > MMIO_GAP_START {
        v.push((GuestAddress(HIGH_RAM_START), mem_bytes - MMIO_GAP_START));
    }
    v
}

/// Total RAM of the host, in MiB, from /proc/meminfo.
pub fn host_mem_mib() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Checks a requested size against the layout and the host.
pub fn check_size(mem_mib: usize) -> Result<(), MemoryError> {
    if mem_mib < MIN_MEM_MIB {
        return Err(MemoryError::TooSmall(mem_mib));
    }
    if mem_mib > MAX_MEM_MIB {
        return Err(MemoryError::TooLarge(mem_mib));
    }
    if let Some(host) = host_mem_mib() {
        if mem_mib > host {
            return Err(MemoryError::MoreThanHost {
                requested: mem_mib,
                host,
            });
        }
    }
    Ok(())
}

/// The name guest RAM mappings carry in /proc/PID/maps and smaps.
pub const GUEST_RAM_VMA_NAME: &str = "ember-guest-ram";

/// Names a guest RAM mapping `[anon:ember-guest-ram]`, so tools (and our
/// benchmarks) can tell guest memory from the VMM's own, and the kernel
/// never merges it with the VMM's other anonymous mappings. Best effort:
/// kernels without CONFIG_ANON_VMA_NAME refuse (EINVAL), and nothing
/// depends on it.
fn name_guest_ram(addr: *mut u8, len: usize) -> io::Result<()> {
    const PR_SET_VMA: libc::c_int = 0x5356_4d41;
    const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;
    let name = c"ember-guest-ram";
    debug_assert_eq!(name.to_str(), Ok(GUEST_RAM_VMA_NAME));
    // SAFETY: prctl only reads `name` (a NUL-terminated string that outlives
    // the call) and tags the mapping [addr, addr+len), which we own.
    let rc = unsafe {
        libc::prctl(
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            name.as_ptr() as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Maps guest memory of `mem_mib` MiB, optionally on 2 MiB huge pages.
///
/// Pages are reserved lazily (`MAP_NORESERVE`): the host only commits what
/// the guest touches.
pub fn create_guest_memory(
    mem_mib: usize,
    huge_pages: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    check_size(mem_mib)?;
    let mem_bytes = (mem_mib as u64) << 20;
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(mem_bytes) {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        if huge_pages {
            flags |= libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
        }
        let region = MmapRegion::build(
            None,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
        )
        .map_err(|e| MemoryError::Mmap {
            size_mib: (len >> 20) as usize,
            hint: if huge_pages {
                " on 2 MiB huge pages (are enough reserved in /proc/sys/vm/nr_hugepages?)"
            } else {
                ""
            },
            source: match e {
                vm_memory::mmap::MmapRegionError::Mmap(io) => io,
                other => io::Error::other(other.to_string()),
            },
        })?;
        if let Err(e) = name_guest_ram(region.as_ptr(), region.size()) {
            tracing::debug!("guest RAM mapping not named: {e}");
        }
        let region = GuestRegionMmap::new(region, start)
            .ok_or_else(|| MemoryError::Regions(format!("region at {:#x} overflows", start.0)))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Regions(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_guests_are_one_region() {
        let r = ram_ranges(128 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START).len(), 1);
    }

    #[test]
    fn large_guests_skip_the_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r,
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]
        );
    }

    #[test]
    fn a_4_gib_guest_maps_around_the_gap() {
        let m = create_guest_memory(4096, false).unwrap();
        assert_eq!(m.num_regions(), 2);
        let sizes: Vec<u64> = m.iter().map(|r| r.len()).collect();
        assert_eq!(sizes, vec![3 << 30, 1 << 30]);
        assert!(m.find_region(GuestAddress(MMIO_GAP_START)).is_none());
        assert!(m.find_region(GuestAddress(HIGH_RAM_START)).is_some());
    }

    #[test]
    fn guest_ram_is_named_in_smaps() {
        // Does this kernel name anonymous mappings at all? Ask it with a
        // scratch mapping of our own.
        let probe = MmapRegion::<()>::new(4096).unwrap();
        if let Err(e) = name_guest_ram(probe.as_ptr(), 4096) {
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
            eprintln!(
                "SKIPPED guest_ram_is_named_in_smaps: this kernel has no CONFIG_ANON_VMA_NAME ({e})"
            );
            return;
        }
        drop(probe);
        let m = create_guest_memory(64, false).unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let start = format!("{:x}-", m.iter().next().unwrap().as_ptr() as usize);
        let line = maps
            .lines()
            .find(|l| l.starts_with(&start))
            .expect("guest RAM is in /proc/self/maps");
        assert!(
            line.ends_with(&format!("[anon:{GUEST_RAM_VMA_NAME}]")),
            "guest RAM is not named: {line}"
        );
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(check_size(0), Err(MemoryError::TooSmall(0))));
        assert!(matches!(check_size(1), Err(MemoryError::TooSmall(1))));
        assert!(matches!(
            check_size(MAX_MEM_MIB + 1),
            Err(MemoryError::TooLarge(_))
        ));
        let host = host_mem_mib().unwrap();
        assert!(matches!(
            check_size(host + 1),
            Err(MemoryError::MoreThanHost { .. })
        ));
        check_size(128).unwrap();
    }
}
