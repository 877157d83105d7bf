//! [`plan_for_disk`] over synthetic facts (the Debian test server's facts of
//! `scan::tests`, a cold server booted from our media, the benchmark's loop disk), and over
//! a real disk image made with sfdisk, mke2fs and mkswap, read through
//! [`crate::ranges::scan_disk_ranges`].

use super::super::tests::{base, block, dm, part};
use super::*;

const MIB: u64 = 1 << 20;
const S: u64 = SECTOR;

fn ext4(used: u64) -> Probe {
    Probe::Ext {
        fstype: "ext4".into(),
        used_bytes: used,
    }
}

/// The Debian test server's disk seen from our boot media: the RAM system's root, nothing
/// of sda mounted, no swap active, no LV active (dm-0 gone).
fn cold() -> Facts {
    let mut f = base();
    f.mountinfo = "1 0 0:2 / / rw - rootfs rootfs rw\n\
                   20 1 0:5 / /dev rw - devtmpfs udev rw\n\
                   21 1 8:17 / /run/live/medium ro - vfat /dev/sdb1 ro\n"
        .into();
    f.swaps = "Filename Type Size Used Priority\n".into();
    f.existing.clear();
    f.os_release = Some("ID=corral-p2v\n".into());
    f.used_bytes.clear();
    f.blocks.retain(|b| b.name != "dm-0");
    f
}

fn probes(list: &[(&str, Probe)]) -> BTreeMap<String, Probe> {
    list.iter()
        .map(|(n, p)| (n.to_string(), p.clone()))
        .collect()
}

/// sda1 ext4, sda2 a PV, sda3 swap.
fn cold_probes() -> BTreeMap<String, Probe> {
    probes(&[
        ("sda1", ext4(1_000_000)),
        ("sda2", Probe::LvmPv),
        ("sda3", Probe::Swap),
    ])
}

/// An MBR with GRUB's boot code.
fn grub_head() -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[0x180..0x184].copy_from_slice(b"GRUB");
    h[510] = 0x55;
    h[511] = 0xAA;
    h
}

#[test]
fn the_running_systems_disk_is_planned_as_discover_plans_it() {
    let f = base();
    assert_eq!(
        plan_for_disk(&f, "sda", &BTreeMap::new(), &[]),
        plan_from(&f)
    );
}

#[test]
fn not_a_whole_disk() {
    let mut f = base();
    f.blocks.push(BlockFacts {
        md: true,
        slaves: vec!["sda1".into()],
        ..block("md0", (9, 0), 100)
    });
    for (name, want) in [
        (
            "sda1",
            "sda1 is a partition of sda; name the whole disk (/dev/sda)",
        ),
        ("dm-0", "dm-0 is the device-mapper device srcvg-var"),
        ("md0", "md0 is md RAID, not a disk"),
        ("sdz", "sdz is not in /sys/class/block"),
    ] {
        assert!(
            check_disk(&f, name).is_err_and(|e| e.contains(want)),
            "{name}"
        );
        let p = plan_for_disk(&f, name, &BTreeMap::new(), &[]);
        assert_eq!(p.disk, PathBuf::new(), "{name}");
        assert!(p.refusals[0].contains(want), "{name}: {:?}", p.refusals);
        assert!(p.file_systems.is_empty());
    }
    assert_eq!(check_disk(&f, "sdb"), Ok(()));
    assert_eq!(check_disk(&f, "loop0"), Ok(()));
}

