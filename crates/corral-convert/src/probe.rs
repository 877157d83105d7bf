//! A first look at a raw disk while it streams past: the partition table (MBR or GPT, from
//! the first 64 KiB) and the signature at the start of each partition (or of the disk when
//! it has no table). A disk where every one of them is known not to hold Linux (FAT, NTFS,
//! exFAT, swap, an ISO 9660 image, nothing at all) is refused at once, without starting an
//! appliance; anything else, including what this does not recognise, goes on to the
//! appliance, which decides. Pure: [`Probe::feed`] is given the bytes and their offsets.

/// Bytes kept from the start of each partition: enough for every signature looked at (the
/// btrfs superblock is at 64 KiB, ISO 9660's descriptor at 32 KiB).
const WINDOW: usize = 0x11000;
/// Bytes of the disk's start the partition table is read from.
pub const TABLE_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    Blank,
    /// A file system or container Linux lives in (ext, XFS, btrfs, LVM, LUKS, md RAID).
    Linux(&'static str),
    /// Known, and not a place for a Linux root.
    Other(&'static str),
    Unknown,
}

fn at(w: &[u8], off: usize, len: usize) -> &[u8] {
    off.checked_add(len)
        .and_then(|end| w.get(off..end))
        .unwrap_or(&[])
}

fn classify(w: &[u8]) -> Sig {
    if w.iter().all(|&b| b == 0) {
        return Sig::Blank;
    }
    if at(w, 0x438, 2) == [0x53, 0xef] {
        return Sig::Linux("ext");
    }
    if at(w, 0, 4) == b"XFSB" {
        return Sig::Linux("xfs");
    }
    if at(w, 0x10040, 8) == b"_BHRfS_M" {
        return Sig::Linux("btrfs");
    }
    if [0, 0x200, 0x400, 0x600]
        .iter()
        .any(|&o| at(w, o, 8) == b"LABELONE")
    {
        return Sig::Linux("LVM2_member");
    }
    if at(w, 0, 6) == b"LUKS\xba\xbe" {
        return Sig::Linux("crypto_LUKS");
    }
    let md = 0xa92b_4efcu32.to_le_bytes();
    if at(w, 0x1000, 4) == md || at(w, 0, 4) == md {
        return Sig::Linux("linux_raid_member");
    }
    if at(w, 4086, 10) == b"SWAPSPACE2" || at(w, 4086, 10) == b"SWAP-SPACE" {
        return Sig::Other("swap");
    }
    if at(w, 3, 8) == b"NTFS    " {
        return Sig::Other("ntfs");
    }
    if at(w, 3, 8) == b"EXFAT   " {
        return Sig::Other("exfat");
    }
    if at(w, 510, 2) == [0x55, 0xaa] && (at(w, 0x36, 3) == b"FAT" || at(w, 0x52, 5) == b"FAT32") {
        return Sig::Other("vfat");
    }
    if at(w, 0x8001, 5) == b"CD001" {
        return Sig::Other("iso9660");
    }
    Sig::Unknown
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    start: u64,
    data: Vec<u8>,
    /// Partition number, 0 for the whole disk.
    number: u32,
}

/// What a probe concludes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Linux may be there: let the appliance look.
    MaybeLinux,
    /// Nothing on the disk can be a Linux root; what is there instead.
    NoLinux(String),
}

/// Collects the windows a verdict needs from a raw disk streamed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    windows: Vec<Window>,
    table: &'static str,
    /// An MBR extended partition (its logical partitions are not followed here).
    extended: bool,
}

fn le32(b: &[u8], o: usize) -> u64 {
    at(b, o, 4)
        .try_into()
        .map(|a: [u8; 4]| u32::from_le_bytes(a) as u64)
        .unwrap_or(0)
}
fn le64(b: &[u8], o: usize) -> u64 {
    at(b, o, 8).try_into().map(u64::from_le_bytes).unwrap_or(0)
}

