//! The agent's configuration, validated once at start into typed values. Comes from
//! `corral serve` flags and an optional TOML file (`STATE_DIR/corral.toml`).

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelMode::Auto),
            "kvm" => Ok(AccelMode::Kvm),
            "tcg" => Ok(AccelMode::Tcg),
            other => Err(format!("accelerator {other:?} is not auto, kvm or tcg")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub accel: AccelMode,
    /// Directory of the ISO library.
    pub iso_dir: PathBuf,
    pub qemu_binary: PathBuf,
    /// Kernel + initrd that print `CORRAL-GUEST-READY`, used to probe KVM for real.
    pub probe_kernel: Option<(PathBuf, PathBuf)>,
    /// Autostart VMs marked `autostart` when the agent starts.
    pub autostart: bool,
    /// Guest-tools ISO for `vm tools insert`; default: `virtio-win*.iso` in the ISO library.
    pub tools_iso: Option<PathBuf>,
    /// HTTPS listeners, certificate and token, shown by `host info`; `None`: unix socket only.
    pub remote: Option<corral_model::host::RemoteAccess>,
}

/// Optional settings from `STATE_DIR/corral.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub iso_dir: Option<PathBuf>,
    pub tools_iso: Option<PathBuf>,
    pub qemu_binary: Option<PathBuf>,
    pub accel: Option<AccelMode>,
    pub probe_kernel: Option<PathBuf>,
    pub probe_initrd: Option<PathBuf>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// The default state directory: `/var/lib/corral` for root, else `$XDG_STATE_HOME/corral`
/// (`~/.local/state/corral`).
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/corral");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("corral");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".local/state/corral")
}

/// Where things live under the state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn db(&self) -> PathBuf {
        self.root.join("corral.db")
    }
    pub fn socket(&self) -> PathBuf {
        self.root.join("corral.sock")
    }
    pub fn default_sr(&self) -> PathBuf {
        self.root.join("srs/default")
    }
    pub fn templates(&self) -> PathBuf {
        self.root.join("templates")
    }
    pub fn isos(&self) -> PathBuf {
        self.root.join("isos")
    }
    /// Per-VM runtime directory: QMP and serial sockets, pid file, logs.
    pub fn run_dir(&self, vm_id: &str) -> PathBuf {
        self.root.join("run").join(vm_id)
    }
    /// Scratch files of a running install (installer kernel, initrd, PXE boot directory);
    /// removed when the install ends.
    pub fn install_dir(&self, vm_id: &str) -> PathBuf {
        self.root.join("install").join(vm_id)
    }
    /// cloud-init NoCloud seed of an image install; kept in the VM's CD drive, removed with it.
    pub fn seed_iso(&self, vm_id: &str) -> PathBuf {
        self.root.join("seeds").join(format!("{vm_id}.iso"))
    }
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    pub fn accel_cache(&self) -> PathBuf {
        self.root.join("accel-probe.json")
    }
}
