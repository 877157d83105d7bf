//! Which blocks of an ext2/3/4 file system are allocated, read from its own structures:
//! the superblock, the group descriptor table and each group's block bitmap.
//!
//! [`used_ranges`] is pure over a `read_at` closure, so the same code reads a live disk
//! through [`crate::disk::DiskReader`] and an image file in the tests. It refuses (with an
//! [`Ext4Error`]) any layout it does not fully understand — `meta_bg`, `bigalloc`, an
//! external journal device, numbers that do not add up — and the caller then sends the
//! whole file system: sending too much is slow, sending too little corrupts the copy.
//!
//! On a mounted file system the bitmaps on disk lag the journal (an allocation is first
//! logged, then checkpointed into the bitmap). That is why the final pass recomputes the
//! ranges while the file system is frozen: FIFREEZE flushes and checkpoints the journal, so
//! the bitmaps on disk are then exact.

use std::io;

/// Where the superblock starts, whatever the block size.
const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_BYTES: usize = 1024;
const MAGIC: u16 = 0xEF53;

const INCOMPAT_COMPRESSION: u32 = 0x1;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_BLOCK_UNINIT: u16 = 0x2;

const MAX_GDT_BYTES: u64 = 256 << 20;

/// How much of the bitmaps is read at once: with `flex_bg` the bitmaps of many groups sit
/// side by side, and one read of a window serves them all.
const WINDOW_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("not an ext2/3/4 file system (no superblock magic)")]
    NoMagic,
    #[error("unsupported ext feature: {0}")]
    Unsupported(&'static str),
    #[error("inconsistent superblock or group descriptor: {0}")]
    Corrupt(String),
    #[error("cannot read the file system at byte {offset}")]
    Read {
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// The superblock fields the bitmap walk needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u64,
    pub blocks_count: u64,
    pub first_data_block: u64,
    pub blocks_per_group: u64,
    pub groups: u64,
    /// Bytes per group descriptor (32, or `s_desc_size` with the 64bit feature).
    pub desc_size: u64,
    /// `BLOCK_UNINIT` is only honoured (by the kernel, and so here) with group checksums.
    pub uninit_flags_valid: bool,
    /// Blocks of one group's inode table.
    pub inode_table_blocks: u64,
    /// Blocks reserved after the descriptor table for online growth.
    pub reserved_gdt_blocks: u64,
    /// Which groups hold a backup of the superblock and descriptors.
    pub backups: Backups,
}

/// Which groups carry a superblock backup (and the descriptor table after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backups {
    /// Every group (no `sparse_super`).
    All,
    /// Groups 0, 1 and the powers of 3, 5 and 7 (`sparse_super`).
    Sparse,
    /// Group 0 and at most two named groups (`sparse_super2`).
    Listed([u64; 2]),
}

