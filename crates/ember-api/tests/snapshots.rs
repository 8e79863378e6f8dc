//! `PUT /snapshot/create` and `PUT /snapshot/load` over the real Unix
//! socket with the fake VMM: Firecracker's state rules and messages, the
//! body rules (exactly one memory source, unknown fields, arrays only where
//! the schema has them), what Ember does not support yet, and what the
//! microVM looks like after a load.

mod common;

use common::Harness;
use ember_api::controller::{
    LOAD_SNAPSHOT_NOT_ALLOWED, NOT_SUPPORTED_POST_BOOT, NOT_SUPPORTED_PRE_BOOT,
    SNAPSHOT_VM_NOT_PAUSED,
};
use ember_api::models::{MISSING_MEM_SOURCE, TOO_MANY_MEM_SOURCES};

const DESER: &str = "An error occurred when deserializing the json body of a request: ";

fn create_body(snapshot: &str) -> String {
    format!(r#"{{"mem_file_path": "/snap/mem", "snapshot_path": "{snapshot}"}}"#)
}

fn load_body(snapshot: &str, extra: &str) -> String {
    format!(
        r#"{{"snapshot_path": "{snapshot}", "mem_backend": {{"backend_type": "File", "backend_path": "/snap/mem"}}{extra}}}"#
    )
}

fn pause(h: &Harness) {
    h.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#))
        .expect(204);
}

fn state(h: &Harness) -> String {
    h.call("GET", "/", None).expect(200).json()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn snapshot_calls(h: &Harness) -> Vec<String> {
    h.backend
        .calls()
        .into_iter()
        .filter(|c| c.contains("snapshot"))
        .collect()
}

#[test]
fn create_needs_a_booted_paused_microvm() {
    let h = Harness::new("snap-create");
    let r = h
        .call("PUT", "/snapshot/create", Some(&create_body("/snap/a")))
        .expect(400);
    assert_eq!(r.fault(), NOT_SUPPORTED_PRE_BOOT);

    h.boot();
    let r = h
        .call("PUT", "/snapshot/create", Some(&create_body("/snap/a")))
        .expect(400);
    assert_eq!(r.fault(), SNAPSHOT_VM_NOT_PAUSED);
    assert!(snapshot_calls(&h).is_empty(), "{:?}", h.backend.calls());

    pause(&h);
    h.call("PUT", "/snapshot/create", Some(&create_body("/snap/a")))
        .expect(204);
    assert_eq!(snapshot_calls(&h), ["create_snapshot /snap/a"]);
    assert_eq!(state(&h), "Paused", "a snapshot leaves the microVM paused");

    // A VMM failure keeps Firecracker's prefix and the VMM's words.
    h.backend.fail("create_snapshot", "disk full");
    let r = h
        .call("PUT", "/snapshot/create", Some(&create_body("/snap/b")))
        .expect(400);
    assert_eq!(r.fault(), "Create snapshot error: disk full");
}

#[test]
fn diff_snapshots_are_named_as_unsupported() {
    let h = Harness::new("snap-diff");
    h.boot();
    pause(&h);
    let r = h
        .call(
            "PUT",
            "/snapshot/create",
            Some(r#"{"mem_file_path": "/m", "snapshot_path": "/s", "snapshot_type": "Diff"}"#),
        )
        .expect(400);
    assert_eq!(
        r.fault(),
        "Create snapshot error: snapshot_type Diff (diff snapshots) is not supported by Ember yet"
    );
    assert!(snapshot_calls(&h).is_empty());
    // "Full" spelled out is the default.
    h.call(
        "PUT",
        "/snapshot/create",
        Some(r#"{"mem_file_path": "/m", "snapshot_path": "/s", "snapshot_type": "Full"}"#),
    )
    .expect(204);
    assert_eq!(snapshot_calls(&h), ["create_snapshot /s"]);
}

#[test]
fn load_on_a_fresh_process_restores_a_paused_microvm() {
    let h = Harness::new("snap-load");
    assert_eq!(state(&h), "Not started");
    h.call("PUT", "/snapshot/load", Some(&load_body("/snap/a", "")))
        .expect(204);
    assert_eq!(snapshot_calls(&h), ["load_snapshot /snap/a"]);
    assert_eq!(state(&h), "Paused");

    // GET /vm/config shows what the backend restored, and no boot source.
    let cfg = h.call("GET", "/vm/config", None).expect(200).json();
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 256);
    assert!(cfg["boot-source"].is_null(), "{cfg}");
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "tap0");
    assert_eq!(cfg["vsock"]["uds_path"], "/tmp/fake-restored.vsock");
    let m = h.call("GET", "/machine-config", None).expect(200).json();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(2), Some(256))
    );

    // The restored microVM is a started one: pre-boot operations and a
    // second load or start are refused, post-boot ones work.
    let r = h
        .call("PUT", "/snapshot/load", Some(&load_body("/snap/b", "")))
        .expect(400);
    assert_eq!(r.fault(), NOT_SUPPORTED_POST_BOOT);
    let r = h
        .call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        )
        .expect(400);
    assert_eq!(r.fault(), NOT_SUPPORTED_POST_BOOT);
    let r = h
        .call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 128}"#),
        )
        .expect(400);
    assert_eq!(r.fault(), NOT_SUPPORTED_POST_BOOT);
    assert_eq!(snapshot_calls(&h), ["load_snapshot /snap/a"]);
    assert!(!h.backend.calls().iter().any(|c| c.starts_with("start")));

    // Paused after the load, so it can be snapshotted again, then resumed.
    h.call("PUT", "/snapshot/create", Some(&create_body("/snap/c")))
        .expect(204);
    h.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
        .expect(204);
    assert_eq!(state(&h), "Running");
    assert_eq!(
        snapshot_calls(&h),
        ["load_snapshot /snap/a", "create_snapshot /snap/c"]
    );
}

