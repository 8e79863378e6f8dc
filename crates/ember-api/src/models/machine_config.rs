//! `MachineConfiguration`: vCPUs, memory and CPU options.

use serde::{Deserialize, Serialize};

/// The largest vCPU count Firecracker's API allows.
pub const MAX_VCPUS: u8 = 32;
/// The largest memory size whose byte count still fits 64 bits.
pub const MAX_MEM_SIZE_MIB: u64 = u64::MAX >> 20;

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
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
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
    /// So much memory that its size in bytes does not fit 64 bits.
    #[error("mem_size_mib {0} is too large")]
    HugeMemory(usize),
    /// 2 MiB huge pages need an even number of MiB.
    #[error("with huge_pages \"2M\", mem_size_mib must be a multiple of 2, got {0}")]
    HugePageMultiple(usize),
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
        if self.mem_size_mib as u64 > MAX_MEM_SIZE_MIB {
            return Err(MachineConfigError::HugeMemory(self.mem_size_mib));
        }
        if self.huge_pages == HugePages::Hugetlbfs2M && self.mem_size_mib % 2 == 1 {
            return Err(MachineConfigError::HugePageMultiple(self.mem_size_mib));
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

/// A partial machine configuration, as `PATCH /machine-config` takes it:
/// fields left out keep their current value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// Number of vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// Guest memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<usize>,
    /// Simultaneous multithreading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Deprecated static CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Dirty page tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Huge-page backing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    /// Whether the update names no field at all.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl MachineConfig {
    /// This configuration with `update` applied, validated as a whole.
    pub fn updated(&self, update: &MachineConfigUpdate) -> Result<Self, MachineConfigError> {
        let cfg = Self {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            cpu_template: update.cpu_template.or(self.cpu_template),
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: update.huge_pages.unwrap_or(self.huge_pages),
        };
        cfg.validate()?;
        Ok(cfg)
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
        assert_eq!(m.huge_pages, HugePages::Hugetlbfs2M);
        m.validate().unwrap();
        let v = serde_json::to_value(MachineConfig::default()).unwrap();
        assert_eq!(v["huge_pages"], "None");
        assert!(v.get("cpu_template").is_none());
    }

    #[test]
    fn updates_merge_and_validate_as_a_whole() {
        let base = MachineConfig::default();
        let up: MachineConfigUpdate = serde_json::from_str(r#"{"vcpu_count": 4}"#).unwrap();
        let m = base.updated(&up).unwrap();
        assert_eq!((m.vcpu_count, m.mem_size_mib), (4, 128));
        let up: MachineConfigUpdate =
            serde_json::from_str(r#"{"vcpu_count": 3, "smt": true}"#).unwrap();
        assert_eq!(base.updated(&up), Err(MachineConfigError::SmtOddVcpus(3)));
        let up: MachineConfigUpdate =
            serde_json::from_str(r#"{"mem_size_mib": 129, "huge_pages": "2M"}"#).unwrap();
        assert_eq!(
            base.updated(&up),
            Err(MachineConfigError::HugePageMultiple(129))
        );
        assert!(MachineConfigUpdate::default().is_empty());
        assert!(serde_json::from_str::<MachineConfigUpdate>(r#"{"vcpus": 1}"#).is_err());
        let huge = MachineConfig {
            mem_size_mib: usize::MAX,
            ..MachineConfig::default()
        };
        assert_eq!(
            huge.validate(),
            Err(MachineConfigError::HugeMemory(usize::MAX))
        );
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
