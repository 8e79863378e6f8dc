//! Snapshot bodies: `SnapshotCreateParams` (`PUT /snapshot/create`) and
//! `SnapshotLoadParams` (`PUT /snapshot/load`) with their parts
//! (`MemoryBackend`, `NetworkOverride`, `VsockOverride`).
//!
//! Field names, required fields and unknown-field handling are Firecracker
//! v1.16's: the two parameter bodies and `MemoryBackend` refuse unknown
//! fields; `NetworkOverride` and `VsockOverride` ignore them, as
//! Firecracker does. The rule serde cannot express (exactly one of
//! `mem_file_path` and `mem_backend`) is [`SnapshotLoadParams::validate`],
//! with Firecracker's messages. What Ember cannot do yet (diff snapshots,
//! userfaultfd memory, dirty page tracking) is named by the `unsupported`
//! methods.

use serde::{Deserialize, Serialize};

/// Firecracker's message when neither `mem_file_path` nor `mem_backend` is
/// given (a deserialization error of the body).
pub const MISSING_MEM_SOURCE: &str =
    "missing field: either `mem_backend` or `mem_file_path` is required";
/// Firecracker's message when both `mem_file_path` and `mem_backend` are
/// given (a deserialization error of the body).
pub const TOO_MANY_MEM_SOURCES: &str =
    "too many fields: either `mem_backend` or `mem_file_path` exclusively is required";

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the memory dirtied since the last snapshot.
    Diff,
}

/// The body of `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Where guest memory is written.
    pub mem_file_path: String,
    /// Where the microVM state is written.
    pub snapshot_path: String,
    /// Full (the default) or Diff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

impl SnapshotCreateParams {
    /// The snapshot type, `Full` when left out.
    pub fn kind(&self) -> SnapshotType {
        self.snapshot_type.unwrap_or_default()
    }

    /// The feature this request needs that Ember does not have yet, if any.
    pub fn unsupported(&self) -> Option<&'static str> {
        match self.kind() {
            SnapshotType::Full => None,
            SnapshotType::Diff => Some("snapshot_type Diff (diff snapshots)"),
        }
    }
}

/// How guest memory is provided on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// `backend_path` is the memory file written by `/snapshot/create`.
    File,
    /// `backend_path` is a Unix socket where a process serves page faults
    /// through userfaultfd.
    Uffd,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// File or Uffd.
    pub backend_type: MemoryBackendType,
    /// The memory file, or the userfaultfd handler's socket.
    pub backend_path: String,
}

/// Gives a restored network interface another host TAP device.
/// Unknown fields are ignored, as Firecracker ignores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// The interface, as it was configured before the snapshot.
    pub iface_id: String,
    /// The host TAP device to use from now on.
    pub host_dev_name: String,
}

/// Gives the restored vsock device another host Unix socket.
/// Unknown fields are ignored, as Firecracker ignores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// The host Unix socket to use from now on.
    pub uds_path: String,
}

/// The body of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The microVM state written by `/snapshot/create`.
    pub snapshot_path: String,
    /// The memory file (deprecated form of a `File` `mem_backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    /// Where guest memory comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Track the pages the guest dirties (for diff snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the vCPUs once loaded (otherwise the microVM is Paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// New host TAP devices for restored interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// A new host Unix socket for the restored vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance the guest's kvmclock by the wall-clock time since the
    /// snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

