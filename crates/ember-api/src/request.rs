//! The typed messages between the HTTP thread and the VMM thread.
//!
//! The HTTP thread turns a valid HTTP request into an [`ApiRequest`] (the
//! body already parsed into a model), sends it to the VMM thread, and turns
//! the [`ApiOutcome`] it gets back into an HTTP response.

use crate::models::{
    ActionType, BootSource, Drive, EntropyDevice, FullVmConfig, InstanceInfo, LoggerConfig,
    MachineConfig, MachineConfigUpdate, MetricsConfig, NetworkInterface, PartialDrive,
    PartialNetworkInterface, RequestedVmState, SerialConfig, SnapshotCreateParams,
    SnapshotLoadParams, VersionInfo, Vsock,
};

/// One API operation with its parsed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /`
    GetInstanceInfo,
    /// `GET /version`
    GetVersion,
    /// `GET /vm/config`
    GetVmConfig,
    /// `GET /machine-config`
    GetMachineConfig,
    /// `PUT /machine-config`
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /boot-source`
    PutBootSource(BootSource),
    /// `PUT /drives/{drive_id}`
    PutDrive(Drive),
    /// `PATCH /drives/{drive_id}`
    PatchDrive(PartialDrive),
    /// `PUT /network-interfaces/{iface_id}`
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{iface_id}`
    PatchNetworkInterface(PartialNetworkInterface),
    /// `PUT /vsock`
    PutVsock(Vsock),
    /// `PUT /entropy`
    PutEntropy(EntropyDevice),
    /// `PUT /serial`
    PutSerial(SerialConfig),
    /// `PUT /logger`
    PutLogger(LoggerConfig),
    /// `PUT /metrics`
    PutMetrics(MetricsConfig),
    /// `PUT /actions`
    Action(ActionType),
    /// `PATCH /vm`
    SetVmState(RequestedVmState),
    /// `PUT /snapshot/create`
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load` (a body naming exactly one memory source)
    LoadSnapshot(SnapshotLoadParams),
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiReply {
    /// 204, no body.
    NoContent,
    /// 200 with the instance information.
    InstanceInfo(InstanceInfo),
    /// 200 with the version.
    Version(VersionInfo),
    /// 200 with the machine configuration.
    MachineConfig(MachineConfig),
    /// 200 with the full configuration.
    VmConfig(Box<FullVmConfig>),
}

/// A refused request: an HTTP status (always 4xx for client input) and the
/// text of the `fault_message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Human-readable reason.
    pub message: String,
}

impl ApiError {
    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }

    /// An error with another status.
    pub fn with_status(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// What the VMM thread answers.
pub type ApiOutcome = Result<ApiReply, ApiError>;
