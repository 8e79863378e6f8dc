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
//!   touched, part of RSS and anonymous memory). Measured twice: booted
//!   with `--kernel` (no API), and booted over the API (API thread up).
//! - API ready: the parent spawns `ember --api-sock PATH` and tries to
//!   connect every 50 µs; wall time is from before the spawn to the first
//!   successful connect; CPU time is ember's (all threads, from
//!   /proc/PID/task/*/schedstat), read once ember sits idle in its loop.
//! - PUT latency: `PUT /machine-config` over one kept-alive connection to
//!   the real ember before boot, 2000 requests after 200 warm-up ones;
//!   median and p99 of the round trip.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// `ember --kernel <tiny guest> --boot-timer`, stderr piped for the
/// boot-timer line.
fn spawn_tiny(image: &str) -> Child {
    ember()
        .arg("--kernel")
        .arg(tiny_guests::image(image))
        .arg("--boot-timer")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember")
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
    let t0 = monotonic_ns();
    let mut child = spawn_tiny("boot_timer.elf");
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

/// Resident kB of guest RAM: the mappings ember names
/// `[anon:ember-guest-ram]` where the kernel supports naming; otherwise the
/// anonymous mapping 128 MiB long, or up to 2 MiB longer when the kernel
/// merged it with an adjacent heap arena (those few pages then count too).
fn guest_rss(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut named, mut by_size) = (0u64, 0u64);
    let (mut is_named, mut size_kb) = (false, 0u64);
    let kb = |v: &str| {
        v.trim()
            .trim_end_matches(" kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            is_named = line.ends_with("[anon:ember-guest-ram]");
        } else if let Some(v) = line.strip_prefix("Size:") {
            size_kb = kb(v);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            if is_named {
                named += kb(v);
            } else if (128 * 1024..=130 * 1024).contains(&size_kb) {
                by_size += kb(v);
            }
        }
    }
    if named > 0 {
        named
    } else {
        by_size
    }
}

/// Waits for the boot-timer line on ember's stderr (the guest is up).
fn wait_guest_up(child: &mut Child) -> BufReader<std::process::ChildStderr> {
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "ember exited before the guest was up"
        );
        if line.starts_with("ember-boot-timer:") {
            return err;
        }
    }
}

fn print_memory(what: &str, pid: u32) {
    let (rss, pss, anon) = smaps_rollup(pid);
    let guest = guest_rss(pid);
    let mib = |kb: u64| kb as f64 / 1024.0;
    println!("memory, idle tiny guest (1 vCPU, 128 MiB), {what}, from smaps_rollup:");
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

fn memory() {
    let mut child = spawn_tiny("idle.elf");
    let _err = wait_guest_up(&mut child);
    std::thread::sleep(Duration::from_millis(300));
    print_memory("no API", child.id());
    let _ = child.kill();
    let _ = child.wait();
}

fn sock_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ember-bench-{}-{tag}.sock", std::process::id()))
}

/// One request on a kept-alive connection; returns the status code.
fn http(conn: &mut BufReader<UnixStream>, method: &str, path: &str, body: &str) -> u16 {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes()).unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    status
}

/// CPU time of every thread of `pid`, in microseconds.
fn cpu_us(pid: u32) -> f64 {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total as f64 / 1e3
}

fn spawn_api(sock: &Path) -> Child {
    let _ = std::fs::remove_file(sock);
    ember()
        .arg("--api-sock")
        .arg(sock)
        .arg("--boot-timer")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember")
}

/// (wall µs, CPU µs) from spawn to the API socket accepting.
fn api_ready_once() -> (f64, f64) {
    let sock = sock_path("ready");
    let t0 = Instant::now();
    let mut child = spawn_api(&sock);
    let deadline = t0 + Duration::from_secs(10);
    loop {
        if UnixStream::connect(&sock).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the API socket never came up");
        std::thread::sleep(Duration::from_micros(50));
    }
    let wall = t0.elapsed().as_secs_f64() * 1e6;
    // A task's CPU time is brought up to date when it stops running: let
    // ember settle into its idle wait first (it does no work meanwhile).
    std::thread::sleep(Duration::from_millis(20));
    let cpu = cpu_us(child.id());
    if std::env::var_os("EMBER_BENCH_DEBUG").is_some() {
        eprintln!("api ready: wall {wall:.0} us cpu {cpu:.0} us");
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&sock);
    (wall, cpu)
}

fn connect(sock: &Path) -> BufReader<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            return BufReader::new(s);
        }
        assert!(Instant::now() < deadline, "the API socket never came up");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn api_figures(runs: usize) {
    let samples: Vec<(f64, f64)> = (0..runs).map(|_| api_ready_once()).collect();
    println!(
        "API, process start -> socket accepting, {runs} runs:        median      p90      min"
    );
    let (m, p, n) = stats(samples.iter().map(|s| s.0).collect());
    println!(
        "  wall                                         {:7.2} ms {:7.2} ms {:7.2} ms",
        m / 1e3,
        p / 1e3,
        n / 1e3
    );
    let (m, p, n) = stats(samples.iter().map(|s| s.1).collect());
    println!(
        "  CPU (all threads)                            {:7.2} ms {:7.2} ms {:7.2} ms",
        m / 1e3,
        p / 1e3,
        n / 1e3
    );
    println!("  (Firecracker publishes 8 ms of CPU to API-ready)");

    let sock = sock_path("put");
    let mut child = spawn_api(&sock);
    let mut conn = connect(&sock);
    let body = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;
    for _ in 0..200 {
        assert_eq!(http(&mut conn, "PUT", "/machine-config", body), 204);
    }
    let mut lat: Vec<f64> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(http(&mut conn, "PUT", "/machine-config", body), 204);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "API, PUT /machine-config round trip (real ember, kept-alive, 2000 requests): median {:.1} us, p99 {:.1} us",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );

    // Memory with the API thread up: boot the idle guest over the API.
    let kernel = tiny_guests::image("idle.elf");
    let bs = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(http(&mut conn, "PUT", "/boot-source", &bs), 204);
    assert_eq!(
        http(
            &mut conn,
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#
        ),
        204
    );
    let _err = wait_guest_up(&mut child);
    std::thread::sleep(Duration::from_millis(300));
    print_memory("booted over the API (API thread up)", child.id());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&sock);
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
    api_figures(runs);
}
