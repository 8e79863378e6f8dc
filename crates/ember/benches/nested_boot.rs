//! Boot time of real Linux guests under ember, inside the nested emulated
//! KVM host, for each guest kernel; and how often the emulated host hangs.
//!
//! Method. Each run boots one emulated host (L1) that boots, one after the
//! other, Debian's cloud kernel (with its initramfs loading the virtio
//! modules) and Ember's minimal kernel, each with 1 vCPU, 256 MiB and a
//! quiet console, under `ember --boot-timer`. The guest's init writes the
//! boot-timer port first thing; ember then prints `since_start_us`, the
//! time from ember's process start to the guest's init: that is the
//! figure. `EMBER_BENCH_RUNS` runs (default 10); median, p90 and min per
//! kernel. The same runs count hung emulated hosts and retries (the
//! harness retries a hung host once).
//!
//! These are timings of a software CPU (QEMU TCG with nested AMD-V): they
//! compare kernels and VMM versions measured in this same harness, never
//! hardware.

use std::time::Duration;

use ember_harness::{debian_kernel, ember_ready, microvm_kernel, GuestImage, L2Boot, NestedHost};

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (pct(0.5), pct(0.9), v[0])
}

fn main() {
    let runs: usize = std::env::var("EMBER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let ember = ember_ready().expect("an ember binary (cargo build --release -p ember)");
    let debian = debian_kernel().expect("Debian kernel");
    let micro = microvm_kernel().expect("microVM kernel");
    let d_initrd = GuestImage::new()
        .modules_from(&debian)
        .initramfs()
        .expect("initramfs");
    let m_initrd = GuestImage::new().initramfs().expect("initramfs");
    let boot = |k: &str, i: &str| {
        L2Boot::new(k)
            .initrd(i)
            .cmdline("quiet")
            .mem_mib(256)
            .time_limit(Duration::from_secs(120))
            .script()
    };
    let host = NestedHost::new()
        .ember(&ember)
        .l2_file(&debian.vmlinux, "debian-vmlinux")
        .l2_file(&d_initrd, "debian-initrd")
        .l2_file(&micro.vmlinux, "microvm-vmlinux")
        .l2_file(&m_initrd, "microvm-initrd")
        .scenario("debian", &boot("debian-vmlinux", "debian-initrd"))
        .scenario("microvm", &boot("microvm-vmlinux", "microvm-initrd"))
        .scenario_timeout(Duration::from_secs(150))
        .timeout(Duration::from_secs(360))
        .prepare()
        .expect("prepare the nested host");
    let (mut debian_ms, mut micro_ms, mut l1_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut hung, mut retries, mut failed) = (0, 0, 0);
    for i in 0..runs {
        let report = match host.run() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("run {i}: {e}");
                failed += 1;
                continue;
            }
        };
        retries += report.retries;
        hung += report
            .failed_attempts
            .iter()
            .filter(|a| a.reason.starts_with("hang"))
            .count()
            + usize::from(report.hung);
        for a in &report.failed_attempts {
            eprintln!("run {i}: failed attempt: {}", a.reason);
        }
        if !report.completed {
            failed += 1;
            eprintln!("run {i} did not complete:\n{}", report.summary());
            continue;
        }
        if let Some(b) = report.l1_boot {
            l1_ms.push(b.as_secs_f64() * 1e3);
        }
        for (name, into) in [("debian", &mut debian_ms), ("microvm", &mut micro_ms)] {
            let g = report.scenario(name).map(|s| s.guest()).unwrap_or_default();
            match g.boot_timers.first().and_then(|t| t.since_start_us) {
                Some(us) if g.ember_rc == Some(0) => into.push(us as f64 / 1e3),
                _ => eprintln!("run {i}: {name} gave no boot time"),
            }
        }
        eprintln!("run {}/{runs} done", i + 1);
    }
    println!("nested boot, ember start -> guest init (1 vCPU, 256 MiB, quiet), {runs} runs:  median      p90      min");
    for (name, v) in [
        ("Debian cloud kernel 6.1 (+ virtio modules)", &debian_ms),
        ("Ember minimal kernel 6.1", &micro_ms),
        ("L1 (emulated host) boot, for scale", &l1_ms),
    ] {
        if v.is_empty() {
            println!("  {name:<44} no samples");
            continue;
        }
        let (med, p90, min) = stats(v.clone());
        println!(
            "  {name:<44} {:7.0} ms {:7.0} ms {:7.0} ms  ({} samples)",
            med,
            p90,
            min,
            v.len()
        );
    }
    println!(
        "emulated-host hangs: {hung} in {runs} runs ({retries} retries used, {failed} runs failed)"
    );
}
