//! OVA/OVF: export as an OVF 1.0 package in one tar (`.ova`), import OVF 1.x/2.0 from a
//! directory, a `.ovf` file or an `.ova`.
//!
//! Export: each disk is converted by `qemu-img` to a streamOptimized VMDK in a scratch
//! directory, hashed (SHA-256), then the tar is written in the order DSP0243 requires: the
//! descriptor first, the manifest (`.mf`) right after it, then the files in `References`
//! order. The tar is plain ustar.
//!
//! Import: the descriptor is parsed into an [`OvfPlan`] (enough for `--dry-run`, which reads
//! nothing else). A real import streams the package: referenced files are copied into the
//! sink's scratch directory under names of our own (`ova-file<N>`), hashed on the way and
//! checked against the manifest and declared sizes, then each image is checked with
//! [`check_foreign_image`] (no backing files, no VMDK extents outside itself, size within the
//! declared capacity) and handed to the sink.

mod ovf;

pub(crate) use ovf::sanitize_name as sanitize_vm_name;
pub use ovf::{parse_ovf, parse_units, ImageFormat, OvfDisk, OvfFile, OvfPlan};

use crate::error::ArchiveError;
use crate::native::{reconcile_spec, ImportedDisk, ImportedVm, Limits};
use crate::progress::{Phase, Progress};
use crate::sink::{DiskTarget, ImportSink};
use crate::source::{check_foreign_image, image_info, qemu_img};
use crate::tarsafe::{check_member, GuardedTar, MemberKind};
use corral_model::{DiskBus, DiskFormat, Firmware, NicModel, VmSpec};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A disk to export.
#[derive(Debug, Clone)]
pub struct OvaDisk {
    pub device: String,
    pub path: PathBuf,
    pub format: DiskFormat,
}

/// What an OVA export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaSummary {
    /// Member name, size and SHA-256 of every member after the manifest.
    pub files: Vec<(String, u64, String)>,
    pub archive_bytes: u64,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// One disk as the descriptor describes it.
#[derive(Debug, Clone)]
pub struct DescriptorDisk {
    pub device: String,
    pub bus: DiskBus,
    pub file_name: String,
    pub file_size: u64,
    pub capacity: u64,
}

