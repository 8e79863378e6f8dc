//! The virtio-blk device: queue processing on top of request parsing, the
//! disk and the optional io_uring engine.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::EventSet;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::disk::Disk;
use super::request::{
    parse_request, Operation, RequestError, RequestLimits, ID_BYTES, SECTOR_SIZE, S_IOERR, S_OK,
    S_UNSUPP,
};
use super::uring::{AsyncKind, Completion, InFlight, UringEngine};
use super::{
    features, BlockConfig, BlockError, BlockMetrics, CacheType, IoEngine, MAX_DISCARD_SECTORS,
    MAX_DISCARD_SEGMENTS, QUEUE_SIZE,
};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::virtio::device::{
    add, complete, device_type, inc, next_chain, notify_if_needed, positions, read_config_bytes,
    undo_pop, ActivateError, Activation, BackendFd, DeviceSignals, VirtioDevice, COMMON_FEATURES,
};
use crate::virtio::sg::{parse_chain, ChainLimits};
use crate::GuestMemoryMmap;

const TOKEN_RATE_LIMITER: u32 = 0;
const TOKEN_URING: u32 = 1;
const CONFIG_SPACE_SIZE: usize = 60;

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    signals: Arc<DeviceSignals>,
}

/// A virtio-blk device.
pub struct Block {
    drive_id: String,
    id: [u8; ID_BYTES],
    cache_type: CacheType,
    disk: Disk,
    engine: Option<UringEngine>,
    limiter: RateLimiter,
    metrics: Arc<BlockMetrics>,
    active: Option<Active>,
    /// Kept from the first activation, to announce capacity changes.
    signals: Option<Arc<DeviceSignals>>,
    config_space: [u8; CONFIG_SPACE_SIZE],
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("drive_id", &self.drive_id)
            .field("path", &self.disk.path())
            .field("active", &self.active.is_some())
            .finish()
    }
}

fn build_config_space(capacity: u64) -> [u8; CONFIG_SPACE_SIZE] {
    let mut c = [0u8; CONFIG_SPACE_SIZE];
    c[0..8].copy_from_slice(&capacity.to_le_bytes());
    // seg_max: the queue minus the header and status descriptors.
    c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
    c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    c[34..36].copy_from_slice(&1u16.to_le_bytes());
    c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
    // Discard granularity: 4 KiB, a filesystem block.
    c[44..48].copy_from_slice(&8u32.to_le_bytes());
    c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[52..56].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[56] = 1;
    c
}

fn drive_id_bytes(id: &str) -> [u8; ID_BYTES] {
    let mut out = [0u8; ID_BYTES];
    let b = id.as_bytes();
    let n = b.len().min(ID_BYTES);
    out[..n].copy_from_slice(&b[..n]);
    out
}

