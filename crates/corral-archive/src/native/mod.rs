//! corral's native archive format, version 1.0 (`docs/formats/corral-archive.md`).
//!
//! A tar stream: `corral-archive.json` (the manifest: version, VM spec, disk layout) first,
//! then one member per extent of non-zero data, `disks/<N>/<offset>-<length>-<xxh3>.zst`, each
//! an independent zstd frame so extents compress and decompress on all cores, and last
//! `checksums.json` with per-disk counts and an XXH3-128 over every preceding member.
//!
//! [`write_archive`] (in `write.rs`) reads sources on a bounded worker pool and writes members
//! in order; [`read_archive`] (in `read.rs`) checks each member against the manifest before
//! reading it, then a bounded pool decompresses, verifies and writes each extent to an
//! [`crate::ImportSink`] (in parallel, in completion order). Neither ever holds more than a
//! window of extents in memory.

mod read;
mod write;

pub(crate) use read::reconcile_spec;
pub use read::{read_archive, read_manifest, ImportedDisk, ImportedFile, ImportedVm, Limits};
pub(crate) use write::nonzero_runs;
pub use write::{write_archive, ArchiveSummary, DiskSummary, WriteOptions};

use crate::error::ArchiveError;
use corral_model::{DiskFormat, VmSpec};
use serde::{Deserialize, Serialize};

/// Format name in the manifest.
pub const FORMAT_NAME: &str = "corral-archive";
/// Largest major version this code reads; a reader refuses a larger major. Writers use the
/// lowest version that can express the archive: 1.0 for disks only, 2.0 when it carries files
/// (`files/<role>` members), so an older corral refuses those with "upgrade corral" instead of
/// tripping over an unknown member, and still reads every archive without files.
pub const VERSION_MAJOR: u32 = 2;
/// Oldest major version this code reads.
pub const OLDEST_MAJOR: u32 = 1;
/// Minor version this code writes; larger minors only add optional fields.
pub const VERSION_MINOR: u32 = 0;
/// Largest file (kernel, initrd) an archive may carry, and what a reader accepts by default.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Largest TPM state: swtpm's whole state for a TPM 2.0 is tens of KiB.
pub const MAX_TPM_STATE_BYTES: u64 = 16 << 20;
/// First member.
pub const MANIFEST_NAME: &str = "corral-archive.json";
/// Last member.
pub const CHECKSUMS_NAME: &str = "checksums.json";
/// Default and largest extent a writer emits unless told otherwise.
pub const DEFAULT_EXTENT_BYTES: u64 = 4 << 20;
/// Granularity of zero detection inside an extent.
pub const ZERO_BLOCK_BYTES: usize = 64 << 10;
/// Largest `extent_max_bytes` a writer uses and a reader accepts: with the byte budget below it
/// keeps at least a few extents in flight on every host.
pub const MAX_EXTENT_BYTES: u64 = 16 << 20;
/// Most bytes of extents (compressed payload plus decoded data, so two buffers of up to
/// `extent_max_bytes` each per job) the reader or writer holds in flight. Bounded in bytes
/// rather than in jobs so a many-core host fed a hostile archive of maximal extents cannot be
/// made to hold gigabytes.
pub const WINDOW_BUDGET_BYTES: u64 = 128 << 20;

/// How many extent jobs may be in flight: two per worker thread for overlap, at least two, and
/// never more than [`WINDOW_BUDGET_BYTES`] allows for extents of `extent_max_bytes`.
pub(crate) fn window_jobs(threads: usize, extent_max_bytes: u64) -> usize {
    let per_job = 2 * extent_max_bytes.max(1);
    let by_budget = usize::try_from(WINDOW_BUDGET_BYTES / per_job).unwrap_or(usize::MAX);
    (threads.saturating_mul(2))
        .clamp(2, 24)
        .min(by_budget)
        .max(2)
}

/// How extent members are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Zstd,
    None,
}

impl Compression {
    fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => "zst",
            Compression::None => "raw",
        }
    }
}

