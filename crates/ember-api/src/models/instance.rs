//! Instance-level bodies: `InstanceInfo` (`GET /`), the version
//! (`GET /version`), actions (`PUT /actions`) and the run state
//! (`PATCH /vm`).

use serde::{Deserialize, Serialize};

/// The microVM's state as `GET /` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Configuring; `InstanceStart` not yet done.
    #[serde(rename = "Not started")]
    NotStarted,
    /// The vCPUs run.
    Running,
    /// Booted, vCPUs paused.
    Paused,
}

impl VmState {
    /// Whether the microVM has been started (running or paused).
    pub fn is_started(self) -> bool {
        self != VmState::NotStarted
    }
}

/// The body of `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The application's name.
    pub app_name: String,
    /// The instance id (`--id`).
    pub id: String,
    /// The run state.
    pub state: VmState,
    /// The VMM's own version.
    pub vmm_version: String,
}

/// The body of `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The Firecracker API version this VMM answers to.
    pub firecracker_version: String,
}

/// The `action_type` values of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Write a metrics line now (post-boot).
    FlushMetrics,
    /// Boot the microVM (pre-boot).
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's i8042 keyboard (post-boot).
    SendCtrlAltDel,
}

/// The body of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// What to do.
    pub action_type: ActionType,
}

/// The states `PATCH /vm` may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestedVmState {
    /// Pause the vCPUs.
    Paused,
    /// Resume the vCPUs.
    Resumed,
}

/// The body of `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    /// The wanted state.
    pub state: RequestedVmState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialization_matches_firecracker() {
        let info = InstanceInfo {
            app_name: "Ember".into(),
            id: "vm1".into(),
            state: VmState::NotStarted,
            vmm_version: "0.1.0".into(),
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["state"], "Not started");
        assert!(
            serde_json::from_str::<InstanceActionInfo>(r#"{"action_type": "Reboot"}"#).is_err()
        );
        assert!(serde_json::from_str::<InstanceActionInfo>(
            r#"{"action_type": "InstanceStart", "payload": 1}"#
        )
        .is_err());
        let s: VmStateUpdate = serde_json::from_str(r#"{"state": "Resumed"}"#).unwrap();
        assert_eq!(s.state, RequestedVmState::Resumed);
        assert!(serde_json::from_str::<VmStateUpdate>(r#"{"state": "Running"}"#).is_err());
    }
}
