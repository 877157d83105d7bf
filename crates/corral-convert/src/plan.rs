//! What a conversion changes, decided from what was found in the guest: pure functions of
//! [`GuestFacts`] and [`Options`], so every rule can be read and table-tested without an
//! appliance. `facts.rs` gathers the facts inside the appliance and [`crate::convert_disk`]
//! carries the [`Plan`] out, step by step, recording each step's `changes` once it succeeded.
//!
//! The rules, in the order the plan applies them: grow the disk's last partition, its LVM
//! physical volume, the root LV and the root file system into new space (`--disk-size`);
//! name file systems by UUID in `/etc/fstab`, `/etc/crypttab` and the resume setting instead
//! of by kernel device (`/dev/sda1` becomes `/dev/vda1` on virtio-blk); GRUB on UUIDs
//! (`GRUB_DISABLE_LINUX_UUID=false`, `root=`/`resume=` in its command line); the virtio
//! drivers in `/etc/initramfs-tools/modules`; a network configuration that is not bound to the
//! old NIC's name or MAC address (or, with [`NetworkMode::Keep`], a `.link` file giving the VM's
//! NIC the old name); services for hardware a VM does not have disabled; then the guest's own
//! tools rebuild the initramfs, reinstall GRUB (BIOS) or make the firmware's fallback loader
//! path hold the distribution's loader (UEFI), and regenerate `grub.cfg`.
//!
//! Anything this cannot convert safely is a [`Refusal`], decided before the first change.

use corral_model::Firmware;
use std::collections::{BTreeMap, BTreeSet};

/// The drivers a VM on corral needs in the initramfs: the PCI transport, the disk, the NIC.
pub const VIRTIO_MODULES: [&str; 3] = ["virtio_pci", "virtio_blk", "virtio_net"];

/// Marks every line the conversion writes or comments out in a guest file.
pub const MARK: &str = "corral v2v";

/// How the converted guest's network is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Configuration bound to the old NIC's name or MAC is commented out; any Ethernet NIC
    /// comes up with DHCP.
    #[default]
    Dhcp,
    /// The configuration stays; the VM's NICs get the old names (a systemd `.link` file
    /// matching each new MAC address).
    Keep,
}

/// What the caller asks of the conversion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub network: NetworkMode,
    /// MAC addresses of the VM's NICs, in order (`NetworkMode::Keep` names them).
    pub nic_macs: Vec<String>,
    /// The disk was made larger than the source: grow the root file system (and the
    /// partition, physical volume and logical volume holding it) into the new space.
    pub grow: bool,
    /// Directories whose contents were left out of the copy (`corral p2v --exclude`): their
    /// files are there without their data, so they are emptied first. Absolute paths of
    /// the characters [`exclude_path_ok`] allows (they are quoted into a guest command).
    pub emptied: Vec<String>,
}

/// Whether `path` may be given to `corral p2v --exclude`: an absolute, normalised path of
/// letters, digits and `/._-+@` (so it can be quoted into a guest shell command), not one
/// of the directories a system or its conversion needs.
pub fn exclude_path_ok(path: &str) -> Result<(), String> {
    const NEEDED: &[&str] = &[
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/run",
        "/sbin",
        "/sys",
        "/usr",
        "/usr/bin",
        "/usr/lib",
        "/usr/sbin",
        "/var",
        "/var/lib",
        "/var/lib/dpkg",
    ];
    if !path.starts_with('/')
        || path.len() > 512
        || path.ends_with('/') && path != "/"
        || path.split('/').any(|c| c == "." || c == "..")
        || path.contains("//")
        || !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c))
    {
        return Err(format!(
            "--exclude {path:?}: give an absolute directory path of letters, digits and /._-+@ (no .., no trailing /)"
        ));
    }
    if NEEDED.contains(&path) || path.starts_with("/boot/") || path.starts_with("/etc/") {
        return Err(format!(
            "--exclude {path:?}: the system (or its conversion) needs that directory"
        ));
    }
    Ok(())
}

/// Why an image is not converted. Decided before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no Linux system found on the image ({found})")]
    NoLinux { found: String },
    #[error("the image holds more than one Linux system ({}); only single-system disks are converted", .0.join(", "))]
    SeveralSystems(Vec<String>),
    #[error("{0}")]
    Unsupported(String),
}

// ------------------------------------------------------------------------------------------
// The disk as the appliance sees it
// ------------------------------------------------------------------------------------------

/// A partition's table entry (sectors of 512 bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartEntry {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// `0x83` (MBR) or a GPT type GUID, lower case.
    pub type_id: String,
    /// PARTUUID (`6a0cb502-01` on MBR, a GUID on GPT), lower case.
    pub uuid: String,
}

impl PartEntry {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A block device in the appliance and what `blkid` says of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDevice {
    /// `/dev/sda1`, `/dev/srcvg/var`.
    pub device: String,
    /// `ext4`, `swap`, `LVM2_member`, `crypto_LUKS`, `vfat`; empty when nothing is known.
    pub fstype: String,
    pub uuid: String,
    pub label: String,
    pub part: Option<PartEntry>,
}

/// The disk: its partitions and LVM volumes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    /// The disk in the appliance (`/dev/sda`).
    pub disk: String,
    /// Its size in 512-byte sectors.
    pub disk_sectors: u64,
    /// `dos`, `gpt`, or empty for no partition table.
    pub table: String,
    /// The disk itself (when a file system covers it), its partitions and logical volumes.
    pub devices: Vec<BlockDevice>,
    /// LVM logical volumes (`/dev/VG/LV`).
    pub lvs: Vec<String>,
    /// Physical volumes and their volume group.
    pub pvs: Vec<(String, String)>,
}

/// ESP partition type on GPT and on MBR.
const ESP_GPT: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const ESP_MBR: &str = "0xef";

impl Layout {
    pub fn device(&self, name: &str) -> Option<&BlockDevice> {
        self.devices.iter().find(|d| d.device == name)
    }

    fn partitions(&self) -> impl Iterator<Item = (&BlockDevice, &PartEntry)> {
        self.devices
            .iter()
            .filter_map(|d| d.part.as_ref().map(|p| (d, p)))
    }

    /// The partition that ends last on the disk.
    fn last_partition(&self) -> Option<(&BlockDevice, &PartEntry)> {
        self.partitions().max_by_key(|(_, p)| p.end())
    }

    pub fn has_esp(&self) -> bool {
        self.partitions()
            .any(|(_, p)| p.type_id == ESP_GPT || p.type_id == ESP_MBR)
    }

    /// `/dev/sda` + 1 → `/dev/sda1` (`/dev/nvme0n1` + 1 → `/dev/nvme0n1p1`).
    fn partition_device(&self, number: u32) -> String {
        if self.disk.ends_with(|c: char| c.is_ascii_digit()) {
            format!("{}p{number}", self.disk)
        } else {
            format!("{}{number}", self.disk)
        }
    }

    /// One line saying what is on the disk, for a refusal.
    pub fn describe(&self) -> String {
        let mut found: Vec<String> = self
            .devices
            .iter()
            .filter(|d| !d.fstype.is_empty())
            .map(|d| match d.fstype.as_str() {
                "ntfs" => format!("ntfs on {} (a Windows disk?)", d.device),
                "crypto_LUKS" => format!(
                    "an encrypted LUKS volume on {}, which the conversion cannot open",
                    d.device
                ),
                t => format!("{t} on {}", d.device),
            })
            .collect();
        if found.is_empty() {
            found.push(if self.table.is_empty() {
                "no partition table and no file system: a blank disk?".into()
            } else {
                format!("a {} partition table without file systems", self.table)
            });
        }
        found.join("; ")
    }
}

/// File systems a Linux root can be.
pub const LINUX_FS: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs", "jfs", "reiserfs"];

/// Devices worth mounting to look for a root.
pub fn root_candidates(layout: &Layout) -> Vec<String> {
    layout
        .devices
        .iter()
        .filter(|d| LINUX_FS.contains(&d.fstype.as_str()))
        .map(|d| d.device.clone())
        .collect()
}

/// `blkid DEVICE` as guestfish prints it: `KEY: value` lines, values escaped as blkid's
/// export format does (`LVM2\ 001`).
pub fn parse_blkid(device: &str, out: &str) -> BlockDevice {
    let mut kv = BTreeMap::new();
    for line in out.lines() {
        if let Some((k, v)) = line.split_once(": ") {
            kv.insert(
                k.trim().to_string(),
                v.replace("\\ ", " ").trim().to_string(),
            );
        } else if let Some(k) = line.strip_suffix(':') {
            kv.insert(k.trim().to_string(), String::new());
        }
    }
    let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
    let part = kv.get("PART_ENTRY_NUMBER").and_then(|n| {
        Some(PartEntry {
            number: n.parse().ok()?,
            start: get("PART_ENTRY_OFFSET").parse().ok()?,
            size: get("PART_ENTRY_SIZE").parse().ok()?,
            type_id: get("PART_ENTRY_TYPE").to_ascii_lowercase(),
            uuid: get("PART_ENTRY_UUID").to_ascii_lowercase(),
        })
    });
    BlockDevice {
        device: device.to_string(),
        fstype: get("TYPE"),
        uuid: get("UUID"),
        label: get("LABEL"),
        part,
    }
}

// ------------------------------------------------------------------------------------------
// The root and the operating system
// ------------------------------------------------------------------------------------------

/// A file system mounted to see whether it is a root.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidate {
    pub device: String,
    pub fstab: Option<String>,
    pub os_release: Option<String>,
}

/// The root among the candidates: the one file system with `/etc/fstab` (and, when several
/// have one, `os-release`).
pub fn choose_root(layout: &Layout, candidates: &[Candidate]) -> Result<usize, Refusal> {
    let with_fstab: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].fstab.is_some())
        .collect();
    let full: Vec<usize> = with_fstab
        .iter()
        .copied()
        .filter(|&i| candidates[i].os_release.is_some())
        .collect();
    let pick = if full.is_empty() { with_fstab } else { full };
    match pick.as_slice() {
        [one] => Ok(*one),
        [] => Err(Refusal::NoLinux {
            found: layout.describe(),
        }),
        many => Err(Refusal::SeveralSystems(
            many.iter().map(|&i| candidates[i].device.clone()).collect(),
        )),
    }
}

/// `/etc/os-release`, the fields the conversion uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub id_like: Vec<String>,
    pub version_id: String,
    pub pretty_name: String,
}

impl OsRelease {
    pub fn parse(text: &str) -> OsRelease {
        let mut o = OsRelease::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
            match k {
                "ID" => o.id = v.to_ascii_lowercase(),
                "ID_LIKE" => {
                    o.id_like = v
                        .split_whitespace()
                        .map(|s| s.to_ascii_lowercase())
                        .collect()
                }
                "VERSION_ID" => o.version_id = v,
                "PRETTY_NAME" => o.pretty_name = v,
                _ => {}
            }
        }
        o
    }

    pub fn debian_family(&self) -> bool {
        self.id == "debian" || self.id_like.iter().any(|l| l == "debian")
    }

    pub fn name(&self) -> String {
        if !self.pretty_name.is_empty() {
            self.pretty_name.clone()
        } else if !self.id.is_empty() {
            format!("{} {}", self.id, self.version_id)
                .trim()
                .to_string()
        } else {
            "an unidentified Linux".into()
        }
    }
}

// ------------------------------------------------------------------------------------------
// fstab and device names
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    /// Index of the line in the file.
    pub line: usize,
    pub spec: String,
    pub mountpoint: String,
    pub fstype: String,
    pub options: String,
}

