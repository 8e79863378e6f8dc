//! Loader tests with hand-made images and hostile files.

use super::*;
use crate::GuestMemoryMmap;
use std::io::Write;
use vm_memory::Bytes;

fn mem(mib: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
}

struct TempFile(PathBuf);
impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let p = std::env::temp_dir().join(format!("ember-loader-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        TempFile(p)
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A minimal 64-bit ELF with one PT_LOAD segment at `paddr` holding `code`,
/// and optionally a PVH note (type 18) naming `pvh_entry`.
pub fn make_elf(paddr: u64, code: &[u8], pvh_entry: Option<u32>) -> Vec<u8> {
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    let ehsize = 64u64;
    let phoff = ehsize;
    let data_off = phoff + 56 * u64::from(phnum);
    let note: Vec<u8> = match pvh_entry {
        Some(e) => {
            let mut n = Vec::new();
            n.extend_from_slice(&4u32.to_le_bytes()); // namesz "Xen\0"
            n.extend_from_slice(&4u32.to_le_bytes()); // descsz
            n.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            n.extend_from_slice(b"Xen\0");
            n.extend_from_slice(&e.to_le_bytes());
            n
        }
        None => vec![],
    };
    let code_off = data_off + note.len() as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&paddr.to_le_bytes()); // e_entry
    f.extend_from_slice(&phoff.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&(ehsize as u16).to_le_bytes());
    f.extend_from_slice(&56u16.to_le_bytes());
    f.extend_from_slice(&phnum.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    let phdr = |f: &mut Vec<u8>, kind: u32, off: u64, addr: u64, size: u64| {
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&7u32.to_le_bytes());
        f.extend_from_slice(&off.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&4u64.to_le_bytes());
    };
    phdr(&mut f, 1, code_off, paddr, code.len() as u64);
    if pvh_entry.is_some() {
        phdr(&mut f, 4, data_off, 0, note.len() as u64);
    }
    f.extend_from_slice(&note);
    f.extend_from_slice(code);
    f
}

/// A minimal bzImage: one setup sector, then the protected-mode code.
pub fn make_bzimage(code: &[u8], xloadflags: u16) -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    f[0x1f1] = 1; // setup_sects
    f[0x1fe] = 0x55;
    f[0x1ff] = 0xaa;
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    f[0x211] = 1; // loadflags: LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    f.extend_from_slice(code);
    f
}

#[test]
fn elf_without_pvh_uses_the_linux_protocol() {
    let f = TempFile::new("plain.elf", &make_elf(0x20_0000, &[0xf4; 16], None));
    let m = mem(16);
    let k = load_kernel(&m, &f.0).unwrap();
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.entry, GuestAddress(0x20_0000));
    assert_eq!(m.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(), 0xf4);
    assert!(k.end >= 0x20_0010);
}

#[test]
fn elf_with_pvh_note_uses_pvh() {
    let f = TempFile::new(
        "pvh.elf",
        &make_elf(0x20_0000, &[0x90; 16], Some(0x20_0004)),
    );
    let k = load_kernel(&mem(16), &f.0).unwrap();
    assert_eq!(k.protocol, BootProtocol::Pvh);
    assert_eq!(k.entry, GuestAddress(0x20_0004));
}

#[test]
fn bzimage_64_bit_enters_at_0x200() {
    let f = TempFile::new("bz", &make_bzimage(&[0xcc; 0x400], 1));
    let m = mem(16);
    let k = load_kernel(&m, &f.0).unwrap();
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.entry, GuestAddress(HIMEM_START + 0x200));
    assert!(k.setup_header.is_some());
    assert_eq!(m.read_obj::<u8>(GuestAddress(HIMEM_START)).unwrap(), 0xcc);
}

#[test]
fn bzimage_without_64_bit_entry_is_refused() {
    let f = TempFile::new("bz32", &make_bzimage(&[0; 0x400], 0));
    assert!(matches!(
        load_kernel(&mem(16), &f.0),
        Err(LoadError::Not64Bit { .. })
    ));
}