/// The first member. Unknown fields are ignored on read (a newer minor version may add them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// `major.minor`.
    pub version: String,
    #[serde(default)]
    pub created_by: String,
    pub compression: Compression,
    /// No extent member is longer than this (uncompressed).
    pub extent_max_bytes: u64,
    /// The VM spec as the exporting corral serialised it.
    pub vm: serde_json::Value,
    pub disks: Vec<ManifestDisk>,
    /// Files carried beside the disks (format 2.0 and later); their members follow the
    /// manifest, before any extent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ManifestFile>,
}

/// What a carried file is for. A closed set: the importer decides where each goes (inside the
/// new VM's own storage), never the archive, and a member `files/<role>` exists for each entry
/// of the manifest's `files`, in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    /// The direct-boot kernel (`kernel_boot.kernel`).
    Kernel,
    /// The direct-boot initrd (`kernel_boot.initrd`).
    Initrd,
    /// The vTPM's persistent state (swtpm's `tpm2-00.permall`).
    TpmState,
}

impl FileRole {
    pub const ALL: [FileRole; 3] = [FileRole::Kernel, FileRole::Initrd, FileRole::TpmState];

    pub fn as_str(self) -> &'static str {
        match self {
            FileRole::Kernel => "kernel",
            FileRole::Initrd => "initrd",
            FileRole::TpmState => "tpm_state",
        }
    }

    /// The member holding this file.
    pub fn member_name(self) -> String {
        format!("files/{}", self.as_str())
    }

    /// Largest size a reader accepts for this role.
    pub fn max_bytes(self, limits: &Limits) -> u64 {
        match self {
            FileRole::TpmState => limits.max_file_bytes.min(MAX_TPM_STATE_BYTES),
            _ => limits.max_file_bytes,
        }
    }
}

impl std::fmt::Display for FileRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file the archive carries beside the disks (format 2.0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub role: FileRole,
    /// Exact size of the member's data.
    pub size: u64,
    /// XXH3-64 (seed 0) of the data, 16 lower-case hex digits.
    pub xxh3: String,
}

/// Layout of one disk: its size and the ranges that may hold data. Ranges not covered by an
/// extent member read as zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDisk {
    pub device: String,
    pub virtual_size: u64,
    /// Format of the volume at the source.
    pub format: DiskFormat,
    /// Allocated ranges `[offset, length]`, sorted and disjoint.
    pub allocated: Vec<(u64, u64)>,
    /// Sum of the allocated lengths.
    pub allocated_bytes: u64,
}

/// The last member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    /// XXH3-128 (hex) over every member before this one: name, NUL, size (u64 LE), data.
    pub archive_xxh3_128: String,
    pub disks: Vec<DiskChecksum>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskChecksum {
    pub device: String,
    /// Number of extent members.
    pub extents: u64,
    /// Uncompressed bytes in extent members.
    pub data_bytes: u64,
}

/// Running hash over members, identical in writer and reader.
pub(crate) struct MemberHasher(xxhash_rust::xxh3::Xxh3);

impl MemberHasher {
    pub(crate) fn new() -> Self {
        MemberHasher(xxhash_rust::xxh3::Xxh3::new())
    }
    pub(crate) fn begin(&mut self, name: &str, size: u64) {
        self.0.update(name.as_bytes());
        self.0.update(&[0]);
        self.0.update(&size.to_le_bytes());
    }
    pub(crate) fn data(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub(crate) fn hex(&self) -> String {
        format!("{:032x}", self.0.digest128())
    }
}

/// Name of an extent member.
pub(crate) fn extent_name(
    disk: usize,
    offset: u64,
    length: u64,
    hash: u64,
    c: Compression,
) -> String {
    format!(
        "disks/{disk}/{offset:016x}-{length:x}-{hash:016x}.{}",
        c.extension()
    )
}

/// An extent member name taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExtentName {
    pub disk: usize,
    pub offset: u64,
    pub length: u64,
    pub hash: u64,
    pub compression: Compression,
}

