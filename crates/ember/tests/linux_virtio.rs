//! Ember's virtio-mmio devices driven by real Linux guest drivers, inside
//! the nested, emulated KVM host (see `/work/shared/ENVIRONMENT.md`).
//!
//! Everything runs in ONE boot of the emulated host (L1), scenario after
//! scenario, shared by the tests below through a `OnceLock`:
//!
//! - `micro-devices`: Ember's minimal kernel boots with no initrd from an
//!   ext4 root drive (`GuestImage::rootfs`, `/init` at its top), with four
//!   more drives (read-only, rate-limited, unlimited, data), a network
//!   interface on an L1 TAP, vsock and the entropy device. The guest checks
//!   its root, lists its virtio devices (this kernel sees every device both
//!   in the DSDT and on the command line), exercises every data path, then
//!   unbinds and rebinds every driver (a device reset and a fresh set-up)
//!   and uses each device again.
//! - `debian-devices`: Debian's cloud kernel (virtio drivers as modules,
//!   DSDT only) with an initramfs and two drives, net, vsock and entropy:
//!   the same device listing, data-path and rebind checks but the rate
//!   limiter.
//! - `fstrim`: two minimal-kernel boots on an ext4 data drive backed by a
//!   sparse file on L1's scratch disk: write a big file, then delete it and
//!   `fstrim`; L1 measures the file's `du` in between.
//! - `durability` (last): the guest writes a file to three drives backed
//!   by files on the scratch disk, two flushing (`Writeback`, with the Sync
//!   and the io_uring engine), one not (`Unsafe`), syncs and prints a
//!   marker; the test kills QEMU the moment it sees the marker and reads
//!   the drive images back on the real host.
//!
//! The guest tools are busybox plus `guests/linux/helpers/vsock/`
//! (ember-vsock-echo in the guest, ember-uds-echo in L1: a line-echo
//! protocol over vsock, Unix sockets and TCP). Skips (saying why) only when
//! qemu-system-x86_64 is absent; an ember binary is required (EMBER_BIN, or
//! `cargo build --release -p ember`).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ember_harness::{
    debian_kernel, ember_ready, microvm_kernel, qemu_available, repo_root, static_c_program,
    GuestOutput, NestedHost, ScratchDisk,
};

/// Lines each echo exchange sends: about 540 KB each way with [`PAD`],
/// several times vsock's receive windows (ember's 128 KiB, the guest's
/// 256 KiB), so the credit updates must flow, and many TCP windows.
const LINES: u32 = 6000;
/// Filler that makes every echoed line ~90 bytes.
const PAD: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";
/// L1's and the guest's addresses on the TAP link: link-local, never routed.
const L1_IP: &str = "169.254.77.1";
const GUEST_IP: &str = "169.254.77.2";
const GUEST_MAC: &str = "06:00:a9:fe:4d:02";

/// Rate-limit check: read [`RATE_MIB`] MiB with O_DIRECT in 256 KiB
/// requests from a drive whose bandwidth bucket holds [`BUCKET`] bytes and
/// refills in [`REFILL_MS`]: 512 KiB per 250 ms = 2 MiB/s. The bucket
/// starts full, so at least (8 MiB - 0.5 MiB) / 2 MiB/s = 3.75 s; the same
/// read from an identical unlimited drive (a sparse file on L1's tmpfs)
/// takes a fraction of that even in the emulated stack. 2 MiB/s is far
/// below what the stack manages, and 8 MiB keeps the check under ~5 s.
const RATE_MIB: u64 = 8;
const BUCKET: u64 = 512 * 1024;
const REFILL_MS: u64 = 250;

#[path = "linux_virtio/scenarios.rs"]
mod scenarios;
use scenarios::{debian_devices, durability, fstrim, guest_image, micro_devices};

/// What the one L1 boot left for the tests.
struct Outcome {
    nonce: String,
    /// Scenario name to (exit code, console section).
    sections: BTreeMap<String, (Option<i32>, String)>,
    /// The durable file's content read back from each drive image.
    durable: BTreeMap<&'static str, Result<String, String>>,
    /// The marker was seen and QEMU killed right after.
    killed_at_marker: bool,
    /// Timings and console tail, for failure messages.
    summary: String,
}

impl Outcome {
    fn output(&self, scenario: &str) -> &str {
        self.sections.get(scenario).map_or("", |(_, o)| o.as_str())
    }