#[test]
fn load_with_resume_vm_runs_the_microvm() {
    let h = Harness::new("snap-resume");
    h.call(
        "PUT",
        "/snapshot/load",
        Some(&load_body("/snap/a", r#", "resume_vm": true"#)),
    )
    .expect(204);
    assert_eq!(state(&h), "Running");
    assert_eq!(h.backend.calls(), ["load_snapshot /snap/a", "resume"]);

    // A resume that fails after a good restore is reported; the microVM is
    // there, paused, and can be resumed later.
    let h = Harness::new("snap-resume-fail");
    h.backend.fail("resume", "vCPU 1 did not start");
    let r = h
        .call(
            "PUT",
            "/snapshot/load",
            Some(&load_body("/snap/a", r#", "resume_vm": true"#)),
        )
        .expect(400);
    assert_eq!(
        r.fault(),
        "Load snapshot error: Failed to resume microVM: vCPU 1 did not start"
    );
    assert_eq!(state(&h), "Paused");
    let cfg = h.call("GET", "/vm/config", None).expect(200).json();
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
}

#[test]
fn load_is_refused_after_boot_specific_resources() {
    let h = Harness::new("snap-after-cfg");
    h.call(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 128}"#),
    )
    .expect(204);
    let r = h
        .call("PUT", "/snapshot/load", Some(&load_body("/snap/a", "")))
        .expect(400);
    assert_eq!(r.fault(), LOAD_SNAPSHOT_NOT_ALLOWED);
    assert_eq!(
        r.fault(),
        "Load snapshot error: Loading a microVM snapshot not allowed after configuring \
         boot-specific resources."
    );
    assert!(snapshot_calls(&h).is_empty());
    assert_eq!(state(&h), "Not started");

    // As in Firecracker, sending a boot-specific resource is enough, even
    // one that is refused.
    let h = Harness::new("snap-after-bad-drive");
    h.call(
        "PUT",
        "/drives/d",
        Some(r#"{"drive_id": "d", "path_on_host": "/nonexistent/disk", "is_root_device": false, "is_read_only": true}"#),
    )
    .expect(400);
    let r = h
        .call("PUT", "/snapshot/load", Some(&load_body("/snap/a", "")))
        .expect(400);
    assert_eq!(r.fault(), LOAD_SNAPSHOT_NOT_ALLOWED);

    for (path, body) in [
        (
            "/boot-source",
            format!(r#"{{"kernel_image_path": "{}"}}"#, h.path("vmlinux")),
        ),
        ("/serial", r#"{"serial_out_path": "/tmp/x"}"#.to_string()),
        ("/entropy", "{}".to_string()),
    ] {
        let h = Harness::new("snap-after-one");
        h.call("PUT", path, Some(&body)).expect(204);
        let r = h
            .call("PUT", "/snapshot/load", Some(&load_body("/snap/a", "")))
            .expect(400);
        assert_eq!(r.fault(), LOAD_SNAPSHOT_NOT_ALLOWED, "after PUT {path}");
    }
}

#[test]
fn load_is_allowed_after_logger_and_metrics() {
    let h = Harness::new("snap-after-logger");
    h.call(
        "PUT",
        "/logger",
        Some(&format!(
            r#"{{"log_path": "{}", "level": "Info"}}"#,
            h.path("ember.log")
        )),
    )
    .expect(204);
    let metrics = h.path("metrics.json");
    h.call(
        "PUT",
        "/metrics",
        Some(&format!(r#"{{"metrics_path": "{metrics}"}}"#)),
    )
    .expect(204);
    h.call("PUT", "/snapshot/load", Some(&load_body("/snap/a", "")))
        .expect(204);
    assert_eq!(state(&h), "Paused");
    // The process's own logger and metrics survive the restore.
    let cfg = h.call("GET", "/vm/config", None).expect(200).json();
    assert_eq!(cfg["logger"]["level"], "Info");
    assert_eq!(cfg["metrics"]["metrics_path"], metrics.as_str());
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
}

#[test]
fn exactly_one_memory_source() {
    let h = Harness::new("snap-mem");
    let r = h
        .call(
            "PUT",
            "/snapshot/load",
            Some(r#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#),
        )
        .expect(400);
    assert_eq!(r.fault(), format!("{DESER}{TOO_MANY_MEM_SOURCES}."));
    assert_eq!(
        r.fault(),
        "An error occurred when deserializing the json body of a request: too many fields: \
         either `mem_backend` or `mem_file_path` exclusively is required."
    );
    let r = h
        .call("PUT", "/snapshot/load", Some(r#"{"snapshot_path": "/s"}"#))
        .expect(400);
    assert_eq!(r.fault(), format!("{DESER}{MISSING_MEM_SOURCE}."));
    assert_eq!(
        r.fault(),
        "An error occurred when deserializing the json body of a request: missing field: \
         either `mem_backend` or `mem_file_path` is required."
    );
    // Refused bodies leave the process fresh; the deprecated mem_file_path
    // alone is a good body.
    assert!(snapshot_calls(&h).is_empty());
    h.call(
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#),
    )
    .expect(204);
    assert_eq!(snapshot_calls(&h), ["load_snapshot /s"]);
}

#[test]
fn unsupported_load_options_are_named() {
    let h = Harness::new("snap-unsupported");
    let r = h
        .call(
            "PUT",
            "/snapshot/load",
            Some(r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/uffd.sock"}}"#),
        )
        .expect(400);
    assert_eq!(
        r.fault(),
        "Load snapshot error: mem_backend type Uffd (guest memory served through userfaultfd) \
         is not supported by Ember yet"
    );
    for field in ["track_dirty_pages", "enable_diff_snapshots"] {
        let r = h
            .call(
                "PUT",
                "/snapshot/load",
                Some(&load_body("/s", &format!(r#", "{field}": true"#))),
            )
            .expect(400);
        assert_eq!(
            r.fault(),
            "Load snapshot error: dirty page tracking (track_dirty_pages or \
             enable_diff_snapshots) is not supported by Ember yet",
            "{field}"
        );
    }
    assert!(snapshot_calls(&h).is_empty());
    assert_eq!(state(&h), "Not started");
    // Asking for no tracking is fine.
    h.call(
        "PUT",
        "/snapshot/load",
        Some(&load_body(
            "/s",
            r#", "track_dirty_pages": false, "enable_diff_snapshots": false, "clock_realtime": true"#,
        )),
    )
    .expect(204);
}

#[test]
fn unknown_and_missing_fields_are_refused() {
    let h = Harness::new("snap-fields");
    for (path, body, needle) in [
        (
            "/snapshot/load",
            load_body("/s", r#", "resume": true"#),
            "unknown field `resume`",
        ),
        (
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m", "size": 1}}"#.to_string(),
            "unknown field `size`",
        ),
        (
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Disk", "backend_path": "/m"}}"#.to_string(),
            "unknown variant `Disk`",
        ),
        (
            "/snapshot/load",
            r#"{"mem_file_path": "/m"}"#.to_string(),
            "missing field `snapshot_path`",
        ),
        (
            "/snapshot/load",
            load_body("/s", r#", "resume_vm": "yes""#),
            "invalid type",
        ),
        (
            "/snapshot/create",
            r#"{"mem_file_path": "/m", "snapshot_path": "/s", "version": "1.0"}"#.to_string(),
            "unknown field `version`",
        ),
        (
            "/snapshot/create",
            r#"{"snapshot_path": "/s"}"#.to_string(),
            "missing field `mem_file_path`",
        ),
        (
            "/snapshot/create",
            r#"{"mem_file_path": "/m", "snapshot_path": "/s", "snapshot_type": "Incremental"}"#.to_string(),
            "unknown variant `Incremental`",
        ),
    ] {
        let r = h.call("PUT", path, Some(&body)).expect(400);
        let f = r.fault();
        assert!(f.starts_with(DESER), "{path} {body}: {f}");
        assert!(f.contains(needle), "{path} {body}: {f:?} lacks {needle:?}");
    }
    assert!(snapshot_calls(&h).is_empty());
    assert_eq!(state(&h), "Not started");
}

#[test]
fn network_overrides_are_the_only_array() {
    let h = Harness::new("snap-arrays");
    // An array where the schema has none is refused, as everywhere else.
    h.call(
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path": "/s", "mem_backend": ["File", "/m"]}"#),
    )
    .expect_fault(400, "unexpected JSON array at `mem_backend`");
    // So is an override that is an array rather than an object.
    h.call(
        "PUT",
        "/snapshot/load",
        Some(&load_body(
            "/s",
            r#", "network_overrides": [["eth0", "tap9"]]"#,
        )),
    )
    .expect_fault(400, "unexpected JSON array at `network_overrides[0]`");
    h.call(
        "PUT",
        "/snapshot/load",
        Some(&load_body(
            "/s",
            r#", "network_overrides": [{"host_dev_name": "tap9"}]"#,
        )),
    )
    .expect_fault(400, "missing field `iface_id`");
    assert!(snapshot_calls(&h).is_empty());

    // The array itself is accepted and reaches the backend; unknown fields
    // inside an override are ignored, as Firecracker ignores them.
    h.call(
        "PUT",
        "/snapshot/load",
        Some(&load_body(
            "/s",
            r#", "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9", "note": "x"}],
               "vsock_override": {"uds_path": "/run/new.vsock"}"#,
        )),
    )
    .expect(204);
    let cfg = h.call("GET", "/vm/config", None).expect(200).json();
    assert_eq!(cfg["network-interfaces"][0]["iface_id"], "eth0");
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "tap9");
    assert_eq!(cfg["vsock"]["uds_path"], "/run/new.vsock");
}

#[test]
fn a_failed_load_leaves_the_process_fresh() {
    let h = Harness::new("snap-fail");
    h.backend
        .fail("load_snapshot", "cannot open /snap/a: no such file");
    let r = h
        .call("PUT", "/snapshot/load", Some(&load_body("/snap/a", "")))
        .expect(400);
    assert_eq!(
        r.fault(),
        "Load snapshot error: Failed to restore from snapshot: cannot open /snap/a: no such file"
    );
    assert_eq!(state(&h), "Not started");
    let cfg = h.call("GET", "/vm/config", None).expect(200).json();
    assert_eq!(cfg["machine-config"]["vcpu_count"], 1, "nothing restored");

    // A backend that refuses the overrides is a failed load too.
    h.backend.unfail("load_snapshot");
    let r = h
        .call(
            "PUT",
            "/snapshot/load",
            Some(&load_body(
                "/snap/a",
                r#", "network_overrides": [{"iface_id": "eth7", "host_dev_name": "tap9"}]"#,
            )),
        )
        .expect(400);
    assert_eq!(
        r.fault(),
        "Load snapshot error: Failed to restore from snapshot: the snapshot has no network \
         interface \"eth7\""
    );
    assert_eq!(state(&h), "Not started");

    // The next load may succeed.
    h.call("PUT", "/snapshot/load", Some(&load_body("/snap/b", "")))
        .expect(204);
    assert_eq!(state(&h), "Paused");
    assert_eq!(
        snapshot_calls(&h),
        [
            "load_snapshot /snap/a",
            "load_snapshot /snap/a",
            "load_snapshot /snap/b"
        ]
    );
}
