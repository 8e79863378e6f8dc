//! virtio-blk (virtio 1.2 §5.2): a raw disk image for the guest.
//!
//! The backing is a regular file (sparse files welcome) or a host block
//! device. One request queue of [`QUEUE_SIZE`] entries. Reads and writes go
//! straight between the file and guest memory with preadv/pwritev (`Sync`
//! engine, the default) or through io_uring (`Async` engine).
//!
//! Features offered: VERSION_1, RING_EVENT_IDX, RING_INDIRECT_DESC, SEG_MAX,
//! and: RO for read-only drives; FLUSH unless the cache type is `Unsafe`;
//! DISCARD and WRITE_ZEROES for writable drives (holes punched with
//! fallocate; WRITE_ZEROES with UNMAP punches, without it zeroes in place).
//!
//! Cache types:
//! - `Writeback` (Ember's default, "durable"): FLUSH is offered and a flush
//!   request calls fdatasync, so data the guest flushed survives a host
//!   crash. This is what Firecracker calls `Writeback`.
//! - `Unsafe` (must be asked for; Firecracker's default): FLUSH is not
//!   offered and any flush request is acknowledged without syncing. Faster;
//!   a host crash can lose data the guest believes written.
//!
//! After boot the API can point the drive at another file and change its
//! rate limiter through a [`BlockHandle`]; the guest is told of the new
//! capacity with a configuration-change interrupt.

mod device;
pub mod disk;
pub mod request;
pub mod uring;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

pub use device::Block;

use crate::rate_limiter::RateLimiterConfig;

/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Largest discard / write-zeroes segment advertised, in sectors (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most discard / write-zeroes segments per request.
pub const MAX_DISCARD_SEGMENTS: u32 = 32;

/// Feature bits of virtio-blk.
pub mod features {
    /// seg_max is valid.
    pub const SEG_MAX: u32 = 2;
    /// Read-only device.
    pub const RO: u32 = 5;
    /// Flush command supported.
    pub const FLUSH: u32 = 9;
    /// Discard command supported.
    pub const DISCARD: u32 = 13;
    /// Write-zeroes command supported.
    pub const WRITE_ZEROES: u32 = 14;
}

/// How guest flushes are honoured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// FLUSH offered; flushes call fdatasync (Ember's default).
    #[default]
    Writeback,
    /// FLUSH not offered; flushes are acknowledged without syncing.
    Unsafe,
}

/// Which I/O engine serves reads, writes and flushes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking vectored syscalls on the event-loop thread.
    #[default]
    Sync,
    /// io_uring; fails to build on hosts without it.
    Async,
}

/// One drive, with Firecracker's field names and meanings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockConfig {
    /// Drive id; its first 20 bytes answer GET_ID.
    pub drive_id: String,
    /// Raw image file or block device.
    pub path_on_host: PathBuf,
    /// Open read-only, offer VIRTIO_BLK_F_RO and fail writes.
    #[serde(default)]
    pub is_read_only: bool,
    /// Flush semantics.
    #[serde(default)]
    pub cache_type: CacheType,
    /// I/O engine.
    #[serde(default)]
    pub io_engine: IoEngine,
    /// Optional bandwidth / ops limit.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Errors building or updating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file cannot be used.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The async engine cannot run on this host.
    #[error("io_engine Async: {0}")]
    Uring(#[from] uring::UringError),
    /// The rate limiter's timer cannot be created.
    #[error("rate limiter: {0}")]
    RateLimiter(std::io::Error),
}

/// Counters of one drive.
#[derive(Debug, Default, Serialize)]
pub struct BlockMetrics {
    /// Activations refused.
    pub activate_fails: AtomicU64,
    /// Read requests completed successfully.
    pub read_count: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Write requests completed successfully.
    pub write_count: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flush requests.
    pub flush_count: AtomicU64,
    /// GET_ID requests.
    pub get_id_count: AtomicU64,
    /// Discard requests.
    pub discard_count: AtomicU64,
    /// Write-zeroes requests.
    pub write_zeroes_count: AtomicU64,
    /// Malformed chains and refused requests.
    pub invalid_requests: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_UNSUPP.
    pub unsupported_requests: AtomicU64,
    /// Host I/O errors.
    pub io_errors: AtomicU64,
    /// Times the rate limiter stopped processing.
    pub rate_limited: AtomicU64,
    /// Backing file changes.
    pub path_updates: AtomicU64,
}

/// Thread-safe handle for post-boot updates and metrics.
#[derive(Clone)]
pub struct BlockHandle {
    dev: Arc<Mutex<Block>>,
    metrics: Arc<BlockMetrics>,
    drive_id: String,
}

impl std::fmt::Debug for BlockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockHandle")
            .field("drive_id", &self.drive_id)
            .finish()
    }
}

impl BlockHandle {
    /// A handle on `dev`.
    pub fn new(dev: &Arc<Mutex<Block>>) -> Self {
        let d = lock(dev);
        Self {
            metrics: d.metrics(),
            drive_id: d.drive_id().to_owned(),
            dev: dev.clone(),
        }
    }

    /// The drive's id.
    pub fn drive_id(&self) -> &str {
        &self.drive_id
    }

    /// The drive's counters (serialize with serde).
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Points the drive at `path` (same read-only mode). The file is opened
    /// here, so errors come back to the caller; in-flight requests finish on
    /// the old file first. The guest gets a config-change interrupt.
    pub fn update_path(&self, path: &Path) -> Result<(), BlockError> {
        let read_only = lock(&self.dev).read_only();
        let disk = disk::Disk::open(path, read_only).map_err(|source| BlockError::Open {
            path: path.to_owned(),
            source,
        })?;
        lock(&self.dev).replace_disk(disk);
        Ok(())
    }

    /// Replaces the rate limiter's buckets (fresh, full buckets).
    pub fn update_rate_limiter(&self, cfg: &RateLimiterConfig) {
        lock(&self.dev).update_rate_limiter(cfg);
    }
}

fn lock(d: &Arc<Mutex<Block>>) -> MutexGuard<'_, Block> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}