impl Geometry {
    /// Whether `group` starts with a superblock and descriptor table.
    pub fn has_super(&self, group: u64) -> bool {
        let power_of = |base: u64| {
            let mut n = base;
            while n < group {
                n *= base;
            }
            n == group
        };
        match self.backups {
            Backups::All => true,
            Backups::Sparse => group <= 1 || power_of(3) || power_of(5) || power_of(7),
            Backups::Listed(l) => group == 0 || l.contains(&group),
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse and check a superblock (the 1024 bytes at byte 1024 of the file system).
pub fn parse_superblock(sb: &[u8], fs_bytes: u64) -> Result<Geometry, Ext4Error> {
    if sb.len() < SUPERBLOCK_BYTES {
        return Err(Ext4Error::Corrupt("short superblock".into()));
    }
    if le16(sb, 0x38) != MAGIC {
        return Err(Ext4Error::NoMagic);
    }
    let log_block_size = le32(sb, 0x18);
    // 64 KiB is the largest block size ext4 defines.
    if log_block_size > 6 {
        return Err(Ext4Error::Corrupt(format!(
            "block size 2^{} KiB",
            log_block_size
        )));
    }
    let block_size = 1024u64 << log_block_size;
    let incompat = le32(sb, 0x60);
    let ro_compat = le32(sb, 0x64);
    if incompat & INCOMPAT_META_BG != 0 {
        return Err(Ext4Error::Unsupported("meta_bg"));
    }
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err(Ext4Error::Unsupported("external journal device"));
    }
    if incompat & INCOMPAT_COMPRESSION != 0 {
        return Err(Ext4Error::Unsupported("compression"));
    }
    // With bigalloc a bitmap bit is a cluster, not a block.
    if ro_compat & RO_COMPAT_BIGALLOC != 0 {
        return Err(Ext4Error::Unsupported("bigalloc"));
    }
    let is_64bit = incompat & INCOMPAT_64BIT != 0;
    let mut blocks_count = u64::from(le32(sb, 0x4));
    if is_64bit {
        blocks_count |= u64::from(le32(sb, 0x150)) << 32;
    }
    let first_data_block = u64::from(le32(sb, 0x14));
    let blocks_per_group = u64::from(le32(sb, 0x20));
    let desc_size = if is_64bit {
        u64::from(le16(sb, 0xFE))
    } else {
        32
    };
    // Whole bytes of bitmap per group, and no more bits than one bitmap block holds.
    if blocks_per_group == 0
        || !blocks_per_group.is_multiple_of(8)
        || blocks_per_group > 8 * block_size
    {
        return Err(Ext4Error::Corrupt(format!(
            "{blocks_per_group} blocks per group"
        )));
    }
    if is_64bit && (!(64..=1024).contains(&desc_size) || !desc_size.is_power_of_two()) {
        return Err(Ext4Error::Corrupt(format!(
            "group descriptor size {desc_size}"
        )));
    }
    if first_data_block >= blocks_count || first_data_block > 1 {
        return Err(Ext4Error::Corrupt(format!(
            "first data block {first_data_block} of {blocks_count}"
        )));
    }
    let fs_len = blocks_count
        .checked_mul(block_size)
        .ok_or_else(|| Ext4Error::Corrupt(format!("{blocks_count} blocks")))?;
    if fs_len > fs_bytes {
        return Err(Ext4Error::Corrupt(format!(
            "the file system says it has {fs_len} bytes, its device has {fs_bytes}"
        )));
    }
    let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
    let inodes_per_group = u64::from(le32(sb, 0x28));
    // Revision 0 file systems have 128-byte inodes and no s_inode_size.
    let inode_size = match (le32(sb, 0x4C), le16(sb, 0x58)) {
        (0, _) => 128,
        (_, n) => u64::from(n),
    };
    if !(128..=block_size).contains(&inode_size) || !inode_size.is_power_of_two() {
        return Err(Ext4Error::Corrupt(format!("inode size {inode_size}")));
    }
    let backups = if le32(sb, 0x5C) & COMPAT_SPARSE_SUPER2 != 0 {
        Backups::Listed([u64::from(le32(sb, 0x24C)), u64::from(le32(sb, 0x250))])
    } else if ro_compat & RO_COMPAT_SPARSE_SUPER != 0 {
        Backups::Sparse
    } else {
        Backups::All
    };
    Ok(Geometry {
        inode_table_blocks: (inodes_per_group * inode_size).div_ceil(block_size),
        reserved_gdt_blocks: u64::from(le16(sb, 0xCE)),
        backups,
        block_size,
        blocks_count,
        first_data_block,
        blocks_per_group,
        groups,
        desc_size,
        uninit_flags_valid: ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
    })
}

/// The byte ranges (relative to the start of the file system, sorted, merged) of its
/// allocated blocks, plus everything before the first data block (the boot block of a
/// 1 KiB-block file system, which no group covers).
///
/// A group whose descriptor says `BLOCK_UNINIT` has no bitmap on disk: nothing was ever
/// allocated in it, so its used blocks are what the kernel's `ext4_init_block_bitmap`
/// marks — its superblock backup, descriptor table and reserved descriptor blocks when it
/// carries a backup, and its own bitmaps and inode table when they lie inside it. Every
/// group's bitmaps and inode table are added wherever they are, which also covers
/// `flex_bg` tables placed in another group (e2fsprogs clears `BLOCK_UNINIT` there, but a
/// block too many costs nothing and a block too few corrupts the copy).
pub fn used_ranges(
    mut read_at: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    fs_bytes: u64,
) -> Result<Vec<(u64, u64)>, Ext4Error> {
    let mut read = |offset: u64, buf: &mut [u8]| {
        read_at(offset, buf).map_err(|source| Ext4Error::Read { offset, source })
    };
    let mut sb = vec![0u8; SUPERBLOCK_BYTES];
    read(SUPERBLOCK_OFFSET, &mut sb)?;
    let g = parse_superblock(&sb, fs_bytes)?;
    let bs = g.block_size;

    // The descriptor table starts in the block after the superblock's.
    let gdt_offset = (g.first_data_block + 1) * bs;
    let gdt_len = g.groups * g.desc_size;
    // 64 TiB of 4 KiB blocks needs 32 MiB of descriptors; far more means a corrupt superblock
    // (tiny groups), and the allocation below must not follow it.
    if gdt_len > MAX_GDT_BYTES || gdt_offset + gdt_len > g.blocks_count * bs {
        return Err(Ext4Error::Corrupt(format!(
            "{} groups of {} blocks",
            g.groups, g.blocks_per_group
        )));
    }
    let mut gdt = vec![
        0u8;
        usize::try_from(gdt_len)
            .map_err(|_| Ext4Error::Corrupt("descriptor table size".into()))?
    ];
    for (i, chunk) in gdt.chunks_mut(WINDOW_BYTES as usize).enumerate() {
        read(gdt_offset + i as u64 * WINDOW_BYTES, chunk)?;
    }

    let mut runs = Blocks::default();
    runs.push(0, g.first_data_block);
    // Block runs found outside the bitmaps, in no particular order.
    let mut tables: Vec<(u64, u64)> = Vec::new();
    let bitmap_bytes = (g.blocks_per_group / 8) as usize;
    let mut window = Window {
        start: 0,
        data: Vec::new(),
    };
    for group in 0..g.groups {
        let d = &gdt[(group * g.desc_size) as usize..((group + 1) * g.desc_size) as usize];
        let first = g.first_data_block + group * g.blocks_per_group;
        let count = g.blocks_per_group.min(g.blocks_count - first);
        let at = |lo: usize, hi: usize| {
            let mut b = u64::from(le32(d, lo));
            if g.desc_size >= 64 {
                b |= u64::from(le32(d, hi)) << 32;
            }
            b
        };
        let bitmap_block = at(0x0, 0x20);
        for (start, len) in [
            (bitmap_block, 1),
            (at(0x4, 0x24), 1),
            (at(0x8, 0x28), g.inode_table_blocks),
        ] {
            if start == 0 || start + len > g.blocks_count {
                return Err(Ext4Error::Corrupt(format!(
                    "group {group}: metadata at blocks {start}+{len}"
                )));
            }
            tables.push((start, len));
        }
        if g.uninit_flags_valid && le16(d, 0x12) & BG_BLOCK_UNINIT != 0 {
            if g.has_super(group) {
                let gdt_blocks = gdt_len.div_ceil(bs);
                tables.push((first, (1 + gdt_blocks + g.reserved_gdt_blocks).min(count)));
            }
            continue;
        }
        if bitmap_block == 0 || bitmap_block >= g.blocks_count {
            return Err(Ext4Error::Corrupt(format!(
                "group {group}: block bitmap at block {bitmap_block}"
            )));
        }
        let bitmap = window.get(
            &mut read,
            bitmap_block * bs,
            bitmap_bytes,
            g.blocks_count * bs,
        )?;
        // Runs of set bits, a byte at a time where the byte is all ones or all zeros.
        let mut i = 0u64;
        while i < count {
            let byte = bitmap[(i / 8) as usize];
            if i.is_multiple_of(8) && i + 8 <= count && (byte == 0 || byte == 0xFF) {
                if byte == 0xFF {
                    runs.push(first + i, 8);
                }
                i += 8;
                continue;
            }
            if byte & (1 << (i % 8)) != 0 {
                runs.push(first + i, 1);
            }
            i += 1;
        }
    }
    let mut all = runs.0;
    all.extend(tables);
    Ok(crate::ranges::merge(
        all.into_iter().map(|(b, n)| (b * bs, n * bs)).collect(),
    ))
}

/// Sorted block runs, each new run merged into the last when adjacent (groups and bits
/// are visited in ascending order, so this is the whole merge).
#[derive(Default)]
struct Blocks(Vec<(u64, u64)>);

impl Blocks {
    fn push(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.0.last_mut() {
            if last.0 + last.1 == start {
                last.1 += len;
                return;
            }
        }
        self.0.push((start, len));
    }
}

/// The last stretch of the file system read for bitmaps.
struct Window {
    start: u64,
    data: Vec<u8>,
}

impl Window {
    fn get(
        &mut self,
        read: &mut impl FnMut(u64, &mut [u8]) -> Result<(), Ext4Error>,
        offset: u64,
        len: usize,
        fs_len: u64,
    ) -> Result<&[u8], Ext4Error> {
        let end = offset + len as u64;
        if offset < self.start || end > self.start + self.data.len() as u64 {
            let wlen = WINDOW_BYTES.max(len as u64).min(fs_len - offset);
            if wlen < len as u64 {
                return Err(Ext4Error::Corrupt(format!(
                    "a bitmap at byte {offset} runs past the end"
                )));
            }
            self.data.resize(wlen as usize, 0);
            read(offset, &mut self.data)?;
            self.start = offset;
        }
        let at = (offset - self.start) as usize;
        Ok(&self.data[at..at + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::process::Command;

    struct Image {
        _dir: tempfile::TempDir,
        img: std::path::PathBuf,
        /// (path inside the fs, size)
        files: Vec<(String, usize)>,
    }

    /// Make an image with mke2fs -d from a tree of random files of known sizes.
    fn make_image(fstype: &str, block_size: u32, extra: &[&str]) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
        let files = vec![
            ("/three".to_string(), 3 << 20),
            ("/sub/five".to_string(), 5 << 20),
            ("/sub/deeper/odd".to_string(), 123_457),
            ("/small".to_string(), 10),
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for (p, size) in &files {
            let data: Vec<u8> = (0..*size)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            std::fs::write(tree.join(p.trim_start_matches('/')), data).unwrap();
        }
        let img = dir.path().join("fs.img");
        let out = Command::new("mke2fs")
            .args(["-q", "-F", "-t", fstype, "-b", &block_size.to_string()])
            .args(extra)
            .arg("-d")
            .arg(&tree)
            .arg(&img)
            .arg("64M")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mke2fs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Image {
            _dir: dir,
            img,
            files,
        }
    }

    fn ranges_of(img: &Path) -> Result<Vec<(u64, u64)>, Ext4Error> {
        let f = File::open(img).unwrap();
        let len = f.metadata().unwrap().len();
        used_ranges(|off, buf| f.read_exact_at(buf, off), len)
    }

    /// The blocks debugfs lists for a file.
    fn debugfs_blocks(img: &Path, path: &str) -> Vec<u64> {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("blocks {path}"))
            .arg(img)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect()
    }

    /// dumpe2fs: (block size, block count, free blocks, free blocks of BLOCK_UNINIT groups).
    fn dumpe2fs(img: &Path) -> (u64, u64, u64, u64) {
        let out = Command::new("dumpe2fs").arg(img).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim_start_matches(':').trim().parse().unwrap())
                .unwrap_or_else(|| panic!("no {name} in dumpe2fs output"))
        };
        let (bs, count, free) = (
            field("Block size"),
            field("Block count"),
            field("Free blocks"),
        );
        // Group sections start with "Group N: ... [..., BLOCK_UNINIT]" and hold a
        // "  N free blocks, ..." line.
        let mut uninit_free = 0;
        let mut in_uninit = false;
        for l in text.lines() {
            if l.starts_with("Group ") {
                in_uninit = l.contains("BLOCK_UNINIT");
            } else if in_uninit {
                if let Some((n, _)) = l.trim().split_once(" free blocks,") {
                    uninit_free += n.parse::<u64>().unwrap();
                    in_uninit = false;
                }
            }
        }
        (bs, count, free, uninit_free)
    }

    fn check(fstype: &str, block_size: u32, extra: &[&str]) -> u64 {
        let image = make_image(fstype, block_size, extra);
        let ranges = ranges_of(&image.img).unwrap();
        // Sorted, merged, non-empty.
        for w in ranges.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0, "not sorted and merged: {w:?}");
        }
        assert!(ranges.iter().all(|r| r.1 > 0));
        let (bs, count, free, uninit_free) = dumpe2fs(&image.img);
        assert_eq!(bs, u64::from(block_size));
        let inside = |b: u64| {
            ranges
                .iter()
                .any(|&(s, l)| b * bs >= s && (b + 1) * bs <= s + l)
        };
        for (path, size) in &image.files {
            let blocks = debugfs_blocks(&image.img, path);
            assert!(
                blocks.len() as u64 >= (*size as u64).div_ceil(bs),
                "{path}: {blocks:?}"
            );
            for b in blocks {
                assert!(
                    inside(b),
                    "{fstype}/{block_size}: block {b} of {path} is not in {ranges:?}"
                );
            }
        }
        // Exactly the used blocks, groups without a bitmap on disk included.
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        assert_eq!(
            total,
            (count - free) * bs,
            "{fstype}/{block_size}: {ranges:?}"
        );
        uninit_free
    }

