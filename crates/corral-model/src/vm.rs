//! The VM as stored and as shown: its spec (what the user asked for) and its runtime view.
//!
//! A `VmSpec` is host-independent apart from volume paths, so a VM record can later move to
//! another host of a pool: ids are UUIDs, never host-local counters.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Maximum virtual CPUs per VM.
pub const MAX_VCPUS: u32 = 64;
/// Maximum NICs per VM (PCI slots we reserve for NICs, and what Xen allowed).
pub const MAX_NICS: usize = 8;
/// Maximum disks per VM.
pub const MAX_DISKS: usize = 16;

/// Power state as users see it (Xen's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    Halted,
    Running,
    Paused,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::Halted => "halted",
            PowerState::Running => "running",
            PowerState::Paused => "paused",
        }
    }
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a disk is presented to the guest. `Virtio` is paravirtual; `Sata` and `Ide` are the
/// emulated controllers unmodified guests (and Windows before PV drivers) need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DiskBus {
    #[default]
    Virtio,
    Sata,
    Ide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    #[default]
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum NicModel {
    #[default]
    Virtio,
    E1000,
    Rtl8139,
}

/// `bios` (SeaBIOS), `uefi` (OVMF), or `uefi_secure`: UEFI with Secure Boot enforced, OVMF's
/// Secure Boot build with Microsoft's keys enrolled (what Windows 11 and shim-signed Linux
/// distributions boot with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
    // UEFI with Secure Boot enforced (see the enum's documentation); a plain comment, so the
    // schema stays a plain string enum.
    #[serde(alias = "uefi-secure")]
    UefiSecure,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::UefiSecure => "uefi-secure",
        }
    }

    /// Either UEFI flavour.
    pub fn is_uefi(self) -> bool {
        matches!(self, Firmware::Uefi | Firmware::UefiSecure)
    }
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A virtual disk attached to a VM, backed by a volume in a storage repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Stable device name within the VM: `disk0`, `disk1`, ...
    pub device: String,
    pub size_bytes: u64,
    pub format: DiskFormat,
    pub bus: DiskBus,
    /// Storage repository holding the volume.
    pub sr: String,
    /// Absolute path of the volume file.
    pub path: PathBuf,
}

/// A CD-ROM/DVD drive; `media` is the inserted ISO, if any. An empty drive stays attached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Cdrom {
    /// `cdrom0`, ...
    pub device: String,
    pub bus: DiskBus,
    pub media: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// `nic0`, ...
    pub device: String,
    pub network: String,
    pub model: NicModel,
    /// `52:54:00:xx:xx:xx`, lower case.
    pub mac: String,
}

/// Direct kernel boot (installers, the test guest). Absent: boot from the devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
}

/// Which device the firmware tries first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    #[default]
    Disk,
    Cdrom,
    Network,
}

/// Everything the user decides about a VM: the chapter's "Install XenVM" form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub vcpus: u32,
    pub memory_bytes: u64,
    /// Start on server boot.
    #[serde(default)]
    pub autostart: bool,
    /// Xen credit-scheduler weight: 128 low, 256 normal, 512 high, 1..65535.
    pub cpu_weight: u32,
    #[serde(default)]
    pub firmware: Firmware,
    /// A virtual TPM 2.0 (swtpm), its state kept with the VM (`STATE/tpm/<vm-uuid>/`).
    #[serde(default)]
    pub tpm: bool,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub cdroms: Vec<Cdrom>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub kernel_boot: Option<KernelBoot>,
    #[serde(default)]
    pub boot_device: BootDevice,
    /// Template this VM was created from, for information.
    #[serde(default)]
    pub template: Option<String>,
    /// Templates cannot be started; they are installed from.
    #[serde(default)]
    pub is_template: bool,
    /// Set while an OS install runs (`vm install`): the installer boots from `kernel_boot`, the
    /// CD or the network, and a guest reboot ends QEMU so the agent can switch to disk boot.
    #[serde(default)]
    pub install: Option<InstallBoot>,
}

/// Boot settings that only hold during an install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InstallBoot {
    /// The `vm.install` task driving the install.
    pub task_id: String,
    /// PXE boot server for user-mode (NAT) networks: QEMU's built-in TFTP serves this
    /// directory and DHCP announces `boot_file`. On bridged networks the LAN's server is used.
    #[serde(default)]
    pub pxe: Option<PxeBoot>,
    /// How long the installer may run from each start (`vm install --timeout`); absent in
    /// records written before it was kept, which then get the default.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// When the installer started now must have finished (milliseconds since the epoch); set
    /// at every start of the installer, so a retry (`vm start`) gets the whole timeout again
    /// and an install resumed after an agent restart keeps the user's deadline.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PxeBoot {
    pub tftp_root: PathBuf,
    pub boot_file: String,
}

