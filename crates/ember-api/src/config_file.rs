//! The `--config-file` document: Firecracker's full VM configuration.
//!
//! Every file Firecracker accepts parses here, section by section into the
//! same models the API uses, so an error names the section it is in.
//! Sections naming a feature Ember does not have yet (balloon, mmds-config,
//! cpu-config, pmem, memory-hotplug) are refused with a message naming the
//! section; empty lists and nulls ask for nothing and are fine. The output
//! of `GET /vm/config` is a valid configuration file.
//!
//! A parsed file boots through the same path as the API: pass it to
//! [`crate::ApiController::boot_from_config_file`], which replays it as API
//! requests. [`VmConfigFile::into_resources`] builds the resources without a
//! controller (e.g. to check a file).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::models::{
    find_array, ActionType, BootSource, Drive, EntropyDevice, LoggerConfig, MachineConfig,
    MachineConfigError, MetricsConfig, NetworkInterface, SerialConfig, Vsock,
};
use crate::request::ApiRequest;
use crate::resources::{ResourceError, VmResources};

/// The parsed configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmConfigFile {
    /// `boot-source` (required).
    pub boot_source: Option<BootSource>,
    /// `machine-config`.
    pub machine_config: Option<MachineConfig>,
    /// `serial`.
    pub serial: Option<SerialConfig>,
    /// `drives`.
    pub drives: Vec<Drive>,
    /// `network-interfaces`.
    pub network_interfaces: Vec<NetworkInterface>,
    /// `vsock`.
    pub vsock: Option<Vsock>,
    /// `entropy`.
    pub entropy: Option<EntropyDevice>,
    /// `logger`.
    pub logger: Option<LoggerConfig>,
    /// `metrics`.
    pub metrics: Option<MetricsConfig>,
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// Not JSON at all.
    #[error("invalid configuration file: {0}")]
    Parse(#[from] serde_json::Error),
    /// JSON, but not an object.
    #[error("invalid configuration file: the document must be a JSON object")]
    NotAnObject,
    /// A key Firecracker does not know.
    #[error("invalid configuration file: unknown section \"{0}\"")]
    UnknownSection(String),
    /// A section with wrong types, unknown or missing fields.
    #[error("invalid \"{section}\" section: {source}")]
    Section {
        /// The section's key.
        section: &'static str,
        /// What serde found.
        source: serde_json::Error,
    },
    /// No `boot-source` section.
    #[error("the configuration file has no \"boot-source\" section: a kernel is required")]
    NoBootSource,
    /// A section asks for a feature Ember does not have.
    #[error("the configuration file's \"{section}\" section asks for {feature}, which Ember does not support yet")]
    Unsupported {
        /// The section's key.
        section: &'static str,
        /// The missing feature.
        feature: &'static str,
    },
    /// `machine-config` breaks a rule.
    #[error("invalid \"machine-config\": {0}")]
    MachineConfig(#[from] MachineConfigError),
    /// A section's values break a rule.
    #[error("invalid \"{section}\" section: {message}")]
    Invalid {
        /// The section's key.
        section: &'static str,
        /// The rule broken.
        message: String,
    },
    /// Applying the sections failed (missing files, duplicate root drive...).
    #[error("{0}")]
    Resource(#[from] ResourceError),
}

/// Sections of features Ember lacks: key and what it would ask for.
const UNSUPPORTED: [(&str, &str); 5] = [
    ("balloon", "a balloon device"),
    ("cpu-config", "custom CPU templates"),
    ("mmds-config", "the MMDS metadata service"),
    ("pmem", "pmem devices"),
    ("memory-hotplug", "memory hotplug"),
];

const SUPPORTED: [&str; 9] = [
    "boot-source",
    "machine-config",
    "serial",
    "drives",
    "network-interfaces",
    "vsock",
    "entropy",
    "logger",
    "metrics",
];

fn asks_for_something(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
}

/// Whether `v` is an object, or a list of objects, with no arrays inside:
/// a struct must not be filled from an array of its fields, which serde
/// would otherwise allow.
fn object_shaped(v: &Value) -> bool {
    match v {
        Value::Object(_) => find_array(v).is_none(),
        Value::Array(items) => items
            .iter()
            .all(|item| item.is_object() && find_array(item).is_none()),
        _ => false,
    }
}

fn section<T: DeserializeOwned>(
    doc: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Option<T>, ConfigFileError> {
    match doc.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) if !object_shaped(&v) => Err(ConfigFileError::Invalid {
            section: key,
            message: "expected a JSON object (or a list of objects)".into(),
        }),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|source| ConfigFileError::Section {
                section: key,
                source,
            }),
    }
}

