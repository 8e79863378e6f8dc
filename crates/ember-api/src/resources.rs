//! `VmResources`: everything configured before boot, with the rules that
//! span several resources (one root drive, unique TAP names and MACs) and
//! the host checks Firecracker makes when a resource is set (the kernel and
//! drive files exist and can be opened).
//!
//! Both the API (through [`crate::controller`]) and `--config-file` (through
//! [`crate::config_file`]) fill a `VmResources` with the same methods.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use crate::models::{
    BootSource, Drive, EntropyDevice, FullVmConfig, LoggerConfig, MachineConfig,
    MachineConfigUpdate, MetricsConfig, NetworkInterface, PartialDrive, PartialNetworkInterface,
    RateLimiter, SerialConfig, Vsock,
};

/// At most this many drives may be configured.
pub const MAX_DRIVES: usize = 32;
/// At most this many network interfaces may be configured.
pub const MAX_NETWORK_INTERFACES: usize = 32;

/// Why a resource was refused. The messages start like Firecracker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// `/boot-source`.
    #[error("Boot source error: {0}")]
    BootSource(String),
    /// `/machine-config`.
    #[error("Machine config error: {0}")]
    MachineConfig(String),
    /// `/drives`.
    #[error("Drive config error: {0}")]
    Drive(String),
    /// `/network-interfaces`.
    #[error("Network config error: {0}")]
    Network(String),
    /// `/vsock`.
    #[error("Vsock config error: {0}")]
    Vsock(String),
    /// `/entropy`.
    #[error("Entropy device error: {0}")]
    Entropy(String),
    /// `/serial`.
    #[error("Serial config error: {0}")]
    Serial(String),
    /// `/logger`.
    #[error("Logger error: {0}")]
    Logger(String),
    /// `/metrics`.
    #[error("Metrics error: {0}")]
    Metrics(String),
}

/// The pre-boot configuration of a microVM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmResources {
    /// The kernel; required to boot.
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    pub machine_config: MachineConfig,
    /// Block devices, the root device (if any) first.
    pub drives: Vec<Drive>,
    /// Network interfaces in creation order.
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device.
    pub vsock: Option<Vsock>,
    /// The entropy device.
    pub entropy: Option<EntropyDevice>,
    /// The serial console settings.
    pub serial: Option<SerialConfig>,
    /// The logger settings applied so far (for `GET /vm/config`).
    pub logger: Option<LoggerConfig>,
    /// The metrics settings (for `GET /vm/config`).
    pub metrics: Option<MetricsConfig>,
}

/// Opens `path` without blocking (a FIFO must not hang the VMM thread) and
/// checks it is a regular file or, if `allow_block_device`, a block device.
pub(crate) fn check_host_file(
    path: &str,
    write: bool,
    allow_block_device: bool,
) -> Result<(), String> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot open {path:?}: {e}"))?;
    let ty = file
        .metadata()
        .map_err(|e| format!("cannot inspect {path:?}: {e}"))?
        .file_type();
    if ty.is_file() || (allow_block_device && ty.is_block_device()) {
        Ok(())
    } else if allow_block_device {
        Err(format!(
            "{path:?} is neither a regular file nor a block device"
        ))
    } else {
        Err(format!("{path:?} is not a regular file"))
    }
}

fn merge_limiter(current: &mut Option<RateLimiter>, update: &Option<RateLimiter>) {
    if let Some(new) = update {
        let cur = current.get_or_insert_with(RateLimiter::default);
        if new.bandwidth.is_some() {
            cur.bandwidth = new.bandwidth;
        }
        if new.ops.is_some() {
            cur.ops = new.ops;
        }
    }
}

impl VmResources {
    /// Sets the kernel after checking the kernel (and initrd) can be opened.
    pub fn set_boot_source(&mut self, boot: BootSource) -> Result<(), ResourceError> {
        boot.validate().map_err(ResourceError::BootSource)?;
        check_host_file(&boot.kernel_image_path, false, false)
            .map_err(|e| ResourceError::BootSource(format!("the kernel file: {e}")))?;
        if let Some(initrd) = &boot.initrd_path {
            check_host_file(initrd, false, false)
                .map_err(|e| ResourceError::BootSource(format!("the initrd file: {e}")))?;
        }
        self.boot_source = Some(boot);
        Ok(())
    }

    /// Replaces the machine configuration.
    pub fn set_machine_config(&mut self, cfg: MachineConfig) -> Result<(), ResourceError> {
        cfg.validate()
            .map_err(|e| ResourceError::MachineConfig(e.to_string()))?;
        self.machine_config = cfg;
        Ok(())
    }

    /// Updates some machine configuration fields.
    pub fn update_machine_config(
        &mut self,
        update: &MachineConfigUpdate,
    ) -> Result<(), ResourceError> {
        self.machine_config = self
            .machine_config
            .updated(update)
            .map_err(|e| ResourceError::MachineConfig(e.to_string()))?;
        Ok(())
    }