impl SnapshotLoadParams {
    /// A load of `snapshot_path` with guest memory from the file `mem_path`,
    /// every option left out.
    pub fn from_files(snapshot_path: &str, mem_path: &str) -> Self {
        Self {
            snapshot_path: snapshot_path.to_string(),
            mem_file_path: None,
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: mem_path.to_string(),
            }),
            enable_diff_snapshots: None,
            track_dirty_pages: None,
            resume_vm: None,
            network_overrides: None,
            vsock_override: None,
            clock_realtime: None,
        }
    }

    /// Checks that exactly one of `mem_file_path` and `mem_backend` is
    /// given; the error is Firecracker's message.
    pub fn validate(&self) -> Result<(), &'static str> {
        match (&self.mem_file_path, &self.mem_backend) {
            (Some(_), Some(_)) => Err(TOO_MANY_MEM_SOURCES),
            (None, None) => Err(MISSING_MEM_SOURCE),
            _ => Ok(()),
        }
    }

    /// How guest memory is provided: `mem_backend`'s type, or `File` for
    /// `mem_file_path`.
    pub fn mem_backend_type(&self) -> MemoryBackendType {
        self.mem_backend
            .as_ref()
            .map_or(MemoryBackendType::File, |b| b.backend_type)
    }

    /// The one memory path of a validated body: `mem_backend.backend_path`
    /// or `mem_file_path` (empty if the body names neither, which
    /// [`Self::validate`] refuses).
    pub fn mem_path(&self) -> &str {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(b), _) => &b.backend_path,
            (None, Some(p)) => p,
            (None, None) => "",
        }
    }

    /// Whether dirty page tracking is asked for, under either name.
    pub fn dirty_page_tracking(&self) -> bool {
        self.track_dirty_pages.unwrap_or(false) || self.enable_diff_snapshots.unwrap_or(false)
    }

    /// Whether the vCPUs should run once the snapshot is loaded.
    pub fn resume_after_load(&self) -> bool {
        self.resume_vm.unwrap_or(false)
    }

    /// The network overrides (none when left out).
    pub fn network_overrides(&self) -> &[NetworkOverride] {
        self.network_overrides.as_deref().unwrap_or_default()
    }

    /// The feature this request needs that Ember does not have yet, if any.
    pub fn unsupported(&self) -> Option<&'static str> {
        if self.mem_backend_type() == MemoryBackendType::Uffd {
            return Some("mem_backend type Uffd (guest memory served through userfaultfd)");
        }
        if self.dirty_page_tracking() {
            return Some("dirty page tracking (track_dirty_pages or enable_diff_snapshots)");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(s: &str) -> Result<SnapshotLoadParams, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn create_bodies() {
        let p: SnapshotCreateParams =
            serde_json::from_str(r#"{"mem_file_path": "m", "snapshot_path": "s"}"#).unwrap();
        assert_eq!(p.kind(), SnapshotType::Full);
        assert_eq!(p.unsupported(), None);
        let p: SnapshotCreateParams = serde_json::from_str(
            r#"{"mem_file_path": "m", "snapshot_path": "s", "snapshot_type": "Diff"}"#,
        )
        .unwrap();
        assert!(p.unsupported().unwrap().contains("Diff"));
        for bad in [
            r#"{"snapshot_path": "s"}"#,
            r#"{"mem_file_path": "m"}"#,
            r#"{"mem_file_path": "m", "snapshot_path": "s", "version": "1.0"}"#,
            r#"{"mem_file_path": "m", "snapshot_path": "s", "snapshot_type": "Incremental"}"#,
        ] {
            assert!(
                serde_json::from_str::<SnapshotCreateParams>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn load_memory_sources() {
        let p = load(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        p.validate().unwrap();
        assert_eq!(
            (p.mem_path(), p.mem_backend_type()),
            ("m", MemoryBackendType::File)
        );
        let p = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "b"}}"#,
        )
        .unwrap();
        p.validate().unwrap();
        assert_eq!(p.mem_path(), "b");
        assert_eq!(p, SnapshotLoadParams::from_files("s", "b"));
        let both = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "mem_backend": {"backend_type": "File", "backend_path": "b"}}"#,
        )
        .unwrap();
        assert_eq!(both.validate(), Err(TOO_MANY_MEM_SOURCES));
        let neither = load(r#"{"snapshot_path": "s"}"#).unwrap();
        assert_eq!(neither.validate(), Err(MISSING_MEM_SOURCE));
        assert_eq!(neither.mem_path(), "");
        // null counts as absent, as serde (and Firecracker) read it.
        load(r#"{"snapshot_path": "s", "mem_file_path": null, "mem_backend": {"backend_type": "File", "backend_path": "b"}}"#)
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn load_options_and_unsupported_features() {
        let p = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m", "resume_vm": true,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}],
                "vsock_override": {"uds_path": "/v.sock"}, "clock_realtime": false}"#,
        )
        .unwrap();
        assert!(p.resume_after_load());
        assert_eq!(p.network_overrides()[0].host_dev_name, "tap1");
        assert_eq!(p.unsupported(), None);
        let uffd = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#,
        )
        .unwrap();
        assert!(uffd.unsupported().unwrap().contains("Uffd"));
        for field in ["track_dirty_pages", "enable_diff_snapshots"] {
            let p = load(&format!(
                r#"{{"snapshot_path": "s", "mem_file_path": "m", "{field}": true}}"#
            ))
            .unwrap();
            assert!(p.dirty_page_tracking(), "{field}");
            assert!(p.unsupported().unwrap().contains("dirty page tracking"));
            let p = load(&format!(
                r#"{{"snapshot_path": "s", "mem_file_path": "m", "{field}": false}}"#
            ))
            .unwrap();
            assert_eq!(p.unsupported(), None);
        }
    }

    #[test]
    fn unknown_fields_follow_firecracker() {
        // Refused at the top level and in mem_backend...
        assert!(load(r#"{"snapshot_path": "s", "mem_file_path": "m", "resume": true}"#).is_err());
        assert!(load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "b", "x": 1}}"#
        )
        .is_err());
        assert!(load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Disk", "backend_path": "b"}}"#
        )
        .is_err());
        // ...ignored in the overrides.
        let p = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1", "mtu": 1}],
                "vsock_override": {"uds_path": "/v", "guest_cid": 3}}"#,
        )
        .unwrap();
        assert_eq!(p.vsock_override.unwrap().uds_path, "/v");
        // Missing required fields are refused everywhere.
        assert!(load(r#"{"mem_file_path": "m"}"#).is_err());
        assert!(load(
            r#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "eth0"}]}"#
        )
        .is_err());
        assert!(
            load(r#"{"snapshot_path": "s", "mem_file_path": "m", "vsock_override": {}}"#).is_err()
        );
    }
}