/// Build an OVF 1.0 descriptor (DSP8023 structure) for `spec`.
pub fn ovf_descriptor(spec: &VmSpec, disks: &[DescriptorDisk]) -> String {
    let mut x = String::new();
    let name = xml_escape(&spec.name);
    x.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:corral="urn:corral:ovf:1" ovf:version="1.0">
  <References>
"#);
    for (i, d) in disks.iter().enumerate() {
        x.push_str(&format!(
            "    <File ovf:id=\"file{i}\" ovf:href=\"{}\" ovf:size=\"{}\"/>\n",
            xml_escape(&d.file_name),
            d.file_size
        ));
    }
    x.push_str("  </References>\n  <DiskSection>\n    <Info>Virtual disks</Info>\n");
    for (i, d) in disks.iter().enumerate() {
        x.push_str(&format!(
            "    <Disk ovf:diskId=\"vmdisk{i}\" ovf:fileRef=\"file{i}\" ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte\" ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"/>\n",
            d.capacity
        ));
    }
    x.push_str("  </DiskSection>\n");
    // The schema requires at least one Network in a NetworkSection: none without NICs.
    let mut nets: Vec<&str> = spec.nics.iter().map(|n| n.network.as_str()).collect();
    nets.sort();
    nets.dedup();
    if !nets.is_empty() {
        x.push_str("  <NetworkSection>\n    <Info>Networks</Info>\n");
        for n in &nets {
            let n = xml_escape(n);
            x.push_str(&format!(
                "    <Network ovf:name=\"{n}\">\n      <Description>{n}</Description>\n    </Network>\n"
            ));
        }
        x.push_str("  </NetworkSection>\n");
    }
    x.push_str(&format!(
        "  <VirtualSystem ovf:id=\"{name}\">\n    <Info>A virtual machine exported by corral</Info>\n    <Name>{name}</Name>\n"
    ));
    if !spec.description.is_empty() {
        x.push_str(&format!(
            "    <AnnotationSection>\n      <Info>Description</Info>\n      <Annotation>{}</Annotation>\n    </AnnotationSection>\n",
            xml_escape(&spec.description)
        ));
    }
    x.push_str("    <OperatingSystemSection ovf:id=\"1\">\n      <Info>Guest operating system</Info>\n      <Description>Other</Description>\n    </OperatingSystemSection>\n");
    x.push_str(&format!(
        "    <VirtualHardwareSection>\n      <Info>Virtual hardware</Info>\n      <System>\n        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        <vssd:InstanceID>0</vssd:InstanceID>\n        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>\n        <vssd:VirtualSystemType>vmx-07</vssd:VirtualSystemType>\n      </System>\n"
    ));
    let mut id = 1u32;
    // Each Item's RASD elements (name, escaped text), written in schema order with its
    // InstanceID added.
    let mut item = |x: &mut String, mut fields: Vec<(&'static str, String)>| {
        fields.push(("InstanceID", id.to_string()));
        fields.sort_by_key(|(n, _)| rasd_position(n));
        x.push_str("      <Item>\n");
        for (n, v) in fields {
            x.push_str(&format!("        <rasd:{n}>{v}</rasd:{n}>\n"));
        }
        x.push_str("      </Item>\n");
        id += 1;
        id - 1
    };
    let f = |n: &'static str, v: &dyn std::fmt::Display| (n, xml_escape(&v.to_string()));
    item(
        &mut x,
        vec![
            f("AllocationUnits", &"hertz * 10^6"),
            f("Description", &"Number of virtual CPUs"),
            f("ElementName", &format!("{} virtual CPU(s)", spec.vcpus)),
            f("ResourceType", &3),
            f("VirtualQuantity", &spec.vcpus),
            f("Weight", &spec.cpu_weight),
        ],
    );
    item(
        &mut x,
        vec![
            f("AllocationUnits", &"byte * 2^20"),
            f("Description", &"Memory size"),
            f(
                "ElementName",
                &format!("{} MB of memory", spec.memory_bytes >> 20),
            ),
            f("ResourceType", &4),
            f("VirtualQuantity", &(spec.memory_bytes >> 20)),
        ],
    );
    let need =
        |b: DiskBus| disks.iter().any(|d| d.bus == b) || spec.cdroms.iter().any(|c| c.bus == b);
    let ide = need(DiskBus::Ide).then(|| {
        item(
            &mut x,
            vec![
                f("Address", &0),
                f("ElementName", &"IDE controller"),
                f("ResourceType", &5),
            ],
        )
    });
    let sata = need(DiskBus::Sata).then(|| {
        item(
            &mut x,
            vec![
                f("Address", &0),
                f("ElementName", &"SATA controller"),
                f("ResourceSubType", &"AHCI"),
                f("ResourceType", &20),
            ],
        )
    });
    let virtio = need(DiskBus::Virtio).then(|| {
        item(
            &mut x,
            vec![
                f("Address", &0),
                f("ElementName", &"virtio block controller"),
                f("ResourceSubType", &"virtio"),
                f("ResourceType", &20),
            ],
        )
    });
    let parent = |b: DiskBus| {
        match b {
            DiskBus::Ide => ide,
            DiskBus::Sata => sata,
            DiskBus::Virtio => virtio,
        }
        .unwrap_or(0)
    };
    let mut slot = [0u32; 3];
    let mut next_slot = |b: DiskBus| {
        let s = &mut slot[b as usize];
        *s += 1;
        *s - 1
    };
    for (i, d) in disks.iter().enumerate() {
        let (p, a) = (parent(d.bus), next_slot(d.bus));
        item(
            &mut x,
            vec![
                f("AddressOnParent", &a),
                f("ElementName", &d.device),
                f("HostResource", &format!("ovf:/disk/vmdisk{i}")),
                f("Parent", &p),
                f("ResourceType", &17),
            ],
        );
    }
    for c in &spec.cdroms {
        let bus = if c.bus == DiskBus::Virtio {
            DiskBus::Sata
        } else {
            c.bus
        };
        let (p, a) = (parent(bus), next_slot(bus));
        item(
            &mut x,
            vec![
                f("AddressOnParent", &a),
                f("AutomaticAllocation", &false),
                f("ElementName", &c.device),
                f("Parent", &p),
                f("ResourceType", &15),
            ],
        );
    }
    for n in &spec.nics {
        let sub = match n.model {
            NicModel::Virtio => "virtio",
            NicModel::E1000 => "E1000",
            NicModel::Rtl8139 => "rtl8139",
        };
        let mut fields = vec![
            f("AutomaticAllocation", &true),
            f("Connection", &n.network),
            f("ElementName", &n.device),
            f("ResourceSubType", &sub),
            f("ResourceType", &10),
        ];
        if !n.mac.is_empty() {
            fields.push(f("Address", &n.mac));
        }
        item(&mut x, fields);
    }
    if spec.firmware.is_uefi() {
        x.push_str(
            "      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"efi\"/>\n",
        );
    }
    if spec.firmware == Firmware::UefiSecure {
        // VMware's key for Secure Boot; other readers ignore an unknown optional Config.
        x.push_str(
            "      <vmw:Config ovf:required=\"false\" vmw:key=\"uefi.secureBoot.enabled\" vmw:value=\"true\"/>\n",
        );
    }
    x.push_str("    </VirtualHardwareSection>\n");
    // Settings OVF has no element for, in a section other tools may ignore (DSP0243 9.1).
    x.push_str(&format!(
        "    <corral:SettingsSection ovf:required=\"false\">\n      <Info>corral settings</Info>\n      <corral:Autostart>{}</corral:Autostart>\n    </corral:SettingsSection>\n",
        spec.autostart
    ));
    x.push_str("  </VirtualSystem>\n</Envelope>\n");
    x
}

