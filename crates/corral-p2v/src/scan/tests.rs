//! Table tests of [`plan_from`] over synthetic facts: the Debian 12 test server, then one
//! change at a time.

use super::*;

const GIB: u64 = 1 << 30;
const S: u64 = SECTOR;

pub(super) fn block(name: &str, dev: (u32, u32), size_sectors: u64) -> BlockFacts {
    BlockFacts {
        name: name.into(),
        dev,
        size_sectors,
        ..BlockFacts::default()
    }
}

pub(super) fn part(name: &str, dev: (u32, u32), parent: &str, start: u64, size: u64) -> BlockFacts {
    BlockFacts {
        start_sectors: Some(start),
        parent: Some(parent.into()),
        ..block(name, dev, size)
    }
}

pub(super) fn dm(
    name: &str,
    dev: (u32, u32),
    dm_name: &str,
    size: u64,
    slaves: &[&str],
) -> BlockFacts {
    BlockFacts {
        dm_name: Some(dm_name.into()),
        slaves: slaves.iter().map(|s| s.to_string()).collect(),
        ..block(name, dev, size)
    }
}

const DEBIAN: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
HOME_URL="https://www.debian.org/"
"#;

/// sda (10 GiB): sda1 / (ext4, 4 GiB at 1 MiB), sda2 a PV (5 GiB) holding srcvg-var in two
/// pieces, sda3 swap, 1 MiB unpartitioned at the end; sdb1 mounted at /data; a loop device
/// and a bind mount.
pub(super) fn base() -> Facts {
    let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
25 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=1000k
26 22 0:25 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
30 22 253:0 / /var rw,relatime shared:20 - ext4 /dev/mapper/srcvg-var rw
31 22 8:17 / /data rw,relatime shared:21 - xfs /dev/sdb1 rw
32 22 7:0 / /snap/core rw,relatime shared:22 - squashfs /dev/loop0 ro
33 22 253:0 /lib/x /srv/with\\040space rw,relatime shared:20 - ext4 /dev/mapper/srcvg-var rw
";
    Facts {
        mountinfo: mountinfo.into(),
        swaps: "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                /dev/sda3                               partition\t1046524\t\t0\t\t-2\n\
                /swapfile                               file\t\t102396\t\t0\t\t-3\n"
            .into(),
        os_release: Some(DEBIAN.into()),
        kernel: "6.1.0-18-amd64".into(),
        existing: ["/usr/sbin/update-initramfs", "/boot/grub"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        blocks: vec![
            block("sda", (8, 0), 20_971_520),
            part("sda1", (8, 1), "sda", 2048, 8_388_608),
            part("sda2", (8, 2), "sda", 8_390_656, 10_485_760),
            part("sda3", (8, 3), "sda", 18_876_416, 2_093_056),
            block("sdb", (8, 16), 4_194_304),
            part("sdb1", (8, 17), "sdb", 2048, 4_192_256),
            dm("dm-0", (253, 0), "srcvg-var", 4_194_304, &["sda2"]),
            block("loop0", (7, 0), 1000),
        ],
        dm_tables: [(
            "srcvg-var".to_string(),
            Ok("0 2097152 linear 8:2 2048\n2097152 2097152 linear 8:2 6293504\n".to_string()),
        )]
        .into(),
        used_bytes: [
            (PathBuf::from("/"), 1_500_000_000),
            (PathBuf::from("/var"), 300_000_000),
        ]
        .into(),
    }
}

#[test]
fn the_debian_test_server() {
    let p = plan_from(&base());
    assert_eq!(p.refusals, Vec::<String>::new());
    assert_eq!(p.disk, PathBuf::from("/dev/sda"));
    assert_eq!(p.disk_bytes, 10 * GIB);
    assert_eq!(
        p.file_systems,
        vec![
            FileSystem {
                device: "/dev/sda1".into(),
                mountpoint: "/".into(),
                fstype: "ext4".into(),
                size_bytes: 4 * GIB,
                used_bytes: 1_500_000_000,
                segments: vec![Segment {
                    fs_offset: 0,
                    disk_offset: 2048 * S,
                    len: 4 * GIB
                }],
            },
            FileSystem {
                device: "/dev/mapper/srcvg-var".into(),
                mountpoint: "/var".into(),
                fstype: "ext4".into(),
                size_bytes: 2 * GIB,
                used_bytes: 300_000_000,
                segments: vec![
                    Segment {
                        fs_offset: 0,
                        disk_offset: (8_390_656 + 2048) * S,
                        len: GIB
                    },
                    Segment {
                        fs_offset: GIB,
                        disk_offset: (8_390_656 + 6_293_504) * S,
                        len: GIB
                    },
                ],
            },
        ]
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
    assert_eq!(
        p.os,
        OsInfo {
            pretty_name: "Debian GNU/Linux 12 (bookworm)".into(),
            id: "debian".into(),
            id_like: "".into(),
            kernel: "6.1.0-18-amd64".into(),
            initramfs_tool: Some("initramfs-tools".into()),
        }
    );
    assert_eq!(p.firmware, "bios");
    assert_eq!(p.boot_loader.as_deref(), Some("grub2"));
    assert_eq!(p.other_disks, vec!["sdb".to_string()]);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("/data") && w.contains("sdb")),
        "{:?}",
        p.warnings
    );
    // The plan is what the CLI prints as JSON.
    let _: &dyn erased::Serialize = &p;
}

