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
pub use telemetry::{LevelName, LoggerConfig, MetricsConfig};
pub use vsock::{EntropyDevice, Vsock, MIN_GUEST_CID};

/// Firecracker's message for an empty resource id.
pub const EMPTY_ID_MESSAGE: &str = "The ID cannot be empty.";
/// Firecracker's message for a resource id with other characters.
pub const INVALID_ID_MESSAGE: &str =
    "API Resource IDs can only contain alphanumeric characters and underscores.";

/// Finds the first JSON array inside `v` and returns where it is (e.g.
/// `rate_limiter.ops`). No request body has an array-typed field, and serde
/// would otherwise fill a struct from an array of its fields in order,
/// accepting bodies no client means.
pub fn find_array(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Array(_) => Some(String::from("(top level)")),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, child)| match child {
            serde_json::Value::Array(_) => Some(k.clone()),
            serde_json::Value::Object(_) => find_array(child).map(|inner| format!("{k}.{inner}")),
            _ => None,
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
    fn ids() {
        validate_id("rootfs_1").unwrap();
        assert_eq!(validate_id(""), Err(EMPTY_ID_MESSAGE.into()));
        for bad in ["a-b", "a b", "a/b", "é", "a.b"] {
            assert_eq!(validate_id(bad), Err(INVALID_ID_MESSAGE.into()), "{bad}");
        }
    }
}
