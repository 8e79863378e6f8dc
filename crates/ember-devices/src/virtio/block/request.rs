//! virtio-blk request parsing and validation (virtio 1.2 §5.2.6).
//!
//! A request is a checked chain: the device-readable stream starts with a
//! 16-byte header (`type`, `reserved`, `sector`), followed by data for
//! writes or discard/write-zeroes segments; the device-writable stream holds
//! data for reads or GET_ID, and ends with the one status byte. Everything
//! the guest claims is checked against what the buffers really hold and
//! against the disk's size before any I/O.

use vm_memory::GuestAddress;

use crate::virtio::sg::{GuestSg, ParsedChain};

/// Sector size: all offsets and lengths are in 512-byte sectors.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of the request header.
pub const HEADER_SIZE: usize = 16;
/// Bytes of one discard / write-zeroes segment.
pub const SEGMENT_SIZE: usize = 16;
/// Bytes of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// Request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Device id.
pub const T_GET_ID: u32 = 8;
/// Discard.
pub const T_DISCARD: u32 = 11;
/// Write zeroes.
pub const T_WRITE_ZEROES: u32 = 13;

/// Status values.
pub const S_OK: u8 = 0;
/// I/O or request error.
pub const S_IOERR: u8 = 1;
/// Unsupported request.
pub const S_UNSUPP: u8 = 2;

/// Write-zeroes segment flag: the device may deallocate.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Limits the device advertises and enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Disk size in sectors.
    pub capacity: u64,
    /// Whether writes are refused.
    pub read_only: bool,
    /// Whether DISCARD and WRITE_ZEROES are offered.
    pub discard: bool,
    /// Largest discard / write-zeroes segment, in sectors.
    pub max_discard_sectors: u32,
    /// Most segments in one discard / write-zeroes request.
    pub max_discard_segments: u32,
}

/// One discard or write-zeroes range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First sector.
    pub sector: u64,
    /// Sector count.
    pub sectors: u32,
    /// Unmap allowed (write-zeroes only).
    pub unmap: bool,
}