impl FstabEntry {
    fn has_option(&self, o: &str) -> bool {
        self.options.split(',').any(|x| x == o)
    }
}

/// `\040` and friends, as fstab escapes spaces.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Byte ranges of the whitespace-separated fields of a line.
fn fields(line: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, line.len()));
    }
    out
}

pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = fields(line).iter().map(|&(a, b)| &line[a..b]).collect();
            if f.len() < 2 {
                return None;
            }
            Some(FstabEntry {
                line: i,
                spec: unescape_octal(f[0]),
                mountpoint: unescape_octal(f[1]),
                fstype: f.get(2).copied().unwrap_or("auto").to_string(),
                options: f.get(3).copied().unwrap_or("defaults").to_string(),
            })
        })
        .collect()
}

/// Whether a device name depends on the controller or the hardware: kernel names
/// (`/dev/sda1`, `/dev/hda1`, `/dev/xvda1`, `/dev/vda1`, `/dev/nvme0n1p1`, `/dev/cciss/c0d0p1`,
/// `/dev/mmcblk0p1`) and `/dev/disk/by-id|by-path` links. LVM and md names and UUIDs, labels
/// and PARTUUIDs are stable.
pub fn hardware_bound(spec: &str) -> bool {
    kernel_disk_part(spec).is_some()
        || spec.starts_with("/dev/disk/by-id/")
        || spec.starts_with("/dev/disk/by-path/")
}

/// A kernel device name split into (disk index, partition number): `/dev/sdb3` → (1, Some(3)).
fn kernel_disk_part(spec: &str) -> Option<(u32, Option<u32>)> {
    let rest = spec.strip_prefix("/dev/")?;
    let letters = |s: &str| -> Option<(u32, Option<u32>)> {
        let (name, num) = s.split_at(s.find(|c: char| c.is_ascii_digit()).unwrap_or(s.len()));
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
            return None;
        }
        // sda..sdz, sdaa..: base-26 with a = 0.
        let mut idx: u32 = 0;
        for (k, b) in name.bytes().enumerate() {
            let v = u32::from(b - b'a');
            idx = if k == 0 {
                v
            } else {
                idx.checked_add(1)?.checked_mul(26)?.checked_add(v)?
            };
        }
        let part = if num.is_empty() {
            None
        } else {
            Some(num.parse().ok()?)
        };
        Some((idx, part))
    };
    for p in ["sd", "hd", "vd", "xvd"] {
        if let Some(s) = rest.strip_prefix(p) {
            return letters(s);
        }
    }
    let numbered = |s: &str, disk_sep: char, part_sep: char| -> Option<(u32, Option<u32>)> {
        let (d, p) = match s.split_once(part_sep) {
            Some((d, p)) => (d, Some(p.parse().ok()?)),
            None => (s, None),
        };
        let d = d.split(disk_sep).next()?;
        Some((d.parse().ok()?, p))
    };
    if let Some(s) = rest.strip_prefix("nvme") {
        // nvme0n1p2: controller 0, namespace 1, partition 2.
        return numbered(s, 'n', 'p');
    }
    if let Some(s) = rest.strip_prefix("mmcblk") {
        return numbered(s, 'x', 'p');
    }
    if let Some(s) = rest.strip_prefix("cciss/c0d") {
        return numbered(s, 'x', 'p');
    }
    None
}

/// What an fstab or crypttab source names, on this image's one disk.
pub fn resolve_spec<'a>(spec: &str, layout: &'a Layout) -> Option<&'a BlockDevice> {
    let by = |f: &dyn Fn(&BlockDevice) -> bool| layout.devices.iter().find(|d| f(d));
    let eq = |a: &str, b: &str| !a.is_empty() && a.eq_ignore_ascii_case(b);
    let tagged = |tag: &str, dir: &str| {
        spec.strip_prefix(tag)
            .or_else(|| spec.strip_prefix(dir))
            .map(|v| v.trim_matches('"').to_string())
    };
    if let Some(u) = tagged("UUID=", "/dev/disk/by-uuid/") {
        return by(&|d| eq(&d.uuid, &u));
    }
    if let Some(l) = tagged("LABEL=", "/dev/disk/by-label/") {
        return by(&|d| !d.label.is_empty() && d.label == unescape_octal(&l));
    }
    if let Some(p) = tagged("PARTUUID=", "/dev/disk/by-partuuid/") {
        return by(&|d| d.part.as_ref().is_some_and(|e| eq(&e.uuid, &p)));
    }
    if let Some(m) = spec.strip_prefix("/dev/mapper/") {
        return layout
            .lvs
            .iter()
            .find(|lv| mapper_name(lv).as_deref() == Some(m))
            .and_then(|lv| layout.device(lv));
    }
    if layout.lvs.iter().any(|lv| lv == spec) {
        return layout.device(spec);
    }
    // A kernel name or a by-id/by-path link: the image is the server's first disk.
    let part = if let Some((disk, part)) = kernel_disk_part(spec) {
        if disk != 0 {
            return None;
        }
        part
    } else if spec.starts_with("/dev/disk/by-id/") || spec.starts_with("/dev/disk/by-path/") {
        spec.rsplit_once("-part").and_then(|(_, n)| n.parse().ok())
    } else {
        return None;
    };
    match part {
        Some(n) => layout.device(&layout.partition_device(n)),
        None => layout.device(&layout.disk),
    }
}

/// `/dev/my-vg/root` → `my--vg-root`, as device-mapper names it.
fn mapper_name(lv: &str) -> Option<String> {
    let mut it = lv.strip_prefix("/dev/")?.splitn(2, '/');
    let (vg, name) = (it.next()?, it.next()?);
    Some(format!(
        "{}-{}",
        vg.replace('-', "--"),
        name.replace('-', "--")
    ))
}

/// File system types that name no local device.
const NOT_LOCAL: &[&str] = &[
    "proc",
    "sysfs",
    "devpts",
    "tmpfs",
    "devtmpfs",
    "none",
    "nfs",
    "nfs4",
    "cifs",
    "smbfs",
    "sshfs",
    "glusterfs",
    "ceph",
    "9p",
    "efivarfs",
    "securityfs",
    "cgroup",
    "cgroup2",
    "debugfs",
    "binfmt_misc",
    "mqueue",
    "hugetlbfs",
    "fusectl",
    "configfs",
    "autofs",
];

fn names_local_device(e: &FstabEntry) -> bool {
    let s = &e.spec;
    let looks_local = s.starts_with("/dev/")
        || s.starts_with("UUID=")
        || s.starts_with("LABEL=")
        || s.starts_with("PARTUUID=")
        || s.starts_with("PARTLABEL=");
    looks_local
        && !NOT_LOCAL.contains(&e.fstype.as_str())
        && !e.fstype.starts_with("fuse")
        && !e.has_option("bind")
        && !e.has_option("_netdev")
}

/// Where the guest's file systems are mounted in the appliance, and the local ones fstab
/// names that are not on this image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountPlan {
    /// (mount point, device), parents before children.
    pub mounts: Vec<(String, String)>,
    /// Local file systems fstab names that are not on this image.
    pub missing: Vec<FstabEntry>,
}

pub fn plan_mounts(root: &str, fstab: &[FstabEntry], layout: &Layout) -> MountPlan {
    let mut plan = MountPlan {
        mounts: vec![("/".to_string(), root.to_string())],
        missing: Vec::new(),
    };
    for e in fstab {
        if e.mountpoint == "/" || !e.mountpoint.starts_with('/') || e.fstype == "swap" {
            continue;
        }
        if !names_local_device(e) {
            continue;
        }
        let boot = e.mountpoint == "/boot" || e.mountpoint.starts_with("/boot/");
        if e.has_option("noauto") && !boot {
            continue;
        }
        match resolve_spec(&e.spec, layout) {
            Some(d) if !plan.mounts.iter().any(|(m, _)| *m == e.mountpoint) => {
                plan.mounts.push((e.mountpoint.clone(), d.device.clone()))
            }
            Some(_) => {}
            None => plan.missing.push(e.clone()),
        }
    }
    plan.mounts.sort_by(|a, b| {
        let depth = |m: &str| m.split('/').filter(|s| !s.is_empty()).count();
        depth(&a.0).cmp(&depth(&b.0)).then(a.0.cmp(&b.0))
    });
    plan
}

/// A rewritten guest file and what changed in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rewrite {
    pub content: String,
    pub changes: Vec<String>,
}

/// Join lines back, keeping whether the file ended with a newline.
fn join_lines(lines: &[String], original: &str) -> String {
    let mut s = lines.join("\n");
    if original.ends_with('\n') || original.is_empty() {
        s.push('\n');
    }
    s
}

/// `/etc/fstab` with hardware-bound device names replaced by `UUID=`, and `nofail` added to
/// local file systems that are not on this image (the VM would otherwise stop its boot
/// waiting for them). The root entry is the root that was found, whatever it names.
pub fn rewrite_fstab(
    text: &str,
    root: &str,
    layout: &Layout,
    warnings: &mut Vec<String>,
) -> Option<Rewrite> {
    let entries = parse_fstab(text);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut changes = Vec::new();
    // Insertions after edits: (index, comment) applied from the end.
    let mut notes: Vec<(usize, String)> = Vec::new();
    for e in &entries {
        let line = lines[e.line].clone();
        let f = fields(&line);
        let resolved = if e.mountpoint == "/" {
            layout.device(root)
        } else {
            resolve_spec(&e.spec, layout)
        };
        if hardware_bound(&e.spec) {
            match resolved.filter(|d| !d.uuid.is_empty()) {
                Some(d) => {
                    let (a, b) = f[0];
                    lines[e.line] = format!("{}UUID={}{}", &line[..a], d.uuid, &line[b..]);
                    notes.push((e.line, format!("# {MARK}: was {}", &line[a..b])));
                    changes.push(format!(
                        "/etc/fstab: {} by UUID={} instead of {}",
                        e.mountpoint, d.uuid, e.spec
                    ));
                }
                None if resolved.is_some() => warnings.push(format!(
                    "/etc/fstab: {} ({}) has no UUID; left as it was",
                    e.mountpoint, e.spec
                )),
                None => {}
            }
        }
        let local = names_local_device(e) || e.fstype == "swap";
        if resolved.is_none()
            && local
            && e.mountpoint != "/"
            && !e.has_option("nofail")
            && !e.has_option("noauto")
            && f.len() >= 4
        {
            let current = lines[e.line].clone();
            let f = fields(&current);
            let (a, b) = f[3];
            lines[e.line] = format!(
                "{}{},nofail{}",
                &current[..a],
                &current[a..b],
                &current[b..]
            );
            changes.push(format!(
                "/etc/fstab: {} ({}) is not on this image; marked nofail so the VM boots without it",
                e.mountpoint, e.spec
            ));
        }
    }
    if changes.is_empty() {
        return None;
    }
    notes.sort();
    for (i, note) in notes.into_iter().rev() {
        lines.insert(i, note);
    }
    Some(Rewrite {
        content: join_lines(&lines, text),
        changes,
    })
}

