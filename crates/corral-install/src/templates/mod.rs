//! The template catalogue: what each OS needs by default (vCPUs, memory, disks, NICs, device
//! model, firmware), how it installs (methods, installer arguments, unattended kind) and what
//! it tolerates (restrictions that `vm create` and `vm install` enforce).
//!
//! Templates are data. Three sources feed one [`Catalog`]:
//! 1. built-ins: the TOML files under `crates/corral-install/templates/`, compiled into the
//!    binary with `include_str!`;
//! 2. user templates: `*.toml` files in a directory (the agent passes `STATE_DIR/templates`);
//! 3. osinfo: when Debian's `osinfo-db` is installed, every OS it describes becomes a template
//!    named `osinfo:<short-id>` (see [`osinfo`]), for OSes that have no built-in.
//!
//! A file may say `derived_from = "parent"`: it starts from the parent's fully merged fields and
//! overrides what it names (see [`raw::overlay`]). Chains may be any depth; cycles and unknown
//! parents are errors that name the templates involved. Every template is validated once,
//! when loaded or added; [`Catalog::get`] only hands out resolved, valid templates.

pub mod osinfo;
pub mod raw;

use corral_model::api::{DiskRequest, NicRequest, VmCreateRequest};
use corral_model::validate::{validate_disk_size, validate_memory, validate_name, validate_vcpus};
use corral_model::{
    format_size, DiskBus, ErrorKind, Firmware, NicModel, MAX_DISKS, MAX_NICS, MAX_VCPUS,
};
use raw::{overlay, RawTemplate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The built-in template files, in the order `template list` shows them.
const BUILTIN_FILES: &[(&str, &str)] = &[
    (
        "debian-11.toml",
        include_str!("../../templates/debian-11.toml"),
    ),
    (
        "debian-12.toml",
        include_str!("../../templates/debian-12.toml"),
    ),
    (
        "ubuntu-22.04.toml",
        include_str!("../../templates/ubuntu-22.04.toml"),
    ),
    (
        "ubuntu-24.04.toml",
        include_str!("../../templates/ubuntu-24.04.toml"),
    ),
    ("rhel-8.toml", include_str!("../../templates/rhel-8.toml")),
    ("rhel-9.toml", include_str!("../../templates/rhel-9.toml")),
    (
        "almalinux-8.toml",
        include_str!("../../templates/almalinux-8.toml"),
    ),
    (
        "almalinux-9.toml",
        include_str!("../../templates/almalinux-9.toml"),
    ),
    ("rocky-8.toml", include_str!("../../templates/rocky-8.toml")),
    ("rocky-9.toml", include_str!("../../templates/rocky-9.toml")),
    ("sles-15.toml", include_str!("../../templates/sles-15.toml")),
    (
        "opensuse-15.toml",
        include_str!("../../templates/opensuse-15.toml"),
    ),
    (
        "windows-10.toml",
        include_str!("../../templates/windows-10.toml"),
    ),
    (
        "windows-11.toml",
        include_str!("../../templates/windows-11.toml"),
    ),
    (
        "windows-server-2019.toml",
        include_str!("../../templates/windows-server-2019.toml"),
    ),
    (
        "windows-server-2022.toml",
        include_str!("../../templates/windows-server-2022.toml"),
    ),
    (
        "windows-2019.toml",
        include_str!("../../templates/windows-2019.toml"),
    ),
    (
        "windows-2022.toml",
        include_str!("../../templates/windows-2022.toml"),
    ),
    (
        "other-install-media.toml",
        include_str!("../../templates/other-install-media.toml"),
    ),
    (
        "corral-test-guest.toml",
        include_str!("../../templates/corral-test-guest.toml"),
    ),
];

/// Placeholders allowed in `installer_args`. A whitespace-separated word that uses a
/// placeholder with no value (for example `{unattended_url}` without an unattended file) is
/// dropped from the command line.
pub const PLACEHOLDERS: &[&str] = &["location", "unattended_url", "name"];

/// What went wrong with templates. Messages name the template or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template file {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("template {name:?} is invalid: {}", problems.join("; "))]
    Invalid { name: String, problems: Vec<String> },
    #[error("no template named {name:?}{}", did_you_mean(close))]
    NotFound { name: String, close: Vec<String> },
    #[error("template {name:?} derives from unknown template {parent:?}")]
    UnknownParent { name: String, parent: String },
    #[error("templates derive from each other in a cycle: {}", chain.join(" -> "))]
    Cycle { chain: Vec<String> },
    #[error("template {name:?} is built in and cannot be {action}")]
    Builtin { name: String, action: &'static str },
    #[error("template {name:?} already exists")]
    Exists { name: String },
    #[error("template {name:?} cannot be deleted: {} derived from it", children.join(", "))]
    HasChildren { name: String, children: Vec<String> },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn did_you_mean(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", close.join(", "))
    }
}

impl TemplateError {
    /// The API error kind this maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TemplateError::NotFound { .. } => ErrorKind::NotFound,
            TemplateError::Exists { .. } | TemplateError::HasChildren { .. } => ErrorKind::Conflict,
            TemplateError::Builtin { .. } => ErrorKind::InvalidInput,
            TemplateError::Parse { .. }
            | TemplateError::Invalid { .. }
            | TemplateError::UnknownParent { .. }
            | TemplateError::Cycle { .. } => ErrorKind::InvalidInput,
            TemplateError::Io { .. } => ErrorKind::Internal,
        }
    }
}

