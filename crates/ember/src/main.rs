//! `ember`: a KVM microVM monitor that speaks Firecracker's API.
//!
//! Every way to configure a VM goes through the API controller: requests
//! over the socket, `--config-file` (replayed as requests), and the quick
//! flags (turned into a configuration file).

mod backend;
mod cli;
mod exit_code;
mod metrics;
mod resources;
mod run;
mod terminal;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use ember_api::controller::{ApiController, InstanceDescription, Telemetry};
use ember_api::http::{ApiServer, ServerConfig};
use ember_api::models::{NetworkOverride, SnapshotLoadParams, VsockOverride};
use ember_api::{ApiRequest, VmConfigFile};
use ember_telemetry::{LogLevel, Logger, LoggerOptions, MetricsRegistry};
use ember_vmm::builder;
use ember_vmm::host::{HostVirt, PVM_WARNING};

/// Firecracker's default API socket path.
const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

fn fail(code: i32, msg: impl std::fmt::Display) -> ! {
    eprintln!("ember: error: {msg}");
    std::process::exit(code);
}

fn logger_options(cli: &cli::Cli) -> Result<Option<LoggerOptions>, String> {
    if cli.level.is_none() && cli.log_path.is_none() && !cli.show_level && !cli.show_log_origin {
        return Ok(None);
    }
    let level = match &cli.level {
        Some(l) => Some(l.parse::<LogLevel>().map_err(|e| format!("--level: {e}"))?),
        None => None,
    };
    Ok(Some(LoggerOptions {
        level,
        log_path: cli.log_path.clone(),
        show_level: Some(cli.show_level),
        show_log_origin: Some(cli.show_log_origin),
        module: None,
    }))
}

/// The snapshot load the command line asks for, if any.
fn restore_request(cli: &cli::Cli) -> Result<Option<SnapshotLoadParams>, String> {
    let (Some(state), Some(mem)) = (&cli.restore, &cli.mem_file) else {
        return Ok(None);
    };
    if cli.config_file.is_some() || cli.kernel.is_some() {
        return Err("--restore cannot be combined with --config-file or --kernel".into());
    }
    let mut p =
        SnapshotLoadParams::from_files(&state.display().to_string(), &mem.display().to_string());
    p.resume_vm = Some(!cli.paused);
    p.clock_realtime = cli.clock_realtime.then_some(true);
    p.vsock_override = cli.vsock_override.as_ref().map(|v| VsockOverride {
        uds_path: v.display().to_string(),
    });
    if !cli.tap_override.is_empty() {
        let mut overrides = Vec::new();
        for o in &cli.tap_override {
            let (iface, tap) = o
                .split_once('=')
                .ok_or_else(|| format!("--tap-override {o:?}: expected IFACE=TAP"))?;
            overrides.push(NetworkOverride {
                iface_id: iface.to_string(),
                host_dev_name: tap.to_string(),
            });
        }
        p.network_overrides = Some(overrides);
    }
    Ok(Some(p))
}

/// The configuration to boot at start, if the command line names one.
fn initial_config(cli: &cli::Cli) -> Result<Option<VmConfigFile>, String> {
    match (&cli.config_file, &cli.kernel) {
        (Some(_), Some(_)) => Err("give either --config-file or --kernel, not both".into()),
        (Some(path), None) => {
            for (set, name) in [
                (cli.initrd.is_some(), "initrd"),
                (cli.cmdline.is_some(), "cmdline"),
                (cli.console_out.is_some(), "console-out"),
                (cli.restore.is_some(), "restore"),
            ] {
                if set {
                    return Err(format!("--{name} only applies with --kernel; put it in the configuration file instead"));
                }
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read the configuration file '{}': {e}",
                    path.display()
                )
            })?;
            VmConfigFile::parse(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        (None, Some(kernel)) => Ok(Some(resources::quick_flags_file(cli, kernel))),
        (None, None) => Ok(None),
    }
}

