//! Templates from Debian's `osinfo-db` (`/usr/share/osinfo/os/**/*.xml`) for operating systems
//! that have no built-in template, and the treeinfo facts detection uses to name what it found.
//!
//! The XML is untrusted input in the sense that it is a file on disk we did not write: it is
//! parsed with `roxmltree` with DTDs refused (so no entity expansion of any kind), each file is
//! capped in size, and a file that does not parse is skipped with a warning. Resources missing
//! from an OS are taken from the OS it `derives-from`, as osinfo's own tools do.

use super::raw::{RawDisk, RawMemory, RawNics, RawOs, RawRestrictions, RawTemplate, SizeValue};
use super::{finish, Template, TemplateSource};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where Debian's `osinfo-db` package puts its OS descriptions.
pub const DEFAULT_OS_DIR: &str = "/usr/share/osinfo/os";

/// Larger files are skipped; the biggest in osinfo-db is well under this.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// CPU, memory and storage figures of one `<minimum>`/`<recommended>`/`<maximum>` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub n_cpus: Option<u32>,
    pub ram_bytes: Option<u64>,
    pub storage_bytes: Option<u64>,
}

impl Resources {
    fn or(&self, other: &Resources) -> Resources {
        Resources {
            n_cpus: self.n_cpus.or(other.n_cpus),
            ram_bytes: self.ram_bytes.or(other.ram_bytes),
            storage_bytes: self.storage_bytes.or(other.storage_bytes),
        }
    }
}

/// One `<tree>` element: how to recognise the OS's install tree and where its kernel is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsinfoTree {
    pub arch: String,
    pub treeinfo_family: Option<String>,
    pub treeinfo_variant: Option<String>,
    /// A version or a regular expression such as `^9.0(.([0-9]|[1-9][0-9]))?$`.
    pub treeinfo_version: Option<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
}

/// The parts of one `<os>` element corral uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsinfoOs {
    pub id: String,
    pub short_id: String,
    pub name: String,
    pub version: String,
    /// osinfo's family: `linux`, `winnt`, `freebsd`, ...
    pub family: String,
    pub distro: String,
    pub codename: Option<String>,
    pub derives_from: Option<String>,
    pub minimum: Resources,
    pub recommended: Resources,
    pub maximum: Resources,
    pub trees: Vec<OsinfoTree>,
    pub has_media: bool,
    pub has_images: bool,
    pub path: PathBuf,
}

fn child_text<'a>(node: roxmltree::Node<'a, 'a>, tag: &str) -> Option<&'a str> {
    node.children()
        .find(|c| {
            c.has_tag_name(tag)
                && c.attribute(("http://www.w3.org/XML/1998/namespace", "lang"))
                    .is_none()
        })
        .and_then(|c| c.text())
        .map(str::trim)
}

fn resources_of(node: roxmltree::Node<'_, '_>) -> Resources {
    let num = |tag: &str| child_text(node, tag).and_then(|t| t.parse::<u64>().ok());
    Resources {
        n_cpus: num("n-cpus").and_then(|n| u32::try_from(n).ok()),
        ram_bytes: num("ram"),
        storage_bytes: num("storage"),
    }
}