impl Probe {
    /// Read the partition table from `head` (the disk's first bytes, [`TABLE_BYTES`] or all
    /// of a smaller disk) and set up a window per partition.
    pub fn new(head: &[u8]) -> Probe {
        let mut p = Probe {
            windows: Vec::new(),
            table: "",
            extended: false,
        };
        let whole = classify(at(head, 0, head.len().min(WINDOW)));
        let mbr = at(head, 510, 2) == [0x55, 0xaa] && !matches!(whole, Sig::Other(_));
        let mut parts: Vec<(u32, u64)> = Vec::new();
        if mbr {
            let protective = (0..4).any(|i| at(head, 0x1be + 16 * i + 4, 1) == [0xee]);
            if protective && at(head, 512, 8) == b"EFI PART" {
                p.table = "gpt";
                let lba = le64(head, 512 + 72) as usize;
                let count = le32(head, 512 + 80) as usize;
                let size = le32(head, 512 + 84) as usize;
                for i in 0..count.min(256) {
                    let off = lba
                        .saturating_mul(512)
                        .saturating_add(i.saturating_mul(size));
                    let e = at(head, off, size.min(128));
                    if e.len() < 48 || e[..16].iter().all(|&b| b == 0) {
                        continue;
                    }
                    parts.push((i as u32 + 1, le64(e, 32).saturating_mul(512)));
                }
            } else {
                p.table = "dos";
                for i in 0..4 {
                    let e = at(head, 0x1be + 16 * i, 16);
                    let (kind, start) = (e.get(4).copied().unwrap_or(0), le32(e, 8));
                    if kind == 0 || start == 0 {
                        continue;
                    }
                    if matches!(kind, 0x05 | 0x0f | 0x85) {
                        p.extended = true;
                        continue;
                    }
                    parts.push((i as u32 + 1, start * 512));
                }
            }
        }
        if p.table.is_empty() {
            parts.push((0, 0));
        }
        p.windows = parts
            .into_iter()
            .map(|(number, start)| Window {
                start,
                data: Vec::new(),
                number,
            })
            .collect();
        p
    }

    /// Bytes of the disk at `offset`, fed in order (overlapping windows keep what they need).
    pub fn feed(&mut self, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        for w in self.windows.iter_mut() {
            let want = w.start.saturating_add(w.data.len() as u64);
            if w.data.len() >= WINDOW || want < offset || want >= end {
                continue;
            }
            let from = (want - offset) as usize;
            let n = (WINDOW - w.data.len()).min(data.len() - from);
            w.data.extend_from_slice(&data[from..from + n]);
        }
    }

