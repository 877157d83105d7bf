//! Import sinks: where imported guest data goes.
//!
//! Readers never open files themselves: every byte they produce goes through an
//! [`ImportSink`], which the caller owns. [`DirSink`] writes into one staging directory the
//! caller chose (file names derive from the disk index, never from archive contents), so on
//! error the caller deletes that directory and nothing is left anywhere else.
//!
//! Raw disks are written as sparse raw files (zero ranges are never written, so they stay
//! holes); qcow2 disks are written directly by the streaming [`Qcow2Writer`] (unwritten ranges
//! stay unallocated clusters), so an import is one pass over the data. Writes come from several
//! import workers at once ([`ImportSink::write_at`] takes `&self`); each starts the writeback of
//! what it wrote, and `finish_disk` syncs the file, so an import is durable when it returns.

use crate::error::ArchiveError;
use crate::progress::{Phase, Progress};
use crate::qcow2::Qcow2Writer;
use corral_model::DiskFormat;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A disk the reader is about to fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTarget {
    /// Position of the disk in the archive, 0-based.
    pub index: usize,
    /// Device name from the archive (already validated as a plain name).
    pub device: String,
    pub virtual_size: u64,
    /// Format the disk had at the source; a sink may choose another.
    pub format: DiskFormat,
}

/// Receives the disks of an import. Calls come in this order: `create_disk` for every disk,
/// `write_at` any number of times (never overlapping, inside the virtual size, in no
/// particular order, possibly from several threads at once), then `finish_disk` for every disk
/// once the whole archive has been verified. After an error the reader stops calling (every
/// worker thread has returned before the reader does); the caller cleans up whatever the sink
/// created.
pub trait ImportSink: Sync {
    fn create_disk(&mut self, target: &DiskTarget) -> io::Result<()>;
    /// Write verified guest data. Takes `&self` so import workers write in parallel, each
    /// straight from its own decompression buffer.
    fn write_at(&self, disk: usize, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make the disk final; returns the volume path and its format.
    fn finish_disk(
        &mut self,
        disk: usize,
        progress: &dyn Fn(Progress),
    ) -> io::Result<(PathBuf, DiskFormat)>;

    /// Store a file the archive carries (a direct-boot kernel, TPM state), reading `data` to
    /// its end; returns where it is. The reader verifies size and hash afterwards, so on error
    /// the caller discards it with the rest of the sink's area. Takes `&self` like `write_at`
    /// (files arrive while import workers may be running).
    fn write_file(
        &self,
        role: crate::native::FileRole,
        data: &mut dyn io::Read,
    ) -> io::Result<PathBuf> {
        let _ = (role, data);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this sink does not take carried files",
        ))
    }

    /// A directory inside the sink's area where readers may put temporary files (a VMDK taken
    /// out of an OVA, a converted image). Whatever is left there goes when the caller deletes
    /// the staging area.
    fn scratch_dir(&self) -> io::Result<PathBuf> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this sink has no scratch directory",
        ))
    }

    /// Fill a disk from a whole image file (`format` is a `qemu-img` format name) that the
    /// reader has already checked with [`crate::source::check_foreign_image`]. The default
    /// converts it to raw in the scratch directory and copies the non-zero data through
    /// `write_at`.
    fn import_image(&mut self, disk: usize, image: &Path, format: &str) -> io::Result<()> {
        let scratch = self.scratch_dir()?;
        let tmp = tempfile::Builder::new()
            .prefix(".corral-image-")
            .tempdir_in(scratch)?;
        let raw = tmp.path().join("image.raw");
        convert_to_raw(image, format, &raw, false)?;
        let src = crate::source::RawFileSource::open(&raw)?;
        copy_source(&src, |off, data| self.write_at(disk, off, data))
    }
}