#[test]
fn bad_kernels_get_clear_errors() {
    let m = mem(16);
    let missing = load_kernel(&m, Path::new("/nonexistent/vmlinux")).unwrap_err();
    assert!(missing
        .to_string()
        .contains("cannot open kernel image '/nonexistent/vmlinux'"));
    let junk = TempFile::new("junk", b"this is not a kernel at all");
    assert!(matches!(
        load_kernel(&m, &junk.0),
        Err(LoadError::UnknownFormat { .. })
    ));
    let empty = TempFile::new("empty", b"");
    assert!(matches!(
        load_kernel(&m, &empty.0),
        Err(LoadError::UnknownFormat { .. })
    ));
    let elf = make_elf(0x20_0000, &[0x90; 4096], None);
    let truncated = TempFile::new("trunc.elf", &elf[..elf.len() - 100]);
    let e = load_kernel(&m, &truncated.0).unwrap_err();
    assert!(matches!(e, LoadError::BadKernel { .. }), "{e}");
    let mut class32 = elf.clone();
    class32[4] = 1;
    let c = TempFile::new("c32.elf", &class32);
    assert!(load_kernel(&m, &c.0)
        .unwrap_err()
        .to_string()
        .contains("32-bit ELF"));
    let mut arm = elf.clone();
    arm[18] = 0xb7;
    let a = TempFile::new("arm.elf", &arm);
    assert!(load_kernel(&m, &a.0)
        .unwrap_err()
        .to_string()
        .contains("not x86_64"));
    let mut be = elf.clone();
    be[5] = 2;
    let b = TempFile::new("be.elf", &be);
    assert!(matches!(
        load_kernel(&m, &b.0),
        Err(LoadError::WrongElf { .. })
    ));
    let head_only = TempFile::new("head.elf", &elf[..40]);
    assert!(matches!(
        load_kernel(&m, &head_only.0),
        Err(LoadError::BadKernel { .. })
    ));
    // A segment outside guest memory.
    let far = TempFile::new("far.elf", &make_elf(0x4000_0000, &[0x90; 16], None));
    assert!(matches!(
        load_kernel(&m, &far.0),
        Err(LoadError::BadKernel { .. })
    ));
    // A segment below 1 MiB.
    let low = TempFile::new("low.elf", &make_elf(0x1000, &[0x90; 16], None));
    assert!(matches!(
        load_kernel(&m, &low.0),
        Err(LoadError::BadKernel { .. })
    ));
    let bz = make_bzimage(&[0; 0x400], 1);
    let bz_trunc = TempFile::new("bztrunc", &bz[..0x300]);
    assert!(load_kernel(&m, &bz_trunc.0).is_err());
}

#[test]
fn initrd_goes_to_the_top_of_low_memory() {
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let f = TempFile::new("initrd", &data);
    let m = mem(16);
    let (addr, size) = load_initrd(&m, &f.0, 0x20_0000, None).unwrap();
    assert_eq!(size, 10_000);
    assert_eq!(addr % 4096, 0);
    assert!(addr + size <= 16 << 20 && addr >= 0x20_0000);
    let mut back = vec![0u8; 10_000];
    m.read_slice(&mut back, GuestAddress(addr)).unwrap();
    assert_eq!(back, data);
    // initrd_addr_max is honoured.
    let (addr, _) = load_initrd(&m, &f.0, 0x20_0000, Some(0x7f_ffff)).unwrap();
    assert!(addr + 10_000 <= 0x80_0000);
}

#[test]
fn initrd_larger_than_memory_is_refused() {
    let f = TempFile::new("bigrd", &vec![0u8; 3 << 20]);
    let m = mem(4);
    let e = load_initrd(&m, &f.0, 0x20_0000, None).unwrap_err();
    assert!(matches!(e, LoadError::InitrdTooBig { .. }), "{e}");
    assert!(e.to_string().contains("does not fit"));
    assert!(matches!(
        load_initrd(&m, Path::new("/nonexistent/initrd"), 0, None),
        Err(LoadError::OpenInitrd { .. })
    ));
}

#[test]
fn cmdline_defaults_and_pci_off() {
    let cl = build_cmdline(None, &[]).unwrap();
    let s = cl.as_cstring().unwrap().into_string().unwrap();
    assert_eq!(s, format!("{DEFAULT_CMDLINE} pci=off"));
    let cl = build_cmdline(
        Some("console=ttyS0 pci=off"),
        &["virtio_mmio.device=4K@0xd0001000:5".into()],
    )
    .unwrap();
    assert_eq!(
        cl.as_cstring().unwrap().into_string().unwrap(),
        "console=ttyS0 pci=off virtio_mmio.device=4K@0xd0001000:5"
    );
}

#[test]
fn init_args_stay_last() {
    let cl = build_cmdline(Some("console=ttyS0 -- -s single"), &["x=1".into()]).unwrap();
    assert_eq!(
        cl.as_cstring().unwrap().into_string().unwrap(),
        "console=ttyS0 pci=off x=1 -- -s single"
    );
}

#[test]
fn cmdline_too_long_is_refused() {
    let long = "a".repeat(CMDLINE_MAX_SIZE);
    let e = build_cmdline(Some(&long), &[]).unwrap_err();
    assert!(matches!(e, LoadError::CmdlineTooLong { .. }), "{e}");
    // Just fitting, then one more argument tips it over.
    let fit = "b".repeat(CMDLINE_MAX_SIZE - 1 - " pci=off".len());
    build_cmdline(Some(&fit), &[]).unwrap();
    assert!(build_cmdline(Some(&fit), &["c".into()]).is_err());
}

#[test]
fn cmdline_is_written_with_its_nul() {
    let m = mem(4);
    let cl = build_cmdline(Some("console=ttyS0"), &[]).unwrap();
    let n = write_cmdline(&m, &cl).unwrap();
    assert_eq!(n as usize, "console=ttyS0 pci=off".len() + 1);
    let mut buf = vec![0u8; n as usize];
    m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
    assert_eq!(&buf, b"console=ttyS0 pci=off\0");
}
