//! Translates the API's pre-boot resources into the VMM's `VmConfig`, and
//! the quick command-line flags into a configuration file.

use std::path::PathBuf;

use ember_api::models::{BootSource, HugePages, MachineConfig, SerialConfig};
use ember_api::resources::VmResources;
use ember_api::VmConfigFile;
use ember_vmm::config::{ConsoleOutput, VmConfig};

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
