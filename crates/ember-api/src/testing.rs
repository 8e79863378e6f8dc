//! A fake [`VmmBackend`] and helpers to run the real server against it, for
//! tests, the benchmark, the fuzzing example and anyone wiring the API.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::controller::{
    ApiController, BackendError, InstanceDescription, PrebootChange, Telemetry, VmmBackend,
};
use crate::endpoint::{api_channel, ApiEndpoint};
use crate::http::{ApiServer, ApiServerHandle, ServerConfig};
use crate::models::{PartialDrive, PartialNetworkInterface};
use crate::resources::VmResources;

/// What the fake backend was asked to do, and what it should refuse.
#[derive(Debug, Default)]
pub struct FakeState {
    /// One entry per call, e.g. `"start"`, `"pause"`, `"update_drive rootfs"`.
    pub calls: Vec<String>,
    /// Names of operations to fail (`"start"`, `"pause"`...), with this
    /// message.
    pub fail: Vec<(String, String)>,
}

/// A backend that records calls and succeeds unless told otherwise.
#[derive(Debug, Clone, Default)]
pub struct FakeBackend {
    /// Shared with the test that created it.
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeBackend {
    fn call(&self, name: &str, detail: &str) -> Result<(), BackendError> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.calls.push(if detail.is_empty() {
            name.to_string()
        } else {
            format!("{name} {detail}")
        });
        match s.fail.iter().find(|(op, _)| op == name) {
            Some((_, msg)) => Err(BackendError::new(msg.clone())),
            None => Ok(()),
        }
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .clone()
    }

    /// Makes operation `op` fail with `message` from now on.
    pub fn fail(&self, op: &str, message: &str) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail
            .push((op.to_string(), message.to_string()));
    }
}

impl VmmBackend for FakeBackend {
    fn start(&mut self, resources: &VmResources) -> Result<(), BackendError> {
        let kernel = resources
            .boot_source
            .as_ref()
            .map(|b| b.kernel_image_path.clone())
            .unwrap_or_default();
        self.call("start", &kernel)
    }
    fn pause(&mut self) -> Result<(), BackendError> {
        self.call("pause", "")
    }
    fn resume(&mut self) -> Result<(), BackendError> {
        self.call("resume", "")
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), BackendError> {
        self.call("ctrl_alt_del", "")
    }
    fn update_drive(&mut self, update: &PartialDrive) -> Result<(), BackendError> {
        self.call("update_drive", &update.drive_id)
    }
    fn update_network_interface(
        &mut self,
        update: &PartialNetworkInterface,
    ) -> Result<(), BackendError> {
        self.call("update_network_interface", &update.iface_id)
    }
    fn flush_metrics(&mut self) -> Result<(), BackendError> {
        self.call("flush_metrics", "")
    }
    fn check_preboot(&mut self, change: PrebootChange<'_>) -> Result<(), BackendError> {
        let what = match change {
            PrebootChange::BootSource(_) => "boot_source",
            PrebootChange::MachineConfig(_) => "machine_config",
            PrebootChange::Drive(_) => "drive",
            PrebootChange::NetworkInterface(_) => "network_interface",
            PrebootChange::Vsock(_) => "vsock",
            PrebootChange::Entropy(_) => "entropy",
            PrebootChange::Serial(_) => "serial",
        };
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.fail.iter().find(|(op, _)| op == &format!("check {what}")) {
            Some((_, msg)) => Err(BackendError::new(msg.clone())),
            None => Ok(()),
        }
    }
}

/// A server on `socket` whose VMM side runs on its own thread with a
/// [`FakeBackend`]. Returns the server handle, the backend (to inspect
/// calls) and the telemetry the controller uses.
pub fn spawn_fake_vmm(
    socket: &Path,
    config: impl FnOnce(&mut ServerConfig),
) -> std::io::Result<(ApiServerHandle, FakeBackend, Telemetry)> {
    spawn_fake_vmm_with(socket, Telemetry::default(), config)
}

/// [`spawn_fake_vmm`] with the given telemetry (e.g. an installed logger).
pub fn spawn_fake_vmm_with(
    socket: &Path,
    telemetry: Telemetry,
    config: impl FnOnce(&mut ServerConfig),
) -> std::io::Result<(ApiServerHandle, FakeBackend, Telemetry)> {
    let backend = FakeBackend::default();
    let controller = ApiController::new(
        backend.clone(),
        InstanceDescription::new("fake-instance"),
        telemetry.clone(),
    );
    let (channel, endpoint) = api_channel(controller)?;
    run_endpoint_thread(endpoint)?;
    let mut cfg = ServerConfig::new(socket);
    cfg.metrics = Some(telemetry.metrics.clone());
    config(&mut cfg);
    let server = ApiServer::spawn(cfg, channel)?;
    Ok((server, backend, telemetry))
}

/// Runs `endpoint` on a thread until the HTTP side goes away.
pub fn run_endpoint_thread<B: VmmBackend + Send + 'static>(
    mut endpoint: ApiEndpoint<B>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fake_vmm".into())
        .spawn(move || while endpoint.handle_next_blocking() {})
}