/// The element order of CIM_ResourceAllocationSettingData (the `xs:sequence` of its schema,
/// alphabetical), which every `<Item>` must follow to validate against DSP8023.
pub const RASD_ORDER: &[&str] = &[
    "Address",
    "AddressOnParent",
    "AllocationUnits",
    "AutomaticAllocation",
    "AutomaticDeallocation",
    "Caption",
    "Connection",
    "ConsumerVisibility",
    "Description",
    "ElementName",
    "HostResource",
    "InstanceID",
    "Limit",
    "MappingBehavior",
    "OtherResourceType",
    "Parent",
    "PoolID",
    "Reservation",
    "ResourceSubType",
    "ResourceType",
    "VirtualQuantity",
    "VirtualQuantityUnits",
    "Weight",
];

fn rasd_position(name: &str) -> usize {
    RASD_ORDER
        .iter()
        .position(|n| *n == name)
        .unwrap_or(RASD_ORDER.len())
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn ustar(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Export `spec` with its disks as an OVA to `out`. VMDKs are built in `scratch_dir` (a
/// private temporary directory inside it, removed afterwards).
pub fn write_ova<W: Write>(
    out: W,
    spec: &VmSpec,
    disks: &[OvaDisk],
    scratch_dir: &Path,
    progress: &dyn Fn(Progress),
) -> Result<OvaSummary, ArchiveError> {
    corral_model::validate::validate_name("VM", &spec.name).map_err(ArchiveError::InvalidInput)?;
    let tmp = tempfile::Builder::new()
        .prefix(".corral-ova-")
        .tempdir_in(scratch_dir)
        .map_err(ArchiveError::WriteArchive)?;
    let mut ddisks = Vec::new();
    let mut paths = Vec::new();
    let disk_count: u64 = disks.len() as u64;
    for (i, d) in disks.iter().enumerate() {
        corral_model::validate::validate_name("disk device", &d.device)
            .map_err(ArchiveError::InvalidInput)?;
        progress(Progress {
            phase: Phase::Preparing,
            device: Some(d.device.clone()),
            bytes_done: i as u64,
            bytes_total: disk_count,
        });
        let info = image_info(&d.path, d.format.as_str())?;
        let capacity = info["virtual-size"]
            .as_u64()
            .ok_or_else(|| ArchiveError::ToolFailed {
                tool: "qemu-img info".into(),
                message: "no virtual-size".into(),
            })?;
        let file_name = format!("{}-{}.vmdk", spec.name, d.device);
        let vmdk = tmp.path().join(&file_name);
        qemu_img(&[
            "convert".as_ref(),
            "-f".as_ref(),
            d.format.as_str().as_ref(),
            "-O".as_ref(),
            "vmdk".as_ref(),
            "-o".as_ref(),
            "subformat=streamOptimized".as_ref(),
            d.path.as_os_str(),
            vmdk.as_os_str(),
        ])?;
        let file_size = std::fs::metadata(&vmdk)
            .map_err(ArchiveError::WriteArchive)?
            .len();
        let bus = spec
            .disks
            .iter()
            .find(|sd| sd.device == d.device)
            .map_or(DiskBus::Virtio, |sd| sd.bus);
        ddisks.push(DescriptorDisk {
            device: d.device.clone(),
            bus,
            file_name: file_name.clone(),
            file_size,
            capacity,
        });
        paths.push(vmdk);
    }
    let descriptor = ovf_descriptor(spec, &ddisks);
    let ovf_name = format!("{}.ovf", spec.name);
    let mut mf = format!(
        "SHA256({ovf_name})= {}\n",
        hex::encode(Sha256::digest(descriptor.as_bytes()))
    );
    let mut files = Vec::new();
    for (d, p) in ddisks.iter().zip(&paths) {
        let h = sha256_file(p).map_err(ArchiveError::WriteArchive)?;
        mf.push_str(&format!("SHA256({})= {h}\n", d.file_name));
        files.push((d.file_name.clone(), d.file_size, h));
    }
    let bytes_total: u64 = files.iter().map(|f| f.1).sum();
    let mut b = tar::Builder::new(CountingWriter {
        inner: out,
        count: 0,
    });
    b.append_data(
        &mut ustar(descriptor.len() as u64),
        &ovf_name,
        descriptor.as_bytes(),
    )
    .map_err(ArchiveError::WriteArchive)?;
    b.append_data(
        &mut ustar(mf.len() as u64),
        format!("{}.mf", spec.name),
        mf.as_bytes(),
    )
    .map_err(ArchiveError::WriteArchive)?;
    let mut done = 0;
    for (d, p) in ddisks.iter().zip(&paths) {
        let f = File::open(p).map_err(ArchiveError::WriteArchive)?;
        b.append_data(&mut ustar(d.file_size), &d.file_name, f.take(d.file_size))
            .map_err(ArchiveError::WriteArchive)?;
        done += d.file_size;
        progress(Progress {
            phase: Phase::Exporting,
            device: Some(d.device.clone()),
            bytes_done: done,
            bytes_total,
        });
    }
    let mut w = b.into_inner().map_err(ArchiveError::WriteArchive)?;
    w.flush().map_err(ArchiveError::WriteArchive)?;
    Ok(OvaSummary {
        files,
        archive_bytes: w.count,
    })
}

/// Where an OVF package is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OvfLocation {
    /// A directory holding one `.ovf` and its files.
    Directory(PathBuf),
    /// A `.ovf` file; its files are next to it.
    Descriptor(PathBuf),
    /// An OVA (tar).
    Ova(PathBuf),
}

/// Tell what `path` is: a directory, a tar (OVA) or an XML descriptor.
pub fn locate_ovf(path: &Path) -> Result<OvfLocation, ArchiveError> {
    if path.is_dir() {
        let mut ovfs = Vec::new();
        for e in std::fs::read_dir(path).map_err(ArchiveError::ReadArchive)? {
            let p = e.map_err(ArchiveError::ReadArchive)?.path();
            if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ovf")) {
                ovfs.push(p);
            }
        }
        return match ovfs.len() {
            1 => Ok(OvfLocation::Directory(path.to_path_buf())),
            0 => Err(ArchiveError::InvalidOvf(format!(
                "{} holds no .ovf file",
                path.display()
            ))),
            n => Err(ArchiveError::InvalidOvf(format!(
                "{} holds {n} .ovf files; name one",
                path.display()
            ))),
        };
    }
    let mut head = [0u8; 512];
    let mut f = File::open(path).map_err(ArchiveError::ReadArchive)?;
    let n = read_full(&mut f, &mut head).map_err(ArchiveError::ReadArchive)?;
    if n == 512 && &head[257..262] == b"ustar" {
        Ok(OvfLocation::Ova(path.to_path_buf()))
    } else {
        Ok(OvfLocation::Descriptor(path.to_path_buf()))
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn descriptor_text(bytes: Vec<u8>) -> Result<String, ArchiveError> {
    let mut s = String::from_utf8(bytes)
        .map_err(|_| ArchiveError::InvalidOvf("descriptor is not UTF-8".into()))?;
    if s.starts_with('\u{feff}') {
        s.remove(0);
    }
    Ok(s)
}

fn read_capped(r: &mut impl Read, cap: u64, what: &str) -> Result<Vec<u8>, ArchiveError> {
    let mut v = Vec::new();
    r.take(cap + 1)
        .read_to_end(&mut v)
        .map_err(ArchiveError::read)?;
    if v.len() as u64 > cap {
        return Err(ArchiveError::LimitExceeded(format!(
            "{what} is larger than the maximum of {cap} bytes"
        )));
    }
    Ok(v)
}

fn dir_descriptor(loc: &OvfLocation) -> Result<(PathBuf, PathBuf), ArchiveError> {
    match loc {
        OvfLocation::Directory(d) => {
            for e in std::fs::read_dir(d).map_err(ArchiveError::ReadArchive)? {
                let p = e.map_err(ArchiveError::ReadArchive)?.path();
                if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ovf")) {
                    return Ok((d.clone(), p));
                }
            }
            Err(ArchiveError::InvalidOvf("no .ovf file".into()))
        }
        OvfLocation::Descriptor(p) => Ok((
            p.parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            p.clone(),
        )),
        OvfLocation::Ova(_) => Err(ArchiveError::InvalidInput(
            "an OVA is not a directory".into(),
        )),
    }
}

/// Parse the descriptor of a package without reading its disks: the `--dry-run` plan.
pub fn plan_ovf(path: &Path, limits: &Limits) -> Result<OvfPlan, ArchiveError> {
    let loc = locate_ovf(path)?;
    let xml = match &loc {
        OvfLocation::Ova(p) => {
            let f = File::open(p).map_err(ArchiveError::ReadArchive)?;
            let mut ar = tar::Archive::new(GuardedTar::new(f));
            let mut entries = ar.entries().map_err(ArchiveError::read)?;
            ova_descriptor(&mut entries, limits)?.1
        }
        _ => {
            let (_, p) = dir_descriptor(&loc)?;
            let mut f = File::open(&p).map_err(ArchiveError::ReadArchive)?;
            descriptor_text(read_capped(
                &mut f,
                limits.max_manifest_bytes,
                "the descriptor",
            )?)?
        }
    };
    parse_ovf(&xml)
}

/// Parse the descriptor at the head of an OVA stream without reading further: the
/// `--dry-run` plan of an upload.
pub fn plan_ova<R: Read>(input: R, limits: &Limits) -> Result<OvfPlan, ArchiveError> {
    let mut ar = tar::Archive::new(GuardedTar::new(input));
    let mut entries = ar.entries().map_err(ArchiveError::read)?;
    let xml = ova_descriptor(&mut entries, limits)?.1;
    parse_ovf(&xml)
}

fn ova_descriptor<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    limits: &Limits,
) -> Result<(String, String), ArchiveError> {
    for e in entries.by_ref() {
        let mut e = e.map_err(|e| ArchiveError::InvalidOvf(format!("not a tar archive ({e})")))?;
        let (name, kind) = check_member(&e)?;
        if kind != MemberKind::File {
            continue;
        }
        if !name.to_ascii_lowercase().ends_with(".ovf") {
            return Err(ArchiveError::InvalidOvf(format!(
                "first file is {name:?}; an OVA starts with its .ovf descriptor"
            )));
        }
        let bytes = read_capped(&mut e, limits.max_manifest_bytes, "the descriptor")?;
        return Ok((name, descriptor_text(bytes)?));
    }
    Err(ArchiveError::InvalidOvf(
        "the OVA holds no descriptor".into(),
    ))
}

/// Parse an OVF manifest: `SHA256(name)= hex` or `SHA1(name)= hex` lines.
fn parse_mf(text: &str) -> Result<Vec<(String, String, String)>, ArchiveError> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let bad = || {
            ArchiveError::InvalidOvf(format!("manifest line {line:?} is not ALGO(file)= digest"))
        };
        let (algo, rest) = line.split_once('(').ok_or_else(bad)?;
        let (file, digest) = rest.rsplit_once(")=").ok_or_else(bad)?;
        let algo = algo.trim().to_ascii_uppercase();
        if !matches!(algo.as_str(), "SHA1" | "SHA256") {
            return Err(ArchiveError::Unsupported(format!("manifest digest {algo}")));
        }
        out.push((
            algo,
            file.trim().to_string(),
            digest.trim().to_ascii_lowercase(),
        ));
    }
    Ok(out)
}

