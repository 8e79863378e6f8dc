//! Boots both L2 guest kernels (Debian's cloud kernel with its virtio
//! modules, and Ember's minimal microVM kernel) under ember inside the
//! nested host, in one L1 boot, and checks that each reaches the guest
//! init, runs a command and ends ember with exit code 0.
//!
//! Skips with a printed reason when qemu-system-x86_64 is absent or when
//! no ember binary accepting `--no-api --kernel` exists yet (the test does
//! not build ember: `cargo build --release -p ember` first).

use std::time::Duration;

use ember_harness::{
    debian_kernel, ember_ready, microvm_kernel, qemu_available, GuestImage, L2Boot, NestedHost,
};

#[test]
fn l2_kernels_boot_to_guest_init_under_ember() {
    if !qemu_available() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed");
        return;
    }
    let ember = match ember_ready() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
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
            .vcpus(2)
            .mem_mib(512)
            .time_limit(Duration::from_secs(150))
            .script()
    };
    let report = NestedHost::new()
        .ember(&ember)
        .l2_file(&debian.vmlinux, "debian-vmlinux")
        .l2_file(&debian_initrd, "debian-initrd")
        .l2_file(&micro.vmlinux, "microvm-vmlinux")
        .l2_file(&micro_initrd, "microvm-initrd")
        .scenario("debian", &boot("debian-vmlinux", "debian-initrd"))
        .scenario("microvm", &boot("microvm-vmlinux", "microvm-initrd"))
        .scenario_timeout(Duration::from_secs(180))
        .timeout(Duration::from_secs(480))
        .run()
        .expect("run nested host");
    eprintln!("{}", report.summary());
    assert!(report.completed, "{}", report.summary());

    for name in ["debian", "microvm"] {
        let s = report.scenario(name).unwrap();
        let g = s.guest();
        eprintln!(
            "{name}: ready={} ember_rc={:?} boot_timer={:?} boot_time={:?}",
            g.ready(),
            g.ember_rc,
            g.boot_timers.first(),
            g.boot_time()
        );
        assert!(
            g.ready(),
            "{name} never reached the guest init:\n{}",
            s.output
        );
        let hello = g.run("hello").expect("hello ran");
        assert_eq!(hello.rc, Some(0), "{}", s.output);
        assert!(hello.output().contains("ember-demo: hello from the guest"));
        assert_eq!(g.ember_rc, Some(0), "ember exit code:\n{}", s.output);
        assert!(
            !g.boot_timers.is_empty(),
            "no boot-timer line:\n{}",
            s.output
        );
    }
}
