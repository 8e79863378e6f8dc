//! Guest kernels, guest userland images and small helper programs, made by
//! the scripts in `scripts/guest/` and cached under the cache directory
//! (see [`crate::cache_dir`]), keyed by their inputs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{HarnessError, Result};
use crate::util::{cache_dir, fnv1a, repo_root, run_captured, run_script};

/// Time limit for fetching a kernel package.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Time limit for building the minimal kernel (about 8 minutes on 2 cores).
const KERNEL_BUILD_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// Time limit for building an image.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(300);

/// Debian's stock cloud kernel, unpacked (no build): the L1 kernel and an
/// L2 guest kernel whose virtio drivers are modules.
#[derive(Debug, Clone)]
pub struct DebianKernel {
    /// The cache directory holding it.
    pub dir: PathBuf,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// The ELF kernel extracted from the bzImage.
    pub vmlinux: PathBuf,
    /// The kernel's .config.
    pub config: PathBuf,
    /// Kernel release (`uname -r`).
    pub kver: String,
}

/// Fetch (or find cached) Debian's cloud kernel.
pub fn debian_kernel() -> Result<DebianKernel> {
    let dir = PathBuf::from(run_script(
        "guest/fetch-debian-kernel.sh",
        &[],
        FETCH_TIMEOUT,
    )?);
    let kver = std::fs::read_to_string(dir.join("KVER"))
        .map_err(|e| HarnessError::io(format!("read {}/KVER", dir.display()), e))?
        .trim()
        .to_string();
    Ok(DebianKernel {
        vmlinuz: dir.join("vmlinuz"),
        vmlinux: dir.join("vmlinux"),
        config: dir.join("config"),
        kver,
        dir,
    })
}

/// Ember's minimal microVM kernel (tinyconfig + guests/linux/microvm.config).
#[derive(Debug, Clone)]
pub struct MicrovmKernel {
    /// The cache directory holding it.
    pub dir: PathBuf,
    /// ELF kernel.
    pub vmlinux: PathBuf,
    /// bzImage.
    pub bzimage: PathBuf,
    /// The final .config.
    pub config: PathBuf,
}

/// Build (or find cached) the minimal microVM kernel. The first build takes
/// about 8 minutes on 2 cores.
pub fn microvm_kernel() -> Result<MicrovmKernel> {
    let dir = PathBuf::from(run_script(
        "guest/build-microvm-kernel.sh",
        &[],
        KERNEL_BUILD_TIMEOUT,
    )?);
    Ok(MicrovmKernel {
        vmlinux: dir.join("vmlinux"),
        bzimage: dir.join("bzImage"),
        config: dir.join("config"),
        dir,
    })
}

/// Description of an L2 guest userland (busybox + `guests/linux/init`),
/// packed as an initramfs or an ext4 root file system.
#[derive(Debug, Clone, Default)]
pub struct GuestImage {
    kernel_dir: Option<PathBuf>,
    modules: Option<Vec<String>>,
    runs: Vec<(PathBuf, Option<String>)>,
    cmds: Vec<(String, String)>,
    files: Vec<(PathBuf, String)>,
    init: Option<PathBuf>,
    gzip: bool,
    size: Option<String>,
}

impl GuestImage {
    /// An image with busybox, the guest init and guests/linux/run/*.
    pub fn new() -> Self {
        Self::default()
    }

    /// Include modules of this kernel (by default virtio-mmio, blk, net,
    /// vsock, balloon, rng and pvpanic-mmio), loaded by init in order.
    pub fn modules_from(mut self, kernel: &DebianKernel) -> Self {
        self.kernel_dir = Some(kernel.dir.clone());
        self
    }

    /// Choose the modules (names as `modprobe` knows them); their
    /// dependencies come along. Needs [`GuestImage::modules_from`].
    pub fn modules<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.modules = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Add a script file as `/ember/run/<name>` (`ember.run=<name>`).
    pub fn run_script(mut self, path: impl Into<PathBuf>, name: Option<&str>) -> Self {
        self.runs.push((path.into(), name.map(str::to_string)));
        self
    }

    /// Add a one-line shell command as `/ember/run/<name>`.
    pub fn command(mut self, name: &str, command: &str) -> Self {
        self.cmds.push((name.to_string(), command.to_string()));
        self
    }

    /// Add a file at `dst` (an absolute path in the image).
    pub fn file(mut self, src: impl Into<PathBuf>, dst: &str) -> Self {
        self.files.push((src.into(), dst.to_string()));
        self
    }

