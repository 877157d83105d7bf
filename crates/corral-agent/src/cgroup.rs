//! CPU weight on the host: each running VM's QEMU process goes into its own cgroup
//! (`corral/<vm-uuid>`), whose CPU share is the VM's Xen-style weight.
//!
//! Mapping (documented in docs/architecture.md):
//! - cgroup v2 `cpu.weight` = weight × 100 / 256, clamped to 1..10000, so Xen's normal (256)
//!   is the cgroup default (100): low 128 → 50, normal 256 → 100, high 512 → 200.
//! - cgroup v1 `cpu.shares` = weight (128 / 256 / 512 as in Xen; the v1 minimum is 2).
//!
//! Relative weights are what the scheduler uses, and all VM cgroups are siblings under
//! `corral`, so VMs compete with each other exactly as the weights say.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum CgroupSupport {
    V2 { base: PathBuf },
    V1 { base: PathBuf },
    Unavailable { reason: String },
}

impl CgroupSupport {
    /// Find a writable cpu controller and prepare the `corral` parent cgroup.
    pub fn detect() -> Self {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(root: &Path) -> Self {
        let v2_controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok();
        if let Some(ctrl) = v2_controllers {
            if !ctrl.split_whitespace().any(|c| c == "cpu") {
                return CgroupSupport::Unavailable {
                    reason: format!("cgroup v2 at {} has no cpu controller", root.display()),
                };
            }
            let base = root.join("corral");
            let setup = || -> std::io::Result<()> {
                std::fs::write(root.join("cgroup.subtree_control"), "+cpu")?;
                std::fs::create_dir_all(&base)?;
                std::fs::write(base.join("cgroup.subtree_control"), "+cpu")?;
                Ok(())
            };
            return match setup() {
                Ok(()) => CgroupSupport::V2 { base },
                Err(e) => CgroupSupport::Unavailable {
                    reason: format!("cannot set up cgroup v2 {}: {e}", base.display()),
                },
            };
        }
        let v1 = root.join("cpu");
        if v1.join("cpu.shares").exists() {
            let base = v1.join("corral");
            return match std::fs::create_dir_all(&base) {
                Ok(()) if base.join("cpu.shares").exists() => CgroupSupport::V1 { base },
                Ok(()) => CgroupSupport::Unavailable {
                    reason: format!("{} has no cpu.shares", base.display()),
                },
                Err(e) => CgroupSupport::Unavailable {
                    reason: format!("cannot create cgroup {}: {e}", base.display()),
                },
            };
        }
        CgroupSupport::Unavailable {
            reason: "no cgroup cpu controller is mounted".into(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            CgroupSupport::V2 { base } => format!("cgroup v2 cpu.weight under {}", base.display()),
            CgroupSupport::V1 { base } => format!("cgroup v1 cpu.shares under {}", base.display()),
            CgroupSupport::Unavailable { reason } => format!("unavailable: {reason}"),
        }
    }

    /// The cgroup file and value for a weight.
    pub fn setting(&self, weight: u32) -> Option<(&'static str, u64)> {
        match self {
            CgroupSupport::V2 { .. } => Some(("cpu.weight", v2_weight(weight))),
            CgroupSupport::V1 { .. } => Some(("cpu.shares", (weight as u64).max(2))),
            CgroupSupport::Unavailable { .. } => None,
        }
    }

    pub fn vm_dir(&self, vm_id: &str) -> Option<PathBuf> {
        match self {
            CgroupSupport::V2 { base } | CgroupSupport::V1 { base } => Some(base.join(vm_id)),
            CgroupSupport::Unavailable { .. } => None,
        }
    }

    /// Put `pid` (and its threads) in the VM's cgroup with the weight. Returns
    /// `file=value` as applied, or why it could not be.
    pub fn apply(&self, vm_id: &str, pid: u32, weight: u32) -> Result<String, String> {
        let applied = self.prepare(vm_id, weight)?;
        self.move_pid(vm_id, pid)?;
        Ok(applied)
    }

    /// Create the VM's cgroup with its weight, before any process is in it (cheap: a mkdir
    /// and a write). Returns `file=value` as applied, or why it could not be.
    pub fn prepare(&self, vm_id: &str, weight: u32) -> Result<String, String> {
        let (Some(dir), Some((file, value))) = (self.vm_dir(vm_id), self.setting(weight)) else {
            return Err(self.describe());
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::fs::write(dir.join(file), value.to_string())
            .map_err(|e| format!("cannot write {}/{file}: {e}", dir.display()))?;
        Ok(format!("{}={value}", dir.join(file).display()))
    }

    /// Move `pid` with all its threads into the VM's cgroup (made by [`Self::prepare`]).
    /// This is the slow step: the kernel takes `cgroup_threadgroup_rwsem` for writing, which
    /// waits for an RCU grace period (about 12 ms on this project's cgroup v1 hosts) unless
    /// another move happened just before. Callers overlap it with QEMU's start.
    pub fn move_pid(&self, vm_id: &str, pid: u32) -> Result<(), String> {
        let Some(dir) = self.vm_dir(vm_id) else {
            return Err(self.describe());
        };
        // v1 `cgroup.procs` moves the whole thread group; v2 likewise.
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("cannot move pid {pid} into {}: {e}", dir.display()))
    }

    /// Whether `pid` sits in the VM's cgroup, from `/proc/PID/cgroup`.
    pub fn contains(&self, vm_id: &str, pid: u32) -> bool {
        let (Some(dir), root) = (self.vm_dir(vm_id), self.mount_root()) else {
            return false;
        };
        let Some(rel) = root.and_then(|r| dir.strip_prefix(r).ok().map(|p| p.to_path_buf())) else {
            return false;
        };
        let want = format!("/{}", rel.display());
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|text| {
                text.lines().any(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
                    let cpu = match self {
                        CgroupSupport::V2 { .. } => controllers == Some(""),
                        _ => controllers.is_some_and(|c| c.split(',').any(|c| c == "cpu")),
                    };
                    cpu && path == Some(want.as_str())
                })
            })
            .unwrap_or(false)
    }

