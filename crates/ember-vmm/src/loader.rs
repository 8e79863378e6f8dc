//! Loading what the guest boots: the kernel (ELF vmlinux, with or without
//! a PVH note, or bzImage), the initrd, and the command line.
//!
//! The images are untrusted files: every failure is an error naming the
//! file and what is wrong with it; nothing here panics or allocates in
//! proportion to a size field read from a file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile};

use crate::arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START};

/// Firecracker's default kernel command line, used when none is given.
pub const DEFAULT_CMDLINE: &str =
    "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

/// How the loaded kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol, at `entry`.
    Linux64,
    /// PVH, at the 32-bit entry named by the ELF note.
    Pvh,
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub protocol: BootProtocol,
    /// First byte past the kernel image.
    pub end: u64,
    /// The bzImage's setup header, for the zero page.
    pub setup_header: Option<setup_header>,
}

/// Errors loading boot images.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open kernel image '{path}': {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel image '{path}' is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat { path: PathBuf },
    #[error("kernel image '{path}' is not a valid {format}: {detail} (truncated or corrupt?)")]
    BadKernel {
        path: PathBuf,
        format: &'static str,
        detail: String,
    },
    #[error("kernel image '{path}' is a 32-bit bzImage; Ember boots 64-bit kernels only")]
    Not64Bit { path: PathBuf },
    #[error("kernel image '{path}' is not an x86_64 ELF ({what}); Ember boots 64-bit little-endian x86_64 kernels")]
    WrongElf { path: PathBuf, what: String },
    #[error("cannot open initrd '{path}': {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd '{path}' ({size_mib} MiB) does not fit in guest memory above the kernel ({room_mib} MiB free below {limit:#x})")]
    InitrdTooBig {
        path: PathBuf,
        size_mib: u64,
        room_mib: u64,
        limit: u64,
    },
    #[error("cannot read initrd '{path}': {detail}")]
    ReadInitrd { path: PathBuf, detail: String },
    #[error("the kernel command line is too long: {len} bytes, at most {max} allowed")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("invalid kernel command line: {0}")]
    BadCmdline(String),
}

fn is_elf(head: &[u8]) -> bool {
    head.len() >= 4 && &head[..4] == b"\x7fELF"
}