impl Block {
    /// Opens the drive described by `config`.
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let disk = Disk::open(&config.path_on_host, config.is_read_only).map_err(|source| {
            BlockError::Open {
                path: config.path_on_host.clone(),
                source,
            }
        })?;
        let engine = match config.io_engine {
            IoEngine::Sync => None,
            IoEngine::Async => Some(UringEngine::new(u32::from(QUEUE_SIZE))?),
        };
        let limiter = RateLimiter::new(&config.rate_limiter.unwrap_or_default())
            .map_err(BlockError::RateLimiter)?;
        Ok(Self {
            drive_id: config.drive_id.clone(),
            id: drive_id_bytes(&config.drive_id),
            cache_type: config.cache_type,
            config_space: build_config_space(disk.capacity_sectors()),
            disk,
            engine,
            limiter,
            metrics: Arc::new(BlockMetrics::default()),
            active: None,
            signals: None,
        })
    }

    /// [`Block::new`] behind a mutex, as [`crate::virtio::VirtioMmioDevice::new`] wants.
    pub fn shared(config: &BlockConfig) -> Result<Arc<Mutex<Self>>, BlockError> {
        Ok(Arc::new(Mutex::new(Self::new(config)?)))
    }

    /// The drive id.
    pub fn drive_id(&self) -> &str {
        &self.drive_id
    }

    /// True for a read-only drive.
    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    /// Disk size in sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    /// The drive's counters.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Replaces the rate limiter itself (a limiter on a test clock, say).
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) {
        self.limiter = limiter;
    }

    pub(super) fn update_rate_limiter(&mut self, cfg: &RateLimiterConfig) {
        self.limiter.update(cfg);
    }

    pub(super) fn replace_disk(&mut self, disk: Disk) {
        self.finish_in_flight();
        self.disk = disk;
        self.config_space = build_config_space(self.disk.capacity_sectors());
        inc(&self.metrics.path_updates);
        if let Some(s) = &self.signals {
            s.signal_config_change();
        }
    }

    fn limits(&self) -> RequestLimits {
        RequestLimits {
            capacity: self.disk.capacity_sectors(),
            read_only: self.disk.read_only(),
            discard: !self.disk.read_only(),
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_segments: MAX_DISCARD_SEGMENTS,
        }
    }

    /// Waits for in-flight async requests and completes them to the guest.
    fn finish_in_flight(&mut self) {
        if let Some(engine) = self.engine.as_mut() {
            let done = engine.drain();
            self.complete_async(done);
        }
    }

    /// Processes the request queue until it is empty or throttled.
    fn process_queue(&mut self) {
        let limits = self.limits();
        let Self {
            active,
            limiter,
            disk,
            engine,
            metrics,
            id,
            cache_type,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        if limiter.is_blocked() {
            return;
        }
        let chain_limits = ChainLimits {
            max_descriptors: usize::from(a.queue.size()),
            max_bytes: u64::from(u32::MAX),
        };
        let mut used_any = false;
        let mut submitted = false;
        while let Some(chain) = next_chain(&mut a.queue, &a.mem, &a.signals) {
            let head = chain.head_index();
            let parsed = match parse_chain(&a.mem, chain, chain_limits) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!("virtio-blk: bad chain: {e}");
                    inc(&metrics.invalid_requests);
                    used_any |= complete(&mut a.queue, &a.mem, &a.signals, head, 0);
                    continue;
                }
            };
            let req = match parse_request(&parsed, &limits) {
                Ok(r) => r,
                Err(RequestError::NoStatus) => {
                    inc(&metrics.invalid_requests);
                    used_any |= complete(&mut a.queue, &a.mem, &a.signals, head, 0);
                    continue;
                }
                Err(RequestError::Refused { code, status }) => {
                    inc(if code == S_UNSUPP {
                        &metrics.unsupported_requests
                    } else {
                        &metrics.invalid_requests
                    });
                    let _ = a.mem.write_obj(code, status);
                    used_any |= complete(&mut a.queue, &a.mem, &a.signals, head, 1);
                    continue;
                }
            };
            if !limiter.is_unlimited() && !limiter.consume(req.op.data_len()) {
                undo_pop(&mut a.queue);
                inc(&metrics.rate_limited);
                break;
            }
            if let Some(engine) = engine.as_mut() {
                let kind = match &req.op {
                    Operation::Read { .. } => Some(AsyncKind::Read),
                    Operation::Write { .. } => Some(AsyncKind::Write),
                    Operation::Flush if *cache_type == CacheType::Writeback => {
                        Some(AsyncKind::Flush)
                    }
                    _ => None,
                };
                if let Some(kind) = kind {
                    let (offset, iovecs) = match &req.op {
                        Operation::Read { sector, data } | Operation::Write { sector, data } => {
                            (sector * SECTOR_SIZE, data.iovecs())
                        }
                        _ => (0, Vec::new()),
                    };
                    let inflight = InFlight {
                        head,
                        status: req.status,
                        kind,
                        offset,
                        len: req.op.data_len(),
                        iovecs: iovecs.into_boxed_slice(),
                    };
                    if engine.push(disk.as_raw_fd(), inflight).is_err() {
                        // Cannot happen with a ring as deep as the queue;
                        // retry when completions free a slot.
                        undo_pop(&mut a.queue);
                        limiter.give_back(req.op.data_len(), 1);
                        break;
                    }
                    submitted = true;
                    continue;
                }
            }
            let (code, used) = execute(disk, id, *cache_type, &req.op, metrics);
            let _ = a.mem.write_obj(code, req.status);
            used_any |= complete(&mut a.queue, &a.mem, &a.signals, head, used);
        }
        if submitted {
            if let Some(engine) = engine.as_mut() {
                if let Err(e) = engine.submit() {
                    tracing::error!("virtio-blk: io_uring submit failed: {e}");
                }
            }
        }
        if used_any {
            notify_if_needed(&mut a.queue, &a.mem, &a.signals);
        }
    }

    fn complete_async(&mut self, done: Vec<Completion>) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        for c in done {
            let r = &c.request;
            let ok = match (&c.result, r.kind) {
                (Ok(_), AsyncKind::Flush) => true,
                (Ok(n), _) if *n == r.len => true,
                (Ok(n), kind) => {
                    // Short transfer: finish the rest synchronously.
                    let rest = super::disk::skip_iovecs(&r.iovecs, *n as usize);
                    let off = r.offset + n;
                    let res = if kind == AsyncKind::Read {
                        self.disk.read_at(off, &rest)
                    } else {
                        self.disk.write_at(off, &rest)
                    };
                    res.is_ok()
                }
                (Err(e), _) => {
                    tracing::warn!("virtio-blk: async {:?} failed: {e}", r.kind);
                    false
                }
            };
            let m = &self.metrics;
            let used = if ok {
                match r.kind {
                    AsyncKind::Read => {
                        inc(&m.read_count);
                        add(&m.read_bytes, r.len);
                        r.len as u32 + 1
                    }
                    AsyncKind::Write => {
                        inc(&m.write_count);
                        add(&m.write_bytes, r.len);
                        1
                    }
                    AsyncKind::Flush => {
                        inc(&m.flush_count);
                        1
                    }
                }
            } else {
                inc(&m.io_errors);
                1
            };
            let code = if ok { S_OK } else { S_IOERR };
            let _ = a.mem.write_obj(code, r.status);
            used_any |= complete(&mut a.queue, &a.mem, &a.signals, r.head, used);
        }
        if used_any {
            notify_if_needed(&mut a.queue, &a.mem, &a.signals);
        }
    }
}