#[test]
fn a_cold_server() {
    let f = cold();
    let p = plan_for_disk(&f, "sda", &cold_probes(), &grub_head());
    assert_eq!(p.refusals, Vec::<String>::new());
    assert_eq!(p.disk, PathBuf::from("/dev/sda"));
    assert_eq!(
        p.file_systems,
        vec![FileSystem {
            device: "/dev/sda1".into(),
            mountpoint: PathBuf::new(),
            fstype: "ext4".into(),
            size_bytes: 8_388_608 * S,
            used_bytes: 1_000_000,
            segments: vec![Segment {
                fs_offset: 0,
                disk_offset: 2048 * S,
                len: 8_388_608 * S
            }],
        }]
    );
    assert_eq!(
        p.swaps,
        vec![Area {
            device: "/dev/sda3".into(),
            size_bytes: 2_093_056 * S,
            segments: vec![Segment {
                fs_offset: 0,
                disk_offset: 18_876_416 * S,
                len: 2_093_056 * S
            }],
        }]
    );
    // The media's own OS is not the server's.
    assert_eq!(p.os, OsInfo::default());
    assert_eq!(p.firmware, "bios");
    assert_eq!(p.boot_loader.as_deref(), Some("grub2"));
    // The media's stick is not "another disk of the server".
    assert!(p.other_disks.is_empty());
    let has = |w: &str| p.warnings.iter().any(|x| x.contains(w));
    assert!(has(
        "/dev/sda2 is an LVM physical volume whose logical volumes are not active"
    ));
    assert!(has("the agent's conversion checks it"));
    assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
}

#[test]
fn cold_variations() {
    type Change = fn(&mut Facts, &mut BTreeMap<String, Probe>, &mut Vec<u8>);
    type Check = fn(&SourcePlan);
    let table: &[(&str, Change, Check)] = &[
        (
            "active LVs: the unmounted LV is read through the PV",
            |f, pr, _| {
                f.blocks
                    .push(dm("dm-0", (253, 0), "srcvg-var", 4_194_304, &["sda2"]));
                pr.insert("dm-0".into(), ext4(5));
            },
            |p| {
                assert_eq!(p.file_systems.len(), 2);
                let var = &p.file_systems[1];
                assert_eq!(var.device, PathBuf::from("/dev/mapper/srcvg-var"));
                assert_eq!(var.mountpoint, PathBuf::new());
                assert_eq!(var.segments.len(), 2);
                assert_eq!(var.segments[1].disk_offset, (8_390_656 + 6_293_504) * S);
                assert!(!p.warnings.iter().any(|w| w.contains("LVM physical volume")));
            },
        ),
        (
            "no ext, only a PV: LVM counts as Linux",
            |_, pr, _| {
                pr.insert("sda1".into(), Probe::Other("vfat".into()));
            },
            |p| assert!(p.file_systems.is_empty()),
        ),
        (
            "xfs and btrfs are file systems sent whole",
            |_, pr, _| {
                pr.insert("sda1".into(), Probe::Xfs);
                pr.insert("sda3".into(), Probe::Btrfs);
            },
            |p| {
                let types: Vec<_> = p.file_systems.iter().map(|f| f.fstype.as_str()).collect();
                assert_eq!(types, ["xfs", "btrfs"]);
                assert!(p.swaps.is_empty());
            },
        ),
        (
            "GPT with an EFI System partition",
            |_, _, head| {
                // Protective MBR, header in LBA 1, entries from LBA 2.
                head.resize(34 * 512, 0);
                head[510] = 0x55;
                head[511] = 0xAA;
                head[512..520].copy_from_slice(b"EFI PART");
                head[512 + 72] = 2;
                head[512 + 80] = 128;
                head[512 + 84] = 128;
                head[1024..1040].copy_from_slice(&[
                    0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9,
                    0x3E, 0xC9, 0x3B,
                ]);
                head[0x180..0x184].fill(0);
            },
            |p| {
                assert_eq!(p.firmware, "uefi");
                assert_eq!(p.boot_loader, None);
                assert!(p.warnings.iter().any(|w| w.contains("no GRUB boot code")));
            },
        ),
        (
            "a LUKS partition is a warning",
            |_, pr, _| {
                pr.insert("sda3".into(), Probe::Other("crypto_LUKS".into()));
            },
            |p| {
                assert!(p
                    .warnings
                    .iter()
                    .any(|w| w.contains("/dev/sda3 is encrypted")))
            },
        ),
        (
            "an unreadable partition is a warning",
            |_, pr, _| {
                pr.insert("sda3".into(), Probe::Unreadable("I/O error".into()));
            },
            |p| {
                assert!(p
                    .warnings
                    .iter()
                    .any(|w| w.contains("/dev/sda3 could not be read (I/O error)")));
                assert!(p.swaps.is_empty());
            },
        ),
        (
            "an extended partition's placeholder is not probed",
            |f, pr, _| {
                f.blocks.push(part("sda4", (8, 4), "sda", 20_969_472, 2));
                pr.insert("sda4".into(), Probe::Other("vfat".into()));
            },
            |p| assert_eq!(p.file_systems.len(), 1),
        ),
        (
            "a file system on the whole disk",
            |f, pr, _| {
                f.blocks.push(block("vdb", (252, 16), 2048));
                pr.insert("vdb".into(), ext4(4096));
            },
            |_| {},
        ),
    ];
    for (name, change, check) in table {
        let (mut f, mut pr, mut head) = (cold(), cold_probes(), grub_head());
        change(&mut f, &mut pr, &mut head);
        let p = plan_for_disk(&f, "sda", &pr, &head);
        assert_eq!(p.refusals, Vec::<String>::new(), "{name}");
        check(&p);
    }

    // The whole-disk case, on that disk.
    let mut f = cold();
    f.blocks.push(block("vdb", (252, 16), 2048));
    let p = plan_for_disk(&f, "vdb", &probes(&[("vdb", ext4(4096))]), &[]);
    assert_eq!(p.refusals, Vec::<String>::new());
    assert_eq!(
        p.file_systems[0].segments,
        vec![Segment {
            fs_offset: 0,
            disk_offset: 0,
            len: MIB
        }]
    );
    assert_eq!(p.boot_loader, None);
}

