//! Wire types of export, import, clone, copy and templates made from VMs
//! (`GET /v1/vms/{name}/export`, `PUT /v1/imports`, `POST /v1/vms/{name}/clone|copy|
//! convert-to-template`). Query structs reject unknown parameters like request bodies do.

use crate::vm::{DiskBus, DiskFormat, VmSpec};
use serde::{Deserialize, Serialize};

/// Archive format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// corral's native streaming archive (`docs/formats/corral-archive.md`).
    #[default]
    Corral,
    /// OVF 1.0 package in one tar, streamOptimized VMDKs.
    Ova,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Corral => "corral",
            ExportFormat::Ova => "ova",
        }
    }
}

/// Compression of a native export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExportCompression {
    #[default]
    Zstd,
    None,
}

/// Query of `GET /v1/vms/{name}/export`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    #[serde(default)]
    pub format: ExportFormat,
    #[serde(default)]
    pub compress: ExportCompression,
    /// zstd level 1..=19 (default 1, the fast level exports are measured with).
    #[serde(default)]
    pub level: Option<i32>,
}

/// Query of `PUT /v1/imports` (the body is the archive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Name of the new VM; default: the name in the archive.
    #[serde(default)]
    pub name: Option<String>,
    /// Storage repository for the disks; default: the host's default repository.
    #[serde(default)]
    pub sr: Option<String>,
    /// Make the imported VM a template (it cannot start; VMs are created from it).
    #[serde(default)]
    pub as_template: bool,
    /// Keep the NICs' MAC addresses; default: new random ones.
    #[serde(default)]
    pub preserve_macs: bool,
    /// Answer what would be created, write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// The body is an offline disk image (raw, qcow2 or VMDK) of a Linux server, to become a
    /// VM whose own copy of the disk is converted to boot on virtio (V2V, `docs/p2v.md`).
    /// `name` is required. The answer, once the image is received and checked, is 202 with
    /// the `vm.import` task, which copies, inspects and converts; its `changes` list every
    /// change made to the guest.
    #[serde(default)]
    pub convert: bool,
    /// With `convert`: the VM's disk size in bytes; larger than the image grows the root
    /// file system (and the partition, LVM volumes holding it) into the new space.
    #[serde(default)]
    pub disk_size_bytes: Option<u64>,
    /// With `convert`: how the guest's network is set up (default `dhcp`).
    #[serde(default)]
    pub network: Option<ConvertNetwork>,
    /// With `convert`: bytes of data the client's image holds (a sparse raw file's allocated
    /// size). A hint that lets the agent refuse an image that cannot fit before it is
    /// uploaded; the agent checks again with the image itself.
    #[serde(default)]
    pub data_bytes: Option<u64>,
    /// With `convert` and `dry_run`: the image file's whole length, which is a raw image's
    /// disk size (a dry run uploads only the image's first bytes).
    #[serde(default)]
    pub image_bytes: Option<u64>,
}

/// How a converted guest's network is set up (`vm import --convert --network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConvertNetwork {
    /// The configuration bound to the old NIC's name or MAC address is commented out, and
    /// any Ethernet NIC comes up with DHCP.
    #[default]
    Dhcp,
    /// The guest's configuration stays; each of the VM's NICs takes the name the server's
    /// NIC had (a systemd `.link` file matching its MAC address).
    Keep,
}

impl ConvertNetwork {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvertNetwork::Dhcp => "dhcp",
            ConvertNetwork::Keep => "keep",
        }
    }
}

/// One disk of an import plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PlannedDisk {
    pub device: String,
    pub virtual_size_bytes: u64,
    /// Bytes of data the archive holds for the disk, when the format says so up front.
    #[serde(default)]
    pub allocated_bytes: Option<u64>,
    pub format: DiskFormat,
    pub bus: DiskBus,
}

/// Answer of `PUT /v1/imports?dry_run=true`: what an import would create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ImportPlan {
    /// `corral`, `ova` or `xva`.
    pub format: String,
    /// The VM as it would be created (name, MACs and networks already mapped; disk paths empty).
    pub spec: VmSpec,
    pub disks: Vec<PlannedDisk>,
    /// Anything that could not be mapped, or was changed on the way in.
    pub warnings: Vec<String>,
}

/// Answer of a completed import.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ImportAnswer {
    pub task: String,
    pub vm: crate::VmInfo,
    pub warnings: Vec<String>,
}

/// Body of `POST /v1/vms/{name}/clone` and `.../copy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// Name of the new VM.
    pub name: String,
    /// For `copy`: repository of the new disks (default: each source disk's repository).
    #[serde(default)]
    pub sr: Option<String>,
}

/// `POST /v1/p2v`: open a P2V session for a running server (`corral p2v`, issue 12). The
/// agent checks the name, the space and its converter, reserves the name and answers a
/// [`P2vSession`]; the server's disk then arrives as frames (`PUT /v1/p2v/{id}/data`, one
/// upload per pass) and `POST /v1/p2v/{id}/finish` converts it like `vm import --convert`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct P2vStartRequest {
    /// Name of the new VM.
    pub name: String,
    /// Its description; default: one naming the source server.
    #[serde(default)]
    pub description: Option<String>,
    /// Storage repository for its disk; default: the host's default repository.
    #[serde(default)]
    pub sr: Option<String>,
    /// Size of the server's system disk in bytes (a multiple of 512).
    pub disk_bytes: u64,
    /// Bytes the first pass will send before compression (the space check counts them).
    pub data_bytes: u64,
    /// The VM's disk size when larger than the server's: the root file system grows into it.
    #[serde(default)]
    pub disk_size_bytes: Option<u64>,
    /// How the guest's network is set up (default `dhcp`).
    #[serde(default)]
    pub network: Option<ConvertNetwork>,
    /// The server's host name, recorded in the description.
    #[serde(default)]
    pub source_host: Option<String>,
    /// Directories whose contents are left out of the copy (`--exclude`); the conversion
    /// empties them.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A P2V session: what the agent has applied so far, so an interrupted upload resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct P2vSession {
    pub id: String,
    /// The `vm.import` task reporting the transfer and then the conversion.
    pub task: String,
    pub name: String,
    /// The pass being received (1 = the first pass on the live server, 2 = the final one).
    pub pass: u32,
    /// The sequence number of the last frame written in this pass (0: none yet); an upload
    /// resumes with the frame after it.
    pub applied: u64,
    /// Whether this pass's end frame arrived (everything it meant to send was written).
    pub pass_complete: bool,
    /// Disk bytes written, all passes.
    pub bytes_written: u64,
    /// Bytes received on the wire (frames, compressed), all passes.
    pub wire_bytes: u64,
}

/// `POST /v1/p2v/{id}/finish`: the transfer is complete; convert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct P2vFinishRequest {
    /// How the copy was made consistent, e.g. "file systems frozen for the final pass".
    pub method: String,
    /// How long the final pass kept the server's file systems frozen (the cut-over downtime).
    #[serde(default)]
    pub final_pass_ms: Option<u64>,
}
