//! The real `ember` binary driven over its API socket, with tiny guests on
//! this machine's /dev/kvm.

mod common;

use common::api::ApiVm;
use common::{have_kvm, image, Scratch};

fn boot_source(kernel: &str) -> String {
    format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0"}}"#)
}

#[test]
fn configure_and_boot_over_the_api() {
    if !have_kvm() {
        return;
    }
    let mut vm = ApiVm::spawn("boot", &[]);
    let (code, body) = vm.request("GET", "/", None);
    assert_eq!(code, 200);
    assert!(
        body.contains(r#""state":"Not started""#) && body.contains(r#""id":"boot""#),
        "{body}"
    );
    let (code, body) = vm.request("GET", "/version", None);
    assert_eq!((code, body.contains("firecracker_version")), (200, true));
    assert_eq!(
        vm.put("/boot-source", &boot_source(&image("bootinfo.elf")))
            .0,
        204
    );
    assert_eq!(
        vm.put(
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64}"#
        )
        .0,
        204
    );
    let (code, cfg) = vm.request("GET", "/vm/config", None);
    assert_eq!(code, 200);
    assert!(
        cfg.contains("bootinfo.elf") && cfg.contains(r#""mem_size_mib":64"#),
        "{cfg}"
    );
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    assert_eq!(vm.wait_exit(), 0, "ACPI power-off: {}", vm.stderr());
    let console = vm.console();
    assert!(
        console.contains("cmdline=console=ttyS0 pci=off"),
        "{console}"
    );
    assert!(
        console.contains("e820=0000000000100000 0000000003f00000"),
        "64 MiB: {console}"
    );
    assert!(!vm.sock.exists(), "the socket is removed at exit");
}

#[test]
fn pause_and_resume_over_the_api() {
    if !have_kvm() {
        return;
    }
    let vm = ApiVm::spawn("pause", &[]);
    assert_eq!(
        vm.put("/boot-source", &boot_source(&image("ticker.elf"))).0,
        204
    );
    assert_eq!(
        vm.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        400,
        "no pause before boot"
    );
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    let ticks = |c: &str| {
        c.lines()
            .filter(|l| l.starts_with("tick ") && l.len() == 21)
            .count()
    };
    vm.wait_console("two ticks", |c| ticks(c) >= 2);
    assert_eq!(
        vm.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    assert!(vm
        .request("GET", "/", None)
        .1
        .contains(r#""state":"Paused""#));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let paused_at = ticks(&vm.console());
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(
        ticks(&vm.console()),
        paused_at,
        "the guest ran while paused"
    );
    assert_eq!(
        vm.request("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
            .0,
        204
    );
    assert!(vm
        .request("GET", "/", None)
        .1
        .contains(r#""state":"Running""#));
    vm.wait_console("a tick after resuming", |c| ticks(c) > paused_at);
}

#[test]
fn ctrl_alt_del_reaches_the_guest_keyboard() {
    if !have_kvm() {
        return;
    }
    let mut vm = ApiVm::spawn("cad", &[]);
    assert_eq!(
        vm.put("/boot-source", &boot_source(&image("kbd.elf"))).0,
        204
    );
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "SendCtrlAltDel"}"#).0,
        400,
        "not before boot"
    );
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    vm.wait_console("the guest polling its keyboard", |c| {
        c.contains("kbd: waiting")
    });
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "SendCtrlAltDel"}"#).0,
        204
    );
    assert_eq!(vm.wait_exit(), 0);
    // Ctrl, Alt, Del pressed then released, in scan code set 1 (translated).
    assert!(
        vm.console().contains("1d 38 e0 53 e0 d3 b8 9d"),
        "{}",
        vm.console()
    );
}

#[test]
fn a_failed_start_leaves_the_vm_configurable() {
    if !have_kvm() {
        return;
    }
    let mut vm = ApiVm::spawn("retry", &[]);
    let junk = Scratch::new("api-junk-kernel", b"not a kernel");
    assert_eq!(vm.put("/boot-source", &boot_source(junk.path())).0, 204);
    let (code, body) = vm.put("/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(code, 400);
    assert!(
        body.contains("fault_message") && body.contains("neither an ELF vmlinux nor a bzImage"),
        "{body}"
    );
    assert!(vm.request("GET", "/", None).1.contains("Not started"));
    assert_eq!(
        vm.put("/boot-source", &boot_source(&image("hello.elf"))).0,
        204
    );
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    assert_eq!(vm.wait_exit(), 0);
    assert!(vm.console().contains("Hello from a tiny guest"));
}

#[test]
fn pre_boot_resources_are_frozen_after_boot() {
    if !have_kvm() {
        return;
    }
    let vm = ApiVm::spawn("frozen", &[]);
    assert_eq!(
        vm.put("/boot-source", &boot_source(&image("ticker.elf"))).0,
        204
    );
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    let (code, body) = vm.put("/boot-source", &boot_source(&image("hello.elf")));
    assert_eq!(code, 400);
    assert!(
        body.contains("not supported after starting the microVM"),
        "{body}"
    );
    assert_eq!(
        vm.put(
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32}"#
        )
        .0,
        400
    );
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        400
    );
}

#[test]
fn logger_and_metrics_write_their_files() {
    if !have_kvm() {
        return;
    }
    let log = Scratch::new("api.log", b"");
    let metrics = Scratch::new("api.metrics", b"");
    let vm = ApiVm::spawn("telemetry", &[]);
    assert_eq!(
        vm.put(
            "/logger",
            &format!(r#"{{"log_path": "{}", "level": "Info"}}"#, log.path())
        )
        .0,
        204
    );
    assert_eq!(
        vm.put(
            "/metrics",
            &format!(r#"{{"metrics_path": "{}"}}"#, metrics.path())
        )
        .0,
        204
    );
    assert_eq!(
        vm.put("/boot-source", &boot_source(&image("ticker.elf"))).0,
        204
    );
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    vm.wait_console("a tick", |c| c.contains("tick 0000000000000001"));
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "FlushMetrics"}"#).0,
        204
    );
    let m = std::fs::read_to_string(&metrics.0).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(m.lines().last().expect("a metrics line")).unwrap();
    assert!(line["uart"]["write_count"].as_u64().unwrap() > 0, "{line}");
    assert!(line["put_api_requests"].is_object(), "{line}");
}

#[test]
fn drives_are_patched_after_boot() {
    if !have_kvm() {
        return;
    }
    let a = Scratch::new("patch-a.img", &vec![0u8; 1 << 20]);
    let b = Scratch::new("patch-b.img", &vec![0u8; 2 << 20]);
    let vm = ApiVm::spawn("patch", &[]);
    assert_eq!(
        vm.put("/boot-source", &boot_source(&image("ticker.elf"))).0,
        204
    );
    let drive = format!(
        r#"{{"drive_id": "d", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
        a.path()
    );
    assert_eq!(vm.put("/drives/d", &drive).0, 204);
    let patch = format!(r#"{{"drive_id": "d", "path_on_host": "{}"}}"#, b.path());
    assert_eq!(
        vm.request("PATCH", "/drives/d", Some(&patch)).0,
        400,
        "not before boot"
    );
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    assert_eq!(
        vm.request("PATCH", "/drives/d", Some(&patch)).0,
        204,
        "{}",
        vm.stderr()
    );
    let limit = r#"{"drive_id": "d", "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 100}}}"#;
    assert_eq!(vm.request("PATCH", "/drives/d", Some(limit)).0, 204);
    let (code, body) = vm.request(
        "PATCH",
        "/drives/nope",
        Some(r#"{"drive_id": "nope", "path_on_host": "/x"}"#),
    );
    assert_eq!(code, 400);
    assert!(body.contains("fault_message"), "{body}");
    let (code, body) = vm.request(
        "PATCH",
        "/drives/d",
        Some(r#"{"drive_id": "d", "path_on_host": "/nonexistent.img"}"#),
    );
    assert_eq!(code, 400, "a missing file is refused: {body}");
}

#[test]
fn snapshot_endpoints_follow_firecracker_rules() {
    if !have_kvm() {
        return;
    }
    let vm = ApiVm::spawn("snap", &[]);
    // A load that cannot succeed (no such files) answers 400 with
    // Firecracker's prefix and leaves the process fresh.
    let (code, body) = vm.put(
        "/snapshot/load",
        r#"{"snapshot_path": "/nonexistent/vm.snap", "mem_file_path": "/nonexistent/vm.mem"}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("Load snapshot error: "), "{body}");
    assert!(vm
        .request("GET", "/", None)
        .1
        .contains(r#""state":"Not started""#));
    let (code, body) = vm.put(
        "/snapshot/create",
        r#"{"snapshot_path": "/tmp/x.snap", "mem_file_path": "/tmp/x.mem"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        body.contains("not supported before starting the microVM"),
        "{body}"
    );
    // Once configured and booted: no load, and no snapshot while running.
    assert_eq!(
        vm.put("/boot-source", &boot_source(&image("ticker.elf"))).0,
        204
    );
    let (code, body) = vm.put(
        "/snapshot/load",
        r#"{"snapshot_path": "/tmp/x.snap", "mem_file_path": "/tmp/x.mem"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        body.contains(
            "Loading a microVM snapshot not allowed after configuring boot-specific resources."
        ),
        "{body}"
    );
    assert_eq!(
        vm.put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    let (code, body) = vm.put(
        "/snapshot/create",
        r#"{"snapshot_path": "/tmp/x.snap", "mem_file_path": "/tmp/x.mem"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        body.contains("Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"),
        "{body}"
    );
    assert_eq!(
        vm.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    let (code, body) = vm.put(
        "/snapshot/create",
        r#"{"snapshot_path": "/tmp/x.snap", "mem_file_path": "/tmp/x.mem", "snapshot_type": "Diff"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        body.contains(
            "Create snapshot error: snapshot_type Diff (diff snapshots) is not supported by Ember yet"
        ),
        "{body}"
    );
}
