//! The whole-disk list of what to send: byte ranges of the system disk, sorted, merged,
//! rounded outward to 4 KiB and clipped to the disk.
//!
//! The rule is "send what we cannot prove useless". Proven useless: the free blocks of an
//! ext2/3/4 file system (from its bitmaps, [`crate::ext4`]) and a swap area past its
//! signature page (a swap's contents die with the running system; its first 4 KiB hold the
//! signature and UUID that `/etc/fstab` and the resume hook look for). Everything else is
//! sent whole: other file systems (xfs, btrfs, vfat), the MBR and the gap GRUB lives in,
//! partition tables including GPT's backup at the end, LVM headers and metadata, free
//! space in a volume group, partitions nothing has mounted. The caller skips all-zero
//! chunks, so a whole range of never-written space costs little on the wire.
//!
//! [`disk_ranges`] is pure; [`fs_used_ranges`] and [`scan_disk_ranges`] read the disk.

use crate::disk::DiskReader;
use crate::ext4::{self, Ext4Error};
use crate::scan::{FileSystem, Segment, SourcePlan};
use std::io;

/// Ranges are rounded outward to this: the page size, and the block size of most file
/// systems, so a range never starts or ends inside a block a file system uses.
pub const ROUND: u64 = 4096;
/// What of a swap area is sent: its first page (signature, UUID, label).
pub const SWAP_HEADER_BYTES: u64 = 4096;

/// File system types whose used blocks [`fs_used_ranges`] can read.
pub fn is_ext(fstype: &str) -> bool {
    matches!(fstype, "ext2" | "ext3" | "ext4")
}

/// The disk byte ranges `(offset, len)` to send. `used` gives, for a file system, its used
/// byte ranges relative to its own start, or `None` to send it whole (a type we do not
/// read, or a read that failed).
pub fn disk_ranges(
    plan: &SourcePlan,
    mut used: impl FnMut(&FileSystem) -> Option<Vec<(u64, u64)>>,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    // What the plan explains; the rest of the disk is sent whole.
    let mut known = Vec::new();
    for fs in &plan.file_systems {
        known.extend(fs.segments.iter().map(|s| (s.disk_offset, s.len)));
        match used(fs) {
            Some(ranges) => {
                for (off, len) in ranges {
                    map_through(&fs.segments, off, len, &mut out);
                }
            }
            None => out.extend(fs.segments.iter().map(|s| (s.disk_offset, s.len))),
        }
    }
    for swap in &plan.swaps {
        known.extend(swap.segments.iter().map(|s| (s.disk_offset, s.len)));
        map_through(
            &swap.segments,
            0,
            SWAP_HEADER_BYTES.min(swap.size_bytes),
            &mut out,
        );
    }
    // The gaps stay exact (not rounded) so that rounding the result outward is the only
    // place bytes are added.
    let known = merge(known);
    let mut at = 0;
    for (off, len) in known {
        if off > at {
            out.push((at, off - at));
        }
        at = at.max(off + len);
    }
    if at < plan.disk_bytes {
        out.push((at, plan.disk_bytes - at));
    }
    let rounded = out.into_iter().map(|(off, len)| {
        let start = off / ROUND * ROUND;
        let end = (off.saturating_add(len))
            .div_ceil(ROUND)
            .saturating_mul(ROUND);
        (start, end - start)
    });
    clip(merge(rounded.collect()), plan.disk_bytes)
}

/// A file system's own byte ranges (e.g. a file's extents), onto the disk.
pub fn fs_to_disk(fs: &FileSystem, ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(off, len) in ranges {
        map_through(&fs.segments, off, len, &mut out);
    }
    merge(out)
}

/// `ranges` without `holes`. Holes are shrunk inward to whole sectors, so what remains
/// stays whole sectors (what a frame carries).
pub fn subtract(ranges: Vec<(u64, u64)>, holes: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    const SECTOR: u64 = 512;
    let holes: Vec<(u64, u64)> = merge(holes)
        .into_iter()
        .filter_map(|(off, len)| {
            let start = off.div_ceil(SECTOR) * SECTOR;
            let end = (off + len) / SECTOR * SECTOR;
            (end > start).then(|| (start, end - start))
        })
        .collect();
    let mut out = Vec::new();
    for (off, len) in merge(ranges) {
        let (mut at, end) = (off, off + len);
        for &(h, hl) in holes.iter().filter(|&&(h, hl)| h < end && h + hl > off) {
            if h > at {
                out.push((at, h - at));
            }
            at = at.max(h + hl);
        }
        if at < end {
            out.push((at, end - at));
        }
    }
    out
}

