//! The virtio-net device: receive and transmit paths over a [`NetBackend`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::EventSet;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::header::{
    validate_tx, TxOffloads, VnetHeader, MAX_FRAME, NUM_BUFFERS_OFFSET, VNET_HDR_LEN,
};
use super::tap::{offload, NetBackend, Tap};
use super::{features, MacAddr, NetConfig, NetError, NetMetrics, QUEUE_SIZE};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::virtio::device::{
    add, complete, device_type, inc, next_chain, notify_if_needed, positions, read_config_bytes,
    undo_pop, ActivateError, Activation, BackendFd, DeviceSignals, VirtioDevice, COMMON_FEATURES,
};
use crate::virtio::sg::{parse_chain, ChainLimits, GuestSg};
use crate::GuestMemoryMmap;

const RX: usize = 0;
const TX: usize = 1;
const TOKEN_BACKEND: u32 = 0;
const TOKEN_RX_LIMITER: u32 = 1;
const TOKEN_TX_LIMITER: u32 = 2;
/// Largest frame without guest GSO: header, Ethernet, VLAN, 1500 MTU.
const MAX_FRAME_NO_GSO: usize = VNET_HDR_LEN + 1518;

/// A receive buffer taken from the ring and not yet used.
struct RxBuffer {
    head: u16,
    segments: Vec<(GuestAddress, usize)>,
    len: usize,
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    signals: Arc<DeviceSignals>,
    mrg_rxbuf: bool,
    max_rx_frame: usize,
    tx_offloads: TxOffloads,
    /// Receive buffers held until a frame fills them, in the order they
    /// were taken from the available ring.
    held: VecDeque<RxBuffer>,
    held_bytes: usize,
    /// How many of the newest held buffers were the last chains taken from
    /// the available ring (no chain was taken and completed after the
    /// first of them); those can be given back by moving `next_avail`.
    held_tail: usize,
}

/// A virtio-net device.
pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: Option<MacAddr>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    metrics: Arc<NetMetrics>,
    active: Option<Active>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("active", &self.active.is_some())
            .finish()
    }
}

fn has(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}

/// A guest sg list over held buffers' segments.
fn sg_of<'m>(mem: &'m GuestMemoryMmap, bufs: &[&RxBuffer]) -> GuestSg<'m> {
    let mut sg = GuestSg::new();
    for b in bufs {
        for &(addr, len) in &b.segments {
            if let Ok(s) = GuestMemoryBackend::get_slice(mem, addr, len) {
                sg.push_slice(addr, s);
            }
        }
    }
    sg
}