/// `/etc/crypttab` with hardware-bound source devices replaced by `UUID=`.
pub fn rewrite_crypttab(text: &str, layout: &Layout) -> Option<Rewrite> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut changes = Vec::new();
    for line in lines.iter_mut() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let f = fields(line);
        if f.len() < 2 {
            continue;
        }
        let (a, b) = f[1];
        let spec = line[a..b].to_string();
        if !hardware_bound(&spec) {
            continue;
        }
        if let Some(d) = resolve_spec(&spec, layout).filter(|d| !d.uuid.is_empty()) {
            let name = line[f[0].0..f[0].1].to_string();
            *line = format!("{}UUID={}{}", &line[..a], d.uuid, &line[b..]);
            changes.push(format!(
                "/etc/crypttab: {name} by UUID={} instead of {spec}",
                d.uuid
            ));
        }
    }
    (!changes.is_empty()).then(|| Rewrite {
        content: join_lines(&lines, text),
        changes,
    })
}

/// Replace hardware-bound `KEY=DEVICE` words (`root=/dev/sda1`) in a value.
fn rewrite_device_words(value: &str, keys: &[&str], layout: &Layout) -> (String, Vec<String>) {
    let mut out = Vec::new();
    let mut replaced = Vec::new();
    for w in value.split(' ') {
        let mut word = w.to_string();
        for k in keys {
            if let Some(dev) = w.strip_prefix(k).and_then(|r| r.strip_prefix('=')) {
                if hardware_bound(dev) {
                    if let Some(d) = resolve_spec(dev, layout).filter(|d| !d.uuid.is_empty()) {
                        word = format!("{k}=UUID={}", d.uuid);
                        replaced.push(format!("{k}={dev} → {word}"));
                    }
                }
            }
        }
        out.push(word);
    }
    (out.join(" "), replaced)
}

/// `/etc/default/grub`: root by UUID (`GRUB_DISABLE_LINUX_UUID` false) and no kernel device
/// names in the command line.
pub fn rewrite_default_grub(text: &str, layout: &Layout) -> Option<Rewrite> {
    let mut lines = Vec::new();
    let mut changes = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        let Some((key, value)) = t.split_once('=') else {
            lines.push(line.to_string());
            continue;
        };
        let unquoted = value.trim().trim_matches('"').trim_matches('\'');
        if key == "GRUB_DISABLE_LINUX_UUID" && unquoted == "true" {
            lines.push(format!("# {MARK}: the kernel finds its root by UUID; was:"));
            lines.push(format!("#{line}"));
            lines.push("GRUB_DISABLE_LINUX_UUID=false".into());
            changes.push(
                "/etc/default/grub: GRUB_DISABLE_LINUX_UUID=false (was true): the kernel finds its root by UUID"
                    .into(),
            );
            continue;
        }
        if key == "GRUB_CMDLINE_LINUX" || key == "GRUB_CMDLINE_LINUX_DEFAULT" {
            let (new, replaced) = rewrite_device_words(unquoted, &["root", "resume"], layout);
            if !replaced.is_empty() {
                lines.push(format!("# {MARK}: was {line}"));
                lines.push(format!("{key}=\"{new}\""));
                changes.push(format!("/etc/default/grub: {key}: {}", replaced.join(", ")));
                continue;
            }
        }
        lines.push(line.to_string());
    }
    (!changes.is_empty()).then(|| Rewrite {
        content: join_lines(&lines, text),
        changes,
    })
}

/// `/etc/initramfs-tools/conf.d/resume`: `RESUME=/dev/sda5` by UUID.
pub fn rewrite_resume(text: &str, layout: &Layout) -> Option<Rewrite> {
    let mut lines = Vec::new();
    let mut changes = Vec::new();
    for line in text.lines() {
        if let Some(dev) = line.trim().strip_prefix("RESUME=") {
            let dev = dev.trim_matches('"');
            if hardware_bound(dev) {
                if let Some(d) = resolve_spec(dev, layout).filter(|d| !d.uuid.is_empty()) {
                    lines.push(format!("# {MARK}: was {line}"));
                    lines.push(format!("RESUME=UUID={}", d.uuid));
                    changes.push(format!(
                        "/etc/initramfs-tools/conf.d/resume: RESUME=UUID={} instead of {dev}",
                        d.uuid
                    ));
                    continue;
                }
            }
        }
        lines.push(line.to_string());
    }
    (!changes.is_empty()).then(|| Rewrite {
        content: join_lines(&lines, text),
        changes,
    })
}

/// `/etc/initramfs-tools/modules` with the virtio drivers listed (those already listed are
/// not repeated). `None` when all are there.
pub fn add_initramfs_modules(current: Option<&str>) -> Option<(String, Vec<&'static str>)> {
    let text = current.unwrap_or("");
    let listed: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| !w.starts_with('#'))
        .collect();
    let missing: Vec<&'static str> = VIRTIO_MODULES
        .iter()
        .copied()
        .filter(|m| !listed.contains(m))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "# {MARK}: the drivers of a VM's disk and NIC, so the initramfs finds its root on virtio\n"
    ));
    for m in &missing {
        out.push_str(m);
        out.push('\n');
    }
    Some((out, missing))
}

// ------------------------------------------------------------------------------------------
// Network
// ------------------------------------------------------------------------------------------

/// Whether an interface name is a hardware NIC's (`ens5`, `enp3s0`, `eth0`, `em1`, `p2p1`),
/// as opposed to `lo`, bridges, bonds, VLANs and aliases.
pub fn is_hardware_nic(name: &str) -> bool {
    if name.contains('.') || name.contains(':') || name.contains('*') || name.starts_with('/') {
        return false;
    }
    let p2p = name
        .strip_prefix('p')
        .and_then(|r| r.split_once('p'))
        .is_some_and(|(a, _)| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()));
    name.starts_with("en") || name.starts_with("eth") || name.starts_with("em") || p2p
}

const IFUPDOWN_STANZAS: &[&str] = &[
    "iface",
    "mapping",
    "auto",
    "source",
    "source-directory",
    "rename",
    "no-auto-down",
    "no-scripts",
];

fn is_stanza_start(word: &str) -> bool {
    IFUPDOWN_STANZAS.contains(&word) || word.starts_with("allow-")
}

/// Options of a non-NIC stanza that name NICs (bridges, bonds).
const PORT_OPTIONS: &[&str] = &[
    "bridge_ports",
    "bridge-ports",
    "bond-slaves",
    "bond_slaves",
    "slaves",
    "vlan-raw-device",
    "vlan_raw_device",
];

/// An ifupdown file with every stanza of a hardware NIC commented out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InterfacesRewrite {
    pub content: String,
    /// The NICs whose configuration was commented out, in order.
    pub nics: Vec<String>,
    /// What was commented out, for the record (`ens5 inet dhcp`, `ens5 inet static 192.0.2.5/24`).
    pub described: Vec<String>,
    pub warnings: Vec<String>,
}

/// Hardware NIC names an ifupdown file configures, in order.
pub fn ifupdown_nics(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let names: &[&str] = match w.first() {
            Some(&"iface") => w.get(1..2).unwrap_or(&[]),
            Some(k) if *k == "auto" || k.starts_with("allow-") => &w[1..],
            _ => &[],
        };
        for n in names {
            if is_hardware_nic(n) && !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
    }
    out
}

/// Comment out the stanzas of hardware NICs in an ifupdown file (`auto`/`allow-*` words,
/// `iface` blocks with their options). `None` when there are none.
pub fn comment_ifupdown_nics(text: &str) -> Option<InterfacesRewrite> {
    let mut out = InterfacesRewrite::default();
    let mut lines: Vec<String> = Vec::new();
    let mut in_nic_stanza = false;
    let mut header_done = false;
    let mut current: Option<usize> = None; // index into out.described
    let header = format!(
        "# {MARK}: the lines below configured the server's NIC by its hardware name, which the \
         VM's virtio NIC does not have; kept for reference"
    );
    for line in text.lines() {
        let t = line.trim_start();
        let w: Vec<&str> = t.split_whitespace().collect();
        if t.starts_with('#') || w.is_empty() {
            lines.push(line.to_string());
            continue;
        }
        let mut comment = |lines: &mut Vec<String>| {
            if !header_done {
                lines.push(header.clone());
                header_done = true;
            }
            lines.push(format!("#{line}"));
        };
        if is_stanza_start(w[0]) {
            in_nic_stanza = false;
            current = None;
            match w[0] {
                "iface" if w.get(1).is_some_and(|n| is_hardware_nic(n)) => {
                    in_nic_stanza = true;
                    let name = w[1].to_string();
                    if !out.nics.contains(&name) {
                        out.nics.push(name);
                    }
                    out.described.push(w[1..].join(" "));
                    current = Some(out.described.len() - 1);
                    comment(&mut lines);
                }
                k if k == "auto" || k.starts_with("allow-") || k == "no-auto-down" => {
                    let (nics, others): (Vec<&str>, Vec<&str>) =
                        w[1..].iter().partition(|n| is_hardware_nic(n));
                    if nics.is_empty() {
                        lines.push(line.to_string());
                    } else {
                        for n in &nics {
                            if !out.nics.iter().any(|o| o == n) {
                                out.nics.push(n.to_string());
                            }
                        }
                        comment(&mut lines);
                        if !others.is_empty() {
                            lines.push(format!("{k} {}", others.join(" ")));
                        }
                    }
                }
                _ => lines.push(line.to_string()),
            }
            continue;
        }
        if in_nic_stanza {
            if let (Some(i), Some(&"address")) = (current, w.first()) {
                if let Some(a) = w.get(1) {
                    out.described[i].push(' ');
                    out.described[i].push_str(a);
                }
            }
            comment(&mut lines);
            continue;
        }
        if PORT_OPTIONS.contains(&w[0]) && w[1..].iter().any(|n| is_hardware_nic(n)) {
            out.warnings.push(format!(
                "the network configuration names the server's NICs in `{}`; left as it was: check it after the conversion, or convert with --network keep",
                t.trim()
            ));
        }
        lines.push(line.to_string());
    }
    if out.nics.is_empty() {
        return None;
    }
    out.content = join_lines(&lines, text);
    Some(out)
}

/// The stanza that brings up any Ethernet NIC with DHCP (ifupdown's name patterns: `auto`
/// is expanded to the NICs the kernel knows when `networking.service` runs, and the virtio
/// driver is in the initramfs, so the NIC exists by then).
pub fn ifupdown_dhcp_stanza(inet6: bool) -> String {
    let mut s = format!(
        "\n# {MARK}: any Ethernet NIC of the VM (en*, eth*) comes up with DHCP\n\
         auto /en*=vnic /eth*=vnic\n\
         iface vnic inet dhcp\n"
    );
    if inet6 {
        s.push_str("iface vnic inet6 auto\n");
    }
    s
}

/// A systemd-networkd file that brings up any Ethernet NIC with DHCP.
pub const NETWORKD_DHCP: &str = "# corral v2v: any Ethernet NIC of the VM comes up with DHCP\n\
[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n";

/// A netplan file that brings up any Ethernet NIC with DHCP.
pub const NETPLAN_DHCP: &str = "# corral v2v: any Ethernet NIC of the VM comes up with DHCP\n\
network:\n  version: 2\n  ethernets:\n    corral-en:\n      match:\n        name: \"en*\"\n      dhcp4: true\n    corral-eth:\n      match:\n        name: \"eth*\"\n      dhcp4: true\n";

/// A `.link` file giving the VM's NIC with `mac` the name `name`.
pub fn keep_name_link(name: &str, mac: &str) -> String {
    format!(
        "# {MARK}: the VM's NIC with this MAC address takes the name the server's NIC had,\n\
         # so the network configuration that names it keeps working\n\
         [Match]\nMACAddress={mac}\n\n[Link]\nName={name}\n"
    )
}

