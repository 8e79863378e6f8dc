//! Real Linux under ember, inside the nested emulated KVM host: the core
//! boot path proven on Debian's stock cloud kernel and on Ember's minimal
//! microVM kernel. One L1 boot carries every scenario:
//!
//! - both kernels with 2 vCPUs reach their init and see what ember
//!   configured: `uname`, the vCPU count, the memory size, the command line;
//!   the kernel's own messages show it parsed ember's ACPI tables (RSDP,
//!   XSDT, FACP, DSDT, APIC) and brought up both CPUs; `/proc/cpuinfo`
//!   shows ember's CPUID (the hypervisor bit, no nested VMX/SVM);
//! - with `acpi=off` the minimal kernel finds both CPUs through the MP
//!   table (Debian's cloud kernel is built without MP-table support,
//!   `CONFIG_X86_MPPARSE`, so it cannot; the test checks that fact);
//! - a guest `reboot` and a guest `poweroff` end ember with exit code 0;
//! - a guest kernel panic makes ember exit 3 and say so (pvpanic), and the
//!   panic message is on the console.
//!
//! Skips (saying why) only when QEMU is not installed; CI installs it.

use std::time::Duration;

use ember_harness::{
    debian_kernel, ember_ready, microvm_kernel, qemu_available, GuestImage, L2Boot, NestedHost,
};

/// What the `probe` command prints in the guest.
const PROBE: &str = "dmesg | grep -E 'ACPI: (RSDP|XSDT|FACP|DSDT|APIC) |smp: Brought up|found SMP MP-table|MPTABLE: OEM ID|ExtINT'; \
                     echo \"online: $(cat /sys/devices/system/cpu/online)\"; \
                     grep -m1 '^flags' /proc/cpuinfo";

const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