/// Checks the ELF identification linux-loader does not: 64-bit class,
/// little endian, x86_64 machine.
fn check_elf_ident(head: &[u8]) -> Result<(), String> {
    if head.len() < 20 {
        return Err("the header is truncated".into());
    }
    match head[4] {
        2 => {}
        1 => return Err("it is a 32-bit ELF".into()),
        c => return Err(format!("unknown ELF class {c}")),
    }
    if head[5] != 1 {
        return Err("it is big-endian".into());
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    if machine != 0x3e {
        return Err(format!(
            "its machine type is {machine:#x}, not x86_64 (0x3e)"
        ));
    }
    Ok(())
}

fn is_bzimage(head: &[u8]) -> bool {
    head.len() >= 0x206 && head[0x1fe..0x200] == [0x55, 0xaa] && &head[0x202..0x206] == b"HdrS"
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel<M: GuestMemoryBackend>(mem: &M, path: &Path) -> Result<LoadedKernel, LoadError> {
    let open = |p: &Path| {
        File::open(p).map_err(|source| LoadError::OpenKernel {
            path: p.into(),
            source,
        })
    };
    let mut file = open(path)?;
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut file, &mut head).map_err(|source| LoadError::OpenKernel {
        path: path.into(),
        source,
    })?;
    let head = &head[..n];
    file.seek(SeekFrom::Start(0))
        .map_err(|source| LoadError::OpenKernel {
            path: path.into(),
            source,
        })?;
    if is_elf(head) {
        check_elf_ident(head).map_err(|what| LoadError::WrongElf {
            path: path.into(),
            what,
        })?;
        let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
            LoadError::BadKernel {
                path: path.into(),
                format: "ELF vmlinux",
                detail: e.to_string(),
            }
        })?;
        let (entry, protocol) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (addr, BootProtocol::Pvh),
            _ => (r.kernel_load, BootProtocol::Linux64),
        };
        Ok(LoadedKernel {
            entry,
            protocol,
            end: r.kernel_end,
            setup_header: None,
        })
    } else if is_bzimage(head) {
        let r =
            BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
                LoadError::BadKernel {
                    path: path.into(),
                    format: "bzImage",
                    detail: e.to_string(),
                }
            })?;
        let hdr = r.setup_header.ok_or_else(|| LoadError::BadKernel {
            path: path.into(),
            format: "bzImage",
            detail: "no setup header".into(),
        })?;
        // XLF_KERNEL_64: the image has the 64-bit entry point at +0x200.
        if { hdr.version } < 0x20c || { hdr.xloadflags } & 1 == 0 {
            return Err(LoadError::Not64Bit { path: path.into() });
        }
        Ok(LoadedKernel {
            entry: r.kernel_load.unchecked_add(0x200),
            protocol: BootProtocol::Linux64,
            end: r.kernel_end,
            setup_header: Some(hdr),
        })
    } else {
        Err(LoadError::UnknownFormat { path: path.into() })
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// End of the RAM the initrd may use: the first region, below the gap.
fn low_ram_end<M: GuestMemoryBackend>(mem: &M) -> u64 {
    mem.iter()
        .find(|r| r.start_addr().raw_value() == 0)
        .map(|r| r.len().min(MMIO_GAP_START))
        .unwrap_or(0)
}

/// Loads the initrd at the top of low memory, below `max_addr` (the
/// kernel's `initrd_addr_max`), above the kernel. Returns (address, size).
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    kernel_end: u64,
    max_addr: Option<u64>,
) -> Result<(u64, u64), LoadError> {
    let mut file = File::open(path).map_err(|source| LoadError::OpenInitrd {
        path: path.into(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| LoadError::OpenInitrd {
            path: path.into(),
            source,
        })?
        .len();
    let mut limit = low_ram_end(mem);
    if let Some(max) = max_addr {
        limit = limit.min(max.saturating_add(1));
    }
    let floor = kernel_end.max(HIMEM_START);
    let room = limit.saturating_sub(floor);
    let too_big = || LoadError::InitrdTooBig {
        path: path.into(),
        size_mib: size.div_ceil(1 << 20),
        room_mib: room >> 20,
        limit,
    };
    if size > room {
        return Err(too_big());
    }
    let addr = (limit - size) & !0xfff;
    if addr < floor {
        return Err(too_big());
    }
    let mut slice_done = 0u64;
    // Copy straight from the file into guest memory, region by region.
    while slice_done < size {
        let a = GuestAddress(addr + slice_done);
        let region = mem.find_region(a).ok_or_else(too_big)?;
        let off = a.raw_value() - region.start_addr().raw_value();
        let chunk = (size - slice_done).min(region.len() - off);
        let mut vs = region
            .get_slice(vm_memory::MemoryRegionAddress(off), chunk as usize)
            .map_err(|e| LoadError::ReadInitrd {
                path: path.into(),
                detail: e.to_string(),
            })?;
        file.read_exact_volatile(&mut vs)
            .map_err(|e| LoadError::ReadInitrd {
                path: path.into(),
                detail: e.to_string(),
            })?;
        slice_done += chunk;
    }
    Ok((addr, size))
}

/// Builds the command line: the user's (or the default), `pci=off`, and
/// any extra boot arguments (device announcements), with init arguments
/// after ` -- ` kept last.
pub fn build_cmdline(user: Option<&str>, extra: &[String]) -> Result<Cmdline, LoadError> {
    let text = user.unwrap_or(DEFAULT_CMDLINE);
    let (boot, init) = match text.find(" -- ") {
        Some(i) => (&text[..i], Some(&text[i + 4..])),
        None => match text.strip_prefix("-- ") {
            Some(rest) => ("", Some(rest)),
            None => (text, None),
        },
    };
    let mut cl =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| LoadError::BadCmdline(e.to_string()))?;
    let too_long = |cl: &Cmdline, more: &str| LoadError::CmdlineTooLong {
        len: cl.as_cstring().map(|c| c.as_bytes().len()).unwrap_or(0) + 1 + more.len(),
        max: CMDLINE_MAX_SIZE - 1,
    };
    let push = |cl: &mut Cmdline, s: &str| -> Result<(), LoadError> {
        if s.trim().is_empty() {
            return Ok(());
        }
        cl.insert_str(s).map_err(|e| match e {
            linux_loader::cmdline::Error::TooLarge => too_long(cl, s),
            other => LoadError::BadCmdline(other.to_string()),
        })
    };
    push(&mut cl, boot)?;
    let has_pci_off = boot.split_whitespace().any(|w| w == "pci=off");
    if !has_pci_off {
        push(&mut cl, "pci=off")?;
    }
    for e in extra {
        push(&mut cl, e)?;
    }
    if let Some(init) = init {
        if !init.trim().is_empty() {
            cl.insert_init_args(init).map_err(|e| match e {
                linux_loader::cmdline::Error::TooLarge => too_long(&cl, init),
                other => LoadError::BadCmdline(other.to_string()),
            })?;
        }
    }
    Ok(cl)
}

/// Writes the command line at [`CMDLINE_START`]; returns its size with NUL.
pub fn write_cmdline<M: GuestMemoryBackend>(mem: &M, cl: &Cmdline) -> Result<u32, LoadError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cl)
        .map_err(|e| LoadError::BadCmdline(e.to_string()))?;
    let len = cl
        .as_cstring()
        .map_err(|e| LoadError::BadCmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len();
    Ok(len as u32)
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;
