//! The source is a disk the caller names (`corral p2v --source-disk /dev/sda`), mounted or
//! not: cold P2V from our boot media (nothing of the disk is mounted, one pass, no freeze),
//! or a loop device in the transfer benchmark (its file systems mounted somewhere, frozen
//! for the final pass).
//!
//! The mounted file systems and active swaps on that disk are found as [`plan_from`] finds
//! them. The partitions and device-mapper devices on it that nothing uses are identified
//! by their first bytes ([`crate::probe`]): an unmounted ext file system becomes a
//! [`FileSystem`] with an empty `mountpoint` (its used blocks are still read from its
//! bitmaps), an unmounted swap an [`Area`]. Without a mounted `/` the OS is not read — that
//! would mean mounting the source — and is left to the agent's conversion, which refuses
//! guests it cannot convert; firmware and boot loader then come from the disk's first
//! sectors.

use super::*;
use crate::probe::{boot_from_head, has_partition_table, Probe};

/// Why the block device `name` cannot be the disk copied, if it cannot.
pub fn check_disk(facts: &Facts, name: &str) -> Result<(), String> {
    let b = facts
        .blocks
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| format!("{name} is not in /sys/class/block"))?;
    if let Some(parent) = &b.parent {
        return Err(format!(
            "{name} is a partition of {parent}; name the whole disk (/dev/{parent})"
        ));
    }
    if let Some(dm) = &b.dm_name {
        return Err(format!(
            "{name} is the device-mapper device {dm} (an LVM volume?), not a disk"
        ));
    }
    if b.md || name.starts_with("md") {
        return Err(format!("{name} is md RAID, not a disk"));
    }
    Ok(())
}

/// The devices of `disk` whose contents are told from their first bytes: its partitions
/// (not an extended partition's 1 KiB placeholder), the device-mapper and md devices
/// stacked on it, and the disk itself when it has no partitions (a file system or a PV on
/// the whole disk).
fn candidates<'a>(blocks: &Blocks<'a>, disk: &str) -> Vec<&'a BlockFacts> {
    let partitions: Vec<&BlockFacts> = blocks
        .facts
        .blocks
        .iter()
        .filter(|b| b.parent.as_deref() == Some(disk))
        .collect();
    let mut out: Vec<&BlockFacts> = partitions
        .iter()
        .copied()
        .filter(|b| b.size_sectors > 2)
        .collect();
    if partitions.is_empty() {
        out.extend(blocks.by_name.get(disk).copied());
    }
    out.extend(blocks.facts.blocks.iter().filter(|b| {
        (!b.slaves.is_empty() || b.md) && blocks.disks_under(&b.name, 0).contains(disk)
    }));
    out
}

/// The devices on `disk` to read the first [`crate::probe::PROBE_BYTES`] of, with where
/// their bytes lie on the disk (devices that cannot be read through the disk are left out:
/// the plan refuses them).
pub fn probe_targets(facts: &Facts, disk: &str) -> Vec<(String, Vec<Segment>)> {
    let blocks = Blocks::new(facts);
    candidates(&blocks, disk)
        .into_iter()
        .filter_map(|b| {
            let (on, segs) = blocks.placement(&b.name, 0).ok()?;
            (on == disk).then(|| (b.name.clone(), segs))
        })
        .collect()
}