/// Parse one osinfo XML document. DTDs are refused.
pub fn parse_document(text: &str, path: &Path) -> Result<Vec<OsinfoOs>, String> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for os in doc.descendants().filter(|n| n.has_tag_name("os")) {
        let Some(id) = os.attribute("id") else {
            continue;
        };
        let Some(short_id) = child_text(os, "short-id") else {
            continue;
        };
        let mut entry = OsinfoOs {
            id: id.to_string(),
            short_id: short_id.to_string(),
            name: child_text(os, "name").unwrap_or(short_id).to_string(),
            version: child_text(os, "version").unwrap_or_default().to_string(),
            family: child_text(os, "family").unwrap_or_default().to_string(),
            distro: child_text(os, "distro").unwrap_or_default().to_string(),
            codename: child_text(os, "codename").map(str::to_string),
            derives_from: os
                .children()
                .find(|c| c.has_tag_name("derives-from"))
                .and_then(|c| c.attribute("id"))
                .map(str::to_string),
            path: path.to_path_buf(),
            ..Default::default()
        };
        for c in os.children().filter(|c| c.is_element()) {
            match c.tag_name().name() {
                "resources" => {
                    let arch = c.attribute("arch").unwrap_or("all");
                    if arch != "all" && arch != "x86_64" {
                        continue;
                    }
                    for block in c.children().filter(|b| b.is_element()) {
                        let r = resources_of(block);
                        let slot = match block.tag_name().name() {
                            "minimum" => &mut entry.minimum,
                            "recommended" => &mut entry.recommended,
                            "maximum" => &mut entry.maximum,
                            _ => continue,
                        };
                        // x86_64-specific figures win over `all`.
                        *slot = if arch == "x86_64" {
                            r.or(slot)
                        } else {
                            slot.or(&r)
                        };
                    }
                }
                "tree" => {
                    let ti = c.children().find(|t| t.has_tag_name("treeinfo"));
                    entry.trees.push(OsinfoTree {
                        arch: c.attribute("arch").unwrap_or("all").to_string(),
                        treeinfo_family: ti
                            .and_then(|t| child_text(t, "family"))
                            .map(str::to_string),
                        treeinfo_variant: ti
                            .and_then(|t| child_text(t, "variant"))
                            .map(str::to_string),
                        treeinfo_version: ti
                            .and_then(|t| child_text(t, "version"))
                            .map(str::to_string),
                        kernel: child_text(c, "kernel").map(str::to_string),
                        initrd: child_text(c, "initrd").map(str::to_string),
                    });
                }
                "media" => entry.has_media = true,
                "image" => entry.has_images = true,
                _ => {}
            }
        }
        out.push(entry);
    }
    Ok(out)
}

fn collect_xml(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 4 {
        return;
    }
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    for e in read.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => collect_xml(&p, out, depth + 1),
            Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "xml") => out.push(p),
            _ => {}
        }
    }
}

/// Read every OS under `dir`. Unreadable or malformed files become warnings.
pub fn read_dir(dir: &Path) -> (Vec<OsinfoOs>, Vec<String>) {
    let mut files = Vec::new();
    collect_xml(dir, &mut files, 0);
    files.sort();
    let mut all = Vec::new();
    let mut warnings = Vec::new();
    for f in files {
        match std::fs::metadata(&f) {
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                warnings.push(format!(
                    "skipped osinfo file {}: larger than 4 MiB",
                    f.display()
                ));
                continue;
            }
            Err(e) => {
                warnings.push(format!("skipped osinfo file {}: {e}", f.display()));
                continue;
            }
            _ => {}
        }
        match std::fs::read_to_string(&f)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_document(&t, &f))
        {
            Ok(list) => all.extend(list),
            Err(e) => warnings.push(format!("skipped osinfo file {}: {e}", f.display())),
        }
    }
    (all, warnings)
}

/// Fill missing resources from the `derives-from` chain (at most 16 steps, so a loop in the
/// data cannot hang us).
fn inherit_resources(all: &mut [OsinfoOs]) {
    let by_id: HashMap<String, (Resources, Resources, Resources, Option<String>)> = all
        .iter()
        .map(|o| {
            (
                o.id.clone(),
                (
                    o.minimum.clone(),
                    o.recommended.clone(),
                    o.maximum.clone(),
                    o.derives_from.clone(),
                ),
            )
        })
        .collect();
    for os in all.iter_mut() {
        let mut next = os.derives_from.clone();
        for _ in 0..16 {
            let Some(parent) = next.and_then(|id| by_id.get(&id)) else {
                break;
            };
            os.minimum = os.minimum.or(&parent.0);
            os.recommended = os.recommended.or(&parent.1);
            os.maximum = os.maximum.or(&parent.2);
            next = parent.3.clone();
        }
    }
}

const MIB: u64 = 1 << 20;

fn round_up_mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB).saturating_mul(MIB)
}

fn family_of(os: &OsinfoOs) -> &'static str {
    match os.distro.as_str() {
        "debian" => "debian",
        "ubuntu" => "ubuntu",
        "rhel" | "centos" | "centos-stream" | "fedora" | "almalinux" | "rocky" | "ol"
        | "circle" | "eurolinux" | "scientificlinux" | "navy" | "openeuler" => "rhel",
        "sles" | "sled" | "opensuse" | "slem" => "suse",
        "win" => "windows",
        _ if os.family == "linux" => "linux",
        _ => "other",
    }
}

