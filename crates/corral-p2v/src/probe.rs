//! What an unmounted partition holds, and how its disk boots, from their first bytes.
//!
//! A disk named by the caller ([`crate::scan::discover_disk`]) may have file systems nobody
//! has mounted (cold P2V: the server is booted from our media). We must not mount them
//! (the source is never written, and CI cannot mount), so their type is told from the
//! signatures the kernel and blkid look for, in the first [`PROBE_BYTES`] of each device:
//! [`probe`]. The disk's first sectors also tell the firmware (a GPT EFI System partition
//! means UEFI) and whether GRUB's boot code is in the MBR: [`boot_from_head`].
//!
//! Both are pure over a byte buffer; a buffer shorter than a signature's place simply does
//! not match it.

use serde::{Deserialize, Serialize};

/// How much of a device [`probe`] needs: the btrfs superblock sits at 64 KiB, a swap
/// signature at the end of the first page (64 KiB pages on some architectures). The same
/// buffer read at the start of the disk serves [`boot_from_head`] (GPT entries end by
/// 24 KiB even with 4 KiB sectors).
pub const PROBE_BYTES: usize = 68 << 10;

/// What a device's first bytes say it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// ext2/3/4: `fstype` told from the feature flags; `used_bytes` is
    /// (blocks − free blocks) × block size from the superblock (exact when it was unmounted
    /// cleanly; the bitmaps read later are what decides what is sent).
    Ext {
        fstype: String,
        used_bytes: u64,
    },
    Xfs,
    Btrfs,
    Swap,
    /// An LVM2 physical volume.
    LvmPv,
    /// Recognised but not something we copy smartly: `vfat`, `ntfs`, `crypto_LUKS`,
    /// `linux_raid_member`.
    Other(String),
    /// No signature we know (empty, or a type we do not look for).
    Unknown,
    /// The device could not be read; why.
    Unreadable(String),
}

impl Probe {
    /// A short name, as blkid would say it.
    pub fn name(&self) -> &str {
        match self {
            Probe::Ext { fstype, .. } => fstype,
            Probe::Xfs => "xfs",
            Probe::Btrfs => "btrfs",
            Probe::Swap => "swap",
            Probe::LvmPv => "LVM2_member",
            Probe::Other(n) => n,
            Probe::Unknown => "unknown",
            Probe::Unreadable(_) => "unreadable",
        }
    }
}

fn at(b: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(len)?)
}

fn has(b: &[u8], off: usize, magic: &[u8]) -> bool {
    at(b, off, magic.len()) == Some(magic)
}

