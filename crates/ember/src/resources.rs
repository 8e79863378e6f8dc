//! Translates the API's pre-boot resources into the VMM's `VmConfig`, a
//! restored VM back into the API's resources (for `GET /vm/config`), and
//! the quick command-line flags into a configuration file.

use std::path::PathBuf;

use ember_api::models::{self as api, BootSource, HugePages, MachineConfig, SerialConfig};
use ember_api::resources::VmResources;
use ember_api::VmConfigFile;
use ember_vmm::config::{
    BlockConfig, CacheType, ConsoleOutput, DriveConfig, IoEngine, MacAddr, NetConfig,
    RateLimiterConfig, RngConfig, TokenBucketConfig, VmConfig, VsockConfig,
};
use ember_vmm::virtio_devices::VirtioConfig;
use ember_vmm::vmm::Vmm;

use crate::cli::Cli;

/// Builds the VMM configuration for `r`. Features Ember lacks were already
/// refused when they were configured (see `backend::check_preboot`).
pub fn vm_config(r: &VmResources, boot_timer: bool) -> Result<VmConfig, String> {
    let boot = r
        .boot_source
        .as_ref()
        .ok_or("Cannot start microvm without kernel configuration.")?;
    let m = &r.machine_config;
    let console = match r.serial.as_ref().and_then(|s| s.serial_out_path.as_ref()) {
        Some(path) => ConsoleOutput::File(PathBuf::from(path)),
        None => ConsoleOutput::Stdout,
    };
    Ok(VmConfig {
        vcpu_count: m.vcpu_count,
        mem_size_mib: m.mem_size_mib,
        smt: m.smt,
        huge_pages: m.huge_pages == HugePages::Hugetlbfs2M,
        kernel: PathBuf::from(&boot.kernel_image_path),
        initrd: boot.initrd_path.as_ref().map(PathBuf::from),
        cmdline: boot.boot_args.clone(),
        console_input: console == ConsoleOutput::Stdout,
        console,
        boot_timer,
        drives: r.drives.iter().map(drive).collect::<Result<_, _>>()?,
        net: r
            .network_interfaces
            .iter()
            .map(net)
            .collect::<Result<_, _>>()?,
        vsock: r.vsock.as_ref().map(|v| VsockConfig {
            guest_cid: v.guest_cid,
            uds_path: PathBuf::from(&v.uds_path),
        }),
        rng: r.entropy.as_ref().map(|e| RngConfig {
            rate_limiter: e.rate_limiter.as_ref().map(limiter),
        }),
    })
}

/// The API's view of a restored VM: its machine shape and its devices.
/// As with Firecracker, the boot source is empty after a restore.
pub fn restored(vmm: &Vmm) -> VmResources {
    let info = vmm.info();
    let mut r = VmResources {
        machine_config: MachineConfig {
            vcpu_count: info.vcpu_count,
            mem_size_mib: info.mem_size_mib,
            huge_pages: if info.huge_pages {
                HugePages::Hugetlbfs2M
            } else {
                HugePages::None
            },
            ..MachineConfig::default()
        },
        ..VmResources::default()
    };
    for e in vmm.virtio().entries() {
        match &e.config {
            VirtioConfig::Block(d) => r.drives.push(api::Drive {
                drive_id: d.block.drive_id.clone(),
                partuuid: d.partuuid.clone(),
                is_root_device: d.is_root_device,
                cache_type: match d.block.cache_type {
                    CacheType::Unsafe => api::CacheType::Unsafe,
                    CacheType::Writeback => api::CacheType::Writeback,
                },
                is_read_only: Some(d.block.is_read_only),
                path_on_host: Some(d.block.path_on_host.display().to_string()),
                rate_limiter: d.block.rate_limiter.as_ref().map(api_limiter),
                io_engine: Some(match d.block.io_engine {
                    IoEngine::Sync => api::IoEngine::Sync,
                    IoEngine::Async => api::IoEngine::Async,
                }),
                socket: None,
            }),
            VirtioConfig::Net(n) => r.network_interfaces.push(api::NetworkInterface {
                iface_id: n.iface_id.clone(),
                host_dev_name: n.host_dev_name.clone(),
                guest_mac: n.guest_mac.map(|m| m.to_string()),
                mtu: None,
                rx_rate_limiter: n.rx_rate_limiter.as_ref().map(api_limiter),
                tx_rate_limiter: n.tx_rate_limiter.as_ref().map(api_limiter),
            }),
            VirtioConfig::Vsock(v) => {
                r.vsock = Some(api::Vsock {
                    vsock_id: None,
                    guest_cid: v.guest_cid,
                    uds_path: v.uds_path.display().to_string(),
                })
            }
            VirtioConfig::Rng(g) => {
                r.entropy = Some(api::EntropyDevice {
                    rate_limiter: g.rate_limiter.as_ref().map(api_limiter),
                })
            }
        }
    }
    r
}