/// A short id is used in a template name; keep it to characters safe in file names and URLs.
fn short_id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 56
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// The template for one osinfo OS, validated like any other.
pub fn template_of(os: &OsinfoOs) -> Result<Template, String> {
    if !short_id_ok(&os.short_id) {
        return Err(format!(
            "short id {:?} has unexpected characters",
            os.short_id
        ));
    }
    let family = family_of(os);
    let min_ram = round_up_mib(os.minimum.ram_bytes.unwrap_or(256 * MIB)).max(16 * MIB);
    let rec_ram =
        round_up_mib(os.recommended.ram_bytes.unwrap_or(min_ram.max(1 << 30))).max(min_ram);
    let max_ram = os
        .maximum
        .ram_bytes
        .map(round_up_mib)
        .filter(|m| *m >= rec_ram);
    let storage = round_up_mib(
        os.recommended
            .storage_bytes
            .or(os.minimum.storage_bytes)
            .unwrap_or(20 << 30),
    )
    .max(MIB);
    let vcpus = os
        .recommended
        .n_cpus
        .or(os.minimum.n_cpus)
        .unwrap_or(1)
        .clamp(1, corral_model::MAX_VCPUS);
    let emulated = matches!(family, "windows" | "other");
    let mut methods = vec!["cdrom".to_string()];
    if !os.trees.is_empty() {
        methods.extend(["http", "ftp", "nfs", "pxe"].map(String::from));
    }
    if os.has_images {
        methods.push("disk-import".into());
    }
    let unattended = match family {
        "debian" => "preseed",
        "rhel" => "kickstart",
        "suse" => "autoyast",
        "ubuntu" => "cloud-init",
        _ if os.has_images => "cloud-init",
        _ => "none",
    };
    let raw = RawTemplate {
        name: Some(format!("osinfo:{}", os.short_id)),
        description: Some(format!("{} (from osinfo-db)", os.name)),
        derived_from: None,
        vcpus: Some(vcpus),
        device_model: Some(if emulated { "emulated" } else { "pv" }.into()),
        firmware: Some(
            if os.short_id.starts_with("win11") {
                "uefi-secure"
            } else {
                "bios"
            }
            .into(),
        ),
        // Windows 11 refuses to install without a TPM 2.0.
        tpm: Some(os.short_id.starts_with("win11")),
        install_methods: Some(methods),
        installer_args: Some(if matches!(family, "windows" | "other") {
            String::new()
        } else {
            "console=tty0 console=ttyS0,115200n8".into()
        }),
        unattended: Some(unattended.into()),
        os: Some(RawOs {
            family: Some(family.into()),
            variant: Some(if os.distro.is_empty() {
                os.family.clone()
            } else {
                os.distro.clone()
            }),
            version: Some(os.version.clone()),
            codename: os.codename.clone(),
            osinfo_id: Some(os.short_id.clone()),
        }),
        memory: Some(RawMemory {
            minimum: Some(SizeValue::Bytes(min_ram)),
            recommended: Some(SizeValue::Bytes(rec_ram)),
        }),
        disks: Some(vec![RawDisk {
            size: SizeValue::Bytes(storage),
            bus: None,
        }]),
        nics: Some(RawNics {
            count: Some(1),
            model: None,
        }),
        restrictions: Some(RawRestrictions {
            max_vcpus: None,
            max_nics: None,
            max_disks: None,
            min_memory: Some(SizeValue::Bytes(min_ram)),
            max_memory: max_ram.map(SizeValue::Bytes),
        }),
    };
    let name = raw.name.clone().unwrap_or_default();
    finish(
        &name,
        &raw,
        TemplateSource::Osinfo {
            path: os.path.clone(),
        },
    )
    .map_err(|e| e.to_string())
}

/// Every OS under `dir` as a template, with its `<tree>` facts. Duplicated short ids keep the
/// first file's entry.
pub fn load_dir(dir: &Path) -> (Vec<(Template, Vec<OsinfoTree>)>, Vec<String>) {
    let (mut all, mut warnings) = read_dir(dir);
    inherit_resources(&mut all);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for os in &all {
        if !seen.insert(os.short_id.clone()) {
            continue;
        }
        match template_of(os) {
            Ok(t) => out.push((t, os.trees.clone())),
            Err(e) => warnings.push(format!("skipped osinfo OS {}: {e}", os.short_id)),
        }
    }
    (out, warnings)
}

