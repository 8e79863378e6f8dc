//! Checks the guest side of the nested stack without ember: inside L1,
//! QEMU with KVM (`-M microvm,acpi=on`, virtio-mmio described in the ACPI
//! DSDT like ember does) boots both L2 kernels with the Ember guest
//! initramfs to the guest init. If this passes and an ember test fails, the
//! problem is in ember, not in the kernels, images or the nested host.
//!
//! Skips (with a printed reason) only when qemu-system-x86_64 is absent.
//! Builds the minimal microVM kernel if it is not cached (~8 minutes).
//!
//! Not in the default run (`cargo test -- --ignored` runs it): it tests
//! QEMU, not Ember, and QEMU 7.2's microvm inside the emulated host was seen
//! to hang booting the Debian kernel (no output for 120 s after "PCI: Fatal:
//! No config space access function found"), which must not gate Ember's CI.
//! Run it when an ember test fails, to tell a guest-side problem from an
//! ember one.

use std::time::Duration;

use ember_harness::{
    debian_kernel, microvm_kernel, qemu_available, GuestImage, L2Boot, NestedHost,
};

#[test]
#[ignore = "diagnostic: boots L2 with QEMU (not Ember) inside L1; run with --ignored when an ember test fails"]
fn l2_kernels_boot_under_reference_qemu_in_l1() {
    if !qemu_available() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed");
        return;
    }
    let debian = debian_kernel().expect("Debian cloud kernel");
    let micro = microvm_kernel().expect("microVM kernel");
    let debian_initrd = GuestImage::new()
        .modules_from(&debian)
        .initramfs()
        .expect("Debian guest initramfs");
    let micro_initrd = GuestImage::new().initramfs().expect("microVM initramfs");

    let boot = |kernel: &str, initrd: &str| {
        L2Boot::new(kernel)
            .initrd(initrd)
            .guest_run("hello,sysinfo")
            .cmdline("quiet ember.end=poweroff")
            .vcpus(2)
            .mem_mib(512)
            .time_limit(Duration::from_secs(120))
            .qemu_script()
    };
    let report = NestedHost::new()
        .without_ember()
        .reference_qemu()
        .expect("ship QEMU")
        .l2_file(&debian.vmlinuz, "debian-bzImage")
        .l2_file(&debian_initrd, "debian-initrd")
        .l2_file(&micro.bzimage, "microvm-bzImage")
        .l2_file(&micro_initrd, "microvm-initrd")
        .scenario("microvm", &boot("microvm-bzImage", "microvm-initrd"))
        .scenario("debian", &boot("debian-bzImage", "debian-initrd"))
        .scenario_timeout(Duration::from_secs(150))
        .timeout(Duration::from_secs(400))
        .run()
        .expect("run nested host");
    eprintln!("{}", report.summary());
    assert!(report.completed, "{}", report.summary());

    for name in ["microvm", "debian"] {
        let s = report.scenario(name).unwrap();
        let g = s.guest();
        assert!(
            g.ready(),
            "{name} never reached the guest init:\n{}",
            s.output
        );
        let hello = g.run("hello").expect("hello ran");
        assert_eq!(hello.rc, Some(0), "{}", s.output);
        assert!(hello.output().contains("ember-demo: hello from the guest"));
        assert_eq!(g.run("sysinfo").and_then(|r| r.rc), Some(0), "{}", s.output);
        assert_eq!(g.done_rc, Some(0), "{}", s.output);
        assert_eq!(g.ember_rc, Some(0), "QEMU exit code:\n{}", s.output);
    }
    // The Debian kernel found its virtio-mmio device through the DSDT.
    let debian = report.scenario("debian").unwrap().guest();
    let sysinfo = debian.run("sysinfo").unwrap().output();
    assert!(sysinfo.contains("virtio_mmio"), "{sysinfo}");
}
