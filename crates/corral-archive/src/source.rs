//! Disk sources: where exported guest data is read from.
//!
//! A source reports its virtual size and allocated ranges (the only ranges an export reads) and
//! serves positioned reads from any thread. Two are provided:
//!
//! - [`RawFileSource`]: a raw image; allocation comes from `SEEK_DATA`/`SEEK_HOLE`, so holes
//!   cost nothing and an empty 100 GiB disk is mapped in microseconds.
//! - [`Qcow2Source`]: a qcow2 image. When `qemu-img map` shows every allocated cluster stored
//!   uncompressed in the image itself (no backing chain, no compression, no encryption, no
//!   external data file) the guest data is read straight from the qcow2 file at the host
//!   offsets the map gives: no copy and no helper process while reading. Otherwise (linked
//!   clones, compressed images) the chain is flattened once with `qemu-img convert -O raw` into
//!   a sparse scratch file and read as raw. See `docs/formats/corral-archive.md` for the
//!   measurements behind this choice.
//!
//! Sources are for shut-down disks: nothing here locks the image against a running QEMU.

use crate::error::ArchiveError;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest data of one disk, readable at any offset from any thread.
pub trait DiskSource {
    /// Size of the disk as the guest sees it, in bytes.
    fn virtual_size(&self) -> u64;
    /// Allocated ranges `(offset, length)`, sorted, non-overlapping, inside the virtual size.
    /// Unallocated ranges read as zeros and are not exported.
    fn allocated_extents(&self) -> io::Result<Vec<(u64, u64)>>;
    /// Fill `buf` with guest data starting at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A raw disk image file.
#[derive(Debug)]
pub struct RawFileSource {
    file: File,
    size: u64,
}

impl RawFileSource {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(RawFileSource { file, size })
    }
}

/// Data ranges of an open file by `SEEK_DATA`/`SEEK_HOLE`; a file system without support
/// reports the whole file as data, which is correct, only slower.
pub fn seek_data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a file descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENXIO) => break, // no data after pos
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    return Ok(if size > pos {
                        merge(out, (pos, size - pos))
                    } else {
                        out
                    })
                }
                _ => return Err(err),
            }
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let hole = (hole as u64).min(size);
        if hole <= data {
            break;
        }
        out = merge(out, (data, hole - data));
        pos = hole;
    }
    Ok(out)
}

fn merge(mut v: Vec<(u64, u64)>, (off, len): (u64, u64)) -> Vec<(u64, u64)> {
    if let Some(last) = v.last_mut() {
        if last.0 + last.1 == off {
            last.1 += len;
            return v;
        }
    }
    v.push((off, len));
    v
}

