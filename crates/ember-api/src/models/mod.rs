//! The JSON models of Firecracker's API (v1.16), with Firecracker's field
//! names, defaults and validation.
//!
//! Every request body rejects unknown fields where Firecracker does, and each
//! model has a `validate` method for the rules serde cannot express. File
//! system checks (does the kernel exist?) live in [`crate::resources`].

mod boot_source;
mod drive;
mod full_config;
mod instance;
mod machine_config;
mod net;
mod rate_limiter;
mod serial;
mod snapshot;
mod telemetry;
mod vsock;

pub use boot_source::{BootSource, MAX_BOOT_ARGS_LEN};
pub use drive::{CacheType, Drive, IoEngine, PartialDrive};
pub use full_config::FullVmConfig;
pub use instance::{
    ActionType, InstanceActionInfo, InstanceInfo, RequestedVmState, VersionInfo, VmState,
    VmStateUpdate,
};
pub use machine_config::{
    CpuTemplate, HugePages, MachineConfig, MachineConfigError, MachineConfigUpdate,
    MAX_MEM_SIZE_MIB, MAX_VCPUS,
};
pub use net::{parse_mac, NetworkInterface, PartialNetworkInterface, MAX_TAP_NAME_LEN, MIN_MTU};
pub use rate_limiter::{RateLimiter, TokenBucket, MAX_REFILL_TIME_MS};
pub use serial::SerialConfig;
pub use snapshot::{
    MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, VsockOverride, MISSING_MEM_SOURCE, TOO_MANY_MEM_SOURCES,
};
pub use telemetry::{LevelName, LoggerConfig, MetricsConfig};
pub use vsock::{EntropyDevice, Vsock, MIN_GUEST_CID};

/// Firecracker's message for an empty resource id.
pub const EMPTY_ID_MESSAGE: &str = "The ID cannot be empty.";
/// Firecracker's message for a resource id with other characters.
pub const INVALID_ID_MESSAGE: &str =
    "API Resource IDs can only contain alphanumeric characters and underscores.";

/// Finds the first JSON array inside `v` and returns where it is (e.g.
/// `rate_limiter.ops`). Request bodies have no array-typed field except
/// those [`find_array_outside`] is told about, and serde would otherwise
/// fill a struct from an array of its fields in order, accepting bodies no
/// client means.
pub fn find_array(v: &serde_json::Value) -> Option<String> {
    find_array_outside(v, &[])
}

/// [`find_array`], except that arrays at the paths in `allowed` (dotted
/// keys from the top, `[]` for "every element of an allowed array", e.g.
/// `network_overrides` or `a[].b`) are fine. Elements of an allowed array
/// are searched in turn: an element that is itself an array is reported
/// (as `network_overrides[0]`).
pub fn find_array_outside(v: &serde_json::Value, allowed: &[&str]) -> Option<String> {
    walk_for_arrays(v, "", "", allowed)
}

fn walk_for_arrays(
    v: &serde_json::Value,
    pattern: &str,
    shown: &str,
    allowed: &[&str],
) -> Option<String> {
    let join = |base: &str, key: &str| {
        if base.is_empty() {
            key.to_string()
        } else {
            format!("{base}.{key}")
        }
    };
    match v {
        serde_json::Value::Array(items) if !pattern.is_empty() && allowed.contains(&pattern) => {
            let element_pattern = format!("{pattern}[]");
            items.iter().enumerate().find_map(|(i, item)| {
                walk_for_arrays(item, &element_pattern, &format!("{shown}[{i}]"), allowed)
            })
        }
        serde_json::Value::Array(_) if shown.is_empty() => Some(String::from("(top level)")),
        serde_json::Value::Array(_) => Some(shown.to_string()),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, child)| {
            walk_for_arrays(child, &join(pattern, k), &join(shown, k), allowed)
        }),
        _ => None,
    }
}

/// Checks a resource id (drive, interface): non-empty, ASCII letters,
/// digits and underscores only.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(EMPTY_ID_MESSAGE.into());
    }
    if !id.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric()) {
        return Err(INVALID_ID_MESSAGE.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_found() {
        let v = serde_json::json!({"a": 1, "rate_limiter": {"ops": [1, 2]}});
        assert_eq!(find_array(&v).as_deref(), Some("rate_limiter.ops"));
        assert_eq!(find_array(&serde_json::json!({"a": {"b": 1}})), None);
        assert!(find_array(&serde_json::json!([])).is_some());
    }

    #[test]
    fn allowed_arrays_are_searched_inside() {
        let allowed = &["network_overrides"];
        let ok = serde_json::json!({"network_overrides": [{"iface_id": "a"}, {"iface_id": "b"}]});
        assert_eq!(find_array_outside(&ok, allowed), None);
        assert_eq!(
            find_array(&ok).as_deref(),
            Some("network_overrides"),
            "only where allowed"
        );
        let nested = serde_json::json!({"network_overrides": [{"iface_id": "a"}, ["a", "b"]]});
        assert_eq!(
            find_array_outside(&nested, allowed).as_deref(),
            Some("network_overrides[1]")
        );
        let deep = serde_json::json!({"network_overrides": [{"x": {"y": [1]}}]});
        assert_eq!(
            find_array_outside(&deep, allowed).as_deref(),
            Some("network_overrides[0].x.y")
        );
        let elsewhere = serde_json::json!({"network_overrides": [], "mem_backend": {"p": []}});
        assert_eq!(
            find_array_outside(&elsewhere, allowed).as_deref(),
            Some("mem_backend.p")
        );
        assert_eq!(
            find_array_outside(&serde_json::json!([]), allowed).as_deref(),
            Some("(top level)")
        );
        let inner = serde_json::json!({"a": [{"b": [1]}]});
        assert_eq!(find_array_outside(&inner, &["a", "a[].b"]), None);
    }

    #[test]
    fn ids() {
        validate_id("rootfs_1").unwrap();
        assert_eq!(validate_id(""), Err(EMPTY_ID_MESSAGE.into()));
        for bad in ["a-b", "a b", "a/b", "é", "a.b"] {
            assert_eq!(validate_id(bad), Err(INVALID_ID_MESSAGE.into()), "{bad}");
        }
    }
}
