//! Snapshots through the real `ember` binary and Firecracker's API, with
//! tiny guests on this machine's /dev/kvm: a counting guest is paused,
//! snapshotted, killed, and restored in a new process, where it counts on
//! from where it was without booting again; ten restores of one snapshot
//! run at once, each with its own vsock socket; hostile files get a 400
//! (API) or exit 1 (command line), and the process can still load a good
//! snapshot afterwards; a fixture written by format version 1 still loads.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::{have_kvm, image};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ember-snap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The values of the complete `count <hex>` lines of a console.
fn counts(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("count "))
        .filter(|h| h.len() == 16)
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .collect()
}

const STEP: u64 = 0x4000;

/// Boots snapcount.elf over the API (with `extra` configuration calls),
/// waits for three counts, pauses it, snapshots it into `d`; returns the
/// process (still alive, paused) and the counts it printed.
fn snapshot_snapcount(d: &Path, name: &str, extra: &[(&str, String)]) -> (ApiVm, Vec<u64>) {
    let vm = ApiVm::spawn(name, &[]);
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
        image("snapcount.elf")
    );
    assert_eq!(vm.put("/boot-source", &boot).0, 204);
    assert_eq!(
        vm.put(
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#
        )
        .0,
        204
    );
    for (path, body) in extra {
        let (code, msg) = vm.put(path, body);
        assert_eq!(code, 204, "{path}: {msg}");
    }
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    vm.wait_console("three counts", |c| counts(c).len() >= 3);
    let body = format!(
        r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        d.join("state").display(),
        d.join("mem").display()
    );
    let (code, msg) = vm.put("/snapshot/create", &body);
    assert_eq!(code, 400, "a running VM must not be snapshotted");
    assert!(msg.contains("unavailable while running"), "{msg}");
    assert_eq!(
        vm.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    let (code, msg) = vm.put("/snapshot/create", &body);
    assert_eq!(code, 204, "{msg}");
    let before = counts(&vm.console());
    assert!(vm.console().contains("snapcount: boot"));
    (vm, before)
}

fn load_body(d: &Path, resume: bool, extra: &str) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": {resume}{extra}}}"#,
        d.join("state").display(),
        d.join("mem").display()
    )
}

/// Checks that `after` (a restored console) goes on from `before`.
fn assert_counts_on(before: &[u64], after: &str) {
    assert!(
        !after.contains("snapcount: boot"),
        "the restored guest booted again: {after}"
    );
    let last = *before.last().expect("counts before the snapshot");
    let next = counts(after);
    let first = *next.first().expect("counts after the restore");
    // The snapshot may have cut a line short; the restored guest finishes
    // it, so its first complete line is the next or the one after.
    assert!(
        first == last + STEP || first == last + 2 * STEP,
        "before: ...{last:#x}; after: {next:x?}"
    );
    assert!(next.windows(2).all(|w| w[1] == w[0] + STEP), "{next:x?}");
}

