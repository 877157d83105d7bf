//! Unattended-install media.
//!
//! - [`build_nocloud_iso`]: a cloud-init NoCloud seed (an ISO 9660 volume labelled `cidata`
//!   holding `user-data`, `meta-data` and optionally `network-config`), for image-based
//!   installs (`--disk-import` + `--cloud-init`) and Ubuntu autoinstall. Built with `xorriso`
//!   (Debian package `xorriso`), falling back to `genisoimage`/`mkisofs`.
//! - [`append_to_initrd`]: put a preseed/kickstart/AutoYaST file into an installer's initrd by
//!   appending a newc cpio archive (written here, in Rust). Linux unpacks every archive of a
//!   concatenated initramfs in turn, compressed or not, so the installer finds the file at
//!   `/preseed.cfg`, `/ks.cfg` or `/autoinst.xml` without the original being unpacked.

use crate::templates::UnattendedKind;
use crate::url::clean_relative;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no ISO tool found: install xorriso (or genisoimage)")]
    NoIsoTool,
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    #[error("seed file name {name:?}: {message}")]
    BadName { name: String, message: String },
    #[error("seed file {name:?} is {size} bytes; the limit is {limit}")]
    TooLarge {
        name: String,
        size: usize,
        limit: usize,
    },
}

/// The file name inside the initrd where each installer looks for its unattended file.
pub fn initrd_file_name(kind: UnattendedKind) -> Option<&'static str> {
    match kind {
        UnattendedKind::Preseed => Some("preseed.cfg"),
        UnattendedKind::Kickstart => Some("ks.cfg"),
        UnattendedKind::Autoyast => Some("autoinst.xml"),
        UnattendedKind::CloudInit | UnattendedKind::None => None,
    }
}

/// A `meta-data` document for NoCloud: instance id and host name.
pub fn nocloud_meta_data(instance_id: &str, hostname: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        q(instance_id),
        q(hostname)
    )
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SeedError {
    let path = path.to_path_buf();
    move |source| SeedError::Io {
        action,
        path,
        source,
    }
}

