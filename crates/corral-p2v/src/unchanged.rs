//! Extents of files that cannot have changed since the first pass, so the final pass need
//! not re-read them.
//!
//! A regular file whose ctime is older than the start of the first pass has had neither its
//! data nor its block map touched since (every write, truncate, fallocate or link change
//! moves ctime), so the blocks FIEMAP reports for it still hold what the first pass sent.
//! [`unchanged_file_extents`] walks one file system (never crossing into another mount: same
//! `st_dev`) and returns those blocks as fs-relative byte ranges; the final pass then
//! re-reads only the used blocks these do not cover (metadata, journal, changed files).
//!
//! Call it while the file system is frozen: a file stat'ed as old before the freeze could
//! be written between its stat and the freeze. Walking under freeze writes nothing:
//! directories and files are opened `O_NOATIME` where permitted, the kernel skips atime
//! updates on a frozen file system anyway, and FIEMAP is asked without `FIEMAP_FLAG_SYNC`.
//!
//! Extents are kept only when their bytes are plainly on disk where they say: any flag
//! among UNKNOWN, DELALLOC, ENCODED, DATA_INLINE, NOT_ALIGNED (which also covers
//! DATA_TAIL) or UNWRITTEN drops the extent, which only costs a re-read.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// `_IOWR('f', 11, struct fiemap)`.
pub const FS_IOC_FIEMAP: u32 = 0xC020_660B;

const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
const FIEMAP_EXTENT_ENCODED: u32 = 0x8;
const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x100;
const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
/// Extents with any of these are not trusted to be plain bytes at `fe_physical`.
pub const UNTRUSTED: u32 = FIEMAP_EXTENT_UNKNOWN
    | FIEMAP_EXTENT_DELALLOC
    | FIEMAP_EXTENT_ENCODED
    | FIEMAP_EXTENT_DATA_INLINE
    | FIEMAP_EXTENT_NOT_ALIGNED
    | FIEMAP_EXTENT_UNWRITTEN;

/// `struct fiemap` header bytes, and `struct fiemap_extent` bytes.
const HEADER: usize = 32;
const EXTENT: usize = 56;
const EXTENTS_PER_CALL: usize = 256;

/// One extent as FIEMAP reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
    pub flags: u32,
}

/// Decode a FIEMAP reply: the header's `fm_mapped_extents`, then that many extents.
fn parse_fiemap(buf: &[u8]) -> Vec<Extent> {
    let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap_or([0; 4]));
    let mapped = (u32_at(20) as usize).min((buf.len() - HEADER) / EXTENT);
    (0..mapped)
        .map(|i| {
            let at = HEADER + i * EXTENT;
            Extent {
                logical: u64_at(at),
                physical: u64_at(at + 8),
                len: u64_at(at + 16),
                flags: u32_at(at + 40),
            }
        })
        .collect()
}

/// The trusted extents as sorted, merged `(physical, len)` ranges.
pub fn trusted_ranges(extents: &[Extent]) -> Vec<(u64, u64)> {
    crate::ranges::merge(
        extents
            .iter()
            .filter(|e| e.flags & UNTRUSTED == 0 && e.len > 0)
            .map(|e| (e.physical, e.len))
            .collect(),
    )
}

/// All extents of an open file.
fn fiemap(fd: &OwnedFd) -> io::Result<Vec<Extent>> {
    // u64 words keep the buffer 8-byte aligned for the kernel's struct.
    let mut words = vec![0u64; (HEADER + EXTENTS_PER_CALL * EXTENT) / 8];
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        words.iter_mut().for_each(|w| *w = 0);
        {
            let bytes = as_bytes_mut(&mut words);
            bytes[0..8].copy_from_slice(&start.to_le_bytes()); // fm_start
            bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // fm_length: to the end
            bytes[24..28].copy_from_slice(&(EXTENTS_PER_CALL as u32).to_le_bytes());
            // fm_extent_count
        }
        // SAFETY: the buffer is a struct fiemap with room for EXTENTS_PER_CALL extents, as
        // fm_extent_count tells the kernel; it lives across the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FIEMAP as _, words.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let batch = parse_fiemap(as_bytes_mut(&mut words));
        let Some(last) = batch.last().copied() else {
            break;
        };
        out.extend_from_slice(&batch);
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            break;
        }
        start = last.logical.saturating_add(last.len);
    }
    Ok(out)
}

fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers the same bytes.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

