//! `BootSource`: the kernel, its command line and the initrd.

use serde::{Deserialize, Serialize};

/// The longest kernel command line accepted (x86's boot protocol limit is
/// 2048 bytes including the terminating NUL).
pub const MAX_BOOT_ARGS_LEN: usize = 2047;

/// Where the guest kernel comes from, as `PUT /boot-source` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel image (ELF vmlinux or bzImage).
    pub kernel_image_path: String,
    /// Kernel command line. Firecracker's default applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of the initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

impl BootSource {
    /// Checks the fields on their own (no file system access).
    pub fn validate(&self) -> Result<(), String> {
        if self.kernel_image_path.is_empty() {
            return Err("kernel_image_path cannot be empty".into());
        }
        if matches!(&self.initrd_path, Some(p) if p.is_empty()) {
            return Err("initrd_path cannot be empty".into());
        }
        if let Some(args) = &self.boot_args {
            if args.len() > MAX_BOOT_ARGS_LEN {
                return Err(format!(
                    "boot_args is {} bytes long; the kernel command line holds at most {MAX_BOOT_ARGS_LEN}",
                    args.len()
                ));
            }
            if args.contains('\0') {
                return Err("boot_args cannot contain NUL characters".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_source_rules() {
        let b: BootSource = serde_json::from_str(
            r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}"#,
        )
        .unwrap();
        b.validate().unwrap();
        assert!(serde_json::from_str::<BootSource>(r#"{"boot_args": "x"}"#).is_err());
        let b: BootSource = serde_json::from_str(r#"{"kernel_image_path": ""}"#).unwrap();
        assert!(b.validate().is_err());
        let b = BootSource {
            kernel_image_path: "/k".into(),
            boot_args: Some("a".repeat(3000)),
            initrd_path: None,
        };
        assert!(b.validate().unwrap_err().contains("2047"));
    }
}
