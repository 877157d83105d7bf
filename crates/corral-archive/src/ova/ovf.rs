//! OVF descriptor parsing (DSP0243 1.x and 2.0) into an import plan.
//!
//! The parser is deliberately tolerant of what real exporters write and strict about what is
//! dangerous. Elements are matched by local name whatever their namespace prefix, and sections
//! also by `xsi:type` (oVirt writes `<Section xsi:type="ovf:DiskSection_Type">` and
//! `<Content xsi:type="ovf:VirtualSystem_Type">`). Sizes accept every unit spelling seen in the
//! wild: VirtualBox's bare byte counts, VMware's `byte * 2^30`, `MegaBytes`, `GB`, oVirt's GiB
//! `ovf:size`. DTDs are refused (roxmltree rejects them by default, so no entity expansion
//! can happen) and the descriptor size is capped by the caller. Anything that cannot be
//! mapped (SCSI controllers, USB, sound, unknown NIC models) becomes a warning, never a
//! silent drop.

use crate::error::ArchiveError;
use corral_model::*;
use roxmltree::{Document, Node};

/// Disk image formats an OVF may reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Vmdk,
    Qcow2,
    Raw,
}

impl ImageFormat {
    /// The `qemu-img -f` name.
    pub fn qemu_name(self) -> &'static str {
        match self {
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }
}

/// A disk the OVF describes.
#[derive(Debug, Clone, PartialEq)]
pub struct OvfDisk {
    /// Our device name, `disk0`...
    pub device: String,
    /// Virtual size in bytes.
    pub capacity_bytes: u64,
    /// File in the package holding the image; `None` for a blank disk to create.
    pub file: Option<OvfFile>,
    pub format: ImageFormat,
    pub bus: DiskBus,
}

/// A file from the `References` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfFile {
    pub id: String,
    /// Relative name in the package (checked: no absolute path, no `..`).
    pub href: String,
    pub size: Option<u64>,
}

/// What an OVF import would create; `--dry-run` prints this.
#[derive(Debug, Clone, PartialEq)]
pub struct OvfPlan {
    /// DSP0243 major version (1 or 2) from the envelope namespace.
    pub ovf_version: u32,
    pub spec: VmSpec,
    pub disks: Vec<OvfDisk>,
    /// Every file in `References`, in order (an OVA stores them in this order).
    pub files: Vec<OvfFile>,
    pub warnings: Vec<String>,
}

fn local<'a>(n: &Node<'a, '_>) -> &'a str {
    n.tag_name().name()
}

fn attr<'a>(n: &Node<'a, '_>, name: &str) -> Option<&'a str> {
    n.attributes().find(|a| a.name() == name).map(|a| a.value())
}

/// Section lookup by element name or by `xsi:type` (`ovf:DiskSection_Type`).
fn is_section(n: &Node, name: &str) -> bool {
    if !n.is_element() {
        return false;
    }
    if local(n) == name {
        return true;
    }
    attr(n, "type").is_some_and(|t| {
        let t = t.rsplit(':').next().unwrap_or(t);
        t == format!("{name}_Type")
    })
}

fn child_text<'a>(n: &Node<'a, '_>, name: &str) -> Option<&'a str> {
    n.children()
        .find(|c| c.is_element() && local(c) == name)
        .and_then(|c| c.text())
        .map(str::trim)
}

