//! Translates the API's pre-boot resources into the VMM's `VmConfig`, and
//! the quick command-line flags into a configuration file.

use std::path::PathBuf;

use ember_api::models::{self as api, BootSource, HugePages, MachineConfig, SerialConfig};
use ember_api::resources::VmResources;
use ember_api::VmConfigFile;
use ember_vmm::config::{
    BlockConfig, CacheType, ConsoleOutput, DriveConfig, IoEngine, MacAddr, NetConfig,
    RateLimiterConfig, RngConfig, TokenBucketConfig, VmConfig, VsockConfig,
};

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
