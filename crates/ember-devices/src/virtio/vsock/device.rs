//! The virtio-vsock device: moves packets between the queues and the
//! [`VsockMuxer`].

use std::sync::{Arc, Mutex};

use event_manager::EventSet;
use virtio_queue::{Queue, QueueT};

use super::muxer::VsockMuxer;
use super::packet::{
    validate_guest_packet, Header, PacketError, EVENT_TRANSPORT_RESET, HDR_LEN, MAX_PAYLOAD, OP_RST,
};
use super::{VsockConfig, VsockError, VsockMetrics, QUEUE_SIZE};
use crate::virtio::device::{
    complete, device_type, inc, next_chain, notify_if_needed, positions, read_config_bytes,
    undo_pop, ActivateError, Activation, BackendFd, DeviceSignals, VirtioDevice, COMMON_FEATURES,
};
use crate::virtio::sg::{parse_chain, ChainLimits};
use crate::GuestMemoryMmap;

const RX: usize = 0;
const TX: usize = 1;
const EVQ: usize = 2;
const TOKEN_EPOLL: u32 = 0;
const TOKEN_TIMER: u32 = 1;

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    signals: Arc<DeviceSignals>,
}

/// A virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    muxer: VsockMuxer,
    metrics: Arc<VsockMetrics>,
    active: Option<Active>,
    reset_event_pending: bool,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("muxer", &self.muxer)
            .finish()
    }
}

impl Vsock {
    /// Binds the listening socket and builds the device.
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        if config.guest_cid <= 2 || config.guest_cid == u32::MAX {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        let metrics = Arc::new(VsockMetrics::default());
        let cid = u64::from(config.guest_cid);
        let muxer = VsockMuxer::new(cid, &config.uds_path, metrics.clone()).map_err(|source| {
            VsockError::Listen {
                path: config.uds_path.clone(),
                source,
            }
        })?;
        Ok(Self {
            guest_cid: cid,
            muxer,
            metrics,
            active: None,
            reset_event_pending: false,
        })
    }

    /// [`Vsock::new`] behind a mutex.
    pub fn shared(config: &VsockConfig) -> Result<Arc<Mutex<Self>>, VsockError> {
        Ok(Arc::new(Mutex::new(Self::new(config)?)))
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.muxer.connections()
    }

    pub(super) fn reset_transport(&mut self) {
        self.muxer.reset_all();
        self.reset_event_pending = true;
        self.send_events();
    }

    fn send_events(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if !self.reset_event_pending {
            return;
        }
        let q = &mut a.queues[EVQ];
        let Some(chain) = next_chain(q, &a.mem, &a.signals) else {
            return;
        };
        let head = chain.head_index();
        let limits = ChainLimits {
            max_descriptors: usize::from(q.size()),
            max_bytes: u64::from(u32::MAX),
        };
        let len = match parse_chain(&a.mem, chain, limits) {
            Ok(c) if c.writable.len() >= 4 => {
                c.writable.write_at(0, &EVENT_TRANSPORT_RESET.to_le_bytes());
                self.reset_event_pending = false;
                inc(&self.metrics.transport_resets);
                4
            }
            _ => 0,
        };
        if complete(q, &a.mem, &a.signals, head, len) {
            notify_if_needed(q, &a.mem, &a.signals);
        }
    }

    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let q = &mut a.queues[TX];
        let limits = ChainLimits {
            max_descriptors: usize::from(q.size()),
            max_bytes: 2 * (HDR_LEN + MAX_PAYLOAD) as u64,
        };
        let mut used_any = false;
        while let Some(chain) = next_chain(q, &a.mem, &a.signals) {
            let head = chain.head_index();
            match parse_chain(&a.mem, chain, limits) {
                Ok(c) if c.writable.is_empty() => {
                    let mut raw = [0u8; HDR_LEN];
                    if c.readable.read_at(0, &mut raw) < HDR_LEN {
                        inc(&self.metrics.malformed_packets);
                    } else {
                        let h = Header::from_bytes(&raw);
                        let avail = c.readable.len() - HDR_LEN;
                        match validate_guest_packet(&h, self.guest_cid, avail) {
                            Ok(()) => {
                                let payload = c.readable.sub(HDR_LEN, h.len as usize);
                                self.muxer.handle_guest_packet(&h, &payload);
                            }
                            Err(PacketError::Refused) => {
                                inc(&self.metrics.malformed_packets);
                                if h.op != OP_RST {
                                    self.muxer.refuse(&h);
                                }
                            }
                            Err(_) => inc(&self.metrics.malformed_packets),
                        }
                    }
                }
                _ => inc(&self.metrics.malformed_packets),
            }
            used_any |= complete(q, &a.mem, &a.signals, head, 0);
        }
        if used_any {
            notify_if_needed(q, &a.mem, &a.signals);
        }
    }

    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let q = &mut a.queues[RX];
        let limits = ChainLimits {
            max_descriptors: usize::from(q.size()),
            max_bytes: u64::from(u32::MAX),
        };
        let mut used_any = false;
        while self.muxer.has_rx_work() {
            let Some(chain) = next_chain(q, &a.mem, &a.signals) else {
                break;
            };
            let head = chain.head_index();
            match parse_chain(&a.mem, chain, limits) {
                Ok(c) if c.readable.is_empty() && c.writable.len() >= HDR_LEN => {
                    match self.muxer.fill_rx(&c.writable) {
                        Some(n) => used_any |= complete(q, &a.mem, &a.signals, head, n as u32),
                        None => {
                            undo_pop(q);
                            break;
                        }
                    }
                }
                _ => {
                    inc(&self.metrics.malformed_packets);
                    used_any |= complete(q, &a.mem, &a.signals, head, 0);
                }
            }
        }
        if used_any {
            notify_if_needed(q, &a.mem, &a.signals);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn offered_features(&self) -> u64 {
        COMMON_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if let Err(e) = a.require_ready([RX, TX, EVQ]) {
            inc(&self.metrics.activate_fails);
            return Err(e);
        }
        self.active = Some(Active {
            mem: a.mem,
            queues: a.queues,
            signals: a.signals,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // The guest's sockets are gone with its driver.
        self.muxer.reset_all();
        self.active = None;
        self.reset_event_pending = false;
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn queue_positions(&self) -> Vec<(u16, u16)> {
        self.active
            .as_ref()
            .map(|a| positions(&a.queues))
            .unwrap_or_default()
    }

    /// The host connections the guest had did not survive the snapshot:
    /// tell the guest with a transport-reset event (now if it left an event
    /// buffer, else when it adds one), as Firecracker does.
    fn restored(&mut self) {
        self.reset_transport();
    }

    fn queue_notified(&mut self, index: usize) {
        match index {
            RX => self.process_rx(),
            TX => {
                self.process_tx();
                self.process_rx();
            }
            EVQ => self.send_events(),
            _ => {}
        }
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        vec![
            BackendFd {
                fd: self.muxer.epoll_fd(),
                token: TOKEN_EPOLL,
                events: EventSet::IN,
            },
            BackendFd {
                fd: self.muxer.timer_fd(),
                token: TOKEN_TIMER,
                events: EventSet::IN,
            },
        ]
    }

    fn backend_event(&mut self, token: u32, _events: EventSet) {
        match token {
            TOKEN_EPOLL => self.muxer.process_host_events(),
            TOKEN_TIMER => self.muxer.on_timer(),
            _ => return,
        }
        self.process_rx();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