/// A disk file that several import workers write at once (positioned writes, `&self`).
///
/// Whole 4 KiB pages of guest data go to the device directly (`O_DIRECT`, through a second
/// descriptor of the same file) when the caller's buffer is page-aligned for them: a buffered
/// write copies every byte into fresh page-cache pages, which on the VMs we run on is the
/// import's largest and noisiest cost, and concurrent buffered writers of one file serialise
/// on its inode lock, where the waiter spins on a core the decompressors need. What is not
/// whole aligned pages (an extent's unaligned head or tail, metadata) is written buffered;
/// a direct write covers only whole pages inside its own range and ranges never overlap, so
/// no page is ever written both ways at once. Where the file system refuses `O_DIRECT`
/// (tmpfs before Linux 6.6), every write is buffered.
///
/// After each buffered write the kernel is asked to start writing the range back
/// (`sync_file_range`, without waiting), so the `fsync` that makes the import durable has
/// little left to do; that `fsync` alone guarantees durability, the hint's errors are ignored.
#[derive(Debug)]
pub(crate) struct DataFile {
    file: File,
    direct: Option<File>,
    /// Cleared after the first refused direct write: the rest go buffered.
    direct_ok: std::sync::atomic::AtomicBool,
}

/// Alignment (memory, file offset and length) of direct writes: the page size, which covers
/// the logical block size of every disk we meet.
pub(crate) const DIRECT_ALIGN: usize = 4096;

impl DataFile {
    pub(crate) fn new(file: File) -> Self {
        let direct = open_direct(&file);
        DataFile {
            file,
            direct_ok: std::sync::atomic::AtomicBool::new(direct.is_some()),
            direct,
        }
    }

    /// The file, for metadata and for syncing.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let align = DIRECT_ALIGN as u64;
        let end = offset + data.len() as u64;
        let (from, to) = (offset.next_multiple_of(align), end / align * align);
        let start = (from - offset) as usize;
        let aligned = from < to && data[start..].as_ptr().align_offset(DIRECT_ALIGN) == 0;
        if let (true, Some(direct)) = (aligned, &self.direct) {
            if self.direct_ok.load(std::sync::atomic::Ordering::Relaxed) {
                let mid = &data[start..start + (to - from) as usize];
                match direct.write_all_at(mid, from) {
                    Ok(()) => {
                        self.write_buffered(&data[..start], offset)?;
                        return self.write_buffered(&data[start + mid.len()..], to);
                    }
                    // Refused by the file system or device: buffered from now on (a partly
                    // done direct write is simply written again below).
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.direct_ok
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.write_buffered(data, offset)
    }

    fn write_buffered(&self, data: &[u8], offset: u64) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(data, offset)?;
        start_writeback(&self.file, offset, data.len() as u64);
        Ok(())
    }
}

/// A second, `O_DIRECT` descriptor of `file`, if the file system allows one.
fn open_direct(file: &File) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}

fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; the call only schedules I/O on it.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// `qemu-img convert` an image to raw; `existing` writes into an already sized target.
fn convert_to_raw(image: &Path, format: &str, raw: &Path, existing: bool) -> io::Result<()> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["convert".as_ref()];
    if existing {
        args.push("-n".as_ref());
    }
    args.extend::<[&std::ffi::OsStr; 8]>([
        "-f".as_ref(),
        format.as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        "-S".as_ref(),
        "4k".as_ref(),
        image.as_os_str(),
        raw.as_os_str(),
    ]);
    crate::source::qemu_img(&args)
        .map(|_| ())
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Copy the non-zero data of a source through a write callback.
pub(crate) fn copy_source(
    src: &dyn crate::source::DiskSource,
    mut write: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 4 << 20];
    for (off, len) in src.allocated_extents()? {
        let mut pos = off;
        while pos < off + len {
            let n = ((off + len - pos) as usize).min(buf.len());
            src.read_at(&mut buf[..n], pos)?;
            for (s, e) in crate::native::nonzero_runs(&buf[..n]) {
                write(pos + s as u64, &buf[s..e])?;
            }
            pos += n as u64;
        }
    }
    Ok(())
}

/// Writes disks into a staging directory: `disk<N>.raw` (sparse) for raw targets, and for
/// qcow2 targets `disk<N>.qcow2` written directly by [`Qcow2Writer`] (one pass; only a disk
/// whose size is not a multiple of 512 bytes goes through raw and `qemu-img convert`).
#[derive(Debug)]
pub struct DirSink {
    dir: PathBuf,
    format: Option<DiskFormat>,
    disks: Vec<Option<(DiskTarget, Out)>>,
}

/// Where a disk's data is going.
#[derive(Debug)]
enum Out {
    Raw(DataFile),
    Qcow2(Qcow2Writer),
    /// A whole image was converted into `disk<N>.qcow2` ([`ImportSink::import_image`]).
    Converted,
    /// `finish_disk` is running or failed.
    Taken,
}

