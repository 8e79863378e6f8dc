//! Ember's state layer.
//!
//! - [`Persist`]: how a component (a device, a vCPU, the VM) hands out its
//!   guest-visible state as a plain value and is rebuilt from one. Host
//!   resources (file descriptors, threads, sockets) are never state: they
//!   are the constructor arguments of [`Persist::restore`].
//! - [`envelope`]: the file format around a serialized state: a magic
//!   number, a format version, the payload length and a checksum over
//!   everything. Files are hostile input: every check happens before the
//!   payload is decoded, nothing is allocated from a size read in the file,
//!   and the decoder refuses trailing bytes.
//!
//! The payload is encoded with `postcard` (serde, compact, a documented and
//! stable wire format). Compatibility is kept by version: a state written
//! with format version N is decoded by the decoder of version N, and
//! [`envelope::FORMAT_VERSION`] only ever grows; a test loads a fixture
//! written by the first version.

pub mod envelope;
pub mod file;

pub use envelope::{open, reseal, seal, Envelope, FORMAT_VERSION, MAGIC};
pub use file::{read_capped, write_atomically};

/// A component whose guest-visible state can be saved and restored.
///
/// The pattern is vm-superio's `Serial::state()` / `Serial::from_state()`:
/// `save` copies the state out into a plain value (no fds, no threads),
/// `restore` builds a working component from host resources (`args`) and
/// such a value.
pub trait Persist<'a>: Sized {
    /// The plain, serializable state.
    type State;
    /// Host resources the restored component needs (triggers, files, memory).
    type ConstructorArgs;
    /// Why a restore can fail (a state that does not fit, a host resource
    /// that cannot be opened).
    type Error;

    /// Copies the guest-visible state out.
    fn save(&self) -> Self::State;

    /// Builds the component from `args` and `state`.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}

/// Why a state file or buffer was refused. Every message says what is wrong
/// with the file in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Larger than any state Ember writes.
    #[error("the state is {size} bytes, more than the {max} bytes a state may have")]
    TooLarge { size: u64, max: u64 },
    /// Shorter than its header, or than the length its header gives.
    #[error("the state is truncated: {0}")]
    Truncated(String),
    /// Not an Ember state at all.
    #[error("not an Ember snapshot state (bad magic number)")]
    BadMagic,
    /// Written by a newer Ember.
    #[error("the state has format version {found}, newer than the versions this Ember reads (1 to {supported}); restore it with a newer Ember")]
    NewerVersion { found: u32, supported: u32 },
    /// A version that never existed, or flags this version does not know.
    #[error("the state header is invalid: {0}")]
    BadHeader(String),
    /// The checksum does not match: the file was changed or damaged.
    #[error("the state is corrupt: its checksum is {found:#018x}, the content hashes to {computed:#018x}")]
    Checksum { found: u64, computed: u64 },
    /// The payload does not decode as the state of its version.
    #[error("the state cannot be decoded: {0}")]
    Decode(String),
    /// The state cannot be encoded.
    #[error("the state cannot be encoded: {0}")]
    Encode(String),
}