/// The installer family: decides which installer arguments and unattended format apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum OsFamily {
    /// debian-installer (Debian, and Ubuntu's legacy netboot installer).
    Debian,
    /// Ubuntu's subiquity/casper installer.
    Ubuntu,
    /// Anaconda: RHEL, AlmaLinux, Rocky, CentOS, Fedora.
    Rhel,
    /// YaST/linuxrc: SLES, openSUSE.
    Suse,
    Windows,
    /// The project's own test installer (`scripts/build-test-guest.sh`).
    CorralTest,
    /// Any other Linux.
    Linux,
    /// Anything else (other install media).
    Other,
}

impl OsFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            OsFamily::Debian => "debian",
            OsFamily::Ubuntu => "ubuntu",
            OsFamily::Rhel => "rhel",
            OsFamily::Suse => "suse",
            OsFamily::Windows => "windows",
            OsFamily::CorralTest => "corral-test",
            OsFamily::Linux => "linux",
            OsFamily::Other => "other",
        }
    }
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "debian" => OsFamily::Debian,
            "ubuntu" => OsFamily::Ubuntu,
            "rhel" => OsFamily::Rhel,
            "suse" => OsFamily::Suse,
            "windows" => OsFamily::Windows,
            "corral-test" => OsFamily::CorralTest,
            "linux" => OsFamily::Linux,
            "other" => OsFamily::Other,
            other => {
                return Err(format!(
                    "os family {other:?} is not one of debian, ubuntu, rhel, suse, windows, corral-test, linux, other"
                ))
            }
        })
    }
}

impl std::fmt::Display for OsFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Paravirtual (virtio disks and NICs) or emulated (IDE/SATA disks, e1000/rtl8139 NICs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceModel {
    Pv,
    Emulated,
}

impl DeviceModel {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceModel::Pv => "pv",
            DeviceModel::Emulated => "emulated",
        }
    }
    /// Disk bus used when a template or request does not name one.
    pub fn default_disk_bus(self) -> DiskBus {
        match self {
            DeviceModel::Pv => DiskBus::Virtio,
            DeviceModel::Emulated => DiskBus::Sata,
        }
    }
    /// NIC model used when a template or request does not name one.
    pub fn default_nic_model(self) -> NicModel {
        match self {
            DeviceModel::Pv => NicModel::Virtio,
            DeviceModel::Emulated => NicModel::E1000,
        }
    }
}

/// How an OS can be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum InstallMethod {
    Cdrom,
    Http,
    Ftp,
    Nfs,
    Pxe,
    DiskImport,
}

impl InstallMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallMethod::Cdrom => "cdrom",
            InstallMethod::Http => "http",
            InstallMethod::Ftp => "ftp",
            InstallMethod::Nfs => "nfs",
            InstallMethod::Pxe => "pxe",
            InstallMethod::DiskImport => "disk-import",
        }
    }
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "cdrom" => InstallMethod::Cdrom,
            "http" => InstallMethod::Http,
            "ftp" => InstallMethod::Ftp,
            "nfs" => InstallMethod::Nfs,
            "pxe" => InstallMethod::Pxe,
            "disk-import" => InstallMethod::DiskImport,
            other => {
                return Err(format!(
                    "install method {other:?} is not one of cdrom, http, ftp, nfs, pxe, disk-import"
                ))
            }
        })
    }
}

impl std::fmt::Display for InstallMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The unattended-install file format the OS's installer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnattendedKind {
    Preseed,
    Kickstart,
    Autoyast,
    CloudInit,
    None,
}

impl UnattendedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnattendedKind::Preseed => "preseed",
            UnattendedKind::Kickstart => "kickstart",
            UnattendedKind::Autoyast => "autoyast",
            UnattendedKind::CloudInit => "cloud-init",
            UnattendedKind::None => "none",
        }
    }
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "preseed" => UnattendedKind::Preseed,
            "kickstart" => UnattendedKind::Kickstart,
            "autoyast" => UnattendedKind::Autoyast,
            "cloud-init" => UnattendedKind::CloudInit,
            "none" => UnattendedKind::None,
            other => {
                return Err(format!(
                    "unattended kind {other:?} is not one of preseed, kickstart, autoyast, cloud-init, none"
                ))
            }
        })
    }
}

/// Which OS a template is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsIdentity {
    pub family: OsFamily,
    /// Distribution or product: `debian`, `almalinux`, `sles`, `windows-server`, ...
    pub variant: String,
    /// `12`, `22.04`, `9`, `2022`; empty when not specific.
    pub version: String,
    /// `bookworm`, `noble`: the suite a Debian/Ubuntu mirror uses.
    pub codename: Option<String>,
    /// The osinfo-db short id (`debian12`, `rhel9.0`), when known.
    pub osinfo_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateDisk {
    pub size_bytes: u64,
    pub bus: DiskBus,
}