impl DiskSource for RawFileSource {
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn allocated_extents(&self) -> io::Result<Vec<(u64, u64)>> {
        seek_data_extents(&self.file, self.size)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// One guest range stored contiguously in the qcow2 file.
#[derive(Debug, Clone, Copy)]
struct Mapped {
    start: u64,
    length: u64,
    host_offset: u64,
}

/// A qcow2 image, read directly when its layout allows, else through a flattened raw copy.
#[derive(Debug)]
pub struct Qcow2Source {
    inner: Qcow2Inner,
}

#[derive(Debug)]
enum Qcow2Inner {
    Direct {
        file: File,
        size: u64,
        map: Vec<Mapped>,
    },
    Flattened {
        raw: RawFileSource,
        // Keeps the scratch file alive (deleted on drop).
        _scratch: tempfile::TempDir,
    },
}

/// How a qcow2 source ended up being read; for logs and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qcow2Access {
    Direct,
    Flattened,
}

fn run_tool(cmd: &mut Command) -> Result<Vec<u8>, ArchiveError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| ArchiveError::ToolFailed {
        tool: tool.clone(),
        message: format!("cannot run: {e}"),
    })?;
    if !out.status.success() {
        return Err(ArchiveError::ToolFailed {
            tool,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

pub(crate) fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, ArchiveError> {
    run_tool(Command::new("qemu-img").args(args))
}

/// `qemu-img info --output=json` of an image whose format is given (never probed: probing
/// an untrusted raw image could make it claim to be something else).
pub fn image_info(path: &Path, format: &str) -> Result<serde_json::Value, ArchiveError> {
    let out = qemu_img(&[
        "info".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        format.as_ref(),
        path.as_os_str(),
    ])?;
    serde_json::from_slice(&out).map_err(|e| ArchiveError::ToolFailed {
        tool: "qemu-img info".into(),
        message: format!("unreadable output: {e}"),
    })
}

impl Qcow2Source {
    /// Open a qcow2 image; `scratch_dir` receives a flattened raw copy when direct reading is
    /// not possible (it is deleted when the source is dropped).
    pub fn open(path: &Path, scratch_dir: &Path) -> Result<Self, ArchiveError> {
        let info = image_info(path, "qcow2")?;
        let size = info["virtual-size"]
            .as_u64()
            .ok_or_else(|| ArchiveError::ToolFailed {
                tool: "qemu-img info".into(),
                message: "no virtual-size".into(),
            })?;
        let specific = &info["format-specific"]["data"];
        let simple = info.get("backing-filename").is_none()
            && specific.get("data-file").is_none()
            && !specific["encrypt"].is_object()
            && info["encrypted"].as_bool() != Some(true);
        if simple {
            if let Some(map) = direct_map(path)? {
                let file = File::open(path).map_err(|e| ArchiveError::ReadDisk {
                    device: path.display().to_string(),
                    source: e,
                })?;
                return Ok(Qcow2Source {
                    inner: Qcow2Inner::Direct { file, size, map },
                });
            }
        }
        let scratch = tempfile::Builder::new()
            .prefix(".corral-flatten-")
            .tempdir_in(scratch_dir)
            .map_err(|e| ArchiveError::WriteDisk {
                device: scratch_dir.display().to_string(),
                source: e,
            })?;
        let raw_path: PathBuf = scratch.path().join("flat.raw");
        qemu_img(&[
            "convert".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            "-S".as_ref(),
            "4k".as_ref(),
            path.as_os_str(),
            raw_path.as_os_str(),
        ])?;
        let raw = RawFileSource::open(&raw_path).map_err(|e| ArchiveError::ReadDisk {
            device: raw_path.display().to_string(),
            source: e,
        })?;
        Ok(Qcow2Source {
            inner: Qcow2Inner::Flattened {
                raw,
                _scratch: scratch,
            },
        })
    }

    pub fn access(&self) -> Qcow2Access {
        match self.inner {
            Qcow2Inner::Direct { .. } => Qcow2Access::Direct,
            Qcow2Inner::Flattened { .. } => Qcow2Access::Flattened,
        }
    }
}

/// The data ranges of a qcow2 image with their host offsets, or `None` when some data is not
/// stored plainly in this file (compressed clusters, backing files).
fn direct_map(path: &Path) -> Result<Option<Vec<Mapped>>, ArchiveError> {
    let out = qemu_img(&[
        "map".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        path.as_os_str(),
    ])?;
    let entries: Vec<serde_json::Value> =
        serde_json::from_slice(&out).map_err(|e| ArchiveError::ToolFailed {
            tool: "qemu-img map".into(),
            message: format!("unreadable output: {e}"),
        })?;
    let mut map: Vec<Mapped> = Vec::new();
    for e in entries {
        if e["data"].as_bool() != Some(true) {
            continue;
        }
        let (Some(start), Some(length)) = (e["start"].as_u64(), e["length"].as_u64()) else {
            return Ok(None);
        };
        let (Some(0), Some(host_offset)) = (e["depth"].as_u64(), e["offset"].as_u64()) else {
            return Ok(None);
        };
        if let Some(last) = map.last_mut() {
            if last.start + last.length == start && last.host_offset + last.length == host_offset {
                last.length += length;
                continue;
            }
        }
        map.push(Mapped {
            start,
            length,
            host_offset,
        });
    }
    Ok(Some(map))
}

impl DiskSource for Qcow2Source {
    fn virtual_size(&self) -> u64 {
        match &self.inner {
            Qcow2Inner::Direct { size, .. } => *size,
            Qcow2Inner::Flattened { raw, .. } => raw.virtual_size(),
        }
    }

    fn allocated_extents(&self) -> io::Result<Vec<(u64, u64)>> {
        match &self.inner {
            Qcow2Inner::Direct { map, .. } => Ok(map
                .iter()
                .fold(Vec::new(), |v, m| merge(v, (m.start, m.length)))),
            Qcow2Inner::Flattened { raw, .. } => raw.allocated_extents(),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.inner {
            Qcow2Inner::Flattened { raw, .. } => raw.read_at(buf, offset),
            Qcow2Inner::Direct { file, map, .. } => {
                // Reads are within allocated extents in practice, but serve any range: the
                // unmapped parts are zeros.
                let mut done = 0usize;
                let mut idx = map.partition_point(|m| m.start + m.length <= offset);
                while done < buf.len() {
                    let pos = offset + done as u64;
                    let rest = buf.len() - done;
                    match map.get(idx) {
                        Some(m) if m.start <= pos => {
                            let n = ((m.start + m.length - pos) as usize).min(rest);
                            file.read_exact_at(
                                &mut buf[done..done + n],
                                m.host_offset + (pos - m.start),
                            )?;
                            done += n;
                            idx += 1;
                        }
                        Some(m) => {
                            let n = ((m.start - pos) as usize).min(rest);
                            buf[done..done + n].fill(0);
                            done += n;
                        }
                        None => {
                            buf[done..].fill(0);
                            done = buf.len();
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Check an image that came from an untrusted package before `qemu-img` reads it, and return
/// its virtual size. The format is given, never probed. Refused: backing files, external data
/// files, and VMDKs that are not a single self-contained file (a VMDK descriptor can name any
/// host file as an extent, which would import that file's contents).
pub fn check_foreign_image(path: &Path, format: &str) -> Result<u64, ArchiveError> {
    let info = image_info(path, format).map_err(|e| {
        ArchiveError::InvalidInput(format!(
            "{} is not a valid {format} image: {e}",
            path.display()
        ))
    })?;
    let refuse =
        |why: &str| ArchiveError::InvalidInput(format!("disk image {}: {why}", path.display()));
    if info.get("backing-filename").is_some() || info.get("full-backing-filename").is_some() {
        return Err(refuse("it refers to a backing file"));
    }
    let data = &info["format-specific"]["data"];
    if data.get("data-file").is_some() {
        return Err(refuse("it refers to an external data file"));
    }
    if format == "vmdk" {
        let create = data["create-type"].as_str().unwrap_or("");
        if !matches!(create, "streamOptimized" | "monolithicSparse") {
            return Err(refuse(&format!(
                "VMDK type {create:?} is not a single self-contained file"
            )));
        }
        let own = path.file_name().map(|n| n.to_string_lossy().into_owned());
        for ext in data["extents"].as_array().into_iter().flatten() {
            let f = ext["filename"].as_str().unwrap_or("");
            let name = Path::new(f)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            if name != own {
                return Err(refuse(&format!("it names another file ({f}) as an extent")));
            }
        }
    }
    info["virtual-size"]
        .as_u64()
        .ok_or_else(|| refuse("qemu-img reports no virtual size"))
}

/// Open a disk of either format as a boxed source.
pub fn open_disk_source(
    path: &Path,
    format: corral_model::DiskFormat,
    scratch_dir: &Path,
) -> Result<Box<dyn DiskSource + Send + Sync>, ArchiveError> {
    Ok(match format {
        corral_model::DiskFormat::Raw => {
            Box::new(
                RawFileSource::open(path).map_err(|e| ArchiveError::ReadDisk {
                    device: path.display().to_string(),
                    source: e,
                })?,
            )
        }
        corral_model::DiskFormat::Qcow2 => Box::new(Qcow2Source::open(path, scratch_dir)?),
    })
}
