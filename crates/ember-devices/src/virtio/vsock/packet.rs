//! The virtio-vsock packet header (virtio 1.2 §5.10.6) and the checks on
//! packets the guest sends.

/// Bytes of the header.
pub const HDR_LEN: usize = 44;
/// Largest payload of one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The host's CID.
pub const HOST_CID: u64 = 2;

/// Socket type: stream (the only one supported).
pub const TYPE_STREAM: u16 = 1;

/// Operations.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset or refused.
pub const OP_RST: u16 = 3;
/// No more sending and/or receiving.
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// Here is my credit.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Tell me your credit.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// Event id: transport reset.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// A packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

impl Header {
    /// Parses 44 little-endian bytes.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Serializes to 44 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// What to do with a packet from the guest that is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain is shorter than a header.
    #[error("packet shorter than its header")]
    ShortHeader,
    /// `len` is larger than the buffers hold, or than any packet may be.
    #[error("payload length does not match the buffers")]
    BadLength,
    /// A spoofed source CID: dropped silently.
    #[error("source CID is not the guest's")]
    BadSource,
    /// Not for the host, not a stream, or an unknown operation: answered
    /// with a reset (unless it is a reset).
    #[error("packet refused")]
    Refused,
}

/// Checks a guest packet's header against the guest's CID and the number
/// of payload bytes its buffers really hold.
pub fn validate_guest_packet(
    h: &Header,
    guest_cid: u64,
    payload_avail: usize,
) -> Result<(), PacketError> {
    let len = h.len as usize;
    if len > MAX_PAYLOAD || len > payload_avail {
        return Err(PacketError::BadLength);
    }
    if h.src_cid != guest_cid {
        return Err(PacketError::BadSource);
    }
    if h.dst_cid != HOST_CID || h.type_ != TYPE_STREAM {
        return Err(PacketError::Refused);
    }
    if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&h.op) {
        return Err(PacketError::Refused);
    }
    if h.op != OP_RW && len != 0 {
        return Err(PacketError::BadLength);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    #[test]
    fn round_trips_bytes() {
        let h = Header {
            src_cid: 0x1122_3344_5566_7788,
            fwd_cnt: 0xdead_beef,
            ..pkt(OP_RW, 7)
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[30], OP_RW as u8);
    }

    #[test]
    fn validation() {
        assert_eq!(validate_guest_packet(&pkt(OP_RW, 10), 3, 10), Ok(()));
        assert_eq!(
            validate_guest_packet(&pkt(OP_RW, 11), 3, 10),
            Err(PacketError::BadLength)
        );
        assert_eq!(
            validate_guest_packet(&pkt(OP_RW, 70_000), 3, 100_000),
            Err(PacketError::BadLength)
        );
        assert_eq!(
            validate_guest_packet(&pkt(OP_RW, 0), 4, 0),
            Err(PacketError::BadSource)
        );
        let mut h = pkt(OP_REQUEST, 0);
        h.dst_cid = 7;
        assert_eq!(validate_guest_packet(&h, 3, 0), Err(PacketError::Refused));
        h = pkt(OP_REQUEST, 0);
        h.type_ = 2;
        assert_eq!(validate_guest_packet(&h, 3, 0), Err(PacketError::Refused));
        assert_eq!(
            validate_guest_packet(&pkt(9, 0), 3, 0),
            Err(PacketError::Refused)
        );
        assert_eq!(
            validate_guest_packet(&pkt(OP_REQUEST, 5), 3, 5),
            Err(PacketError::BadLength)
        );
    }
}