/// Open `name` in `dir` (or an absolute path when `dir` is `None`) read-only, without
/// following a symlink, with O_NOATIME when the kernel lets us.
fn open_at(dir: Option<&OwnedFd>, name: &CStr, directory: bool) -> io::Result<OwnedFd> {
    // O_NONBLOCK: should a FIFO take a file's name between stat and open, do not hang.
    let kind = if directory {
        libc::O_DIRECTORY
    } else {
        libc::O_NONBLOCK
    };
    let base = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | kind;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    for flags in [base | libc::O_NOATIME, base] {
        // SAFETY: `name` is NUL-terminated; the returned fd is owned by the OwnedFd below.
        let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags) };
        if fd >= 0 {
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        // EPERM: O_NOATIME on a file we do not own, without CAP_FOWNER; retry without it.
        if err.raw_os_error() != Some(libc::EPERM) {
            return Err(err);
        }
    }
    Err(io::Error::last_os_error())
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn fstat_at(dir: &OwnedFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: fstatat fills the zeroed struct we own; `name` is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The entry names of an open directory (without `.` and `..`).
fn read_names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    // fdopendir takes ownership of its fd: give it a duplicate.
    let dup = dir.try_clone()?;
    // SAFETY: fdopendir takes the duplicated fd; closedir below closes it.
    let d = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    let mut names = Vec::new();
    loop {
        // SAFETY: `d` is an open DIR*; the entry is valid until the next readdir.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        let name = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    // SAFETY: `d` is open and not used after this.
    unsafe { libc::closedir(d) };
    Ok(names)
}

fn ctime_of(st: &libc::stat) -> SystemTime {
    let secs = u64::try_from(st.st_ctime).unwrap_or(0);
    let nanos = u32::try_from(st.st_ctime_nsec).unwrap_or(0);
    UNIX_EPOCH + std::time::Duration::new(secs, nanos)
}

/// The fs-relative byte ranges (sorted, merged) of trusted extents of regular files under
/// `mountpoint`, on the same file system, whose ctime is strictly older than `older_than`.
/// Files and directories that cannot be opened are skipped (their blocks are simply
/// re-read); only the mount point itself failing to open is an error.
pub fn unchanged_file_extents(
    mountpoint: &Path,
    older_than: SystemTime,
) -> io::Result<Vec<(u64, u64)>> {
    let root_name = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the mount point"))?;
    let root = open_at(None, &root_name, true)?;
    let dev = fstat(&root)?.st_dev;
    let mut ranges = Vec::new();
    // Depth-first with an explicit stack: deep trees must not exhaust the thread's stack.
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(names) = read_names(&dir) else {
            continue;
        };
        for name in names {
            // Look before opening: opening a FIFO blocks, opening a device can act on it
            // (a tape rewinds); only directories and old regular files are opened.
            let Ok(st) = fstat_at(&dir, &name) else {
                continue;
            };
            let kind = st.st_mode & libc::S_IFMT;
            if st.st_dev != dev
                || !(kind == libc::S_IFDIR || kind == libc::S_IFREG && ctime_of(&st) < older_than)
            {
                continue;
            }
            let Ok(fd) = open_at(Some(&dir), &name, kind == libc::S_IFDIR) else {
                continue;
            };
            // Checked again on the open file: the name may have been replaced meanwhile.
            let Ok(st) = fstat(&fd) else { continue };
            if st.st_dev != dev {
                continue; // another mount
            }
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => stack.push(fd),
                libc::S_IFREG if ctime_of(&st) < older_than => {
                    if let Ok(extents) = fiemap(&fd) {
                        ranges.extend(trusted_ranges(&extents));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(crate::ranges::merge(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(logical: u64, physical: u64, len: u64, flags: u32) -> Extent {
        Extent {
            logical,
            physical,
            len,
            flags,
        }
    }

    #[test]
    fn untrusted_flags_drop_the_extent() {
        let e = [
            extent(0, 8192, 4096, 0),
            extent(4096, 12288, 4096, 0x1000), // MERGED: fine
            extent(8192, 40960, 4096, FIEMAP_EXTENT_UNWRITTEN),
            extent(
                12288,
                45056,
                4096,
                FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_UNKNOWN,
            ),
            extent(
                16384,
                0,
                60,
                FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_NOT_ALIGNED,
            ),
            extent(20480, 90000, 4096, FIEMAP_EXTENT_ENCODED),
            extent(24576, 100_000, 4096, FIEMAP_EXTENT_LAST),
        ];
        assert_eq!(trusted_ranges(&e), vec![(8192, 8192), (100_000, 4096)]);
    }

    #[test]
    fn fiemap_replies_decode() {
        let mut buf = vec![0u8; HEADER + 2 * EXTENT];
        buf[20..24].copy_from_slice(&2u32.to_le_bytes());
        for (i, (l, p, n, f)) in [(0u64, 4096u64, 8192u64, 0u32), (8192, 65536, 4096, 1)]
            .into_iter()
            .enumerate()
        {
            let at = HEADER + i * EXTENT;
            buf[at..at + 8].copy_from_slice(&l.to_le_bytes());
            buf[at + 8..at + 16].copy_from_slice(&p.to_le_bytes());
            buf[at + 16..at + 24].copy_from_slice(&n.to_le_bytes());
            buf[at + 40..at + 44].copy_from_slice(&f.to_le_bytes());
        }
        assert_eq!(
            parse_fiemap(&buf),
            vec![extent(0, 4096, 8192, 0), extent(8192, 65536, 4096, 1)]
        );
        // A count larger than the buffer is capped, not trusted.
        buf[20..24].copy_from_slice(&99u32.to_le_bytes());
        assert_eq!(parse_fiemap(&buf).len(), 2);
    }

    #[test]
    fn walks_a_real_directory_by_ctime() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(dir.path().join("b"), vec![2u8; 1 << 16]).unwrap();
        // Data on disk, not delayed allocation.
        std::process::Command::new("sync").status().unwrap();
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        let supported = {
            let f = std::fs::File::open(dir.path().join("b")).unwrap();
            fiemap(&OwnedFd::from(f)).is_ok()
        };
        let all = unchanged_file_extents(dir.path(), future).unwrap();
        // Where the file system has FIEMAP (tmpfs has not), both files' data is somewhere.
        if supported {
            assert!(
                crate::ranges::total(&all) >= (1 << 20) + (1 << 16),
                "{all:?}"
            );
        }
        // A FIFO in the tree must neither hang the walk nor count.
        let fifo = CString::new(dir.path().join("fifo").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(unchanged_file_extents(dir.path(), future).unwrap(), all);
        // Nothing is older than the epoch.
        assert_eq!(
            unchanged_file_extents(dir.path(), UNIX_EPOCH).unwrap(),
            vec![]
        );
        assert!(unchanged_file_extents(Path::new("/nonexistent/p2v"), future).is_err());
    }
}
