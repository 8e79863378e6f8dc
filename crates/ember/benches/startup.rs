//! Core VMM figures: start-up time and memory overhead, for a tiny guest
//! with 1 vCPU and 128 MiB (the defaults).
//!
//! Method.
//! - Start-up: the parent reads CLOCK_MONOTONIC, then spawns `ember
//!   --kernel boot_timer.elf --boot-timer`. The guest's first instructions
//!   write to the boot-timer port; ember prints CLOCK_MONOTONIC and its own
//!   CPU time (CLOCK_PROCESS_CPUTIME_ID) at that moment. The guest then
//!   reboots; the parent reaps ember with wait4 and reads CLOCK_MONOTONIC
//!   again. Wall times are from the parent's first reading; CPU to exit is
//!   user+system from wait4's rusage. Each figure: median, p90 and min of
//!   `EMBER_BENCH_RUNS` runs (default 30).
//! - Memory: ember boots `idle.elf`, which prints, signals the boot timer
//!   and halts with interrupts off. 300 ms after the signal the bench reads
//!   /proc/PID/smaps_rollup (RSS, PSS, anonymous) and, from /proc/PID/smaps,
//!   the resident size of the 128 MiB guest-memory mapping (the guest pages
//!   touched, part of RSS and anonymous memory).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

struct Sample {
    first_wall_us: f64,
    first_cpu_us: f64,
    exit_wall_us: f64,
    exit_cpu_us: f64,
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
}

// The child is reaped with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn one_boot() -> Sample {
    let kernel = tiny_guests::image("boot_timer.elf");
    let t0 = monotonic_ns();
    let mut child = ember()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--boot-timer")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, writing into locals we own.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let t_exit = monotonic_ns();
    assert_eq!(r, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "ember failed"
    );
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let line = err
        .lines()
        .find(|l| l.starts_with("ember-boot-timer:"))
        .unwrap_or_else(|| panic!("no boot-timer line in: {err}"));
    let first_ns = field(line, "monotonic_ns").unwrap();
    let first_cpu = field(line, "cpu_us").unwrap();
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    Sample {
        first_wall_us: (first_ns - t0) as f64 / 1e3,
        first_cpu_us: first_cpu as f64,
        exit_wall_us: (t_exit - t0) as f64 / 1e3,
        exit_cpu_us: tv(usage.ru_utime) + tv(usage.ru_stime),
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (pct(0.5), pct(0.9), v[0])
}

fn smaps_rollup(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get("Rss:"), get("Pss:"), get("Anonymous:"))
}

/// Resident kB of the mapping that is exactly `size_kb` long (guest RAM).
fn mapping_rss(pid: u32, size_kb: u64) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_guest = false;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            in_guest = v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok() == Some(size_kb);
        } else if in_guest {
            if let Some(v) = line.strip_prefix("Rss:") {
                return v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            }
        }
    }
    0
}

fn memory() {
    let mut child = ember()
        .arg("--kernel")
        .arg(tiny_guests::image("idle.elf"))
        .arg("--boot-timer")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "ember exited before the guest was up"
        );
        if line.starts_with("ember-boot-timer:") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let (rss, pss, anon) = smaps_rollup(child.id());
    let guest = mapping_rss(child.id(), 128 * 1024);
    let _ = child.kill();
    let _ = child.wait();
    let mib = |kb: u64| kb as f64 / 1024.0;
    println!("memory, idle tiny guest (1 vCPU, 128 MiB), from smaps_rollup:");
    println!(
        "  RSS                  {:6.2} MiB   (Firecracker here: 4.1 MiB)",
        mib(rss)
    );
    println!(
        "  PSS                  {:6.2} MiB   (Firecracker here: 2.9 MiB)",
        mib(pss)
    );
    println!(
        "  anonymous            {:6.2} MiB   (Firecracker here: 0.36 MiB)",
        mib(anon)
    );
    println!(
        "  guest pages touched  {:6.2} MiB   (included in RSS and anonymous)",
        mib(guest)
    );
    println!("  RSS without guest    {:6.2} MiB", mib(rss - guest));
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let runs: usize = std::env::var("EMBER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let _ = one_boot(); // warm the page cache
    let samples: Vec<Sample> = (0..runs).map(|_| one_boot()).collect();
    println!("start-up, tiny guest (1 vCPU, 128 MiB), {runs} runs:   median      p90      min");
    let row = |name: &str, f: &dyn Fn(&Sample) -> f64| {
        let (med, p90, min) = stats(samples.iter().map(f).collect());
        println!(
            "  {name:<44} {:7.2} ms {:7.2} ms {:7.2} ms",
            med / 1e3,
            p90 / 1e3,
            min / 1e3
        );
    };
    row("wall, process start -> first guest instruction", &|s| {
        s.first_wall_us
    });
    row("CPU,  process start -> first guest instruction", &|s| {
        s.first_cpu_us
    });
    row("wall, process start -> guest exit", &|s| s.exit_wall_us);
    row("CPU,  process start -> guest exit", &|s| s.exit_cpu_us);
    println!(
        "  (Firecracker here: 8 ms CPU and 31 ms wall from process start to a tiny guest's exit)"
    );
    memory();
}