#[test]
fn cold_refusals() {
    type Change = fn(&mut Facts, &mut BTreeMap<String, Probe>);
    let table: &[(&str, Change, &str)] = &[
        (
            "nothing Linux",
            |_, pr| {
                *pr = probes(&[
                    ("sda1", Probe::Other("vfat".into())),
                    ("sda3", Probe::Swap),
                ]);
            },
            "no Linux file system found on /dev/sda (found: /dev/sda1 vfat, /dev/sda2 unknown, /dev/sda3 swap)",
        ),
        (
            "an empty disk",
            |f, pr| {
                f.blocks.retain(|b| b.parent.as_deref() != Some("sda"));
                pr.clear();
            },
            "no Linux file system found on /dev/sda (found: /dev/sda unknown)",
        ),
        (
            "an md member",
            |_, pr| {
                pr.insert("sda3".into(), Probe::Other("linux_raid_member".into()));
            },
            "/dev/sda3 is a member of an md RAID",
        ),
        (
            "an assembled md array on the disk",
            |f, _| {
                f.blocks.push(BlockFacts {
                    md: true,
                    slaves: vec!["sda3".into()],
                    ..block("md0", (9, 0), 100)
                });
            },
            "md0 is md RAID on sda",
        ),
        (
            "an open LUKS volume (dm-crypt) on the disk",
            |f, _| {
                f.blocks
                    .push(dm("dm-1", (253, 1), "sda3_crypt", 100, &["sda3"]));
                f.dm_tables.insert(
                    "sda3_crypt".into(),
                    Ok("0 100 crypt aes-xts-plain64 :64:logon:x 0 8:3 4096\n".into()),
                );
            },
            "/dev/mapper/sda3_crypt: sda3_crypt is dm-crypt (encrypted)",
        ),
        (
            "a loop device with nothing attached",
            |f, pr| {
                f.blocks.retain(|b| b.parent.as_deref() != Some("sda"));
                f.blocks.iter_mut().for_each(|b| b.size_sectors = 0);
                pr.clear();
            },
            "/dev/sda is empty (0 bytes",
        ),
        (
            "a partition table the kernel did not read",
            |f, pr| {
                f.blocks.retain(|b| b.parent.as_deref() != Some("sda"));
                pr.clear();
            },
            "/dev/sda has a partition table but the kernel lists no partitions of it",
        ),
    ];
    for (name, change, want) in table {
        let (mut f, mut pr) = (cold(), cold_probes());
        change(&mut f, &mut pr);
        let mut head = grub_head();
        // A partition entry, unless the table is about a blank disk.
        if !name.contains("empty disk") {
            head[446 + 4] = 0x83;
        }
        let p = plan_for_disk(&f, "sda", &pr, &head);
        assert!(
            p.refusals.iter().any(|r| r.contains(want)),
            "{name}: want {want:?} in {:?}",
            p.refusals
        );
        assert_eq!(p.refusals.len(), 1, "{name}: {:?}", p.refusals);
    }
}

