//! `Logger` (`PUT /logger`) and `Metrics` (`PUT /metrics`).

use std::fmt;
use std::path::PathBuf;

use ember_telemetry::{LogLevel, LoggerOptions};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A log level name, parsed without regard to case (`"warning"`, `"WARN"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelName(pub LogLevel);

impl Serialize for LevelName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for LevelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = LevelName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a log level name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LevelName, E> {
                v.parse().map(LevelName).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The logger configuration. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// Error, Warning, Info, Debug, Trace or Off (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LevelName>,
    /// A file or named pipe for the log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Print each line's level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print each line's source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log from modules whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl LoggerConfig {
    /// Checks the fields on their own.
    pub fn validate(&self) -> Result<(), String> {
        if matches!(&self.log_path, Some(p) if p.is_empty()) {
            return Err("log_path cannot be empty".into());
        }
        Ok(())
    }

    /// The options for [`ember_telemetry::LoggerHandle::configure`].
    pub fn to_options(&self) -> LoggerOptions {
        LoggerOptions {
            level: self.level.map(|l| l.0),
            log_path: self.log_path.as_ref().map(PathBuf::from),
            show_level: self.show_level,
            show_log_origin: self.show_log_origin,
            module: self.module.clone(),
        }
    }

    /// Folds a later configuration into this one (fields left out keep
    /// their value), mirroring what the logger itself does.
    pub fn merge(&mut self, later: &LoggerConfig) {
        if later.level.is_some() {
            self.level = later.level;
        }
        if later.log_path.is_some() {
            self.log_path.clone_from(&later.log_path);
        }
        if later.show_level.is_some() {
            self.show_level = later.show_level;
        }
        if later.show_log_origin.is_some() {
            self.show_log_origin = later.show_log_origin;
        }
        if later.module.is_some() {
            self.module.clone_from(&later.module);
        }
    }
}

/// The metrics configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A file or named pipe for the JSON lines.
    pub metrics_path: String,
}

impl MetricsConfig {
    /// Checks the fields on their own.
    pub fn validate(&self) -> Result<(), String> {
        if self.metrics_path.is_empty() {
            return Err("metrics_path cannot be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logger_bodies() {
        let l: LoggerConfig = serde_json::from_str(
            r#"{"level": "warning", "log_path": "/tmp/l", "show_level": true,
                "show_log_origin": false, "module": "ember_api::http"}"#,
        )
        .unwrap();
        assert_eq!(l.level, Some(LevelName(LogLevel::Warning)));
        assert_eq!(serde_json::to_value(l.level).unwrap(), "Warning");
        l.validate().unwrap();
        let o = l.to_options();
        assert_eq!(o.log_path, Some(PathBuf::from("/tmp/l")));
        let e = serde_json::from_str::<LoggerConfig>(r#"{"level": "loud"}"#).unwrap_err();
        assert!(e.to_string().contains("Warning"), "{e}");
        assert!(serde_json::from_str::<LoggerConfig>(r#"{"level": 3}"#).is_err());
        assert!(serde_json::from_str::<LoggerConfig>(r#"{"path": "/x"}"#).is_err());
        let mut a = LoggerConfig::default();
        a.merge(&l);
        a.merge(&LoggerConfig {
            level: Some(LevelName(LogLevel::Off)),
            ..Default::default()
        });
        assert_eq!(a.log_path.as_deref(), Some("/tmp/l"));
        assert_eq!(a.level, Some(LevelName(LogLevel::Off)));
    }

    #[test]
    fn metrics_bodies() {
        let m: MetricsConfig = serde_json::from_str(r#"{"metrics_path": "/m"}"#).unwrap();
        m.validate().unwrap();
        assert!(serde_json::from_str::<MetricsConfig>("{}").is_err());
        let m: MetricsConfig = serde_json::from_str(r#"{"metrics_path": ""}"#).unwrap();
        assert!(m.validate().is_err());
    }
}