    /// Adds a drive, or replaces the drive with the same id.
    pub fn insert_drive(&mut self, drive: Drive) -> Result<(), ResourceError> {
        drive.validate().map_err(ResourceError::Drive)?;
        let position = self
            .drives
            .iter()
            .position(|d| d.drive_id == drive.drive_id);
        if position.is_none() && self.drives.len() >= MAX_DRIVES {
            return Err(ResourceError::Drive(format!(
                "at most {MAX_DRIVES} drives can be configured"
            )));
        }
        if drive.is_root_device {
            if let Some(root) = self.drives.iter().find(|d| d.is_root_device) {
                if root.drive_id != drive.drive_id {
                    return Err(ResourceError::Drive(
                        "A root block device already exists!".into(),
                    ));
                }
            }
        }
        check_host_file(drive.path(), !drive.read_only(), true)
            .map_err(|e| ResourceError::Drive(format!("Invalid block device path: {e}")))?;
        if let Some(i) = position {
            self.drives.remove(i);
        }
        if drive.is_root_device {
            self.drives.insert(0, drive);
        } else {
            // A replaced drive keeps its place. Index 0 only comes back if
            // the replaced drive was first, i.e. the root or no root exists.
            let at = position.unwrap_or(self.drives.len()).min(self.drives.len());
            self.drives.insert(at, drive);
        }
        Ok(())
    }