/// The benchmark: the host runs from sda; loop0 (partitioned with `losetup -P`) has its
/// ext4 mounted at /mnt/bench and an unmounted swap.
#[test]
fn the_benchmarks_loop_disk() {
    let mut f = base();
    // No squashfs on loop0 this time: loop0 is the benchmark's disk.
    f.mountinfo = f
        .mountinfo
        .lines()
        .filter(|l| !l.contains("/snap/core"))
        .map(|l| format!("{l}\n"))
        .collect();
    f.mountinfo
        .push_str("40 22 259:0 / /mnt/bench rw,relatime shared:30 - ext4 /dev/loop0p1 rw\n");
    f.used_bytes.insert("/mnt/bench".into(), 2 << 30);
    f.blocks.retain(|b| b.name != "loop0");
    f.blocks.extend([
        block("loop0", (7, 0), 6 << 21),
        part("loop0p1", (259, 0), "loop0", 2048, 5 << 21),
        part(
            "loop0p2",
            (259, 1),
            "loop0",
            2048 + (5 << 21),
            (1 << 21) - 2048,
        ),
    ]);
    let pr = probes(&[("loop0p1", ext4(1)), ("loop0p2", Probe::Swap)]);
    let p = plan_for_disk(&f, "loop0", &pr, &[]);
    assert_eq!(p.refusals, Vec::<String>::new());
    assert_eq!(p.disk, PathBuf::from("/dev/loop0"));
    assert_eq!(p.disk_bytes, 6 << 30);
    assert_eq!(p.file_systems.len(), 1);
    let fs = &p.file_systems[0];
    assert_eq!(fs.mountpoint, PathBuf::from("/mnt/bench"));
    // statvfs, not the probe, for a mounted one.
    assert_eq!(fs.used_bytes, 2 << 30);
    assert_eq!(fs.segments[0].disk_offset, MIB);
    assert_eq!(p.swaps.len(), 1);
    assert_eq!(p.swaps[0].device, PathBuf::from("/dev/loop0p2"));
    // The host's own disks are none of this plan's business.
    assert!(p.other_disks.is_empty(), "{:?}", p.other_disks);
    assert!(
        !p.warnings.iter().any(|w| w.contains("sdb")),
        "{:?}",
        p.warnings
    );
    assert_eq!(p.os, OsInfo::default());
    // What the caller freezes.
    assert_eq!(p.mountpoints(), vec![PathBuf::from("/mnt/bench")]);
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 73 MiB disk image with a DOS label: p1 (64 MiB at 1 MiB) an ext4 holding 3 MiB of
/// files, p2 (8 MiB) a swap, GRUB's name in the boot code. No loop device, no mount.
#[test]
fn a_disk_image_planned_and_read_through_its_bitmaps() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let image = path("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(73 * MIB)
        .unwrap();
    let mut sfdisk = std::process::Command::new("sfdisk");
    sfdisk
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&image)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"label: dos\nstart=2048, size=131072, type=83\nstart=133120, size=16384, type=82\n")
            .unwrap();
    }
    assert!(child.wait().unwrap().success());

    std::fs::create_dir(path("tree")).unwrap();
    std::fs::write(path("tree/f"), vec![7u8; 3 * MIB as usize]).unwrap();
    run(std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
        .arg(path("tree"))
        .arg(path("p1.img"))
        .arg("64M"));
    std::fs::File::create(path("p2.img"))
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    run(std::process::Command::new("mkswap")
        .arg("-q")
        .arg(path("p2.img")));
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    disk.write_all_at(&std::fs::read(path("p1.img")).unwrap(), MIB)
        .unwrap();
    disk.write_all_at(&std::fs::read(path("p2.img")).unwrap(), 65 * MIB)
        .unwrap();
    disk.write_all_at(b"GRUB", 0x180).unwrap();

    let mut f = cold();
    f.blocks = vec![
        block("vda", (252, 0), 73 * MIB / S),
        part("vda1", (252, 1), "vda", 2048, 131_072),
        part("vda2", (252, 2), "vda", 133_120, 16_384),
    ];
    let mut reader = DiskReader::open(&image).unwrap();
    let whole = [Segment {
        fs_offset: 0,
        disk_offset: 0,
        len: reader.size(),
    }];
    let head = read_through(&mut reader, &whole, PROBE_BYTES).unwrap();
    let pr: BTreeMap<String, Probe> = probe_targets(&f, "vda")
        .into_iter()
        .map(|(n, segs)| {
            let bytes = read_through(&mut reader, &segs, PROBE_BYTES).unwrap();
            (n, probe(&bytes))
        })
        .collect();
    assert_eq!(pr.keys().collect::<Vec<_>>(), ["vda1", "vda2"]);
    assert_eq!(pr["vda2"], Probe::Swap);

    let p = plan_for_disk(&f, "vda", &pr, &head);
    assert_eq!(p.refusals, Vec::<String>::new());
    assert_eq!(p.boot_loader.as_deref(), Some("grub2"));
    assert_eq!(p.firmware, "bios");
    assert_eq!(p.disk_bytes, 73 * MIB);
    let fs = &p.file_systems[..];
    assert_eq!(fs.len(), 1);
    assert_eq!(
        (fs[0].fstype.as_str(), fs[0].mountpoint.as_os_str()),
        ("ext4", std::ffi::OsStr::new(""))
    );
    assert_eq!(
        fs[0].segments,
        vec![Segment {
            fs_offset: 0,
            disk_offset: MIB,
            len: 64 * MIB
        }]
    );
    assert_eq!(
        p.swaps[0].segments,
        vec![Segment {
            fs_offset: 0,
            disk_offset: 65 * MIB,
            len: 8 * MIB
        }]
    );
    // The superblock's count is the bitmaps' count on a cleanly made file system.
    let p1 = std::fs::File::open(path("p1.img")).unwrap();
    let bitmaps = crate::ext4::used_ranges(|o, b| p1.read_exact_at(b, o), 64 * MIB).unwrap();
    let used = crate::ranges::total(&bitmaps);
    assert_eq!(fs[0].used_bytes, used);
    assert!(used > 3 * MIB && used < 16 * MIB, "{used}");

    let d = crate::ranges::scan_disk_ranges(&p, &mut reader);
    assert!(d.notes.is_empty(), "{:?}", d.notes);
    assert_eq!(d.bytes, MIB + used + 4096);
}

#[test]
fn device_numbers() {
    assert_eq!(dev_numbers(0x0801), (8, 1));
    assert_eq!(dev_numbers(0x10300), (259, 0));
    // minor 256 of major 7 (the 257th loop device): minor's high bits above the major.
    assert_eq!(dev_numbers(0x0010_0700), (7, 256));
}