    fn guest(&self, scenario: &str) -> GuestOutput {
        GuestOutput::parse(self.output(scenario))
    }

    /// Output of a guest run, asserting it ran and exited 0.
    fn run(&self, scenario: &str, run: &str) -> String {
        let g = self.guest(scenario);
        let r = g.run(run).unwrap_or_else(|| {
            panic!(
                "{scenario}: guest run {run} never started\n{}\n{}",
                self.output(scenario),
                self.summary
            )
        });
        assert_eq!(
            r.rc,
            Some(0),
            "{scenario}: guest run {run} failed:\n{}",
            self.output(scenario)
        );
        r.output()
    }
}

/// The value after `key: ` on the first line that starts with it.
fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix(key)?
            .strip_prefix(": ")
    })
}

/// The values after `key: ` on every line that starts with it.
fn values<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines().filter_map(move |l| {
        l.trim_end_matches('\r')
            .strip_prefix(key)?
            .strip_prefix(": ")
    })
}

/// The number after `key: ` (panics if there is none).
fn number(text: &str, key: &str) -> u64 {
    value(text, key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no number for {key:?} in:\n{text}"))
}

static OUTCOME: OnceLock<Option<Result<Outcome, String>>> = OnceLock::new();

/// The shared run (None: skipped because QEMU is not installed).
fn outcome() -> Option<&'static Outcome> {
    let o = OUTCOME.get_or_init(|| {
        if !qemu_available() {
            eprintln!("SKIPPED: qemu-system-x86_64 is not installed");
            return None;
        }
        Some(run_everything())
    });
    match o {
        None => None,
        Some(Ok(o)) => Some(o),
        Some(Err(e)) => panic!("the nested host run failed: {e}"),
    }
}

/// The marker the durability guest prints after `sync`.
fn durable_marker(nonce: &str) -> String {
    format!("LV-DURABLE-SYNCED {nonce}")
}

fn run_everything() -> Result<Outcome, String> {
    let started = Instant::now();
    let ember = ember_ready()?;
    let helpers = repo_root().join("guests/linux/helpers/vsock");
    let e = |e: ember_harness::HarnessError| e.to_string();
    let guest_tool = static_c_program(&helpers.join("ember-vsock-echo.c"), &[]).map_err(e)?;
    let host_tool = static_c_program(&helpers.join("ember-uds-echo.c"), &[]).map_err(e)?;
    let debian = debian_kernel().map_err(e)?;
    let micro = microvm_kernel().map_err(e)?;
    let image = guest_image(&guest_tool);
    let micro_rootfs = image.rootfs(None).map_err(e)?;
    let micro_initrd = image.initramfs().map_err(e)?;
    let debian_initrd = image.clone().modules_from(&debian).initramfs().map_err(e)?;
    let nonce = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    );
    let order = ["micro-devices", "debian-devices", "fstrim", "durability"];
    let host = NestedHost::new()
        .ember(&ember)
        .l2_file(&micro.vmlinux, "micro-vmlinux")
        .l2_file(&micro_rootfs, "micro-rootfs.ext4")
        .l2_file(&micro_initrd, "micro-initrd")
        .l2_file(&debian.vmlinux, "debian-vmlinux")
        .l2_file(&debian_initrd, "debian-initrd")
        .program(&host_tool, None)
        .program("/sbin/mke2fs", None)
        .file("/etc/mke2fs.conf", "/etc/mke2fs.conf")
        .scenario(order[0], &micro_devices(&nonce))
        .scenario(order[1], &debian_devices(&nonce))
        .scenario(order[2], &fstrim(&nonce))
        .scenario(order[3], &durability(&nonce))
        .scenario_timeout(Duration::from_secs(240))
        .timeout(Duration::from_secs(600));
    let prepared = host.prepare().map_err(e)?;
    let build = started.elapsed();

    // The last scenario never ends by itself: wait for its marker, then
    // kill QEMU. An L1 that never got ready is booted once more.
    let marker = durable_marker(&nonce);
    let mut attempt_no = 0;
    let (attempt, seen) = loop {
        attempt_no += 1;
        let mut running = prepared.start().map_err(e)?;
        let seen = running
            .wait_for_text(&marker, Duration::from_secs(560))
            .map_err(e)?;
        let attempt = running.kill().map_err(e)?;
        if seen || attempt.parser.ready_at.is_some() || attempt_no == 2 {
            break (attempt, seen);
        }
        eprintln!(
            "linux_virtio: L1 never got ready; booting it again. Tail:\n{}",
            attempt.parser.tail(20)
        );
    };

    let mut summary = format!(
        "nested host: image build {:.1} s, L1 wall {:.1} s (attempt {attempt_no}), L1 ready at {:?}, marker seen: {seen}\n",
        build.as_secs_f64(),
        attempt.wall.as_secs_f64(),
        attempt.parser.ready_at,
    );
    let mut sections = BTreeMap::new();
    for name in order {
        let s = attempt.parser.section(name);
        let (rc, out) = s.map_or((None, String::new()), |s| (s.rc, s.output()));
        let host_s = s.map(|s| {
            s.ended_at
                .unwrap_or(attempt.wall)
                .saturating_sub(s.began_at)
                .as_secs_f64()
        });
        summary.push_str(&format!(
            "  scenario {name:<15} rc={rc:?} host={host_s:.1?} s l1_ms={:?}\n",
            s.and_then(|s| s.l1_ms)
        ));
        sections.insert(name.to_string(), (rc, out));
    }
    summary.push_str(&format!(
        "  console {}, last lines:\n{}\n",
        attempt.console_path.display(),
        attempt.parser.tail(25)
    ));
    eprintln!("{summary}");

    let mut durable = BTreeMap::new();
    if let Some(scratch) = &attempt.scratch {
        for id in ["wb", "async", "unsafe"] {
            durable.insert(id, read_from_image(scratch, &format!("/dur-{id}.img")));
        }
    }
    Ok(Outcome {
        nonce,
        sections,
        durable,
        killed_at_marker: seen,
        summary,
    })
}

