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
//!
//! Concurrency: [`Qcow2Writer::write_at`] takes `&self` and is called from several import
//! workers at once. Only cluster allocation is serialised: under one lock a write maps its
//! guest clusters (one `pread` and one `pwrite` of the L2 entries it touches, fresh clusters
//! taken consecutively from the end of the image), then it `pwrite`s its data outside the lock
//! in as few calls as the host clusters allow (usually one per extent, since consecutive guest
//! clusters get consecutive host clusters). Writes never overlap (the [`crate::ImportSink`]
//! contract), so data writes need no ordering; two writes that share a guest cluster (extents
//! that start or end inside one) find the same L2 entry under the lock and fill disjoint parts
//! of the same host cluster. The host layout therefore depends on completion order, the guest
//! contents do not.

use crate::sink::DataFile;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

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
/// (never overlapping, as [`crate::ImportSink`] promises), from any number of threads.
#[derive(Debug)]
pub struct Qcow2Writer {
    file: DataFile,
    size: u64,
    alloc: Mutex<Allocation>,
}

/// What cluster allocation changes; everything else in the image is written once.
#[derive(Debug)]
struct Allocation {
    /// Host offset of each L2 table, 0 while unallocated.
    l1: Vec<u64>,
    /// Next free host cluster.
    next: u64,
}