fn boot(kernel: &str, initrd: &str, vcpus: u32, mem: u32, extra: &str) -> String {
    L2Boot::new(kernel)
        .initrd(initrd)
        .cmdline(extra)
        .vcpus(vcpus)
        .mem_mib(mem)
        .time_limit(Duration::from_secs(150))
        .script()
}

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn linux_boots_under_ember_with_acpi_mptable_smp_and_exits() {
    if !qemu_available() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (scripts/test installs it)");
        return;
    }
    let ember = ember_ready().expect("an ember binary (cargo build --release -p ember)");
    let debian = debian_kernel().expect("Debian cloud kernel");
    let micro = microvm_kernel().expect("microVM kernel");
    let d_initrd = GuestImage::new()
        .modules_from(&debian)
        .command("probe", PROBE)
        .initramfs()
        .expect("Debian initramfs");
    let m_initrd = GuestImage::new()
        .command("probe", PROBE)
        .initramfs()
        .expect("microVM initramfs");
    let d = |vcpus, mem, extra: &str| boot("debian-vmlinux", "debian-initrd", vcpus, mem, extra);
    let m = |vcpus, mem, extra: &str| boot("microvm-vmlinux", "microvm-initrd", vcpus, mem, extra);
    let report = NestedHost::new()
        .ember(&ember)
        .l2_file(&debian.vmlinux, "debian-vmlinux")
        .l2_file(&d_initrd, "debian-initrd")
        .l2_file(&micro.vmlinux, "microvm-vmlinux")
        .l2_file(&m_initrd, "microvm-initrd")
        .scenario("debian", &d(2, 384, "ember.run=sysinfo,probe"))
        .scenario("microvm", &m(2, 384, "ember.run=sysinfo,probe"))
        .scenario(
            "microvm-mptable",
            &m(2, 256, "acpi=off quiet ember.run=probe"),
        )
        .scenario("poweroff", &m(1, 128, "quiet ember.end=poweroff"))
        .scenario("debian-panic", &d(1, 256, "ember.end=panic"))
        .scenario("microvm-panic", &m(1, 128, "ember.end=panic"))
        .scenario_timeout(Duration::from_secs(180))
        .timeout(Duration::from_secs(900))
        .run()
        .expect("run the nested host");
    eprintln!("{}", report.summary());
    assert!(report.completed, "{}", report.summary());

    for (name, kernel_id) in [("debian", "cloud-amd64"), ("microvm", "6.1.")] {
        let s = report.scenario(name).unwrap();
        let g = s.guest();
        let out = &s.output;
        assert!(g.ready(), "{name}: no guest init:\n{out}");
        let sysinfo = g.run("sysinfo").expect("sysinfo ran").output();
        let probe = g.run("probe").expect("probe ran").output();
        // uname, vCPUs, memory, command line.
        let uname = lines_with(&sysinfo, "uname: Linux")[0];
        assert!(uname.contains(kernel_id), "{name}: {uname}");
        assert!(sysinfo.contains("\ncpus: 2\n"), "{name}: {sysinfo}");
        let mem_kib: u64 = lines_with(&sysinfo, "MemTotal:")[0]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (300 * 1024..=384 * 1024).contains(&mem_kib),
            "{name}: MemTotal {mem_kib} kB for 384 MiB"
        );
        assert!(
            sysinfo.contains(&format!(
                "cmdline: {BASE_CMDLINE} ember.run=sysinfo,probe pci=off\n"
            )),
            "{name}: {sysinfo}"
        );
        // ACPI: the kernel found and parsed every table ember wrote.
        for table in ["RSDP", "XSDT", "FACP", "DSDT", "APIC"] {
            let l = lines_with(&probe, &format!("ACPI: {table} "));
            assert!(
                l.iter().any(|l| l.contains("EMBER")),
                "{name}: no ember {table} in\n{probe}"
            );
        }
        // SMP: both vCPUs up and online.
        assert!(
            probe.contains("smp: Brought up 1 node, 2 CPUs"),
            "{name}: {probe}"
        );
        assert!(probe.contains("online: 0-1"), "{name}: {probe}");
        // CPUID as normalized by ember.
        let flags = lines_with(&probe, "flags")[0];
        let words: Vec<&str> = flags.split_whitespace().collect();
        assert!(words.contains(&"hypervisor"), "{name}: {flags}");
        assert!(
            !words.contains(&"vmx") && !words.contains(&"svm"),
            "{name}: nested virt leaked: {flags}"
        );
        // A guest reboot ends ember with 0.
        assert_eq!(g.ember_rc, Some(0), "{name}:\n{out}");
        assert!(out.contains("ember: the guest rebooted"), "{name}");
    }

    let debian_config = std::fs::read_to_string(&debian.config).expect("Debian kernel config");
    assert!(
        debian_config.contains("# CONFIG_X86_MPPARSE is not set"),
        "Debian's kernel gained MP-table support: add a debian-mptable scenario"
    );
    {
        let name = "microvm-mptable";
        let s = report.scenario(name).unwrap();
        let probe = s
            .guest()
            .run("probe")
            .map(|r| r.output())
            .unwrap_or_default();
        assert!(
            probe.contains("found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]"),
            "{name}:\n{}",
            s.output
        );
        assert!(probe.contains("MPTABLE: OEM ID: EMBER"), "{name}: {probe}");
        assert!(
            lines_with(&probe, "ACPI: RSDP").is_empty(),
            "{name}: acpi=off still parsed ACPI"
        );
        assert!(probe.contains("online: 0-1"), "{name}: {probe}");
        assert!(
            !s.output.contains("ExtINT not setup"),
            "{name}: the MP table's routing is wrong"
        );
        assert_eq!(s.guest().ember_rc, Some(0), "{name}");
    }

    let p = report.scenario("poweroff").unwrap();
    assert_eq!(p.guest().ember_rc, Some(0), "{}", p.output);
    assert!(
        p.output.contains("ember: the guest powered off"),
        "{}",
        p.output
    );

    for name in ["debian-panic", "microvm-panic"] {
        let s = report.scenario(name).unwrap();
        assert_eq!(
            s.guest().ember_rc,
            Some(3),
            "{name}: a guest panic exits 3:\n{}",
            s.output
        );
        assert!(
            s.output
                .contains("Kernel panic - not syncing: Attempted to kill init!"),
            "{name}:\n{}",
            s.output
        );
        assert!(
            s.output
                .contains("ember: error: the guest kernel panicked (pvpanic event 0x1)"),
            "{name}:\n{}",
            s.output
        );
    }
}
