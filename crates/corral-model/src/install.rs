//! The plan of an install (`vm install --dry-run`, `POST /v1/installs?dry_run=true`): what the
//! agent found at the install source and everything it would create, computed by the same
//! checks and the same tree detection as a real install, with nothing written. A real install
//! follows the same plan; its task note repeats the template choice.

use crate::vm::{BootDevice, DiskBus, DiskFormat, Firmware, NicModel};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// Why the install uses the template it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum TemplateReason {
    /// Named with `--template`.
    Given,
    /// No `--template`: a built-in or user template is for the OS the tree holds.
    DetectedOs,
    /// No `--template` and no corral template for the detected OS: osinfo-db's description
    /// of it (`osinfo:<short-id>`) gives the defaults.
    OsinfoDefaults,
    /// No `--template` and nothing matches (or nothing was detected): the request's own
    /// settings and corral's defaults.
    None,
}

impl TemplateReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateReason::Given => "given",
            TemplateReason::DetectedOs => "detected_os",
            TemplateReason::OsinfoDefaults => "osinfo_defaults",
            TemplateReason::None => "none",
        }
    }
}

impl fmt::Display for TemplateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The template an install uses, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TemplateChoice {
    /// `debian-12`, `osinfo:mageia5`; absent with reason `none`.
    #[serde(default)]
    pub name: Option<String>,
    pub reason: TemplateReason,
    /// One sentence for people: `matched from the detected OS debian12`.
    pub explanation: String,
}

/// What tree detection found (installs from `--location`, or `--pxe --location`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DetectedTree {
    /// The osinfo-db short id of the release (`debian12`, `opensuse42.3`), when known.
    #[serde(default)]
    pub os: Option<String>,
    /// The distribution's own name and version: `Debian`, `12`.
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub codename: Option<String>,
    /// The installer family whose kernel arguments are used: `debian`, `rhel`, `suse`, ...
    pub family: String,
    /// The layout that matched (`debian-installer-dir`, `treeinfo`, `suse-content`, ...).
    pub layout: String,
    /// URLs (passwords hidden) of the installer's kernel and initrd.
    pub kernel: String,
    pub initrd: String,
    /// Every probe detection made, in order (`GET http://h/d/.treeinfo → 404 Not Found`).
    pub probes: Vec<String>,
}

/// A disk the install would create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PlannedDisk {
    pub device: String,
    pub size_bytes: u64,
    pub format: DiskFormat,
    pub bus: DiskBus,
    /// The storage repository the volume would be created in.
    pub sr: String,
    /// Image the volume would be a copy of (`--disk-import`).
    #[serde(default)]
    pub import_from: Option<PathBuf>,
}

/// A NIC the install would create (its MAC is chosen when the VM is created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PlannedNic {
    pub device: String,
    pub network: String,
    pub model: NicModel,
}

/// Everything `vm install` would do; nothing of it exists yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InstallPlan {
    /// The VM's name (checked: valid and free).
    pub name: String,
    /// `location`, `cdrom`, `pxe` or `disk_import`.
    pub source: String,
    /// The install source as given (URL with password hidden, ISO, image or boot directory).
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub detected: Option<DetectedTree>,
    pub template: TemplateChoice,
    /// The installer's whole kernel command line (tree installs).
    #[serde(default)]
    pub kernel_args: Option<String>,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    /// What the VM boots from while installing: `disk` for a direct kernel boot of the
    /// installer (or an imported image), `cdrom`, `network`.
    pub boot_device: BootDevice,
    pub disks: Vec<PlannedDisk>,
    #[serde(default)]
    pub cdrom: Option<PathBuf>,
    pub nics: Vec<PlannedNic>,
    /// How long the installer may run; absent for image installs (no installer runs).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Things to know (protocol limits, the answer-file URL, template/OS mismatches).
    pub notes: Vec<String>,
}