    pub fn verdict(&self) -> Verdict {
        if self.extended {
            return Verdict::MaybeLinux;
        }
        let mut found = Vec::new();
        for w in &self.windows {
            let what = match classify(&w.data) {
                Sig::Linux(_) | Sig::Unknown => return Verdict::MaybeLinux,
                Sig::Blank => "nothing".to_string(),
                Sig::Other(t) => t.to_string(),
            };
            found.push(if w.number == 0 {
                format!("{what} on the whole disk, no partition table")
            } else {
                format!("{what} on partition {}", w.number)
            });
        }
        if found.is_empty() {
            found.push(format!(
                "a {} partition table without partitions",
                self.table
            ));
        }
        if found == ["nothing on the whole disk, no partition table"] {
            return Verdict::NoLinux("the disk is blank".into());
        }
        Verdict::NoLinux(found.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signature bytes at offsets within a partition.
    type Sigs<'a> = &'a [(usize, &'a [u8])];

    /// A disk of `size` bytes with `parts` (MBR type, start sector, signatures).
    fn disk(size: usize, parts: &[(u8, u32, Sigs)]) -> Vec<u8> {
        let mut d = vec![0u8; size];
        if !parts.is_empty() {
            d[510] = 0x55;
            d[511] = 0xaa;
        }
        for (i, (kind, start, sigs)) in parts.iter().enumerate() {
            let e = 0x1be + 16 * i;
            d[e + 4] = *kind;
            d[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
            for (off, bytes) in *sigs {
                let at = *start as usize * 512 + off;
                d[at..at + bytes.len()].copy_from_slice(bytes);
            }
        }
        d
    }

    fn verdict_of(d: &[u8]) -> Verdict {
        let mut p = Probe::new(&d[..d.len().min(TABLE_BYTES)]);
        // Fed in uneven chunks, as an upload arrives.
        let mut off = 0;
        for chunk in d.chunks(7777) {
            p.feed(off as u64, chunk);
            off += chunk.len();
        }
        p.verdict()
    }

    const EXT: &[(usize, &[u8])] = &[(0x438, &[0x53, 0xef])];
    const LVM: &[(usize, &[u8])] = &[(0x200, b"LABELONE"), (0x218, b"LVM2 001")];
    const SWAP: &[(usize, &[u8])] = &[(4086, b"SWAPSPACE2")];
    const NTFS: &[(usize, &[u8])] = &[(3, b"NTFS    ")];

    #[test]
    fn disks_that_cannot_hold_linux_are_told_at_once() {
        let m = 1 << 20;
        // The fixture's layout: ext4 root, then LVM.
        assert_eq!(
            verdict_of(&disk(4 * m, &[(0x83, 2048, EXT), (0x8e, 4096, LVM)])),
            Verdict::MaybeLinux
        );
        assert_eq!(
            verdict_of(&disk(4 * m, &[(0x07, 2048, NTFS), (0x82, 4096, SWAP)])),
            Verdict::NoLinux("ntfs on partition 1; swap on partition 2".into())
        );
        assert_eq!(
            verdict_of(&vec![0u8; 2 * m]),
            Verdict::NoLinux("the disk is blank".into())
        );
        // A FAT file system on the whole disk (mkfs.vfat on an image).
        let mut fat = vec![0u8; 2 * m];
        fat[0] = 0xeb;
        fat[0x36..0x39].copy_from_slice(b"FAT");
        fat[510] = 0x55;
        fat[511] = 0xaa;
        assert_eq!(
            verdict_of(&fat),
            Verdict::NoLinux("vfat on the whole disk, no partition table".into())
        );
        // ext4 on the whole disk, something unknown, an extended partition: let the
        // appliance look.
        let mut ext = vec![0u8; 2 * m];
        ext[0x438] = 0x53;
        ext[0x439] = 0xef;
        assert_eq!(verdict_of(&ext), Verdict::MaybeLinux);
        assert_eq!(
            verdict_of(&disk(4 * m, &[(0x83, 2048, &[(100, b"??")])])),
            Verdict::MaybeLinux
        );
        assert_eq!(
            verdict_of(&disk(4 * m, &[(0x0f, 2048, &[])])),
            Verdict::MaybeLinux
        );
        assert_eq!(
            verdict_of(&disk(4 * m, &[(0x83, 2048, &[])])),
            Verdict::NoLinux("nothing on partition 1".into())
        );
    }

    #[test]
    fn gpt_entries_are_read() {
        let m = 1 << 20;
        let mut d = disk(4 * m, &[(0xee, 1, &[])]);
        d[512..520].copy_from_slice(b"EFI PART");
        d[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        d[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        // Entry 1: an ESP (FAT) at sector 2048; entry 2: XFS at sector 4096.
        let e1 = 1024;
        d[e1] = 0x28;
        d[e1 + 32..e1 + 40].copy_from_slice(&2048u64.to_le_bytes());
        let mut fat = [0u8; 512];
        fat[0x52..0x57].copy_from_slice(b"FAT32");
        fat[510] = 0x55;
        fat[511] = 0xaa;
        d[2048 * 512..2049 * 512].copy_from_slice(&fat);
        assert_eq!(
            verdict_of(&d),
            Verdict::NoLinux("vfat on partition 1".into())
        );
        let e2 = 1024 + 128;
        d[e2] = 0xaf;
        d[e2 + 32..e2 + 40].copy_from_slice(&4096u64.to_le_bytes());
        d[4096 * 512..4096 * 512 + 4].copy_from_slice(b"XFSB");
        assert_eq!(verdict_of(&d), Verdict::MaybeLinux);
    }
}