/// Limits that `vm create` and `vm install` enforce for VMs made from a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restrictions {
    pub max_vcpus: u32,
    pub max_nics: u32,
    pub max_disks: u32,
    pub min_memory_bytes: u64,
    /// `None`: only the host limits memory.
    pub max_memory_bytes: Option<u64>,
}

/// Where a template came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TemplateSource {
    Builtin,
    User { path: PathBuf },
    Osinfo { path: PathBuf },
}

/// A resolved, validated template: inheritance applied, sizes in bytes, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    pub description: String,
    /// The direct parent, for information.
    pub derived_from: Option<String>,
    pub source: TemplateSource,
    pub os: OsIdentity,
    pub vcpus: u32,
    pub memory_minimum_bytes: u64,
    /// What a VM gets when the user does not say.
    pub memory_recommended_bytes: u64,
    pub disks: Vec<TemplateDisk>,
    pub nic_count: u32,
    pub nic_model: NicModel,
    pub device_model: DeviceModel,
    pub firmware: Firmware,
    /// VMs get a virtual TPM 2.0.
    pub tpm: bool,
    pub install_methods: Vec<InstallMethod>,
    /// Extra installer kernel arguments, with placeholders (see [`PLACEHOLDERS`]).
    pub installer_args: String,
    pub unattended: UnattendedKind,
    pub restrictions: Restrictions,
}

/// Values for the placeholders of `installer_args`.
#[derive(Debug, Clone, Default)]
pub struct ArgValues {
    pub location: Option<String>,
    pub unattended_url: Option<String>,
    pub name: Option<String>,
}

impl Template {
    pub fn is_builtin(&self) -> bool {
        self.source == TemplateSource::Builtin
    }

    /// Check a VM's shape against the template's restrictions. Every violation is reported,
    /// each naming the template, the limit and the value asked for.
    pub fn check_restrictions(
        &self,
        vcpus: u32,
        memory_bytes: u64,
        nics: usize,
        disks: usize,
    ) -> Result<(), Vec<String>> {
        let r = &self.restrictions;
        let n = &self.name;
        let mut problems = Vec::new();
        if vcpus > r.max_vcpus {
            problems.push(format!(
                "{n} allows at most {} vCPUs; asked for {vcpus}",
                r.max_vcpus
            ));
        }
        if memory_bytes < r.min_memory_bytes {
            problems.push(format!(
                "{n} needs at least {} of memory; asked for {}",
                format_size(r.min_memory_bytes),
                format_size(memory_bytes)
            ));
        }
        if let Some(max) = r.max_memory_bytes {
            if memory_bytes > max {
                problems.push(format!(
                    "{n} allows at most {} of memory; asked for {}",
                    format_size(max),
                    format_size(memory_bytes)
                ));
            }
        }
        if nics > r.max_nics as usize {
            problems.push(format!(
                "{n} allows at most {} NICs; asked for {nics}",
                r.max_nics
            ));
        }
        if disks > r.max_disks as usize {
            problems.push(format!(
                "{n} allows at most {} disks; asked for {disks}",
                r.max_disks
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Fill the fields a create request leaves out from this template: vCPUs, memory
    /// (the recommended amount), firmware, disks (when `None`), NICs (when `None`, on
    /// `network`), and the disk bus and NIC model of entries that do not name one.
    /// Then check the result against the restrictions.
    pub fn apply_to_request(
        &self,
        req: &mut VmCreateRequest,
        network: &str,
    ) -> Result<(), Vec<String>> {
        req.template.get_or_insert_with(|| self.name.clone());
        req.vcpus.get_or_insert(self.vcpus);
        req.memory_bytes
            .get_or_insert(self.memory_recommended_bytes);
        req.firmware.get_or_insert(self.firmware);
        req.tpm.get_or_insert(self.tpm);
        if req.description.is_none() {
            req.description = Some(String::new());
        }
        let disks = req.disks.get_or_insert_with(|| {
            self.disks
                .iter()
                .map(|d| DiskRequest {
                    size_bytes: d.size_bytes,
                    import_from: None,
                    sr: None,
                    format: None,
                    bus: Some(d.bus),
                })
                .collect()
        });
        for d in disks.iter_mut() {
            d.bus.get_or_insert(self.device_model.default_disk_bus());
        }
        let nics = req.nics.get_or_insert_with(|| {
            (0..self.nic_count)
                .map(|_| NicRequest {
                    network: network.to_string(),
                    model: Some(self.nic_model),
                    mac: None,
                })
                .collect()
        });
        for n in nics.iter_mut() {
            n.model.get_or_insert(self.nic_model);
        }
        let (vcpus, memory) = (
            req.vcpus.unwrap_or(self.vcpus),
            req.memory_bytes.unwrap_or(self.memory_recommended_bytes),
        );
        let nic_count = req.nics.as_ref().map_or(0, Vec::len);
        let disk_count = req.disks.as_ref().map_or(0, Vec::len);
        self.check_restrictions(vcpus, memory, nic_count, disk_count)
    }

    /// `installer_args` with placeholders replaced. Words whose placeholder has no value are
    /// dropped, so `url={unattended_url}` disappears when there is no unattended file.
    pub fn render_installer_args(&self, values: &ArgValues) -> String {
        render_args(&self.installer_args, values)
    }
}

/// Replace placeholders in `args` (see [`Template::render_installer_args`]).
pub fn render_args(args: &str, values: &ArgValues) -> String {
    let mut out = Vec::new();
    'words: for word in args.split_whitespace() {
        let mut w = word.to_string();
        for (key, value) in [
            ("location", &values.location),
            ("unattended_url", &values.unattended_url),
            ("name", &values.name),
        ] {
            let ph = format!("{{{key}}}");
            if w.contains(&ph) {
                match value {
                    Some(v) => w = w.replace(&ph, v),
                    None => continue 'words,
                }
            }
        }
        out.push(w);
    }
    out.join(" ")
}

/// Placeholders used in `args` that are not in [`PLACEHOLDERS`].
fn unknown_placeholders(args: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut rest = args;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let key = &after[..close];
                if !PLACEHOLDERS.contains(&key) {
                    bad.push(format!("{{{key}}}"));
                }
                rest = &after[close + 1..];
            }
            None => {
                bad.push(rest[open..].to_string());
                break;
            }
        }
    }
    bad
}