fn check<T>(
    section: &'static str,
    items: &[T],
    validate: impl Fn(&T) -> Result<(), String>,
) -> Result<(), ConfigFileError> {
    for item in items {
        validate(item).map_err(|message| ConfigFileError::Invalid { section, message })?;
    }
    Ok(())
}

impl VmConfigFile {
    /// Parses and validates a configuration document (without touching the
    /// file system).
    pub fn parse(json: &str) -> Result<Self, ConfigFileError> {
        let Value::Object(mut doc) = serde_json::from_str::<Value>(json)? else {
            return Err(ConfigFileError::NotAnObject);
        };
        if let Some(key) = doc
            .keys()
            .find(|k| !SUPPORTED.contains(&k.as_str()) && !UNSUPPORTED.iter().any(|(u, _)| u == k))
        {
            return Err(ConfigFileError::UnknownSection(key.clone()));
        }
        for (key, feature) in UNSUPPORTED {
            if doc.get(key).is_some_and(asks_for_something) {
                return Err(ConfigFileError::Unsupported {
                    section: key,
                    feature,
                });
            }
        }
        let cfg = VmConfigFile {
            boot_source: section(&mut doc, "boot-source")?,
            machine_config: section(&mut doc, "machine-config")?,
            serial: section(&mut doc, "serial")?,
            drives: section(&mut doc, "drives")?.unwrap_or_default(),
            network_interfaces: section(&mut doc, "network-interfaces")?.unwrap_or_default(),
            vsock: section(&mut doc, "vsock")?,
            entropy: section(&mut doc, "entropy")?,
            logger: section(&mut doc, "logger")?,
            metrics: section(&mut doc, "metrics")?,
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigFileError> {
        let Some(boot) = &self.boot_source else {
            return Err(ConfigFileError::NoBootSource);
        };
        check(
            "boot-source",
            std::slice::from_ref(boot),
            BootSource::validate,
        )?;
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
            check("serial", std::slice::from_ref(s), SerialConfig::validate)?;
        }
        check("drives", &self.drives, Drive::validate)?;
        check(
            "network-interfaces",
            &self.network_interfaces,
            NetworkInterface::validate,
        )?;
        check("vsock", self.vsock.as_slice(), Vsock::validate)?;
        check("entropy", self.entropy.as_slice(), EntropyDevice::validate)?;
        check("logger", self.logger.as_slice(), LoggerConfig::validate)?;
        check("metrics", self.metrics.as_slice(), MetricsConfig::validate)?;
        Ok(())
    }

    /// The API requests that configure the same microVM, in the order
    /// Firecracker applies a configuration file (logger and metrics first).
    /// `InstanceStart` is not included.
    pub fn into_requests(self) -> Vec<ApiRequest> {
        let mut out = Vec::new();
        out.extend(self.logger.map(ApiRequest::PutLogger));
        out.extend(self.metrics.map(ApiRequest::PutMetrics));
        out.extend(self.machine_config.map(ApiRequest::PutMachineConfig));
        out.extend(self.boot_source.map(ApiRequest::PutBootSource));
        out.extend(self.drives.into_iter().map(ApiRequest::PutDrive));
        out.extend(
            self.network_interfaces
                .into_iter()
                .map(ApiRequest::PutNetworkInterface),
        );
        out.extend(self.vsock.map(ApiRequest::PutVsock));
        out.extend(self.entropy.map(ApiRequest::PutEntropy));
        out.extend(self.serial.map(ApiRequest::PutSerial));
        out
    }

    /// Builds the resources directly, with the same checks as the API
    /// (files exist, one root drive...). Logger and metrics are recorded
    /// but not applied: that is the controller's job.
    pub fn into_resources(self) -> Result<VmResources, ConfigFileError> {
        let mut r = VmResources::default();
        for request in self.into_requests() {
            match request {
                ApiRequest::PutLogger(l) => r.logger = Some(l),
                ApiRequest::PutMetrics(m) => r.metrics = Some(m),
                ApiRequest::PutMachineConfig(m) => r.set_machine_config(m)?,
                ApiRequest::PutBootSource(b) => r.set_boot_source(b)?,
                ApiRequest::PutDrive(d) => r.insert_drive(d)?,
                ApiRequest::PutNetworkInterface(n) => r.insert_network_interface(n)?,
                ApiRequest::PutVsock(v) => r.set_vsock(v)?,
                ApiRequest::PutEntropy(e) => r.set_entropy(e)?,
                ApiRequest::PutSerial(s) => r.set_serial(s)?,
                ApiRequest::Action(ActionType::InstanceStart) => {}
                _ => {}
            }
        }
        Ok(r)
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
        for (key, body) in [
            ("mmds-config", r#"{"network_interfaces": ["eth0"]}"#),
            ("cpu-config", r#"{"kvm_capabilities": []}"#),
            ("pmem", r#"[{"id": "p", "path_on_host": "/x"}]"#),
            ("memory-hotplug", r#"{"total_size_mib": 1024}"#),
        ] {
            let doc =
                format!(r#"{{"boot-source": {{"kernel_image_path": "k"}}, "{key}": {body}}}"#);
            let e = VmConfigFile::parse(&doc).unwrap_err();
            assert!(
                matches!(e, ConfigFileError::Unsupported { section, .. } if section == key),
                "{key}: {e}"
            );
        }
        let e = VmConfigFile::parse(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "serial": {"rate_limiter": {"size": 1, "refill_time": 1}}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"serial\""), "{e}");
    }

    #[test]
    fn every_supported_section_parses_into_models() {
        let c = VmConfigFile::parse(
            r#"{
              "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
              "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                          "is_read_only": false}],
              "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                      "guest_mac": "06:00:ac:10:00:02"}],
              "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
              "entropy": {},
              "logger": {"level": "debug", "log_path": "/tmp/log"},
              "metrics": {"metrics_path": "/tmp/metrics"},
              "serial": {"serial_out_path": "/tmp/console"},
              "balloon": null, "mmds-config": null, "cpu-config": null, "pmem": [],
              "memory-hotplug": null
            }"#,
        )
        .unwrap();
        assert_eq!(c.drives[0].drive_id, "rootfs");
        assert_eq!(c.network_interfaces[0].host_dev_name, "tap0");
        assert_eq!(c.vsock.as_ref().unwrap().guest_cid, 3);
        let reqs = c.into_requests();
        assert!(matches!(reqs[0], ApiRequest::PutLogger(_)));
        assert!(matches!(reqs[1], ApiRequest::PutMetrics(_)));
        assert_eq!(reqs.len(), 9);
    }

    #[test]
    fn section_errors_name_the_section() {
        for (doc, section) in [
            (
                r#"{"boot-source": {"kernel_image_path": "k"}, "vsock": {"guest_cid": "3", "uds_path": "/v"}}"#,
                "vsock",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "k"}, "network-interfaces": [{"iface_id": "a"}]}"#,
                "network-interfaces",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "k"}, "logger": {"level": "chatty"}}"#,
                "logger",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "k"}, "vsock": {"guest_cid": 1, "uds_path": "/v"}}"#,
                "vsock",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "k"}, "drives": [{"drive_id": "a-b", "path_on_host": "/x", "is_root_device": false, "is_read_only": true}]}"#,
                "drives",
            ),
        ] {
            let e = VmConfigFile::parse(doc).unwrap_err().to_string();
            assert!(e.contains(&format!("\"{section}\"")), "{e}");
        }
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

    #[test]
    fn into_resources_checks_files() {
        let c = VmConfigFile::parse(r#"{"boot-source": {"kernel_image_path": "/nonexistent/k"}}"#)
            .unwrap();
        let e = c.into_resources().unwrap_err();
        assert!(e.to_string().contains("kernel file"), "{e}");
    }
}