/// `[off, off+len)` of a device, through its segments, onto the disk.
fn map_through(segments: &[Segment], off: u64, len: u64, out: &mut Vec<(u64, u64)>) {
    let end = off.saturating_add(len);
    for s in segments {
        let a = off.max(s.fs_offset);
        let b = end.min(s.fs_offset + s.len);
        if a < b {
            out.push((s.disk_offset + (a - s.fs_offset), b - a));
        }
    }
}

/// Sort and merge overlapping or touching ranges; empty ones vanish.
pub fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|r| r.1 > 0);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (off, len) in ranges {
        let end = off.saturating_add(len);
        match out.last_mut() {
            Some(last) if off <= last.0 + last.1 => last.1 = last.1.max(end - last.0),
            _ => out.push((off, end - off)),
        }
    }
    out
}

fn clip(ranges: Vec<(u64, u64)>, size: u64) -> Vec<(u64, u64)> {
    ranges
        .into_iter()
        .filter(|r| r.0 < size)
        .map(|(off, len)| (off, len.min(size - off)))
        .collect()
}

/// The total length of a list of ranges.
pub fn total(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|r| r.1).sum()
}

/// The used ranges of an ext file system, read through the disk along its segments.
pub fn fs_used_ranges(
    fs: &FileSystem,
    disk: &mut DiskReader,
) -> Result<Vec<(u64, u64)>, Ext4Error> {
    let segments = fs.segments.clone();
    ext4::used_ranges(
        |off, buf| {
            // A read may straddle two segments (an LV in pieces): serve it piecewise, in
            // chunks the reader's buffer holds.
            let mut done = 0usize;
            while done < buf.len() {
                let at = off + done as u64;
                let seg = segments
                    .iter()
                    .find(|s| at >= s.fs_offset && at < s.fs_offset + s.len)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "past the end of the file system",
                        )
                    })?;
                let n = (buf.len() - done)
                    .min(crate::disk::MAX_READ)
                    .min(usize::try_from(seg.fs_offset + seg.len - at).unwrap_or(usize::MAX));
                let data = disk.read_at(seg.disk_offset + (at - seg.fs_offset), n)?;
                buf[done..done + n].copy_from_slice(data);
                done += n;
            }
            Ok(())
        },
        fs.size_bytes,
    )
}

/// The ranges to send and, for each ext file system that had to be sent whole, why.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskRanges {
    pub ranges: Vec<(u64, u64)>,
    pub bytes: u64,
    pub notes: Vec<String>,
}

