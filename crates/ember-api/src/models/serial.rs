//! `SerialDevice`: where the guest console goes.

use serde::{Deserialize, Serialize};

use super::rate_limiter::TokenBucket;

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
    pub rate_limiter: Option<TokenBucket>,
}

impl SerialConfig {
    /// Checks the fields, refusing what Ember does not have yet.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate_limiter.is_some() {
            return Err(
                "the serial console rate_limiter is not supported by Ember yet; omit the field"
                    .into(),
            );
        }
        if matches!(&self.serial_out_path, Some(p) if p.is_empty()) {
            return Err("serial_out_path cannot be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_bodies() {
        let s: SerialConfig = serde_json::from_str(r#"{"serial_out_path": "/tmp/c"}"#).unwrap();
        s.validate().unwrap();
        SerialConfig::default().validate().unwrap();
        let s: SerialConfig =
            serde_json::from_str(r#"{"rate_limiter": {"size": 1, "refill_time": 1}}"#).unwrap();
        assert!(s.validate().unwrap_err().contains("rate_limiter"));
        assert!(serde_json::from_str::<SerialConfig>(r#"{"path": "/x"}"#).is_err());
    }
}
