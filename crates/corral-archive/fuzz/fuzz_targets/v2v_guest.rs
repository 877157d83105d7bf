#![no_main]
//! What a V2V conversion reads from an untrusted disk image (`corral-convert`): a raw disk's
//! partition table and signatures as it streams past (`probe`), `blkid`'s and the facts
//! script's output, and the guest's own configuration files (fstab, crypttab, GRUB defaults,
//! ifupdown, networkd, netplan, udev rules, initramfs modules) through the whole plan, with
//! both network modes and growth. No input may panic.
use corral_convert::facts::parse_facts;
use corral_convert::plan::*;
use corral_convert::probe::{Probe, TABLE_BYTES};
use libfuzzer_sys::fuzz_target;

/// Every file the plan reads, as the guest might have it.
const GUEST_FILES: &[&str] = &[
    "/etc/fstab",
    "/etc/crypttab",
    "/etc/default/grub",
    "/etc/network/interfaces",
    "/etc/network/interfaces.d/eth",
    "/etc/initramfs-tools/modules",
    "/etc/initramfs-tools/conf.d/resume",
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/systemd/network/10-eth.network",
    "/etc/netplan/01-netcfg.yaml",
    "/boot/grub/device.map",
];

fn layout(blkid: &str) -> Layout {
    let mut devices = vec![
        parse_blkid("/dev/sda", "PTTYPE: dos\n"),
        parse_blkid(
            "/dev/sda1",
            "UUID: 0429\nTYPE: ext4\nPART_ENTRY_NUMBER: 1\nPART_ENTRY_OFFSET: 2048\nPART_ENTRY_SIZE: 4096\nPART_ENTRY_TYPE: 0x83\n",
        ),
    ];
    // The fuzzed blkid answer as a third device, an LV of the one PV.
    devices.push(parse_blkid("/dev/vg/lv", blkid));
    Layout {
        disk: "/dev/sda".into(),
        disk_sectors: 1 << 22,
        table: "dos".into(),
        devices,
        lvs: vec!["/dev/vg/lv".into()],
        pvs: vec![("/dev/sda2".into(), "vg".into())],
    }
}

fuzz_target!(|data: &[u8]| {
    let mut p = Probe::new(&data[..data.len().min(TABLE_BYTES)]);
    for (i, c) in data.chunks(4093).enumerate() {
        p.feed(i as u64 * 4093, c);
    }
    let _ = p.verdict();

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_facts("@@B", text);
    let layout = layout(text);
    let _ = layout.describe();
    let fstab = parse_fstab(text);
    let mounts = plan_mounts("/dev/sda1", &fstab, &layout);
    let mut files = GuestFiles::default();
    files
        .files
        .insert("/etc/os-release".into(), "ID=debian\n".into());
    for f in GUEST_FILES {
        files.files.insert(f.to_string(), text.to_string());
    }
    for (t, p) in [
        ("update-initramfs", "/usr/sbin/update-initramfs"),
        ("update-grub", "/usr/sbin/update-grub"),
        ("grub-install", "/usr/sbin/grub-install"),
    ] {
        files.tools.insert(t.into(), p.into());
    }
    files.exists.insert("/usr/lib/grub/i386-pc".into());
    files.exists.insert("/lib/systemd/systemd-udevd".into());
    files.kernels.insert(
        "6.1.0".into(),
        VIRTIO_MODULES
            .iter()
            .map(|m| (m.to_string(), true))
            .collect(),
    );
    files.units.push(format!(
        "/etc/systemd/system/multi-user.target.wants/{}",
        text.lines().next().unwrap_or("")
    ));
    files
        .units
        .push("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service".into());
    files.mbr_grub = true;
    let facts = GuestFacts {
        layout,
        guest_disk: "/dev/disk/guestfs/corral".into(),
        root: "/dev/sda1".into(),
        mounts,
        files,
    };
    let _ = plan(&facts, &Options::default());
    let _ = plan(
        &facts,
        &Options {
            network: NetworkMode::Keep,
            nic_macs: vec!["52:54:00:00:00:01".into()],
            grow: true,
            emptied: vec!["/var/cache/apt".into()],
        },
    );
});