/// A device rate limiter as the API shows it.
fn api_limiter(l: &RateLimiterConfig) -> api::RateLimiter {
    let bucket = |b: &TokenBucketConfig| api::TokenBucket {
        size: b.size,
        one_time_burst: (b.one_time_burst != 0).then_some(b.one_time_burst),
        refill_time: b.refill_time,
    };
    api::RateLimiter {
        bandwidth: l.bandwidth.as_ref().map(bucket),
        ops: l.ops.as_ref().map(bucket),
    }
}

/// A Firecracker rate limiter as the devices take it.
pub fn limiter(l: &api::RateLimiter) -> RateLimiterConfig {
    let bucket = |b: &api::TokenBucket| TokenBucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time: b.refill_time,
    };
    RateLimiterConfig {
        bandwidth: l.bandwidth.as_ref().map(bucket),
        ops: l.ops.as_ref().map(bucket),
    }
}

fn drive(d: &api::Drive) -> Result<DriveConfig, String> {
    let path = d.path_on_host.as_ref().ok_or_else(|| {
        format!(
            "drive '{}': vhost-user drives (socket) are not supported by Ember yet",
            d.drive_id
        )
    })?;
    Ok(DriveConfig {
        block: BlockConfig {
            drive_id: d.drive_id.clone(),
            path_on_host: PathBuf::from(path),
            is_read_only: d.read_only(),
            cache_type: match d.cache_type {
                api::CacheType::Unsafe => CacheType::Unsafe,
                api::CacheType::Writeback => CacheType::Writeback,
            },
            io_engine: match d.io_engine.unwrap_or_default() {
                api::IoEngine::Sync => IoEngine::Sync,
                api::IoEngine::Async => IoEngine::Async,
            },
            rate_limiter: d.rate_limiter.as_ref().map(limiter),
        },
        is_root_device: d.is_root_device,
        partuuid: d.partuuid.clone(),
    })
}

fn net(n: &api::NetworkInterface) -> Result<NetConfig, String> {
    let guest_mac = match &n.guest_mac {
        Some(m) => Some(
            m.parse::<MacAddr>()
                .map_err(|e| format!("network interface '{}': guest_mac {m:?}: {e}", n.iface_id))?,
        ),
        None => None,
    };
    Ok(NetConfig {
        iface_id: n.iface_id.clone(),
        host_dev_name: n.host_dev_name.clone(),
        guest_mac,
        rx_rate_limiter: n.rx_rate_limiter.as_ref().map(limiter),
        tx_rate_limiter: n.tx_rate_limiter.as_ref().map(limiter),
    })
}

/// The configuration file the quick flags describe.
pub fn quick_flags_file(cli: &Cli, kernel: &std::path::Path) -> VmConfigFile {
    VmConfigFile {
        boot_source: Some(BootSource {
            kernel_image_path: kernel.display().to_string(),
            boot_args: cli.cmdline.clone(),
            initrd_path: cli.initrd.as_ref().map(|p| p.display().to_string()),
        }),
        machine_config: Some(MachineConfig {
            vcpu_count: cli.vcpus,
            mem_size_mib: cli.mem,
            smt: cli.smt,
            ..MachineConfig::default()
        }),
        serial: cli.console_out.as_ref().map(|p| SerialConfig {
            serial_out_path: Some(p.display().to_string()),
            rate_limiter: None,
        }),
        ..VmConfigFile::default()
    }
}
