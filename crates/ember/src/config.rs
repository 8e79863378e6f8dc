//! Turns the command line or a Firecracker configuration file into the
//! VMM's typed `VmConfig`.

use std::path::PathBuf;

use ember_api::models::HugePages;
use ember_api::VmConfigFile;
use ember_vmm::config::{ConsoleOutput, VmConfig};

use crate::cli::Cli;

/// Why no configuration could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file '{path}': {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: ember_api::ConfigFileError,
    },
    #[error("give either --config-file or --kernel, not both")]
    Both,
    #[error("--{0} only applies with --kernel; put it in the configuration file instead")]
    QuickFlagWithFile(&'static str),
}

/// Translates a parsed configuration file.
pub fn from_file(file: &VmConfigFile, boot_timer: bool) -> VmConfig {
    // `VmConfigFile::parse` guarantees a boot source.
    let boot = file
        .boot_source
        .clone()
        .unwrap_or_else(|| ember_api::models::BootSource {
            kernel_image_path: String::new(),
            boot_args: None,
            initrd_path: None,
        });
    let machine = file.machine_config.clone().unwrap_or_default();
    let console = match file
        .serial
        .as_ref()
        .and_then(|s| s.serial_out_path.as_ref())
    {
        Some(p) => ConsoleOutput::File(p.into()),
        None => ConsoleOutput::Stdout,
    };
    VmConfig {
        vcpu_count: machine.vcpu_count,
        mem_size_mib: machine.mem_size_mib,
        smt: machine.smt,
        huge_pages: machine.huge_pages == Some(HugePages::Hugetlbfs2M),
        kernel: boot.kernel_image_path.into(),
        initrd: boot.initrd_path.map(PathBuf::from),
        cmdline: boot.boot_args,
        console_input: matches!(console, ConsoleOutput::Stdout),
        console,
        boot_timer,
    }
}

/// Reads and translates `--config-file`.
pub fn load_file(path: &PathBuf, boot_timer: bool) -> Result<VmConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let file = VmConfigFile::parse(&text).map_err(|source| ConfigError::File {
        path: path.clone(),
        source,
    })?;
    Ok(from_file(&file, boot_timer))
}

/// The configuration the command line asks for, if it names one.
pub fn from_cli(cli: &Cli) -> Result<Option<VmConfig>, ConfigError> {
    match (&cli.config_file, &cli.kernel) {
        (Some(_), Some(_)) => Err(ConfigError::Both),
        (Some(path), None) => {
            for (set, name) in [
                (cli.initrd.is_some(), "initrd"),
                (cli.cmdline.is_some(), "cmdline"),
                (cli.console_out.is_some(), "console-out"),
            ] {
                if set {
                    return Err(ConfigError::QuickFlagWithFile(name));
                }
            }
            load_file(path, cli.boot_timer).map(Some)
        }
        (None, Some(kernel)) => {
            let console = match &cli.console_out {
                Some(p) => ConsoleOutput::File(p.clone()),
                None => ConsoleOutput::Stdout,
            };
            Ok(Some(VmConfig {
                vcpu_count: cli.vcpus,
                mem_size_mib: cli.mem,
                smt: cli.smt,
                huge_pages: false,
                kernel: kernel.clone(),
                initrd: cli.initrd.clone(),
                cmdline: cli.cmdline.clone(),
                console_input: matches!(console, ConsoleOutput::Stdout),
                console,
                boot_timer: cli.boot_timer,
            }))
        }
        (None, None) => Ok(None),
    }
}