#[derive(Default, Clone)]
struct Digests {
    sha1: String,
    sha256: String,
}

/// Most bytes the image file `href` may hold: the largest capacity of the disks it backs plus
/// room for image-format metadata (VMDK grain markers and tables, qcow2 tables: well under 1/32
/// of the capacity), so a package cannot make an import copy unbounded data into its scratch
/// space, whether or not `References` declares a size. Files no disk uses keep the global cap.
fn image_file_cap(plan: &OvfPlan, href: &str, limits: &Limits) -> u64 {
    plan.disks
        .iter()
        .filter(|d| d.file.as_ref().is_some_and(|f| f.href == href))
        .map(|d| {
            d.capacity_bytes
                .saturating_add(d.capacity_bytes / 32)
                .saturating_add(64 << 20)
        })
        .max()
        .unwrap_or(limits.max_virtual_size)
        .min(limits.max_virtual_size)
}

fn hash_copy(
    r: &mut impl Read,
    w: Option<&mut File>,
    cap: u64,
) -> Result<(u64, Digests), ArchiveError> {
    let mut s1 = Sha1::new();
    let mut s2 = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut w = w;
    loop {
        let n = r.read(&mut buf).map_err(ArchiveError::read)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > cap {
            return Err(ArchiveError::LimitExceeded(format!(
                "a file is larger than the maximum of {cap} bytes"
            )));
        }
        s1.update(&buf[..n]);
        s2.update(&buf[..n]);
        if let Some(w) = w.as_mut() {
            w.write_all(&buf[..n]).map_err(ArchiveError::WriteArchive)?;
        }
    }
    Ok((
        total,
        Digests {
            sha1: hex::encode(s1.finalize()),
            sha256: hex::encode(s2.finalize()),
        },
    ))
}

