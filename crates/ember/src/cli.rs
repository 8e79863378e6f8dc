//! Command-line flags: Firecracker's process flags, with their meaning,
//! plus quick flags to boot a kernel without a configuration file.

use std::path::PathBuf;

use clap::Parser;

/// ember: a KVM microVM monitor that speaks Firecracker's API.
#[derive(Debug, Parser)]
#[command(name = "ember", version, about, long_about = None)]
pub struct Cli {
    /// Path of the API Unix socket (default /run/firecracker.socket). The
    /// quick flags boot without the API unless this is given.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// MicroVM id (shown by GET /).
    #[arg(long, default_value = "anonymous-instance")]
    pub id: String,
    /// Boot from a Firecracker JSON configuration file.
    #[arg(long, value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// Do not start the API server: boot from --config-file or the quick flags.
    #[arg(long)]
    pub no_api: bool,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,
    /// Write the log to this file or named pipe instead of standard error.
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Show the level in log lines.
    #[arg(long)]
    pub show_level: bool,
    /// Show the source file and line in log lines.
    #[arg(long)]
    pub show_log_origin: bool,
    /// Write metrics to this file or named pipe.
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// Add the boot-timer device: when the guest writes 123 to I/O port
    /// 0x440, print the time since ember started.
    #[arg(long)]
    pub boot_timer: bool,

    /// Quick boot: the kernel image (ELF vmlinux or bzImage).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Quick boot: the initrd.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Quick boot: the kernel command line (Firecracker's default if absent).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Quick boot: number of vCPUs (1 to 32).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u8,
    /// Quick boot: guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub mem: usize,
    /// Quick boot: two threads per core in the CPU topology.
    #[arg(long)]
    pub smt: bool,
    /// Quick boot or restore: write the guest console to this file instead
    /// of stdout.
    #[arg(long, value_name = "PATH")]
    pub console_out: Option<PathBuf>,

    /// Restore: the snapshot state file to restore and run (as PUT
    /// /snapshot/load with resume_vm). Without --api-sock, no API is
    /// served.
    #[arg(long, value_name = "STATE", requires = "mem_file")]
    pub restore: Option<PathBuf>,
    /// Restore: the snapshot's memory file.
    #[arg(long, value_name = "MEMFILE", requires = "restore")]
    pub mem_file: Option<PathBuf>,
    /// Restore: back network interface IFACE with TAP device TAP instead
    /// (repeatable).
    #[arg(long, value_name = "IFACE=TAP", requires = "restore")]
    pub tap_override: Vec<String>,
    /// Restore: the vsock device's new Unix socket path.
    #[arg(long, value_name = "PATH", requires = "restore")]
    pub vsock_override: Option<PathBuf>,
    /// Restore: advance the guest clock by the time since the snapshot.
    #[arg(long, requires = "restore")]
    pub clock_realtime: bool,
    /// Restore: leave the restored VM paused (resume it over the API).
    #[arg(long, requires = "restore")]
    pub paused: bool,
}
