//! `FullVmConfiguration`: the body of `GET /vm/config`, which is also a
//! valid `--config-file` document.

use serde::{Deserialize, Serialize};

use super::{
    BootSource, Drive, EntropyDevice, LoggerConfig, MachineConfig, MetricsConfig, NetworkInterface,
    SerialConfig, Vsock,
};

/// Every configured resource. Sections of features Ember does not have are
/// always `null` (or empty lists), as Firecracker reports unset sections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullVmConfig {
    /// Always `null`: no balloon device.
    pub balloon: Option<()>,
    /// Block devices, the root device first.
    pub drives: Vec<Drive>,
    /// The kernel, if set.
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    /// Always `null`: no custom CPU templates.
    #[serde(rename = "cpu-config")]
    pub cpu_config: Option<()>,
    /// The logger settings, if configured.
    pub logger: Option<LoggerConfig>,
    /// The machine configuration (defaults until set).
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    /// The metrics settings, if configured.
    pub metrics: Option<MetricsConfig>,
    /// Always `null`: no memory hotplug.
    #[serde(rename = "memory-hotplug")]
    pub memory_hotplug: Option<()>,
    /// Always `null`: no MMDS.
    #[serde(rename = "mmds-config")]
    pub mmds_config: Option<()>,
    /// Network interfaces, in creation order.
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterface>,
    /// Always empty: no pmem devices.
    pub pmem: Vec<()>,
    /// The vsock device, if set.
    pub vsock: Option<Vsock>,
    /// The entropy device, if set.
    pub entropy: Option<EntropyDevice>,
    /// The serial console settings, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
}