    #[test]
    fn ext4_4k_blocks() {
        check("ext4", 4096, &[]);
    }

    #[test]
    fn ext4_4k_blocks_several_groups() {
        // 8192 blocks per group: 2 groups in 64 MiB, the second one BLOCK_UNINIT or not.
        check("ext4", 4096, &["-g", "8192"]);
    }

    #[test]
    fn ext4_1k_blocks_has_uninit_groups() {
        // 8 groups of 8 MiB; the files fill the first ones, the rest are BLOCK_UNINIT.
        let uninit_free = check("ext4", 1024, &[]);
        assert!(
            uninit_free > 0,
            "expected BLOCK_UNINIT groups in a 1 KiB-block ext4"
        );
    }

    #[test]
    fn ext4_without_64bit_uses_32_byte_descriptors() {
        check("ext4", 4096, &["-O", "^64bit", "-g", "4096"]);
    }

    #[test]
    fn ext2_and_ext3_have_no_uninit_groups() {
        assert_eq!(check("ext2", 4096, &[]), 0);
        assert_eq!(check("ext2", 1024, &[]), 0);
        assert_eq!(check("ext3", 1024, &[]), 0);
    }

    #[test]
    fn corrupted_magic_is_refused() {
        let image = make_image("ext4", 4096, &[]);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image.img)
            .unwrap();
        f.write_all_at(&[0, 0], 1024 + 0x38).unwrap();
        assert!(matches!(ranges_of(&image.img), Err(Ext4Error::NoMagic)));
    }

    #[test]
    fn meta_bg_is_refused() {
        let image = make_image("ext4", 4096, &["-O", "meta_bg,^resize_inode"]);
        assert!(matches!(
            ranges_of(&image.img),
            Err(Ext4Error::Unsupported("meta_bg"))
        ));
    }

    #[test]
    fn a_device_smaller_than_the_file_system_is_refused() {
        let image = make_image("ext4", 4096, &[]);
        let f = File::open(&image.img).unwrap();
        let r = used_ranges(|off, buf| f.read_exact_at(buf, off), 32 << 20);
        assert!(matches!(r, Err(Ext4Error::Corrupt(_))), "{r:?}");
    }

    #[test]
    fn read_errors_name_the_offset() {
        let r = used_ranges(|_, _| Err(io::Error::other("boom")), 1 << 30);
        assert!(
            matches!(r, Err(Ext4Error::Read { offset: 1024, .. })),
            "{r:?}"
        );
    }
}