/// Decide what to copy of `disk` (its `/sys/class/block` name) and whether it can be
/// copied: `probes` has what [`crate::probe::probe`] made of the first bytes of each
/// device [`probe_targets`] names, `head` the first bytes of the disk.
pub fn plan_for_disk(
    facts: &Facts,
    disk: &str,
    probes: &BTreeMap<String, Probe>,
    head: &[u8],
) -> SourcePlan {
    let blocks = Blocks::new(facts);
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();
    let mut other_disks = BTreeSet::new();
    if let Err(why) = check_disk(facts, disk) {
        return SourcePlan {
            disk: PathBuf::new(),
            disk_bytes: 0,
            file_systems: vec![],
            swaps: vec![],
            os: OsInfo::default(),
            firmware: "bios".into(),
            boot_loader: None,
            other_disks: vec![],
            refusals: vec![why],
            warnings: vec![],
        };
    }
    let disk_path = Path::new("/dev").join(disk);
    let on_disk = |name: &str| blocks.disks_under(name, 0).contains(disk);

    // The running system's root on this disk: the disk is copied as `discover` copies it,
    // and what is mounted elsewhere is named as not copied.
    let mounts = parse_mountinfo(&facts.mountinfo);
    let root = mounts.iter().rev().find(|m| m.mountpoint == Path::new("/"));
    let root_dev = root
        .and_then(|r| blocks.of_mount(r))
        .filter(|b| on_disk(&b.name));
    let holds_root = root_dev.is_some();
    if let (Some(r), Some(_)) = (root, root_dev) {
        if !ROOT_FSTYPES.contains(&r.fstype.as_str()) {
            refusals.push(format!(
                "the root file system is {}; only {} are supported",
                r.fstype,
                ROOT_FSTYPES.join(", ")
            ));
        }
    }

    // Mounted: loop devices count here (the benchmark's disk is one).
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut file_systems = Vec::new();
    for (name, m) in &visible_mounts(&blocks, &mounts, false) {
        let Some(b) = blocks.by_name.get(name.as_str()) else {
            continue;
        };
        let device = Blocks::device_path(b);
        if !on_disk(name) {
            if holds_root && !is_virtual(name) {
                let under = blocks.disks_under(name, 0);
                other_disks.extend(under.iter().cloned());
                warnings.push(format!(
                    "{} ({}) is on {}, not on the system disk: it is not copied and the new VM will not have it",
                    m.mountpoint.display(),
                    device.display(),
                    under.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            continue;
        }
        used.insert(name.clone());
        match blocks.placement(name, 0) {
            Ok((on, segments)) if on == disk => file_systems.push(FileSystem {
                device,
                mountpoint: m.mountpoint.clone(),
                fstype: m.fstype.clone(),
                size_bytes: b.size_sectors * SECTOR,
                used_bytes: facts.used_bytes.get(&m.mountpoint).copied().unwrap_or(0),
                segments,
            }),
            Ok((on, _)) => refusals.push(format!(
                "{} ({}) lies on {on}, not on {disk}",
                m.mountpoint.display(),
                device.display()
            )),
            Err(why) => refusals.push(format!(
                "{} ({}): {why}",
                m.mountpoint.display(),
                device.display()
            )),
        }
    }
    file_systems.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));

    let mut swaps = Vec::new();
    for file in super::swap_partitions(facts) {
        let Some(b) = blocks.by_path(&file) else {
            continue;
        };
        if !on_disk(&b.name) {
            if holds_root && !is_virtual(&b.name) {
                other_disks.extend(blocks.disks_under(&b.name, 0));
                warnings.push(format!(
                    "swap {file} is not on the system disk: it is not copied"
                ));
            }
            continue;
        }
        used.insert(b.name.clone());
        match blocks.placement(&b.name, 0) {
            Ok((on, segments)) if on == disk => swaps.push(Area {
                device: Blocks::device_path(b),
                size_bytes: b.size_sectors * SECTOR,
                segments,
            }),
            Ok(_) => warnings.push(format!(
                "swap {file} is not only on {disk}; its bytes are copied as they are"
            )),
            Err(why) => warnings.push(format!(
                "swap {file}: {why}; its bytes are copied as they are"
            )),
        }
    }

    // Unused devices, by what their first bytes say. Something stacked on a device (LVs on
    // a PV) explains its contents; the device itself is not a file system.
    let holders: BTreeSet<&str> = facts
        .blocks
        .iter()
        .flat_map(|b| b.slaves.iter().map(String::as_str))
        .collect();
    let mut found: Vec<String> = file_systems
        .iter()
        .map(|f| format!("{} {}", f.device.display(), f.fstype))
        .collect();
    let mut linux = file_systems
        .iter()
        .any(|f| ROOT_FSTYPES.contains(&f.fstype.as_str()));
    let mut unmounted = Vec::new();
    for b in candidates(&blocks, disk) {
        let name = b.name.as_str();
        if used.contains(name) {
            continue;
        }
        let device = Blocks::device_path(b);
        if b.md || name.starts_with("md") {
            refusals.push(format!(
                "{name} is md RAID on {disk}, which is not supported"
            ));
            continue;
        }
        let segments = match blocks.placement(name, 0) {
            Ok((on, segments)) if on == disk => segments,
            Ok((on, _)) => {
                refusals.push(format!("{} lies on {on}, not on {disk}", device.display()));
                continue;
            }
            Err(why) => {
                refusals.push(format!("{}: {why}", device.display()));
                continue;
            }
        };
        // A linear device-mapper device on the disk is LVM (or something like it).
        linux |= b.dm_name.is_some();
        let probe = probes.get(name).cloned().unwrap_or(Probe::Unknown);
        found.push(format!("{} {}", device.display(), probe.name()));
        let stacked_on = holders.contains(name);
        let size_bytes = b.size_sectors * SECTOR;
        match probe {
            Probe::Ext { .. } | Probe::Xfs | Probe::Btrfs if stacked_on => {}
            Probe::Ext { fstype, used_bytes } => {
                linux = true;
                unmounted.push(FileSystem {
                    device,
                    mountpoint: PathBuf::new(),
                    fstype,
                    size_bytes,
                    used_bytes,
                    segments,
                });
            }
            Probe::Xfs | Probe::Btrfs => {
                linux = true;
                unmounted.push(FileSystem {
                    device,
                    mountpoint: PathBuf::new(),
                    fstype: probe.name().to_string(),
                    size_bytes,
                    used_bytes: 0,
                    segments,
                });
            }
            Probe::Swap if !stacked_on => swaps.push(Area {
                device,
                size_bytes,
                segments,
            }),
            Probe::LvmPv => {
                linux = true;
                if !stacked_on {
                    warnings.push(format!(
                        "{} is an LVM physical volume whose logical volumes are not active: it is sent whole, free space included (all-zero chunks are skipped); `vgchange -ay` first sends only their used blocks",
                        device.display()
                    ));
                }
            }
            Probe::Other(kind) if kind == "crypto_LUKS" => warnings.push(format!(
                "{} is encrypted (LUKS): it is sent as it is, and a system inside it cannot be converted",
                device.display()
            )),
            Probe::Other(kind) if kind == "linux_raid_member" => refusals.push(format!(
                "{} is a member of an md RAID, which is not supported",
                device.display()
            )),
            Probe::Unreadable(why) => warnings.push(format!(
                "{} could not be read ({why}): it is sent as it is",
                device.display()
            )),
            _ => {}
        }
    }
    unmounted.sort_by_key(|f| f.segments.first().map(|s| s.disk_offset));
    file_systems.extend(unmounted);
    swaps.sort_by_key(|a| a.segments.first().map(|s| s.disk_offset));

    let disk_bytes = blocks
        .by_name
        .get(disk)
        .map(|b| b.size_sectors * SECTOR)
        .unwrap_or(0);
    let no_partitions = !facts
        .blocks
        .iter()
        .any(|b| b.parent.as_deref() == Some(disk));
    if disk_bytes == 0 {
        refusals.push(format!(
            "{} is empty (0 bytes; a loop device with no file attached?)",
            disk_path.display()
        ));
    } else if !linux && no_partitions && has_partition_table(head) {
        refusals.push(format!(
            "{} has a partition table but the kernel lists no partitions of it (a loop device needs `losetup -P`; otherwise `partprobe`)",
            disk_path.display()
        ));
    } else if !linux {
        refusals.push(format!(
            "no Linux file system found on {} (found: {})",
            disk_path.display(),
            if found.is_empty() {
                "nothing".to_string()
            } else {
                found.join(", ")
            }
        ));
    }
    if !other_disks.is_empty() {
        warnings.push(format!(
            "only the system disk is copied; not copied: {}",
            other_disks.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }

    let (os, firmware, boot_loader) = if holds_root {
        let os = os_info(facts, &mut refusals);
        let has = |p: &str| facts.existing.contains(p);
        let firmware = if has("/sys/firmware/efi") {
            "uefi"
        } else {
            "bios"
        };
        let boot_loader = (has("/boot/grub") || has("/boot/grub2")).then(|| "grub2".to_string());
        if boot_loader.is_none() {
            warnings.push(
                "no /boot/grub or /boot/grub2: the boot loader was not recognised".to_string(),
            );
        }
        (os, firmware.to_string(), boot_loader)
    } else {
        warnings.push(format!(
            "no file system of {} is mounted at /: its OS is not read here (that would mean mounting it); the agent's conversion checks it",
            disk_path.display()
        ));
        let boot = boot_from_head(head);
        if boot.boot_loader.is_none() {
            warnings.push(format!(
                "no GRUB boot code in the first sector of {}: the boot loader was not recognised",
                disk_path.display()
            ));
        }
        (OsInfo::default(), boot.firmware, boot.boot_loader)
    };

    SourcePlan {
        disk_bytes,
        disk: disk_path,
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

#[cfg(test)]
mod tests;