/// Runs one request synchronously; returns the status and used length.
fn execute(
    disk: &Disk,
    id: &[u8; ID_BYTES],
    cache_type: CacheType,
    op: &Operation<'_>,
    m: &BlockMetrics,
) -> (u8, u32) {
    let result = match op {
        Operation::Read { sector, data } => data
            .with_iovecs(|iov| disk.read_at(sector * SECTOR_SIZE, iov))
            .map(|()| {
                inc(&m.read_count);
                add(&m.read_bytes, data.len() as u64);
                data.len() as u32
            }),
        Operation::Write { sector, data } => data
            .with_iovecs(|iov| disk.write_at(sector * SECTOR_SIZE, iov))
            .map(|()| {
                inc(&m.write_count);
                add(&m.write_bytes, data.len() as u64);
                0
            }),
        Operation::Flush => {
            inc(&m.flush_count);
            match cache_type {
                CacheType::Writeback => disk.flush().map(|()| 0),
                CacheType::Unsafe => Ok(0),
            }
        }
        Operation::GetId { data } => {
            inc(&m.get_id_count);
            Ok(data.write_at(0, &id[..data.len().min(ID_BYTES)]) as u32)
        }
        Operation::Discard { segments } => {
            inc(&m.discard_count);
            segments
                .iter()
                .try_for_each(|s| {
                    disk.punch_hole(s.sector * SECTOR_SIZE, u64::from(s.sectors) * SECTOR_SIZE)
                })
                .map(|()| 0)
        }
        Operation::WriteZeroes { segments } => {
            inc(&m.write_zeroes_count);
            segments
                .iter()
                .try_for_each(|s| {
                    disk.write_zeroes(
                        s.sector * SECTOR_SIZE,
                        u64::from(s.sectors) * SECTOR_SIZE,
                        s.unmap,
                    )
                })
                .map(|()| 0)
        }
    };
    match result {
        Ok(n) => (S_OK, n + 1),
        Err(e) => {
            tracing::warn!("virtio-blk: I/O error: {e}");
            inc(&m.io_errors);
            (S_IOERR, 1)
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn offered_features(&self) -> u64 {
        let mut f = COMMON_FEATURES | (1 << features::SEG_MAX);
        if self.disk.read_only() {
            f |= 1 << features::RO;
        } else {
            f |= (1 << features::DISCARD) | (1 << features::WRITE_ZEROES);
        }
        if self.cache_type == CacheType::Writeback {
            f |= 1 << features::FLUSH;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, mut a: Activation) -> Result<(), ActivateError> {
        if let Err(e) = a.require_ready([0]) {
            inc(&self.metrics.activate_fails);
            return Err(e);
        }
        self.signals = Some(a.signals.clone());
        self.active = Some(Active {
            mem: a.mem,
            queue: a.queues.swap_remove(0),
            signals: a.signals,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // Requests in flight must finish before guest memory is let go;
        // their results are dropped with the queue.
        if let Some(engine) = self.engine.as_mut() {
            engine.drain();
        }
        self.active = None;
        self.limiter.reset_timer();
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Requests in flight on io_uring finish and go to the used ring, so
    /// the saved ring positions leave nothing half done.
    fn prepare_save(&mut self) {
        self.finish_in_flight();
    }

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .as_ref()
            .map(|a| positions([&a.queue]))
            .unwrap_or_default()
    }

    fn queue_notified(&mut self, _index: usize) {
        self.process_queue();
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        let mut v = vec![BackendFd {
            fd: self.limiter.as_raw_fd(),
            token: TOKEN_RATE_LIMITER,
            events: EventSet::IN,
        }];
        if let Some(e) = &self.engine {
            v.push(BackendFd {
                fd: e.as_raw_fd(),
                token: TOKEN_URING,
                events: EventSet::IN,
            });
        }
        v
    }

    fn backend_event(&mut self, token: u32, _events: EventSet) {
        match token {
            TOKEN_RATE_LIMITER if self.limiter.on_timer() => self.process_queue(),
            TOKEN_URING => {
                let done = self.engine.as_mut().map(|e| e.reap()).unwrap_or_default();
                self.complete_async(done);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