/// [`disk_ranges`] with ext file systems read through `disk`. Taken again during the final
/// pass, while frozen, the bitmaps it reads are exact (see [`crate::ext4`]).
pub fn scan_disk_ranges(plan: &SourcePlan, disk: &mut DiskReader) -> DiskRanges {
    let mut notes = Vec::new();
    let ranges = disk_ranges(plan, |fs| {
        if !is_ext(&fs.fstype) {
            return None;
        }
        fs_used_ranges(fs, disk)
            .map_err(|e| {
                // An unmounted file system has no mount point to name it by.
                let name = if fs.mountpoint.as_os_str().is_empty() {
                    &fs.device
                } else {
                    &fs.mountpoint
                };
                notes.push(format!(
                    "{} ({}) is sent whole: {e}",
                    name.display(),
                    fs.fstype
                ))
            })
            .ok()
    });
    DiskRanges {
        bytes: total(&ranges),
        ranges,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{Area, OsInfo};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    const MIB: u64 = 1 << 20;

    fn plan(disk_bytes: u64, file_systems: Vec<FileSystem>, swaps: Vec<Area>) -> SourcePlan {
        SourcePlan {
            disk: "/dev/sda".into(),
            disk_bytes,
            file_systems,
            swaps,
            os: OsInfo::default(),
            firmware: "bios".into(),
            boot_loader: None,
            other_disks: vec![],
            refusals: vec![],
            warnings: vec![],
        }
    }

    fn fs(mountpoint: &str, fstype: &str, segments: &[(u64, u64, u64)]) -> FileSystem {
        let segments: Vec<Segment> = segments
            .iter()
            .map(|&(fs_offset, disk_offset, len)| Segment {
                fs_offset,
                disk_offset,
                len,
            })
            .collect();
        FileSystem {
            device: PathBuf::from("/dev/x"),
            mountpoint: mountpoint.into(),
            fstype: fstype.into(),
            size_bytes: segments.iter().map(|s| s.len).sum(),
            used_bytes: 0,
            segments,
        }
    }

    /// 100 MiB disk: MBR + gap [0,1M); root ext4 [1M,41M); PV [41M,91M) holding var in two
    /// pieces [42M,52M) and [70M,80M) (fs offsets 0 and 10M); swap [91M,99M); 1 MiB
    /// unpartitioned at the end, whose last 4 KiB are not a whole 4 KiB from the start
    /// (the disk is 100 MiB + 512 bytes).
    fn synthetic() -> SourcePlan {
        plan(
            100 * MIB + 512,
            vec![
                fs("/", "ext4", &[(0, MIB, 40 * MIB)]),
                fs(
                    "/var",
                    "ext4",
                    &[(0, 42 * MIB, 10 * MIB), (10 * MIB, 70 * MIB, 10 * MIB)],
                ),
            ],
            vec![Area {
                device: "/dev/sda3".into(),
                size_bytes: 8 * MIB,
                segments: vec![Segment {
                    fs_offset: 0,
                    disk_offset: 91 * MIB,
                    len: 8 * MIB,
                }],
            }],
        )
    }

    #[test]
    fn used_blocks_mapped_and_gaps_whole() {
        let p = synthetic();
        let used: BTreeMap<&str, Vec<(u64, u64)>> = [
            // Unaligned on purpose: 1 KiB blocks at 1 KiB and 5 KiB..7 KiB round to [0,8K).
            ("/", vec![(1024, 1024), (5 * 1024, 2048), (10 * MIB, MIB)]),
            // Straddles var's two pieces: 9M..11M of var.
            ("/var", vec![(0, 4096), (9 * MIB, 2 * MIB)]),
        ]
        .into();
        let r = disk_ranges(&p, |f| used.get(f.mountpoint.to_str().unwrap()).cloned());
        assert_eq!(
            r,
            vec![
                // MBR and gap, merged with root's first blocks (rounded to [1M, 1M+8K)).
                (0, MIB + 8192),
                (MIB + 10 * MIB, MIB),
                // The PV's header before var (41M..42M), and var's first 4 KiB.
                (41 * MIB, MIB + 4096),
                // var 9M..10M at 51M..52M, PV free space 52M..70M, var 10M..11M at 70M..71M.
                (51 * MIB, 20 * MIB),
                // PV space after var's second piece, then (touching it) the swap's
                // signature page.
                (80 * MIB, 11 * MIB + 4096),
                // The unpartitioned end, clipped to the disk.
                (99 * MIB, MIB + 512),
            ]
        );
    }

    #[test]
    fn a_file_system_not_read_is_sent_whole() {
        let p = synthetic();
        let r = disk_ranges(&p, |f| {
            if f.mountpoint.to_str() == Some("/") {
                None
            } else {
                Some(vec![])
            }
        });
        assert_eq!(
            r,
            vec![
                (0, 42 * MIB),
                (52 * MIB, 18 * MIB),
                (80 * MIB, 11 * MIB + 4096),
                (99 * MIB, MIB + 512)
            ]
        );
        // Nothing used anywhere: only what the plan cannot explain, and the swap page.
        let r = disk_ranges(&p, |_| Some(vec![]));
        assert_eq!(
            r,
            vec![
                (0, MIB),
                (41 * MIB, MIB),
                (52 * MIB, 18 * MIB),
                (80 * MIB, 11 * MIB + 4096),
                (99 * MIB, MIB + 512)
            ]
        );
    }

    #[test]
    fn used_ranges_past_the_segments_are_dropped() {
        let p = plan(10 * MIB, vec![fs("/", "xfs", &[(0, 0, 10 * MIB)])], vec![]);
        assert_eq!(
            disk_ranges(&p, |_| Some(vec![(9 * MIB, 5 * MIB)])),
            vec![(9 * MIB, MIB)]
        );
        assert_eq!(disk_ranges(&p, |_| None), vec![(0, 10 * MIB)]);
    }

    #[test]
    fn subtracting_holes_keeps_whole_sectors() {
        let ranges = vec![(0, 8192), (16384, 4096)];
        // A hole in the middle, one straddling the end of the first range, one not aligned.
        let holes = vec![(1024, 1024), (7168, 10240), (17000, 100)];
        assert_eq!(
            subtract(ranges, holes),
            vec![(0, 1024), (2048, 5120), (17408, 3072)]
        );
        // The unaligned hole (17000..17100) covers no whole sector: nothing is cut there.
        assert_eq!(
            subtract(vec![(16384, 4096)], vec![(17000, 100)]),
            vec![(16384, 4096)]
        );
        let lv = fs(
            "/var",
            "ext4",
            &[(0, 100 * MIB, 10 * MIB), (10 * MIB, 300 * MIB, 10 * MIB)],
        );
        assert_eq!(
            fs_to_disk(&lv, &[(MIB, 4096), (10 * MIB + 8192, 4096)]),
            vec![(101 * MIB, 4096), (300 * MIB + 8192, 4096)]
        );
    }

    #[test]
    fn merge_sorts_merges_touching_and_drops_empty() {
        assert_eq!(
            merge(vec![(10, 5), (0, 10), (30, 0), (14, 2), (40, 1)]),
            vec![(0, 16), (40, 1)]
        );
        assert_eq!(merge(vec![]), vec![]);
        assert_eq!(merge(vec![(0, 100), (10, 5)]), vec![(0, 100)]);
    }

    #[test]
    fn ext_read_through_a_disk_with_a_split_lv() {
        use std::os::unix::fs::FileExt;
        // An ext4 image laid on a "disk" in two pieces, swapped: fs [0,32M) at disk 40M,
        // fs [32M,64M) at disk 4M. The ranges read through the disk must equal the ranges
        // read from the image directly, mapped.
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("f"), vec![7u8; 3 * MIB as usize]).unwrap();
        let img = dir.path().join("fs.img");
        let ok = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("64M")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let image = std::fs::read(&img).unwrap();
        let disk_path = dir.path().join("disk.img");
        let disk_file = std::fs::File::create(&disk_path).unwrap();
        disk_file.set_len(80 * MIB).unwrap();
        disk_file
            .write_all_at(&image[..32 * MIB as usize], 40 * MIB)
            .unwrap();
        disk_file
            .write_all_at(&image[32 * MIB as usize..], 4 * MIB)
            .unwrap();
        let lv = fs(
            "/var",
            "ext4",
            &[(0, 40 * MIB, 32 * MIB), (32 * MIB, 4 * MIB, 32 * MIB)],
        );
        let mut disk = DiskReader::open(&disk_path).unwrap();
        let through = fs_used_ranges(&lv, &mut disk).unwrap();
        let f = std::fs::File::open(&img).unwrap();
        let direct = ext4::used_ranges(|o, b| f.read_exact_at(b, o), 64 * MIB).unwrap();
        assert_eq!(through, direct);

        let p = plan(80 * MIB, vec![lv], vec![]);
        let d = scan_disk_ranges(&p, &mut disk);
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert_eq!(d.bytes, total(&d.ranges));
        // Exactly the 16 MiB the LV does not cover plus the used blocks of the fs.
        assert_eq!(d.bytes, 16 * MIB + total(&direct));
        assert!(d.bytes < 40 * MIB, "{}", d.bytes);

        // A broken superblock: the file system is sent whole, with a note saying why.
        disk_file
            .write_all_at(&[0, 0], 40 * MIB + 1024 + 0x38)
            .unwrap();
        let d = scan_disk_ranges(&p, &mut disk);
        assert_eq!(d.ranges, vec![(0, 80 * MIB)]);
        assert!(
            d.notes[0].contains("/var (ext4) is sent whole"),
            "{:?}",
            d.notes
        );
    }
}