fn le16(b: &[u8], off: usize) -> Option<u16> {
    at(b, off, 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    at(b, off, 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le64(b: &[u8], off: usize) -> Option<u64> {
    at(b, off, 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// The ext superblock, 1024 bytes into the device.
const EXT_SB: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const EXT_COMPAT_HAS_JOURNAL: u32 = 0x4;
/// extents, 64bit, flex_bg: features only ext4 has.
const EXT4_INCOMPAT: u32 = 0x40 | 0x80 | 0x200;
const EXT_INCOMPAT_64BIT: u32 = 0x80;

fn probe_ext(b: &[u8]) -> Option<Probe> {
    let sb = at(b, EXT_SB, 1024)?;
    if le16(sb, 0x38)? != EXT_MAGIC {
        return None;
    }
    let log = le32(sb, 0x18)?;
    // 64 KiB is the largest block size ext defines; more is not an ext superblock.
    if log > 6 {
        return None;
    }
    let (compat, incompat) = (le32(sb, 0x5C)?, le32(sb, 0x60)?);
    let wide = incompat & EXT_INCOMPAT_64BIT != 0;
    let hi = |off| {
        if wide {
            le32(sb, off).map(u64::from).unwrap_or(0) << 32
        } else {
            0
        }
    };
    let blocks = u64::from(le32(sb, 0x04)?) | hi(0x150);
    let free = u64::from(le32(sb, 0x0C)?) | hi(0x158);
    let fstype = if incompat & EXT4_INCOMPAT != 0 {
        "ext4"
    } else if compat & EXT_COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };
    Some(Probe::Ext {
        fstype: fstype.to_string(),
        used_bytes: blocks.saturating_sub(free).saturating_mul(1024 << log),
    })
}

/// The kernel's page sizes a swap area may have been made for.
const SWAP_PAGE_SIZES: &[usize] = &[4096, 8192, 16384, 65536];

/// Identify the contents of a device from its first bytes (see [`PROBE_BYTES`]).
pub fn probe(b: &[u8]) -> Probe {
    if has(b, 0, b"LUKS\xba\xbe") {
        return Probe::Other("crypto_LUKS".into());
    }
    if has(b, 0, b"XFSB") {
        return Probe::Xfs;
    }
    // The LVM label is in one of the first four sectors.
    if (0..4).any(|s| has(b, s * 512, b"LABELONE") && has(b, s * 512 + 24, b"LVM2 001")) {
        return Probe::LvmPv;
    }
    if let Some(p) = probe_ext(b) {
        return p;
    }
    if has(b, 0x10040, b"_BHRfS_M") {
        return Probe::Btrfs;
    }
    if SWAP_PAGE_SIZES
        .iter()
        .any(|p| has(b, p - 10, b"SWAPSPACE2") || has(b, p - 10, b"SWAP-SPACE"))
    {
        return Probe::Swap;
    }
    // md superblock 1.1 (at 0) or 1.2 (at 4 KiB); 0.90 and 1.0 sit at the end, unread.
    let md = 0xa92b_4efc_u32.to_le_bytes();
    if has(b, 0, &md) || has(b, 4096, &md) {
        return Probe::Other("linux_raid_member".into());
    }
    if has(b, 3, b"NTFS    ") {
        return Probe::Other("ntfs".into());
    }
    let boot_sector = has(b, 510, &[0x55, 0xAA]);
    if boot_sector && (has(b, 54, b"FAT1") || has(b, 82, b"FAT32   ")) {
        return Probe::Other("vfat".into());
    }
    Probe::Unknown
}

/// How the disk boots, as far as its first sectors tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    /// `"uefi"` when the partition table has an EFI System partition, else `"bios"`.
    pub firmware: String,
    /// `"grub2"` when GRUB's boot code is in the MBR.
    pub boot_loader: Option<String>,
}

/// The EFI System partition type, C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as GPT stores it
/// (the first three fields little-endian).
const ESP_GUID: [u8; 16] = [
    0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
];
/// The MBR partition type of an EFI System partition.
const MBR_ESP: u8 = 0xEF;

/// Read the firmware and boot loader from the start of a disk (its first [`PROBE_BYTES`];
/// GPT entries past the buffer are not looked at).
pub fn boot_from_head(head: &[u8]) -> Boot {
    let mbr_ok = has(head, 510, &[0x55, 0xAA]);
    let mbr_esp = mbr_ok && (0..4).any(|i| head.get(446 + 16 * i + 4) == Some(&MBR_ESP));
    // The GPT header is in LBA 1: at 512 on 512-byte-sector disks, at 4096 on 4Kn ones.
    let gpt_esp = [512usize, 4096].iter().any(|&sector| {
        if !has(head, sector, b"EFI PART") {
            return false;
        }
        let (Some(lba), Some(count), Some(size)) = (
            le64(head, sector + 72),
            le32(head, sector + 80),
            le32(head, sector + 84),
        ) else {
            return false;
        };
        let (Ok(size), Ok(count)) = (usize::try_from(size), usize::try_from(count)) else {
            return false;
        };
        let Some(start) = usize::try_from(lba)
            .ok()
            .and_then(|l| l.checked_mul(sector))
        else {
            return false;
        };
        if size < 16 {
            return false;
        }
        // Bounded by the buffer, whatever the header claims.
        (0..count)
            .map_while(|i| at(head, start.checked_add(i.checked_mul(size)?)?, 16))
            .any(|t| t == ESP_GUID)
    });
    let grub = head
        .get(..440)
        .is_some_and(|code| code.windows(4).any(|w| w == b"GRUB"));
    Boot {
        firmware: if gpt_esp || mbr_esp { "uefi" } else { "bios" }.to_string(),
        boot_loader: grub.then(|| "grub2".to_string()),
    }
}

/// Whether the disk's first sectors hold a partition table (a GPT header, or an MBR with
/// at least one partition entry).
pub fn has_partition_table(head: &[u8]) -> bool {
    let gpt = [512usize, 4096].iter().any(|&s| has(head, s, b"EFI PART"));
    let mbr = has(head, 510, &[0x55, 0xAA])
        && (0..4).any(|i| head.get(446 + 16 * i + 4).is_some_and(|&t| t != 0));
    gpt || mbr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> Vec<u8> {
        vec![0u8; PROBE_BYTES]
    }

    fn put(b: &mut [u8], off: usize, bytes: &[u8]) {
        b[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// An ext superblock: 4 KiB blocks (log 2), `blocks` and `free` counts.
    fn ext(compat: u32, incompat: u32, blocks: u32, free: u32) -> Vec<u8> {
        let mut b = buf();
        put(&mut b, 1024 + 0x38, &EXT_MAGIC.to_le_bytes());
        put(&mut b, 1024 + 0x18, &2u32.to_le_bytes());
        put(&mut b, 1024 + 0x5C, &compat.to_le_bytes());
        put(&mut b, 1024 + 0x60, &incompat.to_le_bytes());
        put(&mut b, 1024 + 0x04, &blocks.to_le_bytes());
        put(&mut b, 1024 + 0x0C, &free.to_le_bytes());
        b
    }

    fn with(off: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = buf();
        put(&mut b, off, bytes);
        b
    }

    fn lvm(sector: usize) -> Vec<u8> {
        let mut b = with(sector * 512, b"LABELONE");
        put(&mut b, sector * 512 + 24, b"LVM2 001");
        b
    }

    fn fat(off: usize, name: &[u8]) -> Vec<u8> {
        let mut b = with(off, name);
        put(&mut b, 510, &[0x55, 0xAA]);
        b
    }

    #[test]
    fn signatures() {
        let ext4 = |used| Probe::Ext {
            fstype: "ext4".into(),
            used_bytes: used,
        };
        let table: Vec<(&str, Vec<u8>, Probe)> = vec![
            ("zeros", buf(), Probe::Unknown),
            ("empty buffer", vec![], Probe::Unknown),
            (
                "ext4 (extents)",
                ext(0x4, 0x40 | 0x2, 1000, 400),
                ext4(600 * 4096),
            ),
            ("ext4 (flex_bg only)", ext(0, 0x200, 10, 10), ext4(0)),
            (
                "ext3",
                ext(0x4, 0x2, 10, 4),
                Probe::Ext {
                    fstype: "ext3".into(),
                    used_bytes: 6 * 4096,
                },
            ),
            (
                "ext2",
                ext(0, 0x2, 10, 11),
                Probe::Ext {
                    fstype: "ext2".into(),
                    used_bytes: 0,
                },
            ),
            (
                "ext4, 64bit counts",
                {
                    let mut b = ext(0, 0x80, 0, 0);
                    put(&mut b, 1024 + 0x150, &1u32.to_le_bytes());
                    put(&mut b, 1024 + 0x158, &1u32.to_le_bytes());
                    put(&mut b, 1024 + 0x04, &10u32.to_le_bytes());
                    b
                },
                ext4(10 * 4096),
            ),
            (
                "ext magic, absurd block size",
                {
                    let mut b = ext(0, 0, 1, 0);
                    put(&mut b, 1024 + 0x18, &7u32.to_le_bytes());
                    b
                },
                Probe::Unknown,
            ),
            (
                "ext superblock cut short",
                ext(0, 0x40, 1, 0)[..1500].to_vec(),
                Probe::Unknown,
            ),
            ("swap, 4 KiB pages", with(4086, b"SWAPSPACE2"), Probe::Swap),
            ("old swap", with(4086, b"SWAP-SPACE"), Probe::Swap),
            (
                "swap, 64 KiB pages",
                with(65526, b"SWAPSPACE2"),
                Probe::Swap,
            ),
            (
                "swap signature elsewhere",
                with(4000, b"SWAPSPACE2"),
                Probe::Unknown,
            ),
            ("LVM label in sector 1", lvm(1), Probe::LvmPv),
            ("LVM label in sector 3", lvm(3), Probe::LvmPv),
            ("LVM label in sector 4 is not one", lvm(4), Probe::Unknown),
            (
                "LABELONE of something else",
                with(512, b"LABELONE"),
                Probe::Unknown,
            ),
            ("xfs", with(0, b"XFSB"), Probe::Xfs),
            ("btrfs", with(0x10040, b"_BHRfS_M"), Probe::Btrfs),
            (
                "btrfs past a short buffer",
                with(0x10040, b"_BHRfS_M")[..0x10044].to_vec(),
                Probe::Unknown,
            ),
            (
                "LUKS",
                with(0, b"LUKS\xba\xbe\0\x02"),
                Probe::Other("crypto_LUKS".into()),
            ),
            (
                "md 1.2",
                with(4096, &[0xfc, 0x4e, 0x2b, 0xa9]),
                Probe::Other("linux_raid_member".into()),
            ),
            ("FAT32", fat(82, b"FAT32   "), Probe::Other("vfat".into())),
            ("FAT16", fat(54, b"FAT16   "), Probe::Other("vfat".into())),
            (
                "FAT name without a boot signature",
                with(82, b"FAT32   "),
                Probe::Unknown,
            ),
            ("NTFS", with(3, b"NTFS    "), Probe::Other("ntfs".into())),
            ("an MBR", fat(0x80, b"GRUB "), Probe::Unknown),
        ];
        for (name, bytes, want) in table {
            assert_eq!(probe(&bytes), want, "{name}");
        }
        assert_eq!(Probe::LvmPv.name(), "LVM2_member");
        assert_eq!(ext4(0).name(), "ext4");
    }

    /// A protective MBR and a GPT header at `sector` whose entries start at LBA 2.
    fn gpt(sector: usize, types: &[[u8; 16]]) -> Vec<u8> {
        let mut b = buf();
        put(&mut b, 446 + 4, &[0xEE]);
        put(&mut b, 510, &[0x55, 0xAA]);
        put(&mut b, sector, b"EFI PART");
        put(&mut b, sector + 72, &2u64.to_le_bytes());
        put(&mut b, sector + 80, &128u32.to_le_bytes());
        put(&mut b, sector + 84, &128u32.to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            put(&mut b, 2 * sector + 128 * i, t);
        }
        b
    }

    fn mbr_with(first_type: u8) -> Vec<u8> {
        let mut b = buf();
        put(&mut b, 446 + 4, &[first_type]);
        put(&mut b, 510, &[0x55, 0xAA]);
        b
    }

    #[test]
    fn firmware_and_boot_loader() {
        const LINUX: [u8; 16] = [
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
            0x7D, 0xE4,
        ];
        let boot = |firmware: &str, grub: bool| Boot {
            firmware: firmware.into(),
            boot_loader: grub.then(|| "grub2".to_string()),
        };
        let mut grub_mbr = buf();
        put(&mut grub_mbr, 0x180, b"GRUB \0Geom");
        put(&mut grub_mbr, 510, &[0x55, 0xAA]);
        let mut mbr_esp = grub_mbr.clone();
        put(&mut mbr_esp, 446 + 16 + 4, &[MBR_ESP]);
        let mut grub_past_code = buf();
        put(&mut grub_past_code, 440, b"GRUB");
        let mut huge_count = gpt(512, &[LINUX]);
        put(&mut huge_count, 512 + 80, &u32::MAX.to_le_bytes());
        let table: Vec<(&str, Vec<u8>, Boot)> = vec![
            ("blank", buf(), boot("bios", false)),
            ("nothing at all", vec![], boot("bios", false)),
            ("GRUB in the MBR", grub_mbr, boot("bios", true)),
            ("MBR with an ESP", mbr_esp, boot("uefi", true)),
            (
                "GRUB past the boot code",
                grub_past_code,
                boot("bios", false),
            ),
            (
                "GPT with an ESP second",
                gpt(512, &[LINUX, ESP_GUID]),
                boot("uefi", false),
            ),
            (
                "GPT without an ESP",
                gpt(512, &[LINUX]),
                boot("bios", false),
            ),
            (
                "4Kn GPT with an ESP",
                gpt(4096, &[ESP_GUID]),
                boot("uefi", false),
            ),
            ("GPT claiming 4G entries", huge_count, boot("bios", false)),
            (
                "GPT header cut off",
                gpt(512, &[ESP_GUID])[..600].to_vec(),
                boot("bios", false),
            ),
        ];
        for (name, head, want) in table {
            assert_eq!(boot_from_head(&head), want, "{name}");
        }
        assert!(has_partition_table(&gpt(4096, &[])));
        assert!(has_partition_table(&mbr_with(0x83)));
        assert!(!has_partition_table(&mbr_with(0)));
        assert!(!has_partition_table(&buf()));
    }
}