/// Turn a fully merged raw template into a checked one. Every problem is collected.
fn finish(
    name: &str,
    raw: &RawTemplate,
    source: TemplateSource,
) -> Result<Template, TemplateError> {
    let mut problems: Vec<String> = Vec::new();
    if let TemplateSource::Osinfo { .. } = source {
        // osinfo names are `osinfo:<short-id>`; the short id is checked when read.
    } else if let Err(e) = validate_name("template", name) {
        problems.push(e);
    }
    let description = raw.description.clone().unwrap_or_default();
    let os_raw = raw.os.clone().unwrap_or_default();
    let family = match os_raw.family.as_deref() {
        Some(f) => OsFamily::parse(f).unwrap_or_else(|e| {
            problems.push(e);
            OsFamily::Other
        }),
        None => {
            problems.push("os.family is missing".into());
            OsFamily::Other
        }
    };
    let os = OsIdentity {
        family,
        variant: os_raw
            .variant
            .unwrap_or_else(|| family.as_str().to_string()),
        version: os_raw.version.unwrap_or_default(),
        codename: os_raw.codename,
        osinfo_id: os_raw.osinfo_id,
    };
    let vcpus = raw.vcpus.unwrap_or(1);
    if let Err(e) = validate_vcpus(vcpus) {
        problems.push(e);
    }
    let mut size = |what: &str, v: &Option<raw::SizeValue>| -> Option<u64> {
        match v {
            None => None,
            Some(v) => match v.bytes() {
                Ok(b) => Some(b),
                Err(e) => {
                    problems.push(format!("{what}: {e}"));
                    None
                }
            },
        }
    };
    let mem = raw.memory.clone().unwrap_or_default();
    let recommended = size("memory.recommended", &mem.recommended);
    let minimum = size("memory.minimum", &mem.minimum);
    let rr = raw.restrictions.clone().unwrap_or_default();
    let r_min = size("restrictions.min_memory", &rr.min_memory);
    let r_max = size("restrictions.max_memory", &rr.max_memory);
    let recommended = match recommended.or(minimum) {
        Some(r) => r,
        None => {
            problems.push("memory.recommended is missing".into());
            256 << 20
        }
    };
    let minimum = minimum.unwrap_or(recommended);
    for (what, v) in [
        ("memory.minimum", minimum),
        ("memory.recommended", recommended),
    ] {
        if let Err(e) = validate_memory(v) {
            problems.push(format!("{what}: {e}"));
        }
    }
    if minimum > recommended {
        problems.push(format!(
            "memory.minimum {} is more than memory.recommended {}",
            format_size(minimum),
            format_size(recommended)
        ));
    }
    let device_model = match raw.device_model.as_deref() {
        None | Some("pv") => DeviceModel::Pv,
        Some("emulated") => DeviceModel::Emulated,
        Some(other) => {
            problems.push(format!("device_model {other:?} is not pv or emulated"));
            DeviceModel::Pv
        }
    };
    let firmware = match raw.firmware.as_deref() {
        None | Some("bios") => Firmware::Bios,
        Some("uefi") => Firmware::Uefi,
        Some("uefi-secure") => Firmware::UefiSecure,
        Some(other) => {
            problems.push(format!(
                "firmware {other:?} is not bios, uefi or uefi-secure"
            ));
            Firmware::Bios
        }
    };
    let mut disks = Vec::new();
    for (i, d) in raw.disks.clone().unwrap_or_default().iter().enumerate() {
        let size_bytes = match d.size.bytes() {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("disks[{i}].size: {e}"));
                continue;
            }
        };
        if let Err(e) = validate_disk_size(size_bytes) {
            problems.push(format!("disks[{i}]: {e}"));
        }
        let bus = match d.bus.as_deref() {
            None => device_model.default_disk_bus(),
            Some("virtio") => DiskBus::Virtio,
            Some("sata") => DiskBus::Sata,
            Some("ide") => DiskBus::Ide,
            Some(other) => {
                problems.push(format!(
                    "disks[{i}].bus {other:?} is not virtio, sata or ide"
                ));
                DiskBus::Virtio
            }
        };
        disks.push(TemplateDisk { size_bytes, bus });
    }
    let nics_raw = raw.nics.clone().unwrap_or_default();
    let nic_count = nics_raw.count.unwrap_or(1);
    let nic_model = match nics_raw.model.as_deref() {
        None => device_model.default_nic_model(),
        Some("virtio") => NicModel::Virtio,
        Some("e1000") => NicModel::E1000,
        Some("rtl8139") => NicModel::Rtl8139,
        Some(other) => {
            problems.push(format!(
                "nics.model {other:?} is not virtio, e1000 or rtl8139"
            ));
            NicModel::Virtio
        }
    };
    let mut install_methods = Vec::new();
    for m in raw.install_methods.clone().unwrap_or_default() {
        match InstallMethod::parse(&m) {
            Ok(m) if !install_methods.contains(&m) => install_methods.push(m),
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
    }
    if install_methods.is_empty() {
        problems.push("install_methods is empty; name at least one of cdrom, http, ftp, nfs, pxe, disk-import".into());
    }
    let installer_args = raw.installer_args.clone().unwrap_or_default();
    let bad = unknown_placeholders(&installer_args);
    if !bad.is_empty() {
        problems.push(format!(
            "installer_args uses unknown placeholder {}; known: {{location}}, {{unattended_url}}, {{name}}",
            bad.join(", ")
        ));
    }
    let unattended = match raw.unattended.as_deref() {
        None => UnattendedKind::None,
        Some(u) => UnattendedKind::parse(u).unwrap_or_else(|e| {
            problems.push(e);
            UnattendedKind::None
        }),
    };
    let restrictions = Restrictions {
        max_vcpus: rr.max_vcpus.unwrap_or(MAX_VCPUS),
        max_nics: rr.max_nics.unwrap_or(MAX_NICS as u32),
        max_disks: rr.max_disks.unwrap_or(MAX_DISKS as u32),
        min_memory_bytes: r_min.unwrap_or(minimum),
        max_memory_bytes: r_max,
    };
    // Restrictions must be possible on this system and consistent with the defaults.
    if restrictions.max_vcpus == 0 || restrictions.max_vcpus > MAX_VCPUS {
        problems.push(format!(
            "restrictions.max_vcpus {} is outside 1..{MAX_VCPUS}",
            restrictions.max_vcpus
        ));
    }
    if restrictions.max_nics as usize > MAX_NICS {
        problems.push(format!(
            "restrictions.max_nics {} is more than the maximum of {MAX_NICS}",
            restrictions.max_nics
        ));
    }
    if restrictions.max_disks as usize > MAX_DISKS {
        problems.push(format!(
            "restrictions.max_disks {} is more than the maximum of {MAX_DISKS}",
            restrictions.max_disks
        ));
    }
    if vcpus > restrictions.max_vcpus {
        problems.push(format!(
            "vcpus {vcpus} is more than restrictions.max_vcpus {}",
            restrictions.max_vcpus
        ));
    }
    if nic_count > restrictions.max_nics {
        problems.push(format!(
            "nics.count {nic_count} is more than restrictions.max_nics {}",
            restrictions.max_nics
        ));
    }
    if disks.len() > restrictions.max_disks as usize {
        problems.push(format!(
            "{} disks is more than restrictions.max_disks {}",
            disks.len(),
            restrictions.max_disks
        ));
    }
    if recommended < restrictions.min_memory_bytes {
        problems.push(format!(
            "memory.recommended {} is less than restrictions.min_memory {}",
            format_size(recommended),
            format_size(restrictions.min_memory_bytes)
        ));
    }
    if let Some(max) = restrictions.max_memory_bytes {
        if recommended > max {
            problems.push(format!(
                "memory.recommended {} is more than restrictions.max_memory {}",
                format_size(recommended),
                format_size(max)
            ));
        }
        if restrictions.min_memory_bytes > max {
            problems.push(format!(
                "restrictions.min_memory {} is more than restrictions.max_memory {}",
                format_size(restrictions.min_memory_bytes),
                format_size(max)
            ));
        }
    }
    if !problems.is_empty() {
        return Err(TemplateError::Invalid {
            name: name.to_string(),
            problems,
        });
    }
    Ok(Template {
        name: name.to_string(),
        description,
        derived_from: raw.derived_from.clone(),
        source,
        os,
        vcpus,
        memory_minimum_bytes: minimum,
        memory_recommended_bytes: recommended,
        disks,
        nic_count,
        nic_model,
        device_model,
        firmware,
        tpm: raw.tpm.unwrap_or(false),
        install_methods,
        installer_args,
        unattended,
        restrictions,
    })
}