/// Extract a drive image from the (recovered) scratch disk, replay its own
/// journal with e2fsck and print `/durable.txt` from it with debugfs.
fn read_from_image(scratch: &ScratchDisk, image: &str) -> Result<String, String> {
    let bytes = scratch.read_file(image).map_err(|e| e.to_string())?;
    let copy = std::env::temp_dir().join(format!(
        "linux-virtio-{}-{}",
        std::process::id(),
        image.trim_start_matches('/')
    ));
    std::fs::write(&copy, bytes).map_err(|e| e.to_string())?;
    let fsck = Command::new("e2fsck")
        .arg("-fy")
        .arg(&copy)
        .output()
        .map_err(|e| e.to_string())?;
    let out = Command::new("debugfs")
        .args(["-R", "cat /durable.txt"])
        .arg(&copy)
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&copy);
    if !matches!(fsck.status.code(), Some(0..=2)) {
        return Err(format!(
            "e2fsck {image}: {}",
            String::from_utf8_lossy(&fsck.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn root_on_virtio_blk_and_each_device_once() {
    let Some(o) = outcome() else { return };
    let root = o.run("micro-devices", "lv-root");
    let g = o.guest("micro-devices");
    assert!(g.ready(), "no guest init:\n{}", o.output("micro-devices"));
    let mount = value(&root, "root-mount").unwrap_or("");
    assert!(
        mount.starts_with("ext4 rw"),
        "/ is not a writable ext4:\n{root}"
    );
    let majmin = value(&root, "root-majmin").expect("root-majmin");
    assert_eq!(
        Some(majmin),
        value(&root, "vda-majmin"),
        "/ is not /dev/vda:\n{root}"
    );
    assert_eq!(value(&root, "vda-serial"), Some("rootfs"), "{root}");
    let cmdline = value(&root, "cmdline").unwrap_or("");
    assert!(cmdline.contains("root=/dev/vda rw"), "{root}");
    for scenario in ["micro-devices", "debian-devices"] {
        let l1 = o.output(scenario);
        assert_eq!(
            value(l1, "l1-exit-vm.json"),
            Some("0"),
            "{scenario}: ember's exit code:\n{l1}"
        );
    }

    // (scenario, block devices, cmdline duplicates expected)
    for (scenario, drives, dup) in [("micro-devices", 5, true), ("debian-devices", 2, false)] {
        let out = o.run(scenario, "lv-devices");
        let devs: Vec<&str> = values(&out, "virtio-dev").collect();
        let count = |t: &str| {
            devs.iter()
                .filter(|d| d.contains(&format!("type={t}")))
                .count()
        };
        assert_eq!(devs.len(), drives + 3, "{scenario}: virtio devices:\n{out}");
        assert_eq!(count("0x0002"), drives, "{scenario}: block devices:\n{out}");
        for t in ["0x0001", "0x0004", "0x0013"] {
            assert_eq!(count(t), 1, "{scenario}: devices of type {t}:\n{out}");
        }
        assert!(
            devs.iter().all(|d| !d.contains("driver=none")),
            "{scenario}: unbound device:\n{out}"
        );
        let mut parents: Vec<&str> = devs
            .iter()
            .filter_map(|d| d.split("parent=").nth(1))
            .collect();
        parents.sort_unstable();
        parents.dedup();
        assert_eq!(
            parents.len(),
            devs.len(),
            "{scenario}: two devices on one transport:\n{out}"
        );
        let mmio: Vec<&str> = values(&out, "mmio-dev").collect();
        let from_cmdline = mmio.iter().filter(|m| m.starts_with("virtio-mmio")).count();
        let from_dsdt = mmio.iter().filter(|m| m.starts_with("LNRO0005")).count();
        assert_eq!(from_dsdt, devs.len(), "{scenario}: DSDT devices:\n{out}");
        // The minimal kernel registers the command-line duplicates too
        // (they fail to probe, -EBUSY); Debian's cannot parse them.
        assert_eq!(
            from_cmdline,
            if dup { devs.len() } else { 0 },
            "{scenario}:\n{out}"
        );
        let blocks = value(&out, "blocks").unwrap_or("");
        assert_eq!(
            blocks.split_whitespace().count(),
            drives,
            "{scenario}: {out}"
        );
    }
}

#[test]
fn flushed_data_survives_killing_the_host() {
    let Some(o) = outcome() else { return };
    let out = o.output("durability");
    assert!(
        o.killed_at_marker,
        "the guest never synced:\n{out}\n{}",
        o.summary
    );
    let alloc = value(out, "l1-dur-allocated-kib").unwrap_or("");
    assert_eq!(
        alloc, "16384 16384 16384",
        "images not preallocated:\n{out}"
    );
    // Both I/O engines must keep the file (fdatasync; io_uring's fsync),
    // and the control, without FLUSH, must lose it, or the kill did not
    // really cut L1's power.
    let mut wrong = Vec::new();
    for (id, want) in [
        ("wb", format!("durable-wb-{}\n", o.nonce)),
        ("async", format!("durable-async-{}\n", o.nonce)),
        ("unsafe", String::new()),
    ] {
        let got = o.durable.get(id).expect("scratch disk read");
        if got.as_deref() != Ok(want.as_str()) {
            wrong.push(format!("{id}: read back {got:?}, expected {want:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "after the host died (flushed drives must keep the file, the Unsafe control must not):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn read_only_drive_refuses_writes() {
    let Some(o) = outcome() else { return };
    for scenario in ["micro-devices", "debian-devices"] {
        let out = o.run(scenario, "lv-ro");
        assert_eq!(value(&out, "ro-getro"), Some("1"), "{scenario}:\n{out}");
        assert_eq!(
            value(&out, "ro-dd"),
            Some("write failed"),
            "{scenario}:\n{out}"
        );
        let mount = value(&out, "ro-mount").unwrap_or("");
        assert!(
            mount == "refused" || mount.starts_with("mounted ro,"),
            "{scenario}: {mount}"
        );
        assert_ne!(
            value(&out, "ro-create"),
            Some("succeeded"),
            "{scenario}:\n{out}"
        );
        assert_eq!(
            value(&out, "ro-read"),
            Some(format!("ro-content-{}", o.nonce).as_str()),
            "{out}"
        );
        let l1 = o.output(scenario);
        let before = value(l1, "l1-ro-md5-before");
        assert!(before.is_some_and(|m| m.len() == 32), "{l1}");
        assert_eq!(
            before,
            value(l1, "l1-ro-md5-after"),
            "{scenario}: the read-only image changed"
        );
    }
}

#[test]
fn fstrim_shrinks_sparse_image() {
    let Some(o) = outcome() else { return };
    let out = o.output("fstrim");
    let g = o.guest("fstrim");
    for run in ["lv-trim-write", "lv-trim"] {
        assert_eq!(g.run(run).and_then(|r| r.rc), Some(0), "{run}:\n{out}");
    }
    for vm in ["write.json", "trim.json"] {
        let key = format!("l1-exit-{vm}");
        assert_eq!(value(out, &key), Some("0"), "ember's exit code:\n{out}");
    }
    // "/mnt/t: N bytes trimmed": at least the deleted 48 MiB.
    let fstrim = value(out, "trim-fstrim").unwrap_or("");
    let bytes: u64 = fstrim
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(bytes >= 48 << 20, "fstrim -v said {fstrim:?}:\n{out}");
    let initial = number(out, "l1-trim-du-initial");
    let written = number(out, "l1-trim-du-written");
    let trimmed = number(out, "l1-trim-du-trimmed");
    eprintln!("fstrim: du -k of the backing file: initial {initial}, written {written}, trimmed {trimmed}");
    assert!(
        written >= initial + 45 * 1024,
        "48 MiB written but du went {initial} -> {written}:\n{out}"
    );
    assert!(
        trimmed + 45 * 1024 <= written,
        "fstrim freed too little: {written} -> {trimmed}:\n{out}"
    );
}

/// What a connecting echo tool prints after a clean exchange of `n` lines.
fn echoed_n(first: String, n: u32) -> Vec<String> {
    vec![
        format!("first reply: {first}"),
        format!("replies: {n} of {n}, identical: yes"),
    ]
}

fn echoed(first: String) -> Vec<String> {
    echoed_n(first, LINES)
}

/// What an echo server prints once its peer has closed.
const SERVED: &str = "served: connection closed by peer";

/// The `key: ...` lines of `text` must be exactly `want`.
fn expect_lines<S: AsRef<str>>(text: &str, key: &str, want: &[S], scenario: &str) {
    let got: Vec<&str> = values(text, key).collect();
    let want: Vec<&str> = want.iter().map(AsRef::as_ref).collect();
    assert_eq!(got, want, "{scenario}: {key} lines in:\n{text}");
}

#[test]
fn tcp_over_tap_both_ways() {
    let Some(o) = outcome() else { return };
    let n = &o.nonce;
    for scenario in ["micro-devices", "debian-devices"] {
        let out = o.run(scenario, "lv-net");
        let l1 = o.output(scenario);
        assert_eq!(value(&out, "net-mac"), Some(GUEST_MAC), "{out}");
        // Guest to L1 (the guest half-closes after its last line).
        expect_lines(&out, "net-connect-rc", &["0"], scenario);
        expect_lines(
            &out,
            "net-connect",
            &echoed(format!("l1-echo: g2l-{n}-{PAD}")),
            scenario,
        );
        expect_lines(l1, "l1-tcp-serve", &[SERVED], scenario);
        // L1 to the guest.
        expect_lines(l1, "l1-tcp-connect-rc", &["0"], scenario);
        expect_lines(
            l1,
            "l1-tcp-connect",
            &echoed(format!("l2-echo: l2g-{n}-{PAD}")),
            scenario,
        );
        expect_lines(
            &out,
            "net-listen",
            &["listening on tcp port 5003", SERVED],
            scenario,
        );
    }
}

#[test]
fn vsock_both_directions() {
    let Some(o) = outcome() else { return };
    let n = &o.nonce;
    for scenario in ["micro-devices", "debian-devices"] {
        let out = o.run(scenario, "lv-vsock");
        let l1 = o.output(scenario);
        // Guest to host: CID 2 port 5001 reaches L1's <uds_path>_5001;
        // the guest half-closes after its last line.
        expect_lines(&out, "vsock-connect-rc", &["0"], scenario);
        expect_lines(
            &out,
            "vsock-connect",
            &echoed(format!("host-echo: g2h-{n}-{PAD}")),
            scenario,
        );
        expect_lines(l1, "l1-vsock-serve", &[SERVED], scenario);
        // Host to guest: CONNECT 5002 on <uds_path>, "OK <port>", then data.
        expect_lines(l1, "l1-vsock-connect-rc", &["0"], scenario);
        let lines: Vec<&str> = values(l1, "l1-vsock-connect").collect();
        let port = lines.first().and_then(|l| l.strip_prefix("handshake: OK "));
        assert!(
            port.is_some_and(|p| p.parse::<u32>().is_ok()),
            "{scenario}: handshake:\n{l1}"
        );
        let want = echoed(format!("guest-echo: h2g-{n}-{PAD}"));
        assert_eq!(
            lines[1..],
            want[..],
            "{scenario}: host-to-guest exchange:\n{l1}"
        );
        expect_lines(
            &out,
            "vsock-listen",
            &["listening on vsock port 5002", SERVED],
            scenario,
        );
    }
}

#[test]
fn hwrng_gives_random_bytes() {
    let Some(o) = outcome() else { return };
    for scenario in ["micro-devices", "debian-devices"] {
        let out = o.run(scenario, "lv-rng");
        assert!(
            value(&out, "rng-current").is_some_and(|c| c.starts_with("virtio_rng")),
            "{out}"
        );
        assert_eq!(number(&out, "rng-bytes"), 4096, "{out}");
        // 4096 random bytes take nearly all 256 values; a constant or
        // short-period source would not.
        assert!(number(&out, "rng-distinct") >= 200, "{out}");
        assert_eq!(value(&out, "rng-reads-differ"), Some("yes"), "{out}");
    }
}

#[test]
fn block_writes_reach_the_backing_file() {
    let Some(o) = outcome() else { return };
    for scenario in ["micro-devices", "debian-devices"] {
        let out = o.run(scenario, "lv-blkrw");
        let md5 = value(&out, "blkrw-md5").expect("md5");
        assert_eq!(
            value(&out, "blkrw-readback"),
            Some(md5),
            "{scenario}:\n{out}"
        );
        assert_eq!(
            value(o.output(scenario), "l1-data-md5"),
            Some(md5),
            "{scenario}: backing file differs"
        );
    }
}

#[test]
fn rate_limiter_caps_block_throughput() {
    let Some(o) = outcome() else { return };
    let out = o.run("micro-devices", "lv-rate");
    let unlimited = number(&out, "rate-unlimited-ms");
    let limited = number(&out, "rate-limited-ms");
    let rate = BUCKET * 1000 / REFILL_MS; // bytes per second
    let floor_ms = (RATE_MIB * 1024 * 1024 - BUCKET) * 1000 / rate;
    eprintln!(
        "rate limiter: {RATE_MIB} MiB unlimited in {unlimited} ms ({:.1} MiB/s), limited in {limited} ms ({:.2} MiB/s; cap {:.1} MiB/s, floor {floor_ms} ms)",
        RATE_MIB as f64 * 1000.0 / unlimited.max(1) as f64,
        RATE_MIB as f64 * 1000.0 / limited.max(1) as f64,
        rate as f64 / 1048576.0
    );
    // 10 ms clock steps and timer slack: allow 5% under the floor.
    assert!(
        limited * 100 >= floor_ms * 95,
        "limited read too fast: {limited} ms < {floor_ms} ms"
    );
    assert!(
        limited >= 3 * unlimited,
        "limited {limited} ms vs unlimited {unlimited} ms"
    );
}

#[test]
fn devices_work_again_after_driver_rebind() {
    let Some(o) = outcome() else { return };
    let n = &o.nonce;
    // (scenario, devices rebound: all but the minimal kernel's root disk)
    for (scenario, rebound) in [("micro-devices", 7), ("debian-devices", 5)] {
        let out = o.run(scenario, "lv-rebind");
        let lines: Vec<&str> = values(&out, "rebind").collect();
        assert_eq!(lines.len(), rebound, "{scenario}: rebind:\n{out}");
        assert!(
            lines.iter().all(|l| !l.ends_with("FAILED")),
            "{scenario}:\n{out}"
        );
        expect_lines(
            &out,
            "again-net",
            &echoed_n(format!("l1-again: net-again-{n}"), 100),
            scenario,
        );
        let vsock = echoed_n(format!("host-again: vsock-again-{n}"), 100);
        expect_lines(&out, "again-vsock", &vsock, scenario);
        assert_eq!(
            value(&out, "again-rng-bytes"),
            Some("4096"),
            "{scenario}:\n{out}"
        );
        let blk: Vec<&str> = value(&out, "again-blk").unwrap_or("").split(' ').collect();
        assert!(
            blk.len() == 2 && blk[0] == blk[1],
            "{scenario}: data drive after rebind:\n{out}"
        );
    }
}