pub(crate) fn parse_extent_name(name: &str) -> Option<ExtentName> {
    let rest = name.strip_prefix("disks/")?;
    let (disk, file) = rest.split_once('/')?;
    if disk.is_empty() || disk.len() > 3 || !disk.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (stem, ext) = file.rsplit_once('.')?;
    let compression = match ext {
        "zst" => Compression::Zstd,
        "raw" => Compression::None,
        _ => return None,
    };
    let mut parts = stem.split('-');
    let (o, l, h) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || o.len() != 16 || h.len() != 16 || l.is_empty() || l.len() > 16 {
        return None;
    }
    let hex = |s: &str| {
        if s.bytes().all(|b| b.is_ascii_hexdigit()) {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    Some(ExtentName {
        disk: disk.parse().ok()?,
        offset: hex(o)?,
        length: hex(l)?,
        hash: hex(h)?,
        compression,
    })
}

/// Parse `major.minor`.
pub(crate) fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The JSON keys `VmSpec` knows at each level, found by serialising a fully populated spec, so
/// the list follows `corral-model` without being written down twice.
fn known_spec_keys() -> serde_json::Value {
    use corral_model::*;
    let spec = VmSpec {
        name: "x".into(),
        description: String::new(),
        vcpus: 1,
        memory_bytes: 1,
        autostart: false,
        cpu_weight: 256,
        firmware: Firmware::Bios,
        disks: vec![Disk {
            device: "d".into(),
            size_bytes: 1,
            format: DiskFormat::Raw,
            bus: DiskBus::Virtio,
            sr: String::new(),
            path: Default::default(),
        }],
        cdroms: vec![Cdrom {
            device: "c".into(),
            bus: DiskBus::Ide,
            media: None,
        }],
        nics: vec![Nic {
            device: "n".into(),
            network: String::new(),
            model: NicModel::Virtio,
            mac: String::new(),
        }],
        kernel_boot: Some(KernelBoot::default()),
        boot_device: BootDevice::Disk,
        template: None,
        is_template: false,
        install: None,
        tpm: false,
    };
    serde_json::to_value(spec).unwrap_or_default()
}

/// Deserialize a VM spec written by this or a newer corral: fields this version does not know
/// are dropped with a warning instead of failing the import (`VmSpec` itself denies unknown
/// fields, which is right for API requests but not for archives from newer versions).
pub fn parse_spec_lenient(value: &serde_json::Value) -> Result<(VmSpec, Vec<String>), String> {
    let mut warnings = Vec::new();
    let mut v = value.clone();
    let known = known_spec_keys();
    strip_unknown(&mut v, &known, "vm", &mut warnings);
    match serde_json::from_value::<VmSpec>(v) {
        Ok(spec) => Ok((spec, warnings)),
        Err(e) => Err(format!("VM spec: {e}")),
    }
}

fn strip_unknown(
    v: &mut serde_json::Value,
    known: &serde_json::Value,
    path: &str,
    warnings: &mut Vec<String>,
) {
    let (Some(obj), Some(kobj)) = (v.as_object_mut(), known.as_object()) else {
        return;
    };
    let unknown: Vec<String> = obj
        .keys()
        .filter(|k| !kobj.contains_key(*k))
        .cloned()
        .collect();
    for k in unknown {
        obj.remove(&k);
        warnings.push(format!(
            "ignored field {path}.{k}, which this version of corral does not know"
        ));
    }
    for (k, val) in obj.iter_mut() {
        let kval = &kobj[k];
        match (val, kval) {
            (serde_json::Value::Array(items), serde_json::Value::Array(kitems)) => {
                if let Some(kfirst) = kitems.first() {
                    for (i, item) in items.iter_mut().enumerate() {
                        strip_unknown(item, kfirst, &format!("{path}.{k}[{i}]"), warnings);
                    }
                }
            }
            (val @ serde_json::Value::Object(_), kval) => {
                strip_unknown(val, kval, &format!("{path}.{k}"), warnings)
            }
            _ => {}
        }
    }
}

/// Check that ranges are sorted, disjoint, non-empty and inside `size`.
pub(crate) fn check_ranges(ranges: &[(u64, u64)], size: u64) -> Result<u64, String> {
    let mut end = 0u64;
    let mut total = 0u64;
    for (i, &(off, len)) in ranges.iter().enumerate() {
        if len == 0 {
            return Err(format!("range {i} is empty"));
        }
        let stop = off
            .checked_add(len)
            .ok_or_else(|| format!("range {i} overflows"))?;
        if stop > size {
            return Err(format!(
                "range {i} ({off}+{len}) ends past the virtual size {size}"
            ));
        }
        if i > 0 && off < end {
            return Err(format!(
                "range {i} at {off} overlaps or precedes the previous range"
            ));
        }
        end = stop;
        total += len;
    }
    Ok(total)
}

/// Map an `ArchiveError` from a manifest check.
pub(crate) fn bad_manifest(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::InvalidManifest(msg.into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn window_stays_within_the_byte_budget_on_any_host() {
        for threads in [1, 2, 8, 64, 256, 4096] {
            for extent in [64 << 10, 4 << 20, super::MAX_EXTENT_BYTES] {
                let w = super::window_jobs(threads, extent);
                assert!(w >= 2, "threads {threads} extent {extent}: window {w}");
                assert!(
                    w as u64 * 2 * extent <= super::WINDOW_BUDGET_BYTES,
                    "threads {threads} extent {extent}: window {w} exceeds the budget"
                );
            }
        }
        // Default extents on 2 cores keep the old overlap.
        assert_eq!(super::window_jobs(2, super::DEFAULT_EXTENT_BYTES), 4);
    }

    use super::*;

    #[test]
    fn extent_names_round_trip() {
        let n = extent_name(3, 0x10_0000, 0x40_0000, 0xdead_beef, Compression::Zstd);
        assert_eq!(n, "disks/3/0000000000100000-400000-00000000deadbeef.zst");
        let p = parse_extent_name(&n).unwrap();
        assert_eq!(
            (p.disk, p.offset, p.length, p.hash),
            (3, 0x10_0000, 0x40_0000, 0xdead_beef)
        );
        for bad in [
            "disks/x/0000000000100000-400000-00000000deadbeef.zst",
            "disks/0/100000-400000-00000000deadbeef.zst",
            "disks/0/0000000000100000-400000-00000000deadbeef.gz",
            "disks/0/0000000000100000--00000000deadbeef.zst",
            "disks/0/000000000010000g-400000-00000000deadbeef.zst",
            "disks/0/0000000000100000-400000-00000000deadbeef-1.zst",
        ] {
            assert!(parse_extent_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.0"), Some((1, 0)));
        assert_eq!(parse_version("2.13"), Some((2, 13)));
        assert_eq!(parse_version("1"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(check_ranges(&[(0, 10), (10, 5)], 15), Ok(15));
        assert!(check_ranges(&[(0, 10), (5, 10)], 100).is_err());
        assert!(check_ranges(&[(0, 10)], 5).is_err());
        assert!(check_ranges(&[(u64::MAX, 2)], u64::MAX).is_err());
        assert!(check_ranges(&[(0, 0)], 5).is_err());
    }

    #[test]
    fn spec_with_unknown_fields_is_accepted_with_warnings() {
        let v = serde_json::json!({
            "name": "web01", "vcpus": 2, "memory_bytes": 1073741824u64, "cpu_weight": 256,
            "future_knob": true,
            "nics": [{"device": "nic0", "network": "lan", "model": "virtio",
                      "mac": "52:54:00:00:00:01", "vlan": 7}]
        });
        let (spec, warnings) = parse_spec_lenient(&v).unwrap();
        assert_eq!(spec.vcpus, 2);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("vm.future_knob"));
        assert!(warnings[1].contains("vm.nics[0].vlan"));
    }
}