#[test]
fn a_snapshotted_guest_counts_on_in_a_new_process() {
    if !have_kvm() {
        return;
    }
    let d = dir("new-process");
    let (old, before) = snapshot_snapcount(&d, "snap-a", &[]);
    drop(old); // killed
    let vm = ApiVm::spawn("snap-b", &[]);
    let (code, msg) = vm.put("/snapshot/load", &load_body(&d, true, ""));
    assert_eq!(code, 204, "{msg}; stderr: {}", vm.stderr());
    let (_, info) = vm.request("GET", "/", None);
    assert!(info.contains(r#""state":"Running""#), "{info}");
    vm.wait_console("two counts after the restore", |c| counts(c).len() >= 2);
    assert_counts_on(&before, &vm.console());
    let (_, cfg) = vm.request("GET", "/vm/config", None);
    assert!(
        cfg.contains(r#""vcpu_count":1"#) && cfg.contains(r#""mem_size_mib":128"#),
        "{cfg}"
    );
    // Loaded means started: no second load, no InstanceStart.
    assert_eq!(vm.put("/snapshot/load", &load_body(&d, true, "")).0, 400);
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        400
    );
}

#[test]
fn a_paused_restore_waits_for_resume_and_the_command_line_restores_too() {
    if !have_kvm() {
        return;
    }
    let d = dir("paused");
    let (old, before) = snapshot_snapcount(&d, "snap-p", &[]);
    drop(old);
    let vm = ApiVm::spawn("snap-q", &[]);
    assert_eq!(vm.put("/snapshot/load", &load_body(&d, false, "")).0, 204);
    assert!(vm
        .request("GET", "/", None)
        .1
        .contains(r#""state":"Paused""#));
    std::thread::sleep(Duration::from_millis(500));
    assert!(counts(&vm.console()).is_empty(), "ran while paused");
    assert_eq!(
        vm.request("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
            .0,
        204
    );
    vm.wait_console("counts after resuming", |c| counts(c).len() >= 2);
    assert_counts_on(&before, &vm.console());
    drop(vm);

    // The same restore from the command line, without the API.
    let out = d.join("cli-console");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("--restore")
        .arg(d.join("state"))
        .arg("--mem-file")
        .arg(d.join("mem"))
        .arg("--console-out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = std::fs::read_to_string(&out).unwrap_or_default();
        if counts(&c).len() >= 2 {
            assert_counts_on(&before, &c);
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "ember --restore exited"
        );
        assert!(Instant::now() < deadline, "no counts from ember --restore");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn ten_restores_of_one_snapshot_run_at_once_each_with_its_own_vsock() {
    if !have_kvm() {
        return;
    }
    let d = dir("ten");
    let vsock = format!(
        r#"{{"guest_cid": 3, "uds_path": "{}"}}"#,
        d.join("origin.vsock").display()
    );
    let (old, before) = snapshot_snapcount(&d, "snap-ten", &[("/vsock", vsock)]);
    drop(old);
    let _ = std::fs::remove_file(d.join("origin.vsock"));
    let vms: Vec<(ApiVm, PathBuf)> = (0..10)
        .map(|i| {
            let vm = ApiVm::spawn(&format!("snap-ten-{i}"), &[]);
            let uds = d.join(format!("clone-{i}.vsock"));
            let extra = format!(r#", "vsock_override": {{"uds_path": "{}"}}"#, uds.display());
            let (code, msg) = vm.put("/snapshot/load", &load_body(&d, true, &extra));
            assert_eq!(code, 204, "clone {i}: {msg}");
            (vm, uds)
        })
        .collect();
    for (i, (vm, uds)) in vms.iter().enumerate() {
        vm.wait_console(&format!("clone {i} counting"), |c| counts(c).len() >= 2);
        assert_counts_on(&before, &vm.console());
        assert!(
            uds.exists(),
            "clone {i} has no vsock socket at {}",
            uds.display()
        );
        let (_, info) = vm.request("GET", "/", None);
        assert!(info.contains(r#""state":"Running""#), "clone {i}: {info}");
    }
    assert!(
        !d.join("origin.vsock").exists(),
        "a clone took the original socket"
    );
}

#[test]
fn hostile_files_get_400_and_the_process_can_still_load() {
    if !have_kvm() {
        return;
    }
    let d = dir("hostile");
    let (old, _) = snapshot_snapcount(&d, "snap-h", &[]);
    drop(old);
    let good = std::fs::read(d.join("state")).unwrap();
    let bad = dir("hostile-bad");
    std::fs::copy(d.join("mem"), bad.join("mem")).unwrap();
    let vm = ApiVm::spawn("snap-h2", &[]);
    for (what, bytes, want) in [
        ("truncated", good[..good.len() / 3].to_vec(), "truncated"),
        (
            "bit-flipped",
            {
                let mut b = good.clone();
                let i = b.len() / 2;
                b[i] ^= 4;
                b
            },
            "corrupt",
        ),
        ("empty", Vec::new(), "truncated"),
    ] {
        std::fs::write(bad.join("state"), &bytes).unwrap();
        let (code, msg) = vm.put("/snapshot/load", &load_body(&bad, true, ""));
        assert_eq!(code, 400, "{what}");
        assert!(
            msg.contains("fault_message") && msg.contains(want),
            "{what}: {msg}"
        );
    }
    std::fs::write(bad.join("state"), &good).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(bad.join("mem"))
        .unwrap();
    f.set_len(64 << 20).unwrap();
    let (code, msg) = vm.put("/snapshot/load", &load_body(&bad, true, ""));
    assert_eq!(code, 400);
    assert!(
        msg.contains("truncated or belongs to another snapshot"),
        "{msg}"
    );
    let (code, msg) = vm.put(
        "/snapshot/load",
        &load_body(
            &d,
            true,
            r#", "network_overrides": [{"iface_id": "eth9", "host_dev_name": "tap9"}]"#,
        ),
    );
    assert_eq!(code, 400);
    assert!(msg.contains("eth9"), "{msg}");
    // Still a fresh process: the good snapshot loads.
    let (code, msg) = vm.put("/snapshot/load", &load_body(&d, true, ""));
    assert_eq!(code, 204, "{msg}");
    vm.wait_console("counting", |c| !counts(c).is_empty());

    // The command line: exit 1 with one clear line.
    std::fs::write(bad.join("state"), &good[..100]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("--restore")
        .arg(bad.join("state"))
        .arg("--mem-file")
        .arg(bad.join("mem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated"), "{err}");
}

/// The fixture in `tests/fixtures/snapshot-v1`: snapcount.elf, 1 vCPU,
/// 4 MiB, an entropy device and a vsock device, written by format
/// version 1. Never regenerate it: a new format version gets a fixture of
/// its own beside it (`write_fixture`, run with `--ignored`), and this one
/// must keep loading.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshot-v1")
}

#[test]
fn the_version_1_fixture_still_loads() {
    if !have_kvm() {
        return;
    }
    let f = fixture();
    let d = dir("fixture");
    let uds = d.join("fixture.vsock");
    let vm = ApiVm::spawn("snap-fixture", &[]);
    let extra = format!(r#", "vsock_override": {{"uds_path": "{}"}}"#, uds.display());
    let (code, msg) = vm.put("/snapshot/load", &load_body(&f, true, &extra));
    if code == 400 && msg.contains("this host cannot run the snapshot") {
        // The format loaded (the state decoded and checked); only this
        // host's CPU differs from the one that wrote the fixture.
        eprintln!("SKIPPED running the fixture's guest: {msg}");
        return;
    }
    assert_eq!(code, 204, "{msg}");
    vm.wait_console("counting", |c| counts(c).len() >= 2);
    let c = counts(&vm.console());
    assert!(c[0] > STEP, "the fixture's guest starts over: {c:x?}");
    assert!(!vm.console().contains("snapcount: boot"));
    assert!(uds.exists());
}

#[test]
#[ignore = "writes the format-version-1 fixture; run by hand, see fixture()"]
fn write_fixture() {
    let f = fixture();
    std::fs::create_dir_all(&f).unwrap();
    let vm = ApiVm::spawn("snap-write-fixture", &[]);
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
        image("snapcount.elf")
    );
    assert_eq!(vm.put("/boot-source", &boot).0, 204);
    assert_eq!(
        vm.put("/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 4}"#)
            .0,
        204
    );
    assert_eq!(vm.put("/entropy", "{}").0, 204);
    let uds = std::env::temp_dir().join("ember-fixture.vsock");
    let _ = std::fs::remove_file(&uds);
    let vsock = format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, uds.display());
    assert_eq!(vm.put("/vsock", &vsock).0, 204);
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    vm.wait_console("counts", |c| counts(c).len() >= 2);
    assert_eq!(
        vm.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        f.join("state").display(),
        f.join("mem").display()
    );
    let (code, msg) = vm.put("/snapshot/create", &body);
    assert_eq!(code, 204, "{msg}");
}