fn verify_mf(
    mf: &[(String, String, String)],
    digests: &[(String, Digests)],
    warnings: &mut Vec<String>,
) -> Result<(), ArchiveError> {
    for (name, d) in digests {
        match mf.iter().find(|(_, f, _)| f == name) {
            Some((algo, _, want)) => {
                let got = if algo == "SHA1" { &d.sha1 } else { &d.sha256 };
                if got != want {
                    return Err(ArchiveError::ChecksumMismatch {
                        what: format!("{name} ({algo})"),
                        expected: want.clone(),
                        actual: got.clone(),
                    });
                }
            }
            None => warnings.push(format!("{name} is not listed in the manifest")),
        }
    }
    Ok(())
}

fn create_targets(plan: &OvfPlan, sink: &mut dyn ImportSink) -> Result<(), ArchiveError> {
    for (index, d) in plan.disks.iter().enumerate() {
        sink.create_disk(&DiskTarget {
            index,
            device: d.device.clone(),
            virtual_size: d.capacity_bytes,
            format: DiskFormat::Qcow2,
        })
        .map_err(|e| ArchiveError::WriteDisk {
            device: d.device.clone(),
            source: e,
        })?;
    }
    Ok(())
}

fn fill_and_finish(
    mut plan: OvfPlan,
    images: Vec<Option<PathBuf>>,
    sink: &mut dyn ImportSink,
    progress: &dyn Fn(Progress),
    version: String,
) -> Result<ImportedVm, ArchiveError> {
    for (i, d) in plan.disks.iter().enumerate() {
        let Some(img) = &images[i] else { continue };
        let size = check_foreign_image(img, d.format.qemu_name())?;
        if size > d.capacity_bytes {
            return Err(ArchiveError::InvalidOvf(format!(
                "disk {}: the image holds {size} bytes, more than the declared capacity of {}",
                d.device, d.capacity_bytes
            )));
        }
        sink.import_image(i, img, d.format.qemu_name())
            .map_err(|e| ArchiveError::WriteDisk {
                device: d.device.clone(),
                source: e,
            })?;
    }
    let mut disks = Vec::new();
    for (i, d) in plan.disks.iter().enumerate() {
        let (path, format) =
            sink.finish_disk(i, progress)
                .map_err(|e| ArchiveError::WriteDisk {
                    device: d.device.clone(),
                    source: e,
                })?;
        disks.push(ImportedDisk {
            device: d.device.clone(),
            virtual_size: d.capacity_bytes,
            path,
            format,
            data_bytes: 0,
        });
    }
    let mut spec = plan.spec.clone();
    reconcile_spec(&mut spec, &disks, &mut plan.warnings);
    Ok(ImportedVm {
        spec,
        disks,
        files: Vec::new(),
        warnings: plan.warnings,
        archive_hash: String::new(),
        format_version: version,
    })
}

