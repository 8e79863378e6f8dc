//! `Vsock` (`PUT /vsock`) and `EntropyDevice` (`PUT /entropy`).

use serde::{Deserialize, Serialize};

use super::rate_limiter::{validate_opt, RateLimiter};

/// The lowest CID a guest may have: 0-2 are reserved for the hypervisor,
/// local loopback and the host.
pub const MIN_GUEST_CID: u32 = 3;

/// A virtio-vsock device proxied to host Unix sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Deprecated identifier, accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id.
    pub guest_cid: u32,
    /// The host Unix socket for host-initiated connections; guest-initiated
    /// ones go to `{uds_path}_{port}`.
    pub uds_path: String,
}

impl Vsock {
    /// Checks the fields on their own.
    pub fn validate(&self) -> Result<(), String> {
        if self.guest_cid < MIN_GUEST_CID || self.guest_cid == u32::MAX {
            return Err(format!(
                "guest_cid must be between {MIN_GUEST_CID} and {}, got {}",
                u32::MAX - 1,
                self.guest_cid
            ));
        }
        if self.uds_path.is_empty() {
            return Err("uds_path cannot be empty".into());
        }
        // sockaddr_un holds 108 bytes, one of them the terminating NUL; the
        // device appends "_{port}" for guest-initiated connections.
        if self.uds_path.len() > 107 {
            return Err(format!(
                "uds_path is {} bytes long; a Unix socket path holds at most 107",
                self.uds_path.len()
            ));
        }
        Ok(())
    }
}

/// A virtio-rng device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    /// Limits on the entropy handed to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl EntropyDevice {
    /// Checks the fields on their own.
    pub fn validate(&self) -> Result<(), String> {
        validate_opt(&self.rate_limiter, "rate_limiter")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_rules() {
        let v: Vsock =
            serde_json::from_str(r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock", "vsock_id": "x"}"#)
                .unwrap();
        v.validate().unwrap();
        for body in [
            r#"{"guest_cid": 2, "uds_path": "/tmp/v.sock"}"#,
            r#"{"guest_cid": 4294967295, "uds_path": "/tmp/v.sock"}"#,
            r#"{"guest_cid": 3, "uds_path": ""}"#,
        ] {
            let v: Vsock = serde_json::from_str(body).unwrap();
            assert!(v.validate().is_err(), "{body}");
        }
        assert!(serde_json::from_str::<Vsock>(r#"{"guest_cid": -3, "uds_path": "/x"}"#).is_err());
        assert!(serde_json::from_str::<Vsock>(r#"{"guest_cid": 3}"#).is_err());
        let long = format!(r#"{{"guest_cid": 3, "uds_path": "/{}"}}"#, "a".repeat(200));
        assert!(serde_json::from_str::<Vsock>(&long)
            .unwrap()
            .validate()
            .is_err());
    }

    #[test]
    fn entropy_bodies() {
        let e: EntropyDevice = serde_json::from_str("{}").unwrap();
        e.validate().unwrap();
        let e: EntropyDevice = serde_json::from_str(
            r#"{"rate_limiter": {"bandwidth": {"size": 10, "refill_time": 5}}}"#,
        )
        .unwrap();
        e.validate().unwrap();
        assert!(serde_json::from_str::<EntropyDevice>(r#"{"rate": 1}"#).is_err());
    }
}
