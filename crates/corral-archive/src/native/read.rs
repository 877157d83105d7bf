//! Reading a native archive from an untrusted stream.
//!
//! Every member is checked against the manifest before its data is read: name pattern, disk
//! order, offsets ascending and inside the manifest's allocated ranges (hence inside the
//! virtual size), declared length within the extent limit, stored size within zstd's bound
//! for that length. Data is decompressed into a buffer of exactly the declared length (more
//! output is an error, so a "zip bomb" cannot grow), its XXH3 is compared with the one in the
//! member name, and only then is it handed to the sink. The final `checksums.json` checks the
//! XXH3-128 over all members and per-disk counts, which catches dropped or reordered members.
//! The import is valid only when [`read_archive`] returns `Ok`; on error the caller discards
//! what the sink wrote.
//!
//! Pipeline: the calling thread only parses tar headers, checks members, reads each extent's
//! stored bytes into a recycled buffer and feeds the whole-archive hash (XXH3 over the
//! compressed bytes, a small fraction of the work). Workers decompress, verify and write the
//! data to the sink themselves ([`ImportSink::write_at`] takes `&self`), so decompression,
//! hashing and the writes (direct, from page-aligned buffers: `sink::DataFile`) all run on
//! every core, and extents complete in
//! any order. At most `window` extents are in flight (the byte budget of
//! [`super::WINDOW_BUDGET_BYTES`]); an error stops the workers, which skip what is still queued,
//! and every worker has returned before [`read_archive`] does, so nothing writes into the sink
//! afterwards.

use super::*;
use crate::progress::{Phase, Progress};
use crate::sink::{DiskTarget, ImportSink};
use crate::tarsafe::{check_member, GuardedTar, MemberKind};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;

/// Bounds an import enforces on untrusted input.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest manifest (and OVF descriptor, `ova.xml`) accepted.
    pub max_manifest_bytes: u64,
    pub max_disks: usize,
    /// Largest virtual size of one disk.
    pub max_virtual_size: u64,
    /// Largest extent a manifest may declare.
    pub max_extent_bytes: u64,
    /// Decompression threads; 0 means one per available core.
    pub threads: usize,
    /// Largest carried file (kernel, initrd); TPM state is held to
    /// [`super::MAX_TPM_STATE_BYTES`] as well.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 << 20,
            max_disks: corral_model::MAX_DISKS,
            max_virtual_size: 64 << 40,
            max_extent_bytes: super::MAX_EXTENT_BYTES,
            threads: 0,
            max_file_bytes: super::MAX_FILE_BYTES,
        }
    }
}

/// One imported disk, final in the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedDisk {
    pub device: String,
    pub virtual_size: u64,
    pub path: PathBuf,
    pub format: DiskFormat,
    /// Non-zero bytes that were written.
    pub data_bytes: u64,
}

/// One carried file, verified and final in the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedFile {
    pub role: FileRole,
    pub path: PathBuf,
    pub size: u64,
}

/// The result of an import: the spec with disk paths pointing into the sink, and warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedVm {
    pub spec: VmSpec,
    pub disks: Vec<ImportedDisk>,
    /// Carried files (format 2.0), in the sink. The spec still names the exporter's paths for
    /// them: the caller decides where they go and points the spec there.
    pub files: Vec<ImportedFile>,
    pub warnings: Vec<String>,
    /// XXH3-128 over the members (verified).
    pub archive_hash: String,
    /// Format version of the archive read.
    pub format_version: String,
}

