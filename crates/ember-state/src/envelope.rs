//! The envelope around a serialized state.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "EMBRSNAP"
//!      8     4  format version (u32, little endian), 1 and up
//!     12     4  flags, zero in every version so far
//!     16     8  payload length in bytes (u64, little endian)
//!     24     n  payload (postcard)
//!   24+n     8  checksum: XXH3-64 of bytes [0, 24+n)
//! ```
//!
//! The header layout is fixed for all versions, so that a newer file is
//! recognised as such and refused with a message that says so.

use serde::de::DeserializeOwned;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use crate::StateError;

/// The first eight bytes of every state.
pub const MAGIC: [u8; 8] = *b"EMBRSNAP";
/// The format version this Ember writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 24;
/// Bytes after the payload.
pub const TRAILER_LEN: usize = 8;

/// A checked state: its version and its payload, not yet decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The format version the payload was written with.
    pub version: u32,
    /// The encoded state.
    pub payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Decodes the payload as `T`, refusing bytes left over.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, StateError> {
        let (value, rest) = postcard::take_from_bytes::<T>(self.payload)
            .map_err(|e| StateError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(StateError::Decode(format!(
                "{} bytes left over after the state",
                rest.len()
            )));
        }
        Ok(value)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Encodes `value` in the current format version.
pub fn seal<T: Serialize>(value: &T) -> Result<Vec<u8>, StateError> {
    seal_version(FORMAT_VERSION, value)
}

/// Encodes `value` claiming format version `version` (tests write old and
/// future versions with it).
pub fn seal_version<T: Serialize>(version: u32, value: &T) -> Result<Vec<u8>, StateError> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    let mut out = postcard::to_extend(value, out).map_err(|e| StateError::Encode(e.to_string()))?;
    let len = (out.len() - HEADER_LEN) as u64;
    out[16..24].copy_from_slice(&len.to_le_bytes());
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Recomputes the checksum of a sealed buffer in place (for tests and
/// fixtures that edit a field on purpose).
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_LEN + TRAILER_LEN {
        let end = bytes.len() - TRAILER_LEN;
        let sum = xxh3_64(&bytes[..end]);
        bytes[end..].copy_from_slice(&sum.to_le_bytes());
    }
}

/// Checks the envelope of `bytes`: magic, version, length and checksum.
pub fn open(bytes: &[u8]) -> Result<Envelope<'_>, StateError> {
    if bytes.len() < MAGIC.len() {
        return Err(StateError::Truncated(format!(
            "{} bytes, not even the magic number",
            bytes.len()
        )));
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(StateError::BadMagic);
    }
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(StateError::Truncated(format!(
            "{} bytes, shorter than the {} bytes of header and checksum",
            bytes.len(),
            HEADER_LEN + TRAILER_LEN
        )));
    }
    let version = u32_at(bytes, 8);
    if version == 0 {
        return Err(StateError::BadHeader(
            "format version 0 does not exist".into(),
        ));
    }
    if version > FORMAT_VERSION {
        return Err(StateError::NewerVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let flags = u32_at(bytes, 12);
    if flags != 0 {
        return Err(StateError::BadHeader(format!(
            "unknown flags {flags:#x} for format version {version}"
        )));
    }
    let len = u64_at(bytes, 16);
    let have = (bytes.len() - HEADER_LEN - TRAILER_LEN) as u64;
    if len > have {
        return Err(StateError::Truncated(format!(
            "the header announces {len} bytes of state, the file holds {have}"
        )));
    }
    if len < have {
        return Err(StateError::BadHeader(format!(
            "the header announces {len} bytes of state, the file holds {have}: \
             bytes were appended"
        )));
    }
    let end = bytes.len() - TRAILER_LEN;
    let found = u64_at(bytes, end);
    let computed = xxh3_64(&bytes[..end]);
    if found != computed {
        return Err(StateError::Checksum { found, computed });
    }
    Ok(Envelope {
        version,
        payload: &bytes[HEADER_LEN..end],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        a: u32,
        b: Vec<u8>,
        c: String,
    }

    fn sample() -> S {
        S {
            a: 7,
            b: vec![1, 2, 3],
            c: "x".into(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = seal(&sample()).unwrap();
        let env = open(&bytes).unwrap();
        assert_eq!(env.version, FORMAT_VERSION);
        assert_eq!(env.decode::<S>().unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = seal(&sample()).unwrap();
        for n in 0..bytes.len() {
            let e = open(&bytes[..n]).unwrap_err();
            assert!(
                matches!(
                    e,
                    StateError::Truncated(_) | StateError::BadMagic | StateError::Checksum { .. }
                ),
                "length {n}: {e}"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let bytes = seal(&sample()).unwrap();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(open(&b).is_err(), "flipping bit {i} went unnoticed");
        }
    }

    #[test]
    fn newer_versions_say_so() {
        let bytes = seal_version(FORMAT_VERSION + 1, &sample()).unwrap();
        let e = open(&bytes).unwrap_err();
        assert!(matches!(e, StateError::NewerVersion { found, .. } if found == FORMAT_VERSION + 1));
        assert!(e.to_string().contains("newer Ember"), "{e}");
    }

    #[test]
    fn appended_bytes_and_left_over_payload_are_refused() {
        let mut bytes = seal(&sample()).unwrap();
        bytes.push(0);
        assert!(matches!(open(&bytes), Err(StateError::BadHeader(_))));
        // A payload with a valid checksum but an extra byte after the value.
        let mut b = seal(&sample()).unwrap();
        let end = b.len() - TRAILER_LEN;
        b.insert(end, 0);
        let len = (b.len() - HEADER_LEN - TRAILER_LEN) as u64;
        b[16..24].copy_from_slice(&len.to_le_bytes());
        reseal(&mut b);
        let env = open(&b).unwrap();
        assert!(matches!(env.decode::<S>(), Err(StateError::Decode(_))));
    }

    #[test]
    fn lying_lengths_inside_the_payload_do_not_allocate() {
        // A Vec<u8> announcing 2^60 bytes with a valid checksum.
        let mut raw = Vec::new();
        raw.extend_from_slice(&MAGIC);
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        let payload = [7u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
        raw.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        raw.extend_from_slice(&payload);
        raw.extend_from_slice(&[0; 8]);
        reseal(&mut raw);
        let env = open(&raw).unwrap();
        assert!(env.decode::<S>().is_err());
    }
}