/// What a valid request asks for.
#[derive(Debug)]
pub enum Operation<'m> {
    /// Read `data.len()` bytes from `sector` into guest memory.
    Read { sector: u64, data: GuestSg<'m> },
    /// Write `data` at `sector`.
    Write { sector: u64, data: GuestSg<'m> },
    /// Make completed writes durable.
    Flush,
    /// Write the device id into `data` (up to 20 bytes).
    GetId { data: GuestSg<'m> },
    /// Deallocate ranges.
    Discard { segments: Vec<Segment> },
    /// Zero ranges.
    WriteZeroes { segments: Vec<Segment> },
}

impl Operation<'_> {
    /// Bytes moved, for rate limiting and metrics.
    pub fn data_len(&self) -> u64 {
        match self {
            Operation::Read { data, .. } | Operation::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

/// A valid request with where to put its status byte.
#[derive(Debug)]
pub struct Request<'m> {
    /// The operation.
    pub op: Operation<'m>,
    /// Guest address of the status byte.
    pub status: GuestAddress,
}

/// A request that is not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No device-writable byte for the status: nothing can be reported; the
    /// chain is returned with length 0.
    #[error("no status byte")]
    NoStatus,
    /// Refused with the given status byte at `status`.
    #[error("request refused with status {code}")]
    Refused {
        /// Status byte to write.
        code: u8,
        /// Where to write it.
        status: GuestAddress,
    },
}

fn refuse(code: u8, status: GuestAddress) -> RequestError {
    RequestError::Refused { code, status }
}

fn read_le<const N: usize>(sg: &GuestSg<'_>, offset: usize) -> Option<[u8; N]> {
    let mut b = [0u8; N];
    (sg.read_at(offset, &mut b) == N).then_some(b)
}

fn check_range(sector: u64, bytes: u64, limits: &RequestLimits) -> bool {
    bytes.is_multiple_of(SECTOR_SIZE)
        && sector
            .checked_add(bytes / SECTOR_SIZE)
            .is_some_and(|end| end <= limits.capacity)
}

fn parse_segments(
    sg: &GuestSg<'_>,
    write_zeroes: bool,
    limits: &RequestLimits,
    status: GuestAddress,
) -> Result<Vec<Segment>, RequestError> {
    if sg.is_empty() || !sg.len().is_multiple_of(SEGMENT_SIZE) {
        return Err(refuse(S_IOERR, status));
    }
    let count = sg.len() / SEGMENT_SIZE;
    if count > limits.max_discard_segments as usize {
        return Err(refuse(S_IOERR, status));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let raw: [u8; SEGMENT_SIZE] =
            read_le(sg, i * SEGMENT_SIZE).ok_or_else(|| refuse(S_IOERR, status))?;
        let sector = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let sectors = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(raw[12..16].try_into().unwrap_or_default());
        // Discard has no flags; write-zeroes knows only UNMAP.
        let known = if write_zeroes {
            WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !known != 0 {
            return Err(refuse(S_UNSUPP, status));
        }
        if sectors > limits.max_discard_sectors
            || !check_range(sector, u64::from(sectors) * SECTOR_SIZE, limits)
        {
            return Err(refuse(S_IOERR, status));
        }
        out.push(Segment {
            sector,
            sectors,
            unmap: flags & WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    Ok(out)
}

/// Validates a checked chain as a virtio-blk request.
pub fn parse_request<'m>(
    chain: &ParsedChain<'m>,
    limits: &RequestLimits,
) -> Result<Request<'m>, RequestError> {
    let w = &chain.writable;
    let r = &chain.readable;
    if w.is_empty() {
        return Err(RequestError::NoStatus);
    }
    let status_off = w.len() - 1;
    let status = w.addr_of(status_off).ok_or(RequestError::NoStatus)?;
    let header: [u8; HEADER_SIZE] = read_le(r, 0).ok_or_else(|| refuse(S_IOERR, status))?;
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let payload_in = r.sub(HEADER_SIZE, r.len() - HEADER_SIZE);
    let payload_out = w.sub(0, status_off);
    let only_status = payload_out.is_empty();
    let no_payload_in = payload_in.is_empty();
    let op = match kind {
        T_IN => {
            if !no_payload_in || !check_range(sector, payload_out.len() as u64, limits) {
                return Err(refuse(S_IOERR, status));
            }
            Operation::Read {
                sector,
                data: payload_out,
            }
        }
        T_OUT => {
            if limits.read_only {
                return Err(refuse(S_IOERR, status));
            }
            if !only_status || !check_range(sector, payload_in.len() as u64, limits) {
                return Err(refuse(S_IOERR, status));
            }
            Operation::Write {
                sector,
                data: payload_in,
            }
        }
        T_FLUSH => {
            if !only_status || !no_payload_in {
                return Err(refuse(S_IOERR, status));
            }
            Operation::Flush
        }
        T_GET_ID => {
            if !no_payload_in || payload_out.is_empty() {
                return Err(refuse(S_IOERR, status));
            }
            let n = payload_out.len().min(ID_BYTES);
            Operation::GetId {
                data: payload_out.sub(0, n),
            }
        }
        T_DISCARD | T_WRITE_ZEROES => {
            if !limits.discard {
                return Err(refuse(S_UNSUPP, status));
            }
            if limits.read_only {
                return Err(refuse(S_IOERR, status));
            }
            if !only_status {
                return Err(refuse(S_IOERR, status));
            }
            let wz = kind == T_WRITE_ZEROES;
            let segments = parse_segments(&payload_in, wz, limits, status)?;
            if wz {
                Operation::WriteZeroes { segments }
            } else {
                Operation::Discard { segments }
            }
        }
        _ => return Err(refuse(S_UNSUPP, status)),
    };
    Ok(Request { op, status })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::sg::{parse_chain, ChainLimits};
    use crate::virtio::testing::{guest_memory, Desc, TestQueue};
    use crate::GuestMemoryMmap;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::Bytes;

    const LIMITS: RequestLimits = RequestLimits {
        capacity: 100,
        read_only: false,
        discard: true,
        max_discard_sectors: 64,
        max_discard_segments: 2,
    };

    fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn one(
        mem: &GuestMemoryMmap,
        descs: &[Desc],
        limits: &RequestLimits,
    ) -> Result<u64, RequestError> {
        let mut tq = TestQueue::new(mem, GuestAddress(0x1000), 16);
        tq.add_chain(descs);
        let mut q: Queue = tq.queue(false);
        let chain = q.pop_descriptor_chain(mem).unwrap();
        let limits_c = ChainLimits {
            max_descriptors: 16,
            max_bytes: 1 << 30,
        };
        let c = parse_chain(mem, chain, limits_c).unwrap();
        parse_request(&c, limits).map(|r| r.op.data_len())
    }

    fn refused(code: u8, at: u64) -> Result<u64, RequestError> {
        Err(RequestError::Refused {
            code,
            status: GuestAddress(at),
        })
    }

    #[test]
    fn valid_reads_writes_and_flush() {
        let m = guest_memory(0x10_0000);
        header(&m, 0x8000, T_IN, 99);
        let read = [
            Desc::readable(0x8000, 16),
            Desc::writable(0x9000, 512),
            Desc::writable(0xa000, 1),
        ];
        assert_eq!(one(&m, &read, &LIMITS), Ok(512));
        header(&m, 0x8000, T_OUT, 0);
        let write = [
            Desc::readable(0x8000, 16),
            Desc::readable(0x9000, 1024),
            Desc::writable(0xa000, 1),
        ];
        assert_eq!(one(&m, &write, &LIMITS), Ok(1024));
        header(&m, 0x8000, T_FLUSH, 0);
        assert_eq!(
            one(
                &m,
                &[Desc::readable(0x8000, 16), Desc::writable(0xa000, 1)],
                &LIMITS
            ),
            Ok(0)
        );
        // Header and status may share buffers with data in any framing.
        header(&m, 0x8000, T_IN, 1);
        let merged = [Desc::readable(0x8000, 16), Desc::writable(0x9000, 513)];
        assert_eq!(one(&m, &merged, &LIMITS), Ok(512));
    }

    #[test]
    fn out_of_range_and_bad_lengths_get_ioerr() {
        let m = guest_memory(0x10_0000);
        // Past the end: sector 99 + 2 sectors > 100.
        header(&m, 0x8000, T_IN, 99);
        let d = [
            Desc::readable(0x8000, 16),
            Desc::writable(0x9000, 1024),
            Desc::writable(0xa000, 1),
        ];
        assert_eq!(one(&m, &d, &LIMITS), refused(S_IOERR, 0xa000));
        // Sector overflow.
        header(&m, 0x8000, T_IN, u64::MAX);
        assert_eq!(one(&m, &d, &LIMITS), refused(S_IOERR, 0xa000));
        // Not a multiple of 512.
        header(&m, 0x8000, T_IN, 0);
        let d = [
            Desc::readable(0x8000, 16),
            Desc::writable(0x9000, 100),
            Desc::writable(0xa000, 1),
        ];
        assert_eq!(one(&m, &d, &LIMITS), refused(S_IOERR, 0xa000));
        // Short header.
        let d = [Desc::readable(0x8000, 8), Desc::writable(0xa000, 1)];
        assert_eq!(one(&m, &d, &LIMITS), refused(S_IOERR, 0xa000));
    }

    #[test]
    fn wrong_directions_and_missing_status() {
        let m = guest_memory(0x10_0000);
        // Write whose data is device-writable.
        header(&m, 0x8000, T_OUT, 0);
        let d = [
            Desc::readable(0x8000, 16),
            Desc::writable(0x9000, 512),
            Desc::writable(0xa000, 1),
        ];
        assert_eq!(one(&m, &d, &LIMITS), refused(S_IOERR, 0xa000));
        // Read whose data is device-readable.
        header(&m, 0x8000, T_IN, 0);
        let d = [
            Desc::readable(0x8000, 16),
            Desc::readable(0x9000, 512),
            Desc::writable(0xa000, 1),
        ];
        assert_eq!(one(&m, &d, &LIMITS), refused(S_IOERR, 0xa000));
        // No writable byte at all.
        let d = [Desc::readable(0x8000, 16), Desc::readable(0x9000, 512)];
        assert_eq!(one(&m, &d, &LIMITS), Err(RequestError::NoStatus));
    }

    #[test]
    fn read_only_unsupported_and_get_id() {
        let m = guest_memory(0x10_0000);
        let ro = RequestLimits {
            read_only: true,
            ..LIMITS
        };
        header(&m, 0x8000, T_OUT, 0);
        let d = [
            Desc::readable(0x8000, 16),
            Desc::readable(0x9000, 512),
            Desc::writable(0xa000, 1),
        ];
        assert_eq!(one(&m, &d, &ro), refused(S_IOERR, 0xa000));
        header(&m, 0x8000, 77, 0);
        let d = [Desc::readable(0x8000, 16), Desc::writable(0xa000, 1)];
        assert_eq!(one(&m, &d, &LIMITS), refused(S_UNSUPP, 0xa000));
        header(&m, 0x8000, T_GET_ID, 0);
        let d = [
            Desc::readable(0x8000, 16),
            Desc::writable(0x9000, 64),
            Desc::writable(0xa000, 1),
        ];
        assert_eq!(one(&m, &d, &LIMITS), Ok(0));
    }

    #[test]
    fn discard_segments_are_checked() {
        let m = guest_memory(0x10_0000);
        let seg = |at: u64, sector: u64, n: u32, flags: u32| {
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&sector.to_le_bytes());
            b[8..12].copy_from_slice(&n.to_le_bytes());
            b[12..16].copy_from_slice(&flags.to_le_bytes());
            m.write_slice(&b, GuestAddress(at)).unwrap();
        };
        let d = |len| {
            [
                Desc::readable(0x8000, 16),
                Desc::readable(0x9000, len),
                Desc::writable(0xa000, 1),
            ]
        };
        header(&m, 0x8000, T_DISCARD, 0);
        seg(0x9000, 0, 8, 0);
        seg(0x9010, 50, 50, 0);
        assert_eq!(one(&m, &d(32), &LIMITS), Ok(0));
        // Too many segments, ragged length, none.
        assert_eq!(one(&m, &d(48), &LIMITS), refused(S_IOERR, 0xa000));
        assert_eq!(one(&m, &d(20), &LIMITS), refused(S_IOERR, 0xa000));
        // Past the end; too large; UNMAP on discard is unsupported.
        seg(0x9010, 60, 50, 0);
        assert_eq!(one(&m, &d(32), &LIMITS), refused(S_IOERR, 0xa000));
        seg(0x9010, 0, 65, 0);
        assert_eq!(one(&m, &d(32), &LIMITS), refused(S_IOERR, 0xa000));
        seg(0x9010, 0, 8, 1);
        assert_eq!(one(&m, &d(32), &LIMITS), refused(S_UNSUPP, 0xa000));
        header(&m, 0x8000, T_WRITE_ZEROES, 0);
        assert_eq!(one(&m, &d(32), &LIMITS), Ok(0));
        seg(0x9010, 0, 8, 2);
        assert_eq!(one(&m, &d(32), &LIMITS), refused(S_UNSUPP, 0xa000));
        let nodiscard = RequestLimits {
            discard: false,
            ..LIMITS
        };
        assert_eq!(one(&m, &d(16), &nodiscard), refused(S_UNSUPP, 0xa000));
    }
}