/// Just enough to check `SourcePlan: Serialize` without a JSON dependency.
mod erased {
    pub trait Serialize {}
    impl<T: serde::Serialize> Serialize for T {}
}

fn mount_line(dev: &str, mountpoint: &str, fstype: &str, source: &str) -> String {
    format!("99 1 {dev} / {mountpoint} rw shared:1 - {fstype} {source} rw\n")
}

/// Replace the root mount line.
fn root_is(f: &mut Facts, dev: &str, fstype: &str, source: &str) {
    let rest: String = f
        .mountinfo
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect();
    f.mountinfo = mount_line(dev, "/", fstype, source) + &rest;
}

#[test]
fn refusals() {
    type Change = fn(&mut Facts);
    let table: &[(&str, Change, &str)] = &[
        (
            "nfs root",
            |f| root_is(f, "0:50", "nfs4", "srv:/export"),
            "(nfs4 from srv:/export) is not on a block device",
        ),
        (
            "overlay root",
            |f| root_is(f, "0:33", "overlay", "overlay"),
            "is not on a block device",
        ),
        (
            "tmpfs root",
            |f| root_is(f, "0:34", "tmpfs", "none"),
            "is not on a block device",
        ),
        (
            "root on a loop device",
            |f| root_is(f, "7:0", "squashfs", "/dev/loop0"),
            "on loop0",
        ),
        (
            "reiserfs root",
            |f| root_is(f, "8:1", "reiserfs", "/dev/sda1"),
            "the root file system is reiserfs",
        ),
        (
            "root on md RAID",
            |f| {
                f.blocks.push(BlockFacts {
                    md: true,
                    slaves: vec!["sda1".into(), "sdb1".into()],
                    ..block("md0", (9, 0), 100)
                });
                root_is(f, "9:0", "ext4", "/dev/md0");
            },
            "md0 is md RAID",
        ),
        (
            "root on dm-crypt",
            |f| {
                f.blocks
                    .push(dm("dm-1", (253, 1), "root_crypt", 100, &["sda1"]));
                f.dm_tables.insert(
                    "root_crypt".into(),
                    Ok("0 100 crypt aes-xts-plain64 :64:logon:x 0 8:1 4096\n".into()),
                );
                root_is(f, "253:1", "ext4", "/dev/mapper/root_crypt");
            },
            "root_crypt is dm-crypt (encrypted) (crypt target)",
        ),
        (
            "/var on a snapshot origin",
            |f| {
                f.dm_tables.insert(
                    "srcvg-var".into(),
                    Ok("0 4194304 snapshot-origin 253:3\n".into()),
                );
            },
            "/var (/dev/mapper/srcvg-var): srcvg-var is an LVM snapshot or its origin",
        ),
        (
            "/var on a thin volume",
            |f| {
                f.dm_tables
                    .insert("srcvg-var".into(), Ok("0 4194304 thin 253:4 1\n".into()));
            },
            "thin provisioning (thin target)",
        ),
        (
            "an LV spanning two disks",
            |f| {
                f.blocks.retain(|b| b.name != "dm-0");
                f.blocks.push(dm(
                    "dm-0",
                    (253, 0),
                    "srcvg-var",
                    4_194_304,
                    &["sda2", "sdb1"],
                ));
                f.dm_tables.insert(
                    "srcvg-var".into(),
                    Ok("0 2097152 linear 8:2 2048\n2097152 2097152 linear 8:17 2048\n".into()),
                );
            },
            "srcvg-var spans two disks (sda and sdb)",
        ),
        (
            "dmsetup failed",
            |f| {
                f.dm_tables
                    .insert("srcvg-var".into(), Err("dmsetup not found".into()));
            },
            "cannot read the device-mapper table of srcvg-var: dmsetup not found",
        ),
        (
            "a linear target past the end of its device",
            |f| {
                f.dm_tables.insert(
                    "srcvg-var".into(),
                    Ok("0 4194304 linear 8:2 10000000\n".into()),
                );
            },
            "runs past the end of sda2",
        ),
        (
            "no os-release",
            |f| f.os_release = None,
            "no /etc/os-release",
        ),
        (
            "CentOS",
            |f| {
                f.os_release = Some("NAME=\"CentOS Linux\"\nID=\"centos\"\nID_LIKE=\"rhel fedora\"\nPRETTY_NAME=\"CentOS Linux 7 (Core)\"\n".into())
            },
            "not Debian-family: CentOS Linux 7 (Core) (ID=centos) is not supported yet",
        ),
        (
            "no initramfs-tools",
            |f| f.existing.clear(),
            "no initramfs-tools",
        ),
        (
            "dracut",
            |f| f.existing = ["/usr/bin/dracut".to_string()].into(),
            "the initramfs is built by dracut; only initramfs-tools is supported yet",
        ),
        (
            "no root at all",
            |f| f.mountinfo = f.mountinfo.lines().skip(1).collect::<Vec<_>>().join("\n"),
            "no root file system",
        ),
    ];
    for (name, change, want) in table {
        let mut f = base();
        change(&mut f);
        let p = plan_from(&f);
        assert!(
            p.refusals.iter().any(|r| r.contains(want)),
            "{name}: want {want:?} in {:?}",
            p.refusals
        );
        assert_eq!(
            p.refusals.len(),
            1,
            "{name}: exactly one refusal: {:?}",
            p.refusals
        );
    }
}