/// `Name=` values of networkd `[Match]` sections that are hardware NIC names.
pub fn networkd_nics(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_match = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_match = t == "[Match]";
            continue;
        }
        if in_match {
            if let Some(v) = t.strip_prefix("Name=") {
                out.extend(
                    v.split_whitespace()
                        .filter(|n| is_hardware_nic(n))
                        .map(str::to_string),
                );
            }
        }
    }
    out
}

/// Ethernet names a netplan file configures (keys under `ethernets:`, and `set-name:`).
pub fn netplan_nics(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut eth_indent: Option<usize> = None;
    let mut key_indent: Option<usize> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let indent = line.len() - t.len();
        if t.starts_with("ethernets:") {
            eth_indent = Some(indent);
            key_indent = None;
            continue;
        }
        if let Some(e) = eth_indent {
            if indent <= e {
                eth_indent = None;
                continue;
            }
            let ki = *key_indent.get_or_insert(indent);
            if indent == ki {
                if let Some(k) = t.strip_suffix(':') {
                    if is_hardware_nic(k) {
                        out.push(k.to_string());
                    }
                }
            } else if let Some(v) = t.strip_prefix("set-name:") {
                let v = v.trim().trim_matches('"');
                if is_hardware_nic(v) {
                    out.push(v.to_string());
                }
            }
        }
    }
    out
}

/// `70-persistent-net.rules` with its rules commented out: they name NICs by the old MAC
/// addresses.
pub fn comment_persistent_net(text: &str) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if !l.trim_start().starts_with('#') && l.contains("SUBSYSTEM==\"net\"") {
                changed = true;
                format!("#{l}")
            } else {
                l.to_string()
            }
        })
        .collect();
    changed.then(|| {
        let mut s =
            format!("# {MARK}: these rules named the server's NICs by their MAC addresses\n");
        s.push_str(&join_lines(&lines, text));
        s
    })
}

// ------------------------------------------------------------------------------------------
// What was read from the mounted guest
// ------------------------------------------------------------------------------------------

/// What the facts script found in the mounted guest (`facts.rs` parses its output).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestFiles {
    /// Small configuration files that exist, by absolute path.
    pub files: BTreeMap<String, String>,
    /// Tools found, by name (`update-initramfs` → `/usr/sbin/update-initramfs`).
    pub tools: BTreeMap<String, String>,
    /// Paths of interest that exist (`/usr/lib/grub/i386-pc`, `/lib/systemd/systemd-networkd`).
    pub exists: BTreeSet<String>,
    /// Installed kernels (from `/boot/vmlinuz-*`) and whether each has each virtio driver.
    pub kernels: BTreeMap<String, BTreeMap<String, bool>>,
    /// Enabled units: the symlinks under `/etc/systemd/system/*.wants/`.
    pub units: Vec<String>,
    /// `.efi` files under `/boot/efi/EFI/`.
    pub efi: Vec<String>,
    /// The disk's boot sector holds GRUB's boot code.
    pub mbr_grub: bool,
}

impl GuestFiles {
    fn file(&self, p: &str) -> Option<&str> {
        self.files.get(p).map(String::as_str)
    }
    fn has(&self, p: &str) -> bool {
        self.exists.contains(p)
    }
    fn has_any(&self, ps: &[&str]) -> bool {
        ps.iter().any(|p| self.has(p))
    }
    fn files_under<'a>(
        &'a self,
        dir: &'a str,
        ext: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a String)> + 'a {
        self.files
            .iter()
            .filter(move |(p, _)| p.starts_with(dir) && p.ends_with(ext))
    }
    fn unit_enabled(&self, unit: &str) -> bool {
        self.units
            .iter()
            .any(|u| u.rsplit('/').next() == Some(unit))
    }
}

/// Everything the plan is made from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestFacts {
    pub layout: Layout,
    /// The disk's name for commands run in the guest (the kernel's, not the API's).
    pub guest_disk: String,
    /// The root file system's device.
    pub root: String,
    pub mounts: MountPlan,
    pub files: GuestFiles,
}

// ------------------------------------------------------------------------------------------
// The plan
// ------------------------------------------------------------------------------------------

/// One thing the conversion does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write a guest file (replacing it).
    Write {
        path: String,
        content: String,
    },
    /// Remove a guest file or symlink.
    Remove {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Copy {
        from: String,
        to: String,
    },
    /// A command run in the guest by its own `/bin/sh`; it must exit 0.
    Run {
        script: String,
    },
    /// Move the backup GPT to the end of the grown disk.
    ExpandGpt {
        disk: String,
    },
    /// Move a partition's end to `end_sector` (inclusive).
    ResizePartition {
        disk: String,
        number: u32,
        end_sector: u64,
    },
    ResizePv {
        device: String,
    },
    /// Extend an LV over all free space of its volume group.
    ExtendLv {
        lv: String,
    },
    /// Check and grow an (unmounted) ext2/3/4 file system to fill its device.
    GrowExt {
        device: String,
    },
    /// Grow a mounted XFS or btrfs file system.
    GrowMounted {
        mountpoint: String,
        fstype: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    /// What the record says once the step succeeded, one line per change.
    pub changes: Vec<String>,
}

/// The root cannot grow where it is (another partition follows it): a copy that moves the
/// partitions after it is needed (`virt-resize --expand PARTITION [--lv-expand LV]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandByCopy {
    /// The partition to expand (the root's, or the root LV's physical volume).
    pub partition: String,
    pub lv: Option<String>,
    /// Why it cannot grow in place, for the record.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub os: OsRelease,
    pub firmware: Firmware,
    /// Growth done with the guest's file systems unmounted, before the other steps.
    pub grow_unmounted: Vec<Step>,
    /// Everything else, with the guest mounted, in order.
    pub steps: Vec<Step>,
    pub expand_by_copy: Option<ExpandByCopy>,
    pub warnings: Vec<String>,
}

fn write(path: &str, content: String, changes: Vec<String>) -> Step {
    Step {
        action: Action::Write {
            path: path.into(),
            content,
        },
        changes,
    }
}

/// Units for hardware a VM does not have, and why each is disabled.
pub const HARDWARE_UNITS: &[(&str, &str)] = &[
    ("open-vm-tools.service", "VMware tools"),
    ("vmtoolsd.service", "VMware tools"),
    ("vgauth.service", "VMware guest authentication"),
    ("hv-kvp-daemon.service", "Hyper-V key-value exchange"),
    ("hv-vss-daemon.service", "Hyper-V snapshots"),
    ("hv-fcopy-daemon.service", "Hyper-V file copy"),
    ("vboxadd.service", "VirtualBox guest additions"),
    ("vboxadd-service.service", "VirtualBox guest additions"),
    ("xe-linux-distribution.service", "XenServer guest tools"),
    (
        "smartmontools.service",
        "disk SMART monitoring; virtual disks have none",
    ),
    (
        "smartd.service",
        "disk SMART monitoring; virtual disks have none",
    ),
    ("ipmievd.service", "IPMI events; a VM has no BMC"),
    ("openipmi.service", "IPMI; a VM has no BMC"),
    (
        "mcelog.service",
        "machine-check logging of the physical CPUs",
    ),
];

/// BIOS or UEFI, as the source booted: an EFI system partition holding a loader, with GRUB's
/// EFI platform installed (or no GRUB in the boot sector), is UEFI; GRUB in the boot sector
/// or its BIOS platform installed is BIOS.
pub fn detect_firmware(layout: &Layout, files: &GuestFiles) -> Result<Firmware, Refusal> {
    let efi_loader = layout.has_esp() && !files.efi.is_empty();
    let grub_efi = files.has("/usr/lib/grub/x86_64-efi");
    let grub_pc = files.has("/usr/lib/grub/i386-pc");
    if efi_loader && (grub_efi || !files.mbr_grub) {
        return Ok(Firmware::Uefi);
    }
    if files.mbr_grub || grub_pc {
        return Ok(Firmware::Bios);
    }
    Err(Refusal::Unsupported(
        "no boot loader found: neither GRUB in the disk's boot sector nor an EFI system partition holding a loader".into(),
    ))
}

/// The fallback loader path of UEFI firmware with empty boot variables (a new VM's NVRAM).
const EFI_FALLBACK: &str = "/boot/efi/EFI/BOOT/BOOTX64.EFI";

/// Steps that make the firmware's fallback path load the distribution's loader: copies of
/// `shimx64.efi` (as `BOOTX64.EFI`), `grubx64.efi`, `mmx64.efi` and the `grub.cfg` stub from
/// the distribution's directory into `EFI/BOOT`. Empty when the fallback loader exists.
fn efi_fallback_steps(files: &GuestFiles, os: &OsRelease, warnings: &mut Vec<String>) -> Vec<Step> {
    if files
        .efi
        .iter()
        .any(|f| f.eq_ignore_ascii_case(EFI_FALLBACK))
    {
        return Vec::new();
    }
    // Directories under EFI/ that hold a loader, the distribution's first.
    let mut dirs: Vec<&str> = files
        .efi
        .iter()
        .filter_map(|f| f.rsplit_once('/').map(|(d, _)| d))
        .filter(|d| !d.eq_ignore_ascii_case("/boot/efi/EFI/BOOT"))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs.sort_by_key(|d| !d.to_ascii_lowercase().ends_with(&format!("/{}", os.id)));
    let has = |dir: &str, name: &str| {
        files
            .efi
            .iter()
            .find(|f| f.eq_ignore_ascii_case(&format!("{dir}/{name}")))
            .cloned()
    };
    for dir in dirs {
        let shim = has(dir, "shimx64.efi");
        let grub = has(dir, "grubx64.efi");
        let Some(loader) = shim.clone().or(grub) else {
            continue;
        };
        let mut steps = vec![Step {
            action: Action::Mkdir {
                path: "/boot/efi/EFI/BOOT".into(),
            },
            changes: Vec::new(),
        }];
        steps.push(Step {
            action: Action::Copy {
                from: loader.clone(),
                to: EFI_FALLBACK.into(),
            },
            changes: vec![format!(
                "{EFI_FALLBACK}: a copy of {loader}, so the VM's firmware (whose boot variables are empty) starts it"
            )],
        });
        if shim.is_some() {
            for name in ["grubx64.efi", "mmx64.efi"] {
                if let Some(f) = has(dir, name) {
                    steps.push(Step {
                        action: Action::Copy {
                            from: f.clone(),
                            to: format!("/boot/efi/EFI/BOOT/{name}"),
                        },
                        changes: vec![format!(
                            "/boot/efi/EFI/BOOT/{name}: a copy of {f}, loaded by the shim"
                        )],
                    });
                }
            }
        }
        // GRUB's EFI image reads grub.cfg from the directory it was started from.
        steps.push(Step {
            action: Action::Run {
                script: format!(
                    "if [ -f '{dir}/grub.cfg' ] && [ ! -f /boot/efi/EFI/BOOT/grub.cfg ]; then cp '{dir}/grub.cfg' /boot/efi/EFI/BOOT/grub.cfg; fi"
                ),
            },
            changes: vec![format!("/boot/efi/EFI/BOOT/grub.cfg: a copy of {dir}/grub.cfg (if there was one)")],
        });
        return steps;
    }
    warnings.push(
        "the EFI system partition has no fallback loader (EFI/BOOT/BOOTX64.EFI) and no shimx64.efi or grubx64.efi to copy there; the VM's firmware may not find a loader".into(),
    );
    Vec::new()
}