    /// Records a post-boot drive update (path and/or rate limiter).
    pub fn update_drive(&mut self, update: &PartialDrive) -> Result<(), ResourceError> {
        update.validate().map_err(ResourceError::Drive)?;
        let drive = self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == update.drive_id)
            .ok_or_else(|| {
                ResourceError::Drive(format!(
                    "no drive with id {:?} was configured",
                    update.drive_id
                ))
            })?;
        if let Some(path) = &update.path_on_host {
            check_host_file(path, !drive.read_only(), true)
                .map_err(|e| ResourceError::Drive(format!("Invalid block device path: {e}")))?;
        }
        if let Some(path) = &update.path_on_host {
            drive.path_on_host = Some(path.clone());
        }
        merge_limiter(&mut drive.rate_limiter, &update.rate_limiter);
        Ok(())
    }

    /// Adds a network interface, or replaces the one with the same id.
    pub fn insert_network_interface(
        &mut self,
        iface: NetworkInterface,
    ) -> Result<(), ResourceError> {
        iface.validate().map_err(ResourceError::Network)?;
        let position = self
            .network_interfaces
            .iter()
            .position(|n| n.iface_id == iface.iface_id);
        if position.is_none() && self.network_interfaces.len() >= MAX_NETWORK_INTERFACES {
            return Err(ResourceError::Network(format!(
                "at most {MAX_NETWORK_INTERFACES} network interfaces can be configured"
            )));
        }
        for other in self
            .network_interfaces
            .iter()
            .filter(|n| n.iface_id != iface.iface_id)
        {
            if other.host_dev_name == iface.host_dev_name {
                return Err(ResourceError::Network(format!(
                    "the host device {:?} is already used by interface {:?}",
                    iface.host_dev_name, other.iface_id
                )));
            }
            if let (Some(a), Some(b)) = (&other.guest_mac, &iface.guest_mac) {
                if a.eq_ignore_ascii_case(b) {
                    return Err(ResourceError::Network(format!(
                        "The MAC address is already in use: {b}"
                    )));
                }
            }
        }
        match position {
            Some(i) => self.network_interfaces[i] = iface,
            None => self.network_interfaces.push(iface),
        }
        Ok(())
    }

    /// Records a post-boot rate limiter update.
    pub fn update_network_interface(
        &mut self,
        update: &PartialNetworkInterface,
    ) -> Result<(), ResourceError> {
        update.validate().map_err(ResourceError::Network)?;
        let iface = self
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == update.iface_id)
            .ok_or_else(|| {
                ResourceError::Network(format!(
                    "no network interface with id {:?} was configured",
                    update.iface_id
                ))
            })?;
        merge_limiter(&mut iface.rx_rate_limiter, &update.rx_rate_limiter);
        merge_limiter(&mut iface.tx_rate_limiter, &update.tx_rate_limiter);
        Ok(())
    }

    /// Sets (or replaces) the vsock device.
    pub fn set_vsock(&mut self, vsock: Vsock) -> Result<(), ResourceError> {
        vsock.validate().map_err(ResourceError::Vsock)?;
        self.vsock = Some(vsock);
        Ok(())
    }

    /// Sets (or replaces) the entropy device.
    pub fn set_entropy(&mut self, entropy: EntropyDevice) -> Result<(), ResourceError> {
        entropy.validate().map_err(ResourceError::Entropy)?;
        self.entropy = Some(entropy);
        Ok(())
    }

    /// Sets the serial console settings.
    pub fn set_serial(&mut self, serial: SerialConfig) -> Result<(), ResourceError> {
        serial.validate().map_err(ResourceError::Serial)?;
        self.serial = Some(serial);
        Ok(())
    }

    /// What `GET /vm/config` returns.
    pub fn full_config(&self) -> FullVmConfig {
        FullVmConfig {
            balloon: None,
            drives: self.drives.clone(),
            boot_source: self.boot_source.clone(),
            cpu_config: None,
            logger: self.logger.clone(),
            machine_config: self.machine_config.clone(),
            metrics: self.metrics.clone(),
            memory_hotplug: None,
            mmds_config: None,
            network_interfaces: self.network_interfaces.clone(),
            pmem: Vec::new(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
            serial: self.serial.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_file(tag: &str) -> String {
        let p: PathBuf =
            std::env::temp_dir().join(format!("ember-res-{tag}-{}", std::process::id()));
        std::fs::write(&p, b"data").unwrap();
        p.to_string_lossy().into_owned()
    }

    fn drive(id: &str, path: &str, root: bool) -> Drive {
        Drive {
            drive_id: id.into(),
            partuuid: None,
            is_root_device: root,
            cache_type: Default::default(),
            is_read_only: Some(false),
            path_on_host: Some(path.into()),
            rate_limiter: None,
            io_engine: None,
            socket: None,
        }
    }

    #[test]
    fn boot_source_needs_real_files() {
        let mut r = VmResources::default();
        let k = temp_file("kernel");
        let e = r
            .set_boot_source(BootSource {
                kernel_image_path: "/nonexistent/vmlinux".into(),
                boot_args: None,
                initrd_path: None,
            })
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Boot source error: the kernel file"),
            "{e}"
        );
        let e = r
            .set_boot_source(BootSource {
                kernel_image_path: "/tmp".into(),
                boot_args: None,
                initrd_path: None,
            })
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        r.set_boot_source(BootSource {
            kernel_image_path: k.clone(),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: Some(k),
        })
        .unwrap();
    }

    #[test]
    fn drives_keep_root_first_and_refuse_a_second_root() {
        let f = temp_file("drives");
        let mut r = VmResources::default();
        r.insert_drive(drive("data", &f, false)).unwrap();
        r.insert_drive(drive("root", &f, true)).unwrap();
        r.insert_drive(drive("more", &f, false)).unwrap();
        let ids: Vec<_> = r.drives.iter().map(|d| d.drive_id.as_str()).collect();
        assert_eq!(ids, ["root", "data", "more"]);
        let e = r.insert_drive(drive("other", &f, true)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Drive config error: A root block device already exists!"
        );
        // Updating the root drive in place is fine, and so is demoting it.
        r.insert_drive(drive("root", &f, true)).unwrap();
        r.insert_drive(drive("root", &f, false)).unwrap();
        r.insert_drive(drive("data", &f, true)).unwrap();
        assert_eq!(r.drives[0].drive_id, "data");
        let e = r
            .insert_drive(drive("x", "/nonexistent", false))
            .unwrap_err();
        assert!(e.to_string().contains("Invalid block device path"), "{e}");
        r.update_drive(&PartialDrive {
            drive_id: "data".into(),
            path_on_host: None,
            rate_limiter: Some(RateLimiter {
                bandwidth: Some(Default::default()),
                ops: None,
            }),
        })
        .unwrap();
        assert!(r.drives[0].rate_limiter.unwrap().bandwidth.is_some());
        let e = r
            .update_drive(&PartialDrive {
                drive_id: "nope".into(),
                path_on_host: None,
                rate_limiter: None,
            })
            .unwrap_err();
        assert!(e.to_string().contains("no drive"), "{e}");
    }

    #[test]
    fn drive_count_is_bounded() {
        let f = temp_file("many");
        let mut r = VmResources::default();
        for i in 0..MAX_DRIVES {
            r.insert_drive(drive(&format!("d{i}"), &f, false)).unwrap();
        }
        assert!(r.insert_drive(drive("extra", &f, false)).is_err());
        r.insert_drive(drive("d0", &f, false)).unwrap();
    }

    #[test]
    fn interfaces_need_unique_taps_and_macs() {
        let mut r = VmResources::default();
        let net = |id: &str, tap: &str, mac: Option<&str>| NetworkInterface {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(Into::into),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        r.insert_network_interface(net("eth0", "tap0", Some("06:00:00:00:00:01")))
            .unwrap();
        assert!(r
            .insert_network_interface(net("eth1", "tap0", None))
            .is_err());
        let e = r
            .insert_network_interface(net("eth1", "tap1", Some("06:00:00:00:00:01")))
            .unwrap_err();
        assert!(
            e.to_string().contains("MAC address is already in use"),
            "{e}"
        );
        r.insert_network_interface(net("eth0", "tap0", Some("06:00:00:00:00:02")))
            .unwrap();
        assert_eq!(r.network_interfaces.len(), 1);
        assert!(r
            .update_network_interface(&PartialNetworkInterface {
                iface_id: "eth9".into(),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            })
            .is_err());
    }
}
