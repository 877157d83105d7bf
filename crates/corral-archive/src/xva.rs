//! XenServer / XCP-ng XVA import.
//!
//! An XVA is a tar (plain, gzip or zstd; detected from the first bytes) whose first member
//! `ova.xml` is an XML-RPC value: a struct with `version` and `objects`, each object a struct
//! `{class, id, snapshot}` for the VM, its VBDs, VIFs, VDIs, networks and SRs. Each VDI's data
//! follows in `Ref:N/%08d` members (N is the VDI's id, the number is the 1 MiB block index),
//! each followed by `Ref:N/%08d.checksum` (SHA-1, hex) or `.xxhash` (XXH64, hex). Blocks that
//! are all zeros are left out (the writer keeps the last one so the size is visible).
//!
//! [`plan_xva`] reads only `ova.xml` (dry run). [`read_xva`] streams the tar: it holds one block
//! until its checksum member arrives, verifies it, writes its non-zero parts to the sink, and
//! refuses blocks out of order, outside the VDI's size, for unknown disks, or without a
//! checksum. XML-RPC nesting depth is capped and DTDs are refused.

use crate::error::ArchiveError;
use crate::native::{reconcile_spec, ImportedDisk, ImportedVm, Limits};
use crate::progress::{Phase, Progress};
use crate::sink::{DiskTarget, ImportSink};
use crate::tarsafe::{check_member, GuardedTar, MemberKind};
use corral_model::*;
use sha1::{Digest, Sha1};
use std::io::{self, Read};

/// Block size of XVA disk data.
pub const XVA_BLOCK_BYTES: u64 = 1 << 20;
const MAX_DEPTH: usize = 64;

/// An XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum XmlRpc {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Array(Vec<XmlRpc>),
    Struct(Vec<(String, XmlRpc)>),
}

