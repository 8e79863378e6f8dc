//! `MachineConfiguration`: vCPUs, memory and CPU options.

use serde::{Deserialize, Serialize};

/// The largest vCPU count Firecracker's API allows.
pub const MAX_VCPUS: u8 = 32;

/// Firecracker's deprecated static CPU templates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    #[default]
    None,
}

/// Huge-page backing of guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    #[default]
    None,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// The machine configuration, as `PUT /machine-config` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs, 1 to 32.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: usize,
    /// Simultaneous multithreading: two threads per core.
    #[serde(default)]
    pub smt: bool,
    /// Deprecated static CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Track pages the guest dirties (for diff snapshots).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge-page backing for guest memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: None,
        }
    }
}

/// Why a machine configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MachineConfigError {
    /// vCPU count outside 1..=32.
    #[error("vcpu_count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u8),
    /// SMT needs an even number of vCPUs (or just one).
    #[error("with smt enabled, vcpu_count must be 1 or an even number, got {0}")]
    SmtOddVcpus(u8),
    /// Zero memory.
    #[error("mem_size_mib must be at least 1")]
    ZeroMemory,
    /// A CPU template other than "None".
    #[error("cpu_template {0:?} is not supported by Ember: CPU templates do not exist yet; omit the field or use \"None\"")]
    CpuTemplate(CpuTemplate),
    /// Dirty page tracking needs snapshots.
    #[error("track_dirty_pages is not supported by Ember yet: it only serves diff snapshots, which do not exist yet")]
    DirtyPages,
}

impl MachineConfig {
    /// Checks the rules Firecracker applies, and refuses what Ember lacks.
    pub fn validate(&self) -> Result<(), MachineConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(MachineConfigError::VcpuCount(self.vcpu_count));
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1 {
            return Err(MachineConfigError::SmtOddVcpus(self.vcpu_count));
        }
        if self.mem_size_mib == 0 {
            return Err(MachineConfigError::ZeroMemory);
        }
        match self.cpu_template {
            None | Some(CpuTemplate::None) => {}
            Some(t) => return Err(MachineConfigError::CpuTemplate(t)),
        }
        if self.track_dirty_pages {
            return Err(MachineConfigError::DirtyPages);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MachineConfig, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn firecracker_bodies_parse() {
        let m = parse(r#"{"vcpu_count": 2, "mem_size_mib": 1024}"#).unwrap();
        assert_eq!(m.vcpu_count, 2);
        assert!(!m.smt);
        let m = parse(
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false,
                "huge_pages": "2M", "cpu_template": "None"}"#,
        )
        .unwrap();
        assert_eq!(m.huge_pages, Some(HugePages::Hugetlbfs2M));
        m.validate().unwrap();
    }

    #[test]
    fn wrong_types_unknown_and_missing_fields_fail() {
        assert!(parse(r#"{"vcpu_count": "2", "mem_size_mib": 128}"#).is_err());
        assert!(parse(r#"{"vcpu_count": 2, "mem_size_mib": 128, "x": 1}"#).is_err());
        assert!(parse(r#"{"vcpu_count": 2}"#).is_err());
        assert!(parse(r#"{"vcpu_count": 300, "mem_size_mib": 128}"#).is_err());
        assert!(parse(r#"{"vcpu_count": -1, "mem_size_mib": 128}"#).is_err());
    }

    #[test]
    fn validation_rules() {
        let mut m = MachineConfig::default();
        m.validate().unwrap();
        m.vcpu_count = 0;
        assert_eq!(m.validate(), Err(MachineConfigError::VcpuCount(0)));
        m.vcpu_count = 33;
        assert_eq!(m.validate(), Err(MachineConfigError::VcpuCount(33)));
        m.vcpu_count = 3;
        m.smt = true;
        assert_eq!(m.validate(), Err(MachineConfigError::SmtOddVcpus(3)));
        m.smt = false;
        m.mem_size_mib = 0;
        assert_eq!(m.validate(), Err(MachineConfigError::ZeroMemory));
        m.mem_size_mib = 1;
        m.cpu_template = Some(CpuTemplate::T2);
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cpu_template"));
    }
}