impl Allocation {
    fn take(&mut self) -> u64 {
        let at = self.next * CLUSTER;
        self.next += 1;
        at
    }
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
            file: DataFile::new(file),
            size,
            alloc: Mutex::new(Allocation {
                l1: vec![0; l1_entries as usize],
                next: 1,
            }),
        })
    }

    /// Write guest data at `offset`. Safe to call from several threads for disjoint ranges.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write outside the disk"))?;
        let mut pos = offset;
        while pos < end {
            // One L2 table's worth at a time: its entries are contiguous in the file.
            let first = pos / CLUSTER;
            let table_end = (first / L2_ENTRIES + 1) * L2_ENTRIES * CLUSTER;
            let stop = end.min(table_end);
            let hosts = self.map_clusters(first, stop.div_ceil(CLUSTER))?;
            // Coalesce guest clusters whose host clusters are consecutive into one pwrite.
            let mut i = 0;
            while i < hosts.len() {
                let mut j = i + 1;
                while j < hosts.len() && hosts[j] == hosts[j - 1] + CLUSTER {
                    j += 1;
                }
                let from = pos.max((first + i as u64) * CLUSTER);
                let to = stop.min((first + j as u64) * CLUSTER);
                let within = from - (first + i as u64) * CLUSTER;
                let at = (from - offset) as usize;
                self.file
                    .write_at(&data[at..at + (to - from) as usize], hosts[i] + within)?;
                i = j;
            }
            pos = stop;
        }
        Ok(())
    }

    /// Host offsets of guest clusters `first..last` (all under one L2 table), allocating the
    /// missing ones (and the table) consecutively at the end of the image.
    fn map_clusters(&self, first: u64, last: u64) -> io::Result<Vec<u64>> {
        let mut a = self
            .alloc
            .lock()
            .map_err(|_| io::Error::other("qcow2 allocation lock poisoned"))?;
        let l1i = (first / L2_ENTRIES) as usize;
        let n = (last - first) as usize;
        let mut entries = vec![0u8; n * 8];
        if a.l1[l1i] == 0 {
            a.l1[l1i] = a.take();
            // Reserve the table's cluster so later reads of its entries see zeros. Every
            // cluster allocated so far lies below it, so this never cuts off written data.
            self.file.file().set_len(a.next * CLUSTER)?;
        } else {
            self.file
                .file()
                .read_exact_at(&mut entries, a.l1[l1i] + (first % L2_ENTRIES) * 8)?;
        }
        let mut hosts = Vec::with_capacity(n);
        let mut changed = false;
        for e in entries.chunks_exact_mut(8) {
            let mut host = u64::from_be_bytes(e.try_into().unwrap_or_default()) & OFFSET_MASK;
            if host == 0 {
                host = a.take();
                e.copy_from_slice(&(host | COPIED).to_be_bytes());
                changed = true;
            }
            hosts.push(host);
        }
        if changed {
            self.file
                .file()
                .write_all_at(&entries, a.l1[l1i] + (first % L2_ENTRIES) * 8)?;
        }
        Ok(hosts)
    }

    /// Write the L1 table, the refcounts and the header, and sync. Returns the file size.
    pub fn finish(self) -> io::Result<u64> {
        let Allocation { l1, mut next } = self
            .alloc
            .into_inner()
            .map_err(|_| io::Error::other("qcow2 allocation lock poisoned"))?;
        let l1_bytes: Vec<u8> = l1
            .iter()
            .flat_map(|&o| if o == 0 { 0 } else { o | COPIED }.to_be_bytes())
            .collect();
        let l1_at = next * CLUSTER;
        let l1_clusters = (l1_bytes.len() as u64).div_ceil(CLUSTER);
        self.file.file().write_all_at(&l1_bytes, l1_at)?;
        next += l1_clusters;

        // Refcount blocks and table after the L1 table; they count themselves too.
        let used = next;
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
            self.file.file().write_all_at(&block, at)?;
            table_bytes[8 * b as usize..8 * b as usize + 8].copy_from_slice(&at.to_be_bytes());
        }
        self.file.file().write_all_at(&table_bytes, table_at)?;

        let mut head = vec![0u8; CLUSTER as usize];
        let put32 =
            |h: &mut [u8], at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |h: &mut [u8], at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put32(&mut head, 0, MAGIC);
        put32(&mut head, 4, 3);
        put32(&mut head, 20, CLUSTER_BITS);
        put64(&mut head, 24, self.size);
        put32(&mut head, 36, l1.len() as u32);
        put64(&mut head, 40, l1_at);
        put64(&mut head, 48, table_at);
        put32(&mut head, 56, table as u32);
        put32(&mut head, 96, 4);
        put32(&mut head, 100, HEADER_LEN);
        // The header extensions that follow are all zero: the end marker.
        self.file.file().write_all_at(&head, 0)?;
        let len = total * CLUSTER;
        self.file.file().set_len(len)?;
        self.file.file().sync_all()?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
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

    /// A qcow2 image being written and a raw file that receives the same writes.
    struct Pair {
        raw: PathBuf,
        qcow: PathBuf,
        rawf: File,
        w: Qcow2Writer,
    }

    impl Pair {
        fn new(dir: &Path, size: u64) -> Pair {
            let raw = dir.join("want.raw");
            let qcow = dir.join("got.qcow2");
            let rawf = File::create(&raw).unwrap();
            rawf.set_len(size).unwrap();
            let w = Qcow2Writer::new(File::create_new(&qcow).unwrap(), size).unwrap();
            Pair { raw, qcow, rawf, w }
        }

        fn write_both(&self, off: u64, data: &[u8]) {
            self.w.write_at(off, data).unwrap();
            self.rawf.write_all_at(data, off).unwrap();
        }

        /// `qemu-img check` finds the image clean and `compare` finds it equal to the raw
        /// file. Returns the image's length.
        fn finish_and_compare(self) -> u64 {
            let len = self.w.finish().unwrap();
            let q = self.qcow.to_str().unwrap();
            qemu_img(&["check", "-f", "qcow2", q]);
            let raw = self.raw.to_str().unwrap();
            let out = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", raw, q]);
            assert!(out.contains("identical"), "{out}");
            len
        }
    }

    /// xorshift64: the same pseudo-random stream for the same seed.
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Writes at scattered, unaligned, out-of-order offsets (two L2 tables apart) give an image
    /// that `qemu-img check` finds clean and that compares equal to a raw file written the same.
    #[test]
    fn streamed_image_is_valid_and_holds_the_data() {
        let size: u64 = (1 << 30) + (3 << 20);
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new(dir.path(), size);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise =
            |n: usize| -> Vec<u8> { (0..n).map(|_| xorshift(&mut seed) as u8).collect() };
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
            pair.write_both(off, &noise(len));
        }
        assert!(pair.w.write_at(size - 10, &[1; 11]).is_err());
        let qcow = pair.qcow.clone();
        let len = pair.finish_and_compare();
        assert_eq!(std::fs::metadata(&qcow).unwrap().len(), len);
        let info = qemu_img(&[
            "info",
            "--output=json",
            "-f",
            "qcow2",
            qcow.to_str().unwrap(),
        ]);
        assert!(
            info.contains(&format!("\"virtual-size\": {size}")),
            "{info}"
        );
        // Only the written clusters are allocated: a few MiB, not the 1 GiB disk.
        assert!(len < 16 << 20, "{len}");
    }

    /// Import workers finish extents in any order and write concurrently. Extents of all
    /// sizes, many sharing a cluster with a neighbour (unaligned boundaries) and spanning L2
    /// tables, are written from four threads in a shuffled order; the image must be clean and
    /// hold exactly what a raw file written the same way holds.
    #[test]
    fn concurrent_out_of_order_writes_give_a_valid_image() {
        let size: u64 = (1 << 30) + (5 << 20);
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new(dir.path(), size);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || xorshift(&mut seed);
        // Disjoint extents: lengths from 1 byte to 3 MiB, gaps from 0 (adjacent, often inside
        // one cluster) to 40 MiB (so several L2 tables, each 512 MiB, get touched).
        let mut extents = Vec::new();
        let mut pos = 0u64;
        loop {
            pos += match next() % 4 {
                0 => 0,
                1 => next() % 5000,
                2 => next() % CLUSTER,
                _ => next() % (40 << 20),
            };
            let len = 1 + next() % (3 << 20);
            if pos + len > size {
                break;
            }
            extents.push((pos, len as usize, next()));
            pos += len;
        }
        extents.push((size - 700, 700, next()));
        // Shuffle (Fisher-Yates) so completion order has nothing to do with guest order.
        for i in (1..extents.len()).rev() {
            extents.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        assert!(extents.len() > 100, "{}", extents.len());
        let fill = |seed: u64, len: usize| -> Vec<u8> {
            let mut x = seed | 1;
            (0..len).map(|_| (xorshift(&mut x) >> 24) as u8).collect()
        };
        std::thread::scope(|s| {
            for part in extents.chunks(extents.len().div_ceil(4)) {
                let pair = &pair;
                s.spawn(move || {
                    for &(off, len, seed) in part {
                        pair.write_both(off, &fill(seed, len));
                    }
                });
            }
        });
        pair.finish_and_compare();
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
