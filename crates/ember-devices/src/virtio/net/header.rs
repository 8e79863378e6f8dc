//! The virtio-net packet header (virtio 1.2 §5.1.6) and the checks on
//! headers the guest sends.
//!
//! With VERSION_1 the header is always 12 bytes, `num_buffers` included.
//! The TAP re-validates GSO headers too, but checking here means a guest
//! cannot make us hand the host kernel a frame that asks for an offload it
//! never negotiated, and malformed frames are counted as such.

/// Bytes of the header.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers`.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// flags: checksum from csum_start, at csum_offset, is to be computed.
pub const F_NEEDS_CSUM: u8 = 1;
/// flags: checksum already validated.
pub const F_DATA_VALID: u8 = 2;
/// flags: RSC coalescing info present.
pub const F_RSC_INFO: u8 = 4;

/// gso_type values.
pub const GSO_NONE: u8 = 0;
/// TCPv4.
pub const GSO_TCPV4: u8 = 1;
/// UDP (UFO).
pub const GSO_UDP: u8 = 3;
/// TCPv6.
pub const GSO_TCPV6: u8 = 4;
/// ECN flag on TCP GSO types.
pub const GSO_ECN: u8 = 0x80;

/// The header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHeader {
    /// F_* flags.
    pub flags: u8,
    /// GSO_* type.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Segment payload size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from csum_start.
    pub csum_offset: u16,
    /// Buffers used (receive, MRG_RXBUF).
    pub num_buffers: u16,
}

impl VnetHeader {
    /// Parses 12 little-endian bytes.
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }
}

/// Which transmit offloads the guest negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOffloads {
    /// VIRTIO_NET_F_CSUM.
    pub csum: bool,
    /// VIRTIO_NET_F_HOST_TSO4.
    pub tso4: bool,
    /// VIRTIO_NET_F_HOST_TSO6.
    pub tso6: bool,
    /// VIRTIO_NET_F_HOST_ECN.
    pub ecn: bool,
}

/// Why a transmitted frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Shorter than the header plus an Ethernet header.
    #[error("frame too short")]
    TooShort,
    /// Longer than any frame we accept.
    #[error("frame too long")]
    TooLong,
    /// Unknown flag bits, or a checksum request not negotiated.
    #[error("bad flags")]
    BadFlags,
    /// Checksum position outside the frame.
    #[error("checksum offset outside the frame")]
    BadChecksumOffset,
    /// GSO type unknown or not negotiated, or bad GSO sizes.
    #[error("bad GSO request")]
    BadGso,
}

/// Smallest frame: header plus an Ethernet header.
pub const MIN_TX_FRAME: usize = VNET_HDR_LEN + 14;
/// Largest frame: header plus a 64 KiB GSO packet with Ethernet and VLAN
/// headers.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65_536 + 18;

/// Checks a guest header against the frame length (header included) and
/// the negotiated offloads.
pub fn validate_tx(
    h: &VnetHeader,
    frame_len: usize,
    offloads: TxOffloads,
) -> Result<(), HeaderError> {
    if frame_len < MIN_TX_FRAME {
        return Err(HeaderError::TooShort);
    }
    if frame_len > MAX_FRAME {
        return Err(HeaderError::TooLong);
    }
    if h.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(HeaderError::BadFlags);
    }
    let payload = frame_len - VNET_HDR_LEN;
    if h.flags & F_NEEDS_CSUM != 0 {
        if !offloads.csum {
            return Err(HeaderError::BadFlags);
        }
        let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
        if end > payload {
            return Err(HeaderError::BadChecksumOffset);
        }
    }
    let ecn = h.gso_type & GSO_ECN != 0;
    let allowed = match h.gso_type & !GSO_ECN {
        GSO_NONE => !ecn,
        GSO_TCPV4 => offloads.tso4 && (!ecn || offloads.ecn),
        GSO_TCPV6 => offloads.tso6 && (!ecn || offloads.ecn),
        _ => false,
    };
    if !allowed {
        return Err(HeaderError::BadGso);
    }
    if h.gso_type != GSO_NONE
        && (h.gso_size == 0 || h.flags & F_NEEDS_CSUM == 0 || usize::from(h.hdr_len) > payload)
    {
        return Err(HeaderError::BadGso);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: TxOffloads = TxOffloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
    };

    fn hdr(flags: u8, gso: u8) -> VnetHeader {
        VnetHeader {
            flags,
            gso_type: gso,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    #[test]
    fn parses_little_endian_fields() {
        let b = [1, 4, 0x36, 0, 0xa8, 5, 0x22, 0, 0x10, 0, 1, 0];
        let h = VnetHeader::from_bytes(&b);
        assert_eq!(
            h,
            VnetHeader {
                num_buffers: 1,
                ..hdr(1, 4)
            }
        );
    }

    #[test]
    fn plain_frames_pass_and_sizes_are_bounded() {
        let h = VnetHeader::default();
        assert_eq!(validate_tx(&h, 60, TxOffloads::default()), Ok(()));
        assert_eq!(validate_tx(&h, 20, ALL), Err(HeaderError::TooShort));
        assert_eq!(
            validate_tx(&h, MAX_FRAME + 1, ALL),
            Err(HeaderError::TooLong)
        );
    }

    #[test]
    fn offloads_need_negotiation() {
        let tso = hdr(F_NEEDS_CSUM, GSO_TCPV4);
        assert_eq!(validate_tx(&tso, 3000, ALL), Ok(()));
        let no_tso = TxOffloads { tso4: false, ..ALL };
        assert_eq!(validate_tx(&tso, 3000, no_tso), Err(HeaderError::BadGso));
        let csum = hdr(F_NEEDS_CSUM, GSO_NONE);
        assert_eq!(
            validate_tx(&csum, 3000, TxOffloads::default()),
            Err(HeaderError::BadFlags)
        );
        let ecn = hdr(F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN);
        let no_ecn = TxOffloads { ecn: false, ..ALL };
        assert_eq!(validate_tx(&ecn, 3000, no_ecn), Err(HeaderError::BadGso));
        assert_eq!(
            validate_tx(&hdr(F_NEEDS_CSUM, GSO_UDP), 3000, ALL),
            Err(HeaderError::BadGso)
        );
    }

    #[test]
    fn lying_offsets_are_refused() {
        let mut h = hdr(F_NEEDS_CSUM, GSO_NONE);
        h.csum_start = 60;
        assert_eq!(
            validate_tx(&h, 12 + 70, ALL),
            Err(HeaderError::BadChecksumOffset)
        );
        let mut g = hdr(F_NEEDS_CSUM, GSO_TCPV4);
        g.gso_size = 0;
        assert_eq!(validate_tx(&g, 3000, ALL), Err(HeaderError::BadGso));
        g.gso_size = 1448;
        g.hdr_len = 5000;
        assert_eq!(validate_tx(&g, 3000, ALL), Err(HeaderError::BadGso));
        assert_eq!(
            validate_tx(&hdr(0x40, 0), 100, ALL),
            Err(HeaderError::BadFlags)
        );
    }
}
