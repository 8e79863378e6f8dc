//! virtio-vsock (virtio 1.2 §5.10) with Firecracker's hybrid Unix-socket
//! back end (see [`muxer`]).
//!
//! Three queues: receive (0), transmit (1), event (2). Stream sockets only
//! (no SEQPACKET). Features offered: VERSION_1, RING_EVENT_IDX,
//! RING_INDIRECT_DESC. The configuration space holds the guest CID.
//!
//! Flow control follows the virtio-vsock credit scheme: each side
//! advertises its receive buffer (`buf_alloc`) and how much of it it has
//! consumed (`fwd_cnt`); a sender never has more unconsumed bytes in flight
//! than the receiver's buffer. We advertise [`connection::BUF_ALLOC`] per
//! connection and reset guests that exceed it.

pub mod connection;
mod device;
pub mod muxer;
pub mod packet;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

pub use device::Vsock;

/// Queue size.
pub const QUEUE_SIZE: u16 = 256;

/// The vsock device, with Firecracker's field names and meanings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// Unix socket the device listens on for host-initiated connections;
    /// guest-initiated connections to port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Errors building the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0, 1 and 2 are reserved; u32::MAX too.
    #[error("invalid guest CID {0}")]
    InvalidCid(u32),
    /// The listening socket cannot be set up.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Counters of the vsock device.
#[derive(Debug, Default, Serialize)]
pub struct VsockMetrics {
    /// Activations refused.
    pub activate_fails: AtomicU64,
    /// Data packets to the guest.
    pub rx_packets: AtomicU64,
    /// Payload bytes to the guest.
    pub rx_bytes: AtomicU64,
    /// Data packets from the guest.
    pub tx_packets: AtomicU64,
    /// Payload bytes from the guest.
    pub tx_bytes: AtomicU64,
    /// Connections opened (either side).
    pub conns_added: AtomicU64,
    /// Connections closed.
    pub conns_removed: AtomicU64,
    /// Connections refused (no listener, limits).
    pub conns_refused: AtomicU64,
    /// Host-initiated connections the guest accepted.
    pub host_conns_established: AtomicU64,
    /// Host connections dropped before or during CONNECT.
    pub handshake_failures: AtomicU64,
    /// Guest packets dropped as malformed.
    pub malformed_packets: AtomicU64,
    /// Guests that sent beyond their credit (reset).
    pub credit_violations: AtomicU64,
    /// Resets not sent because too many were queued.
    pub resets_dropped: AtomicU64,
    /// Transport-reset events delivered.
    pub transport_resets: AtomicU64,
}

/// Thread-safe handle for metrics and transport resets.
#[derive(Clone)]
pub struct VsockHandle {
    dev: Arc<Mutex<Vsock>>,
    metrics: Arc<VsockMetrics>,
}

impl std::fmt::Debug for VsockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VsockHandle")
    }
}

impl VsockHandle {
    /// A handle on `dev`.
    pub fn new(dev: &Arc<Mutex<Vsock>>) -> Self {
        Self {
            metrics: lock(dev).metrics(),
            dev: dev.clone(),
        }
    }

    /// The device's counters (serialize with serde).
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// Drops all connections and tells the guest with a
    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET event (used after restoring a
    /// snapshot, when host-side connections are gone).
    pub fn reset_transport(&self) {
        lock(&self.dev).reset_transport();
    }
}

fn lock(d: &Arc<Mutex<Vsock>>) -> MutexGuard<'_, Vsock> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}
