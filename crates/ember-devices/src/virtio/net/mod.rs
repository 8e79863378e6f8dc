//! virtio-net (virtio 1.2 §5.1) over a TAP device.
//!
//! Two queues: receive (0) and transmit (1), [`QUEUE_SIZE`] entries each.
//! Frames move between the TAP and guest memory with readv/writev and no
//! copy. Features offered: VERSION_1, RING_EVENT_IDX, RING_INDIRECT_DESC,
//! MAC (when a MAC is configured), CSUM, GUEST_CSUM, HOST_TSO4/6,
//! GUEST_TSO4/6, HOST_ECN, GUEST_ECN and MRG_RXBUF. UFO is not offered:
//! Linux guests no longer send UFO and TAP support for it is legacy. The
//! TAP's offloads (TUNSETOFFLOAD) follow what the guest accepted.
//!
//! Receive: when the guest has no buffers (or, with GSO, not enough for a
//! full 64 KiB frame) the device stops reading the TAP until the guest adds
//! buffers; frames wait in the TAP's queue, where the kernel drops them if
//! it overflows, as it would for any slow reader.
//!
//! Rate limiters on receive and transmit can be changed after boot through
//! a [`NetHandle`].

mod device;
pub mod header;
pub mod tap;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use device::Net;
#[cfg(any(test, feature = "test-utils"))]
pub use tap::{FakeBackend, FakeWire};
pub use tap::{NetBackend, Tap};

use crate::rate_limiter::RateLimiterConfig;

/// Queue size.
pub const QUEUE_SIZE: u16 = 256;

/// Feature bits of virtio-net.
pub mod features {
    /// Device handles partial checksums.
    pub const CSUM: u32 = 0;
    /// Driver handles partial checksums.
    pub const GUEST_CSUM: u32 = 1;
    /// Driver takes TSOv4.
    pub const GUEST_TSO4: u32 = 7;
    /// Driver takes TSOv6.
    pub const GUEST_TSO6: u32 = 8;
    /// Driver takes TSO with ECN.
    pub const GUEST_ECN: u32 = 9;
    /// Device takes TSOv4.
    pub const HOST_TSO4: u32 = 11;
    /// Device takes TSOv6.
    pub const HOST_TSO6: u32 = 12;
    /// Device takes TSO with ECN.
    pub const HOST_ECN: u32 = 13;
    /// Driver can merge receive buffers.
    pub const MRG_RXBUF: u32 = 15;
    /// Device has a MAC address.
    pub const MAC: u32 = 5;
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff` in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts
                .next()
                .ok_or_else(|| format!("invalid MAC address {s:?}"))?;
            if p.len() != 2 {
                return Err(format!("invalid MAC address {s:?}"));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("invalid MAC address {s:?}"));
        }
        Ok(Self(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One network interface, with Firecracker's field names and meanings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Interface id (the API's key).
    pub iface_id: String,
    /// Name of the host TAP device.
    pub host_dev_name: String,
    /// The guest's MAC address; offered with VIRTIO_NET_F_MAC when set.
    #[serde(default)]
    pub guest_mac: Option<MacAddr>,
    /// Limit on frames the guest receives.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limit on frames the guest sends.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Errors building a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP cannot be opened or configured.
    #[error("TAP {name}: {source}")]
    Tap {
        /// Interface name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// A rate limiter's timer cannot be created.
    #[error("rate limiter: {0}")]
    RateLimiter(std::io::Error),
}

/// Counters of one interface.
#[derive(Debug, Default, Serialize)]
pub struct NetMetrics {
    /// Activations refused.
    pub activate_fails: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Bytes delivered to the guest (headers included).
    pub rx_bytes: AtomicU64,
    /// Frames the TAP had but could not deliver (too big for the buffers).
    pub rx_dropped: AtomicU64,
    /// Times receive stopped for lack of guest buffers.
    pub rx_no_buffers: AtomicU64,
    /// Receive-side back-end errors.
    pub rx_errors: AtomicU64,
    /// Times the receive rate limiter stopped processing.
    pub rx_rate_limited: AtomicU64,
    /// Frames sent by the guest.
    pub tx_packets: AtomicU64,
    /// Bytes sent by the guest (headers included).
    pub tx_bytes: AtomicU64,
    /// Guest frames dropped as malformed.
    pub tx_malformed: AtomicU64,
    /// Transmit-side back-end errors (frame dropped).
    pub tx_errors: AtomicU64,
    /// Times the transmit rate limiter stopped processing.
    pub tx_rate_limited: AtomicU64,
}

/// Thread-safe handle for post-boot updates and metrics.
#[derive(Clone)]
pub struct NetHandle {
    dev: Arc<Mutex<Net>>,
    metrics: Arc<NetMetrics>,
}

impl fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetHandle")
    }
}

impl NetHandle {
    /// A handle on `dev`.
    pub fn new(dev: &Arc<Mutex<Net>>) -> Self {
        Self {
            metrics: lock(dev).metrics(),
            dev: dev.clone(),
        }
    }

    /// The interface's counters (serialize with serde).
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// Replaces the receive and/or transmit limiters (`None` keeps one).
    pub fn update_rate_limiters(
        &self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) {
        lock(&self.dev).update_rate_limiters(rx, tx);
    }
}

fn lock(d: &Arc<Mutex<Net>>) -> MutexGuard<'_, Net> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints() {
        let m: MacAddr = "06:00:AC:10:00:02".parse().unwrap();
        assert_eq!(m.0, [6, 0, 0xac, 0x10, 0, 2]);
        assert_eq!(m.to_string(), "06:00:ac:10:00:02");
        for bad in [
            "",
            "06:00",
            "06:00:ac:10:00:02:03",
            "g6:00:ac:10:00:02",
            "6:00:ac:10:00:02",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let cfg: NetConfig = serde_json::from_str(
            r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}"#,
        )
        .unwrap();
        assert_eq!(cfg.guest_mac, Some(m));
    }
}