fn find_tool(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// Build a NoCloud seed ISO at `dest` (replaced atomically).
pub fn build_nocloud_iso(
    dest: &Path,
    user_data: &[u8],
    meta_data: &[u8],
    network_config: Option<&[u8]>,
) -> Result<(), SeedError> {
    const LIMIT: usize = 16 << 20;
    for (name, data) in [("user-data", user_data), ("meta-data", meta_data)]
        .into_iter()
        .chain(network_config.map(|n| ("network-config", n)))
    {
        if data.len() > LIMIT {
            return Err(SeedError::TooLarge {
                name: name.into(),
                size: data.len(),
                limit: LIMIT,
            });
        }
    }
    let staging = tempfile::tempdir().map_err(io_err("create a staging directory for", dest))?;
    let mut files = vec!["user-data", "meta-data"];
    std::fs::write(staging.path().join("user-data"), user_data)
        .map_err(io_err("write", &staging.path().join("user-data")))?;
    std::fs::write(staging.path().join("meta-data"), meta_data)
        .map_err(io_err("write", &staging.path().join("meta-data")))?;
    if let Some(n) = network_config {
        std::fs::write(staging.path().join("network-config"), n)
            .map_err(io_err("write", &staging.path().join("network-config")))?;
        files.push("network-config");
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Named after the destination (`.<dest>-XXXXXX`), so whoever owns `dest` can find and
    // remove what a crash of the writer left behind.
    let prefix = format!(
        ".{}-",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(dir)
        .map_err(io_err("create", dest))?;
    let (tool, mut cmd) = if let Some(x) = find_tool(&["xorriso"]) {
        let mut c = Command::new(&x);
        c.args(["-as", "genisoimage"]);
        (x, c)
    } else if let Some(g) = find_tool(&["genisoimage", "mkisofs"]) {
        (g.clone(), Command::new(g))
    } else {
        return Err(SeedError::NoIsoTool);
    };
    cmd.arg("-output")
        .arg(tmp.path())
        .args(["-volid", "cidata", "-joliet", "-rock", "-quiet"])
        .current_dir(staging.path())
        .args(&files);
    let out = cmd.output().map_err(|e| SeedError::Tool {
        tool: tool.display().to_string(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(SeedError::Tool {
            tool: tool.display().to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    tmp.persist(dest).map_err(|e| SeedError::Io {
        action: "write",
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// A file to put into an initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFile {
    /// Path inside the initramfs, relative (`preseed.cfg`, `etc/x.conf`).
    pub name: String,
    pub data: Vec<u8>,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
}

fn newc_header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, name: &str) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        size as u32,
        0,
        0,
        0,
        0,
        (name.len() + 1) as u32,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A newc ("070701") cpio archive of `files`, with the parent directories they need.
pub fn newc_archive(files: &[SeedFile]) -> Result<Vec<u8>, SeedError> {
    const S_IFREG: u32 = 0o100000;
    const S_IFDIR: u32 = 0o040000;
    let mut out = Vec::new();
    let mut ino = 0x00C0_0000u32; // away from the inode numbers of the original archive
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let name = clean_relative(&f.name).map_err(|message| SeedError::BadName {
            name: f.name.clone(),
            message,
        })?;
        if f.data.len() > u32::MAX as usize {
            return Err(SeedError::TooLarge {
                name: name.clone(),
                size: f.data.len(),
                limit: u32::MAX as usize,
            });
        }
        let parts: Vec<&str> = name.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if dirs.insert(d.clone()) {
                ino += 1;
                newc_header(&mut out, ino, S_IFDIR | 0o755, 0, &d);
            }
        }
        ino += 1;
        newc_header(
            &mut out,
            ino,
            S_IFREG | (f.mode & 0o7777),
            f.data.len(),
            &name,
        );
        out.extend_from_slice(&f.data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    newc_header(&mut out, 0, 0, 0, "TRAILER!!!");
    Ok(out)
}

/// Write `initrd` plus a newc archive of `files` to `dest` (which may equal `initrd`; the
/// result replaces it atomically). Returns the size of the result.
pub fn append_to_initrd(initrd: &Path, dest: &Path, files: &[SeedFile]) -> Result<u64, SeedError> {
    let archive = newc_archive(files)?;
    let original = std::fs::read(initrd).map_err(io_err("read initrd", initrd))?;
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".corral-initrd-")
        .tempfile_in(dir)
        .map_err(io_err("create", dest))?;
    let pad = (4 - original.len() % 4) % 4;
    tmp.write_all(&original)
        .and_then(|_| tmp.write_all(&[0u8; 3][..pad]))
        .and_then(|_| tmp.write_all(&archive))
        .map_err(io_err("write", dest))?;
    tmp.persist(dest).map_err(|e| SeedError::Io {
        action: "write",
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok((original.len() + pad + archive.len()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_and_names() {
        let a = newc_archive(&[SeedFile {
            name: "preseed.cfg".into(),
            data: b"d-i x".to_vec(),
            mode: 0o644,
        }])
        .expect("archive");
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("preseed.cfg\0"));
        assert!(text.contains("d-i x"));
        assert!(text.contains("TRAILER!!!"));
        for bad in ["../etc/shadow", "/abs", ""] {
            let err = newc_archive(&[SeedFile {
                name: bad.into(),
                data: vec![],
                mode: 0o644,
            }])
            .expect_err(bad);
            assert!(err.to_string().contains("seed file name"), "{err}");
        }
    }

    #[test]
    fn initrd_names_per_kind() {
        assert_eq!(
            initrd_file_name(UnattendedKind::Preseed),
            Some("preseed.cfg")
        );
        assert_eq!(initrd_file_name(UnattendedKind::Kickstart), Some("ks.cfg"));
        assert_eq!(
            initrd_file_name(UnattendedKind::Autoyast),
            Some("autoinst.xml")
        );
        assert_eq!(initrd_file_name(UnattendedKind::CloudInit), None);
        assert_eq!(
            nocloud_meta_data("i-1", "web01"),
            "instance-id: \"i-1\"\nlocal-hostname: \"web01\"\n"
        );
    }
}
