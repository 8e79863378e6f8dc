//! `NetworkInterface` and `PartialNetworkInterface`: virtio-net devices
//! backed by host TAP devices (`/network-interfaces/{iface_id}`).

use serde::{Deserialize, Serialize};

use super::rate_limiter::{validate_opt, RateLimiter};
use super::validate_id;

/// Linux interface names hold at most 15 bytes (IFNAMSIZ - 1).
pub const MAX_TAP_NAME_LEN: usize = 15;
/// The smallest MTU a guest may be told about (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

/// A network interface, as `PUT /network-interfaces/{iface_id}` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Identifier, also in the URL path.
    pub iface_id: String,
    /// Name of the host TAP device.
    pub host_dev_name: String,
    /// MAC address shown to the guest, `xx:xx:xx:xx:xx:xx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU advertised to the guest (68..=65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Limits on guest-bound traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limits on host-bound traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// Parses `xx:xx:xx:xx:xx:xx` (hex digits, either case).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let err =
        || format!("invalid MAC address {s:?}: expected six hex bytes like 06:00:ac:10:00:02");
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in out.iter_mut() {
        let part = parts.next().ok_or_else(err)?;
        if part.len() != 2 {
            return Err(err());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
    }
    if parts.next().is_some() {
        return Err(err());
    }
    Ok(out)
}

impl NetworkInterface {
    /// Checks the fields on their own.
    pub fn validate(&self) -> Result<(), String> {
        validate_id(&self.iface_id)?;
        if self.host_dev_name.is_empty() || self.host_dev_name.len() > MAX_TAP_NAME_LEN {
            return Err(format!(
                "host_dev_name must be 1 to {MAX_TAP_NAME_LEN} bytes long, got {:?}",
                self.host_dev_name
            ));
        }
        if self.host_dev_name.contains(['/', '\0'])
            || self.host_dev_name.contains(char::is_whitespace)
        {
            return Err(format!(
                "host_dev_name {:?} is not a valid interface name",
                self.host_dev_name
            ));
        }
        if let Some(mac) = &self.guest_mac {
            parse_mac(mac)?;
        }
        if let Some(mtu) = self.mtu {
            if mtu < MIN_MTU {
                return Err(format!(
                    "mtu must be between {MIN_MTU} and 65535, got {mtu}"
                ));
            }
        }
        validate_opt(&self.rx_rate_limiter, "rx_rate_limiter")?;
        validate_opt(&self.tx_rate_limiter, "tx_rate_limiter")
    }
}

/// A post-boot interface update, as `PATCH /network-interfaces/{iface_id}`
/// takes it: only the rate limiters can change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// Identifier, also in the URL path.
    pub iface_id: String,
    /// New limits on guest-bound traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New limits on host-bound traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl PartialNetworkInterface {
    /// Checks the fields on their own.
    pub fn validate(&self) -> Result<(), String> {
        validate_id(&self.iface_id)?;
        validate_opt(&self.rx_rate_limiter, "rx_rate_limiter")?;
        validate_opt(&self.tx_rate_limiter, "tx_rate_limiter")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> NetworkInterface {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn valid_interfaces() {
        let n = parse(
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02",
                "mtu": 1500, "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#,
        );
        n.validate().unwrap();
        assert_eq!(
            parse_mac("06:00:AC:10:00:02").unwrap(),
            [6, 0, 0xac, 0x10, 0, 2]
        );
    }

    #[test]
    fn invalid_interfaces() {
        for body in [
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00"}"#,
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02:03"}"#,
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "g6:00:ac:10:00:02"}"#,
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 67}"#,
            r#"{"iface_id": "eth0", "host_dev_name": ""}"#,
            r#"{"iface_id": "eth0", "host_dev_name": "a-very-long-tap-name"}"#,
            r#"{"iface_id": "eth 0", "host_dev_name": "tap0"}"#,
        ] {
            assert!(parse(body).validate().is_err(), "{body}");
        }
        for body in [
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 65536}"#,
            r#"{"iface_id": "eth0"}"#,
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "allow_mmds_requests": true}"#,
        ] {
            assert!(
                serde_json::from_str::<NetworkInterface>(body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn partial_interface() {
        let p: PartialNetworkInterface = serde_json::from_str(
            r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 5, "refill_time": 10}}}"#,
        )
        .unwrap();
        p.validate().unwrap();
        assert!(serde_json::from_str::<PartialNetworkInterface>(
            r#"{"iface_id": "eth0", "host_dev_name": "tap1"}"#
        )
        .is_err());
    }
}