impl Net {
    /// Opens the TAP named in `config`.
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        let tap = Tap::open(&config.host_dev_name).map_err(|source| NetError::Tap {
            name: config.host_dev_name.clone(),
            source,
        })?;
        Self::with_backend(config, Box::new(tap))
    }

    /// A device on any back end (tests use a fake).
    pub fn with_backend(
        config: &NetConfig,
        backend: Box<dyn NetBackend>,
    ) -> Result<Self, NetError> {
        let rl = |c: &Option<RateLimiterConfig>| {
            RateLimiter::new(&c.unwrap_or_default()).map_err(NetError::RateLimiter)
        };
        Ok(Self {
            backend,
            mac: config.guest_mac,
            rx_limiter: rl(&config.rx_rate_limiter)?,
            tx_limiter: rl(&config.tx_rate_limiter)?,
            metrics: Arc::new(NetMetrics::default()),
            active: None,
        })
    }

    /// [`Net::new`] behind a mutex.
    pub fn shared(config: &NetConfig) -> Result<Arc<Mutex<Self>>, NetError> {
        Ok(Arc::new(Mutex::new(Self::new(config)?)))
    }

    /// The interface's counters.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// Replaces the limiters themselves (limiters on a test clock, say).
    pub fn set_rate_limiters(&mut self, rx: RateLimiter, tx: RateLimiter) {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
    }

    pub(super) fn update_rate_limiters(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) {
        if let Some(c) = rx {
            self.rx_limiter.update(c);
        }
        if let Some(c) = tx {
            self.tx_limiter.update(c);
        }
    }

    /// Moves frames from the back end into receive buffers until either runs
    /// out or the limiter stops us.
    fn process_rx(&mut self) {
        let Self {
            active,
            backend,
            rx_limiter,
            metrics,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        let mut used_any = false;
        loop {
            if !rx_limiter.is_unlimited() && !rx_limiter.has_tokens() {
                inc(&metrics.rx_rate_limited);
                break;
            }
            // Take buffers: enough for a maximum frame with MRG_RXBUF, one
            // buffer (one frame) without.
            let limits = ChainLimits {
                max_descriptors: usize::from(a.rx.size()),
                max_bytes: u64::from(u32::MAX),
            };
            while if a.mrg_rxbuf {
                a.held_bytes < a.max_rx_frame
            } else {
                a.held.is_empty()
            } {
                let Some(chain) = next_chain(&mut a.rx, &a.mem, &a.signals) else {
                    break;
                };
                let head = chain.head_index();
                match parse_chain(&a.mem, chain, limits) {
                    Ok(c) if c.readable.is_empty() && c.writable.len() >= VNET_HDR_LEN => {
                        let segments = c.writable.slices().map(|(a, s)| (a, s.len())).collect();
                        a.held_bytes += c.writable.len();
                        a.held.push_back(RxBuffer {
                            head,
                            segments,
                            len: c.writable.len(),
                        });
                        a.held_tail += 1;
                    }
                    _ => {
                        inc(&metrics.rx_errors);
                        a.held_tail = 0;
                        used_any |= complete(&mut a.rx, &a.mem, &a.signals, head, 0);
                    }
                }
            }
            if a.held.is_empty()
                || (a.mrg_rxbuf
                    && a.held_bytes < a.max_rx_frame
                    && a.held.len() < usize::from(a.rx.size()))
            {
                // Wait for the guest to add buffers (notifications are
                // re-armed); the frame stays in the back end.
                inc(&metrics.rx_no_buffers);
                break;
            }
            let count = if a.mrg_rxbuf { a.held.len() } else { 1 };
            let bufs: Vec<&RxBuffer> = a.held.iter().take(count).collect();
            let sg = sg_of(&a.mem, &bufs);
            match backend.read_frame(&sg) {
                Ok(n) if n >= VNET_HDR_LEN => {
                    let mut left = n;
                    let mut used = 0u16;
                    let mut parts = Vec::new();
                    for b in &bufs {
                        if left == 0 {
                            break;
                        }
                        let take = left.min(b.len);
                        parts.push((b.head, take as u32));
                        left -= take;
                        used += 1;
                    }
                    sg.write_at(NUM_BUFFERS_OFFSET, &used.to_le_bytes());
                    for (head, len) in parts {
                        used_any |= complete(&mut a.rx, &a.mem, &a.signals, head, len);
                        if let Some(b) = a.held.pop_front() {
                            a.held_bytes -= b.len;
                        }
                    }
                    a.held_tail = a.held_tail.min(a.held.len());
                    inc(&metrics.rx_packets);
                    add(&metrics.rx_bytes, n as u64);
                    if !rx_limiter.is_unlimited() {
                        rx_limiter.charge(n as u64);
                    }
                }
                Ok(_) => inc(&metrics.rx_dropped),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EFAULT | libc::EINVAL | libc::EMSGSIZE)
                    ) =>
                {
                    // The frame did not fit and was dropped by the back end.
                    inc(&metrics.rx_dropped);
                }
                Err(e) => {
                    tracing::warn!("virtio-net: receive failed: {e}");
                    inc(&metrics.rx_errors);
                    break;
                }
            }
        }
        if used_any {
            notify_if_needed(&mut a.rx, &a.mem, &a.signals);
        }
    }

    /// Gives the held receive buffers back to the guest's available ring,
    /// for a snapshot: the newest run of them taken in a row is un-taken by
    /// moving the queue's `next_avail` back, so the device (or a restored
    /// one) takes them again in the same order. Buffers held from before a
    /// malformed chain the device already returned cannot be un-taken that
    /// way (the malformed one would be taken twice): those are returned
    /// empty (length 0), which a driver treats as a dropped frame; only a
    /// driver that posts malformed receive chains ever sees that.
    fn give_back_rx_buffers(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let tail = a.held_tail.min(a.held.len());
        let returned = a.held.len() - tail;
        let mut used_any = false;
        for b in a.held.drain(..returned) {
            used_any |= complete(&mut a.rx, &a.mem, &a.signals, b.head, 0);
        }
        if returned > 0 {
            tracing::warn!("virtio-net: {returned} receive buffers returned empty for a snapshot");
        }
        a.rx.set_next_avail(a.rx.next_avail().wrapping_sub(tail as u16));
        a.held.clear();
        a.held_bytes = 0;
        a.held_tail = 0;
        if used_any {
            notify_if_needed(&mut a.rx, &a.mem, &a.signals);
        }
    }

    /// Sends the guest's frames until the queue is empty or the limiter
    /// stops us.
    fn process_tx(&mut self) {
        let Self {
            active,
            backend,
            tx_limiter,
            metrics,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        let limits = ChainLimits {
            max_descriptors: usize::from(a.tx.size()),
            max_bytes: MAX_FRAME as u64,
        };
        let mut used_any = false;
        while !tx_limiter.is_blocked() {
            let Some(chain) = next_chain(&mut a.tx, &a.mem, &a.signals) else {
                break;
            };
            let head = chain.head_index();
            let frame = match parse_chain(&a.mem, chain, limits) {
                Ok(c) if c.writable.is_empty() => {
                    let mut h = [0u8; VNET_HDR_LEN];
                    let hdr_ok = c.readable.read_at(0, &mut h) == VNET_HDR_LEN;
                    let hdr = VnetHeader::from_bytes(&h);
                    if hdr_ok && validate_tx(&hdr, c.readable.len(), a.tx_offloads).is_ok() {
                        Some(c.readable)
                    } else {
                        None
                    }
                }
                _ => None,
            };
            let Some(frame) = frame else {
                inc(&metrics.tx_malformed);
                used_any |= complete(&mut a.tx, &a.mem, &a.signals, head, 0);
                continue;
            };
            if !tx_limiter.is_unlimited() && !tx_limiter.consume(frame.len() as u64) {
                undo_pop(&mut a.tx);
                inc(&metrics.tx_rate_limited);
                break;
            }
            match backend.write_frame(&frame) {
                Ok(_) => {
                    inc(&metrics.tx_packets);
                    add(&metrics.tx_bytes, frame.len() as u64);
                }
                Err(e) => {
                    // A NIC whose link cannot take the frame drops it.
                    tracing::debug!("virtio-net: transmit failed: {e}");
                    inc(&metrics.tx_errors);
                }
            }
            used_any |= complete(&mut a.tx, &a.mem, &a.signals, head, 0);
        }
        if used_any {
            notify_if_needed(&mut a.tx, &a.mem, &a.signals);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn offered_features(&self) -> u64 {
        let mut f = COMMON_FEATURES;
        for bit in [
            features::CSUM,
            features::GUEST_CSUM,
            features::GUEST_TSO4,
            features::GUEST_TSO6,
            features::GUEST_ECN,
            features::HOST_TSO4,
            features::HOST_TSO6,
            features::HOST_ECN,
            features::MRG_RXBUF,
        ] {
            f |= 1 << bit;
        }
        if self.mac.is_some() {
            f |= 1 << features::MAC;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; 12];
        if let Some(m) = self.mac {
            space[..6].copy_from_slice(&m.0);
        }
        read_config_bytes(&space, offset, data);
    }

    fn activate(&mut self, mut a: Activation) -> Result<(), ActivateError> {
        if let Err(e) = a.require_ready([RX, TX]) {
            inc(&self.metrics.activate_fails);
            return Err(e);
        }
        let f = a.features;
        // What the guest accepts on receive decides the TAP's offloads.
        let mut tun = 0;
        if has(f, features::GUEST_CSUM) {
            tun |= offload::CSUM;
            if has(f, features::GUEST_TSO4) {
                tun |= offload::TSO4;
            }
            if has(f, features::GUEST_TSO6) {
                tun |= offload::TSO6;
            }
            if has(f, features::GUEST_ECN) && tun & (offload::TSO4 | offload::TSO6) != 0 {
                tun |= offload::TSO_ECN;
            }
        }
        if let Err(e) = self.backend.set_offloads(tun) {
            inc(&self.metrics.activate_fails);
            return Err(ActivateError::Backend(format!("TUNSETOFFLOAD: {e}")));
        }
        let gso = tun & (offload::TSO4 | offload::TSO6) != 0;
        let tx = a.queues.swap_remove(TX);
        let rx = a.queues.swap_remove(RX);
        self.active = Some(Active {
            mem: a.mem,
            rx,
            tx,
            signals: a.signals,
            mrg_rxbuf: has(f, features::MRG_RXBUF),
            max_rx_frame: if gso { MAX_FRAME } else { MAX_FRAME_NO_GSO },
            tx_offloads: TxOffloads {
                csum: has(f, features::CSUM),
                tso4: has(f, features::HOST_TSO4),
                tso6: has(f, features::HOST_TSO6),
                ecn: has(f, features::HOST_ECN),
            },
            held: VecDeque::new(),
            held_bytes: 0,
            held_tail: 0,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_limiter.reset_timer();
        self.tx_limiter.reset_timer();
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn prepare_save(&mut self) {
        self.give_back_rx_buffers();
    }

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .as_ref()
            .map(|a| positions([&a.rx, &a.tx]))
            .unwrap_or_default()
    }

    fn queue_notified(&mut self, index: usize) {
        match index {
            RX => self.process_rx(),
            TX => self.process_tx(),
            _ => {}
        }
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        vec![
            BackendFd {
                fd: self.backend.readable_fd(),
                token: TOKEN_BACKEND,
                events: EventSet::IN | EventSet::EDGE_TRIGGERED,
            },
            BackendFd {
                fd: self.rx_limiter.as_raw_fd(),
                token: TOKEN_RX_LIMITER,
                events: EventSet::IN,
            },
            BackendFd {
                fd: self.tx_limiter.as_raw_fd(),
                token: TOKEN_TX_LIMITER,
                events: EventSet::IN,
            },
        ]
    }

    fn backend_event(&mut self, token: u32, _events: EventSet) {
        match token {
            TOKEN_BACKEND => self.process_rx(),
            TOKEN_RX_LIMITER if self.rx_limiter.on_timer() => self.process_rx(),
            TOKEN_TX_LIMITER if self.tx_limiter.on_timer() => self.process_tx(),
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