impl XmlRpc {
    fn get(&self, key: &str) -> Option<&XmlRpc> {
        match self {
            XmlRpc::Struct(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self, key: &str) -> &str {
        match self.get(key) {
            Some(XmlRpc::Str(s)) => s,
            _ => "",
        }
    }
    /// Integers arrive as strings (xapi's int64) or `<int>`.
    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            XmlRpc::Int(i) => Some(*i),
            XmlRpc::Str(s) => s.trim().parse().ok(),
            XmlRpc::Double(d) => Some(*d as i64),
            _ => None,
        }
    }
    fn bool(&self, key: &str) -> bool {
        match self.get(key) {
            Some(XmlRpc::Bool(b)) => *b,
            Some(XmlRpc::Str(s)) => s == "true" || s == "1",
            _ => false,
        }
    }
    fn strings(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(XmlRpc::Array(a)) => a
                .iter()
                .filter_map(|v| match v {
                    XmlRpc::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn bad(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::InvalidXva(msg.into())
}

fn parse_value(node: roxmltree::Node, depth: usize) -> Result<XmlRpc, ArchiveError> {
    if depth > MAX_DEPTH {
        return Err(bad("ova.xml nests values too deeply"));
    }
    let mut elems = node.children().filter(|c| c.is_element());
    let Some(inner) = elems.next() else {
        // <value>text</value> is a string.
        return Ok(XmlRpc::Str(node.text().unwrap_or("").to_string()));
    };
    let text = || inner.text().unwrap_or("").trim().to_string();
    Ok(match inner.tag_name().name() {
        "string" | "dateTime.iso8601" | "base64" => XmlRpc::Str(inner.text().unwrap_or("").into()),
        "int" | "i4" | "i8" => XmlRpc::Int(
            text()
                .parse()
                .map_err(|_| bad(format!("{:?} is not an integer", text())))?,
        ),
        "boolean" => XmlRpc::Bool(text() == "1" || text() == "true"),
        "double" => XmlRpc::Double(text().parse().unwrap_or(0.0)),
        "array" => {
            let data = inner
                .children()
                .find(|c| c.has_tag_name("data"))
                .ok_or_else(|| bad("array without data"))?;
            XmlRpc::Array(
                data.children()
                    .filter(|c| c.has_tag_name("value"))
                    .map(|v| parse_value(v, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        "struct" => {
            let mut m = Vec::new();
            for member in inner.children().filter(|c| c.has_tag_name("member")) {
                let name = member
                    .children()
                    .find(|c| c.has_tag_name("name"))
                    .and_then(|n| n.text())
                    .unwrap_or("")
                    .to_string();
                let value = member
                    .children()
                    .find(|c| c.has_tag_name("value"))
                    .ok_or_else(|| bad(format!("struct member {name:?} has no value")))?;
                m.push((name, parse_value(value, depth + 1)?));
            }
            XmlRpc::Struct(m)
        }
        "nil" => XmlRpc::Str(String::new()),
        other => return Err(bad(format!("unknown XML-RPC type <{other}>"))),
    })
}

/// Parse `ova.xml` into its XML-RPC value.
pub fn parse_ova_xml(xml: &str) -> Result<XmlRpc, ArchiveError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| bad(format!("ova.xml: {e}")))?;
    let root = doc.root_element();
    if !root.has_tag_name("value") {
        return Err(bad(format!(
            "ova.xml starts with <{}>, not <value>",
            root.tag_name().name()
        )));
    }
    parse_value(root, 0)
}

/// A disk of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XvaDisk {
    pub device: String,
    /// `Ref:N`, the directory of its blocks.
    pub vdi_ref: String,
    pub virtual_size: u64,
    pub bus: DiskBus,
}

/// What an XVA import would create.
#[derive(Debug, Clone, PartialEq)]
pub struct XvaPlan {
    pub spec: VmSpec,
    pub disks: Vec<XvaDisk>,
    pub warnings: Vec<String>,
    /// `gzip`, `zstd` or `none`.
    pub compression: &'static str,
}

/// Build the plan from the parsed `ova.xml`.
pub fn plan_from_ova_xml(v: &XmlRpc) -> Result<(VmSpec, Vec<XvaDisk>, Vec<String>), ArchiveError> {
    let mut warnings = Vec::new();
    let Some(XmlRpc::Array(objects)) = v.get("objects") else {
        return Err(bad("ova.xml has no objects"));
    };
    if let Some(vsn) = v.get("version").and_then(|x| x.int("export_vsn")) {
        if vsn > 2 {
            warnings.push(format!(
                "export format version {vsn} is newer than the 2 this corral knows"
            ));
        }
    }
    let by_id = |id: &str| objects.iter().find(|o| o.str("id") == id);
    let class = |o: &XmlRpc| o.str("class").to_string();
    let vms: Vec<&XmlRpc> = objects
        .iter()
        .filter(|o| {
            let s = o.get("snapshot");
            class(o) == "VM"
                && s.is_some_and(|s| !s.bool("is_a_snapshot") && !s.bool("is_control_domain"))
        })
        .collect();
    let vm = match vms.as_slice() {
        [vm] => *vm,
        [] => return Err(bad("ova.xml describes no VM")),
        _ => {
            return Err(ArchiveError::Unsupported(
                "the XVA holds several VMs".into(),
            ))
        }
    };
    let vm_id = vm.str("id").to_string();
    let s = vm
        .get("snapshot")
        .ok_or_else(|| bad("VM has no snapshot record"))?;
    let raw_name = s.str("name_label");
    let name = crate::ova::sanitize_vm_name(raw_name, &mut warnings);
    let vcpus_start = s.int("VCPUs_at_startup").unwrap_or(1);
    let vcpus_max = s.int("VCPUs_max").unwrap_or(vcpus_start);
    if vcpus_max != vcpus_start {
        warnings.push(format!(
            "VM starts with {vcpus_start} of {vcpus_max} vCPUs; corral has no CPU hot-plug, using {vcpus_start}"
        ));
    }
    let vcpus = u32::try_from(vcpus_start).unwrap_or(1).clamp(1, MAX_VCPUS);
    let mem = s
        .int("memory_static_max")
        .ok_or_else(|| bad("VM has no memory_static_max"))?;
    let mut memory_bytes = u64::try_from(mem).map_err(|_| bad("negative memory"))?;
    if s.int("memory_dynamic_max").is_some_and(|d| d != mem) {
        warnings.push("dynamic memory (ballooning) is not mapped; using memory_static_max".into());
    }
    memory_bytes = memory_bytes.div_ceil(1 << 20).max(16) << 20;
    let cpu_weight = s
        .get("VCPUs_params")
        .and_then(|p| p.int("weight"))
        .and_then(|w| u32::try_from(w).ok())
        .filter(|w| (1..=65535).contains(w))
        .unwrap_or(CPU_WEIGHT_NORMAL);
    let boot_policy = s.str("HVM_boot_policy");
    let domain_type = s.str("domain_type");
    let pv = domain_type == "pv" || (domain_type.is_empty() && boot_policy.is_empty());
    if pv {
        warnings.push(format!(
            "PV guest (bootloader {:?}): it is imported as an HVM guest booting its disk; it needs a kernel with virtio drivers and a boot loader on the disk",
            s.str("PV_bootloader")
        ));
    }
    let firmware = match s.get("HVM_boot_params").map(|p| p.str("firmware")) {
        Some(f) if f.eq_ignore_ascii_case("uefi") => Firmware::Uefi,
        _ => Firmware::Bios,
    };
    let platform = s.get("platform");
    let windows = platform.is_some_and(|p| p.str("viridian") == "true");
    if platform.is_some_and(|p| p.str("secureboot") == "true") {
        warnings.push("Secure Boot is not mapped".into());
    }
    let bus = if windows {
        warnings.push("Windows guest (viridian): disks are attached as SATA until virtio drivers are installed".into());
        DiskBus::Sata
    } else {
        DiskBus::Virtio
    };

    // VBDs: listed on the VM, or pointing at it (writers differ).
    let mut vbd_ids = s.strings("VBDs");
    for o in objects.iter().filter(|o| class(o) == "VBD") {
        let id = o.str("id").to_string();
        if o.get("snapshot").is_some_and(|x| x.str("VM") == vm_id) && !vbd_ids.contains(&id) {
            vbd_ids.push(id);
        }
    }
    let mut vbds: Vec<&XmlRpc> = vbd_ids
        .iter()
        .filter_map(|id| by_id(id))
        .filter_map(|o| o.get("snapshot"))
        .collect();
    vbds.sort_by_key(|b| b.int("userdevice").unwrap_or(i64::MAX));
    let mut disks = Vec::new();
    let mut cdroms = Vec::new();
    for b in vbds {
        let kind = b.str("type");
        if kind.eq_ignore_ascii_case("cd") {
            cdroms.push(Cdrom {
                device: format!("cdrom{}", cdroms.len()),
                bus: if bus == DiskBus::Virtio {
                    DiskBus::Sata
                } else {
                    bus
                },
                media: None,
            });
            if !b.bool("empty") {
                warnings.push("a CD was inserted; the drive is imported empty".into());
            }
            continue;
        }
        let vdi_ref = b.str("VDI").to_string();
        let Some(vdi) = by_id(&vdi_ref).and_then(|o| o.get("snapshot")) else {
            warnings.push(format!(
                "disk VBD refers to VDI {vdi_ref:?}, which is not in the export"
            ));
            continue;
        };
        let size = vdi
            .int("virtual_size")
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| bad(format!("VDI {vdi_ref} has no virtual_size")))?;
        if !vdi_ref.starts_with("Ref:") || vdi_ref.len() > 24 || vdi_ref.contains('/') {
            return Err(bad(format!("VDI id {vdi_ref:?} is not of the form Ref:N")));
        }
        disks.push(XvaDisk {
            device: format!("disk{}", disks.len()),
            vdi_ref,
            virtual_size: size,
            bus,
        });
    }
    if disks.len() > MAX_DISKS {
        return Err(ArchiveError::LimitExceeded(format!(
            "{} disks, more than the maximum of {MAX_DISKS}",
            disks.len()
        )));
    }
    // VIFs, likewise.
    let mut vif_ids = s.strings("VIFs");
    for o in objects.iter().filter(|o| class(o) == "VIF") {
        let id = o.str("id").to_string();
        if o.get("snapshot").is_some_and(|x| x.str("VM") == vm_id) && !vif_ids.contains(&id) {
            vif_ids.push(id);
        }
    }
    let mut vifs: Vec<&XmlRpc> = vif_ids
        .iter()
        .filter_map(|id| by_id(id))
        .filter_map(|o| o.get("snapshot"))
        .collect();
    vifs.sort_by_key(|v| v.int("device").unwrap_or(i64::MAX));
    let mut nics = Vec::new();
    for v in vifs.into_iter().take(MAX_NICS) {
        let network = by_id(v.str("network"))
            .and_then(|n| n.get("snapshot"))
            .map(|n| n.str("name_label").to_string())
            .unwrap_or_default();
        let mac = v.str("MAC").to_ascii_lowercase();
        nics.push(Nic {
            device: format!("nic{}", nics.len()),
            network,
            model: if windows {
                NicModel::E1000
            } else {
                NicModel::Virtio
            },
            mac: if validate::validate_mac(&mac).is_ok() {
                mac
            } else {
                String::new()
            },
        });
    }
    for k in ["VGPUs", "VUSBs", "VTPMs", "PCIs"] {
        if !s.strings(k).is_empty() {
            warnings.push(format!("{k} are not imported"));
        }
    }
    let spec = VmSpec {
        name,
        description: s.str("name_description").trim().to_string(),
        vcpus,
        memory_bytes,
        autostart: s
            .get("other_config")
            .is_some_and(|o| o.str("auto_poweron") == "true"),
        cpu_weight,
        firmware,
        disks: disks
            .iter()
            .map(|d| Disk {
                device: d.device.clone(),
                size_bytes: d.virtual_size,
                format: DiskFormat::Qcow2,
                bus: d.bus,
                sr: String::new(),
                path: Default::default(),
            })
            .collect(),
        cdroms,
        nics,
        kernel_boot: None,
        boot_device: BootDevice::Disk,
        template: None,
        is_template: s.bool("is_a_template"),
        install: None,
        tpm: false,
    };
    Ok((spec, disks, warnings))
}

/// Detect the compression from the first bytes and wrap the reader.
fn decompress<'a, R: Read + 'a>(
    mut input: R,
) -> Result<(Box<dyn Read + 'a>, &'static str), ArchiveError> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        match input
            .read(&mut head[n..])
            .map_err(ArchiveError::ReadArchive)?
        {
            0 => break,
            k => n += k,
        }
    }
    let chained = io::Cursor::new(head[..n].to_vec()).chain(input);
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => (Box::new(flate2::read::MultiGzDecoder::new(chained)), "gzip"),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            let mut d =
                zstd::stream::read::Decoder::new(chained).map_err(ArchiveError::ReadArchive)?;
            // Bounded window: at most 128 MiB of decoder memory whatever the frame asks.
            d.window_log_max(27).map_err(ArchiveError::ReadArchive)?;
            (Box::new(d), "zstd")
        }
        _ => (Box::new(chained), "none"),
    })
}