/// Import an OVF package (directory, `.ovf` or `.ova`) into `sink`.
pub fn import_ovf(
    path: &Path,
    sink: &mut dyn ImportSink,
    limits: &Limits,
    progress: &dyn Fn(Progress),
) -> Result<ImportedVm, ArchiveError> {
    let loc = locate_ovf(path)?;
    if let OvfLocation::Ova(p) = &loc {
        let f = File::open(p).map_err(ArchiveError::ReadArchive)?;
        return read_ova(f, sink, limits, progress);
    }
    let (dir, desc) = dir_descriptor(&loc)?;
    let mut f = File::open(&desc).map_err(ArchiveError::ReadArchive)?;
    let raw = read_capped(&mut f, limits.max_manifest_bytes, "the descriptor")?;
    let desc_name = desc
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (_, desc_digest) = hash_copy(&mut &raw[..], None, u64::MAX)?;
    let mut plan = parse_ovf(&descriptor_text(raw)?)?;
    let version = format!("ovf-{}", plan.ovf_version);
    let root = dir.canonicalize().map_err(ArchiveError::ReadArchive)?;
    let mut digests = vec![(desc_name, desc_digest)];
    let mut images = Vec::new();
    let total: u64 = plan
        .disks
        .iter()
        .filter_map(|d| d.file.as_ref()?.size)
        .sum();
    let mut done = 0;
    for d in &plan.disks {
        let Some(file) = &d.file else {
            images.push(None);
            continue;
        };
        let p = root.join(&file.href).canonicalize().map_err(|e| {
            ArchiveError::InvalidOvf(format!("file {:?} cannot be opened: {e}", file.href))
        })?;
        if !p.starts_with(&root) {
            return Err(ArchiveError::UnsafeMember {
                name: file.href.clone(),
                reason: "it resolves outside the package directory".into(),
            });
        }
        let mut f = File::open(&p).map_err(ArchiveError::ReadArchive)?;
        let cap = image_file_cap(&plan, &file.href, limits);
        let (size, dg) = hash_copy(&mut f, None, cap).map_err(|_| {
            ArchiveError::InvalidOvf(format!(
                "file {:?} is larger than the {cap} bytes its disk's capacity allows",
                file.href
            ))
        })?;
        if file.size.is_some_and(|s| s != size) {
            return Err(ArchiveError::InvalidOvf(format!(
                "file {:?} is {size} bytes, not the declared {}",
                file.href,
                file.size.unwrap_or(0)
            )));
        }
        done += size;
        progress(Progress {
            phase: Phase::Preparing,
            device: Some(d.device.clone()),
            bytes_done: done,
            bytes_total: total.max(done),
        });
        digests.push((file.href.clone(), dg));
        images.push(Some(p));
    }
    let mf_path = desc.with_extension("mf");
    match File::open(&mf_path) {
        Ok(mut f) => {
            let text = read_capped(&mut f, 1 << 20, "the manifest")?;
            let mf = parse_mf(&String::from_utf8_lossy(&text))?;
            verify_mf(&mf, &digests, &mut plan.warnings)?;
        }
        Err(_) => plan
            .warnings
            .push("the package has no manifest (.mf); file integrity was not verified".into()),
    }
    create_targets(&plan, sink)?;
    fill_and_finish(plan, images, sink, progress, version)
}

