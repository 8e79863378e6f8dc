//! The controller: Firecracker's rules for what may happen before and after
//! boot, applied to [`VmResources`], with the real work delegated to a
//! [`VmmBackend`] that the `ember` binary implements.
//!
//! The controller runs on the VMM thread and is fully testable in-process:
//! feed it [`ApiRequest`]s, read [`ApiOutcome`]s.
//!
//! | operation | before boot | after boot (or a snapshot load) |
//! | --- | --- | --- |
//! | GET `/`, `/version`, `/vm/config`, `/machine-config` | yes | yes |
//! | PUT/PATCH `/machine-config`, PUT `/boot-source`, `/drives`, `/network-interfaces`, `/vsock`, `/entropy`, `/serial`, `/logger`, `/metrics` | yes | 400 |
//! | `InstanceStart` | yes | 400 |
//! | PUT `/snapshot/load` | only on a fresh process: nothing but `/logger` and `/metrics` configured | 400 |
//! | PUT `/snapshot/create` | 400 | only while Paused |
//! | PATCH `/drives`, `/network-interfaces`, `/vm`; `SendCtrlAltDel`, `FlushMetrics` | 400 | yes |
//!
//! The run state (not started, running, paused) lives in one place, the
//! backend ([`VmmBackend::run_state`]); every rule asks it.

use std::path::Path;
use std::sync::Arc;

use ember_telemetry::{LoggerHandle, MetricsRegistry};

use crate::config_file::VmConfigFile;
use crate::models::{
    ActionType, BootSource, Drive, EntropyDevice, InstanceInfo, LoggerConfig, MachineConfig,
    MetricsConfig, NetworkInterface, PartialDrive, PartialNetworkInterface, RequestedVmState,
    SerialConfig, SnapshotCreateParams, SnapshotLoadParams, VersionInfo, VmState, Vsock,
};
use crate::request::{ApiError, ApiOutcome, ApiReply, ApiRequest};
use crate::resources::{ResourceError, VmResources};

/// Firecracker's message for a post-boot-only operation before boot.
pub const NOT_SUPPORTED_PRE_BOOT: &str =
    "The requested operation is not supported before starting the microVM.";
/// Firecracker's message for a pre-boot-only operation after boot.
pub const NOT_SUPPORTED_POST_BOOT: &str =
    "The requested operation is not supported after starting the microVM.";
/// Firecracker's message for `InstanceStart` without a kernel.
pub const MISSING_KERNEL: &str =
    "Start microvm error: Cannot start microvm without kernel configuration.";

/// Firecracker's prefix for a failed `/snapshot/create`.
pub const CREATE_SNAPSHOT_ERROR: &str = "Create snapshot error";
/// Firecracker's prefix for a failed `/snapshot/load`.
pub const LOAD_SNAPSHOT_ERROR: &str = "Load snapshot error";
/// Firecracker's message for `/snapshot/create` while the vCPUs run (its
/// vCPUs refuse to save their state unless paused).
pub const SNAPSHOT_VM_NOT_PAUSED: &str = "Create snapshot error: Cannot save the microVM state: \
     Operation not allowed: save/restore unavailable while running";
/// Firecracker's message for `/snapshot/load` after boot-specific
/// resources were configured.
pub const LOAD_SNAPSHOT_NOT_ALLOWED: &str = "Load snapshot error: Loading a microVM snapshot not \
     allowed after configuring boot-specific resources.";

/// A failure reported by the backend. The controller answers 400 with
/// Firecracker's prefix for the operation ("Start microvm error: ",
/// "Internal VMM error: "...) followed by this error's text.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The operation needs a microVM and there is none (not built, or it
    /// has ended).
    #[error("the microVM is not running")]
    NotRunning,
    /// The request needs a feature Ember does not have yet; the text names
    /// the feature, in the singular ("... is not supported by Ember yet").
    #[error("{0} is not supported by Ember yet")]
    Unsupported(&'static str),
    /// The configuration does not translate into a microVM.
    #[error("{0}")]
    InvalidConfig(String),
    /// A VMM operation failed; the text is its error's, which stays
    /// reachable as the source.
    #[error("{0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BackendError {
    /// A failed VMM operation, from an error or a message.
    pub fn failed(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Failed(e.into())
    }
}

