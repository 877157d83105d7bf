//! Writing a native archive.
//!
//! Flow: map every source's allocated ranges (exact byte total for progress), write the
//! manifest, cut the ranges into jobs of at most `extent_max_bytes` aligned to absolute
//! offsets, and run them on `threads` workers. A worker reads its range, splits it at all-zero
//! 64 KiB blocks, hashes and compresses each non-zero run. The calling thread hands out job
//! numbers only while fewer than a window of jobs are unwritten, and writes results strictly in
//! job order, so memory stays at about `window x 2 x extent_max_bytes` (at most 128 MiB) whatever the
//! disk size.
//! To cancel, make `out` fail: the writer stops, the workers drain and exit.

use super::*;
use crate::progress::{Phase, Progress};
use crate::source::DiskSource;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::Mutex;

/// Options of an export.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub compression: Compression,
    /// zstd level (1 is fast and is what the disk-speed goal is measured with).
    pub level: i32,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Largest extent; smaller means more parallelism and less memory, slightly worse ratio.
    pub extent_max_bytes: u64,
    /// Files to carry beside the disks (direct-boot kernel and initrd, TPM state), each role
    /// at most once. Any makes the archive format 2.0.
    pub files: Vec<(FileRole, std::path::PathBuf)>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            compression: Compression::Zstd,
            level: 1,
            threads: 0,
            extent_max_bytes: DEFAULT_EXTENT_BYTES,
            files: Vec::new(),
        }
    }
}

/// What was written for one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSummary {
    pub device: String,
    pub virtual_size: u64,
    pub allocated_bytes: u64,
    /// Non-zero bytes stored.
    pub data_bytes: u64,
    /// Bytes of extent members after compression.
    pub stored_bytes: u64,
    pub extents: u64,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub disks: Vec<DiskSummary>,
    /// Bytes of the tar stream.
    pub archive_bytes: u64,
    /// XXH3-128 over the members, as in `checksums.json`.
    pub archive_hash: String,
}

struct Job {
    disk: usize,
    offset: u64,
    length: u64,
}

struct Piece {
    offset: u64,
    length: u64,
    hash: u64,
    payload: Vec<u8>,
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Find runs of non-zero `ZERO_BLOCK_BYTES` blocks in `buf`, as `(start, end)` in `buf`.
pub(crate) fn nonzero_runs(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, block) in buf.chunks(ZERO_BLOCK_BYTES).enumerate() {
        if is_zero(block) {
            continue;
        }
        let start = i * ZERO_BLOCK_BYTES;
        let end = start + block.len();
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

fn is_zero(block: &[u8]) -> bool {
    // Word-wise with an early exit: data blocks stop at their first non-zero word, zero
    // blocks are scanned at memory speed.
    let mut words = block.chunks_exact(16);
    for c in &mut words {
        let mut w = [0u8; 16];
        w.copy_from_slice(c);
        if u128::from_ne_bytes(w) != 0 {
            return false;
        }
    }
    words.remainder().iter().all(|&b| b == 0)
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append<W: Write>(
    b: &mut tar::Builder<W>,
    hasher: &mut MemberHasher,
    name: &str,
    data: &[u8],
) -> Result<(), ArchiveError> {
    hasher.begin(name, data.len() as u64);
    hasher.data(data);
    let mut h = header(data.len() as u64);
    b.append_data(&mut h, name, data)
        .map_err(ArchiveError::WriteArchive)
}

fn process_job(
    job: &Job,
    source: &(dyn DiskSource + Send + Sync),
    device: &str,
    buf: &mut Vec<u8>,
    compressor: &mut Option<zstd::bulk::Compressor<'static>>,
) -> Result<Vec<Piece>, ArchiveError> {
    buf.resize(job.length as usize, 0);
    source
        .read_at(&mut buf[..], job.offset)
        .map_err(|e| ArchiveError::ReadDisk {
            device: device.to_string(),
            source: e,
        })?;
    let mut pieces = Vec::new();
    for (s, e) in nonzero_runs(buf) {
        let data = &buf[s..e];
        let hash = xxhash_rust::xxh3::xxh3_64(data);
        let payload = match compressor {
            Some(c) => c.compress(data).map_err(ArchiveError::WriteArchive)?,
            None => data.to_vec(),
        };
        pieces.push(Piece {
            offset: job.offset + s as u64,
            length: data.len() as u64,
            hash,
            payload,
        });
    }
    Ok(pieces)
}

/// XXH3-64 and size of a file to carry, read once before the manifest is written (the
/// manifest comes first and names both).
fn describe_file(role: FileRole, path: &std::path::Path) -> Result<ManifestFile, ArchiveError> {
    let read_err = |e: io::Error| ArchiveError::ReadFile {
        role: role.to_string(),
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(read_err)?;
    let meta = f.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(io::Error::other("not a regular file")));
    }
    let limit = role.max_bytes(&Limits::default());
    if meta.len() > limit {
        return Err(ArchiveError::LimitExceeded(format!(
            "{role} file {} is {} bytes, more than the maximum of {limit}",
            path.display(),
            meta.len()
        )));
    }
    let (size, hash) = hash_stream(&mut f).map_err(read_err)?;
    Ok(ManifestFile {
        role,
        size,
        xxh3: format!("{hash:016x}"),
    })
}

/// Size and XXH3-64 of everything `r` yields.
pub(crate) fn hash_stream(r: &mut impl io::Read) -> io::Result<(u64, u64)> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, h.digest()))
}