/// Parse one template file's text. The name must be present.
pub fn parse_template(text: &str, origin: &str) -> Result<RawTemplate, TemplateError> {
    let raw: RawTemplate = toml::from_str(text).map_err(|e| TemplateError::Parse {
        origin: origin.to_string(),
        message: e.message().to_string()
            + &e.span()
                .map(|s| format!(" (at line {})", line_of(text, s.start)))
                .unwrap_or_default(),
    })?;
    match raw.name.as_deref() {
        None => Err(TemplateError::Parse {
            origin: origin.to_string(),
            message: "missing field `name`".into(),
        }),
        Some(n) => {
            validate_name("template", n).map_err(|e| TemplateError::Parse {
                origin: origin.to_string(),
                message: e,
            })?;
            Ok(raw)
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

struct Entry {
    raw: RawTemplate,
    source: TemplateSource,
}

/// All templates known to a host: built-ins, user templates and (when installed) osinfo-db.
pub struct Catalog {
    entries: BTreeMap<String, Entry>,
    /// Names in display order: built-ins in file order, then user templates by name.
    order: Vec<String>,
    resolved: BTreeMap<String, Template>,
    osinfo: BTreeMap<String, Template>,
    osinfo_trees: BTreeMap<String, Vec<osinfo::OsinfoTree>>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("templates", &self.order)
            .field("osinfo", &self.osinfo.len())
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// Options for [`Catalog::load_with`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions<'a> {
    /// Directory of user templates (`*.toml`); created by `add_user` when missing.
    pub user_dir: Option<&'a Path>,
    /// Root of osinfo-db's `os` tree; `None` skips osinfo.
    pub osinfo_dir: Option<&'a Path>,
}

impl Catalog {
    /// Built-ins, user templates from `user_dir`, and osinfo-db from its Debian location
    /// ([`osinfo::DEFAULT_OS_DIR`]) when present.
    pub fn load(user_dir: Option<&Path>) -> Result<Catalog, TemplateError> {
        let osinfo_dir = Path::new(osinfo::DEFAULT_OS_DIR);
        Catalog::load_with(LoadOptions {
            user_dir,
            osinfo_dir: osinfo_dir.is_dir().then_some(osinfo_dir),
        })
    }

    /// Load with explicit sources. A broken built-in is an error (a bug in corral); a broken
    /// user file is skipped and reported in [`Catalog::warnings`], so one bad file does not
    /// stop the agent. An unreadable user directory is an error.
    pub fn load_with(opts: LoadOptions<'_>) -> Result<Catalog, TemplateError> {
        let mut cat = Catalog {
            entries: BTreeMap::new(),
            order: Vec::new(),
            resolved: BTreeMap::new(),
            osinfo: BTreeMap::new(),
            osinfo_trees: BTreeMap::new(),
            warnings: Vec::new(),
        };
        for (file, text) in BUILTIN_FILES {
            let raw = parse_template(text, &format!("built-in {file}"))?;
            let name = raw.name.clone().unwrap_or_default();
            cat.order.push(name.clone());
            cat.entries.insert(
                name,
                Entry {
                    raw,
                    source: TemplateSource::Builtin,
                },
            );
        }
        if let Some(dir) = opts.osinfo_dir {
            let (templates, warnings) = osinfo::load_dir(dir);
            cat.warnings.extend(warnings);
            for (t, trees) in templates {
                if !trees.is_empty() {
                    cat.osinfo_trees.insert(t.name.clone(), trees);
                }
                cat.osinfo.insert(t.name.clone(), t);
            }
        }
        // Built-ins must resolve; report the first failure as the error.
        cat.resolve_all();
        for name in cat.order.clone() {
            if !cat.resolved.contains_key(&name) {
                return Err(cat
                    .resolve_one(&name)
                    .err()
                    .unwrap_or(TemplateError::Invalid {
                        name,
                        problems: vec!["built-in template did not resolve".into()],
                    }));
            }
        }
        if let Some(dir) = opts.user_dir {
            cat.load_user_dir(dir)?;
        }
        Ok(cat)
    }

    fn load_user_dir(&mut self, dir: &Path) -> Result<(), TemplateError> {
        let read = match std::fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(TemplateError::Io {
                    action: "read template directory",
                    path: dir.to_path_buf(),
                    source: e,
                })
            }
        };
        let mut paths: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut user_names = Vec::new();
        for path in paths {
            let origin = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.warnings.push(format!("skipped {origin}: {e}"));
                    continue;
                }
            };
            let raw = match parse_template(&text, &origin) {
                Ok(r) => r,
                Err(e) => {
                    self.warnings.push(format!("skipped {e}"));
                    continue;
                }
            };
            let name = raw.name.clone().unwrap_or_default();
            if let Some(existing) = self.entries.get(&name) {
                let what = match &existing.source {
                    TemplateSource::Builtin => "a built-in template".to_string(),
                    TemplateSource::User { path } | TemplateSource::Osinfo { path } => {
                        path.display().to_string()
                    }
                };
                self.warnings.push(format!(
                    "skipped {origin}: template {name:?} is already defined by {what}"
                ));
                continue;
            }
            user_names.push(name.clone());
            self.entries.insert(
                name,
                Entry {
                    raw,
                    source: TemplateSource::User { path },
                },
            );
        }
        user_names.sort();
        self.order.extend(user_names.iter().cloned());
        self.resolve_all();
        for name in user_names {
            if !self.resolved.contains_key(&name) {
                if let Err(e) = self.resolve_one(&name) {
                    self.warnings
                        .push(format!("skipped template {name:?}: {e}"));
                }
            }
        }
        Ok(())
    }

    fn resolve_all(&mut self) {
        self.resolved.clear();
        for name in self.order.clone() {
            if let Ok(t) = self.resolve_one(&name) {
                self.resolved.insert(name, t);
            }
        }
    }

    /// Merge the chain of parents of `name` and validate the result.
    fn resolve_one(&self, name: &str) -> Result<Template, TemplateError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| TemplateError::NotFound {
                name: name.to_string(),
                close: self.close_names(name),
            })?;
        let merged = self.merged_raw(name, &mut Vec::new())?;
        finish(name, &merged, entry.source.clone())
    }

    fn merged_raw(&self, name: &str, seen: &mut Vec<String>) -> Result<RawTemplate, TemplateError> {
        if seen.iter().any(|s| s == name) {
            let mut chain = seen.clone();
            chain.push(name.to_string());
            return Err(TemplateError::Cycle { chain });
        }
        seen.push(name.to_string());
        let entry = match self.entries.get(name) {
            Some(e) => e,
            None => {
                // An osinfo template can be a parent: start from its resolved values.
                if let Some(t) = self.osinfo.get(name) {
                    return Ok(osinfo::to_raw(t));
                }
                return Err(TemplateError::NotFound {
                    name: name.to_string(),
                    close: self.close_names(name),
                });
            }
        };
        match &entry.raw.derived_from {
            None => Ok(entry.raw.clone()),
            Some(parent) => {
                if !self.entries.contains_key(parent) && !self.osinfo.contains_key(parent) {
                    return Err(TemplateError::UnknownParent {
                        name: name.to_string(),
                        parent: parent.clone(),
                    });
                }
                let p = self.merged_raw(parent, seen)?;
                Ok(overlay(&p, &entry.raw))
            }
        }
    }

    /// Built-in and user templates, in display order (osinfo ones: [`Catalog::list_osinfo`]).
    pub fn list(&self) -> Vec<&Template> {
        self.order
            .iter()
            .filter_map(|n| self.resolved.get(n))
            .collect()
    }

    /// Templates read from osinfo-db, named `osinfo:<short-id>`, sorted by name.
    pub fn list_osinfo(&self) -> Vec<&Template> {
        self.osinfo.values().collect()
    }

    /// A resolved template by name (`debian-12`, `my-web`, `osinfo:fedora38`).
    pub fn get(&self, name: &str) -> Result<&Template, TemplateError> {
        if let Some(t) = self.resolved.get(name).or_else(|| self.osinfo.get(name)) {
            return Ok(t);
        }
        if self.entries.contains_key(name) {
            // A user file that is present but failed to resolve: say why.
            return Err(self
                .resolve_one(name)
                .err()
                .unwrap_or(TemplateError::NotFound {
                    name: name.to_string(),
                    close: vec![],
                }));
        }
        Err(TemplateError::NotFound {
            name: name.to_string(),
            close: self.close_names(name),
        })
    }

    /// Problems met while loading (skipped user files, unreadable osinfo entries).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The osinfo template whose x86_64 `<tree>` treeinfo family and version match what
    /// detection read from a tree's `.treeinfo` (e.g. `Fedora`, `37` → `osinfo:fedora37`).
    pub fn osinfo_for_treeinfo(&self, family: &str, version: &str) -> Option<&Template> {
        osinfo::match_treeinfo(self.osinfo_trees.iter(), family, version)
            .and_then(|name| self.osinfo.get(name))
    }

    /// Every osinfo short id a template or osinfo-db names, for detection to name what it
    /// found with (`tree::DetectOptions::os_names`): built-in templates first (they know
    /// releases an older osinfo-db does not, such as `debian12`), then user templates, then
    /// osinfo-db.
    pub fn os_names(&self) -> crate::tree::OsNames {
        let known_of = |t: &Template| {
            t.os.osinfo_id.as_ref().map(|id| crate::tree::KnownOs {
                short_id: id.clone(),
                distro: t.os.variant.clone(),
                version: t.os.version.clone(),
                codename: t.os.codename.clone(),
            })
        };
        let list = self.list();
        let known = list
            .iter()
            .filter(|t| t.is_builtin())
            .chain(list.iter().filter(|t| !t.is_builtin()))
            .copied()
            .chain(self.osinfo.values())
            .filter_map(known_of)
            .collect();
        crate::tree::OsNames::new(known, self.osinfo_trees.clone())
    }

    /// The template for a detected OS (its osinfo short id): a built-in template for that
    /// release, else a user template, else osinfo-db's own (`osinfo:<id>`). `None` when no
    /// template names the id.
    pub fn template_for_os(&self, osinfo_id: &str) -> Option<&Template> {
        let list = self.list();
        let named = |t: &&&Template| t.os.osinfo_id.as_deref() == Some(osinfo_id);
        list.iter()
            .filter(|t| t.is_builtin())
            .find(named)
            .or_else(|| list.iter().filter(|t| !t.is_builtin()).find(named))
            .copied()
            .or_else(|| self.osinfo.get(&format!("osinfo:{osinfo_id}")))
    }

    /// The `<tree>` facts of an osinfo template (kernel/initrd paths, treeinfo identity).
    pub fn osinfo_trees(&self, name: &str) -> &[osinfo::OsinfoTree] {
        self.osinfo_trees.get(name).map_or(&[], Vec::as_slice)
    }

    /// Distinct x86_64 kernel/initrd path pairs named by osinfo `<tree>` elements, for
    /// detection to try after its own layouts (see `tree::DetectOptions::extra_kernel_paths`).
    pub fn osinfo_kernel_paths(&self) -> Vec<(String, String)> {
        let mut pairs = BTreeSet::new();
        for t in self.osinfo_trees.values().flatten() {
            if t.arch != "x86_64" {
                continue;
            }
            if let (Some(k), Some(i)) = (&t.kernel, &t.initrd) {
                pairs.insert((k.clone(), i.clone()));
            }
        }
        pairs.into_iter().collect()
    }

    /// Validate `toml_text` as a new user template, write it to `dir/<name>.toml` and add it.
    /// A name already in use (built-in, osinfo or user) is a conflict; the parent must exist.
    pub fn add_user(&mut self, toml_text: &str, dir: &Path) -> Result<Template, TemplateError> {
        let raw = parse_template(toml_text, "new template")?;
        let name = raw.name.clone().unwrap_or_default();
        if self.entries.contains_key(&name) || self.osinfo.contains_key(&name) {
            return Err(TemplateError::Exists { name });
        }
        let path = dir.join(format!("{name}.toml"));
        self.entries.insert(
            name.clone(),
            Entry {
                raw,
                source: TemplateSource::User { path: path.clone() },
            },
        );
        let template = match self.resolve_one(&name) {
            Ok(t) => t,
            Err(e) => {
                self.entries.remove(&name);
                return Err(e);
            }
        };
        if let Err(e) = write_atomically(dir, &path, toml_text) {
            self.entries.remove(&name);
            return Err(e);
        }
        self.order.push(name.clone());
        self.resolved.insert(name, template.clone());
        Ok(template)
    }

    /// Delete a user template and its file. Built-ins and osinfo templates cannot be deleted,
    /// nor a template others derive from.
    pub fn remove_user(&mut self, name: &str, dir: &Path) -> Result<(), TemplateError> {
        if self.osinfo.contains_key(name) {
            return Err(TemplateError::Builtin {
                name: name.to_string(),
                action: "deleted",
            });
        }
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| TemplateError::NotFound {
                name: name.to_string(),
                close: self.close_names(name),
            })?;
        let path = match &entry.source {
            TemplateSource::Builtin | TemplateSource::Osinfo { .. } => {
                return Err(TemplateError::Builtin {
                    name: name.to_string(),
                    action: "deleted",
                })
            }
            TemplateSource::User { path } => path.clone(),
        };
        let children: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.raw.derived_from.as_deref() == Some(name))
            .map(|(n, _)| n.clone())
            .collect();
        if !children.is_empty() {
            return Err(TemplateError::HasChildren {
                name: name.to_string(),
                children,
            });
        }
        // Files loaded from elsewhere keep their path; new ones live in `dir`.
        let path = if path.exists() {
            path
        } else {
            dir.join(format!("{name}.toml"))
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(TemplateError::Io {
                    action: "delete template file",
                    path,
                    source: e,
                })
            }
        }
        self.entries.remove(name);
        self.order.retain(|n| n != name);
        self.resolved.remove(name);
        Ok(())
    }

    /// Up to five known names close to `name`: sharing a prefix or within a small edit distance.
    fn close_names(&self, name: &str) -> Vec<String> {
        let lower = name.to_ascii_lowercase();
        let mut scored: Vec<(usize, &String)> = self
            .order
            .iter()
            .chain(self.osinfo.keys())
            .filter_map(|n| {
                let d = edit_distance(&lower, &n.to_ascii_lowercase());
                let words: Vec<&str> = lower
                    .split(['-', '.', '_'])
                    .filter(|w| !w.is_empty())
                    .collect();
                let related = n.starts_with(&lower)
                    || (lower.len() >= 3 && n.contains(&lower))
                    || (words.len() >= 2 && words.iter().all(|w| n.contains(w)));
                if d <= 2 + name.len() / 4 || related {
                    Some((if related { 0 } else { d }, n))
                } else {
                    None
                }
            })
            .collect();
        scored.sort();
        let mut seen = BTreeSet::new();
        scored
            .into_iter()
            .filter(|(_, n)| seen.insert(n.as_str()))
            .take(5)
            .map(|(_, n)| n.clone())
            .collect()
    }
}

fn write_atomically(dir: &Path, path: &Path, text: &str) -> Result<(), TemplateError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| TemplateError::Io {
            action,
            path: p,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create template directory", dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io("write template file", path))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())
        .map_err(io("write template file", path))?;
    tmp.persist(path)
        .map_err(|e| TemplateError::Io {
            action: "write template file",
            path: path.to_path_buf(),
            source: e.error,
        })
        .map(|_| ())
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
