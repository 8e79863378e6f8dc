//! A fake [`VmmBackend`] and helpers to run the real server against it, for
//! tests, the benchmark, the fuzzing example and anyone wiring the API.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::controller::{
    ApiController, BackendError, InstanceDescription, PrebootChange, Telemetry, VmmBackend,
};
use crate::endpoint::{api_channel, ApiEndpoint};
use crate::http::{ApiServer, ApiServerHandle, ServerConfig};
use crate::models::{
    BootSource, MachineConfig, NetworkInterface, PartialDrive, PartialNetworkInterface,
    SnapshotCreateParams, SnapshotLoadParams, VmState, Vsock,
};
use crate::resources::VmResources;

/// What the fake backend was asked to do, what it should refuse, and where
/// its pretend microVM is.
#[derive(Debug)]
pub struct FakeState {
    /// One entry per call, e.g. `"start"`, `"pause"`, `"update_drive rootfs"`,
    /// `"create_snapshot /s"`, `"load_snapshot /s"`.
    pub calls: Vec<String>,
    /// Names of operations to fail (`"start"`, `"pause"`...), with this
    /// message.
    pub fail: Vec<(String, String)>,
    /// The run state the backend reports.
    pub run_state: VmState,
}

impl Default for FakeState {
    fn default() -> Self {
        Self {
            calls: Vec::new(),
            fail: Vec::new(),
            run_state: VmState::NotStarted,
        }
    }
}

/// The machine configuration of every microVM the fake "restores".
pub const FAKE_RESTORED_MACHINE: MachineConfig = MachineConfig {
    vcpu_count: 2,
    mem_size_mib: 256,
    smt: false,
    cpu_template: None,
    track_dirty_pages: false,
    huge_pages: crate::models::HugePages::None,
};

/// What the fake "restores": [`FAKE_RESTORED_MACHINE`], interface `eth0`
/// on `tap0` and a vsock (CID 3) on `/tmp/fake-restored.vsock`, with the
/// overrides of `params` applied (an override of another interface fails,
/// as it does in Firecracker). It also reports a boot source, which the
/// controller must not show: a restored microVM has none.
pub fn fake_restored_resources(params: &SnapshotLoadParams) -> Result<VmResources, BackendError> {
    let mut r = VmResources {
        machine_config: FAKE_RESTORED_MACHINE,
        boot_source: Some(BootSource {
            kernel_image_path: "/restored/vmlinux".into(),
            boot_args: None,
            initrd_path: None,
        }),
        ..VmResources::default()
    };
    r.network_interfaces.push(NetworkInterface {
        iface_id: "eth0".into(),
        host_dev_name: "tap0".into(),
        guest_mac: Some("06:00:ac:10:00:02".into()),
        mtu: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    });
    r.vsock = Some(Vsock {
        vsock_id: None,
        guest_cid: 3,
        uds_path: "/tmp/fake-restored.vsock".into(),
    });
    for o in params.network_overrides() {
        let iface = r
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == o.iface_id)
            .ok_or_else(|| {
                BackendError::InvalidConfig(format!(
                    "the snapshot has no network interface {:?}",
                    o.iface_id
                ))
            })?;
        iface.host_dev_name.clone_from(&o.host_dev_name);
    }
    if let (Some(o), Some(v)) = (&params.vsock_override, &mut r.vsock) {
        v.uds_path.clone_from(&o.uds_path);
    }
    Ok(r)
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
            Some((_, msg)) => Err(BackendError::failed(msg.clone())),
            None => Ok(()),
        }
    }

    fn set_state(&self, state: VmState) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .run_state = state;
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

    /// Lets operation `op` succeed again.
    pub fn unfail(&self, op: &str) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail
            .retain(|(o, _)| o != op);
    }

    /// Changes the run state as the VMM would on its own (e.g. a guest
    /// that paused itself), without a call being recorded.
    pub fn force_run_state(&self, state: VmState) {
        self.set_state(state);
    }
}

impl VmmBackend for FakeBackend {
    fn run_state(&self) -> VmState {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .run_state
    }
    fn start(&mut self, resources: &VmResources) -> Result<(), BackendError> {
        let kernel = resources
            .boot_source
            .as_ref()
            .map(|b| b.kernel_image_path.clone())
            .unwrap_or_default();
        self.call("start", &kernel)?;
        self.set_state(VmState::Running);
        Ok(())
    }
    fn pause(&mut self) -> Result<(), BackendError> {
        self.call("pause", "")?;
        self.set_state(VmState::Paused);
        Ok(())
    }
    fn resume(&mut self) -> Result<(), BackendError> {
        self.call("resume", "")?;
        self.set_state(VmState::Running);
        Ok(())
    }
    fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<(), BackendError> {
        self.call("create_snapshot", &params.snapshot_path)
    }
    fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> Result<VmResources, BackendError> {
        self.call("load_snapshot", &params.snapshot_path)?;
        let restored = fake_restored_resources(params)?;
        self.set_state(VmState::Paused);
        Ok(restored)
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
            Some((_, msg)) => Err(BackendError::failed(msg.clone())),
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
