//! The real `ember` binary boots tiny guests on this machine's /dev/kvm and
//! the guests report what they see.

mod common;

use common::*;

#[test]
fn hello_prints_on_the_console_and_reboot_exits_zero() {
    if !have_kvm() {
        return;
    }
    let o = quick(&["--kernel", &image("hello.elf")]);
    assert_eq!(o.stdout, "Hello from a tiny guest\n");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("the guest rebooted"));
}

#[test]
fn entry_registers_follow_the_64_bit_boot_protocol() {
    if !have_kvm() {
        return;
    }
    let o = quick(&[
        "--kernel",
        &image("bootinfo.elf"),
        "--cmdline",
        "console=ttyS0",
    ]);
    assert_eq!(o.code, 0, "ACPI power-off exits 0: {}", o.stderr);
    assert!(o.stderr.contains("powered off"));
    let s = &o.stdout;
    assert_eq!(hex(s, "rsi"), 0x7000, "rsi points at the zero page");
    assert_eq!(hex(s, "rsp"), 0x8ff0);
    assert_eq!(hex(s, "cr0") & 0x8000_0001, 0x8000_0001, "PE and PG");
    assert_eq!(hex(s, "cr3"), 0x9000);
    assert_ne!(hex(s, "cr4") & 0x20, 0, "PAE");
    assert_eq!(hex(s, "efer") & 0x500, 0x500, "LME and LMA");
    assert_eq!(hex(s, "cs"), 0x10, "__BOOT_CS");
    assert_eq!(hex(s, "ds"), 0x18, "__BOOT_DS");
    assert_eq!(hex(s, "rflags") & 0x200, 0, "interrupts off");
}

#[test]
fn the_guest_sees_its_command_line() {
    if !have_kvm() {
        return;
    }
    let o = quick(&[
        "--kernel",
        &image("bootinfo.elf"),
        "--cmdline",
        "console=ttyS0 foo=bar -- init-arg",
    ]);
    assert_eq!(
        field(&o.stdout, "cmdline"),
        Some("console=ttyS0 foo=bar pci=off -- init-arg")
    );
    let o = quick(&["--kernel", &image("bootinfo.elf")]);
    assert_eq!(
        field(&o.stdout, "cmdline"),
        Some("reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce pci=off"),
        "Firecracker's default, plus pci=off"
    );
}

fn e820(out: &str) -> Vec<(u64, u64, u64)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("e820="))
        .map(|l| {
            let v: Vec<u64> = l
                .split(' ')
                .map(|x| u64::from_str_radix(x, 16).unwrap())
                .collect();
            (v[0], v[1], v[2])
        })
        .collect()
}

#[test]
fn the_guest_sees_its_e820_map() {
    if !have_kvm() {
        return;
    }
    let o = quick(&["--kernel", &image("bootinfo.elf"), "--mem", "256"]);
    assert_eq!(
        e820(&o.stdout),
        vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x400, 2),
            (0xe0000, 0x20000, 2),
            (0x10_0000, (256 << 20) - 0x10_0000, 1)
        ]
    );
    assert_eq!(hex(&o.stdout, "e820_entries"), 4);
}

#[test]
fn a_guest_over_3_gib_has_ram_above_4_gib() {
    if !have_kvm() {
        return;
    }
    let o = quick(&["--kernel", &image("bootinfo.elf"), "--mem", "4096"]);
    let map = e820(&o.stdout);
    assert!(
        map.contains(&(0x10_0000, 0xc000_0000 - 0x10_0000, 1)),
        "{map:?}"
    );
    assert!(map.contains(&(0x1_0000_0000, 1 << 30, 1)), "{map:?}");
}

#[test]
fn every_vcpu_comes_up_through_init_sipi() {
    if !have_kvm() {
        return;
    }
    for n in [1u32, 2, 3, 4, 8, 32] {
        let o = quick(&["--kernel", &image("smp.elf"), "--vcpus", &n.to_string()]);
        assert_eq!(o.code, 0, "{n} vCPUs: {}", o.stderr);
        let line = o
            .stdout
            .lines()
            .find(|l| l.starts_with("cpus="))
            .expect("smp report");
        let bitmap = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        assert_eq!(
            line,
            format!("cpus={n:016x} up={n:016x} apic_bitmap={bitmap:016x}"),
            "{n} vCPUs"
        );
    }
}

