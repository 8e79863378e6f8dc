//! The `--config-file` document: Firecracker's full VM configuration.
//!
//! Every file Firecracker accepts parses here. Sections naming a feature
//! Ember does not have yet are refused with a message that names the
//! section, so nothing is silently ignored. Empty lists and nulls ask for
//! nothing and are fine.

use serde::Deserialize;
use serde_json::Value;

use crate::models::{BootSource, MachineConfig, MachineConfigError, SerialConfig};

/// The parsed configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfigFile {
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub serial: Option<SerialConfig>,
    // Sections Ember does not implement yet: parsed loosely, refused in
    // `check_supported` unless empty.
    #[serde(default)]
    pub drives: Option<Value>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Option<Value>,
    #[serde(default)]
    pub vsock: Option<Value>,
    #[serde(default)]
    pub entropy: Option<Value>,
    #[serde(default)]
    pub balloon: Option<Value>,
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<Value>,
    #[serde(default)]
    pub logger: Option<Value>,
    #[serde(default)]
    pub metrics: Option<Value>,
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<Value>,
    #[serde(default)]
    pub pmem: Option<Value>,
    #[serde(rename = "memory-hotplug", default)]
    pub memory_hotplug: Option<Value>,
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// Not JSON, wrong types, unknown or missing fields.
    #[error("invalid configuration file: {0}")]
    Parse(#[from] serde_json::Error),
    /// No `boot-source` section.
    #[error("the configuration file has no \"boot-source\" section: a kernel is required")]
    NoBootSource,
    /// A section asks for a feature Ember does not have.
    #[error("the configuration file's \"{section}\" section asks for {feature}, which Ember does not support yet")]
    Unsupported {
        section: &'static str,
        feature: &'static str,
    },
    /// `machine-config` breaks a rule.
    #[error("invalid \"machine-config\": {0}")]
    MachineConfig(#[from] MachineConfigError),
}

fn asks_for_something(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

impl VmConfigFile {
    /// Parses and validates a configuration document.
    pub fn parse(json: &str) -> Result<Self, ConfigFileError> {
        let cfg: VmConfigFile = serde_json::from_str(json)?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigFileError> {
        if self.boot_source.is_none() {
            return Err(ConfigFileError::NoBootSource);
        }
        if let Some(m) = &self.machine_config {
            m.validate()?;
        }
        if let Some(s) = &self.serial {
            if s.rate_limiter.is_some() {
                return Err(ConfigFileError::Unsupported {
                    section: "serial",
                    feature: "a console rate limiter",
                });
            }
        }
        let unsupported: [(&Option<Value>, &'static str, &'static str); 11] = [
            (&self.drives, "drives", "block devices"),
            (
                &self.network_interfaces,
                "network-interfaces",
                "network devices",
            ),
            (&self.vsock, "vsock", "a vsock device"),
            (&self.entropy, "entropy", "an entropy device"),
            (&self.balloon, "balloon", "a balloon device"),
            (&self.cpu_config, "cpu-config", "custom CPU templates"),
            (&self.logger, "logger", "logger configuration"),
            (&self.metrics, "metrics", "metrics"),
            (
                &self.mmds_config,
                "mmds-config",
                "the MMDS metadata service",
            ),
            (&self.pmem, "pmem", "pmem devices"),
            (&self.memory_hotplug, "memory-hotplug", "memory hotplug"),
        ];
        for (value, section, feature) in unsupported {
            if asks_for_something(value) {
                return Err(ConfigFileError::Unsupported { section, feature });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_and_empty_sections_are_accepted() {
        let c = VmConfigFile::parse(
            r#"{"boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"},
                "drives": [], "network-interfaces": [], "machine-config":
                {"vcpu_count": 2, "mem_size_mib": 256}, "vsock": null}"#,
        )
        .unwrap();
        assert_eq!(c.boot_source.unwrap().kernel_image_path, "vmlinux");
        assert_eq!(c.machine_config.unwrap().vcpu_count, 2);
    }

    #[test]
    fn unsupported_sections_are_named() {
        let e = VmConfigFile::parse(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "drives": [{"drive_id": "root"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"drives\""), "{e}");
        let e = VmConfigFile::parse(
            r#"{"boot-source": {"kernel_image_path": "k"}, "balloon": {"amount_mib": 1}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("balloon"), "{e}");
    }

    #[test]
    fn bad_documents_fail_clearly() {
        for bad in [
            "",
            "[]",
            r#"{"boot-source": {"kernel_image_path": 5}}"#,
            r#"{"boot-source": {"kernel_image_path": "k", "extra": 1}}"#,
            r#"{"boot-source": {"kernel_image_path": "k"}, "surprise": {}}"#,
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 1}}"#,
            r#"{"boot-source": {"kernel_image_path": "k"},
                "machine-config": {"vcpu_count": 33, "mem_size_mib": 1}}"#,
        ] {
            assert!(VmConfigFile::parse(bad).is_err(), "accepted: {bad}");
        }
    }
}
