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
    /// Figures of this host's planner capacity that the admin states instead of the measured
    /// or assumed ones (disk bandwidth is only guessed from the device type, for example).
    pub capacity: CapacityOverrides,
    /// Pool membership: etcd endpoints (none: a one-host pool on the local store), host
    /// name, address, join token, HA timings.
    pub pool: crate::pool::PoolOptions,
}

/// Planner capacity figures set by configuration (`[capacity]` in corral.toml or
/// `corral serve --capacity-*`); each one that is set replaces what the agent would find.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityOverrides {
    pub cores: Option<u32>,
    pub ghz: Option<f64>,
    pub memory_gib: Option<f64>,
    pub net_mbps: Option<f64>,
    pub disk_mbps: Option<f64>,
    pub iops: Option<f64>,
}

impl CapacityOverrides {
    /// Each field from `self` when set, else from `other` (flags over the file).
    pub fn or(self, other: CapacityOverrides) -> CapacityOverrides {
        CapacityOverrides {
            cores: self.cores.or(other.cores),
            ghz: self.ghz.or(other.ghz),
            memory_gib: self.memory_gib.or(other.memory_gib),
            net_mbps: self.net_mbps.or(other.net_mbps),
            disk_mbps: self.disk_mbps.or(other.disk_mbps),
            iops: self.iops.or(other.iops),
        }
    }

    /// Every figure that is set must be a positive, finite number.
    pub fn validate(&self) -> Result<(), String> {
        if self.cores == Some(0) {
            return Err("capacity cores must be at least 1".into());
        }
        for (name, v) in [
            ("ghz", self.ghz),
            ("memory_gib", self.memory_gib),
            ("net_mbps", self.net_mbps),
            ("disk_mbps", self.disk_mbps),
            ("iops", self.iops),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!(
                        "capacity {name} must be a positive number, got {v}"
                    ));
                }
            }
        }
        Ok(())
    }
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
    /// `[capacity]`: planner capacity figures stated by the admin.
    #[serde(default)]
    pub capacity: CapacityOverrides,
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
    /// The VM's UEFI variable store, kept beside the state so it survives restarts.
    pub fn nvram(&self, vm_id: &str) -> PathBuf {
        self.root.join("nvram").join(format!("{vm_id}.fd"))
    }
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    pub fn accel_cache(&self) -> PathBuf {
        self.root.join("accel-probe.json")
    }
}
