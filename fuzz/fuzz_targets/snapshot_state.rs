//! The snapshot state parser on hostile bytes. Each input is tried twice:
//! as a whole state file (envelope checks first: magic, version, length,
//! checksum), and as the payload of a valid envelope (so the decoder and
//! the consistency checks see arbitrary payloads past the checksum).
//! Refusals are fine; a panic, a hang or an unbounded allocation is a bug.

#![no_main]

use ember_state::envelope::{reseal, HEADER_LEN, MAGIC, TRAILER_LEN};
use ember_vmm::snapshot::decode_state;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_state(data);
    let mut sealed = Vec::with_capacity(HEADER_LEN + data.len() + TRAILER_LEN);
    sealed.extend_from_slice(&MAGIC);
    sealed.extend_from_slice(&1u32.to_le_bytes());
    sealed.extend_from_slice(&0u32.to_le_bytes());
    sealed.extend_from_slice(&(data.len() as u64).to_le_bytes());
    sealed.extend_from_slice(data);
    sealed.extend_from_slice(&[0; TRAILER_LEN]);
    reseal(&mut sealed);
    let _ = decode_state(&sealed);
});