/// Parse an allocation-unit string into a byte multiplier: `byte`, `bytes`, `byte * 2^30`,
/// `byte*1024`, `KiloBytes`, `MegaBytes`, `MB`, `GigaBytes`, `GB`, `GiB`...
pub fn parse_units(units: &str) -> Option<u64> {
    let u: String = units
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let named = match u.as_str() {
        "" | "b" | "byte" | "bytes" => Some(1),
        "kb" | "kib" | "kilobyte" | "kilobytes" => Some(1 << 10),
        "mb" | "mib" | "megabyte" | "megabytes" => Some(1 << 20),
        "gb" | "gib" | "gigabyte" | "gigabytes" => Some(1 << 30),
        "tb" | "tib" | "terabyte" | "terabytes" => Some(1 << 40),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    // byte * base ^ exp [* factor], e.g. `byte * 2^30`, `byte*2^20*4`, `byte * 1024`.
    let rest = u.strip_prefix("bytes").or_else(|| u.strip_prefix("byte"))?;
    let mut mult: u64 = 1;
    for factor in rest.split('*').skip(1) {
        let f = match factor.split_once('^') {
            Some((b, e)) => {
                let b: u64 = b.parse().ok()?;
                let e: u32 = e.parse().ok()?;
                b.checked_pow(e)?
            }
            None => factor.parse().ok()?,
        };
        mult = mult.checked_mul(f)?;
    }
    if rest.is_empty() || rest.starts_with('*') {
        Some(mult)
    } else {
        None
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

pub(crate) fn sanitize_name(raw: &str, warnings: &mut Vec<String>) -> String {
    let mut name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while name.starts_with(['.', '_', '-']) {
        name.remove(0);
    }
    name.truncate(63);
    while name.ends_with(['.', '_', '-']) {
        name.pop();
    }
    if name.is_empty() {
        name = "imported-vm".into();
    }
    if name != raw {
        warnings.push(format!(
            "VM name {raw:?} is not a valid corral name; using {name:?}"
        ));
    }
    name
}

/// Parse an OVF descriptor into a plan. Never touches the file system.
pub fn parse_ovf(xml: &str) -> Result<OvfPlan, ArchiveError> {
    let doc = Document::parse(xml).map_err(|e| ArchiveError::InvalidOvf(e.to_string()))?;
    let env = doc.root_element();
    if local(&env) != "Envelope" {
        return Err(ArchiveError::InvalidOvf(format!(
            "root element is <{}>, not <Envelope>",
            local(&env)
        )));
    }
    let ns = env.tag_name().namespace().unwrap_or("");
    let ovf_version = if ns.contains("/ovf/envelope/2") { 2 } else { 1 };
    let mut warnings = Vec::new();

    // References.
    let mut files = Vec::new();
    if let Some(refs) = env.children().find(|c| is_section(c, "References")) {
        for f in refs
            .children()
            .filter(|c| c.is_element() && local(c) == "File")
        {
            let id = attr(&f, "id").unwrap_or("").to_string();
            let href = attr(&f, "href")
                .ok_or_else(|| ArchiveError::InvalidOvf(format!("file {id:?} has no href")))?;
            if href.contains("://") {
                return Err(ArchiveError::Unsupported(format!(
                    "file {id:?} is a remote URL ({href}); only files in the package are imported"
                )));
            }
            let href = crate::tarsafe::normalise_name(href).map_err(|r| {
                ArchiveError::InvalidOvf(format!("file {id:?} has an unsafe href {href:?}: {r}"))
            })?;
            if attr(&f, "chunkSize").is_some() || attr(&f, "compression").is_some() {
                return Err(ArchiveError::Unsupported(format!(
                    "file {id:?} is chunked or compressed inside the package"
                )));
            }
            files.push(OvfFile {
                id,
                href,
                size: attr(&f, "size").and_then(parse_u64),
            });
        }
    }

    // Disk section: diskId -> (capacity, fileRef, format).
    struct DiskDecl<'a> {
        id: &'a str,
        capacity: u64,
        file: Option<OvfFile>,
        format: ImageFormat,
        interface: Option<DiskBus>,
    }
    let mut decls: Vec<DiskDecl> = Vec::new();
    for sec in env.descendants().filter(|c| is_section(c, "DiskSection")) {
        for d in sec
            .children()
            .filter(|c| c.is_element() && local(c) == "Disk")
        {
            let id = attr(&d, "diskId").unwrap_or("");
            let units = attr(&d, "capacityAllocationUnits").unwrap_or("byte");
            let mult = parse_units(units).ok_or_else(|| {
                ArchiveError::InvalidOvf(format!("disk {id:?}: unknown capacity units {units:?}"))
            })?;
            let capacity = match (attr(&d, "capacity"), attr(&d, "size")) {
                (Some(c), _) => {
                    parse_u64(c)
                        .and_then(|c| c.checked_mul(mult))
                        .ok_or_else(|| {
                            ArchiveError::InvalidOvf(format!(
                                "disk {id:?}: capacity {c:?} is not a size"
                            ))
                        })?
                }
                // oVirt: ovf:size in GiB.
                (None, Some(s)) => parse_u64(s)
                    .and_then(|s| s.checked_mul(1 << 30))
                    .ok_or_else(|| {
                        ArchiveError::InvalidOvf(format!("disk {id:?}: size {s:?} is not a size"))
                    })?,
                (None, None) => {
                    return Err(ArchiveError::InvalidOvf(format!(
                        "disk {id:?} has no capacity"
                    )))
                }
            };
            let file = match attr(&d, "fileRef") {
                Some(r) => Some(files.iter().find(|f| f.id == r).cloned().ok_or_else(|| {
                    ArchiveError::InvalidOvf(format!("disk {id:?} refers to unknown file {r:?}"))
                })?),
                None => None,
            };
            // oVirt's ovf:format always says vmdk; ovf:volume-format tells the truth.
            let fmt = match attr(&d, "volume-format") {
                Some(v) if v.eq_ignore_ascii_case("cow") => "qcow2".to_string(),
                Some(v) if v.eq_ignore_ascii_case("raw") => "raw".to_string(),
                _ => attr(&d, "format").unwrap_or("").to_ascii_lowercase(),
            };
            let interface = match attr(&d, "disk-interface").map(str::to_ascii_lowercase) {
                Some(i) if i == "ide" => Some(DiskBus::Ide),
                Some(i) if i.contains("sata") => Some(DiskBus::Sata),
                _ => None,
            };
            let href = file
                .as_ref()
                .map(|f| f.href.to_ascii_lowercase())
                .unwrap_or_default();
            let format = if fmt.contains("vmdk") || href.ends_with(".vmdk") {
                ImageFormat::Vmdk
            } else if fmt.contains("qcow") || href.ends_with(".qcow2") {
                ImageFormat::Qcow2
            } else if fmt.contains("raw")
                || href.ends_with(".img")
                || href.ends_with(".raw")
                || file.is_none()
            {
                ImageFormat::Raw
            } else {
                return Err(ArchiveError::Unsupported(format!(
                    "disk {id:?} has format {fmt:?}; vmdk, qcow2 and raw are supported"
                )));
            };
            decls.push(DiskDecl {
                id,
                capacity,
                file,
                format,
                interface,
            });
        }
    }

    // Networks declared (name -> present) for warnings only.
    let vs = env
        .descendants()
        .find(|c| is_section(c, "VirtualSystem"))
        .ok_or_else(|| {
            if env.descendants().any(|c| is_section(&c, "VirtualSystemCollection")) {
                ArchiveError::Unsupported(
                    "the package holds several VMs (VirtualSystemCollection); import them one by one"
                        .into(),
                )
            } else {
                ArchiveError::InvalidOvf("no VirtualSystem".into())
            }
        })?;
    if env
        .descendants()
        .filter(|c| is_section(c, "VirtualSystem"))
        .count()
        > 1
    {
        return Err(ArchiveError::Unsupported(
            "the package holds several VMs; import them one by one".into(),
        ));
    }
    let raw_name = child_text(&vs, "Name")
        .filter(|n| !n.is_empty())
        .or_else(|| attr(&vs, "id"))
        .unwrap_or("imported-vm");
    let name = sanitize_name(raw_name, &mut warnings);
    let description = vs
        .descendants()
        .find(|c| is_section(c, "AnnotationSection"))
        .and_then(|a| child_text(&a, "Annotation"))
        .or_else(|| child_text(&vs, "Description"))
        .unwrap_or("")
        .trim()
        .to_string();

    let hw = vs
        .descendants()
        .find(|c| is_section(c, "VirtualHardwareSection"))
        .ok_or_else(|| ArchiveError::InvalidOvf("no VirtualHardwareSection".into()))?;

    let mut vcpus: Option<u32> = None;
    let mut cpu_weight = CPU_WEIGHT_NORMAL;
    let mut memory: Option<u64> = None;
    let mut firmware = Firmware::Bios;
    // controller InstanceID -> bus
    let mut controllers: Vec<(String, DiskBus)> = Vec::new();
    struct DiskItem<'a> {
        parent: Option<&'a str>,
        host_resource: Option<&'a str>,
        /// (Parent, AddressOnParent); only the address is used for ordering.
        order: (u32, u32),
    }
    let mut disk_items: Vec<DiskItem> = Vec::new();
    let mut cdroms = Vec::new();
    let mut nics = Vec::new();

    let items: Vec<Node> = hw
        .children()
        .filter(|c| {
            c.is_element() && matches!(local(c), "Item" | "StorageItem" | "EthernetPortItem")
        })
        .collect();
    // Controllers first: disk items refer to them by Parent.
    for it in &items {
        let rt: u32 = child_text(it, "ResourceType")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let id = child_text(it, "InstanceID").unwrap_or("").to_string();
        let sub = child_text(it, "ResourceSubType")
            .unwrap_or("")
            .to_ascii_lowercase();
        let bus = match rt {
            5 => Some(DiskBus::Ide),
            20 if sub.contains("ahci") || sub.contains("sata") => Some(DiskBus::Sata),
            20 | 6 => {
                if sub.contains("virtio") {
                    Some(DiskBus::Virtio)
                } else {
                    warnings.push(format!(
                        "{} controller {id} ({}) is attached as virtio",
                        if rt == 6 { "SCSI" } else { "storage" },
                        if sub.is_empty() { "no subtype" } else { &sub }
                    ));
                    Some(DiskBus::Virtio)
                }
            }
            _ => None,
        };
        if let Some(b) = bus {
            controllers.push((id, b));
        }
    }
    let bus_of = |parent: Option<&str>| {
        parent
            .and_then(|p| controllers.iter().find(|(id, _)| id == p))
            .map_or(DiskBus::Virtio, |(_, b)| *b)
    };
    for it in &items {
        let rt: u32 = child_text(it, "ResourceType")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let element = child_text(it, "ElementName")
            .or_else(|| child_text(it, "Caption"))
            .unwrap_or("")
            .to_string();
        match rt {
            3 => {
                // oVirt writes sockets x cores x threads instead of VirtualQuantity.
                let q = child_text(it, "VirtualQuantity")
                    .and_then(parse_u64)
                    .unwrap_or_else(|| {
                        ["num_of_sockets", "cpu_per_socket", "threads_per_cpu"]
                            .iter()
                            .map(|k| child_text(it, k).and_then(parse_u64).unwrap_or(1))
                            .fold(1u64, |a, b| a.saturating_mul(b))
                    });
                let n = u32::try_from(q).unwrap_or(u32::MAX).clamp(1, MAX_VCPUS);
                if n as u64 != q {
                    warnings.push(format!("{q} vCPUs is outside 1..{MAX_VCPUS}; using {n}"));
                }
                vcpus = Some(n);
                // CIM's relative weight; corral writes its Xen-style weight here.
                if let Some(w) = child_text(it, "Weight").and_then(|w| w.parse::<u32>().ok()) {
                    if (1..=65535).contains(&w) {
                        cpu_weight = w;
                    }
                }
            }
            4 => {
                let q = child_text(it, "VirtualQuantity")
                    .and_then(parse_u64)
                    .ok_or_else(|| {
                        ArchiveError::InvalidOvf("memory item has no VirtualQuantity".into())
                    })?;
                let units = child_text(it, "AllocationUnits").unwrap_or("byte * 2^20");
                let mult = parse_units(units).ok_or_else(|| {
                    ArchiveError::InvalidOvf(format!("memory has unknown units {units:?}"))
                })?;
                let bytes = q
                    .checked_mul(mult)
                    .ok_or_else(|| ArchiveError::InvalidOvf("memory size overflows".into()))?;
                memory = Some(bytes);
            }
            5 | 6 | 20 => {}
            17 => disk_items.push(DiskItem {
                parent: child_text(it, "Parent"),
                host_resource: child_text(it, "HostResource"),
                order: (
                    child_text(it, "Parent")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0),
                    child_text(it, "AddressOnParent")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0),
                ),
            }),
            15 | 16 => cdroms.push(Cdrom {
                device: format!("cdrom{}", cdroms.len()),
                bus: match bus_of(child_text(it, "Parent")) {
                    DiskBus::Virtio => DiskBus::Sata,
                    b => b,
                },
                media: None,
            }),
            10 => {
                let sub = child_text(it, "ResourceSubType")
                    .unwrap_or("")
                    .to_ascii_lowercase();
                // oVirt numbers: 0/1 rtl8139, 2 e1000, 3 virtio ("pv").
                let model = if sub.contains("virtio") || sub == "3" || sub == "pv" {
                    NicModel::Virtio
                } else if sub.contains("e1000") || sub.is_empty() || sub == "2" {
                    NicModel::E1000
                } else if sub.contains("rtl8139")
                    || sub.contains("8139")
                    || sub == "0"
                    || sub == "1"
                {
                    NicModel::Rtl8139
                } else {
                    warnings.push(format!(
                        "NIC {element:?} of type {sub:?} is attached as e1000"
                    ));
                    NicModel::E1000
                };
                let mac = child_text(it, "Address")
                    .or_else(|| child_text(it, "MACAddress"))
                    .map(|a| a.to_ascii_lowercase().replace('-', ":"))
                    .filter(|a| corral_model::validate::validate_mac(a).is_ok())
                    .unwrap_or_default();
                nics.push(Nic {
                    device: format!("nic{}", nics.len()),
                    network: child_text(it, "Connection").unwrap_or("").to_string(),
                    model,
                    mac,
                });
            }
            0 => {}
            other => {
                let what = match other {
                    1 => "other device",
                    14 => "floppy drive",
                    23 => "USB controller",
                    24 => "graphics controller",
                    35 => "sound card",
                    21 => "serial port",
                    _ => "device",
                };
                warnings.push(format!(
                    "{what} {element:?} (resource type {other}) is not imported"
                ));
            }
        }
    }
    if nics.len() > MAX_NICS {
        warnings.push(format!(
            "{} NICs; only the first {MAX_NICS} are kept",
            nics.len()
        ));
        nics.truncate(MAX_NICS);
    }

    // Firmware: VMware vmw:Config key=firmware, VirtualBox <Firmware type="EFI">, oVirt BiosType,
    // OVF 2 vssd:VirtualSystemType hints.
    for n in env.descendants().filter(|n| n.is_element()) {
        let efi = match local(&n) {
            "Config" => {
                attr(&n, "key") == Some("firmware")
                    && attr(&n, "value").is_some_and(|v| v.eq_ignore_ascii_case("efi"))
            }
            "Firmware" => attr(&n, "type").is_some_and(|v| v.to_ascii_lowercase().contains("efi")),
            "BiosType" => n
                .text()
                .is_some_and(|t| matches!(t.trim(), "2" | "3" | "4")),
            // XenCenter: HVM_boot_params "order=dc;firmware=uefi" in other-config data.
            "Value" => n.text().is_some_and(|t| t.contains("firmware=uefi")),
            _ => false,
        };
        if efi && firmware == Firmware::Bios {
            firmware = Firmware::Uefi;
        }
    }
    // Secure Boot: VMware's `uefi.secureBoot.enabled` (what corral's OVA export writes too),
    // oVirt's BiosType 4 (Q35 with Secure Boot).
    let secure = env
        .descendants()
        .filter(|n| n.is_element())
        .any(|n| match local(&n) {
            "Config" => {
                attr(&n, "key") == Some("uefi.secureBoot.enabled")
                    && attr(&n, "value").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            }
            "BiosType" => n.text().is_some_and(|t| t.trim() == "4"),
            _ => false,
        });
    if secure {
        firmware = Firmware::UefiSecure;
    }

    // Disks in controller/address order, resolved through HostResource to the DiskSection.
    // Controllers in the order their first disk appears; by AddressOnParent within one.
    let first_seen = |p: Option<&str>| disk_items.iter().position(|d| d.parent == p).unwrap_or(0);
    let mut keyed: Vec<(usize, u32, usize)> = disk_items
        .iter()
        .enumerate()
        .map(|(i, d)| (first_seen(d.parent), d.order.1, i))
        .collect();
    keyed.sort();
    let disk_items: Vec<&DiskItem> = keyed.iter().map(|k| &disk_items[k.2]).collect();
    let mut disks = Vec::new();
    let mut used = vec![false; decls.len()];
    for item in disk_items {
        let Some(hr) = item.host_resource else {
            warnings.push("a disk drive without HostResource is not imported".into());
            continue;
        };
        // ovf:/disk/vmdisk1, /disk/vmdisk1, or oVirt's <image>/<volume> ids.
        let key = hr.rsplit('/').next().unwrap_or(hr);
        let Some(i) = decls.iter().position(|d| {
            d.id == key
                || hr.ends_with(d.id)
                || d.file.as_ref().is_some_and(|f| f.href.ends_with(key))
        }) else {
            return Err(ArchiveError::InvalidOvf(format!(
                "disk drive refers to {hr:?}, which DiskSection does not declare"
            )));
        };
        if used[i] {
            continue;
        }
        used[i] = true;
        let d = &decls[i];
        disks.push(OvfDisk {
            device: format!("disk{}", disks.len()),
            capacity_bytes: d.capacity,
            file: d.file.clone(),
            format: d.format,
            bus: if controllers
                .iter()
                .any(|(id, _)| Some(id.as_str()) == item.parent)
            {
                bus_of(item.parent)
            } else {
                d.interface.unwrap_or(DiskBus::Virtio)
            },
        });
    }
    for (i, d) in decls.iter().enumerate() {
        if !used[i] {
            warnings.push(format!(
                "disk {:?} is declared but attached to no drive; it is attached as virtio",
                d.id
            ));
            disks.push(OvfDisk {
                device: format!("disk{}", disks.len()),
                capacity_bytes: d.capacity,
                file: d.file.clone(),
                format: d.format,
                bus: d.interface.unwrap_or(DiskBus::Virtio),
            });
        }
    }
    if disks.len() > MAX_DISKS {
        return Err(ArchiveError::LimitExceeded(format!(
            "{} disks, more than the maximum of {MAX_DISKS}",
            disks.len()
        )));
    }
    let vcpus = vcpus.unwrap_or_else(|| {
        warnings.push("no CPU item; using 1 vCPU".into());
        1
    });
    let mut memory_bytes = memory.unwrap_or_else(|| {
        warnings.push("no memory item; using 512 MiB".into());
        512 << 20
    });
    if !memory_bytes.is_multiple_of(1 << 20) {
        memory_bytes = memory_bytes.div_ceil(1 << 20) << 20;
        warnings.push(format!("memory rounded up to {} MiB", memory_bytes >> 20));
    }
    if memory_bytes < 16 << 20 {
        warnings.push(format!("memory of {memory_bytes} bytes raised to 16 MiB"));
        memory_bytes = 16 << 20;
    }
    let spec = VmSpec {
        name,
        description,
        vcpus,
        memory_bytes,
        autostart: vs
            .descendants()
            .find(|c| c.is_element() && local(c) == "Autostart")
            .and_then(|c| c.text())
            .is_some_and(|t| t.trim() == "true"),
        cpu_weight,
        firmware,
        disks: disks
            .iter()
            .map(|d| Disk {
                device: d.device.clone(),
                size_bytes: d.capacity_bytes,
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
        is_template: false,
        install: None,
        tpm: false,
    };
    Ok(OvfPlan {
        ovf_version,
        spec,
        disks,
        files,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_units;

    #[test]
    fn units() {
        for (u, m) in [
            ("byte", 1u64),
            ("byte * 2^30", 1 << 30),
            ("byte*2^20", 1 << 20),
            ("bytes * 2^10", 1 << 10),
            ("MegaBytes", 1 << 20),
            ("GB", 1 << 30),
            ("byte * 1024", 1024),
            ("", 1),
        ] {
            assert_eq!(parse_units(u), Some(m), "{u}");
        }
        assert_eq!(parse_units("furlongs"), None);
        assert_eq!(parse_units("byte * 2^99"), None);
    }
}