fn read_ova_xml<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    limits: &Limits,
) -> Result<String, ArchiveError> {
    for e in entries.by_ref() {
        let mut e = e.map_err(|e| bad(format!("not a tar archive ({e})")))?;
        let (name, kind) = check_member(&e)?;
        if kind != MemberKind::File {
            continue;
        }
        if name != "ova.xml" {
            return Err(bad(format!("first member is {name:?}, not ova.xml")));
        }
        let size = e.header().size().map_err(ArchiveError::ReadArchive)?;
        if size > limits.max_manifest_bytes {
            return Err(ArchiveError::LimitExceeded(format!(
                "ova.xml is {size} bytes, more than the maximum of {}",
                limits.max_manifest_bytes
            )));
        }
        let mut s = String::new();
        e.read_to_string(&mut s).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => bad("ova.xml is not UTF-8"),
            _ => ArchiveError::read(e),
        })?;
        return Ok(s);
    }
    Err(bad("the archive is empty"))
}

/// Read only `ova.xml` and build the plan (dry run).
pub fn plan_xva<R: Read>(input: R, limits: &Limits) -> Result<XvaPlan, ArchiveError> {
    let (r, compression) = decompress(input)?;
    let mut ar = tar::Archive::new(GuardedTar::new(r));
    let mut entries = ar.entries().map_err(ArchiveError::read)?;
    let xml = read_ova_xml(&mut entries, limits)?;
    let (spec, disks, warnings) = plan_from_ova_xml(&parse_ova_xml(&xml)?)?;
    Ok(XvaPlan {
        spec,
        disks,
        warnings,
        compression,
    })
}