#[test]
fn pvh_kernels_enter_in_protected_mode_with_start_info() {
    if !have_kvm() {
        return;
    }
    let o = quick(&["--kernel", &image("pvh.elf"), "--cmdline", "pvh=1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout.trim_end(),
        "pvh magic=336ec578 cr0=00000011 cmdline=pvh=1 pci=off"
    );
}

#[test]
fn bzimage_kernels_boot_with_their_setup_header() {
    if !have_kvm() {
        return;
    }
    let o = quick(&["--kernel", &image("bzhello.bzImage")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("Hello from a tiny bzImage\n"));
    assert_eq!(hex(&o.stdout, "hdr_version"), 0x20f);
}

#[test]
fn triple_fault_exits_4_with_one_line_naming_cause_and_registers() {
    if !have_kvm() {
        return;
    }
    let o = quick(&["--kernel", &image("triple_fault.elf")]);
    assert_eq!(o.code, 4);
    let line = o
        .stderr
        .lines()
        .find(|l| l.contains("vCPU 0 stopped"))
        .expect(&o.stderr);
    assert!(line.starts_with("ember: error: vCPU 0 stopped: triple fault"));
    assert!(
        line.contains("rip=0x10") && line.contains("cr3=0x9000"),
        "{line}"
    );
}

#[test]
fn guest_panic_exits_3_and_says_so() {
    if !have_kvm() {
        return;
    }
    let o = quick(&["--kernel", &image("panic.elf")]);
    assert_eq!(o.code, 3);
    assert!(
        o.stderr
            .contains("the guest kernel panicked (pvpanic event 0x1)"),
        "{}",
        o.stderr
    );
}

#[test]
fn boot_timer_reports_the_first_instruction() {
    if !have_kvm() {
        return;
    }
    let o = quick(&["--kernel", &image("boot_timer.elf"), "--boot-timer"]);
    assert_eq!(o.code, 0);
    let line = o
        .stderr
        .lines()
        .find(|l| l.starts_with("ember-boot-timer:"))
        .expect(&o.stderr);
    assert!(
        line.contains("mark=0") && line.contains("cpu_us="),
        "{line}"
    );
    // Without the flag, the port is unclaimed and nothing is printed.
    let o = quick(&["--kernel", &image("boot_timer.elf")]);
    assert!(!o.stderr.contains("ember-boot-timer"));
}

#[test]
fn config_file_boots_with_firecracker_schema() {
    if !have_kvm() {
        return;
    }
    let cfg = format!(
        r#"{{
            "boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0 from=file"}},
            "machine-config": {{"vcpu_count": 2, "mem_size_mib": 64, "smt": false, "track_dirty_pages": false}},
            "drives": [],
            "network-interfaces": []
        }}"#,
        image("bootinfo.elf")
    );
    let f = Scratch::new("vm.json", cfg.as_bytes());
    let o = quick(&["--no-api", "--config-file", f.path()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        field(&o.stdout, "cmdline"),
        Some("console=ttyS0 from=file pci=off")
    );
    let map = e820(&o.stdout);
    assert_eq!(map.last(), Some(&(0x10_0000, (64 << 20) - 0x10_0000, 1)));
}

#[test]
fn console_output_can_go_to_a_file() {
    if !have_kvm() {
        return;
    }
    let out = Scratch::new("console.txt", b"");
    let cfg = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "serial": {{"serial_out_path": "{}"}}}}"#,
        image("hello.elf"),
        out.path()
    );
    let f = Scratch::new("serial.json", cfg.as_bytes());
    let o = quick(&["--no-api", "--config-file", f.path()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "");
    assert_eq!(
        std::fs::read_to_string(&out.0).unwrap(),
        "Hello from a tiny guest\n"
    );
    let o = quick(&["--kernel", &image("hello.elf"), "--console-out", out.path()]);
    assert_eq!(o.code, 0);
    assert_eq!(
        std::fs::read_to_string(&out.0).unwrap(),
        "Hello from a tiny guest\n".repeat(2)
    );
}

#[test]
fn cpuid_says_hypervisor_and_kvm() {
    if !have_kvm() {
        return;
    }
    let o = quick(&["--kernel", &image("bootinfo.elf")]);
    assert_ne!(
        hex(&o.stdout, "cpuid1_ecx") & (1 << 31),
        0,
        "hypervisor bit"
    );
    assert_eq!(field(&o.stdout, "hypervisor"), Some("KVMKVMKVM"));
}

#[test]
fn kernel_mode_xsave_runs_or_is_explained() {
    if !have_kvm() {
        return;
    }
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let o = quick(&["--kernel", &image("xsave.elf")]);
    assert!(o.stdout.starts_with("xsave: trying\n"));
    if pvm {
        // One warning at start, then one line that explains the death.
        assert!(o
            .stderr
            .lines()
            .next()
            .unwrap()
            .contains("standard Linux guest kernels cannot run here"));
        assert_eq!(o.code, 4, "{}", o.stderr);
        let line = o
            .stderr
            .lines()
            .find(|l| l.contains("vCPU 0 stopped"))
            .expect(&o.stderr);
        assert!(
            line.contains("KVM could not emulate an instruction"),
            "{line}"
        );
        assert!(
            line.contains("PVM-based") && line.contains("XSAVE"),
            "{line}"
        );
        assert!(line.contains("rip=0x"), "{line}");
    } else {
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("xsave: done"));
    }
}

#[test]
fn virtio_devices_are_announced_on_the_command_line() {
    if !have_kvm() {
        return;
    }
    let root = Scratch::new("root.img", &vec![0u8; 1 << 20]);
    let data = Scratch::new("data.img", &vec![0u8; 1 << 20]);
    let uds = std::env::temp_dir().join(format!("ember-test-{}-v.sock", std::process::id()));
    let cfg = format!(
        r#"{{
            "boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
            "drives": [
                {{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}},
                {{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": false}}
            ],
            "vsock": {{"guest_cid": 3, "uds_path": "{}"}},
            "entropy": {{}}
        }}"#,
        image("bootinfo.elf"),
        data.path(),
        root.path(),
        uds.display()
    );
    let f = Scratch::new("virtio.json", cfg.as_bytes());
    let o = quick(&["--no-api", "--config-file", f.path()]);
    let _ = std::fs::remove_file(&uds);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        field(&o.stdout, "cmdline"),
        Some(
            "console=ttyS0 pci=off root=/dev/vda rw \
             virtio_mmio.device=4K@0xd0001000:5 virtio_mmio.device=4K@0xd0002000:6 \
             virtio_mmio.device=4K@0xd0003000:7 virtio_mmio.device=4K@0xd0004000:8"
        ),
        "the root drive first, then the other drive, vsock and entropy"
    );
}
