//! Serves Ember's API on a Unix socket with a fake VMM backend, so the API
//! can be exercised (e.g. by `scripts/api-fuzz`) without KVM.
//!
//! Usage: `api_server_fake --api-sock PATH`. Runs until killed.

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut sock: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--api-sock" => sock = args.next().map(PathBuf::from),
            "--help" | "-h" => {
                println!("usage: api_server_fake --api-sock PATH");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}; usage: api_server_fake --api-sock PATH");
                std::process::exit(2);
            }
        }
    }
    let Some(sock) = sock else {
        eprintln!("usage: api_server_fake --api-sock PATH");
        std::process::exit(2);
    };
    let logger = match ember_telemetry::Logger::install_global("fake-instance") {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("logger: {e}");
            None
        }
    };
    let telemetry = ember_api::Telemetry {
        logger,
        metrics: std::sync::Arc::new(ember_telemetry::MetricsRegistry::new()),
    };
    match ember_api::testing::spawn_fake_vmm_with(&sock, telemetry, |_| {}) {
        Ok((server, _backend, _telemetry)) => {
            eprintln!(
                "fake Ember API listening on {}",
                server.socket_path().display()
            );
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("cannot serve {}: {e}", sock.display());
            std::process::exit(1);
        }
    }
}