    /// The directory the hierarchy is mounted at (`/proc/PID/cgroup` paths are relative to it).
    fn mount_root(&self) -> Option<&Path> {
        match self {
            // base = ROOT/corral (v2) or ROOT/cpu/corral (v1)
            CgroupSupport::V2 { base } | CgroupSupport::V1 { base } => base.parent(),
            CgroupSupport::Unavailable { .. } => None,
        }
    }

    /// Change the weight of a running VM.
    pub fn update(&self, vm_id: &str, weight: u32) -> Result<String, String> {
        let (Some(dir), Some((file, value))) = (self.vm_dir(vm_id), self.setting(weight)) else {
            return Err(self.describe());
        };
        std::fs::write(dir.join(file), value.to_string())
            .map_err(|e| format!("cannot write {}/{file}: {e}", dir.display()))?;
        Ok(format!("{}={value}", dir.join(file).display()))
    }

    /// Remove the VM's cgroup once its processes are gone.
    pub fn remove(&self, vm_id: &str) {
        if let Some(dir) = self.vm_dir(vm_id) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

pub fn v2_weight(weight: u32) -> u64 {
    ((weight as u64 * 100 + 128) / 256).clamp(1, 10000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_mapping() {
        assert_eq!(v2_weight(128), 50);
        assert_eq!(v2_weight(256), 100);
        assert_eq!(v2_weight(512), 200);
        assert_eq!(v2_weight(1), 1);
        assert_eq!(v2_weight(65535), 10000);
        let v1 = CgroupSupport::V1 { base: "/x".into() };
        assert_eq!(v1.setting(512), Some(("cpu.shares", 512)));
        assert_eq!(v1.setting(1), Some(("cpu.shares", 2)));
    }

    #[test]
    fn missing_hierarchy_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        match CgroupSupport::detect_at(dir.path()) {
            CgroupSupport::Unavailable { reason } => assert!(reason.contains("no cgroup")),
            other => panic!("{other:?}"),
        }
    }
}