/// A pre-boot resource about to be stored, offered to
/// [`VmmBackend::check_preboot`] so the backend can refuse it at `PUT` time
/// (e.g. a TAP device that cannot be opened), as Firecracker does.
#[derive(Debug, Clone, Copy)]
pub enum PrebootChange<'a> {
    /// `PUT /boot-source`
    BootSource(&'a BootSource),
    /// `PUT`/`PATCH /machine-config` (the resulting configuration)
    MachineConfig(&'a MachineConfig),
    /// `PUT /drives/{id}`
    Drive(&'a Drive),
    /// `PUT /network-interfaces/{id}`
    NetworkInterface(&'a NetworkInterface),
    /// `PUT /vsock`
    Vsock(&'a Vsock),
    /// `PUT /entropy`
    Entropy(&'a EntropyDevice),
    /// `PUT /serial`
    Serial(&'a SerialConfig),
}

/// The real work behind the API, implemented by the `ember` binary.
///
/// Every method runs on the VMM thread. An `Err` becomes a 400 response and
/// leaves the controller's state unchanged (a failed `start` or
/// `load_snapshot` leaves the microVM "Not started", so the backend must
/// undo partial work).
pub trait VmmBackend {
    /// Where the microVM is: `NotStarted` until `start` or `load_snapshot`
    /// succeeds, then `Running` or `Paused`. The controller asks this for
    /// every rule and keeps no run state of its own.
    fn run_state(&self) -> VmState;
    /// Builds and boots the microVM from `resources` (`InstanceStart`);
    /// afterwards it runs.
    fn start(&mut self, resources: &VmResources) -> Result<(), BackendError>;
    /// Pauses all vCPUs (`PATCH /vm {"state": "Paused"}`).
    fn pause(&mut self) -> Result<(), BackendError>;
    /// Resumes all vCPUs (`PATCH /vm {"state": "Resumed"}`).
    fn resume(&mut self) -> Result<(), BackendError>;
    /// Injects Ctrl+Alt+Del through the i8042 keyboard.
    fn send_ctrl_alt_del(&mut self) -> Result<(), BackendError>;
    /// Applies a post-boot drive update (new backing file and/or limits).
    fn update_drive(&mut self, update: &PartialDrive) -> Result<(), BackendError>;
    /// Applies post-boot rate limiter changes to a network interface.
    fn update_network_interface(
        &mut self,
        update: &PartialNetworkInterface,
    ) -> Result<(), BackendError>;
    /// Writes a full snapshot of the paused microVM: its state to
    /// `params.snapshot_path`, guest memory to `params.mem_file_path`.
    /// Only called while [`Self::run_state`] is `Paused`, and never for a
    /// snapshot type Ember does not support (Diff).
    fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<(), BackendError>;
    /// Restores a microVM from `params.snapshot_path` with guest memory
    /// from the file [`SnapshotLoadParams::mem_path`], applying
    /// `network_overrides`, `vsock_override` and `clock_realtime`, and
    /// leaves it `Paused` (the controller resumes it when `resume_vm` is
    /// set). Only called on a fresh process, never for what Ember does not
    /// support (Uffd, dirty page tracking).
    ///
    /// Returns the restored microVM's resources (machine configuration,
    /// drives, network interfaces after the overrides, vsock, entropy,
    /// serial), which `GET /vm/config` shows from then on; their
    /// `boot_source`, `logger` and `metrics` are not used. On failure no
    /// microVM may be left behind: the process stays fresh and another load
    /// can be tried.
    fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> Result<VmResources, BackendError>;
    /// Called before `FlushMetrics` writes a line, to refresh gauges.
    fn flush_metrics(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Vets a pre-boot resource before it is stored. Accepts by default.
    fn check_preboot(&mut self, change: PrebootChange<'_>) -> Result<(), BackendError> {
        let _ = change;
        Ok(())
    }
}

/// What `GET /` and `GET /version` report about this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDescription {
    /// The instance id (`--id`; Firecracker's default is "anonymous-instance").
    pub id: String,
    /// The application name in `GET /`.
    pub app_name: String,
    /// The VMM's own version in `GET /`.
    pub vmm_version: String,
    /// The Firecracker API version reported by `GET /version`.
    pub firecracker_version: String,
}

/// The Firecracker API version Ember implements.
pub const FIRECRACKER_API_VERSION: &str = "1.16.0";

impl InstanceDescription {
    /// Ember's defaults for the instance `id`.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            app_name: "Ember".to_string(),
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            firecracker_version: FIRECRACKER_API_VERSION.to_string(),
        }
    }
}

/// Where `/logger` and `/metrics` take effect.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// The installed logger, if any (tests may run without one).
    pub logger: Option<LoggerHandle>,
    /// The metrics registry that `/metrics` and `FlushMetrics` use.
    pub metrics: Arc<MetricsRegistry>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            logger: None,
            metrics: Arc::new(MetricsRegistry::new()),
        }
    }
}

/// The API state machine.
#[derive(Debug)]
pub struct ApiController<B> {
    backend: B,
    resources: VmResources,
    /// A boot-specific resource (anything but the logger and metrics) was
    /// sent, successfully or not: from then on `/snapshot/load` is refused,
    /// as Firecracker refuses it.
    boot_specific_configured: bool,
    instance: InstanceDescription,
    telemetry: Telemetry,
}

fn pre_boot_only() -> ApiError {
    ApiError::bad_request(NOT_SUPPORTED_POST_BOOT)
}

fn post_boot_only() -> ApiError {
    ApiError::bad_request(NOT_SUPPORTED_PRE_BOOT)
}

fn res_err(e: ResourceError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

fn backend_err(prefix: &str, e: BackendError) -> ApiError {
    ApiError::bad_request(format!("{prefix}: {e}"))
}

/// Firecracker's wording for a restore that failed and for a resume after
/// it that failed.
const RESTORE_FAILED: &str = "Failed to restore from snapshot";
const RESUME_FAILED: &str = "Failed to resume microVM";

impl<B: VmmBackend> ApiController<B> {
    /// A controller for a microVM that has not started.
    pub fn new(backend: B, instance: InstanceDescription, telemetry: Telemetry) -> Self {
        Self {
            backend,
            resources: VmResources::default(),
            boot_specific_configured: false,
            instance,
            telemetry,
        }
    }

    /// The current state, as the backend reports it.
    pub fn state(&self) -> VmState {
        self.backend.run_state()
    }

    /// The configured resources.
    pub fn resources(&self) -> &VmResources {
        &self.resources
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (e.g. to hand it the running VMM).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Applies every section of a configuration file through the same
    /// operations as the API (logger and metrics first), without booting.
    pub fn apply_config_file(&mut self, file: VmConfigFile) -> Result<(), ApiError> {
        for request in file.into_requests() {
            self.handle(request)?;
        }
        Ok(())
    }

    /// [`Self::apply_config_file`], then `InstanceStart`.
    pub fn boot_from_config_file(&mut self, file: VmConfigFile) -> Result<(), ApiError> {
        self.apply_config_file(file)?;
        self.handle(ApiRequest::Action(ActionType::InstanceStart))
            .map(|_| ())
    }

    fn require_not_started(&self) -> Result<(), ApiError> {
        if self.state().is_started() {
            Err(pre_boot_only())
        } else {
            Ok(())
        }
    }

    fn require_started(&self) -> Result<(), ApiError> {
        if self.state().is_started() {
            Ok(())
        } else {
            Err(post_boot_only())
        }
    }

    /// [`Self::require_not_started`] for a boot-specific resource, which
    /// rules out a snapshot load from then on (even if the resource is then
    /// refused, as in Firecracker).
    fn begin_boot_config(&mut self) -> Result<(), ApiError> {
        self.require_not_started()?;
        self.boot_specific_configured = true;
        Ok(())
    }

    fn check(&mut self, change: PrebootChange<'_>, prefix: &str) -> Result<(), ApiError> {
        self.backend
            .check_preboot(change)
            .map_err(|e| backend_err(prefix, e))
    }

    /// Handles one request.
    pub fn handle(&mut self, request: ApiRequest) -> ApiOutcome {
        use ApiRequest as R;
        match request {
            R::GetInstanceInfo => Ok(ApiReply::InstanceInfo(InstanceInfo {
                app_name: self.instance.app_name.clone(),
                id: self.instance.id.clone(),
                state: self.state(),
                vmm_version: self.instance.vmm_version.clone(),
            })),
            R::GetVersion => Ok(ApiReply::Version(VersionInfo {
                firecracker_version: self.instance.firecracker_version.clone(),
            })),
            R::GetVmConfig => Ok(ApiReply::VmConfig(Box::new(self.resources.full_config()))),
            R::GetMachineConfig => Ok(ApiReply::MachineConfig(
                self.resources.machine_config.clone(),
            )),
            R::PutMachineConfig(cfg) => {
                self.begin_boot_config()?;
                cfg.validate()
                    .map_err(|e| res_err(ResourceError::MachineConfig(e.to_string())))?;
                self.check(PrebootChange::MachineConfig(&cfg), "Machine config error")?;
                self.resources.set_machine_config(cfg).map_err(res_err)?;
                Ok(ApiReply::NoContent)
            }
            R::PatchMachineConfig(update) => {
                self.begin_boot_config()?;
                let cfg = self
                    .resources
                    .machine_config
                    .updated(&update)
                    .map_err(|e| res_err(ResourceError::MachineConfig(e.to_string())))?;
                self.check(PrebootChange::MachineConfig(&cfg), "Machine config error")?;
                self.resources.set_machine_config(cfg).map_err(res_err)?;
                Ok(ApiReply::NoContent)
            }
            R::PutBootSource(boot) => {
                self.begin_boot_config()?;
                self.check(PrebootChange::BootSource(&boot), "Boot source error")?;
                self.resources.set_boot_source(boot).map_err(res_err)?;
                Ok(ApiReply::NoContent)
            }
            R::PutDrive(drive) => {
                self.begin_boot_config()?;
                drive
                    .validate()
                    .map_err(|e| res_err(ResourceError::Drive(e)))?;
                self.check(PrebootChange::Drive(&drive), "Drive config error")?;
                self.resources.insert_drive(drive).map_err(res_err)?;
                Ok(ApiReply::NoContent)
            }
            R::PutNetworkInterface(iface) => {
                self.begin_boot_config()?;
                iface
                    .validate()
                    .map_err(|e| res_err(ResourceError::Network(e)))?;
                self.check(
                    PrebootChange::NetworkInterface(&iface),
                    "Network config error",
                )?;
                self.resources
                    .insert_network_interface(iface)
                    .map_err(res_err)?;
                Ok(ApiReply::NoContent)
            }
            R::PutVsock(vsock) => {
                self.begin_boot_config()?;
                vsock
                    .validate()
                    .map_err(|e| res_err(ResourceError::Vsock(e)))?;
                self.check(PrebootChange::Vsock(&vsock), "Vsock config error")?;
                self.resources.set_vsock(vsock).map_err(res_err)?;
                Ok(ApiReply::NoContent)
            }
            R::PutEntropy(entropy) => {
                self.begin_boot_config()?;
                entropy
                    .validate()
                    .map_err(|e| res_err(ResourceError::Entropy(e)))?;
                self.check(PrebootChange::Entropy(&entropy), "Entropy device error")?;
                self.resources.set_entropy(entropy).map_err(res_err)?;
                Ok(ApiReply::NoContent)
            }
            R::PutSerial(serial) => {
                self.begin_boot_config()?;
                serial
                    .validate()
                    .map_err(|e| res_err(ResourceError::Serial(e)))?;
                self.check(PrebootChange::Serial(&serial), "Serial config error")?;
                self.resources.set_serial(serial).map_err(res_err)?;
                Ok(ApiReply::NoContent)
            }
            R::PutLogger(cfg) => {
                self.require_not_started()?;
                self.configure_logger(cfg)?;
                Ok(ApiReply::NoContent)
            }
            R::PutMetrics(cfg) => {
                self.require_not_started()?;
                self.configure_metrics(cfg)?;
                Ok(ApiReply::NoContent)
            }
            R::PatchDrive(update) => {
                self.require_started()?;
                // Check against the configuration first (unknown id, bad
                // path), then let the device switch, then record it.
                let mut staged = self.resources.clone();
                staged.update_drive(&update).map_err(res_err)?;
                self.backend
                    .update_drive(&update)
                    .map_err(|e| backend_err("Drive config error", e))?;
                self.resources = staged;
                Ok(ApiReply::NoContent)
            }
            R::PatchNetworkInterface(update) => {
                self.require_started()?;
                let mut staged = self.resources.clone();
                staged.update_network_interface(&update).map_err(res_err)?;
                self.backend
                    .update_network_interface(&update)
                    .map_err(|e| backend_err("Network config error", e))?;
                self.resources = staged;
                Ok(ApiReply::NoContent)
            }
            R::Action(action) => self.action(action),
            R::SetVmState(wanted) => {
                self.require_started()?;
                match (wanted, self.state()) {
                    (RequestedVmState::Paused, VmState::Running) => self
                        .backend
                        .pause()
                        .map_err(|e| backend_err("Internal VMM error", e))?,
                    (RequestedVmState::Resumed, VmState::Paused) => self
                        .backend
                        .resume()
                        .map_err(|e| backend_err("Internal VMM error", e))?,
                    // Already there: nothing to do.
                    _ => {}
                }
                Ok(ApiReply::NoContent)
            }
            R::CreateSnapshot(params) => self.create_snapshot(&params),
            R::LoadSnapshot(params) => self.load_snapshot(&params),
        }
    }

    fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> ApiOutcome {
        self.require_started()?;
        if self.state() != VmState::Paused {
            return Err(ApiError::bad_request(SNAPSHOT_VM_NOT_PAUSED));
        }
        if let Some(feature) = params.unsupported() {
            return Err(backend_err(
                CREATE_SNAPSHOT_ERROR,
                BackendError::Unsupported(feature),
            ));
        }
        self.backend
            .create_snapshot(params)
            .map_err(|e| backend_err(CREATE_SNAPSHOT_ERROR, e))?;
        tracing::info!(
            "microVM {} snapshotted to {}",
            self.instance.id,
            params.snapshot_path
        );
        Ok(ApiReply::NoContent)
    }

    fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> ApiOutcome {
        self.require_not_started()?;
        if self.boot_specific_configured {
            return Err(ApiError::bad_request(LOAD_SNAPSHOT_NOT_ALLOWED));
        }
        if let Some(feature) = params.unsupported() {
            return Err(backend_err(
                LOAD_SNAPSHOT_ERROR,
                BackendError::Unsupported(feature),
            ));
        }
        let mut restored = self.backend.load_snapshot(params).map_err(|e| {
            ApiError::bad_request(format!("{LOAD_SNAPSHOT_ERROR}: {RESTORE_FAILED}: {e}"))
        })?;
        // A restored microVM has no boot source (Firecracker reports none
        // either); the logger and metrics are this process's own.
        restored.boot_source = None;
        restored.logger = self.resources.logger.take();
        restored.metrics = self.resources.metrics.take();
        self.resources = restored;
        tracing::info!(
            "microVM {} restored from {}",
            self.instance.id,
            params.snapshot_path
        );
        if params.resume_after_load() {
            // The microVM exists (Paused) whatever happens here; a failed
            // resume is reported and can be retried with PATCH /vm.
            self.backend.resume().map_err(|e| {
                ApiError::bad_request(format!("{LOAD_SNAPSHOT_ERROR}: {RESUME_FAILED}: {e}"))
            })?;
        }
        Ok(ApiReply::NoContent)
    }

    fn action(&mut self, action: ActionType) -> ApiOutcome {
        match action {
            ActionType::InstanceStart => {
                self.require_not_started()?;
                if self.resources.boot_source.is_none() {
                    return Err(ApiError::bad_request(MISSING_KERNEL));
                }
                self.backend
                    .start(&self.resources)
                    .map_err(|e| backend_err("Start microvm error", e))?;
                tracing::info!("microVM {} started", self.instance.id);
            }
            ActionType::SendCtrlAltDel => {
                self.require_started()?;
                self.backend
                    .send_ctrl_alt_del()
                    .map_err(|e| backend_err("Internal VMM error", e))?;
            }
            ActionType::FlushMetrics => {
                self.require_started()?;
                self.backend
                    .flush_metrics()
                    .map_err(|e| backend_err("Internal VMM error", e))?;
                self.telemetry
                    .metrics
                    .flush()
                    .map_err(|e| ApiError::bad_request(format!("Internal VMM error: {e}")))?;
            }
        }
        Ok(ApiReply::NoContent)
    }

    fn configure_logger(&mut self, cfg: LoggerConfig) -> Result<(), ApiError> {
        cfg.validate()
            .map_err(|e| res_err(ResourceError::Logger(e)))?;
        if let Some(logger) = &self.telemetry.logger {
            logger
                .configure(&cfg.to_options())
                .map_err(|e| res_err(ResourceError::Logger(e.to_string())))?;
        } else if let Some(path) = &cfg.log_path {
            // No logger installed: still check the path, so the answer is
            // the same as with one.
            ember_telemetry::open_sink(Path::new(path))
                .map_err(|e| res_err(ResourceError::Logger(e.to_string())))?;
        }
        self.resources
            .logger
            .get_or_insert_with(LoggerConfig::default)
            .merge(&cfg);
        Ok(())
    }

    fn configure_metrics(&mut self, cfg: MetricsConfig) -> Result<(), ApiError> {
        cfg.validate()
            .map_err(|e| res_err(ResourceError::Metrics(e)))?;
        self.telemetry
            .metrics
            .configure(Path::new(&cfg.metrics_path))
            .map_err(|e| res_err(ResourceError::Metrics(e.to_string())))?;
        self.resources.metrics = Some(cfg);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[derive(Debug, thiserror::Error)]
    #[error("vCPU 0 did not answer")]
    struct Inner;

    #[test]
    fn backend_errors_read_well_and_keep_their_source() {
        let e = BackendError::failed(Inner);
        assert_eq!(e.to_string(), "vCPU 0 did not answer");
        let source = e.source().expect("the VMM's error is the source");
        assert!(source.downcast_ref::<Inner>().is_some());
        assert_eq!(
            backend_err("Internal VMM error", e).message,
            "Internal VMM error: vCPU 0 did not answer"
        );
        assert_eq!(
            BackendError::failed("plain words").to_string(),
            "plain words"
        );
        assert_eq!(
            BackendError::Unsupported("a serial console rate limiter").to_string(),
            "a serial console rate limiter is not supported by Ember yet"
        );
        assert_eq!(
            BackendError::NotRunning.to_string(),
            "the microVM is not running"
        );
        let e = BackendError::InvalidConfig("drive 'x': no path".into());
        assert_eq!(e.to_string(), "drive 'x': no path");
        assert!(e.source().is_none());
    }
}
