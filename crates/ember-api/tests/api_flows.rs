//! Configure-and-boot flows over the real Unix socket against the real
//! server and a fake VMM backend: every endpoint's happy path and
//! Firecracker's before/after-boot rules, with exact statuses and faults.

mod common;

use common::Harness;
use ember_api::controller::{MISSING_KERNEL, NOT_SUPPORTED_POST_BOOT, NOT_SUPPORTED_PRE_BOOT};

#[test]
fn full_configure_boot_and_operate_flow() {
    let h = Harness::new("flow");
    let mut c = h.client();

    let info = c.request("GET", "/", None).expect(200).json();
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["id"], "fake-instance");
    assert_eq!(info["app_name"], "Ember");
    assert!(info["vmm_version"].is_string());
    let v = c.request("GET", "/version", None).expect(200).json();
    assert_eq!(v["firecracker_version"], "1.16.0");

    let m = c.request("GET", "/machine-config", None).expect(200).json();
    assert_eq!(m["vcpu_count"], 1);
    assert_eq!(m["mem_size_mib"], 128);
    assert_eq!(m["smt"], false);
    assert_eq!(m["huge_pages"], "None");

    c.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false}"#),
    )
    .expect(204);
    c.request("PATCH", "/machine-config", Some(r#"{"mem_size_mib": 512}"#))
        .expect(204);
    let m = c.request("GET", "/machine-config", None).expect(200).json();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(2), Some(512))
    );

    let kernel = h.path("vmlinux");
    let rootfs = h.path("rootfs.ext4");
    c.request(
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0 reboot=k panic=1"}}"#
        )),
    )
    .expect(204);
    c.request(
        "PUT",
        "/drives/rootfs",
        Some(&format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true,
                "is_read_only": false, "cache_type": "Unsafe", "io_engine": "Sync"}}"#
        )),
    )
    .expect(204);
    c.request(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}"#),
    )
    .expect(204);
    c.request(
        "PUT",
        "/vsock",
        Some(&format!(
            r#"{{"guest_cid": 3, "uds_path": "{}"}}"#,
            h.path("v.sock")
        )),
    )
    .expect(204);
    c.request("PUT", "/entropy", Some("{}")).expect(204);
    c.request(
        "PUT",
        "/serial",
        Some(&format!(
            r#"{{"serial_out_path": "{}"}}"#,
            h.path("console.log")
        )),
    )
    .expect(204);
    c.request(
        "PUT",
        "/logger",
        Some(&format!(
            r#"{{"log_path": "{}", "level": "debug", "show_level": true, "show_log_origin": true}}"#,
            h.path("ember.log")
        )),
    )
    .expect(204);
    let metrics_path = h.path("metrics.json");
    c.request(
        "PUT",
        "/metrics",
        Some(&format!(r#"{{"metrics_path": "{metrics_path}"}}"#)),
    )
    .expect(204);

    let cfg = c.request("GET", "/vm/config", None).expect(200).json();
    assert_eq!(cfg["boot-source"]["kernel_image_path"], kernel.as_str());
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 512);
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "tap0");
    assert_eq!(cfg["vsock"]["guest_cid"], 3);
    assert_eq!(cfg["entropy"], serde_json::json!({}));
    assert_eq!(cfg["logger"]["level"], "Debug");
    assert_eq!(cfg["metrics"]["metrics_path"], metrics_path.as_str());
    assert!(cfg["balloon"].is_null() && cfg["mmds-config"].is_null());
    assert_eq!(cfg["pmem"], serde_json::json!([]));
    // The exported configuration is a valid configuration file.
    ember_api::VmConfigFile::parse(&cfg.to_string()).unwrap();

    c.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    )
    .expect(204);
    assert_eq!(
        c.request("GET", "/", None).expect(200).json()["state"],
        "Running"
    );

    // Pre-boot-only operations are refused now.
    for (method, path, body) in [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
        ),
        ("PATCH", "/machine-config", r#"{"vcpu_count": 1}"#),
        ("PUT", "/boot-source", r#"{"kernel_image_path": "/x"}"#),
        (
            "PUT",
            "/drives/d2",
            r#"{"drive_id": "d2", "path_on_host": "/x", "is_root_device": false, "is_read_only": true}"#,
        ),
        (
            "PUT",
            "/network-interfaces/eth1",
            r#"{"iface_id": "eth1", "host_dev_name": "tap1"}"#,
        ),
        ("PUT", "/vsock", r#"{"guest_cid": 4, "uds_path": "/tmp/x"}"#),
        ("PUT", "/entropy", "{}"),
        ("PUT", "/serial", "{}"),
        ("PUT", "/logger", r#"{"level": "Info"}"#),
        ("PUT", "/metrics", r#"{"metrics_path": "/tmp/m"}"#),
        ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
    ] {
        let r = c.request(method, path, Some(body)).expect(400);
        assert_eq!(r.fault(), NOT_SUPPORTED_POST_BOOT, "{method} {path}");
    }

    // Post-boot operations.
    c.request(
        "PATCH",
        "/drives/rootfs",
        Some(&format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "{rootfs}",
                "rate_limiter": {{"bandwidth": {{"size": 1000000, "refill_time": 100}}}}}}"#
        )),
    )
    .expect(204);
    c.request(
        "PATCH",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}"#),
    )
    .expect(204);
    c.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#))
        .expect(204);
    assert_eq!(
        c.request("GET", "/", None).expect(200).json()["state"],
        "Paused"
    );
    c.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#))
        .expect(204);
    c.request("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
        .expect(204);
    assert_eq!(
        c.request("GET", "/", None).expect(200).json()["state"],
        "Running"
    );
    c.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    )
    .expect(204);
    c.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    )
    .expect(204);

    let cfg = c.request("GET", "/vm/config", None).expect(200).json();
    assert_eq!(
        cfg["drives"][0]["rate_limiter"]["bandwidth"]["size"],
        1_000_000
    );
    assert_eq!(
        cfg["network-interfaces"][0]["rx_rate_limiter"]["ops"]["size"],
        100
    );

    let calls = h.backend.calls();
    assert_eq!(
        calls,
        [
            format!("start {kernel}"),
            "update_drive rootfs".to_string(),
            "update_network_interface eth0".to_string(),
            "pause".to_string(),
            "resume".to_string(),
            "ctrl_alt_del".to_string(),
            "flush_metrics".to_string(),
        ]
    );

    // FlushMetrics wrote a line with the API counters.
    let text = std::fs::read_to_string(&metrics_path).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(line["put_api_requests"]["drive_count"].as_u64().unwrap() >= 2);
    assert!(
        line["put_api_requests"]["machine_cfg_fails"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(line["patch_api_requests"]["vm_count"].as_u64().unwrap() >= 3);
    assert!(
        line["get_api_requests"]["instance_info_count"]
            .as_u64()
            .unwrap()
            >= 3
    );
    assert!(line["utc_timestamp_ms"].as_u64().is_some());
}

#[test]
fn post_boot_operations_are_refused_before_boot() {
    let h = Harness::new("preboot");
    for (method, path, body) in [
        ("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        (
            "PATCH",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/x"}"#,
        ),
        (
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0"}"#,
        ),
        ("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
        ("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#),
    ] {
        let r = h.call(method, path, Some(body)).expect(400);
        assert_eq!(r.fault(), NOT_SUPPORTED_PRE_BOOT, "{method} {path}");
    }
    assert!(h.backend.calls().is_empty());
}

#[test]
fn instance_start_needs_a_kernel_and_survives_backend_failure() {
    let h = Harness::new("start");
    let r = h
        .call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        )
        .expect(400);
    assert_eq!(r.fault(), MISSING_KERNEL);
    h.call(
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path": "{}"}}"#,
            h.path("vmlinux")
        )),
    )
    .expect(204);
    h.backend.fail("start", "KVM_CREATE_VM failed: boom");
    h.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    )
    .expect_fault(400, "Start microvm error: KVM_CREATE_VM failed: boom");
    assert_eq!(h.call("GET", "/", None).json()["state"], "Not started");
    // Still configurable after the failed start.
    h.call("PATCH", "/machine-config", Some(r#"{"vcpu_count": 2}"#))
        .expect(204);
}

#[test]
fn backend_errors_become_400s_with_their_message() {
    let h = Harness::new("backend-err");
    h.backend
        .fail("check network_interface", "cannot open tap0: busy");
    h.call(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#),
    )
    .expect_fault(400, "Network config error: cannot open tap0: busy");
    h.boot();
    h.backend.fail("pause", "vCPU 0 did not stop");
    h.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#))
        .expect_fault(400, "vCPU 0 did not stop");
    assert_eq!(h.call("GET", "/", None).json()["state"], "Running");
    h.backend.fail("update_drive", "device busy");
    h.call("PATCH", "/drives/rootfs", Some(r#"{"drive_id": "rootfs"}"#))
        .expect_fault(400, "Drive config error: device busy");
    h.call("PATCH", "/drives/other", Some(r#"{"drive_id": "other"}"#))
        .expect_fault(400, "no drive with id \"other\"");
}

#[test]
fn resource_rules_over_the_socket() {
    let h = Harness::new("rules");
    let rootfs = h.path("rootfs.ext4");
    let drive = |id: &str, root: bool| {
        format!(
            r#"{{"drive_id": "{id}", "path_on_host": "{rootfs}", "is_root_device": {root}, "is_read_only": true}}"#
        )
    };
    h.call("PUT", "/drives/a", Some(&drive("a", true)))
        .expect(204);
    h.call("PUT", "/drives/b", Some(&drive("b", true)))
        .expect_fault(400, "A root block device already exists!");
    h.call(
        "PUT",
        "/drives/c",
        Some(r#"{"drive_id": "c", "path_on_host": "/nonexistent/disk", "is_root_device": false, "is_read_only": true}"#),
    )
    .expect_fault(400, "Invalid block device path");
    h.call(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#),
    )
    .expect_fault(400, "Boot source error: the kernel file");
    h.call(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 0, "mem_size_mib": 128}"#),
    )
    .expect_fault(400, "Machine config error: vcpu_count");
    h.call(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}"#),
    )
    .expect_fault(400, "smt");
    h.call(
        "PUT",
        "/vsock",
        Some(r#"{"guest_cid": 2, "uds_path": "/tmp/v"}"#),
    )
    .expect_fault(400, "Vsock config error: guest_cid");
    h.call(
        "PUT",
        "/serial",
        Some(r#"{"rate_limiter": {"size": 1, "refill_time": 1}}"#),
    )
    .expect_fault(400, "rate_limiter is not supported");
    h.call(
        "PUT",
        "/logger",
        Some(r#"{"log_path": "/nonexistent/dir/log"}"#),
    )
    .expect_fault(400, "Logger error");
    h.call("PUT", "/logger", Some(r#"{"level": "Loud"}"#))
        .expect_fault(400, "unknown log level");
    h.call("PUT", "/logger", Some(r#"{"level": "WARNING"}"#))
        .expect(204);
    let m = format!(r#"{{"metrics_path": "{}"}}"#, h.path("m.json"));
    h.call("PUT", "/metrics", Some(&m)).expect(204);
    h.call("PUT", "/metrics", Some(&m))
        .expect_fault(400, "Reinitialization of metrics not allowed.");
    h.call(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz:00:00:00:00:00"}"#),
    )
    .expect_fault(400, "invalid MAC address");
}

#[test]
fn missing_features_answer_400_naming_them() {
    let h = Harness::new("missing");
    for (method, path, body, needle) in [
        ("GET", "/balloon", None, "balloon"),
        (
            "PUT",
            "/balloon",
            Some(r#"{"amount_mib": 1, "deflate_on_oom": true}"#),
            "balloon",
        ),
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#), "balloon"),
        ("GET", "/balloon/statistics", None, "balloon"),
        (
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 1}"#),
            "balloon",
        ),
        ("PATCH", "/balloon/hinting/start", Some("{}"), "balloon"),
        ("GET", "/balloon/hinting/status", None, "balloon"),
        ("PATCH", "/balloon/hinting/stop", None, "balloon"),
        ("GET", "/mmds", None, "MMDS"),
        ("PUT", "/mmds", Some("{}"), "MMDS"),
        ("PATCH", "/mmds", Some("{}"), "MMDS"),
        (
            "PUT",
            "/mmds/config",
            Some(r#"{"network_interfaces": []}"#),
            "MMDS",
        ),
        ("PUT", "/cpu-config", Some("{}"), "CPU templates"),
        (
            "PUT",
            "/pmem/p0",
            Some(r#"{"id": "p0", "path_on_host": "/p"}"#),
            "Pmem",
        ),
        ("PATCH", "/pmem/p0", Some(r#"{"id": "p0"}"#), "Pmem"),
        ("GET", "/hotplug/memory", None, "hotplug"),
        (
            "PUT",
            "/hotplug/memory",
            Some(r#"{"total_size_mib": 1024}"#),
            "hotplug",
        ),
        (
            "PATCH",
            "/hotplug/memory",
            Some(r#"{"requested_size_mib": 512}"#),
            "hotplug",
        ),
    ] {
        let r = h.call(method, path, body).expect(400);
        assert!(r.fault().contains(needle), "{method} {path}: {}", r.fault());
        assert!(
            r.fault().contains("not supported by Ember"),
            "{method} {path}"
        );
    }
    // Same after boot.
    h.boot();
    h.call("PUT", "/mmds/config", Some("{}"))
        .expect_fault(400, "MMDS");
}

#[test]
fn bad_bodies_get_precise_400s() {
    let h = Harness::new("bodies");
    let deser = "An error occurred when deserializing the json body of a request: ";
    for (method, path, body, needle) in [
        ("PUT", "/machine-config", "{not json", deser),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": "2", "mem_size_mib": 128}"#,
            "invalid type",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2}"#,
            "missing field `mem_size_mib`",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 128, "gpu": 1}"#,
            "unknown field `gpu`",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 256, "mem_size_mib": 128}"#,
            deser,
        ),
        ("PUT", "/machine-config", "[]", deser),
        ("PUT", "/machine-config", "null", deser),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": 7}"#,
            "invalid type",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "Reboot"}"#,
            "unknown variant `Reboot`",
        ),
        ("PUT", "/actions", r#"{}"#, "missing field `action_type`"),
        ("PATCH", "/vm", r#"{"state": "Running"}"#, "unknown variant"),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid": 3, "uds_path": "/v", "extra": true}"#,
            "unknown field",
        ),
        (
            "PUT",
            "/entropy",
            r#"{"rate_limiter": {"ops": {"size": 1}}}"#,
            "missing field `refill_time`",
        ),
        ("PUT", "/drives/a", "\u{0}\u{1}", deser),
    ] {
        let r = h.call(method, path, Some(body)).expect(400);
        let f = r.fault();
        assert!(f.starts_with(deser), "{method} {path}: {f}");
        assert!(f.contains(needle), "{method} {path}: {f}");
    }
    // ids
    h.call("PUT", "/drives/a", Some(r#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false, "is_read_only": true}"#))
        .expect_fault(400, "The id from the path does not match the id from the body!");
    h.call(
        "PUT",
        "/network-interfaces/x",
        Some(r#"{"iface_id": "y", "host_dev_name": "tap0"}"#),
    )
    .expect_fault(
        400,
        "The id from the path does not match the id from the body!",
    );
    h.call("PUT", "/drives/bad-id", Some("{}")).expect_fault(
        400,
        "API Resource IDs can only contain alphanumeric characters and underscores.",
    );
    h.call("PUT", "/drives/", Some("{}"))
        .expect_fault(400, "The ID cannot be empty.");
    // paths and methods
    h.call("GET", "/nothing/here", None).expect_fault(
        400,
        "Invalid request method and/or path: GET /nothing/here.",
    );
    h.call("PATCH", "/boot-source", Some("{}")).expect_fault(
        400,
        "Invalid request method and/or path: PATCH /boot-source.",
    );
    h.call("GET", "/", Some("{}"))
        .expect_fault(400, "GET request cannot have a body.");
    h.call("PUT", "/actions", Some(""))
        .expect_fault(400, "Empty PUT request.");
    h.call("PATCH", "/machine-config", Some("{}"))
        .expect_fault(400, "Empty PATCH request.");
    // The server still answers normally.
    h.call("GET", "/", None).expect(200);
    assert!(h.backend.calls().is_empty());
}