/// Growth into new disk space (`--disk-size`): in place when the root (or the physical volume
/// under the root LV) is the disk's last partition; otherwise a copy that moves partitions.
pub fn plan_growth(
    layout: &Layout,
    root: &str,
    mounts: &MountPlan,
) -> (Vec<Step>, Vec<Step>, Option<ExpandByCopy>, Vec<String>) {
    let mut unmounted = Vec::new();
    let mut mounted = Vec::new();
    let mut warnings = Vec::new();
    let Some(root_dev) = layout.device(root) else {
        return (unmounted, mounted, None, warnings);
    };
    // The partition holding the root: the root itself, or its LV's one physical volume.
    let (part_dev, lv): (Option<&BlockDevice>, Option<String>) = if root_dev.part.is_some() {
        (Some(root_dev), None)
    } else if layout.lvs.iter().any(|l| l == root) {
        let vg = root
            .strip_prefix("/dev/")
            .and_then(|r| r.split('/').next())
            .unwrap_or("");
        let pvs: Vec<&str> = layout
            .pvs
            .iter()
            .filter(|(_, g)| g == vg)
            .map(|(p, _)| p.as_str())
            .collect();
        match pvs.as_slice() {
            [one] => (layout.device(one), Some(root.to_string())),
            _ => {
                warnings.push(format!(
                    "the root LV's volume group {vg} spans {} physical volumes; the new space was left unused",
                    pvs.len()
                ));
                return (unmounted, mounted, None, warnings);
            }
        }
    } else {
        (None, None)
    };
    let Some(part_dev) = part_dev else {
        warnings.push(format!(
            "the root file system {root} is not on a partition; the new space was left unused"
        ));
        return (unmounted, mounted, None, warnings);
    };
    let Some(part) = part_dev.part.as_ref() else {
        return (unmounted, mounted, None, warnings);
    };
    let last = layout
        .last_partition()
        .is_some_and(|(d, _)| d.device == part_dev.device);
    let logical = layout.table == "dos" && part.number > 4;
    if !last || logical {
        let reason = if logical {
            format!("{} is a logical partition", part_dev.device)
        } else {
            format!("{} is followed by another partition", part_dev.device)
        };
        return (
            unmounted,
            mounted,
            Some(ExpandByCopy {
                partition: part_dev.device.clone(),
                lv,
                reason,
            }),
            warnings,
        );
    }
    let gpt = layout.table == "gpt";
    // The last usable sector: before the backup GPT (33 sectors) on GPT disks.
    let end_sector = layout.disk_sectors.saturating_sub(if gpt { 34 } else { 1 });
    if end_sector <= part.end().saturating_sub(1) {
        return (unmounted, mounted, None, warnings);
    }
    if gpt {
        unmounted.push(Step {
            action: Action::ExpandGpt {
                disk: layout.disk.clone(),
            },
            changes: Vec::new(),
        });
    }
    let grown_mib = ((end_sector + 1 - part.end()) * 512) >> 20;
    unmounted.push(Step {
        action: Action::ResizePartition {
            disk: layout.disk.clone(),
            number: part.number,
            end_sector,
        },
        changes: vec![format!(
            "grew partition {} by {grown_mib} MiB to the end of the disk",
            part_dev.device
        )],
    });
    if let Some(lv) = &lv {
        unmounted.push(Step {
            action: Action::ResizePv {
                device: part_dev.device.clone(),
            },
            changes: vec![format!("grew LVM physical volume {}", part_dev.device)],
        });
        unmounted.push(Step {
            action: Action::ExtendLv { lv: lv.clone() },
            changes: vec![format!("extended logical volume {lv} over the new space")],
        });
    }
    match root_dev.fstype.as_str() {
        "ext2" | "ext3" | "ext4" => unmounted.push(Step {
            action: Action::GrowExt {
                device: root.to_string(),
            },
            changes: vec![format!(
                "grew the root file system ({}, {root})",
                root_dev.fstype
            )],
        }),
        t @ ("xfs" | "btrfs") => {
            let mp = mounts
                .mounts
                .iter()
                .find(|(_, d)| d == root)
                .map(|(m, _)| m.clone())
                .unwrap_or_else(|| "/".into());
            mounted.push(Step {
                action: Action::GrowMounted {
                    mountpoint: mp,
                    fstype: t.to_string(),
                },
                changes: vec![format!("grew the root file system ({t}, {root})")],
            })
        }
        t => warnings.push(format!(
            "the root file system ({t}) cannot be grown here; the partition was grown"
        )),
    }
    (unmounted, mounted, None, warnings)
}

