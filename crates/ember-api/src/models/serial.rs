//! `SerialDevice`: where the guest console goes.

use serde::{Deserialize, Serialize};

/// The serial console configuration (`PUT /serial`, config key `serial`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// A file or named pipe that receives the console output instead of
    /// standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<String>,
    /// A token bucket for console output (not supported yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}
