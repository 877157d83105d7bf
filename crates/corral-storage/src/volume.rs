//! Volumes: `qemu-img create/info` (through [`crate::qemu_img`]), removal, and free space of
//! the filesystem holding them.

use crate::qemu_img;
use corral_model::DiskFormat;
use serde::Deserialize;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume path {0} is not absolute")]
    RelativePath(PathBuf),
    #[error("volume {0} already exists")]
    Exists(PathBuf),
    #[error("cannot run qemu-img")]
    Spawn(#[source] std::io::Error),
    #[error("qemu-img {op} {path} failed: {stderr}")]
    QemuImg {
        op: &'static str,
        path: PathBuf,
        stderr: String,
    },
    #[error("the conversion was stopped")]
    Cancelled,
    #[error("cannot parse qemu-img info output for {path}: {reason}")]
    Info { path: PathBuf, reason: String },
    #[error("cannot remove volume {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// File name of a VM's volume inside a repository.
pub fn volume_file_name(vm_id: &str, device: &str, format: DiskFormat) -> String {
    format!("{vm_id}-{device}.{}", format.as_str())
}

fn require_absolute(path: &Path) -> Result<(), VolumeError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(VolumeError::RelativePath(path.to_path_buf()))
    }
}

/// Create an empty volume. Creation is instant whatever the size (no preallocation);
/// `backing` makes a qcow2 linked clone of that volume.
pub async fn create_volume(
    path: &Path,
    format: DiskFormat,
    size_bytes: u64,
    backing: Option<&Path>,
) -> Result<(), VolumeError> {
    require_absolute(path)?;
    if path.exists() {
        return Err(VolumeError::Exists(path.to_path_buf()));
    }
    let size = size_bytes.to_string();
    let mut args: Vec<&OsStr> = ["create", "-q", "-f", format.as_str()]
        .map(OsStr::new)
        .to_vec();
    if let Some(b) = backing {
        require_absolute(b)?;
        args.extend([
            OsStr::new("-b"),
            b.as_os_str(),
            OsStr::new("-F"),
            OsStr::new("qcow2"),
        ]);
    }
    args.extend([path.as_os_str(), OsStr::new(&size)]);
    qemu_img::run("create", path, &args).await.map(|_| ())
}

/// Create a volume as a copy of an existing image (any format qemu-img reads), converted to
/// `format` and grown to `min_size_bytes` if the image is smaller. Returns the virtual size.
pub async fn import_volume(
    source: &Path,
    path: &Path,
    format: DiskFormat,
    min_size_bytes: u64,
) -> Result<u64, VolumeError> {
    require_absolute(source)?;
    require_absolute(path)?;
    if path.exists() {
        return Err(VolumeError::Exists(path.to_path_buf()));
    }
    let args = ["convert", "-q", "-U", "-O", format.as_str()]
        .map(OsStr::new)
        .into_iter()
        .chain([source.as_os_str(), path.as_os_str()])
        .collect::<Vec<_>>();
    qemu_img::run("convert", source, &args).await?;
    let size = volume_info(path).await?.virtual_size;
    if min_size_bytes > size {
        let min = min_size_bytes.to_string();
        let args = ["resize", "-q", "-f", format.as_str()]
            .map(OsStr::new)
            .into_iter()
            .chain([path.as_os_str(), OsStr::new(&min)])
            .collect::<Vec<_>>();
        if let Err(e) = qemu_img::run("resize", path, &args).await {
            let _ = remove_volume(path).await;
            return Err(e);
        }
        return Ok(min_size_bytes);
    }
    Ok(size)
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInfo {
    pub format: String,
    pub virtual_size: u64,
    pub actual_size: u64,
    pub backing_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct QemuImgInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    actual_size: u64,
    #[serde(rename = "backing-filename", default)]
    backing_filename: Option<PathBuf>,
}

/// `qemu-img info` of a volume. `-U` lets it read a volume a running VM holds open.
pub async fn volume_info(path: &Path) -> Result<VolumeInfo, VolumeError> {
    require_absolute(path)?;
    let args = [
        OsStr::new("info"),
        OsStr::new("-U"),
        OsStr::new("--output=json"),
        path.as_os_str(),
    ];
    let out = qemu_img::run("info", path, &args).await?;
    let info: QemuImgInfo = serde_json::from_slice(&out).map_err(|e| VolumeError::Info {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(VolumeInfo {
        format: info.format,
        virtual_size: info.virtual_size,
        actual_size: info.actual_size,
        backing_file: info.backing_filename,
    })
}

/// Remove a volume file; a volume already gone is not an error.
pub async fn remove_volume(path: &Path) -> Result<(), VolumeError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VolumeError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Free and total bytes of the filesystem holding `path`.
pub fn fs_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_inspect_remove_qcow2_and_raw() {
        let dir = tempfile::tempdir().unwrap();
        // A comma and a space in the path must not confuse qemu-img.
        let sub = dir.path().join("my repo, 1");
        std::fs::create_dir(&sub).unwrap();
        for format in [DiskFormat::Qcow2, DiskFormat::Raw] {
            let path = sub.join(volume_file_name("id", "disk0", format));
            create_volume(&path, format, 10 << 30, None).await.unwrap();
            let info = volume_info(&path).await.unwrap();
            assert_eq!(info.format, format.as_str());
            assert_eq!(info.virtual_size, 10 << 30);
            assert!(info.actual_size < 10 << 20, "volume is sparse");
            assert!(matches!(
                create_volume(&path, format, 1 << 20, None).await,
                Err(VolumeError::Exists(_))
            ));
            remove_volume(&path).await.unwrap();
            assert!(!path.exists());
            remove_volume(&path).await.unwrap();
        }
    }

    #[tokio::test]
    async fn linked_clone_records_its_backing_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let clone = dir.path().join("clone.qcow2");
        create_volume(&base, DiskFormat::Qcow2, 1 << 30, None)
            .await
            .unwrap();
        create_volume(&clone, DiskFormat::Qcow2, 1 << 30, Some(&base))
            .await
            .unwrap();
        assert_eq!(volume_info(&clone).await.unwrap().backing_file, Some(base));
    }

    #[tokio::test]
    async fn import_converts_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.raw");
        std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
        let dst = dir.path().join("dst.qcow2");
        let size = import_volume(&src, &dst, DiskFormat::Qcow2, 4 << 20)
            .await
            .unwrap();
        assert_eq!(size, 4 << 20);
        let info = volume_info(&dst).await.unwrap();
        assert_eq!(
            (info.format.as_str(), info.virtual_size),
            ("qcow2", 4 << 20)
        );
        let missing = import_volume(
            &dir.path().join("nope"),
            &dir.path().join("x.qcow2"),
            DiskFormat::Qcow2,
            0,
        )
        .await;
        assert!(matches!(missing, Err(VolumeError::QemuImg { .. })));
        assert!(!dir.path().join("x.qcow2").exists());
    }

    #[tokio::test]
    async fn relative_paths_are_refused() {
        let err = create_volume(Path::new("x.qcow2"), DiskFormat::Qcow2, 1 << 20, None)
            .await
            .unwrap_err();
        assert!(matches!(err, VolumeError::RelativePath(_)));
    }

    #[test]
    fn space_of_tmp() {
        let (free, total) = fs_space(Path::new("/tmp")).unwrap();
        assert!(total > 0 && free <= total);
    }
}
