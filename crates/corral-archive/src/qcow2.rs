//! A streaming qcow2 writer for imports: guest data goes straight into a qcow2 image, so an
//! import to qcow2 is one pass over the data instead of a sparse raw file plus a
//! `qemu-img convert` (which read and wrote every allocated byte a second time, about doubling
//! the import time).
//!
//! Layout, chosen so nothing but the L1 table is held in memory whatever the disk size:
//! cluster 0 is the header; data clusters and L2 tables are allocated in the order writes
//! touch them (an L2 table when its first data cluster is written); the L1 table and then the
//! refcount table and blocks follow the last allocated cluster when the image is finished.
//! Every cluster is used exactly once, so every refcount is 1 and the refcount blocks are
//! generated at the end without tracking anything. Unwritten guest ranges stay unallocated
//! (they read as zeros); a write into part of a fresh cluster leaves the rest a hole of the
//! image file, which also reads as zeros. The image is not valid until [`Qcow2Writer::finish`]
//! has written the header, which it does last.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const MAGIC: u32 = 0x5146_49fb;
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Entries in an L2 table (one cluster of 8-byte entries).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Refcounts in a refcount block (16-bit refcounts, `refcount_order` 4).
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
/// "Refcount is exactly one": allowed, and expected by qemu for unshared clusters.
const COPIED: u64 = 1 << 63;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const HEADER_LEN: u32 = 104;

/// Writes one qcow2 image of a known virtual size from writes at arbitrary guest offsets
/// (never overlapping, as [`crate::ImportSink`] promises).
#[derive(Debug)]
pub struct Qcow2Writer {
    file: File,
    size: u64,
    /// Host offset of each L2 table, 0 while unallocated.
    l1: Vec<u64>,
    /// Next free host cluster.
    next: u64,
}

