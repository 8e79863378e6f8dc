//! Boots the nested, emulated host (L1) and checks that /dev/kvm works in
//! it by running real guest code through it (the kvm-smoke helper), plus
//! the scratch disk and iproute2's `ip tuntap` that later tests rely on.
//!
//! Skips (with a printed reason) only when qemu-system-x86_64 is absent.

use std::time::Duration;

use ember_harness::{kvm_smoke, qemu_available, NestedHost};

#[test]
fn l1_boots_and_dev_kvm_runs_guest_code() {
    if !qemu_available() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed");
        return;
    }
    let smoke = kvm_smoke().expect("build kvm-smoke");
    let report = NestedHost::new()
        .without_ember()
        .program(&smoke, None)
        .scenario("kvm-smoke", "ls -l /dev/kvm && kvm-smoke")
        .scenario(
            "scratch-and-tap",
            "echo durable > \"$EMBER_SCRATCH/result.txt\" && sync\n\
             ip tuntap add dev tap0 mode tap && ip link show tap0",
        )
        .scenario("exit-code", "echo about to fail; exit 7")
        .timeout(Duration::from_secs(240))
        .run()
        .expect("run nested host");
    eprintln!("{}", report.summary());

    assert!(report.completed, "{}", report.summary());
    assert_eq!(report.kvm, Some(true), "{}", report.summary());

    let smoke = report.scenario("kvm-smoke").unwrap();
    assert_eq!(smoke.rc, Some(0), "{}", report.summary());
    assert!(smoke.output.contains("kvm-smoke: ok"), "{}", smoke.output);

    let tap = report.scenario("scratch-and-tap").unwrap();
    assert_eq!(tap.rc, Some(0), "{}\n{}", tap.output, report.summary());
    assert!(tap.output.contains("tap0"), "{}", tap.output);

    let failing = report.scenario("exit-code").unwrap();
    assert_eq!(failing.rc, Some(7));
    assert_eq!(failing.output.trim(), "about to fail");

    let scratch = report.scratch.as_ref().expect("scratch disk");
    assert_eq!(scratch.read_to_string("/result.txt").unwrap(), "durable\n");
}

#[test]
fn l1_can_be_killed_mid_run_and_scratch_inspected() {
    if !qemu_available() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed");
        return;
    }
    let mut host = NestedHost::new()
        .without_ember()
        .scenario(
            "write-then-hang",
            "echo before-kill > \"$EMBER_SCRATCH/mark\" && sync && echo WROTE-MARK\nsleep 600",
        )
        .timeout(Duration::from_secs(180))
        .start()
        .expect("start nested host");
    let seen = host
        .wait_for_text("WROTE-MARK", Duration::from_secs(150))
        .expect("poll console");
    assert!(
        seen,
        "marker not seen; console:\n{}",
        host.parser().tail(30)
    );
    let attempt = host.kill().expect("kill");
    assert!(attempt.killed && !attempt.completed());
    let section = attempt.parser.section("write-then-hang").unwrap();
    assert!(!section.finished());
    let scratch = attempt.scratch.expect("scratch disk");
    assert_eq!(scratch.read_to_string("/mark").unwrap(), "before-kill\n");
}

#[test]
fn silent_l1_is_reported_as_hang_with_console_tail() {
    if !qemu_available() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed");
        return;
    }
    // Stop L1's heartbeat (the processes writing to ttyS1), then stay
    // silent: the harness must call it a hang long before the hard timeout.
    let started = std::time::Instant::now();
    let report = NestedHost::new()
        .without_ember()
        .scratch_mib(None)
        .scenario(
            "stop-heartbeat",
            "for fd in /proc/[0-9]*/fd/1; do\n\
               case \"$(readlink \"$fd\")\" in /dev/ttyS1) p=${fd#/proc/}; kill -9 \"${p%%/*}\";; esac\n\
             done\n\
             echo heartbeat-stopped\nsleep 600",
        )
        .stall_limit(Some(Duration::from_secs(12)))
        .retries(0)
        .timeout(Duration::from_secs(200))
        .run()
        .expect("run nested host");
    eprintln!("{}", report.summary());
    assert!(report.hung && !report.completed, "{}", report.summary());
    assert_eq!(report.retries, 0);
    assert!(started.elapsed() < Duration::from_secs(150));
    let s = report.scenario("stop-heartbeat").unwrap();
    assert!(s.started && s.rc.is_none(), "{}", report.summary());
    assert!(report.console_tail().contains("heartbeat-stopped"));
    assert!(report.summary().contains("DID NOT COMPLETE"));
}
