//! The typed configuration the builder turns into a running VM. The API
//! and CLI layers translate their inputs into this; nothing here knows
//! about JSON.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use ember_devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
pub use ember_devices::virtio::block::{BlockConfig, CacheType, IoEngine};
pub use ember_devices::virtio::net::{MacAddr, NetConfig};
pub use ember_devices::virtio::rng::RngConfig;
pub use ember_devices::virtio::vsock::VsockConfig;

/// The most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 32;

// Every vCPU must fit in the MP table's room below 640 KiB.
const _: () = assert!(MAX_VCPUS <= crate::arch::mptable::MAX_CPUS);

/// Where the guest console's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// The VMM's standard output.
    Stdout,
    /// A file or named pipe.
    File(PathBuf),
    /// Discarded.
    Sink,
}

/// A drive: the block device plus how the kernel should mount it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveConfig {
    pub block: BlockConfig,
    /// The root filesystem: `root=/dev/vda` (or `root=PARTUUID=`) is added
    /// to the command line. At most one drive, placed first.
    pub is_root_device: bool,
    /// Partition UUID of the root filesystem, if it is on a partition.
    pub partuuid: Option<String>,
}

/// The shape of a machine: what a snapshot must reproduce exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    /// Two threads per core in the CPU topology.
    pub smt: bool,
    /// Guest memory on 2 MiB huge pages.
    pub huge_pages: bool,
}

/// A VM to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    /// Two threads per core in the CPU topology.
    pub smt: bool,
    /// Back guest memory with 2 MiB huge pages.
    pub huge_pages: bool,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The kernel command line; Firecracker's default when `None`.
    pub cmdline: Option<String>,
    pub console: ConsoleOutput,
    /// Feed the VMM's standard input to the guest console.
    pub console_input: bool,
    /// Add the boot-timer device (port 0x440).
    pub boot_timer: bool,
    /// Block devices, the root device (if any) first.
    pub drives: Vec<DriveConfig>,
    /// Network interfaces.
    pub net: Vec<NetConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// The entropy device.
    pub rng: Option<RngConfig>,
}

impl VmConfig {
    /// The machine's shape.
    pub fn machine(&self) -> MachineInfo {
        MachineInfo {
            vcpu_count: self.vcpu_count,
            mem_size_mib: self.mem_size_mib,
            smt: self.smt,
            huge_pages: self.huge_pages,
        }
    }

    /// A VM with Firecracker's defaults (1 vCPU, 128 MiB) booting `kernel`.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            huge_pages: false,
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            console: ConsoleOutput::Stdout,
            console_input: false,
            boot_timer: false,
            drives: Vec::new(),
            net: Vec::new(),
            vsock: None,
            rng: None,
        }
    }
}