    /// Use another `/init`.
    pub fn init(mut self, path: impl Into<PathBuf>) -> Self {
        self.init = Some(path.into());
        self
    }

    /// Gzip the initramfs (default: uncompressed, the fastest to boot).
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Size of the ext4 image (e.g. "64M"; default: content + 50% + 32M).
    pub fn size(mut self, size: &str) -> Self {
        self.size = Some(size.to_string());
        self
    }

    fn common_args(&self) -> Result<Vec<String>> {
        let mut a = Vec::new();
        if let Some(k) = &self.kernel_dir {
            a.push("--kernel-dir".into());
            a.push(k.display().to_string());
        }
        if let Some(m) = &self.modules {
            if self.kernel_dir.is_none() {
                return Err(HarnessError::Invalid(
                    "GuestImage::modules needs modules_from".into(),
                ));
            }
            a.push("--modules".into());
            a.push(m.join(" "));
        }
        for (path, name) in &self.runs {
            a.push("--run".into());
            a.push(match name {
                Some(n) => format!("{}:{n}", path.display()),
                None => path.display().to_string(),
            });
        }
        for (name, cmd) in &self.cmds {
            if name.contains('=') || name.contains('/') || name.is_empty() {
                return Err(HarnessError::Invalid(format!("bad command name {name:?}")));
            }
            a.push("--cmd".into());
            a.push(format!("{name}={cmd}"));
        }
        for (src, dst) in &self.files {
            a.push("--file".into());
            a.push(format!("{}:{dst}", src.display()));
        }
        if let Some(init) = &self.init {
            a.push("--init".into());
            a.push(init.display().to_string());
        }
        Ok(a)
    }

    /// Build (or find cached) the initramfs; returns its path.
    pub fn initramfs(&self) -> Result<PathBuf> {
        let mut a = self.common_args()?;
        a.push("--compress".into());
        a.push(if self.gzip { "gzip" } else { "none" }.into());
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        Ok(run_script("guest/build-initramfs.sh", &args, IMAGE_TIMEOUT)?.into())
    }

    /// Build (or find cached) the ext4 root file system image. The cached
    /// file is shared: pass `copy_to` to get a private, writable copy.
    pub fn rootfs(&self, copy_to: Option<&Path>) -> Result<PathBuf> {
        let mut a = self.common_args()?;
        if let Some(size) = &self.size {
            a.push("--size".into());
            a.push(size.clone());
        }
        if let Some(dst) = copy_to {
            a.push("-o".into());
            a.push(dst.display().to_string());
        }
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        Ok(run_script("guest/build-rootfs.sh", &args, IMAGE_TIMEOUT)?.into())
    }
}

/// Build a C program statically with gcc (`-O2 -static` plus `flags`),
/// cached as `<cache>/helpers/<name>-<hash>/<name>` by the hash of its
/// source and flags.
pub fn static_c_program(source: &Path, flags: &[&str]) -> Result<PathBuf> {
    let code = std::fs::read(source)
        .map_err(|e| HarnessError::io(format!("read {}", source.display()), e))?;
    let flag_bytes = flags.join(" ");
    let key = fnv1a(&[&code, flag_bytes.as_bytes()]);
    let stem = source
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("helper");
    // <cache>/helpers/<stem>-<hash>/<stem>: the program keeps its own name.
    let dir = cache_dir()
        .join("helpers")
        .join(format!("{stem}-{key:016x}"));
    let out = dir.join(stem);
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
    let tmp = dir.join(format!("{stem}.tmp.{}", std::process::id()));
    let mut cmd = Command::new("gcc");
    cmd.args(["-O2", "-static", "-Wall", "-Wextra", "-Werror"])
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .arg(source);
    let res = run_captured(&mut cmd, Duration::from_secs(120))?;
    if !res.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(HarnessError::Tool {
            what: format!("gcc {}", source.display()),
            detail: res.tail(30),
        });
    }
    std::fs::rename(&tmp, &out)
        .map_err(|e| HarnessError::io(format!("rename to {}", out.display()), e))?;
    Ok(out)
}

/// The `kvm-smoke` helper (crates/ember-harness/helpers/kvm-smoke.c): runs
/// a few real-mode instructions through /dev/kvm and checks the exits.
pub fn kvm_smoke() -> Result<PathBuf> {
    static_c_program(
        &repo_root().join("crates/ember-harness/helpers/kvm-smoke.c"),
        &[],
    )
}