/// CPU weight names (Xen's credit scheduler values).
pub const CPU_WEIGHT_LOW: u32 = 128;
pub const CPU_WEIGHT_NORMAL: u32 = 256;
pub const CPU_WEIGHT_HIGH: u32 = 512;

/// A VM record as stored: id, owning host, spec, and the last known power state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VmRecord {
    pub id: String,
    /// Id of the host that owns (runs) this VM. It changes only in a store transaction that
    /// expects the record's revision, so two hosts can never both take a VM over.
    pub host: String,
    pub spec: VmSpec,
    pub power_state: PowerState,
    pub created_at_ms: u64,
    /// High availability in a pool (a pool's policy, not part of the VM's exported spec).
    #[serde(default)]
    pub ha: crate::pool::HaPolicy,
}

/// How the CPU weight was applied to the running QEMU process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CpuWeightStatus {
    /// The weight asked for.
    pub requested: u32,
    /// The cgroup file and the value written, e.g. `cpu.weight=200`, when applied.
    #[serde(default)]
    pub applied: Option<String>,
    /// Why not, when not applied.
    #[serde(default)]
    pub reason: Option<String>,
}

impl CpuWeightStatus {
    /// From the outcome of applying `requested`: the `file=value` written, or why not.
    pub fn from_result(requested: u32, outcome: Result<String, String>) -> Self {
        match outcome {
            Ok(applied) => CpuWeightStatus {
                requested,
                applied: Some(applied),
                reason: None,
            },
            Err(reason) => CpuWeightStatus {
                requested,
                applied: None,
                reason: Some(reason),
            },
        }
    }
}

/// The runtime view `vm show` prints: the spec flattened plus what is live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VmInfo {
    pub id: String,
    pub name: String,
    /// Name of the host that owns it.
    pub host: String,
    /// Id of that host.
    #[serde(default)]
    pub host_id: String,
    /// High availability (`vm set --ha`).
    #[serde(default)]
    pub ha: crate::pool::HaPolicy,
    pub power_state: PowerState,
    pub description: String,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub autostart: bool,
    pub cpu_weight: u32,
    pub firmware: Firmware,
    /// A virtual TPM 2.0 is attached.
    #[serde(default)]
    pub tpm: bool,
    pub disks: Vec<Disk>,
    pub cdroms: Vec<Cdrom>,
    pub nics: Vec<Nic>,
    pub kernel_boot: Option<KernelBoot>,
    pub boot_device: BootDevice,
    pub template: Option<String>,
    pub is_template: bool,
    /// Present while an install runs.
    #[serde(default)]
    pub install: Option<InstallBoot>,
    /// QEMU process id while running or paused.
    pub pid: Option<u32>,
    /// Effective CPU weight on the host (cgroup), while running.
    pub cpu_weight_status: Option<CpuWeightStatus>,
    /// `127.0.0.1:5901`-style loopback TCP address of the graphical console (VNC display
    /// = port - 5900), while QEMU runs.
    pub vnc: Option<String>,
    pub created_at_ms: u64,
}

impl VmInfo {
    /// The VM as its record says, owned by the host named `host_name`.
    pub fn from_record(rec: &VmRecord, host_name: &str) -> Self {
        let s = &rec.spec;
        VmInfo {
            id: rec.id.clone(),
            name: s.name.clone(),
            host: host_name.to_string(),
            host_id: rec.host.clone(),
            ha: rec.ha.clone(),
            power_state: rec.power_state,
            description: s.description.clone(),
            vcpus: s.vcpus,
            memory_bytes: s.memory_bytes,
            autostart: s.autostart,
            cpu_weight: s.cpu_weight,
            firmware: s.firmware,
            tpm: s.tpm,
            disks: s.disks.clone(),
            cdroms: s.cdroms.clone(),
            nics: s.nics.clone(),
            kernel_boot: s.kernel_boot.clone(),
            boot_device: s.boot_device,
            template: s.template.clone(),
            is_template: s.is_template,
            install: s.install.clone(),
            pid: None,
            cpu_weight_status: None,
            vnc: None,
            created_at_ms: rec.created_at_ms,
        }
    }
}