/// Check the format and version, then decode. Newer majors are refused before their layout is
/// looked at, since it may differ.
fn decode_manifest(bytes: &[u8], limits: &Limits) -> Result<Manifest, ArchiveError> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad_manifest(format!("not valid JSON: {e}")))?;
    if v["format"].as_str() != Some(FORMAT_NAME) {
        return Err(ArchiveError::NotCorralArchive(format!(
            "manifest format is {}, not {FORMAT_NAME:?}",
            v["format"]
        )));
    }
    let version = v["version"].as_str().unwrap_or("").to_string();
    let (major, _minor) = parse_version(&version)
        .ok_or_else(|| bad_manifest(format!("version {version:?} is not major.minor")))?;
    if major > VERSION_MAJOR {
        return Err(ArchiveError::NewerVersion {
            found: version.to_string(),
            supported: format!("{VERSION_MAJOR}.x"),
        });
    }
    if major < OLDEST_MAJOR {
        return Err(ArchiveError::Unsupported(format!(
            "archive format {version} predates {OLDEST_MAJOR}.0"
        )));
    }
    let m: Manifest = serde_json::from_value(v).map_err(|e| bad_manifest(e.to_string()))?;
    if major < 2 && !m.files.is_empty() {
        return Err(bad_manifest(format!(
            "format {version} cannot carry files (they need 2.0)"
        )));
    }
    for (i, f) in m.files.iter().enumerate() {
        if m.files[..i].iter().any(|o| o.role == f.role) {
            return Err(bad_manifest(format!("the {} file appears twice", f.role)));
        }
        let max = f.role.max_bytes(limits);
        if f.size > max {
            return Err(ArchiveError::LimitExceeded(format!(
                "the {} file is {} bytes, more than the maximum of {max}",
                f.role, f.size
            )));
        }
        let hex_ok = f.xxh3.len() == 16
            && f.xxh3
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(bad_manifest(format!(
                "the {} file's xxh3 {:?} is not 16 lower-case hex digits",
                f.role, f.xxh3
            )));
        }
    }
    if m.extent_max_bytes == 0 || m.extent_max_bytes > limits.max_extent_bytes {
        return Err(ArchiveError::LimitExceeded(format!(
            "extent size {} is outside 1..{}",
            m.extent_max_bytes, limits.max_extent_bytes
        )));
    }
    if m.disks.len() > limits.max_disks {
        return Err(ArchiveError::LimitExceeded(format!(
            "{} disks, more than the maximum of {}",
            m.disks.len(),
            limits.max_disks
        )));
    }
    for (i, d) in m.disks.iter().enumerate() {
        corral_model::validate::validate_name("disk device", &d.device).map_err(bad_manifest)?;
        if m.disks[..i].iter().any(|o| o.device == d.device) {
            return Err(bad_manifest(format!("disk {:?} appears twice", d.device)));
        }
        if d.virtual_size > limits.max_virtual_size {
            return Err(ArchiveError::LimitExceeded(format!(
                "disk {:?} has a virtual size of {} bytes, more than the maximum of {}",
                d.device, d.virtual_size, limits.max_virtual_size
            )));
        }
        let total = check_ranges(&d.allocated, d.virtual_size)
            .map_err(|e| bad_manifest(format!("disk {:?}: allocated {e}", d.device)))?;
        if total != d.allocated_bytes {
            return Err(bad_manifest(format!(
                "disk {:?}: allocated ranges add up to {total} bytes, not {}",
                d.device, d.allocated_bytes
            )));
        }
    }
    Ok(m)
}

fn read_member<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: &str,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, ArchiveError> {
    let size = entry.header().size().map_err(ArchiveError::ReadArchive)?;
    if size > cap {
        return Err(ArchiveError::LimitExceeded(format!(
            "{what} {name:?} is {size} bytes, more than the maximum of {cap}"
        )));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut data)
        .map_err(ArchiveError::read)?;
    if data.len() as u64 != size {
        return Err(ArchiveError::Truncated(format!(
            "member {name:?} ends after {} of {size} bytes",
            data.len()
        )));
    }
    Ok(data)
}