/// Append a carried file as member `files/<role>`: exactly the size the manifest declared,
/// fed to the archive hash, and checked against the manifest's XXH3 (a file that changed since
/// it was described fails the export instead of producing an archive that fails on import).
fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    hasher: &mut MemberHasher,
    file: &ManifestFile,
    path: &std::path::Path,
) -> Result<(), ArchiveError> {
    let read_err = |e: io::Error| ArchiveError::ReadFile {
        role: file.role.to_string(),
        path: path.to_path_buf(),
        source: e,
    };
    let name = file.role.member_name();
    hasher.begin(&name, file.size);
    let f = std::fs::File::open(path).map_err(read_err)?;
    struct Tee<'a, R> {
        inner: R,
        member: &'a mut MemberHasher,
        own: xxhash_rust::xxh3::Xxh3,
        count: u64,
    }
    impl<R: io::Read> io::Read for Tee<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.member.data(&buf[..n]);
            self.own.update(&buf[..n]);
            self.count += n as u64;
            Ok(n)
        }
    }
    let mut tee = Tee {
        inner: io::Read::take(f, file.size),
        member: hasher,
        own: xxhash_rust::xxh3::Xxh3::new(),
        count: 0,
    };
    let mut h = header(file.size);
    b.append_data(&mut h, &name, &mut tee)
        .map_err(ArchiveError::WriteArchive)?;
    let hash = format!("{:016x}", tee.own.digest());
    if tee.count != file.size || hash != file.xxh3 {
        return Err(read_err(io::Error::other(
            "the file changed while it was being exported",
        )));
    }
    Ok(())
}