/// Does a treeinfo `version` match osinfo's pattern? osinfo writes either a plain version or
/// an anchored regular expression like `^9.0(.([0-9]|[1-9][0-9]))?$` (matched with
/// `regex-lite`, whose matching time is linear, so a hostile pattern cannot stall us).
pub fn version_matches(pattern: &str, version: &str) -> bool {
    if !pattern.starts_with('^') {
        return pattern == version;
    }
    regex_lite::Regex::new(pattern).is_ok_and(|re| re.is_match(version))
}

/// The name of the osinfo template whose x86_64 `<tree>` has this treeinfo family and version.
pub fn match_treeinfo<'a>(
    trees: impl Iterator<Item = (&'a String, &'a Vec<OsinfoTree>)>,
    family: &str,
    version: &str,
) -> Option<&'a String> {
    let mut best: Option<(&String, usize)> = None;
    for (name, list) in trees {
        for t in list
            .iter()
            .filter(|t| t.arch == "x86_64" || t.arch == "all")
        {
            let fam_ok = t
                .treeinfo_family
                .as_deref()
                .is_some_and(|f| f.eq_ignore_ascii_case(family));
            let ver_ok = t
                .treeinfo_version
                .as_deref()
                .is_some_and(|v| version_matches(v, version));
            if fam_ok && ver_ok {
                // Prefer the most specific pattern (longest), e.g. `9.2` over `^9`.
                let len = t.treeinfo_version.as_deref().map_or(0, str::len);
                if best.is_none_or(|(_, l)| len > l) {
                    best = Some((name, len));
                }
            }
        }
    }
    best.map(|(n, _)| n)
}

/// A template's fields as a raw file, so a user template can derive from an osinfo one.
pub fn to_raw(t: &Template) -> RawTemplate {
    RawTemplate {
        name: Some(t.name.clone()),
        description: Some(t.description.clone()),
        derived_from: None,
        vcpus: Some(t.vcpus),
        device_model: Some(t.device_model.as_str().into()),
        firmware: Some(t.firmware.as_str().into()),
        tpm: Some(t.tpm),
        install_methods: Some(
            t.install_methods
                .iter()
                .map(|m| m.as_str().to_string())
                .collect(),
        ),
        installer_args: Some(t.installer_args.clone()),
        unattended: Some(t.unattended.as_str().into()),
        os: Some(RawOs {
            family: Some(t.os.family.as_str().into()),
            variant: Some(t.os.variant.clone()),
            version: Some(t.os.version.clone()),
            codename: t.os.codename.clone(),
            osinfo_id: t.os.osinfo_id.clone(),
        }),
        memory: Some(RawMemory {
            minimum: Some(SizeValue::Bytes(t.memory_minimum_bytes)),
            recommended: Some(SizeValue::Bytes(t.memory_recommended_bytes)),
        }),
        disks: Some(
            t.disks
                .iter()
                .map(|d| RawDisk {
                    size: SizeValue::Bytes(d.size_bytes),
                    bus: Some(
                        match d.bus {
                            corral_model::DiskBus::Virtio => "virtio",
                            corral_model::DiskBus::Sata => "sata",
                            corral_model::DiskBus::Ide => "ide",
                        }
                        .into(),
                    ),
                })
                .collect(),
        ),
        nics: Some(RawNics {
            count: Some(t.nic_count),
            model: Some(
                match t.nic_model {
                    corral_model::NicModel::Virtio => "virtio",
                    corral_model::NicModel::E1000 => "e1000",
                    corral_model::NicModel::Rtl8139 => "rtl8139",
                }
                .into(),
            ),
        }),
        restrictions: Some(RawRestrictions {
            max_vcpus: Some(t.restrictions.max_vcpus),
            max_nics: Some(t.restrictions.max_nics),
            max_disks: Some(t.restrictions.max_disks),
            min_memory: Some(SizeValue::Bytes(t.restrictions.min_memory_bytes)),
            max_memory: t.restrictions.max_memory_bytes.map(SizeValue::Bytes),
        }),
    }
}