#[test]
fn accepted_variations() {
    type Change = fn(&mut Facts);
    type Check = fn(&SourcePlan);
    let table: &[(&str, Change, Check)] = &[
        (
            "Ubuntu is Debian-family",
            |f| {
                f.os_release =
                    Some("PRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nID=ubuntu\nID_LIKE=debian\n".into())
            },
            |p| assert_eq!(p.os.id_like, "debian"),
        ),
        (
            "old Debian: tools in /sbin, grub2 directory, UEFI",
            |f| {
                f.existing = ["/sbin/update-initramfs", "/boot/grub2", "/sys/firmware/efi"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            },
            |p| {
                assert_eq!(p.firmware, "uefi");
                assert_eq!(p.boot_loader.as_deref(), Some("grub2"));
                assert_eq!(p.os.initramfs_tool.as_deref(), Some("initramfs-tools"));
            },
        ),
        (
            "no grub is a warning",
            |f| f.existing = ["/usr/sbin/update-initramfs".to_string()].into(),
            |p| {
                assert_eq!(p.boot_loader, None);
                assert!(p.warnings.iter().any(|w| w.contains("boot loader")));
            },
        ),
        (
            "btrfs root found through its source (anonymous device number)",
            |f| root_is(f, "0:31", "btrfs", "/dev/sda1"),
            |p| {
                assert_eq!(p.disk, PathBuf::from("/dev/sda"));
                assert_eq!(p.file_systems[0].fstype, "btrfs");
            },
        ),
        (
            "root on a whole disk without partitions",
            |f| {
                f.blocks.push(block("vdb", (252, 16), 2_097_152));
                root_is(f, "252:16", "xfs", "/dev/vdb");
            },
            |p| {
                assert_eq!(p.disk, PathBuf::from("/dev/vdb"));
                assert_eq!(p.file_systems.len(), 1);
                assert_eq!(
                    p.file_systems[0].segments,
                    vec![Segment {
                        fs_offset: 0,
                        disk_offset: 0,
                        len: GIB
                    }]
                );
                // /var and the swap now live on another disk (sda).
                assert_eq!(p.other_disks, vec!["sda".to_string(), "sdb".to_string()]);
                assert!(p.swaps.is_empty());
            },
        ),
        (
            "root on an LV, contiguous targets merged, table naming a path",
            |f| {
                f.blocks
                    .push(dm("dm-2", (253, 2), "srcvg-root", 2_097_152, &["sda2"]));
                f.dm_tables.insert(
                    "srcvg-root".into(),
                    Ok(
                        "0 1048576 linear /dev/sda2 4196352\n1048576 1048576 linear 8:2 5244928\n"
                            .into(),
                    ),
                );
                root_is(f, "253:2", "ext4", "/dev/mapper/srcvg-root");
            },
            |p| {
                assert_eq!(p.disk, PathBuf::from("/dev/sda"));
                let root = p
                    .file_systems
                    .iter()
                    .find(|f| f.mountpoint == Path::new("/"))
                    .unwrap();
                assert_eq!(
                    root.segments,
                    vec![Segment {
                        fs_offset: 0,
                        disk_offset: (8_390_656 + 4_196_352) * S,
                        len: GIB
                    }]
                );
                // sda1 is no longer mounted: it is unknown bytes of the disk, not a file system.
                assert_eq!(p.file_systems.len(), 2);
            },
        ),
        (
            "an LV on an LV (linear over linear)",
            |f| {
                f.blocks
                    .push(dm("dm-2", (253, 2), "inner", 1024, &["dm-0"]));
                f.dm_tables
                    .insert("inner".into(), Ok("0 1024 linear 253:0 2097150\n".into()));
                f.mountinfo
                    .push_str(&mount_line("253:2", "/srv", "ext4", "/dev/mapper/inner"));
            },
            |p| {
                let srv = p
                    .file_systems
                    .iter()
                    .find(|f| f.mountpoint == Path::new("/srv"))
                    .unwrap();
                // Two sectors at the end of var's first piece, the rest at its second.
                assert_eq!(
                    srv.segments,
                    vec![
                        Segment {
                            fs_offset: 0,
                            disk_offset: (8_390_656 + 2048 + 2_097_150) * S,
                            len: 2 * S
                        },
                        Segment {
                            fs_offset: 2 * S,
                            disk_offset: (8_390_656 + 6_293_504) * S,
                            len: 1022 * S
                        },
                    ]
                );
            },
        ),
        (
            "a swap on another disk is a warning",
            |f| f.swaps = "Filename Type Size Used Priority\n/dev/sdb1 partition 100 0 -2\n".into(),
            |p| {
                assert!(p.swaps.is_empty());
                assert!(p
                    .warnings
                    .iter()
                    .any(|w| w.contains("swap /dev/sdb1 is not on the system disk")));
            },
        ),
        (
            "a swap LV named by its dm node",
            |f| {
                f.blocks
                    .push(dm("dm-3", (253, 3), "srcvg-swap", 2048, &["sda2"]));
                f.dm_tables.insert(
                    "srcvg-swap".into(),
                    Ok("0 2048 linear 8:2 8390656\n".into()),
                );
                f.swaps =
                    "Filename Type Size Used Priority\n/dev/dm-3 partition 1020 0 -2\n".into();
            },
            |p| {
                assert_eq!(p.swaps.len(), 1);
                assert_eq!(p.swaps[0].device, PathBuf::from("/dev/mapper/srcvg-swap"));
                assert_eq!(
                    p.swaps[0].segments[0].disk_offset,
                    (8_390_656 + 8_390_656) * S
                );
            },
        ),
    ];
    for (name, change, check) in table {
        let mut f = base();
        change(&mut f);
        let p = plan_from(&f);
        assert_eq!(p.refusals, Vec::<String>::new(), "{name}");
        check(&p);
    }
}

#[test]
fn bind_mounts_and_loop_devices_are_not_file_systems_of_their_own() {
    let p = plan_from(&base());
    let points: Vec<_> = p
        .file_systems
        .iter()
        .map(|f| f.mountpoint.clone())
        .collect();
    assert_eq!(points, vec![PathBuf::from("/"), PathBuf::from("/var")]);
}

#[test]
fn mountinfo_and_os_release_parsing() {
    let m = parse_mountinfo("33 22 253:0 /lib/x /srv/with\\040space\\134 rw,relatime shared:20 master:3 - ext4 /dev/a\\011b rw\nbroken line\n");
    assert_eq!(
        m,
        vec![Mount {
            dev: (253, 0),
            root: "/lib/x".into(),
            mountpoint: "/srv/with space\\".into(),
            fstype: "ext4".into(),
            source: "/dev/a\tb".into(),
        }]
    );
    assert_eq!(unescape("a\\777b\\12"), "a\\777b\\12");
    let kv = parse_os_release("# comment\nID='debian'\nPRETTY_NAME=\"A \\\"B\\\"\"\nEMPTY=\n");
    assert_eq!(kv["ID"], "debian");
    assert_eq!(kv["PRETTY_NAME"], "A \"B\"");
    assert_eq!(kv["EMPTY"], "");
}

#[test]
fn read_blocks_on_this_machine_does_not_fail() {
    // Whatever this machine has; the point is that reading real sysfs works end to end.
    let blocks = read_blocks(Path::new("/sys/class/block")).unwrap();
    for b in &blocks {
        if b.parent.is_some() {
            assert!(b.start_sectors.is_some(), "{b:?}");
        }
    }
    let f = read_facts().unwrap();
    assert!(!f.mountinfo.is_empty());
    eprintln!("{:#?}", plan_from(&f));
}