impl Qcow2Writer {
    /// Start an image of `size` bytes (a multiple of 512) in `file`, which must be empty.
    pub fn new(file: File, size: u64) -> io::Result<Self> {
        if !size.is_multiple_of(512) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "qcow2 virtual size must be a multiple of 512 bytes",
            ));
        }
        let l1_entries = size.div_ceil(CLUSTER * L2_ENTRIES).max(1);
        if l1_entries > (32 << 20) / 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "virtual size too large for a qcow2 image",
            ));
        }
        Ok(Qcow2Writer {
            file,
            size,
            l1: vec![0; l1_entries as usize],
            next: 1,
        })
    }

    fn allocate(&mut self) -> u64 {
        let at = self.next * CLUSTER;
        self.next += 1;
        at
    }

    /// Write guest data at `offset`.
    pub fn write_at(&mut self, mut offset: u64, mut data: &[u8]) -> io::Result<()> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write outside the disk",
            ));
        }
        while !data.is_empty() {
            let cluster = offset / CLUSTER;
            let within = offset % CLUSTER;
            let n = ((CLUSTER - within) as usize).min(data.len());
            let host = self.host_cluster(cluster)?;
            self.file.write_all_at(&data[..n], host + within)?;
            offset += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// The host offset of guest cluster `cluster`, allocating it (and its L2 table) if needed.
    fn host_cluster(&mut self, cluster: u64) -> io::Result<u64> {
        let l1i = (cluster / L2_ENTRIES) as usize;
        if self.l1[l1i] == 0 {
            self.l1[l1i] = self.allocate();
            // Reserve the table's cluster so reads of it see zeros until entries are written.
            self.file.set_len(self.next * CLUSTER)?;
        }
        let entry_at = self.l1[l1i] + (cluster % L2_ENTRIES) * 8;
        let mut e = [0u8; 8];
        self.file.read_exact_at(&mut e, entry_at)?;
        let entry = u64::from_be_bytes(e) & OFFSET_MASK;
        if entry != 0 {
            return Ok(entry);
        }
        let host = self.allocate();
        self.file
            .write_all_at(&(host | COPIED).to_be_bytes(), entry_at)?;
        Ok(host)
    }

    /// Write the L1 table, the refcounts and the header, and sync. Returns the file size.
    pub fn finish(mut self) -> io::Result<u64> {
        let l1_bytes: Vec<u8> = self
            .l1
            .iter()
            .flat_map(|&o| if o == 0 { 0 } else { o | COPIED }.to_be_bytes())
            .collect();
        let l1_at = self.next * CLUSTER;
        let l1_clusters = (l1_bytes.len() as u64).div_ceil(CLUSTER);
        self.file.write_all_at(&l1_bytes, l1_at)?;
        self.next += l1_clusters;

        // Refcount blocks and table after the L1 table; they count themselves too.
        let used = self.next;
        let (mut blocks, mut table) = (0u64, 0u64);
        loop {
            let total = used + blocks + table;
            let b = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let t = (b * 8).div_ceil(CLUSTER);
            if (b, t) == (blocks, table) {
                break;
            }
            (blocks, table) = (b, t);
        }
        let total = used + blocks + table;
        let blocks_at = used * CLUSTER;
        let table_at = blocks_at + blocks * CLUSTER;
        let mut block = vec![0u8; CLUSTER as usize];
        let mut table_bytes = vec![0u8; (table * CLUSTER) as usize];
        for b in 0..blocks {
            let first = b * REFCOUNTS_PER_BLOCK;
            let n = (total - first).min(REFCOUNTS_PER_BLOCK) as usize;
            block.fill(0);
            for c in 0..n {
                block[2 * c..2 * c + 2].copy_from_slice(&1u16.to_be_bytes());
            }
            let at = blocks_at + b * CLUSTER;
            self.file.write_all_at(&block, at)?;
            table_bytes[8 * b as usize..8 * b as usize + 8].copy_from_slice(&at.to_be_bytes());
        }
        self.file.write_all_at(&table_bytes, table_at)?;

        let mut head = vec![0u8; CLUSTER as usize];
        let put32 =
            |h: &mut [u8], at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |h: &mut [u8], at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put32(&mut head, 0, MAGIC);
        put32(&mut head, 4, 3);
        put32(&mut head, 20, CLUSTER_BITS);
        put64(&mut head, 24, self.size);
        put32(&mut head, 36, self.l1.len() as u32);
        put64(&mut head, 40, l1_at);
        put64(&mut head, 48, table_at);
        put32(&mut head, 56, table as u32);
        put32(&mut head, 96, 4);
        put32(&mut head, 100, HEADER_LEN);
        // The header extensions that follow are all zero: the end marker.
        self.file.write_all_at(&head, 0)?;
        let len = total * CLUSTER;
        self.file.set_len(len)?;
        self.file.sync_all()?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> String {
        let o = Command::new("qemu-img").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "qemu-img {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Writes at scattered, unaligned, out-of-order offsets (two L2 tables apart) give an image
    /// that `qemu-img check` finds clean and that compares equal to a raw file written the same.
    #[test]
    fn streamed_image_is_valid_and_holds_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let size: u64 = (1 << 30) + (3 << 20);
        let raw = dir.path().join("want.raw");
        let qcow = dir.path().join("got.qcow2");
        let rawf = File::create(&raw).unwrap();
        rawf.set_len(size).unwrap();
        let mut w = Qcow2Writer::new(File::create_new(&qcow).unwrap(), size).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        };
        let writes: [(u64, usize); 7] = [
            (4 << 20, 4 << 20),
            (0, 65536),
            (700 << 20, 1000),
            (65536 * 3 + 17, 200_000),
            (size - 4096, 4096),
            (600 << 20, 1 << 20),
            ((700 << 20) + 5000, 70_000),
        ];
        for (off, len) in writes {
            let d = noise(len);
            w.write_at(off, &d).unwrap();
            rawf.write_all_at(&d, off).unwrap();
        }
        assert!(w.write_at(size - 10, &[1; 11]).is_err());
        let len = w.finish().unwrap();
        assert_eq!(std::fs::metadata(&qcow).unwrap().len(), len);
        let q = qcow.to_str().unwrap();
        qemu_img(&["check", "-f", "qcow2", q]);
        let info = qemu_img(&["info", "--output=json", "-f", "qcow2", q]);
        assert!(
            info.contains(&format!("\"virtual-size\": {size}")),
            "{info}"
        );
        let out = qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            raw.to_str().unwrap(),
            q,
        ]);
        assert!(out.contains("identical"), "{out}");
        // Only the written clusters are allocated: a few MiB, not the 1 GiB disk.
        assert!(len < 16 << 20, "{len}");
    }

    #[test]
    fn empty_and_odd_sized_images() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.qcow2");
        let w = Qcow2Writer::new(File::create_new(&p).unwrap(), 100 << 30).unwrap();
        w.finish().unwrap();
        qemu_img(&["check", "-f", "qcow2", p.to_str().unwrap()]);
        let q = dir.path().join("odd.qcow2");
        assert!(Qcow2Writer::new(File::create_new(&q).unwrap(), 1000).is_err());
    }
}
