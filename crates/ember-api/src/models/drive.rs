//! `Drive` and `PartialDrive`: block devices (`/drives/{drive_id}`).

use serde::{Deserialize, Serialize};

use super::rate_limiter::{validate_opt, RateLimiter};
use super::validate_id;

/// How the device handles guest flushes. Ember's default is durable
/// (`Writeback`); Firecracker's is `Unsafe`, which here must be asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush requests are acknowledged without syncing the host file.
    Unsafe,
    /// Flush requests sync the host file (fdatasync).
    #[default]
    Writeback,
}

/// How the device performs I/O on the host file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking reads and writes.
    #[default]
    Sync,
    /// io_uring.
    Async,
}

/// A block device, as `PUT /drives/{drive_id}` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Identifier, also in the URL path.
    pub drive_id: String,
    /// Partition UUID of the root partition (root devices only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Whether the guest boots from this device.
    pub is_root_device: bool,
    /// Flush behaviour.
    #[serde(default)]
    pub cache_type: CacheType,
    /// Open the host file read-only (required for virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Host file backing the device (required for virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// Host I/O engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// vhost-user-block backend socket (not supported by Ember).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl Drive {
    /// Checks the fields on their own (no file system access).
    pub fn validate(&self) -> Result<(), String> {
        validate_id(&self.drive_id)?;
        if self.socket.is_some() {
            return Err(
                "vhost-user-block drives (\"socket\") are not supported by Ember; \
                 use path_on_host and is_read_only"
                    .into(),
            );
        }
        match (&self.path_on_host, self.is_read_only) {
            (Some(p), Some(_)) if !p.is_empty() => {}
            (Some(_), Some(_)) => return Err("path_on_host cannot be empty".into()),
            _ => {
                return Err("a virtio-block drive needs both path_on_host and is_read_only".into())
            }
        }
        validate_opt(&self.rate_limiter, "rate_limiter")
    }

    /// The host path (validated drives always have one).
    pub fn path(&self) -> &str {
        self.path_on_host.as_deref().unwrap_or_default()
    }

    /// Whether the guest sees the device read-only.
    pub fn read_only(&self) -> bool {
        self.is_read_only.unwrap_or(false)
    }
}

/// A post-boot drive update, as `PATCH /drives/{drive_id}` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// Identifier, also in the URL path.
    pub drive_id: String,
    /// A new host file (e.g. after the old one was swapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// New I/O limits; a bucket left out keeps its current setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl PartialDrive {
    /// Checks the fields on their own.
    pub fn validate(&self) -> Result<(), String> {
        validate_id(&self.drive_id)?;
        if matches!(&self.path_on_host, Some(p) if p.is_empty()) {
            return Err("path_on_host cannot be empty".into());
        }
        validate_opt(&self.rate_limiter, "rate_limiter")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_minimal_bodies() {
        let d: Drive = serde_json::from_str(
            r#"{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true,
                "partuuid": "abc", "is_read_only": false, "cache_type": "Writeback",
                "io_engine": "Async", "rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}"#,
        )
        .unwrap();
        d.validate().unwrap();
        assert_eq!(d.cache_type, CacheType::Writeback);
        assert_eq!(d.io_engine, Some(IoEngine::Async));
        let d: Drive = serde_json::from_str(
            r#"{"drive_id": "d1", "path_on_host": "/x", "is_root_device": false, "is_read_only": true}"#,
        )
        .unwrap();
        d.validate().unwrap();
        assert!(d.read_only());
        assert_eq!(
            d.cache_type,
            CacheType::Writeback,
            "Ember's default is durable"
        );
        let d: Drive = serde_json::from_str(
            r#"{"drive_id": "d2", "path_on_host": "/x", "is_root_device": false, "cache_type": "Unsafe"}"#,
        )
        .unwrap();
        assert_eq!(d.cache_type, CacheType::Unsafe, "Unsafe when asked for");
    }

    #[test]
    fn invalid_drives() {
        for body in [
            r#"{"drive_id": "a", "path_on_host": "/x", "is_read_only": true}"#,
            r#"{"drive_id": "a", "path_on_host": "/x", "is_root_device": false, "is_read_only": true, "x": 1}"#,
            r#"{"drive_id": "a", "path_on_host": "/x", "is_root_device": false, "is_read_only": true, "cache_type": "None"}"#,
            r#"{"drive_id": 5, "path_on_host": "/x", "is_root_device": false, "is_read_only": true}"#,
        ] {
            assert!(serde_json::from_str::<Drive>(body).is_err(), "{body}");
        }
        for body in [
            r#"{"drive_id": "a", "is_root_device": false, "is_read_only": true}"#,
            r#"{"drive_id": "a", "path_on_host": "/x", "is_root_device": false}"#,
            r#"{"drive_id": "a", "path_on_host": "", "is_root_device": false, "is_read_only": true}"#,
            r#"{"drive_id": "a-b", "path_on_host": "/x", "is_root_device": false, "is_read_only": true}"#,
            r#"{"drive_id": "a", "socket": "/s", "is_root_device": false}"#,
        ] {
            let d: Drive = serde_json::from_str(body).unwrap();
            assert!(d.validate().is_err(), "{body}");
        }
    }

    #[test]
    fn partial_drive() {
        let p: PartialDrive =
            serde_json::from_str(r#"{"drive_id": "a", "path_on_host": "/y"}"#).unwrap();
        p.validate().unwrap();
        assert!(
            serde_json::from_str::<PartialDrive>(r#"{"drive_id": "a", "is_read_only": true}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<PartialDrive>(r#"{"path_on_host": "/y"}"#).is_err());
    }
}