/// A block waiting for its checksum member.
struct Pending {
    name: String,
    disk: usize,
    offset: u64,
    data: Vec<u8>,
}

fn hex_eq(text: &[u8], want: &str) -> bool {
    String::from_utf8_lossy(text)
        .trim()
        .eq_ignore_ascii_case(want)
}

fn verify(p: &Pending, sum_name: &str, text: &[u8]) -> Result<(), ArchiveError> {
    if sum_name.ends_with(".checksum") {
        let got = hex::encode(Sha1::digest(&p.data));
        if !hex_eq(text, &got) {
            return Err(ArchiveError::ChecksumMismatch {
                what: format!("block {} (SHA-1)", p.name),
                expected: String::from_utf8_lossy(text).trim().to_string(),
                actual: got,
            });
        }
    } else {
        let h = xxhash_rust::xxh64::xxh64(&p.data, 0);
        // Writers disagree on byte order (xen-orchestra notes OCaml's is reversed); accept both.
        let be = format!("{h:016x}");
        let le = format!("{:016x}", h.swap_bytes());
        if !hex_eq(text, &be) && !hex_eq(text, &le) {
            return Err(ArchiveError::ChecksumMismatch {
                what: format!("block {} (XXH64)", p.name),
                expected: String::from_utf8_lossy(text).trim().to_string(),
                actual: be,
            });
        }
    }
    Ok(())
}