/// The whole plan. Refuses what it cannot convert before anything is changed.
pub fn plan(facts: &GuestFacts, opts: &Options) -> Result<Plan, Refusal> {
    let f = &facts.files;
    let layout = &facts.layout;
    let os = f
        .file("/etc/os-release")
        .or_else(|| f.file("/usr/lib/os-release"))
        .map(OsRelease::parse)
        .unwrap_or_default();
    if !os.debian_family() {
        return Err(Refusal::Unsupported(format!(
            "{} is not converted: only Debian-family guests (Debian, Ubuntu; initramfs-tools and GRUB 2) are supported so far",
            os.name()
        )));
    }
    let Some(update_initramfs) = f.tools.get("update-initramfs") else {
        return Err(Refusal::Unsupported(format!(
            "{} has no update-initramfs (initramfs-tools); its initramfs cannot be rebuilt with the virtio drivers",
            os.name()
        )));
    };
    // os-prober would find the appliance's own disk (GRUB 2.06 disables it by default;
    // older guests' GRUB does not).
    let Some(grub_mkconfig) = f
        .tools
        .get("update-grub")
        .map(|p| format!("GRUB_DISABLE_OS_PROBER=true {p}"))
        .or_else(|| {
            f.tools
                .get("grub-mkconfig")
                .map(|p| format!("GRUB_DISABLE_OS_PROBER=true {p} -o /boot/grub/grub.cfg"))
        })
    else {
        return Err(Refusal::Unsupported(
            "the guest has no GRUB 2 (update-grub or grub-mkconfig); only GRUB 2 boot loaders are converted".into(),
        ));
    };
    if f.kernels.is_empty() {
        return Err(Refusal::Unsupported(
            "no kernel found in /boot (vmlinuz-*)".into(),
        ));
    }
    let virtio_ready = |m: &BTreeMap<String, bool>| {
        ["virtio_blk", "virtio_pci"]
            .iter()
            .all(|d| m.get(*d).copied().unwrap_or(false))
    };
    let ready: Vec<&String> = f
        .kernels
        .iter()
        .filter(|(_, m)| virtio_ready(m))
        .map(|(k, _)| k)
        .collect();
    if ready.is_empty() {
        return Err(Refusal::Unsupported(format!(
            "no installed kernel has the virtio disk drivers (virtio_blk, virtio_pci): {}",
            f.kernels.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let firmware = detect_firmware(layout, f)?;
    let mut warnings = Vec::new();
    for (k, m) in &f.kernels {
        if !virtio_ready(m) {
            warnings.push(format!(
                "kernel {k} has no virtio disk driver; it will not boot as a VM (choose another in GRUB's menu)"
            ));
        }
    }

    let (grow_unmounted, grow_mounted, expand_by_copy, grow_warnings) = if opts.grow {
        plan_growth(layout, &facts.root, &facts.mounts)
    } else {
        Default::default()
    };
    warnings.extend(grow_warnings);
    let mut steps = grow_mounted;

    // Directories left out of the copy: their files have no data; emptied first.
    for dir in &opts.emptied {
        if exclude_path_ok(dir).is_err() {
            continue;
        }
        steps.push(Step {
            action: Action::Run {
                script: format!("[ ! -d '{dir}' ] || find '{dir}' -xdev -mindepth 1 -delete"),
            },
            changes: vec![format!(
                "emptied {dir}: its contents were left out of the copy (--exclude)"
            )],
        });
    }

    // Device names.
    if let Some(t) = f.file("/etc/fstab") {
        if let Some(r) = rewrite_fstab(t, &facts.root, layout, &mut warnings) {
            steps.push(write("/etc/fstab", r.content, r.changes));
        }
    }
    if let Some(r) = f
        .file("/etc/crypttab")
        .and_then(|t| rewrite_crypttab(t, layout))
    {
        steps.push(write("/etc/crypttab", r.content, r.changes));
    }
    const RESUME: &str = "/etc/initramfs-tools/conf.d/resume";
    if let Some(r) = f.file(RESUME).and_then(|t| rewrite_resume(t, layout)) {
        steps.push(write(RESUME, r.content, r.changes));
    }
    if let Some(r) = f
        .file("/etc/default/grub")
        .and_then(|t| rewrite_default_grub(t, layout))
    {
        steps.push(write("/etc/default/grub", r.content, r.changes));
    }
    if f.files.contains_key("/boot/grub/device.map") {
        steps.push(Step {
            action: Action::Remove {
                path: "/boot/grub/device.map".into(),
            },
            changes: vec![
                "removed /boot/grub/device.map: it mapped GRUB's disks to the server's devices"
                    .into(),
            ],
        });
    }

    // Drivers.
    const MODULES: &str = "/etc/initramfs-tools/modules";
    if let Some((content, added)) = add_initramfs_modules(f.file(MODULES)) {
        steps.push(write(
            MODULES,
            content,
            vec![format!("{MODULES}: added {}", added.join(", "))],
        ));
    }

    // Network.
    network_steps(f, opts, &mut steps, &mut warnings)?;

    // Services for hardware a VM does not have.
    for (unit, why) in HARDWARE_UNITS {
        let links: Vec<&String> = f
            .units
            .iter()
            .filter(|u| u.rsplit('/').next() == Some(*unit))
            .collect();
        for (i, l) in links.iter().enumerate() {
            steps.push(Step {
                action: Action::Remove {
                    path: l.to_string(),
                },
                changes: if i == 0 {
                    vec![format!("disabled {unit} ({why})")]
                } else {
                    Vec::new()
                },
            });
        }
    }

    // The guest's own tools, last: they read what was written above.
    let kernels: Vec<&String> = f.kernels.keys().collect();
    steps.push(Step {
        action: Action::Run {
            script: format!("{update_initramfs} -u -k all"),
        },
        changes: vec![format!(
            "rebuilt the initramfs of {} with the guest's update-initramfs (virtio drivers included)",
            kernels
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )],
    });
    match firmware {
        Firmware::Bios => {
            if let (Some(gi), true) = (f.tools.get("grub-install"), f.has("/usr/lib/grub/i386-pc"))
            {
                steps.push(Step {
                    action: Action::Run {
                        script: format!("{gi} --target=i386-pc {}", facts.guest_disk),
                    },
                    changes: vec!["reinstalled GRUB (i386-pc) in the disk's boot sector with the guest's grub-install".into()],
                });
            } else {
                warnings.push(
                    "GRUB's BIOS platform files are not installed in the guest; the boot sector was left as it was".into(),
                );
            }
        }
        _ => steps.extend(efi_fallback_steps(f, &os, &mut warnings)),
    }
    steps.push(Step {
        action: Action::Run {
            script: grub_mkconfig.clone(),
        },
        changes: vec![
            "regenerated /boot/grub/grub.cfg with the guest's GRUB (root by UUID)".into(),
        ],
    });
    Ok(Plan {
        os,
        firmware,
        grow_unmounted,
        steps,
        expand_by_copy,
        warnings,
    })
}

fn network_steps(
    f: &GuestFiles,
    opts: &Options,
    steps: &mut Vec<Step>,
    warnings: &mut Vec<String>,
) -> Result<(), Refusal> {
    const INTERFACES: &str = "/etc/network/interfaces";
    const PERSISTENT: &str = "/etc/udev/rules.d/70-persistent-net.rules";
    let ifupdown_files: Vec<(&String, &String)> = f
        .files
        .iter()
        .filter(|(p, _)| *p == INTERFACES || p.starts_with("/etc/network/interfaces.d/"))
        .collect();
    let networkd_enabled = f.unit_enabled("systemd-networkd.service");
    let networkd_files: Vec<(&String, &String)> =
        f.files_under("/etc/systemd/network/", ".network").collect();
    let netplan_files: Vec<(&String, &String)> = f.files_under("/etc/netplan/", ".yaml").collect();

    if opts.network == NetworkMode::Keep {
        let mut names: Vec<String> = Vec::new();
        let mut add = |n: Vec<String>| {
            for x in n {
                if !names.contains(&x) {
                    names.push(x);
                }
            }
        };
        for (_, t) in &ifupdown_files {
            add(ifupdown_nics(t));
        }
        for (_, t) in &networkd_files {
            add(networkd_nics(t));
        }
        for (_, t) in &netplan_files {
            add(netplan_nics(t));
        }
        if names.is_empty() {
            warnings.push(
                "--network keep: the network configuration names no NIC; nothing to keep".into(),
            );
            return Ok(());
        }
        if !f.has_any(&[
            "/lib/systemd/systemd-udevd",
            "/usr/lib/systemd/systemd-udevd",
        ]) {
            return Err(Refusal::Unsupported(
                "--network keep names the VM's NICs with systemd .link files, and the guest has no systemd-udevd; convert with --network dhcp".into(),
            ));
        }
        for (i, name) in names.iter().enumerate() {
            let Some(mac) = opts.nic_macs.get(i) else {
                warnings.push(format!(
                    "--network keep: the VM has {} NIC(s); {name} has no NIC to take its name",
                    opts.nic_macs.len()
                ));
                continue;
            };
            let path = format!("/etc/systemd/network/10-corral-{name}.link");
            steps.push(write(
                &path,
                keep_name_link(name, mac),
                vec![format!(
                    "{path}: the VM's NIC {mac} is named {name}, as the server's NIC was"
                )],
            ));
        }
        return Ok(());
    }

    let mut rewrote = false;
    let mut inet6 = false;
    for (path, text) in &ifupdown_files {
        if let Some(r) = comment_ifupdown_nics(text) {
            inet6 |= r.described.iter().any(|d| d.contains(" inet6 "));
            warnings.extend(r.warnings.iter().cloned());
            let mut content = r.content.clone();
            let mut change = format!(
                "{path}: commented out the configuration of {} ({})",
                r.nics.join(", "),
                r.described.join("; ")
            );
            if path.as_str() == INTERFACES {
                content.push_str(&ifupdown_dhcp_stanza(inet6));
                change.push_str("; any Ethernet NIC (en*, eth*) now comes up with DHCP");
            }
            steps.push(write(path, content, vec![change]));
            rewrote = true;
        }
    }
    if rewrote
        && !ifupdown_files
            .iter()
            .any(|(p, t)| p.as_str() == INTERFACES && comment_ifupdown_nics(t).is_some())
    {
        // The NICs were configured in interfaces.d only: the DHCP stanza goes to the main file.
        let main = f
            .file(INTERFACES)
            .unwrap_or("auto lo\niface lo inet loopback\n");
        let mut content = main.to_string();
        if !content.ends_with('\n') {
            content.push('\n');
        }
        content.push_str(&ifupdown_dhcp_stanza(inet6));
        steps.push(write(
            INTERFACES,
            content,
            vec![format!(
                "{INTERFACES}: any Ethernet NIC (en*, eth*) now comes up with DHCP"
            )],
        ));
    }
    let networkd_bound = networkd_files
        .iter()
        .any(|(_, t)| !networkd_nics(t).is_empty() || t.contains("MACAddress="));
    if networkd_enabled && networkd_bound {
        let path = "/etc/systemd/network/90-corral-dhcp.network";
        steps.push(write(
            path,
            NETWORKD_DHCP.into(),
            vec![format!(
                "{path}: systemd-networkd brings up any Ethernet NIC with DHCP"
            )],
        ));
        rewrote = true;
    }
    if !netplan_files.is_empty() {
        let path = "/etc/netplan/90-corral-dhcp.yaml";
        steps.push(write(
            path,
            NETPLAN_DHCP.into(),
            vec![format!(
                "{path}: netplan brings up any Ethernet NIC with DHCP"
            )],
        ));
        rewrote = true;
    }
    if let Some(t) = f.file(PERSISTENT).and_then(comment_persistent_net) {
        steps.push(write(
            PERSISTENT,
            t,
            vec![format!(
                "{PERSISTENT}: commented out the rules naming the server's NICs by MAC address"
            )],
        ));
    }
    if !rewrote
        && (f.unit_enabled("NetworkManager.service") || f.tools.contains_key("NetworkManager"))
    {
        warnings.push(
            "NetworkManager manages the network: its profiles were left as they were (it brings up new NICs with DHCP by default)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test fixture (`scripts/build-p2v-source.sh`) as the appliance sees it.
    pub(crate) fn fixture_layout() -> Layout {
        let blkid = [
            ("/dev/sda", "PTUUID: 6a0cb502\nPTTYPE: dos\n"),
            (
                "/dev/sda1",
                "UUID: 04294c17-7482-4e19-a908-3d1510fcc5e2\nTYPE: ext4\nPART_ENTRY_SCHEME: dos\nPART_ENTRY_UUID: 6a0cb502-01\nPART_ENTRY_TYPE: 0x83\nPART_ENTRY_NUMBER: 1\nPART_ENTRY_OFFSET: 2048\nPART_ENTRY_SIZE: 3145728\n",
            ),
            (
                "/dev/sda2",
                "UUID: XCovoc-nix3\nVERSION: LVM2\\ 001\nTYPE: LVM2_member\nPART_ENTRY_TYPE: 0x8e\nPART_ENTRY_NUMBER: 2\nPART_ENTRY_OFFSET: 3147776\nPART_ENTRY_SIZE: 1048576\nPART_ENTRY_UUID: 6a0cb502-02\n",
            ),
            (
                "/dev/srcvg/var",
                "UUID: 04919c87-be88-4f0c-987a-cf7688080c70\nTYPE: ext4\n",
            ),
        ];
        Layout {
            disk: "/dev/sda".into(),
            disk_sectors: 2148532224 / 512,
            table: "dos".into(),
            devices: blkid.iter().map(|(d, o)| parse_blkid(d, o)).collect(),
            lvs: vec!["/dev/srcvg/var".into()],
            pvs: vec![("/dev/sda2".into(), "srcvg".into())],
        }
    }

    const FIXTURE_FSTAB: &str = "# <file system>        <mount point> <type> <options>          <dump> <pass>\n/dev/sda1              /             ext4   errors=remount-ro  0      1\n/dev/mapper/srcvg-var  /var          ext4   defaults           0      2\n";

    const FIXTURE_GRUB: &str = "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX=\"console=ttyS0,115200n8\"\nGRUB_DISABLE_LINUX_UUID=true\n";

    const FIXTURE_INTERFACES: &str = "auto lo\niface lo inet loopback\n\n# The e1000 NIC, by the name the kernel gives it in PCI slot 5.\nallow-hotplug ens5\niface ens5 inet dhcp\n";

    pub(crate) fn fixture_files() -> GuestFiles {
        let mut f = GuestFiles::default();
        for (p, t) in [
            (
                "/etc/os-release",
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
            ),
            ("/etc/fstab", FIXTURE_FSTAB),
            ("/etc/default/grub", FIXTURE_GRUB),
            ("/etc/network/interfaces", FIXTURE_INTERFACES),
            (
                "/etc/initramfs-tools/modules",
                "ahci\nlibahci\nsd_mod\next4\ne1000\ndm_mod\n",
            ),
        ] {
            f.files.insert(p.into(), t.into());
        }
        for (t, p) in [
            ("update-initramfs", "/usr/sbin/update-initramfs"),
            ("update-grub", "/usr/sbin/update-grub"),
            ("grub-mkconfig", "/usr/sbin/grub-mkconfig"),
            ("grub-install", "/usr/sbin/grub-install"),
            ("systemctl", "/usr/bin/systemctl"),
            ("ifup", "/usr/sbin/ifup"),
        ] {
            f.tools.insert(t.into(), p.into());
        }
        for p in [
            "/usr/lib/grub/i386-pc",
            "/lib/systemd/systemd-networkd",
            "/lib/systemd/systemd-udevd",
            "/usr/share/initramfs-tools",
        ] {
            f.exists.insert(p.into());
        }
        f.kernels.insert(
            "6.1.0-50-amd64".into(),
            VIRTIO_MODULES
                .iter()
                .map(|m| (m.to_string(), true))
                .collect(),
        );
        f.units = vec![
            "/etc/systemd/system/multi-user.target.wants/networking.service".into(),
            "/etc/systemd/system/multi-user.target.wants/corral-source-ready.service".into(),
        ];
        f.mbr_grub = true;
        f
    }

    pub(crate) fn fixture_facts() -> GuestFacts {
        let layout = fixture_layout();
        let mounts = plan_mounts("/dev/sda1", &parse_fstab(FIXTURE_FSTAB), &layout);
        GuestFacts {
            layout,
            guest_disk: "/dev/disk/guestfs/corral".into(),
            root: "/dev/sda1".into(),
            mounts,
            files: fixture_files(),
        }
    }

    fn changes(p: &Plan) -> Vec<String> {
        p.grow_unmounted
            .iter()
            .chain(&p.steps)
            .flat_map(|s| s.changes.clone())
            .collect()
    }

    fn written<'a>(p: &'a Plan, path: &str) -> Option<&'a str> {
        p.steps.iter().find_map(|s| match &s.action {
            Action::Write { path: w, content } if w == path => Some(content.as_str()),
            _ => None,
        })
    }

    #[test]
    fn blkid_output_is_parsed_with_partition_entries() {
        let l = fixture_layout();
        let sda1 = l.device("/dev/sda1").unwrap();
        assert_eq!(sda1.fstype, "ext4");
        assert_eq!(sda1.uuid, "04294c17-7482-4e19-a908-3d1510fcc5e2");
        let p = sda1.part.as_ref().unwrap();
        assert_eq!((p.number, p.start, p.size), (1, 2048, 3145728));
        assert_eq!(p.uuid, "6a0cb502-01");
        assert_eq!(l.device("/dev/sda2").unwrap().fstype, "LVM2_member");
        assert!(l.device("/dev/srcvg/var").unwrap().part.is_none());
        assert_eq!(
            root_candidates(&l),
            vec!["/dev/sda1".to_string(), "/dev/srcvg/var".into()]
        );
    }

    #[test]
    fn device_names_resolve_on_the_one_disk() {
        let l = fixture_layout();
        let dev = |s: &str| resolve_spec(s, &l).map(|d| d.device.clone());
        let sda1 = Some("/dev/sda1".to_string());
        let var = Some("/dev/srcvg/var".to_string());
        for (spec, want) in [
            ("/dev/sda1", &sda1),
            ("/dev/hda1", &sda1),
            ("/dev/vda1", &sda1),
            ("/dev/xvda1", &sda1),
            ("/dev/nvme0n1p1", &sda1),
            ("/dev/cciss/c0d0p1", &sda1),
            ("UUID=04294C17-7482-4E19-A908-3D1510FCC5E2", &sda1),
            (
                "/dev/disk/by-uuid/04294c17-7482-4e19-a908-3d1510fcc5e2",
                &sda1,
            ),
            ("PARTUUID=6a0cb502-01", &sda1),
            ("/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001-part1", &sda1),
            ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1-part1", &sda1),
            ("/dev/mapper/srcvg-var", &var),
            ("/dev/srcvg/var", &var),
            ("UUID=04919c87-be88-4f0c-987a-cf7688080c70", &var),
            ("/dev/sdb1", &None),
            ("/dev/sda9", &None),
            ("LABEL=nothing", &None),
            ("server:/export", &None),
        ] {
            assert_eq!(&dev(spec), want, "{spec}");
        }
        assert_eq!(mapper_name("/dev/my-vg/my-lv").unwrap(), "my--vg-my--lv");
        for (s, bound) in [
            ("/dev/sda1", true),
            ("/dev/sdaa3", true),
            ("/dev/disk/by-id/wwn-0x5000-part2", true),
            ("/dev/mapper/srcvg-var", false),
            ("/dev/srcvg/var", false),
            ("UUID=x", false),
            ("/dev/md0", false),
        ] {
            assert_eq!(hardware_bound(s), bound, "{s}");
        }
        assert_eq!(kernel_disk_part("/dev/sdab2"), Some((27, Some(2))));
        assert_eq!(kernel_disk_part("/dev/nvme1n1"), Some((1, None)));
    }

    #[test]
    fn mounts_come_from_fstab_parents_first_and_missing_ones_are_noted() {
        let l = fixture_layout();
        let fstab = format!(
            "{FIXTURE_FSTAB}/dev/sdb1 /data ext4 defaults 0 2\nproc /proc proc defaults 0 0\nserver:/x /mnt/x nfs defaults 0 0\nUUID=04919c87-be88-4f0c-987a-cf7688080c70 /var/lib/x ext4 bind 0 0\n/dev/sda5 none swap sw 0 0\n"
        );
        let m = plan_mounts("/dev/sda1", &parse_fstab(&fstab), &l);
        assert_eq!(
            m.mounts,
            vec![
                ("/".to_string(), "/dev/sda1".to_string()),
                ("/var".into(), "/dev/srcvg/var".into())
            ]
        );
        assert_eq!(
            m.missing
                .iter()
                .map(|e| e.mountpoint.as_str())
                .collect::<Vec<_>>(),
            ["/data"]
        );
    }

    #[test]
    fn fstab_names_file_systems_by_uuid_and_spares_the_boot_of_missing_disks() {
        let l = fixture_layout();
        let text = format!("{FIXTURE_FSTAB}/dev/sdb1 /data ext4 defaults 0 2\n/dev/sdc1 /x ext4 defaults,nofail 0 2\n");
        let mut warnings = Vec::new();
        let r = rewrite_fstab(&text, "/dev/sda1", &l, &mut warnings).unwrap();
        let want = "# <file system>        <mount point> <type> <options>          <dump> <pass>\n\
# corral v2v: was /dev/sda1\n\
UUID=04294c17-7482-4e19-a908-3d1510fcc5e2              /             ext4   errors=remount-ro  0      1\n\
/dev/mapper/srcvg-var  /var          ext4   defaults           0      2\n\
/dev/sdb1 /data ext4 defaults,nofail 0 2\n\
/dev/sdc1 /x ext4 defaults,nofail 0 2\n";
        assert_eq!(r.content, want);
        assert_eq!(
            r.changes,
            [
                "/etc/fstab: / by UUID=04294c17-7482-4e19-a908-3d1510fcc5e2 instead of /dev/sda1",
                "/etc/fstab: /data (/dev/sdb1) is not on this image; marked nofail so the VM boots without it",
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        // Already by UUID: nothing to do.
        let by_uuid = "UUID=04294c17-7482-4e19-a908-3d1510fcc5e2 / ext4 defaults 0 1\n";
        assert_eq!(rewrite_fstab(by_uuid, "/dev/sda1", &l, &mut warnings), None);
    }

    #[test]
    fn grub_defaults_turn_to_uuids() {
        let l = fixture_layout();
        let r = rewrite_default_grub(FIXTURE_GRUB, &l).unwrap();
        assert_eq!(
            r.content,
            "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX=\"console=ttyS0,115200n8\"\n# corral v2v: the kernel finds its root by UUID; was:\n#GRUB_DISABLE_LINUX_UUID=true\nGRUB_DISABLE_LINUX_UUID=false\n"
        );
        let cmdline =
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet root=/dev/sda1 resume=/dev/mapper/srcvg-var\"\n";
        let r = rewrite_default_grub(cmdline, &l).unwrap();
        assert!(r.content.ends_with(
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet root=UUID=04294c17-7482-4e19-a908-3d1510fcc5e2 resume=/dev/mapper/srcvg-var\"\n"
        ), "{}", r.content);
        assert_eq!(
            rewrite_default_grub("GRUB_DISABLE_LINUX_UUID=false\n", &l),
            None
        );
        let resume = rewrite_resume("RESUME=/dev/sda1\n", &l).unwrap();
        assert!(
            resume.content.contains("RESUME=UUID=04294c17"),
            "{}",
            resume.content
        );
        let crypt = rewrite_crypttab("# x\ncr /dev/sda1 none luks\n", &l).unwrap();
        assert_eq!(
            crypt.content,
            "# x\ncr UUID=04294c17-7482-4e19-a908-3d1510fcc5e2 none luks\n"
        );
    }

    #[test]
    fn initramfs_modules_are_added_once() {
        let (t, added) = add_initramfs_modules(Some("ahci\n# virtio_net\nvirtio_blk\n")).unwrap();
        assert_eq!(added, ["virtio_pci", "virtio_net"]);
        assert!(t.starts_with("ahci\n# virtio_net\nvirtio_blk\n# corral v2v"));
        assert!(t.ends_with("virtio_pci\nvirtio_net\n"));
        assert_eq!(add_initramfs_modules(Some(&t)), None);
        let (t, added) = add_initramfs_modules(None).unwrap();
        assert_eq!(added.len(), 3);
        assert!(t.ends_with("virtio_blk\nvirtio_net\n"));
    }

    #[test]
    fn nic_names_are_told_from_other_interfaces() {
        for (n, nic) in [
            ("ens5", true),
            ("enp3s0", true),
            ("eth0", true),
            ("em1", true),
            ("p2p1", true),
            ("lo", false),
            ("br0", false),
            ("bond0", false),
            ("eth0.10", false),
            ("eth0:1", false),
            ("wlan0", false),
            ("vnic", false),
            ("/en*=vnic", false),
            ("pp1", false),
        ] {
            assert_eq!(is_hardware_nic(n), nic, "{n}");
        }
    }

    #[test]
    fn ifupdown_stanzas_of_nics_are_commented_out() {
        let r = comment_ifupdown_nics(FIXTURE_INTERFACES).unwrap();
        assert_eq!(r.nics, ["ens5"]);
        assert_eq!(r.described, ["ens5 inet dhcp"]);
        assert_eq!(
            r.content,
            "auto lo\niface lo inet loopback\n\n# The e1000 NIC, by the name the kernel gives it in PCI slot 5.\n# corral v2v: the lines below configured the server's NIC by its hardware name, which the VM's virtio NIC does not have; kept for reference\n#allow-hotplug ens5\n#iface ens5 inet dhcp\n"
        );
        let static_cfg = "auto lo eth0\niface lo inet loopback\niface eth0 inet static\n    address 192.0.2.5/24\n    gateway 192.0.2.1\niface eth0 inet6 auto\n\nauto br0\niface br0 inet dhcp\n    bridge_ports eth1\nsource /etc/network/interfaces.d/*\n";
        let r = comment_ifupdown_nics(static_cfg).unwrap();
        assert_eq!(r.nics, ["eth0"]);
        assert_eq!(
            r.described,
            ["eth0 inet static 192.0.2.5/24", "eth0 inet6 auto"]
        );
        assert!(r.content.starts_with("# corral v2v"), "{}", r.content);
        assert!(r.content.contains("#auto lo eth0\nauto lo\niface lo inet loopback\n#iface eth0 inet static\n#    address 192.0.2.5/24\n#    gateway 192.0.2.1\n#iface eth0 inet6 auto\n"), "{}", r.content);
        assert!(
            r.content
                .contains("auto br0\niface br0 inet dhcp\n    bridge_ports eth1\nsource"),
            "{}",
            r.content
        );
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert_eq!(ifupdown_nics(static_cfg), ["eth0"]);
        assert_eq!(
            comment_ifupdown_nics("auto lo\niface lo inet loopback\n"),
            None
        );
    }

    #[test]
    fn other_network_configurations_give_their_nic_names() {
        assert_eq!(
            networkd_nics("[Match]\nName=enp1s0 en*\n[Network]\nDHCP=yes\n"),
            ["enp1s0"]
        );
        let netplan = "network:\n  version: 2\n  ethernets:\n    enp3s0:\n      dhcp4: true\n    id0:\n      match:\n        macaddress: 00:11:22:33:44:55\n      set-name: eth7\n  bridges:\n    br0:\n      interfaces: [enp3s0]\n";
        assert_eq!(netplan_nics(netplan), ["enp3s0", "eth7"]);
        let rules = "# generated\nSUBSYSTEM==\"net\", ACTION==\"add\", ATTR{address}==\"00:11:22:33:44:55\", NAME=\"eth0\"\n";
        let c = comment_persistent_net(rules).unwrap();
        assert!(c.ends_with("#SUBSYSTEM==\"net\", ACTION==\"add\", ATTR{address}==\"00:11:22:33:44:55\", NAME=\"eth0\"\n"));
        assert_eq!(comment_persistent_net(&c), None);
    }

    #[test]
    fn the_fixture_gets_the_whole_conversion() {
        let p = plan(&fixture_facts(), &Options::default()).unwrap();
        assert_eq!(p.firmware, Firmware::Bios);
        assert_eq!(p.os.name(), "Debian GNU/Linux 12 (bookworm)");
        assert!(p.grow_unmounted.is_empty());
        assert_eq!(p.expand_by_copy, None);
        assert_eq!(
            changes(&p),
            [
                "/etc/fstab: / by UUID=04294c17-7482-4e19-a908-3d1510fcc5e2 instead of /dev/sda1",
                "/etc/default/grub: GRUB_DISABLE_LINUX_UUID=false (was true): the kernel finds its root by UUID",
                "/etc/initramfs-tools/modules: added virtio_pci, virtio_blk, virtio_net",
                "/etc/network/interfaces: commented out the configuration of ens5 (ens5 inet dhcp); any Ethernet NIC (en*, eth*) now comes up with DHCP",
                "rebuilt the initramfs of 6.1.0-50-amd64 with the guest's update-initramfs (virtio drivers included)",
                "reinstalled GRUB (i386-pc) in the disk's boot sector with the guest's grub-install",
                "regenerated /boot/grub/grub.cfg with the guest's GRUB (root by UUID)",
            ]
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let net = written(&p, "/etc/network/interfaces").unwrap();
        assert!(
            net.ends_with("auto /en*=vnic /eth*=vnic\niface vnic inet dhcp\n"),
            "{net}"
        );
        // The guest's tools run last, initramfs first.
        let runs: Vec<&str> = p
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Run { script } => Some(script.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            runs,
            [
                "/usr/sbin/update-initramfs -u -k all",
                "/usr/sbin/grub-install --target=i386-pc /dev/disk/guestfs/corral",
                "GRUB_DISABLE_OS_PROBER=true /usr/sbin/update-grub"
            ]
        );
    }

    #[test]
    fn excluded_directories_are_emptied_first_and_paths_are_checked() {
        let opts = Options {
            emptied: vec!["/var/cache/apt".into()],
            ..Default::default()
        };
        let p = plan(&fixture_facts(), &opts).unwrap();
        let first = p
            .steps
            .iter()
            .position(|s| {
                s.changes
                    .iter()
                    .any(|c| c.starts_with("emptied /var/cache/apt"))
            })
            .expect("an emptying step");
        assert_eq!(
            p.steps[first].action,
            Action::Run {
                script:
                    "[ ! -d '/var/cache/apt' ] || find '/var/cache/apt' -xdev -mindepth 1 -delete"
                        .into()
            }
        );
        assert!(p.steps[..first]
            .iter()
            .all(|s| !matches!(s.action, Action::Run { .. })));
        for (path, ok) in [
            ("/var/cache/apt", true),
            ("/srv/data-1/x_y+z@2", true),
            ("/", false),
            ("/etc", false),
            ("/etc/ssl", false),
            ("/boot/grub", false),
            ("/usr", false),
            ("relative", false),
            ("/var/../etc", false),
            ("/var/cache/", false),
            ("/tmp/a b", false),
            ("/tmp/it's", false),
            ("/tmp/$(reboot)", false),
        ] {
            assert_eq!(exclude_path_ok(path).is_ok(), ok, "{path}");
        }
    }

    #[test]
    fn keep_names_the_vm_nic_like_the_old_one() {
        let opts = Options {
            network: NetworkMode::Keep,
            nic_macs: vec!["52:54:00:12:34:56".into()],
            grow: false,
            emptied: vec![],
        };
        let p = plan(&fixture_facts(), &opts).unwrap();
        let link = written(&p, "/etc/systemd/network/10-corral-ens5.link").unwrap();
        assert!(link.contains("[Match]\nMACAddress=52:54:00:12:34:56\n\n[Link]\nName=ens5\n"));
        assert!(written(&p, "/etc/network/interfaces").is_none(), "kept");
        let mut no_udev = fixture_facts();
        no_udev.files.exists.remove("/lib/systemd/systemd-udevd");
        assert!(matches!(
            plan(&no_udev, &opts),
            Err(Refusal::Unsupported(_))
        ));
    }

    #[test]
    fn what_cannot_be_converted_is_refused() {
        let mut redhat = fixture_facts();
        redhat.files.files.insert(
            "/etc/os-release".into(),
            "ID=\"rhel\"\nID_LIKE=\"fedora\"\nPRETTY_NAME=\"Red Hat Enterprise Linux 9\"\n".into(),
        );
        let e = plan(&redhat, &Options::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Red Hat Enterprise Linux 9 is not converted"),
            "{e}"
        );
        let mut ubuntu = fixture_facts();
        ubuntu.files.files.insert(
            "/etc/os-release".into(),
            "ID=ubuntu\nID_LIKE=debian\n".into(),
        );
        assert!(plan(&ubuntu, &Options::default()).is_ok());
        let mut no_virtio = fixture_facts();
        no_virtio.files.kernels.insert(
            "4.9.0-old".into(),
            [("virtio_blk".to_string(), false)].into_iter().collect(),
        );
        let p = plan(&no_virtio, &Options::default()).unwrap();
        assert!(p.warnings[0].contains("4.9.0-old"), "{:?}", p.warnings);
        no_virtio.files.kernels.remove("6.1.0-50-amd64");
        assert!(plan(&no_virtio, &Options::default())
            .unwrap_err()
            .to_string()
            .contains("virtio disk drivers"));
        let mut no_grub = fixture_facts();
        no_grub.files.tools.remove("update-grub");
        no_grub.files.tools.remove("grub-mkconfig");
        assert!(plan(&no_grub, &Options::default()).is_err());
        let mut no_loader = fixture_facts();
        no_loader.files.mbr_grub = false;
        no_loader.files.exists.remove("/usr/lib/grub/i386-pc");
        assert!(plan(&no_loader, &Options::default())
            .unwrap_err()
            .to_string()
            .contains("no boot loader"));
    }

    #[test]
    fn the_root_is_the_one_system_found() {
        let l = fixture_layout();
        let c = |d: &str, fstab: bool, os: bool| Candidate {
            device: d.into(),
            fstab: fstab.then(String::new),
            os_release: os.then(String::new),
        };
        assert_eq!(
            choose_root(
                &l,
                &[
                    c("/dev/srcvg/var", false, false),
                    c("/dev/sda1", true, true)
                ]
            ),
            Ok(1)
        );
        assert_eq!(choose_root(&l, &[c("/dev/sda1", true, false)]), Ok(0));
        assert_eq!(
            choose_root(
                &l,
                &[c("/dev/sda1", true, true), c("/dev/sda2", true, true)]
            ),
            Err(Refusal::SeveralSystems(vec![
                "/dev/sda1".into(),
                "/dev/sda2".into()
            ]))
        );
        let e = choose_root(&l, &[c("/dev/srcvg/var", false, false)]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("no Linux system found on the image (ext4 on /dev/sda1"),
            "{e}"
        );
        let blank = Layout {
            disk: "/dev/sda".into(),
            ..Default::default()
        };
        assert_eq!(
            choose_root(&blank, &[]).unwrap_err().to_string(),
            "no Linux system found on the image (no partition table and no file system: a blank disk?)"
        );
        let fat = Layout {
            disk: "/dev/sda".into(),
            devices: vec![BlockDevice {
                device: "/dev/sda".into(),
                fstype: "vfat".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(fat.describe(), "vfat on /dev/sda");
    }

    #[test]
    fn firmware_follows_what_boots_the_source() {
        let mut l = fixture_layout();
        let f = fixture_files();
        assert_eq!(detect_firmware(&l, &f), Ok(Firmware::Bios));
        // A GPT disk with an ESP holding Debian's shim and GRUB's EFI platform: UEFI.
        l.table = "gpt".into();
        l.devices[1].part.as_mut().unwrap().type_id = ESP_GPT.into();
        let mut uefi = f.clone();
        uefi.mbr_grub = false;
        uefi.exists.remove("/usr/lib/grub/i386-pc");
        uefi.exists.insert("/usr/lib/grub/x86_64-efi".into());
        uefi.efi = vec![
            "/boot/efi/EFI/debian/shimx64.efi".into(),
            "/boot/efi/EFI/debian/grubx64.efi".into(),
            "/boot/efi/EFI/debian/mmx64.efi".into(),
        ];
        assert_eq!(detect_firmware(&l, &uefi), Ok(Firmware::Uefi));
        let os = OsRelease::parse("ID=debian\n");
        let mut w = Vec::new();
        let steps = efi_fallback_steps(&uefi, &os, &mut w);
        let copies: Vec<(&str, &str)> = steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Copy { from, to } => Some((from.as_str(), to.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            copies,
            [
                (
                    "/boot/efi/EFI/debian/shimx64.efi",
                    "/boot/efi/EFI/BOOT/BOOTX64.EFI"
                ),
                (
                    "/boot/efi/EFI/debian/grubx64.efi",
                    "/boot/efi/EFI/BOOT/grubx64.efi"
                ),
                (
                    "/boot/efi/EFI/debian/mmx64.efi",
                    "/boot/efi/EFI/BOOT/mmx64.efi"
                ),
            ]
        );
        // A fallback loader already there: nothing to copy.
        uefi.efi.push("/boot/efi/EFI/BOOT/BOOTX64.EFI".into());
        assert!(efi_fallback_steps(&uefi, &os, &mut w).is_empty());
        // An unused ESP on a BIOS server with GRUB in its boot sector: BIOS.
        let mut hybrid = f.clone();
        hybrid.efi = vec!["/boot/efi/EFI/old/grubx64.efi".into()];
        assert_eq!(detect_firmware(&l, &hybrid), Ok(Firmware::Bios));
    }

    #[test]
    fn growth_is_in_place_when_the_root_ends_the_disk() {
        // The fixture: the root is followed by the LVM partition, so only a copy can grow it.
        let f = fixture_facts();
        let (u, m, copy, w) = plan_growth(&f.layout, "/dev/sda1", &f.mounts);
        assert!(u.is_empty() && m.is_empty() && w.is_empty());
        assert_eq!(
            copy,
            Some(ExpandByCopy {
                partition: "/dev/sda1".into(),
                lv: None,
                reason: "/dev/sda1 is followed by another partition".into()
            })
        );
        // A single-partition disk grown from 2 GiB to 20 GiB.
        let mut l = fixture_layout();
        l.devices
            .retain(|d| d.device == "/dev/sda" || d.device == "/dev/sda1");
        l.lvs.clear();
        l.pvs.clear();
        l.disk_sectors = 20 << 21;
        let (u, m, copy, _) = plan_growth(&l, "/dev/sda1", &MountPlan::default());
        assert_eq!(copy, None);
        assert!(m.is_empty());
        assert_eq!(
            u.iter().map(|s| s.action.clone()).collect::<Vec<_>>(),
            [
                Action::ResizePartition {
                    disk: "/dev/sda".into(),
                    number: 1,
                    end_sector: (20 << 21) - 1
                },
                Action::GrowExt {
                    device: "/dev/sda1".into()
                }
            ]
        );
        // Root on an LV whose one PV is the last partition of a GPT disk, XFS.
        let mut l = fixture_layout();
        l.table = "gpt".into();
        l.disk_sectors = 20 << 21;
        l.lvs.push("/dev/srcvg/root".into());
        l.devices.push(BlockDevice {
            device: "/dev/srcvg/root".into(),
            fstype: "xfs".into(),
            ..Default::default()
        });
        let mounts = MountPlan {
            mounts: vec![("/".into(), "/dev/srcvg/root".into())],
            missing: vec![],
        };
        let (u, m, copy, _) = plan_growth(&l, "/dev/srcvg/root", &mounts);
        assert_eq!(copy, None);
        assert_eq!(
            u.iter().map(|s| s.action.clone()).collect::<Vec<_>>(),
            [
                Action::ExpandGpt {
                    disk: "/dev/sda".into()
                },
                Action::ResizePartition {
                    disk: "/dev/sda".into(),
                    number: 2,
                    end_sector: (20 << 21) - 34
                },
                Action::ResizePv {
                    device: "/dev/sda2".into()
                },
                Action::ExtendLv {
                    lv: "/dev/srcvg/root".into()
                },
            ]
        );
        assert_eq!(
            m[0].action,
            Action::GrowMounted {
                mountpoint: "/".into(),
                fstype: "xfs".into()
            }
        );
        // A plan with growth asked carries it.
        let p = plan(
            &fixture_facts(),
            &Options {
                grow: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(p.expand_by_copy.is_some());
    }

    #[test]
    fn hardware_services_are_disabled() {
        let mut f = fixture_facts();
        f.files
            .units
            .push("/etc/systemd/system/multi-user.target.wants/smartmontools.service".into());
        f.files
            .units
            .push("/etc/systemd/system/multi-user.target.wants/open-vm-tools.service".into());
        let p = plan(&f, &Options::default()).unwrap();
        let c = changes(&p);
        assert!(
            c.contains(&"disabled open-vm-tools.service (VMware tools)".to_string()),
            "{c:?}"
        );
        assert!(
            c.iter()
                .any(|x| x.starts_with("disabled smartmontools.service")),
            "{c:?}"
        );
    }
}