/// Import an OVA from a stream into `sink`. Referenced files are staged in the sink's scratch
/// directory; everything else in the tar is skipped with a warning.
pub fn read_ova<R: Read>(
    input: R,
    sink: &mut dyn ImportSink,
    limits: &Limits,
    progress: &dyn Fn(Progress),
) -> Result<ImportedVm, ArchiveError> {
    let mut ar = tar::Archive::new(GuardedTar::new(input));
    let mut entries = ar.entries().map_err(ArchiveError::read)?;
    let (desc_name, xml) = ova_descriptor(&mut entries, limits)?;
    let (_, desc_digest) = hash_copy(&mut xml.as_bytes(), None, u64::MAX)?;
    let mut plan = parse_ovf(&xml)?;
    let version = format!("ovf-{}", plan.ovf_version);
    create_targets(&plan, sink)?;
    let scratch = sink.scratch_dir().map_err(|e| ArchiveError::WriteDisk {
        device: "scratch".into(),
        source: e,
    })?;
    let mut digests = vec![(desc_name, desc_digest)];
    let mut staged: Vec<Option<PathBuf>> = vec![None; plan.files.len()];
    let mut mf = None;
    let total: u64 = plan.files.iter().filter_map(|f| f.size).sum();
    let mut done = 0u64;
    for e in entries {
        let mut e = e.map_err(ArchiveError::read)?;
        let (name, kind) = check_member(&e)?;
        if kind != MemberKind::File {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".mf") && mf.is_none() {
            let text = read_capped(&mut e, 1 << 20, "the manifest")?;
            mf = Some(parse_mf(&String::from_utf8_lossy(&text))?);
            continue;
        }
        let Some(idx) = plan.files.iter().position(|f| f.href == name) else {
            plan.warnings.push(format!(
                "ignored member {name:?}, which the descriptor does not reference"
            ));
            continue;
        };
        if staged[idx].is_some() {
            return Err(ArchiveError::member(&name, "appears twice"));
        }
        let size = e.header().size().map_err(ArchiveError::ReadArchive)?;
        let declared = plan.files[idx].size;
        if declared.is_some_and(|d| d != size) {
            return Err(ArchiveError::member(
                &name,
                format!(
                    "is {size} bytes, not the {} the descriptor declares",
                    declared.unwrap_or(0)
                ),
            ));
        }
        let cap = image_file_cap(&plan, &name, limits);
        if size > cap {
            return Err(ArchiveError::member(
                &name,
                format!("is {size} bytes, more than the {cap} its disk's capacity allows"),
            ));
        }
        let path = scratch.join(format!("ova-file{idx}"));
        let mut out = File::create(&path).map_err(ArchiveError::WriteArchive)?;
        let (n, dg) = hash_copy(&mut e, Some(&mut out), cap)?;
        if n != size {
            return Err(ArchiveError::Truncated(format!(
                "member {name:?} ends early"
            )));
        }
        done += n;
        progress(Progress {
            phase: Phase::Importing,
            device: None,
            bytes_done: done,
            bytes_total: total.max(done),
        });
        digests.push((name, dg));
        staged[idx] = Some(path);
    }
    match &mf {
        Some(mf) => verify_mf(mf, &digests, &mut plan.warnings)?,
        None => plan
            .warnings
            .push("the package has no manifest (.mf); file integrity was not verified".into()),
    }
    let mut images = Vec::new();
    for d in &plan.disks {
        match &d.file {
            None => images.push(None),
            Some(f) => {
                let idx = plan
                    .files
                    .iter()
                    .position(|x| x.id == f.id)
                    .unwrap_or(usize::MAX);
                match staged.get(idx).cloned().flatten() {
                    Some(p) => images.push(Some(p)),
                    None => {
                        return Err(ArchiveError::Truncated(format!(
                            "disk file {:?} is missing from the OVA",
                            f.href
                        )))
                    }
                }
            }
        }
    }
    let staged_paths: Vec<PathBuf> = staged.iter().flatten().cloned().collect();
    let r = fill_and_finish(plan, images, sink, progress, version);
    for p in staged_paths {
        let _ = std::fs::remove_file(p);
    }
    r
}