/// Import an XVA stream into `sink`.
pub fn read_xva<R: Read>(
    input: R,
    sink: &mut dyn ImportSink,
    limits: &Limits,
    progress: &dyn Fn(Progress),
) -> Result<ImportedVm, ArchiveError> {
    let (r, compression) = decompress(input)?;
    let mut ar = tar::Archive::new(GuardedTar::new(r));
    let mut entries = ar.entries().map_err(ArchiveError::read)?;
    let xml = read_ova_xml(&mut entries, limits)?;
    let (mut spec, disks, mut warnings) = plan_from_ova_xml(&parse_ova_xml(&xml)?)?;
    for (index, d) in disks.iter().enumerate() {
        if d.virtual_size > limits.max_virtual_size {
            return Err(ArchiveError::LimitExceeded(format!(
                "disk {} has a virtual size of {} bytes, more than the maximum of {}",
                d.device, d.virtual_size, limits.max_virtual_size
            )));
        }
        sink.create_disk(&DiskTarget {
            index,
            device: d.device.clone(),
            virtual_size: d.virtual_size,
            format: DiskFormat::Qcow2,
        })
        .map_err(|e| ArchiveError::WriteDisk {
            device: d.device.clone(),
            source: e,
        })?;
    }
    let bytes_total: u64 = disks.iter().map(|d| d.virtual_size).sum();
    let mut done_before = vec![0u64; disks.len()];
    for i in 1..disks.len() {
        done_before[i] = done_before[i - 1] + disks[i - 1].virtual_size;
    }
    progress(Progress {
        phase: Phase::Importing,
        device: None,
        bytes_done: 0,
        bytes_total,
    });
    // Next allowed block index per disk (blocks ascend).
    let mut next_block = vec![0u64; disks.len()];
    let mut data_bytes = vec![0u64; disks.len()];
    let mut pending: Option<Pending> = None;
    for e in entries {
        let mut e = e.map_err(ArchiveError::read)?;
        let (name, kind) = check_member(&e)?;
        if kind != MemberKind::File {
            continue;
        }
        let size = e.header().size().map_err(ArchiveError::ReadArchive)?;
        let (dir, file) = name
            .split_once('/')
            .ok_or_else(|| ArchiveError::member(&name, "unexpected member"))?;
        let disk = disks
            .iter()
            .position(|d| d.vdi_ref == dir)
            .ok_or_else(|| ArchiveError::member(&name, "belongs to no disk of the VM"))?;
        if let Some(stem) = file
            .strip_suffix(".checksum")
            .or_else(|| file.strip_suffix(".xxhash"))
        {
            let p = pending
                .take()
                .filter(|p| p.name == format!("{dir}/{stem}"))
                .ok_or_else(|| {
                    ArchiveError::member(&name, "is a checksum for no preceding block")
                })?;
            if size > 256 {
                return Err(ArchiveError::member(&name, "is too large for a checksum"));
            }
            let mut text = Vec::new();
            e.read_to_end(&mut text).map_err(ArchiveError::read)?;
            verify(&p, file, &text)?;
            let d = &disks[p.disk];
            // The last block may extend past an unaligned size: that part must be zeros.
            let keep = (d.virtual_size - p.offset).min(p.data.len() as u64) as usize;
            if p.data[keep..].iter().any(|&b| b != 0) {
                return Err(ArchiveError::member(
                    &p.name,
                    "holds data past the end of the disk",
                ));
            }
            for (s, t) in crate::native::nonzero_runs(&p.data[..keep]) {
                sink.write_at(p.disk, p.offset + s as u64, &p.data[s..t])
                    .map_err(|err| ArchiveError::WriteDisk {
                        device: d.device.clone(),
                        source: err,
                    })?;
                data_bytes[p.disk] += (t - s) as u64;
            }
            progress(Progress {
                phase: Phase::Importing,
                device: Some(d.device.clone()),
                bytes_done: done_before[p.disk] + p.offset + keep as u64,
                bytes_total,
            });
            continue;
        }
        if let Some(p) = &pending {
            return Err(ArchiveError::member(&p.name, "has no checksum member"));
        }
        if file.len() != 8 || !file.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ArchiveError::member(&name, "unexpected member"));
        }
        let index: u64 = file
            .parse()
            .map_err(|_| ArchiveError::member(&name, "bad block number"))?;
        if index < next_block[disk] {
            return Err(ArchiveError::member(&name, "is out of order or repeated"));
        }
        let offset = index * XVA_BLOCK_BYTES;
        let d = &disks[disk];
        if offset >= d.virtual_size.max(1) {
            return Err(ArchiveError::member(&name, "lies past the end of the disk"));
        }
        if size == 0 || size > XVA_BLOCK_BYTES {
            return Err(ArchiveError::member(
                &name,
                format!("is {size} bytes; blocks hold 1..{XVA_BLOCK_BYTES}"),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        (&mut e)
            .take(size)
            .read_to_end(&mut data)
            .map_err(ArchiveError::read)?;
        if data.len() as u64 != size {
            return Err(ArchiveError::Truncated(format!(
                "block {name:?} ends early"
            )));
        }
        next_block[disk] = index + 1;
        pending = Some(Pending {
            name,
            disk,
            offset,
            data,
        });
    }
    if let Some(p) = pending {
        return Err(ArchiveError::Truncated(format!(
            "block {:?} has no checksum member",
            p.name
        )));
    }
    if let Some(i) = (0..disks.len()).find(|&i| next_block[i] == 0 && disks[i].virtual_size > 0) {
        // Writers always keep the last block, so a disk without any block was cut off.
        return Err(ArchiveError::Truncated(format!(
            "no block of disk {} ({})",
            disks[i].device, disks[i].vdi_ref
        )));
    }
    progress(Progress {
        phase: Phase::Importing,
        device: None,
        bytes_done: bytes_total,
        bytes_total,
    });
    let mut out = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let (path, format) =
            sink.finish_disk(i, progress)
                .map_err(|e| ArchiveError::WriteDisk {
                    device: d.device.clone(),
                    source: e,
                })?;
        out.push(ImportedDisk {
            device: d.device.clone(),
            virtual_size: d.virtual_size,
            path,
            format,
            data_bytes: data_bytes[i],
        });
    }
    reconcile_spec(&mut spec, &out, &mut warnings);
    Ok(ImportedVm {
        spec,
        disks: out,
        files: Vec::new(),
        warnings,
        archive_hash: String::new(),
        format_version: format!("xva ({compression})"),
    })
}