/// Open the first member of a native archive: the manifest, validated, and the VM spec with
/// warnings. Reads nothing else; this is what `--dry-run` needs.
pub fn read_manifest<R: Read>(
    input: R,
    limits: &Limits,
) -> Result<(Manifest, VmSpec, Vec<String>), ArchiveError> {
    let mut ar = tar::Archive::new(GuardedTar::new(input));
    let mut entries = ar.entries().map_err(ArchiveError::read)?;
    let m = first_manifest(&mut entries, limits, &mut MemberHasher::new())?;
    let (spec, warnings) = parse_spec_lenient(&m.vm).map_err(bad_manifest)?;
    Ok((m, spec, warnings))
}

fn first_manifest<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    limits: &Limits,
    hasher: &mut MemberHasher,
) -> Result<Manifest, ArchiveError> {
    let mut entry = match entries.next() {
        None => {
            return Err(ArchiveError::NotCorralArchive(
                "the archive is empty".into(),
            ))
        }
        Some(Err(e)) => {
            return Err(ArchiveError::NotCorralArchive(format!(
                "not a tar stream ({e})"
            )))
        }
        Some(Ok(e)) => e,
    };
    let (name, kind) = check_member(&entry)?;
    if name != MANIFEST_NAME || kind != MemberKind::File {
        return Err(ArchiveError::NotCorralArchive(format!(
            "first member is {name:?}, not {MANIFEST_NAME:?}"
        )));
    }
    let bytes = read_member(&mut entry, &name, limits.max_manifest_bytes, "manifest")?;
    hasher.begin(&name, bytes.len() as u64);
    hasher.data(&bytes);
    decode_manifest(&bytes, limits)
}

/// One extent for a worker: where it goes, what it must hash to, and its stored bytes.
struct Work {
    name: String,
    disk: usize,
    offset: u64,
    length: u64,
    hash: u64,
    /// The member's bytes are `payload[..stored]`; the buffer comes back for reuse.
    payload: Vec<u8>,
    stored: usize,
}

/// A worker's answer for one extent: written to the sink or not, and the payload buffer.
struct Done {
    result: Result<(), ArchiveError>,
    payload: Vec<u8>,
}

/// Decompress (into `buf`, reused across extents) and verify one extent; returns its data.
fn decode_extent<'a>(
    w: &'a Work,
    compression: Compression,
    dec: Option<&mut zstd::bulk::Decompressor<'static>>,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], ArchiveError> {
    let stored = &w.payload[..w.stored];
    let length = w.length as usize;
    let data = match compression {
        Compression::Zstd => {
            let dec = dec.ok_or_else(|| {
                ArchiveError::ReadArchive(io::Error::other("cannot create a zstd decompressor"))
            })?;
            // The data starts page-aligned inside `buf`, so the sink can write it with
            // `O_DIRECT` (see `sink::DataFile`); the buffer is never reallocated once large
            // enough, so the alignment holds across extents.
            let want = length + crate::sink::DIRECT_ALIGN;
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let pad = buf.as_ptr().align_offset(crate::sink::DIRECT_ALIGN);
            let buf = &mut buf[pad..];
            // Into exactly `length` bytes: a frame that would grow larger fails here.
            let n = dec
                .decompress_to_buffer(stored, &mut buf[..length])
                .map_err(|e| {
                    ArchiveError::member(
                        &w.name,
                        format!("does not decompress to its declared {length} bytes ({e})"),
                    )
                })?;
            &buf[..n]
        }
        Compression::None => stored,
    };
    if data.len() != length {
        return Err(ArchiveError::member(
            &w.name,
            format!("holds {} bytes, not the declared {length}", data.len()),
        ));
    }
    let got = xxhash_rust::xxh3::xxh3_64(data);
    if got != w.hash {
        return Err(ArchiveError::ChecksumMismatch {
            what: format!("extent {}", w.name),
            expected: format!("{:016x}", w.hash),
            actual: format!("{got:016x}"),
        });
    }
    Ok(data)
}

