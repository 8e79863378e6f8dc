//! Descriptor chains turned into checked scatter-gather lists of guest
//! memory.
//!
//! [`parse_chain`] walks a chain once, checks it (every buffer inside guest
//! memory, device-readable buffers before device-writable ones, a bounded
//! number of descriptors and bytes, no loop or dangling `next`), and gives
//! two [`GuestSg`]s: what the device may read and what it may write. Devices
//! then treat each as one byte stream, whatever the driver's framing (virtio
//! 1.x has no fixed layout), and hand host syscalls iovecs pointing straight
//! into guest memory.

use std::ops::Deref;

use smallvec::SmallVec;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, ByteValued, GuestAddress, GuestMemoryBackend, VolatileSlice};

use crate::GuestMemoryMmap;

/// Why a chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no descriptor (bad head index or bad indirect table).
    #[error("empty descriptor chain")]
    Empty,
    /// The chain ended on a descriptor that still had NEXT set: a loop, a
    /// `next` out of the table, a nested or malformed indirect table.
    #[error("broken descriptor chain")]
    Broken,
    /// More descriptors than the limit.
    #[error("descriptor chain too long")]
    TooLong,
    /// More bytes than the limit.
    #[error("descriptor chain holds too many bytes")]
    TooManyBytes,
    /// A device-readable buffer after a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A buffer outside guest memory.
    #[error("descriptor buffer outside guest memory")]
    BadAddress,
}

/// Limits a device puts on chains.
#[derive(Debug, Clone, Copy)]
pub struct ChainLimits {
    /// Maximum descriptors, counting those of an indirect table.
    pub max_descriptors: usize,
    /// Maximum bytes, readable and writable together.
    pub max_bytes: u64,
}

/// A sequence of guest memory slices read or written as one byte stream.
#[derive(Clone, Debug, Default)]
pub struct GuestSg<'m> {
    /// Each slice with its guest address. Requests rarely have more than a
    /// few buffers: those stay inline, so parsing a chain does not allocate.
    segs: SmallVec<[(GuestAddress, VolatileSlice<'m>); INLINE_SEGS]>,
    len: usize,
}

/// Slices up to this many get their iovecs on the stack.
const INLINE_IOVECS: usize = 8;
/// Slices up to this many are stored inline in a `GuestSg`.
const INLINE_SEGS: usize = 4;

impl<'m> GuestSg<'m> {
    /// An empty list.
    pub fn new() -> Self {
        Self {
            segs: SmallVec::new(),
            len: 0,
        }
    }

    /// Appends a slice that starts at guest address `addr`.
    pub(crate) fn push_slice(&mut self, addr: GuestAddress, s: VolatileSlice<'m>) {
        self.push(addr, s);
    }

    /// Guest address of slice `i`.
    pub fn slice_addr(&self, i: usize) -> Option<GuestAddress> {
        self.segs.get(i).map(|s| s.0)
    }

    fn push(&mut self, addr: GuestAddress, s: VolatileSlice<'m>) {
        if !s.is_empty() {
            self.len += s.len();
            self.segs.push((addr, s));
        }
    }

    /// Guest address of byte `offset`, if it exists.
    pub fn addr_of(&self, offset: usize) -> Option<GuestAddress> {
        let mut skip = offset;
        for (a, s) in &self.segs {
            if skip < s.len() {
                return a.checked_add(skip as u64);
            }
            skip -= s.len();
        }
        None
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slices.
    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    /// The slices with their guest addresses, in order.
    pub fn slices(&self) -> impl Iterator<Item = (GuestAddress, &VolatileSlice<'m>)> {
        self.segs.iter().map(|(a, s)| (*a, s))
    }

    /// The bytes `[offset, offset + len)`, clamped to what exists.
    pub fn sub(&self, offset: usize, len: usize) -> GuestSg<'m> {
        let mut out = GuestSg::new();
        let mut skip = offset;
        let mut want = len;
        for (a, s) in &self.segs {
            if want == 0 {
                break;
            }
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let take = (s.len() - skip).min(want);
            // In range by construction: skip < s.len(), skip + take <= s.len().
            if let Ok(part) = s.subslice(skip, take) {
                out.push(a.unchecked_add(skip as u64), part);
            }
            want -= take;
            skip = 0;
        }
        out
    }

    /// Copies out up to `buf.len()` bytes from `offset`; returns the count.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> usize {
        let part = self.sub(offset, buf.len());
        let mut done = 0;
        for (_, s) in &part.segs {
            done += s.copy_to(&mut buf[done..]);
        }
        done
    }

    /// Copies in up to `buf.len()` bytes at `offset`; returns the count.
    pub fn write_at(&self, offset: usize, buf: &[u8]) -> usize {
        let part = self.sub(offset, buf.len());
        let mut done = 0;
        for (_, s) in &part.segs {
            let n = s.len().min(buf.len() - done);
            s.copy_from(&buf[done..done + n]);
            done += n;
        }
        done
    }

    /// Reads a plain-data object at `offset`, if entirely present.
    pub fn read_obj<T: ByteValued + Default>(&self, offset: usize) -> Option<T> {
        let mut v = T::default();
        let n = self.read_at(offset, v.as_mut_slice());
        (n == std::mem::size_of::<T>()).then_some(v)
    }

    /// Copies everything out into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        self.read_at(0, &mut v);
        v
    }

    /// Fills every byte with `byte`.
    pub fn fill(&self, byte: u8) {
        let chunk = [byte; 512];
        let mut off = 0;
        while off < self.len {
            let n = (self.len - off).min(chunk.len());
            self.write_at(off, &chunk[..n]);
            off += n;
        }
    }

    /// iovecs pointing into guest memory, for readv/writev and io_uring.
    /// The pointers stay valid while the guest memory mapping lives.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        self.segs.iter().map(|(_, s)| iovec_of(s)).collect()
    }

    /// Calls `f` with the iovecs, kept on the stack for short lists.
    pub fn with_iovecs<R>(&self, f: impl FnOnce(&[libc::iovec]) -> R) -> R {
        if self.segs.len() <= INLINE_IOVECS {
            let mut arr = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; INLINE_IOVECS];
            for (d, (_, s)) in arr.iter_mut().zip(&self.segs) {
                *d = iovec_of(s);
            }
            f(&arr[..self.segs.len()])
        } else {
            f(&self.iovecs())
        }
    }
}