fn main() {
    ember_devices::legacy::boot_timer::mark_process_start();
    let cli = cli::Cli::parse();
    let logger =
        Logger::install_global(&cli.id).unwrap_or_else(|e| fail(exit_code::SETUP_ERROR, e));
    match logger_options(&cli) {
        Ok(Some(opts)) => {
            if let Err(e) = logger.configure(&opts) {
                fail(exit_code::SETUP_ERROR, e);
            }
        }
        Ok(None) => {}
        Err(e) => fail(exit_code::USAGE, e),
    }
    let metrics = MetricsRegistry::global();
    metrics.register(logger.metrics_source());
    if let Some(path) = &cli.metrics_path {
        if let Err(e) = metrics.configure(path) {
            fail(exit_code::SETUP_ERROR, e);
        }
    }

    let initial = initial_config(&cli).unwrap_or_else(|e| fail(exit_code::SETUP_ERROR, e));
    let restore = restore_request(&cli).unwrap_or_else(|e| fail(exit_code::USAGE, e));
    if initial.is_none() && restore.is_none() && cli.no_api {
        fail(
            exit_code::USAGE,
            "nothing to boot: give --config-file or --kernel, or drop --no-api to configure over the API",
        );
    }
    let (kvm, host) = builder::open_host().unwrap_or_else(|e| fail(exit_code::SETUP_ERROR, e));
    if host == HostVirt::PvmOnly {
        eprintln!("ember: {PVM_WARNING}");
    }

    let slot = Arc::new(Mutex::new(backend::VmSlot::default()));
    let backend = backend::EmberBackend::new(
        kvm,
        host,
        cli.boot_timer,
        slot.clone(),
        cli.console_out.clone(),
    );
    let telemetry = Telemetry {
        logger: Some(logger),
        metrics: metrics.clone(),
    };
    let controller = ApiController::new(backend, InstanceDescription::new(&cli.id), telemetry);
    let (channel, mut endpoint) =
        ember_api::api_channel(controller).unwrap_or_else(|e| fail(exit_code::SETUP_ERROR, e));

    // Quick flags and --restore run without the API unless a socket is
    // named; otherwise Firecracker's rule: the API runs unless --no-api.
    let quick = cli.kernel.is_some() || cli.restore.is_some();
    let serve_api = !cli.no_api && (!quick || cli.api_sock.is_some());
    let server = if !serve_api {
        None
    } else {
        let path = cli
            .api_sock
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCK));
        let mut cfg = ServerConfig::new(&path);
        cfg.metrics = Some(metrics.clone());
        match ApiServer::spawn(cfg, channel) {
            Ok(handle) => Some(handle),
            Err(e) => fail(
                exit_code::SETUP_ERROR,
                format!("cannot serve the API on '{}': {e}", path.display()),
            ),
        }
    };
    // Restore or boot what the command line names, once the API (if any)
    // is up.
    if let Some(params) = restore {
        if let Err(e) = endpoint
            .controller_mut()
            .handle(ApiRequest::LoadSnapshot(params))
        {
            if let Some(server) = server {
                server.shutdown();
            }
            fail(exit_code::SETUP_ERROR, e.message);
        }
    }
    if let Some(file) = initial {
        if let Err(e) = endpoint.controller_mut().boot_from_config_file(file) {
            if let Some(server) = server {
                server.shutdown();
            }
            fail(exit_code::SETUP_ERROR, e.message);
        }
    }

    let result = run::run(endpoint, slot, metrics);
    if let Some(server) = server {
        server.shutdown();
    }
    match result {
        Ok(exit) => {
            let code = exit_code::for_exit(&exit);
            if code == exit_code::OK {
                eprintln!("ember: {exit}");
            } else {
                eprintln!("ember: error: {exit}");
            }
            std::process::exit(code);
        }
        Err(e) => fail(exit_code::SETUP_ERROR, e),
    }
}
