//! Discovery of the source: which disk holds the running system, where each file system and
//! swap area on it lies (as byte ranges of that disk), what OS, firmware and boot loader it
//! has, and whether the conversion can go ahead.
//!
//! Split in two so the decisions are testable without a server: [`read_facts`] gathers the
//! raw text and numbers (`/proc/self/mountinfo`, `/proc/swaps`, `/sys/class/block/*`,
//! `/etc/os-release`, `uname`, a few paths' existence, `dmsetup table` for device-mapper
//! devices, `statvfs` of each mount) and [`plan_from`] turns them into a [`SourcePlan`].
//! Only procfs, sysfs, libc and `dmsetup` are used, so it works on old distributions.
//!
//! Two entry points. [`discover`] copies the running system: the system disk is the one
//! under `/`. [`discover_disk`] copies a disk the caller names (cold P2V from our boot
//! media, where nothing of it is mounted; the transfer benchmark's loop device): the same
//! facts, plus the first bytes of the disk and of each partition and device-mapper device
//! on it, which [`plan_for_disk`] (pure, in `given.rs`) reads with [`crate::probe`] to find
//! the file systems and swaps nobody mounted. An unmounted file system has an empty
//! `mountpoint`: its ext bitmaps are read all the same, and it is never frozen
//! ([`SourcePlan::mountpoints`]). Without a mounted `/` the OS is not read (that would
//! mean mounting the source, which we never do) and is left to the agent's conversion.
//!
//! Mapping a file system onto the disk: a partition is one [`Segment`] (its `start` and
//! `size` in sysfs); a device-mapper device is one segment per `linear` target, each mapped
//! through the device below it (so an LV on a PV on a partition ends up on the disk).
//! Anything else stacked (md RAID, dm-crypt, snapshots, thin pools, caches) cannot be read
//! through the disk as plain blocks and becomes a refusal naming the reason.

use crate::disk::DiskReader;
use crate::probe::{probe, Probe, PROBE_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod given;
pub use given::{check_disk, plan_for_disk, probe_targets};

const SECTOR: u64 = 512;

/// Paths whose mere existence [`plan_from`] looks at; [`read_facts`] probes each one.
pub const PROBED_PATHS: &[&str] = &[
    "/usr/sbin/update-initramfs",
    "/sbin/update-initramfs",
    "/usr/bin/dracut",
    "/usr/sbin/dracut",
    "/sbin/dracut",
    "/boot/grub",
    "/boot/grub2",
    "/sys/firmware/efi",
];

/// File system types whose root we know how to boot after conversion.
const ROOT_FSTYPES: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePlan {
    /// The system disk (`/dev/sda`); empty when `refusals` says it could not be found.
    pub disk: PathBuf,
    pub disk_bytes: u64,
    /// File systems mounted from the system disk, by mount point; then, for a disk named by
    /// the caller, the unmounted ones recognised by their first bytes, by disk offset.
    pub file_systems: Vec<FileSystem>,
    /// Swap partitions or volumes on the system disk (swap files live inside a file system).
    pub swaps: Vec<Area>,
    pub os: OsInfo,
    /// `"bios"` or `"uefi"`.
    pub firmware: String,
    /// `"grub2"` when `/boot/grub` or `/boot/grub2` exists.
    pub boot_loader: Option<String>,
    /// Disks holding mounted file systems or swap that are not the system disk: not copied.
    pub other_disks: Vec<String>,
    /// Why the conversion cannot go ahead; empty when it can.
    pub refusals: Vec<String>,
    pub warnings: Vec<String>,
}

impl SourcePlan {
    /// The mount points of the file systems copied, for the final pass to freeze: an
    /// unmounted file system (empty `mountpoint`, see [`plan_for_disk`]) has none and needs
    /// no freeze, nothing writes to it.
    pub fn mountpoints(&self) -> Vec<PathBuf> {
        self.file_systems
            .iter()
            .filter(|f| !f.mountpoint.as_os_str().is_empty())
            .map(|f| f.mountpoint.clone())
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSystem {
    /// `/dev/sda1`, `/dev/mapper/srcvg-var`.
    pub device: PathBuf,
    /// Empty for a file system found on a disk named by the caller but not mounted.
    pub mountpoint: PathBuf,
    pub fstype: String,
    /// The size of the block device (the file system may be smaller).
    pub size_bytes: u64,
    /// Used bytes as `statvfs` counts them (0 if it could not be asked); for an unmounted
    /// ext file system, as its superblock counts them (0 for other unmounted types).
    pub used_bytes: u64,
    /// Where the device's bytes lie on the system disk, by ascending `fs_offset`.
    pub segments: Vec<Segment>,
}

/// A swap area (or any device) on the system disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Area {
    pub device: PathBuf,
    pub size_bytes: u64,
    pub segments: Vec<Segment>,
}

/// `len` bytes at `fs_offset` of a device lie at `disk_offset` of the system disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub fs_offset: u64,
    pub disk_offset: u64,
    pub len: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsInfo {
    pub pretty_name: String,
    pub id: String,
    pub id_like: String,
    pub kernel: String,
    /// `"initramfs-tools"` or `"dracut"`.
    pub initramfs_tool: Option<String>,
}

/// What [`read_facts`] read, as plain data.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub mountinfo: String,
    pub swaps: String,
    /// `None` when `/etc/os-release` (and `/usr/lib/os-release`) is missing.
    pub os_release: Option<String>,
    /// `uname -r`.
    pub kernel: String,
    /// Which of [`PROBED_PATHS`] exist.
    pub existing: BTreeSet<String>,
    pub blocks: Vec<BlockFacts>,
    /// `dmsetup table <name>` per device-mapper name, or why it could not be read.
    pub dm_tables: BTreeMap<String, Result<String, String>>,
    /// Used bytes per mount point, from `statvfs`.
    pub used_bytes: BTreeMap<PathBuf, u64>,
}

/// One entry of `/sys/class/block`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockFacts {
    /// `sda1`, `dm-0`, `nvme0n1p2`.
    pub name: String,
    /// `dev`: major, minor.
    pub dev: (u32, u32),
    /// `size`, in 512-byte sectors whatever the logical block size.
    pub size_sectors: u64,
    /// `start` (sectors), for a partition.
    pub start_sectors: Option<u64>,
    /// The disk a partition belongs to (its parent directory in `/sys/devices`).
    pub parent: Option<String>,
    /// `dm/name`, for a device-mapper device.
    pub dm_name: Option<String>,
    /// `slaves/`: the devices this one is stacked on.
    pub slaves: Vec<String>,
    /// `md/` exists: an md RAID device.
    pub md: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} cannot be the disk copied: {reason}", path.display())]
    NotADisk { path: PathBuf, reason: String },
}