fn iovec_of(s: &VolatileSlice<'_>) -> libc::iovec {
    libc::iovec {
        iov_base: s.ptr_guard_mut().as_ptr().cast(),
        iov_len: s.len(),
    }
}

/// A checked chain: its head index and its two byte streams.
#[derive(Debug)]
pub struct ParsedChain<'m> {
    /// Head descriptor index, for the used ring.
    pub head: u16,
    /// Device-readable bytes (driver to device).
    pub readable: GuestSg<'m>,
    /// Device-writable bytes (device to driver).
    pub writable: GuestSg<'m>,
}

/// Walks and checks a descriptor chain; see the module documentation.
pub fn parse_chain<'m, M>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<M>,
    limits: ChainLimits,
) -> Result<ParsedChain<'m>, ChainError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let head = chain.head_index();
    let mut readable = GuestSg::new();
    let mut writable = GuestSg::new();
    let mut count = 0usize;
    let mut bytes = 0u64;
    let mut last_had_next = false;
    for desc in chain {
        count += 1;
        if count > limits.max_descriptors {
            return Err(ChainError::TooLong);
        }
        bytes += u64::from(desc.len());
        if bytes > limits.max_bytes {
            return Err(ChainError::TooManyBytes);
        }
        last_had_next = desc.has_next();
        let target = if desc.is_write_only() {
            &mut writable
        } else {
            if !writable.is_empty() {
                return Err(ChainError::ReadableAfterWritable);
            }
            &mut readable
        };
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        let slices = GuestMemoryBackend::get_slices(mem, desc.addr(), len);
        let mut got = 0usize;
        for s in slices {
            let s = s.map_err(|_| ChainError::BadAddress)?;
            let at = desc.addr().unchecked_add(got as u64);
            got += s.len();
            target.push(at, s);
        }
        if got != len {
            return Err(ChainError::BadAddress);
        }
    }
    if count == 0 {
        return Err(ChainError::Empty);
    }
    if last_had_next {
        return Err(ChainError::Broken);
    }
    Ok(ParsedChain {
        head,
        readable,
        writable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{Desc, TestQueue};
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;

    const LIMITS: ChainLimits = ChainLimits {
        max_descriptors: 16,
        max_bytes: 1 << 20,
    };

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn parse<'m>(
        mem: &'m GuestMemoryMmap,
        q: &mut virtio_queue::Queue,
    ) -> Result<ParsedChain<'m>, ChainError> {
        let chain = q.pop_descriptor_chain(mem).unwrap();
        parse_chain(mem, chain, LIMITS)
    }

    #[test]
    fn splits_readable_and_writable_streams() {
        let m = mem();
        let mut tq = TestQueue::new(&m, GuestAddress(0x1000), 16);
        tq.add_chain(&[
            Desc::readable(0x8000, 10),
            Desc::readable(0x9000, 6),
            Desc::writable(0xa000, 100),
        ]);
        let mut q = tq.queue(false);
        let c = parse(&m, &mut q).unwrap();
        assert_eq!(c.readable.len(), 16);
        assert_eq!(c.writable.len(), 100);
        c.writable.write_at(98, &[1, 2, 3]);
        let mut b = [0u8; 2];
        assert_eq!(c.writable.read_at(98, &mut b), 2);
        assert_eq!(b, [1, 2]);
        // A read that spans two buffers.
        vm_memory::Bytes::write_slice(&m, &[7; 10], GuestAddress(0x8000)).unwrap();
        vm_memory::Bytes::write_slice(&m, &[8; 6], GuestAddress(0x9000)).unwrap();
        let mut b = [0u8; 4];
        c.readable.read_at(8, &mut b);
        assert_eq!(b, [7, 7, 8, 8]);
        assert_eq!(c.readable.sub(5, 100).len(), 11);
        assert_eq!(c.readable.sub(16, 1).len(), 0);
    }

    #[test]
    fn refuses_malformed_chains() {
        let m = mem();
        let mut tq = TestQueue::new(&m, GuestAddress(0x1000), 16);
        // Out of guest memory.
        tq.add_chain(&[Desc::readable(0xff_f000, 0x2000)]);
        // Readable after writable.
        tq.add_chain(&[Desc::writable(0x8000, 4), Desc::readable(0x9000, 4)]);
        // Address wrapping around.
        tq.add_chain(&[Desc::readable(u64::MAX - 1, 16)]);
        let mut q = tq.queue(false);
        assert_eq!(parse(&m, &mut q).unwrap_err(), ChainError::BadAddress);
        assert_eq!(
            parse(&m, &mut q).unwrap_err(),
            ChainError::ReadableAfterWritable
        );
        assert_eq!(parse(&m, &mut q).unwrap_err(), ChainError::BadAddress);
    }

    #[test]
    fn detects_loops_and_dangling_next() {
        let m = mem();
        let mut tq = TestQueue::new(&m, GuestAddress(0x1000), 16);
        // 0 -> 1 -> 0 loop.
        tq.write_desc(0, Desc::readable(0x8000, 4).next(1));
        tq.write_desc(1, Desc::readable(0x8000, 4).next(0));
        tq.push_avail(0);
        // next points past the table.
        tq.write_desc(2, Desc::readable(0x8000, 4).next(200));
        tq.push_avail(2);
        // Head index past the table.
        tq.push_avail(999);
        let mut q = tq.queue(false);
        assert_eq!(parse(&m, &mut q).unwrap_err(), ChainError::Broken);
        assert_eq!(parse(&m, &mut q).unwrap_err(), ChainError::Broken);
        assert_eq!(parse(&m, &mut q).unwrap_err(), ChainError::Empty);
    }

    #[test]
    fn follows_indirect_tables_and_refuses_nested_ones() {
        let m = mem();
        let mut tq = TestQueue::new(&m, GuestAddress(0x1000), 16);
        let table = GuestAddress(0x20000);
        tq.write_indirect_table(
            table,
            &[Desc::readable(0x8000, 16), Desc::writable(0x9000, 1)],
        );
        tq.write_desc(0, Desc::indirect(table.0, 32));
        tq.push_avail(0);
        // Nested indirect: refused.
        let nested = GuestAddress(0x21000);
        tq.write_indirect_table(nested, &[Desc::indirect(table.0, 32)]);
        tq.write_desc(1, Desc::indirect(nested.0, 16));
        tq.push_avail(1);
        // Table length not a multiple of 16.
        tq.write_desc(2, Desc::indirect(table.0, 20));
        tq.push_avail(2);
        let mut q = tq.queue(false);
        let c = parse(&m, &mut q).unwrap();
        assert_eq!((c.readable.len(), c.writable.len()), (16, 1));
        assert_eq!(parse(&m, &mut q).unwrap_err(), ChainError::Empty);
        assert_eq!(parse(&m, &mut q).unwrap_err(), ChainError::Empty);
    }

    #[test]
    fn zero_length_buffers_are_skipped_and_limits_hold() {
        let m = mem();
        let mut tq = TestQueue::new(&m, GuestAddress(0x1000), 16);
        tq.add_chain(&[Desc::readable(0x8000, 0), Desc::writable(0x9000, 8)]);
        tq.add_chain(&[
            Desc::writable(0x9000, 0x8_0000),
            Desc::writable(0x9000, 0x8_0001),
        ]);
        let mut q = tq.queue(false);
        let c = parse(&m, &mut q).unwrap();
        assert_eq!(c.readable.len(), 0);
        assert_eq!(c.writable.segments(), 1);
        assert_eq!(parse(&m, &mut q).unwrap_err(), ChainError::TooManyBytes);
    }
}
