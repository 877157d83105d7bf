//! Request bodies of the HTTP API. Every request rejects unknown fields, so a typo in a client
//! is an error rather than a silently ignored setting. Create and update are distinct types.

use crate::vm::{BootDevice, DiskBus, DiskFormat, Firmware, NicModel};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A disk to create with a new VM or add to an existing one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DiskRequest {
    /// Virtual size. With `import_from`, 0 means "the image's size"; a larger size grows it.
    #[serde(default)]
    pub size_bytes: u64,
    /// Make the volume a copy of this existing image (qcow2, raw, vmdk, ... as qemu-img reads).
    #[serde(default)]
    pub import_from: Option<PathBuf>,
    /// Storage repository; default: the host's default repository.
    #[serde(default)]
    pub sr: Option<String>,
    #[serde(default)]
    pub format: Option<DiskFormat>,
    #[serde(default)]
    pub bus: Option<DiskBus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NicRequest {
    pub network: String,
    #[serde(default)]
    pub model: Option<NicModel>,
    /// Fixed MAC; default: a random locally administered `52:54:00:..` address.
    #[serde(default)]
    pub mac: Option<String>,
}

/// `POST /v1/vms`. Absent fields come from the template, then from built-in defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmCreateRequest {
    pub name: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub autostart: Option<bool>,
    #[serde(default)]
    pub cpu_weight: Option<u32>,
    #[serde(default)]
    pub firmware: Option<Firmware>,
    /// Attach a virtual TPM 2.0; default: what the template says (off).
    #[serde(default)]
    pub tpm: Option<bool>,
    /// Disks to create. `None`: the template's disks; `Some(vec![])`: no disks.
    #[serde(default)]
    pub disks: Option<Vec<DiskRequest>>,
    /// ISO to put in the VM's CD drive; a VM always gets one drive, empty when absent.
    #[serde(default)]
    pub cdrom: Option<PathBuf>,
    #[serde(default)]
    pub nics: Option<Vec<NicRequest>>,
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub boot_device: Option<BootDevice>,
    /// Start the VM once created.
    #[serde(default)]
    pub start: bool,
    /// The pool member to create it on: a host name, or `auto` for the one placement
    /// chooses. Default: the member that receives the request.
    #[serde(default)]
    pub host: Option<String>,
}

/// `PATCH /v1/vms/{name}`: change settings. Memory and vCPUs apply at the next start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmUpdateRequest {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub autostart: Option<bool>,
    #[serde(default)]
    pub cpu_weight: Option<u32>,
    /// Rename.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub boot_device: Option<BootDevice>,
    /// Attach (`true`) or remove (`false`) the virtual TPM 2.0 (VM halted). Removing it
    /// deletes its state (keys, sealed secrets).
    #[serde(default)]
    pub tpm: Option<bool>,
    /// Set to an empty string to drop direct kernel boot.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Move every disk and NIC to paravirtual (virtio) or emulated (IDE + e1000) devices,
    /// keeping disk contents and MAC addresses (the chapter's "paravirtualize after install").
    #[serde(default)]
    pub device_model: Option<DeviceModel>,
    /// Give up an unfinished install (VM halted): drop the installer's boot settings (kernel,
    /// install media, network boot), boot from disk, and remove the installer's scratch files.
    #[serde(default)]
    pub abandon_install: bool,
    /// High availability: restart on a surviving host when its host goes down (`true`), or
    /// not (`false`). Its disks must be on shared repositories.
    #[serde(default)]
    pub ha: Option<bool>,
    /// Order of HA restarts (higher first).
    #[serde(default)]
    pub ha_priority: Option<i32>,
    /// Keep-apart group: placement never runs two VMs of one group on the same host. An
    /// empty string leaves the group.
    #[serde(default)]
    pub keep_apart: Option<String>,
}

/// Paravirtual (virtio) or emulated devices, as templates and `vm set --device-model` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeviceModel {
    Pv,
    Emulated,
}

/// `POST /v1/vms/install`: create a VM and install an operating system into it, as one task
/// (`vm.install`) with phases. Checks that need no network (names, template restrictions,
/// paths, URL syntax) answer at once; the others fail the task. A failure before the
/// installer boots leaves no VM behind; a failure after (timeout, installer error) leaves the
/// VM halted with the failed task in its history, so its console log can be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmInstallRequest {
    /// The VM to create; the template fills in what is absent.
    pub vm: VmCreateRequest,
    /// Where the installer comes from. Absent only when `vm.template` names a template VM:
    /// its installed system is cloned instead.
    #[serde(default)]
    pub source: Option<InstallSource>,
    /// Added to the installer's kernel command line.
    #[serde(default)]
    pub extra_args: Option<String>,
    /// Unattended answer file (preseed, kickstart or AutoYaST, as the template says), put into
    /// the installer's initrd.
    #[serde(default)]
    pub unattended: Option<String>,
    /// cloud-init NoCloud seed for image installs (`source.kind = disk_import`).
    #[serde(default)]
    pub cloud_init: Option<CloudInitRequest>,
    /// Seconds the installer may run before the task fails and the VM is powered off.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Where the installer comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InstallSource {
    /// An install tree: `http://`, `ftp://`, `nfs://`, a local directory; optionally
    /// `,kernel=PATH,initrd=PATH` to skip detection.
    Location { location: String },
    /// Vendor media: boot the ISO once, then the disk.
    Cdrom { iso: PathBuf },
    /// Network boot. On the default (NAT) network the agent is the boot server: from
    /// `boot_server` (a TFTP directory with `boot.ipxe` or `pxelinux.0`), or built from
    /// `location`'s kernel and initrd. On bridged networks the LAN's boot server answers.
    Pxe {
        #[serde(default)]
        boot_server: Option<PathBuf>,
        #[serde(default)]
        location: Option<String>,
    },
    /// A ready disk image (cloud image): imported as the first disk, then booted.
    DiskImport { image: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CloudInitRequest {
    pub user_data: String,
    #[serde(default)]
    pub meta_data: Option<String>,
    #[serde(default)]
    pub network_config: Option<String>,
}

/// Power actions: `POST /v1/vms/{name}/actions/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmAction {
    Start,
    /// ACPI power button; the guest decides.
    Shutdown,
    /// Pull the plug.
    Poweroff,
    Reboot,
    Pause,
    Resume,
}

impl VmAction {
    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Shutdown => "shutdown",
            VmAction::Poweroff => "poweroff",
            VmAction::Reboot => "reboot",
            VmAction::Pause => "pause",
            VmAction::Resume => "resume",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => VmAction::Start,
            "shutdown" => VmAction::Shutdown,
            "poweroff" => VmAction::Poweroff,
            "reboot" => VmAction::Reboot,
            "pause" => VmAction::Pause,
            "resume" => VmAction::Resume,
            _ => return None,
        })
    }
}

/// Options of a power action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// For `shutdown`: seconds to wait for the guest before failing the task (default 120).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// For `start`: the pool member to start it on (a host name, or `auto`). A halted VM
    /// whose disks are all on shared repositories moves there first.
    #[serde(default)]
    pub on: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmDeleteRequest {
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub keep_disks: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CdromInsertRequest {
    pub iso: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SrCreateRequest {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkCreateRequest {
    pub name: String,
    pub bridge: String,
}

/// Answer to a request that started a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskAccepted {
    pub task: String,
}

/// Answer to an operation on a VM that ran as a task and was waited for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VmTaskAnswer {
    pub task: String,
    pub vm: crate::vm::VmInfo,
}

/// `POST /v1/templates`: a template in its TOML form (docs/install.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TemplateCreateRequest {
    pub toml: String,
}