/// Write a native archive of `spec` with the given disks (device name, source) to `out`.
pub fn write_archive<W: Write>(
    out: W,
    spec: &VmSpec,
    disks: Vec<(String, Box<dyn DiskSource + Send + Sync>)>,
    opts: &WriteOptions,
    progress: &dyn Fn(Progress),
) -> Result<ArchiveSummary, ArchiveError> {
    if opts.extent_max_bytes < ZERO_BLOCK_BYTES as u64
        || opts.extent_max_bytes > super::MAX_EXTENT_BYTES
    {
        return Err(ArchiveError::InvalidInput(format!(
            "extent size {} is outside 64 KiB..16 MiB",
            opts.extent_max_bytes
        )));
    }
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Keep at most this many jobs in memory (each up to 2 x extent_max_bytes, 128 MiB in all).
    let window = super::window_jobs(threads, opts.extent_max_bytes);

    // Map disks.
    let mut mdisks = Vec::new();
    for (device, src) in &disks {
        corral_model::validate::validate_name("disk device", device)
            .map_err(ArchiveError::InvalidInput)?;
        if mdisks.iter().any(|d: &ManifestDisk| &d.device == device) {
            return Err(ArchiveError::InvalidInput(format!(
                "disk device {device:?} is given twice"
            )));
        }
        let size = src.virtual_size();
        let ranges = src
            .allocated_extents()
            .map_err(|e| ArchiveError::ReadDisk {
                device: device.clone(),
                source: e,
            })?;
        // Sources are trusted but may round past the end; clip and merge defensively.
        let mut clipped: Vec<(u64, u64)> = Vec::new();
        for (o, l) in ranges {
            let end = o.saturating_add(l).min(size);
            if end <= o {
                continue;
            }
            match clipped.last_mut() {
                Some(last) if o <= last.0 + last.1 => {
                    last.1 = last.1.max(end - last.0);
                }
                _ => clipped.push((o, end - o)),
            }
        }
        let allocated_bytes = check_ranges(&clipped, size).map_err(|e| ArchiveError::ReadDisk {
            device: device.clone(),
            source: io::Error::other(e),
        })?;
        let format = spec
            .disks
            .iter()
            .find(|d| &d.device == device)
            .map_or(DiskFormat::Qcow2, |d| d.format);
        mdisks.push(ManifestDisk {
            device: device.clone(),
            virtual_size: size,
            format,
            allocated: clipped,
            allocated_bytes,
        });
    }
    let bytes_total: u64 = mdisks.iter().map(|d| d.allocated_bytes).sum();
    let mut files = Vec::new();
    for (i, (role, path)) in opts.files.iter().enumerate() {
        if opts.files[..i].iter().any(|(r, _)| r == role) {
            return Err(ArchiveError::InvalidInput(format!(
                "the {role} file is given twice"
            )));
        }
        files.push(describe_file(*role, path)?);
    }
    // The lowest version that can express the archive (see `VERSION_MAJOR`).
    let major = if files.is_empty() { OLDEST_MAJOR } else { 2 };
    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        version: format!("{major}.{VERSION_MINOR}"),
        created_by: format!("corral {}", env!("CARGO_PKG_VERSION")),
        compression: opts.compression,
        extent_max_bytes: opts.extent_max_bytes,
        vm: serde_json::to_value(spec)
            .map_err(|e| ArchiveError::InvalidInput(format!("VM spec: {e}")))?,
        disks: mdisks,
        files,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| ArchiveError::InvalidInput(format!("manifest: {e}")))?;

    let mut builder = tar::Builder::new(CountingWriter {
        inner: out,
        count: 0,
    });
    let mut hasher = MemberHasher::new();
    append(&mut builder, &mut hasher, MANIFEST_NAME, &manifest_json)?;
    for (f, (_, path)) in manifest.files.iter().zip(&opts.files) {
        append_file(&mut builder, &mut hasher, f, path)?;
    }

    // Jobs, aligned to absolute multiples of the extent size.
    let step = opts.extent_max_bytes;
    let mut jobs = Vec::new();
    for (di, d) in manifest.disks.iter().enumerate() {
        for &(off, len) in &d.allocated {
            let end = off + len;
            let mut pos = off;
            while pos < end {
                let next = ((pos / step) + 1).saturating_mul(step).min(end);
                jobs.push(Job {
                    disk: di,
                    offset: pos,
                    length: next - pos,
                });
                pos = next;
            }
        }
    }

    let mut summaries: Vec<DiskSummary> = manifest
        .disks
        .iter()
        .map(|d| DiskSummary {
            device: d.device.clone(),
            virtual_size: d.virtual_size,
            allocated_bytes: d.allocated_bytes,
            data_bytes: 0,
            stored_bytes: 0,
            extents: 0,
        })
        .collect();
    let report = |done: u64, device: Option<String>| {
        progress(Progress {
            phase: Phase::Exporting,
            device,
            bytes_done: done,
            bytes_total,
        })
    };
    report(0, None);

    let compression = opts.compression;
    let level = opts.level;
    let sources: Vec<&(dyn DiskSource + Send + Sync)> = disks.iter().map(|(_, s)| &**s).collect();
    let devices: Vec<&str> = disks.iter().map(|(d, _)| d.as_str()).collect();
    let jobs_ref = &jobs;
    let mut bytes_done = 0u64;

    // The receiver outlives the scope; the sender is moved in so that any early return drops
    // it and the workers stop.
    let (job_tx_outer, job_rx) = mpsc::sync_channel::<usize>(window);
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| -> Result<(), ArchiveError> {
        let job_tx = job_tx_outer;
        let (res_tx, res_rx) = mpsc::channel::<(usize, Result<Vec<Piece>, ArchiveError>)>();
        for _ in 0..threads.min(jobs.len().max(1)) {
            let res_tx = res_tx.clone();
            let job_rx = &job_rx;
            let sources = &sources;
            let devices = &devices;
            scope.spawn(move || {
                let mut buf = Vec::new();
                let mut compressor = match compression {
                    Compression::Zstd => match zstd::bulk::Compressor::new(level) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            let _ = res_tx.send((usize::MAX, Err(ArchiveError::WriteArchive(e))));
                            return;
                        }
                    },
                    Compression::None => None,
                };
                loop {
                    let next = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(i) = next else { return };
                    let job = &jobs_ref[i];
                    let r = process_job(
                        job,
                        sources[job.disk],
                        devices[job.disk],
                        &mut buf,
                        &mut compressor,
                    );
                    if res_tx.send((i, r)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(res_tx);
        let mut issued = 0usize;
        let mut next = 0usize;
        let mut pending: BTreeMap<usize, Vec<Piece>> = BTreeMap::new();
        while next < jobs.len() {
            while issued < jobs.len() && issued - next < window {
                if job_tx.send(issued).is_err() {
                    break;
                }
                issued += 1;
            }
            let (i, r) = res_rx.recv().map_err(|_| {
                ArchiveError::WriteArchive(io::Error::other("export workers stopped"))
            })?;
            pending.insert(i, r?);
            while let Some(pieces) = pending.remove(&next) {
                let job = &jobs[next];
                let s = &mut summaries[job.disk];
                for p in pieces {
                    let name = extent_name(job.disk, p.offset, p.length, p.hash, compression);
                    append(&mut builder, &mut hasher, &name, &p.payload)?;
                    s.data_bytes += p.length;
                    s.stored_bytes += p.payload.len() as u64;
                    s.extents += 1;
                }
                bytes_done += job.length;
                report(bytes_done, Some(devices[job.disk].to_string()));
                next += 1;
            }
        }
        drop(job_tx);
        Ok(())
    })?;

    let archive_hash = hasher.hex();
    let checksums = Checksums {
        archive_xxh3_128: archive_hash.clone(),
        disks: summaries
            .iter()
            .map(|s| DiskChecksum {
                device: s.device.clone(),
                extents: s.extents,
                data_bytes: s.data_bytes,
            })
            .collect(),
    };
    let checksums_json = serde_json::to_vec_pretty(&checksums)
        .map_err(|e| ArchiveError::InvalidInput(format!("checksums: {e}")))?;
    let mut h = header(checksums_json.len() as u64);
    builder
        .append_data(&mut h, CHECKSUMS_NAME, &checksums_json[..])
        .map_err(ArchiveError::WriteArchive)?;
    let mut counting = builder.into_inner().map_err(ArchiveError::WriteArchive)?;
    counting.flush().map_err(ArchiveError::WriteArchive)?;
    Ok(ArchiveSummary {
        disks: summaries,
        archive_bytes: counting.count,
        archive_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_runs() {
        let mut buf = vec![0u8; ZERO_BLOCK_BYTES * 5 + 100];
        buf[ZERO_BLOCK_BYTES + 3] = 1;
        buf[2 * ZERO_BLOCK_BYTES + 7] = 1;
        buf[5 * ZERO_BLOCK_BYTES + 99] = 1;
        assert_eq!(
            nonzero_runs(&buf),
            vec![
                (ZERO_BLOCK_BYTES, 3 * ZERO_BLOCK_BYTES),
                (5 * ZERO_BLOCK_BYTES, 5 * ZERO_BLOCK_BYTES + 100)
            ]
        );
        assert!(nonzero_runs(&vec![0u8; 1 << 20]).is_empty());
    }
}