/// Stream a carried file (its header already checked against the manifest entry `f`) into the
/// sink, hashing as it goes; the sink's file counts only once size and XXH3 match.
fn read_file<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: &str,
    f: &ManifestFile,
    sink: &dyn ImportSink,
    hasher: &mut MemberHasher,
) -> Result<ImportedFile, ArchiveError> {
    struct Tee<'a, R> {
        inner: R,
        member: &'a mut MemberHasher,
        own: xxhash_rust::xxh3::Xxh3,
        count: u64,
    }
    impl<R: Read> Read for Tee<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.member.data(&buf[..n]);
            self.own.update(&buf[..n]);
            self.count += n as u64;
            Ok(n)
        }
    }
    hasher.begin(name, f.size);
    let mut tee = Tee {
        inner: entry.take(f.size),
        member: hasher,
        own: xxhash_rust::xxh3::Xxh3::new(),
        count: 0,
    };
    let path = sink
        .write_file(f.role, &mut tee)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                ArchiveError::Truncated("the stream ended in the middle of a member".into())
            }
            _ => ArchiveError::WriteFile {
                role: f.role.to_string(),
                source: e,
            },
        })?;
    if tee.count != f.size {
        return Err(ArchiveError::Truncated(format!(
            "member {name:?} ends after {} of {} bytes",
            tee.count, f.size
        )));
    }
    let got = format!("{:016x}", tee.own.digest());
    if got != f.xxh3 {
        return Err(ArchiveError::ChecksumMismatch {
            what: format!("the {} file", f.role),
            expected: f.xxh3.clone(),
            actual: got,
        });
    }
    Ok(ImportedFile {
        role: f.role,
        path,
        size: f.size,
    })
}

/// Read exactly `buf.len()` bytes of member `name`; a short member is a truncated archive.
fn read_payload(input: &mut impl Read, name: &str, buf: &mut [u8]) -> Result<(), ArchiveError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(ArchiveError::Truncated(format!(
                    "member {name:?} ends after {got} of {} bytes",
                    buf.len()
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ArchiveError::read(e)),
        }
    }
    Ok(())
}

/// Where the reader is in one disk's allocated ranges.
struct Cursor {
    disk: usize,
    range: usize,
    /// End of the previous extent.
    last_end: u64,
    /// Allocated bytes of disks before `disk`.
    done_before: u64,
    /// Prefix sums of the allocated ranges of `disk`.
    prefix: Vec<u64>,
    /// An extent has been read (no carried file may follow).
    started: bool,
}

impl Cursor {
    fn enter(&mut self, m: &Manifest, disk: usize) {
        self.done_before += m.disks[self.disk..disk]
            .iter()
            .map(|d| d.allocated_bytes)
            .sum::<u64>();
        self.disk = disk;
        self.range = 0;
        self.last_end = 0;
        let mut acc = 0;
        self.prefix = m.disks[disk]
            .allocated
            .iter()
            .map(|r| {
                let p = acc;
                acc += r.1;
                p
            })
            .collect();
    }
}

