//! Assembles the tiny guests in `guests/` into ELF images (and one bzImage)
//! in OUT_DIR, with the system's GNU toolchain (gcc as the assembler
//! driver for the C preprocessor, ld, objcopy).

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: &[&str] = &[
    "hello",
    "counter",
    "bootinfo",
    "triple_fault",
    "panic",
    "boot_timer",
    "idle",
    "smp",
    "pvh",
    "bzhello",
    "xsave",
    "ticker",
    "kbd",
    "snapcount",
    "spin_timer",
];

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install gcc and binutils)"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Wraps a flat protected-mode image in a one-sector bzImage setup header.
fn make_bzimage(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    f[0x1f1] = 1; // setup_sects: one sector after the boot sector
    f[0x1fe] = 0x55;
    f[0x1ff] = 0xaa;
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    f[0x211] = 0x01; // loadflags: LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x0010_0000u32.to_le_bytes()); // code32_start
    f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    f[0x230..0x234].copy_from_slice(&0x0020_0000u32.to_le_bytes()); // kernel_alignment
    f[0x236..0x238].copy_from_slice(&0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    f[0x260..0x264].copy_from_slice(&(payload.len() as u32).to_le_bytes()); // init_size
    f.extend_from_slice(payload);
    f
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let src = Path::new("guests");
    println!("cargo:rerun-if-changed=guests");
    for name in GUESTS {
        let obj = out.join(format!("{name}.o"));
        let elf = out.join(format!("{name}.elf"));
        run(Command::new("gcc")
            .args(["-c", "-x", "assembler-with-cpp", "-nostdinc", "-I"])
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .arg(src.join(format!("{name}.S"))));
        run(Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-nostdlib",
                "-static",
                "--build-id=none",
                "-T",
            ])
            .arg(src.join("link.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj));
    }
    let flat = out.join("bzhello.bin");
    run(Command::new("objcopy")
        .args(["-O", "binary", "--only-section=.text"])
        .arg(out.join("bzhello.elf"))
        .arg(&flat));
    let payload = std::fs::read(&flat).expect("read bzhello.bin");
    std::fs::write(out.join("bzhello.bzImage"), make_bzimage(&payload)).expect("write bzImage");
}