impl DirSink {
    /// `format`: force every disk to this format; `None` keeps each disk's source format.
    pub fn new(dir: &Path, format: Option<DiskFormat>) -> Self {
        DirSink {
            dir: dir.to_path_buf(),
            format,
            disks: Vec::new(),
        }
    }

    fn raw_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("disk{index}.raw"))
    }

    fn qcow2_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("disk{index}.qcow2"))
    }

    fn disk(&mut self, index: usize) -> io::Result<&mut (DiskTarget, Out)> {
        self.disks
            .get_mut(index)
            .and_then(|d| d.as_mut())
            .ok_or_else(|| no_disk(index))
    }
}

fn no_disk(index: usize) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no disk {index}"))
}

impl ImportSink for DirSink {
    fn write_file(
        &self,
        role: crate::native::FileRole,
        data: &mut dyn io::Read,
    ) -> io::Result<PathBuf> {
        // Named by role (a closed set), never by anything the archive spells.
        let path = self.dir.join(format!("file-{}", role.as_str()));
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        io::copy(data, &mut out)?;
        out.sync_all()?;
        Ok(path)
    }

    fn create_disk(&mut self, target: &DiskTarget) -> io::Result<()> {
        let format = self.format.unwrap_or(target.format);
        let direct = format == DiskFormat::Qcow2 && target.virtual_size.is_multiple_of(512);
        let path = if direct {
            self.qcow2_path(target.index)
        } else {
            self.raw_path(target.index)
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let out = if direct {
            Out::Qcow2(Qcow2Writer::new(file, target.virtual_size)?)
        } else {
            file.set_len(target.virtual_size)?;
            Out::Raw(DataFile::new(file))
        };
        if self.disks.len() <= target.index {
            self.disks.resize_with(target.index + 1, || None);
        }
        self.disks[target.index] = Some((target.clone(), out));
        Ok(())
    }

    fn write_at(&self, disk: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        let (target, out) = self
            .disks
            .get(disk)
            .and_then(|d| d.as_ref())
            .ok_or_else(|| no_disk(disk))?;
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > target.virtual_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write outside the disk",
            ));
        }
        match out {
            Out::Raw(file) => file.write_at(data, offset),
            Out::Qcow2(w) => w.write_at(offset, data),
            Out::Converted | Out::Taken => Err(io::Error::other("disk already complete")),
        }
    }

    fn finish_disk(
        &mut self,
        disk: usize,
        progress: &dyn Fn(Progress),
    ) -> io::Result<(PathBuf, DiskFormat)> {
        let (raw, qcow) = (self.raw_path(disk), self.qcow2_path(disk));
        let format = self.format;
        let (target, out) = self.disk(disk)?;
        let target = target.clone();
        match std::mem::replace(out, Out::Taken) {
            Out::Qcow2(w) => {
                w.finish()?;
                return Ok((qcow, DiskFormat::Qcow2));
            }
            Out::Converted => {
                File::open(&qcow)?.sync_all()?;
                return Ok((qcow, DiskFormat::Qcow2));
            }
            Out::Taken => return Err(io::Error::other("disk already finished")),
            Out::Raw(file) => file.file().sync_all()?,
        }
        if format.unwrap_or(target.format) == DiskFormat::Raw {
            return Ok((raw, DiskFormat::Raw));
        }
        // A qcow2 target whose size qcow2 cannot hold exactly: convert the raw file.
        progress(Progress {
            phase: Phase::Finishing,
            device: Some(target.device.clone()),
            bytes_done: 0,
            bytes_total: target.virtual_size,
        });
        crate::source::qemu_img(&[
            "convert".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            "-W".as_ref(),
            raw.as_os_str(),
            qcow.as_os_str(),
        ])
        .map_err(|e: ArchiveError| io::Error::other(e.to_string()))?;
        std::fs::remove_file(&raw)?;
        progress(Progress {
            phase: Phase::Finishing,
            device: Some(target.device.clone()),
            bytes_done: target.virtual_size,
            bytes_total: target.virtual_size,
        });
        Ok((qcow, DiskFormat::Qcow2))
    }

    fn scratch_dir(&self) -> io::Result<PathBuf> {
        Ok(self.dir.clone())
    }

    fn import_image(&mut self, disk: usize, image: &Path, format: &str) -> io::Result<()> {
        // Convert straight into the disk's file: one pass, holes stay holes.
        let (raw, qcow) = (self.raw_path(disk), self.qcow2_path(disk));
        let (target, out) = self.disk(disk)?;
        let size = target.virtual_size;
        match out {
            Out::Raw(_) => {
                convert_to_raw(image, format, &raw, true)?;
                let file = OpenOptions::new().read(true).write(true).open(&raw)?;
                if file.metadata()?.len() != size {
                    file.set_len(size)?;
                }
                *out = Out::Raw(DataFile::new(file));
            }
            Out::Qcow2(_) => {
                *out = Out::Taken;
                std::fs::remove_file(&qcow)?;
                crate::source::qemu_img(&[
                    "convert".as_ref(),
                    "-f".as_ref(),
                    format.as_ref(),
                    "-O".as_ref(),
                    "qcow2".as_ref(),
                    "-W".as_ref(),
                    image.as_os_str(),
                    qcow.as_os_str(),
                ])
                .map_err(|e: ArchiveError| io::Error::other(e.to_string()))?;
                let info = crate::source::image_info(&qcow, "qcow2")
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if info["virtual-size"].as_u64() != Some(size) {
                    // As the raw path does with set_len: the disk has the declared capacity.
                    crate::source::qemu_img(&[
                        "resize".as_ref(),
                        "-q".as_ref(),
                        "--shrink".as_ref(),
                        "-f".as_ref(),
                        "qcow2".as_ref(),
                        qcow.as_os_str(),
                        size.to_string().as_ref(),
                    ])
                    .map_err(|e: ArchiveError| io::Error::other(e.to_string()))?;
                }
                self.disk(disk)?.1 = Out::Converted;
            }
            Out::Converted | Out::Taken => {
                return Err(io::Error::other("disk already complete"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes of every alignment (page-aligned runs go direct, heads and tails buffered, some
    /// buffers misaligned on purpose), from four threads at once and in shuffled order, give
    /// exactly the bytes written, including where a buffered tail and the next write's head
    /// share a page.
    #[test]
    fn mixed_direct_and_buffered_writes_give_the_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        mixed_writes_in(dir.path());
    }

    /// tmpfs, where `O_DIRECT` is refused before Linux 6.6 (every write then goes
    /// buffered) and accepted since: the bytes are the same either way.
    #[test]
    fn writes_on_tmpfs_give_the_exact_bytes() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("skipped: no /dev/shm (tmpfs) here");
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        mixed_writes_in(dir.path());
    }

    fn mixed_writes_in(dir: &Path) {
        let path = dir.join("disk.raw");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let total = (3 << 20) + 777;
        let expected: Vec<u8> = (0..total as u64)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        // Pieces with boundaries on and off page edges.
        let mut cuts = vec![0usize];
        let mut x = 12345u64;
        while *cuts.last().unwrap() < total {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let step = match x % 4 {
                0 => DIRECT_ALIGN * (1 + (x >> 8) as usize % 64),
                1 => 1 + (x >> 8) as usize % 5000,
                _ => DIRECT_ALIGN * 16 + (x >> 8) as usize % 3000,
            };
            cuts.push((cuts.last().unwrap() + step).min(total));
        }
        let mut pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
        pieces.reverse();
        let mid = pieces.len() / 2;
        pieces.swap(0, mid);
        let df = DataFile::new(file);
        let chunks: Vec<Vec<(usize, usize)>> = (0..4)
            .map(|t| pieces.iter().copied().skip(t).step_by(4).collect())
            .collect();
        std::thread::scope(|s| {
            for (t, mine) in chunks.iter().enumerate() {
                let (df, expected) = (&df, &expected);
                s.spawn(move || {
                    let mut buf = vec![0u8; total + 2 * DIRECT_ALIGN];
                    for &(a, b) in mine {
                        // Place the piece so its first whole page is memory-aligned, or
                        // (every other thread) one byte off so it must go buffered.
                        let page = a.next_multiple_of(DIRECT_ALIGN) - a;
                        let pad = buf.as_ptr().align_offset(DIRECT_ALIGN);
                        let base = pad + DIRECT_ALIGN - page;
                        let at = base + t % 2;
                        buf[at..at + (b - a)].copy_from_slice(&expected[a..b]);
                        df.write_at(&buf[at..at + (b - a)], a as u64).unwrap();
                    }
                });
            }
        });
        df.file().sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}