// ---------------------------------------------------------------------------------------
// The pure part.

#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    dev: (u32, u32),
    /// The directory of the file system mounted here (`/` unless a bind mount of a subtree).
    root: String,
    mountpoint: PathBuf,
    fstype: String,
    source: String,
}

/// `\040` and friends: mountinfo and /proc/swaps escape space, tab, newline and backslash.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(v) = octal.and_then(|d| {
            u8::try_from(d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'))).ok()
        }) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`;
/// lines that do not parse are skipped (a kernel adding fields must not stop a scan).
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 6 || r.len() < 2 {
                return None;
            }
            let (maj, min) = l[2].split_once(':')?;
            Some(Mount {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                root: unescape(l[3]),
                mountpoint: PathBuf::from(unescape(l[4])),
                fstype: r[0].to_string(),
                source: unescape(r[1]),
            })
        })
        .collect()
}

/// `KEY=value` or `KEY="value"`.
fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once('=')?;
            if k.starts_with('#') {
                return None;
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.to_string(), v.replace("\\\"", "\"")))
        })
        .collect()
}

/// One line of a device-mapper table.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    start: u64,
    len: u64,
    kind: &'a str,
    args: Vec<&'a str>,
}

fn parse_dm_table(text: &str) -> Result<Vec<Target<'_>>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut w = l.split_whitespace();
            let bad = || format!("unreadable device-mapper table line {l:?}");
            let start = w.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let len = w.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let kind = w.next().ok_or_else(bad)?;
            Ok(Target {
                start,
                len,
                kind,
                args: w.collect(),
            })
        })
        .collect()
}

/// The block devices by name and by number, and the questions asked of them.
struct Blocks<'a> {
    by_name: BTreeMap<&'a str, &'a BlockFacts>,
    facts: &'a Facts,
}

/// Devices made of memory or files (loop, zram, ram): what they show lives elsewhere.
fn is_virtual(name: &str) -> bool {
    ["loop", "zram", "ram"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
    })
}

impl<'a> Blocks<'a> {
    fn new(facts: &'a Facts) -> Self {
        Blocks {
            by_name: facts.blocks.iter().map(|b| (b.name.as_str(), b)).collect(),
            facts,
        }
    }

    fn by_dev(&self, dev: (u32, u32)) -> Option<&'a BlockFacts> {
        self.facts.blocks.iter().find(|b| b.dev == dev)
    }

    /// `/dev/sda1`, `/dev/dm-0`, `/dev/mapper/vg-lv` → the sysfs entry.
    fn by_path(&self, path: &str) -> Option<&'a BlockFacts> {
        if let Some(dm) = path.strip_prefix("/dev/mapper/") {
            return self
                .facts
                .blocks
                .iter()
                .find(|b| b.dm_name.as_deref() == Some(dm));
        }
        self.by_name.get(path.strip_prefix("/dev/")?).copied()
    }

    /// The block device a mount is from: by its device number, or — for btrfs, whose
    /// mounts carry an anonymous `0:N` — by its source path.
    fn of_mount(&self, m: &Mount) -> Option<&'a BlockFacts> {
        self.by_dev(m.dev).or_else(|| self.by_path(&m.source))
    }

    fn device_path(b: &BlockFacts) -> PathBuf {
        match &b.dm_name {
            Some(dm) => Path::new("/dev/mapper").join(dm),
            None => Path::new("/dev").join(&b.name),
        }
    }

    /// The disks a device ultimately sits on (through partitions and `slaves/`).
    fn disks_under(&self, name: &str, depth: u32) -> BTreeSet<String> {
        let Some(b) = self.by_name.get(name) else {
            return [name.to_string()].into();
        };
        if depth > 16 {
            return BTreeSet::new();
        }
        if let Some(parent) = &b.parent {
            return [parent.clone()].into();
        }
        if b.slaves.is_empty() {
            return [name.to_string()].into();
        }
        b.slaves
            .iter()
            .flat_map(|s| self.disks_under(s, depth + 1))
            .collect()
    }

    /// Where a device's bytes lie: one disk and segments on it, or why they cannot be
    /// read through a disk.
    fn placement(&self, name: &str, depth: u32) -> Result<(String, Vec<Segment>), String> {
        let b = self
            .by_name
            .get(name)
            .ok_or_else(|| format!("{name} is not in /sys/class/block"))?;
        if depth > 16 {
            return Err(format!("{name}: devices stacked too deep"));
        }
        let bytes = b.size_sectors * SECTOR;
        if b.md || name.starts_with("md") {
            return Err(format!("{name} is md RAID, which is not supported"));
        }
        if let Some(dm) = &b.dm_name {
            return self.dm_placement(dm, depth);
        }
        if let Some(parent) = &b.parent {
            let start = b
                .start_sectors
                .ok_or_else(|| format!("partition {name} has no start"))?;
            return Ok((
                parent.clone(),
                vec![Segment {
                    fs_offset: 0,
                    disk_offset: start * SECTOR,
                    len: bytes,
                }],
            ));
        }
        if !b.slaves.is_empty() {
            return Err(format!(
                "{name} is stacked on {} in a way that is not supported",
                b.slaves.join(", ")
            ));
        }
        Ok((
            name.to_string(),
            vec![Segment {
                fs_offset: 0,
                disk_offset: 0,
                len: bytes,
            }],
        ))
    }

    fn dm_placement(&self, dm: &str, depth: u32) -> Result<(String, Vec<Segment>), String> {
        let table = match self.facts.dm_tables.get(dm) {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                return Err(format!("cannot read the device-mapper table of {dm}: {e}"))
            }
            None => return Err(format!("no device-mapper table for {dm}")),
        };
        let targets = parse_dm_table(table)?;
        if targets.is_empty() {
            return Err(format!("{dm} has an empty device-mapper table"));
        }
        let mut disk: Option<String> = None;
        let mut segments: Vec<Segment> = Vec::new();
        for t in &targets {
            if t.kind != "linear" {
                let what = match t.kind {
                    "crypt" => "dm-crypt (encrypted)",
                    "raid" | "mirror" | "striped" => "RAID or striped LVM",
                    "snapshot" | "snapshot-origin" | "snapshot-merge" => {
                        "an LVM snapshot or its origin"
                    }
                    "thin" | "thin-pool" => "thin provisioning",
                    "cache" | "writecache" => "a cache",
                    "multipath" => "multipath",
                    _ => "a device-mapper target other than linear",
                };
                return Err(format!("{dm} is {what} ({} target); only linear device-mapper (plain LVM) is supported", t.kind));
            }
            let (Some(dev), Some(offset)) = (
                t.args.first(),
                t.args.get(1).and_then(|o| o.parse::<u64>().ok()),
            ) else {
                return Err(format!("{dm}: unreadable linear target {:?}", t.args));
            };
            let lower = match dev.split_once(':') {
                Some((maj, min)) => maj
                    .parse()
                    .ok()
                    .zip(min.parse().ok())
                    .and_then(|d| self.by_dev(d)),
                None => self.by_path(dev),
            }
            .ok_or_else(|| format!("{dm}: linear target on unknown device {dev}"))?;
            let (lower_disk, lower_segs) = self.placement(&lower.name, depth + 1)?;
            match &disk {
                Some(d) if *d != lower_disk => {
                    return Err(format!(
                        "{dm} spans two disks ({d} and {lower_disk}), which is not supported"
                    ));
                }
                _ => disk = Some(lower_disk),
            }
            // The target's range [offset, offset+len) of the lower device, through the lower
            // device's own segments.
            let (lo, hi) = (offset * SECTOR, (offset + t.len) * SECTOR);
            let mut covered = 0;
            for s in &lower_segs {
                let a = lo.max(s.fs_offset);
                let b = hi.min(s.fs_offset + s.len);
                if a < b {
                    push_segment(
                        &mut segments,
                        Segment {
                            fs_offset: t.start * SECTOR + (a - lo),
                            disk_offset: s.disk_offset + (a - s.fs_offset),
                            len: b - a,
                        },
                    );
                    covered += b - a;
                }
            }
            if covered != hi - lo {
                return Err(format!(
                    "{dm}: a linear target runs past the end of {}",
                    lower.name
                ));
            }
        }
        segments.sort_by_key(|s| s.fs_offset);
        let disk = disk.ok_or_else(|| format!("{dm}: no targets"))?;
        Ok((disk, segments))
    }
}

/// Append, merging with the previous segment when both sides are contiguous.
fn push_segment(segs: &mut Vec<Segment>, s: Segment) {
    if let Some(last) = segs.last_mut() {
        if last.fs_offset + last.len == s.fs_offset && last.disk_offset + last.len == s.disk_offset
        {
            last.len += s.len;
            return;
        }
    }
    segs.push(s);
}

/// One mount per block device: a device mounted twice (bind mounts) is one file system,
/// named by the mount of its whole tree at the shortest path. `skip_virtual` leaves out
/// loop, zram and ram devices (an image mounted on the system is not part of its disk).
fn visible_mounts<'m>(
    blocks: &Blocks<'_>,
    mounts: &'m [Mount],
    skip_virtual: bool,
) -> BTreeMap<String, &'m Mount> {
    let mut seen: BTreeMap<String, &Mount> = BTreeMap::new();
    for m in mounts {
        let Some(b) = blocks.of_mount(m) else {
            continue;
        };
        if skip_virtual && is_virtual(&b.name) {
            continue;
        }
        let better = |old: &Mount| {
            (
                m.root == "/",
                std::cmp::Reverse(m.mountpoint.as_os_str().len()),
            ) > (
                old.root == "/",
                std::cmp::Reverse(old.mountpoint.as_os_str().len()),
            )
        };
        if seen.get(b.name.as_str()).is_none_or(|old| better(old)) {
            seen.insert(b.name.clone(), m);
        }
    }
    seen
}

/// The active swap partitions of `/proc/swaps` (`Filename Type Size Used Priority`, a
/// header line first). Swap files are left out: their blocks belong to a file system and
/// are copied with it.
pub(crate) fn swap_partitions(facts: &Facts) -> impl Iterator<Item = String> + '_ {
    facts.swaps.lines().skip(1).filter_map(|line| {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some(file), Some("partition")) => Some(unescape(file)),
            _ => None,
        }
    })
}

/// Decide what to copy and whether it can be copied, from facts alone.
pub fn plan_from(facts: &Facts) -> SourcePlan {
    let blocks = Blocks::new(facts);
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();
    let mut other_disks = BTreeSet::new();

    // The visible mount of each point is the last one in mountinfo.
    let mounts = parse_mountinfo(&facts.mountinfo);
    let root = mounts.iter().rev().find(|m| m.mountpoint == Path::new("/"));

    let mut disk = String::new();
    match root {
        None => refusals.push("no root file system in /proc/self/mountinfo".to_string()),
        Some(r) => match blocks.of_mount(r) {
            None => refusals.push(format!(
                "the root file system ({} from {}) is not on a block device; only a root on a local disk can be copied",
                r.fstype, r.source
            )),
            Some(b) if is_virtual(&b.name) => refusals.push(format!(
                "the root file system is on {} (a live system or an image file), not on a disk",
                b.name
            )),
            Some(b) => {
                if !ROOT_FSTYPES.contains(&r.fstype.as_str()) {
                    refusals.push(format!(
                        "the root file system is {}; only {} are supported",
                        r.fstype,
                        ROOT_FSTYPES.join(", ")
                    ));
                }
                match blocks.placement(&b.name, 0) {
                    Ok((d, _)) => disk = d,
                    Err(why) => {
                        refusals.push(format!("the root file system ({}): {why}", Blocks::device_path(b).display()));
                        // Still name the disk when there is only one, for the report.
                        let under = blocks.disks_under(&b.name, 0);
                        if under.len() == 1 {
                            disk = under.into_iter().next().unwrap_or_default();
                        }
                    }
                }
            }
        },
    }

    let seen = visible_mounts(&blocks, &mounts, true);
    let mut file_systems = Vec::new();
    for (name, m) in &seen {
        let Some(b) = blocks.by_name.get(name.as_str()) else {
            continue;
        };
        let device = Blocks::device_path(b);
        let under = blocks.disks_under(name, 0);
        if disk.is_empty() || !under.contains(&disk) {
            for d in &under {
                other_disks.insert(d.clone());
            }
            warnings.push(format!(
                "{} ({}) is on {}, not on the system disk: it is not copied and the new VM will not have it",
                m.mountpoint.display(),
                device.display(),
                under.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
            continue;
        }
        match blocks.placement(name, 0) {
            Ok((_, segments)) => file_systems.push(FileSystem {
                device,
                mountpoint: m.mountpoint.clone(),
                fstype: m.fstype.clone(),
                size_bytes: b.size_sectors * SECTOR,
                used_bytes: facts.used_bytes.get(&m.mountpoint).copied().unwrap_or(0),
                segments,
            }),
            // The root's reason is already there.
            Err(_) if root.is_some_and(|r| r.mountpoint == m.mountpoint) => {}
            Err(why) => refusals.push(format!(
                "{} ({}): {why}",
                m.mountpoint.display(),
                device.display()
            )),
        }
    }
    file_systems.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));

    let mut swaps = Vec::new();
    for file in swap_partitions(facts) {
        let Some(b) = blocks.by_path(&file) else {
            warnings.push(format!(
                "swap {file} is not a known block device; it is not copied"
            ));
            continue;
        };
        if is_virtual(&b.name) {
            continue;
        }
        let under = blocks.disks_under(&b.name, 0);
        if disk.is_empty() || !under.contains(&disk) {
            other_disks.extend(under.iter().cloned());
            warnings.push(format!(
                "swap {file} is not on the system disk: it is not copied"
            ));
            continue;
        }
        match blocks.placement(&b.name, 0) {
            Ok((_, segments)) => swaps.push(Area {
                device: Blocks::device_path(b),
                size_bytes: b.size_sectors * SECTOR,
                segments,
            }),
            // Not a refusal: the area is then copied whole as unknown bytes of the disk.
            Err(why) => warnings.push(format!(
                "swap {file}: {why}; its bytes are copied as they are"
            )),
        }
    }

    if !other_disks.is_empty() {
        warnings.push(format!(
            "only the system disk is copied; not copied: {}",
            other_disks.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }

    let os = os_info(facts, &mut refusals);
    let has = |p: &str| facts.existing.contains(p);
    let firmware = if has("/sys/firmware/efi") {
        "uefi"
    } else {
        "bios"
    }
    .to_string();
    let boot_loader = (has("/boot/grub") || has("/boot/grub2")).then(|| "grub2".to_string());
    if boot_loader.is_none() {
        warnings
            .push("no /boot/grub or /boot/grub2: the boot loader was not recognised".to_string());
    }

    let disk_bytes = blocks
        .by_name
        .get(disk.as_str())
        .map(|b| b.size_sectors * SECTOR)
        .unwrap_or(0);
    SourcePlan {
        disk: if disk.is_empty() {
            PathBuf::new()
        } else {
            Path::new("/dev").join(&disk)
        },
        disk_bytes,
        file_systems,
        swaps,
        os,
        firmware,
        boot_loader,
        other_disks: other_disks.into_iter().collect(),
        refusals,
        warnings,
    }
}

fn os_info(facts: &Facts, refusals: &mut Vec<String>) -> OsInfo {
    let has = |p: &str| facts.existing.contains(p);
    let initramfs_tool = if has("/usr/sbin/update-initramfs") || has("/sbin/update-initramfs") {
        Some("initramfs-tools".to_string())
    } else if has("/usr/bin/dracut") || has("/usr/sbin/dracut") || has("/sbin/dracut") {
        Some("dracut".to_string())
    } else {
        None
    };
    let mut os = OsInfo {
        kernel: facts.kernel.clone(),
        initramfs_tool,
        ..OsInfo::default()
    };
    let Some(text) = &facts.os_release else {
        refusals.push("no /etc/os-release: cannot tell which distribution this is".to_string());
        return os;
    };
    let kv = parse_os_release(text);
    let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
    os.pretty_name = get("PRETTY_NAME");
    os.id = get("ID");
    os.id_like = get("ID_LIKE");
    let debian = std::iter::once(os.id.as_str())
        .chain(os.id_like.split_whitespace())
        .any(|w| w == "debian");
    if !debian {
        let name = if os.pretty_name.is_empty() {
            os.id.clone()
        } else {
            os.pretty_name.clone()
        };
        refusals.push(format!(
            "not Debian-family: {name} (ID={}) is not supported yet",
            os.id
        ));
    } else if os.initramfs_tool.as_deref() != Some("initramfs-tools") {
        refusals.push(match &os.initramfs_tool {
            Some(t) => {
                format!("the initramfs is built by {t}; only initramfs-tools is supported yet")
            }
            None => {
                "no initramfs-tools (update-initramfs): the new VM's initramfs could not be rebuilt"
                    .to_string()
            }
        });
    }
    os
}

// ---------------------------------------------------------------------------------------
// The part that reads the system.

/// Scan the running system.
pub fn discover() -> Result<SourcePlan, ScanError> {
    Ok(plan_from(&read_facts()?))
}

/// Scan the disk at `disk` (`/dev/sda`, `/dev/loop0`, a `/dev/disk/by-id/` link), mounted
/// or not: [`read_facts`], then the first bytes of the disk and of each device on it
/// ([`probe_targets`]), then [`plan_for_disk`]. A path that is not a whole disk is an
/// error before anything is read.
pub fn discover_disk(disk: &Path) -> Result<SourcePlan, ScanError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let not_a_disk = |reason: String| ScanError::NotADisk {
        path: disk.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(disk).map_err(|source| ScanError::Read {
        path: disk.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(not_a_disk("not a block device".into()));
    }
    let facts = read_facts()?;
    let dev = dev_numbers(meta.rdev());
    let name = facts
        .blocks
        .iter()
        .find(|b| b.dev == dev)
        .map(|b| b.name.clone())
        .ok_or_else(|| not_a_disk(format!("no {}:{} in /sys/class/block", dev.0, dev.1)))?;
    check_disk(&facts, &name).map_err(not_a_disk)?;
    let read_error = |source| ScanError::Read {
        path: disk.to_path_buf(),
        source,
    };
    let mut reader = DiskReader::open(disk).map_err(read_error)?;
    let whole = [Segment {
        fs_offset: 0,
        disk_offset: 0,
        len: reader.size(),
    }];
    let head = read_through(&mut reader, &whole, PROBE_BYTES).map_err(read_error)?;
    // One unreadable partition is the plan's business (a warning), not a failed scan.
    let probes = probe_targets(&facts, &name)
        .into_iter()
        .map(|(dev, segments)| {
            let p = match read_through(&mut reader, &segments, PROBE_BYTES) {
                Ok(bytes) => probe(&bytes),
                Err(e) => Probe::Unreadable(e.to_string()),
            };
            (dev, p)
        })
        .collect();
    Ok(plan_for_disk(&facts, &name, &probes, &head))
}

/// `st_rdev` → (major, minor), glibc's encoding (12 bits of major, 20 of minor, split).
fn dev_numbers(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

/// The first `len` bytes of a device lying along `segments` of the disk; past the device's
/// end the buffer stays zero (a probe then finds nothing there).
fn read_through(
    disk: &mut DiskReader,
    segments: &[Segment],
    len: usize,
) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    for s in segments {
        let Ok(from) = usize::try_from(s.fs_offset) else {
            continue;
        };
        let to = usize::try_from(s.fs_offset.saturating_add(s.len))
            .unwrap_or(usize::MAX)
            .min(len);
        if from >= to {
            continue;
        }
        let data = disk.read_at(s.disk_offset, to - from)?;
        out[from..to].copy_from_slice(data);
    }
    Ok(out)
}

fn read(path: &str) -> Result<String, ScanError> {
    std::fs::read_to_string(path).map_err(|source| ScanError::Read {
        path: path.into(),
        source,
    })
}

/// Gather the [`Facts`] of the running system. Only mountinfo and /sys/class/block are
/// required; everything else missing becomes a refusal or a warning in the plan.
pub fn read_facts() -> Result<Facts, ScanError> {
    let mountinfo = read("/proc/self/mountinfo")?;
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let os_release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .ok();
    let existing = PROBED_PATHS
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .collect();
    let blocks = read_blocks(Path::new("/sys/class/block"))?;
    let dm_tables = blocks
        .iter()
        .filter_map(|b| b.dm_name.as_ref())
        .map(|dm| (dm.clone(), dmsetup_table(dm)))
        .collect();
    // Only mounts from a device: statvfs of a hard-mounted NFS share whose server is gone
    // would hang the scan.
    let used_bytes = parse_mountinfo(&mountinfo)
        .into_iter()
        .filter(|m| m.source.starts_with("/dev/"))
        .filter_map(|m| statvfs_used(&m.mountpoint).map(|u| (m.mountpoint, u)))
        .collect();
    Ok(Facts {
        mountinfo,
        swaps,
        os_release,
        kernel: kernel_release(),
        existing,
        blocks,
        dm_tables,
        used_bytes,
    })
}

/// Read every entry of `/sys/class/block` (a parameter so a test can point it at a copy).
pub fn read_blocks(class: &Path) -> Result<Vec<BlockFacts>, ScanError> {
    let entries = std::fs::read_dir(class).map_err(|source| ScanError::Read {
        path: class.into(),
        source,
    })?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dir = class.join(&name);
        let text = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let num = |f: &str| text(f).and_then(|s| s.parse::<u64>().ok());
        let Some(dev) = text("dev").and_then(|d| {
            let (a, b) = d.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        }) else {
            continue;
        };
        let is_partition = dir.join("partition").exists();
        // /sys/class/block/sda1 -> ../../devices/.../block/sda/sda1: the parent directory
        // of a partition is its disk.
        let parent = if is_partition {
            std::fs::canonicalize(&dir).ok().and_then(|p| {
                p.parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
        } else {
            None
        };
        let mut slaves: Vec<String> = std::fs::read_dir(dir.join("slaves"))
            .map(|d| {
                d.flatten()
                    .map(|s| s.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        slaves.sort();
        out.push(BlockFacts {
            name,
            dev,
            size_sectors: num("size").unwrap_or(0),
            start_sectors: if is_partition { num("start") } else { None },
            parent,
            dm_name: text("dm/name").filter(|n| !n.is_empty()),
            slaves,
            md: dir.join("md").exists(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `dmsetup table <name>`; old systems keep dmsetup in /sbin, which may not be on PATH.
fn dmsetup_table(name: &str) -> Result<String, String> {
    let mut last = String::from("dmsetup not found");
    for cmd in ["dmsetup", "/sbin/dmsetup", "/usr/sbin/dmsetup"] {
        match std::process::Command::new(cmd)
            .args(["table", "--", name])
            .output()
        {
            Ok(out) if out.status.success() => {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(out) => {
                return Err(format!(
                    "dmsetup: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => last = format!("dmsetup: {e}"),
        }
    }
    Err(last)
}

fn statvfs_used(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the zeroed struct we own; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * st.f_frsize as u64)
}

fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct we own; release is NUL-terminated by the kernel.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests;