/// Import a native archive from `input` into `sink`.
pub fn read_archive<R: Read>(
    input: R,
    sink: &mut dyn ImportSink,
    limits: &Limits,
    progress: &dyn Fn(Progress),
) -> Result<ImportedVm, ArchiveError> {
    let mut ar = tar::Archive::new(GuardedTar::new(input));
    let mut entries = ar.entries().map_err(ArchiveError::read)?;
    let mut hasher = MemberHasher::new();
    let m = first_manifest(&mut entries, limits, &mut hasher)?;
    let (mut spec, mut warnings) = parse_spec_lenient(&m.vm).map_err(bad_manifest)?;

    for (index, d) in m.disks.iter().enumerate() {
        sink.create_disk(&DiskTarget {
            index,
            device: d.device.clone(),
            virtual_size: d.virtual_size,
            format: d.format,
        })
        .map_err(|e| ArchiveError::WriteDisk {
            device: d.device.clone(),
            source: e,
        })?;
    }
    let bytes_total: u64 = m.disks.iter().map(|d| d.allocated_bytes).sum();
    let report = |done: u64, device: Option<String>| {
        progress(Progress {
            phase: Phase::Importing,
            device,
            bytes_done: done,
            bytes_total,
        })
    };
    report(0, None);

    let threads = match limits.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let window = super::window_jobs(threads, m.extent_max_bytes);
    // No more than `window` extents are ever in flight, so more workers would only idle (and
    // each holds a decompression buffer).
    let workers = threads.min(window).max(1);
    let compression = m.compression;
    let mut counts: Vec<(u64, u64)> = vec![(0, 0); m.disks.len()];
    let mut cursor = Cursor {
        disk: 0,
        range: 0,
        last_end: 0,
        done_before: 0,
        prefix: Vec::new(),
        started: false,
    };
    let mut files: Vec<ImportedFile> = Vec::new();
    if !m.disks.is_empty() {
        cursor.enter(&m, 0);
    }

    // The calling thread parses headers, checks each member against the manifest, reads its
    // stored bytes into a recycled buffer and feeds the whole-archive hash (cheap: XXH3 over
    // the compressed bytes); the workers decompress, verify and write to the sink themselves,
    // so the sink's writes and the qcow2 allocation run on every core too.
    let (work_tx, work_rx) = mpsc::sync_channel::<Work>(window);
    let work_rx = Mutex::new(work_rx);
    // Set on the first error so workers skip what is still queued instead of writing it.
    let stop = AtomicBool::new(false);
    let shared: &dyn ImportSink = &*sink;
    let checksums: Checksums = std::thread::scope(|scope| -> Result<Checksums, ArchiveError> {
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (work_rx, stop, m) = (&work_rx, &stop, &m);
            scope.spawn(move || {
                let mut dec = match compression {
                    Compression::Zstd => zstd::bulk::Decompressor::new().ok(),
                    Compression::None => None,
                };
                let mut buf = Vec::new();
                loop {
                    let next = match work_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(w) = next else { return };
                    let result = if stop.load(Ordering::Relaxed) {
                        Ok(())
                    } else {
                        decode_extent(&w, compression, dec.as_mut(), &mut buf).and_then(|data| {
                            shared.write_at(w.disk, w.offset, data).map_err(|e| {
                                ArchiveError::WriteDisk {
                                    device: m.disks[w.disk].device.clone(),
                                    source: e,
                                }
                            })
                        })
                    };
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    let done = Done {
                        result,
                        payload: w.payload,
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let feed = || -> Result<Checksums, ArchiveError> {
            // Owned here so that any early return hangs up on the workers.
            let work_tx = work_tx;
            let mut in_flight = 0usize;
            let mut free: Vec<Vec<u8>> = Vec::new();
            let settle = |free: &mut Vec<Vec<u8>>, d: Done| {
                free.push(d.payload);
                d.result
            };
            let stopped = || ArchiveError::ReadArchive(io::Error::other("import workers stopped"));
            let mut checksums = None;
            for entry in entries.by_ref() {
                let mut entry = entry.map_err(ArchiveError::read)?;
                let (name, kind) = check_member(&entry)?;
                if kind == MemberKind::Skip {
                    continue;
                }
                if kind != MemberKind::File {
                    return Err(ArchiveError::member(&name, "unexpected directory"));
                }
                if checksums.is_some() {
                    return Err(ArchiveError::member(&name, "follows checksums.json"));
                }
                if name == CHECKSUMS_NAME {
                    if files.len() != m.files.len() {
                        return Err(ArchiveError::Truncated(format!(
                            "the {} file the manifest lists is missing",
                            m.files[files.len()].role
                        )));
                    }
                    let bytes = read_member(&mut entry, &name, 1 << 20, "checksums")?;
                    let c: Checksums = serde_json::from_slice(&bytes)
                        .map_err(|e| ArchiveError::member(&name, format!("not valid: {e}")))?;
                    checksums = Some(c);
                    continue;
                }
                if name.starts_with("files/") {
                    let Some(f) = m.files.get(files.len()) else {
                        return Err(ArchiveError::member(
                            &name,
                            "is not a file the manifest lists",
                        ));
                    };
                    if name != f.role.member_name() || cursor.started {
                        return Err(ArchiveError::member(
                            &name,
                            "is out of order: files come right after the manifest, as listed",
                        ));
                    }
                    let size = entry.header().size().map_err(ArchiveError::ReadArchive)?;
                    if size != f.size {
                        return Err(ArchiveError::member(
                            &name,
                            format!("stores {size} bytes, not the declared {}", f.size),
                        ));
                    }
                    files.push(read_file(&mut entry, &name, f, shared, &mut hasher)?);
                    continue;
                }
                if files.len() != m.files.len() {
                    return Err(ArchiveError::member(
                        &name,
                        format!(
                            "comes before the {} file the manifest lists",
                            m.files[files.len()].role
                        ),
                    ));
                }
                cursor.started = true;
                let x = parse_extent_name(&name)
                    .ok_or_else(|| ArchiveError::member(&name, "unexpected member"))?;
                if x.compression != compression {
                    return Err(ArchiveError::member(
                        &name,
                        "compression differs from the manifest's",
                    ));
                }
                let Some(disk) = m.disks.get(x.disk) else {
                    return Err(ArchiveError::member(
                        &name,
                        "names a disk the manifest lacks",
                    ));
                };
                if x.disk < cursor.disk {
                    return Err(ArchiveError::member(&name, "disk out of order"));
                }
                if x.disk > cursor.disk {
                    cursor.enter(&m, x.disk);
                }
                if x.length == 0 || x.length > m.extent_max_bytes {
                    return Err(ArchiveError::member(
                        &name,
                        format!(
                            "extent length {} is outside 1..{}",
                            x.length, m.extent_max_bytes
                        ),
                    ));
                }
                if x.offset < cursor.last_end {
                    return Err(ArchiveError::member(
                        &name,
                        "overlaps or precedes the previous extent",
                    ));
                }
                let end = x
                    .offset
                    .checked_add(x.length)
                    .ok_or_else(|| ArchiveError::member(&name, "extent end overflows"))?;
                while cursor.range < disk.allocated.len() {
                    let (o, l) = disk.allocated[cursor.range];
                    if o + l <= x.offset {
                        cursor.range += 1;
                    } else {
                        break;
                    }
                }
                let inside = disk
                    .allocated
                    .get(cursor.range)
                    .is_some_and(|&(o, l)| o <= x.offset && end <= o + l);
                if !inside {
                    return Err(ArchiveError::member(
                        &name,
                        "lies outside the allocated ranges the manifest declares",
                    ));
                }
                cursor.last_end = end;
                let size = entry.header().size().map_err(ArchiveError::ReadArchive)?;
                let bound = match compression {
                    Compression::Zstd => {
                        zstd::zstd_safe::compress_bound(x.length as usize) as u64 + 64
                    }
                    Compression::None => x.length,
                };
                if size > bound || (compression == Compression::None && size != x.length) {
                    return Err(ArchiveError::member(
                        &name,
                        format!(
                            "stores {size} bytes, which disagrees with its length {}",
                            x.length
                        ),
                    ));
                }
                // `size <= bound`, itself bounded by the extent limit.
                let stored = size as usize;
                let mut payload = free.pop().unwrap_or_default();
                if payload.len() < stored {
                    payload.resize(stored, 0);
                }
                read_payload(&mut entry, &name, &mut payload[..stored])?;
                hasher.begin(&name, size);
                hasher.data(&payload[..stored]);
                counts[x.disk].0 += 1;
                counts[x.disk].1 += x.length;
                let work = Work {
                    name,
                    disk: x.disk,
                    offset: x.offset,
                    length: x.length,
                    hash: x.hash,
                    payload,
                    stored,
                };
                work_tx.send(work).map_err(|_| stopped())?;
                in_flight += 1;
                while in_flight >= window {
                    let d = done_rx.recv().map_err(|_| stopped())?;
                    in_flight -= 1;
                    settle(&mut free, d)?;
                }
                while let Ok(d) = done_rx.try_recv() {
                    in_flight -= 1;
                    settle(&mut free, d)?;
                }
                let (o, _) = disk.allocated[cursor.range];
                report(
                    cursor.done_before + cursor.prefix[cursor.range] + (end - o),
                    Some(disk.device.clone()),
                );
            }
            drop(work_tx);
            while in_flight > 0 {
                let d = done_rx.recv().map_err(|_| stopped())?;
                in_flight -= 1;
                settle(&mut free, d)?;
            }
            checksums.ok_or_else(|| ArchiveError::Truncated("it ends before checksums.json".into()))
        };
        let r = feed();
        if r.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        r
    })?;

    let computed = hasher.hex();
    if checksums.archive_xxh3_128 != computed {
        return Err(ArchiveError::ChecksumMismatch {
            what: "the archive".into(),
            expected: checksums.archive_xxh3_128,
            actual: computed,
        });
    }
    if checksums.disks.len() != m.disks.len() {
        return Err(ArchiveError::member(
            CHECKSUMS_NAME,
            "lists a different number of disks than the manifest",
        ));
    }
    for ((c, d), (n, bytes)) in checksums.disks.iter().zip(&m.disks).zip(&counts) {
        if c.device != d.device || c.extents != *n || c.data_bytes != *bytes {
            return Err(ArchiveError::member(
                CHECKSUMS_NAME,
                format!(
                    "disk {:?}: {} extents with {} bytes were read, {} with {} are listed",
                    d.device, n, bytes, c.extents, c.data_bytes
                ),
            ));
        }
    }
    report(bytes_total, None);

    let mut disks = Vec::new();
    for (i, d) in m.disks.iter().enumerate() {
        let (path, format) =
            sink.finish_disk(i, progress)
                .map_err(|e| ArchiveError::WriteDisk {
                    device: d.device.clone(),
                    source: e,
                })?;
        disks.push(ImportedDisk {
            device: d.device.clone(),
            virtual_size: d.virtual_size,
            path,
            format,
            data_bytes: counts[i].1,
        });
    }
    reconcile_spec(&mut spec, &disks, &mut warnings);
    Ok(ImportedVm {
        spec,
        disks,
        files,
        warnings,
        archive_hash: computed,
        format_version: m.version.clone(),
    })
}

/// Point the spec's disks at the imported volumes; add disks the spec lacks and drop the ones
/// the archive lacks, with a warning each.
pub(crate) fn reconcile_spec(
    spec: &mut VmSpec,
    disks: &[ImportedDisk],
    warnings: &mut Vec<String>,
) {
    spec.disks.retain(|sd| {
        let keep = disks.iter().any(|d| d.device == sd.device);
        if !keep {
            warnings.push(format!(
                "disk {:?} is in the VM spec but not in the archive; it was left out",
                sd.device
            ));
        }
        keep
    });
    for d in disks {
        match spec.disks.iter_mut().find(|sd| sd.device == d.device) {
            Some(sd) => {
                sd.path = d.path.clone();
                sd.format = d.format;
                sd.size_bytes = d.virtual_size;
            }
            None => {
                warnings.push(format!(
                    "disk {:?} is in the archive but not in the VM spec; it was attached as virtio",
                    d.device
                ));
                spec.disks.push(corral_model::Disk {
                    device: d.device.clone(),
                    size_bytes: d.virtual_size,
                    format: d.format,
                    bus: corral_model::DiskBus::Virtio,
                    sr: String::new(),
                    path: d.path.clone(),
                });
            }
        }
    }
    for c in &spec.cdroms {
        if let Some(media) = &c.media {
            warnings.push(format!(
                "{} had {} inserted on the source host; it may not exist here",
                c.device,
                media.display()
            ));
        }
    }
}
