//! The JSON models of Firecracker's API (v1.16), with Firecracker's field
//! names, defaults and validation.

mod boot_source;
mod machine_config;
mod serial;

pub use boot_source::BootSource;
pub use machine_config::{CpuTemplate, HugePages, MachineConfig, MachineConfigError, MAX_VCPUS};
pub use serial::SerialConfig;
