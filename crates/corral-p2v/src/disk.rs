//! Reading the source disk: [`DiskReader`] owns the one read-only handle on the system disk
//! and the aligned buffer every read lands in.
//!
//! Reads bypass the page cache (`O_DIRECT`). The block device's cache is not kept coherent
//! with writes the file systems on it make through their own caches, so a cached read could
//! return a block as it was minutes ago; the final pass, taken while the file systems are
//! frozen, must see what is on the platters. Where `O_DIRECT` is refused (some old kernels,
//! file systems such as tmpfs when a test reads a regular file) the reader falls back to a
//! plain read and drops the cached pages of each range before reading it
//! (`POSIX_FADV_DONTNEED`), which forces the same re-read from the device.
//!
//! The source is never written: the device is opened `O_RDONLY` and nothing here has a
//! write path.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Buffer and offset alignment for `O_DIRECT`: a multiple of every logical block size a
/// disk reports (512 or 4096).
pub const ALIGN: u64 = 4096;
/// The largest read [`DiskReader::read_at`] serves in one call.
pub const MAX_READ: usize = 4 << 20;

/// A read-only, cache-bypassing reader of one disk (or, in tests, a regular file).
pub struct DiskReader {
    path: PathBuf,
    file: File,
    size: u64,
    direct: bool,
    /// `MAX_READ + 2 * ALIGN` bytes; reads use the 4096-aligned window starting at `start`
    /// (a `Vec` with an offset rather than a custom allocation: no `unsafe` needed).
    buf: Vec<u8>,
    start: usize,
}

impl DiskReader {
    /// Open `path` read-only, with `O_DIRECT` when the kernel and file system accept it.
    pub fn open(path: &Path) -> io::Result<Self> {
        let (mut file, direct) = match open_read_only(path, true) {
            Ok(f) => (f, true),
            // EINVAL is how open(2) says "this file system does not do O_DIRECT".
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (open_read_only(path, false)?, false)
            }
            Err(e) => return Err(e),
        };
        // A block device's metadata length is 0; seeking to its end gives its size.
        let size = file.seek(SeekFrom::End(0))?;
        let buf = vec![0u8; MAX_READ + 2 * ALIGN as usize];
        let start = buf.as_ptr().align_offset(ALIGN as usize);
        Ok(DiskReader {
            path: path.to_path_buf(),
            file,
            size,
            direct,
            buf,
            start,
        })
    }

    /// The size of the disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether reads bypass the page cache through `O_DIRECT` (else through fadvise).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read `len` bytes (at most [`MAX_READ`]) at `offset`. Any offset and length are
    /// accepted: the reader reads the enclosing aligned range and returns the part asked
    /// for. Reading past the end of the disk is `UnexpectedEof`.
    pub fn read_at(&mut self, offset: u64, len: usize) -> io::Result<&[u8]> {
        if len > MAX_READ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a read of {len} bytes is larger than the {MAX_READ}-byte buffer"),
            ));
        }
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the disk",
                )
            })?;
        let a_start = offset / ALIGN * ALIGN;
        let a_end = end.div_ceil(ALIGN) * ALIGN;
        let want = (end - a_start) as usize;
        let span = (a_end - a_start) as usize;
        if !self.direct {
            drop_cached(&self.file, a_start, span as u64);
        }
        let got = match self.fill(a_start, span, want) {
            Ok(n) => n,
            // A device may still refuse a direct read (a logical block larger than ALIGN,
            // a driver without direct I/O): reopen without O_DIRECT and retry once.
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.file = open_read_only(&self.path, false)?;
                self.direct = false;
                drop_cached(&self.file, a_start, span as u64);
                self.fill(a_start, span, want)?
            }
            Err(e) => return Err(e),
        };
        if got < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the disk ended before the range did",
            ));
        }
        let skip = self.start + (offset - a_start) as usize;
        Ok(&self.buf[skip..skip + len])
    }

    /// Read `[a_start, a_start + span)` into the aligned window until at least `want`
    /// bytes are there or the file ends; returns how many bytes were read.
    fn fill(&mut self, a_start: u64, span: usize, want: usize) -> io::Result<usize> {
        let mut got = 0usize;
        while got < want {
            let window = &mut self.buf[self.start + got..self.start + span];
            // With O_DIRECT a short read ends on a sector boundary, so `got` stays aligned.
            let n = match self.file.read_at(window, a_start + got as u64) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }
}

fn open_read_only(path: &Path, direct: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(path)
}

/// Best effort: a failure only means the read may come from the cache, and there is no
/// better fallback left to try.
fn drop_cached(file: &File, offset: u64, len: u64) {
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is open for the call.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn reads_any_range_of_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        // Not a multiple of 4096: the last aligned read is short.
        let data = pattern(3 * 1024 * 1024 + 1536);
        File::create(&path).unwrap().write_all(&data).unwrap();
        let mut r = DiskReader::open(&path).unwrap();
        assert_eq!(r.size(), data.len() as u64);
        for (off, len) in [
            (0usize, 512usize),
            (0, 4096),
            (1, 3),
            (4095, 2),
            (8192, 65536),
            (12345, 1_000_000),
            (data.len() - 1536, 1536),
            (data.len() - 1, 1),
            (100, MAX_READ.min(data.len() - 100)),
        ] {
            let got = r.read_at(off as u64, len).unwrap();
            assert_eq!(got, &data[off..off + len], "read at {off} of {len}");
        }
        let _ = r.is_direct();
    }

    #[test]
    fn refuses_reads_past_the_end_and_oversized_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        File::create(&path)
            .unwrap()
            .write_all(&pattern(8192))
            .unwrap();
        let mut r = DiskReader::open(&path).unwrap();
        assert_eq!(
            r.read_at(8000, 193).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            r.read_at(u64::MAX, 1).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            r.read_at(0, MAX_READ + 1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(r.read_at(8192, 0).unwrap(), &[] as &[u8]);
    }
}
