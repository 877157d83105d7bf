//! Checks every tar member of an untrusted archive before anything reads its data.
//!
//! Allowed: regular files and directories (and pax global headers, which carry no data we use)
//! with relative names made of plain components. Refused with a message naming the member:
//! absolute names, `..`, empty or non-UTF-8 names, symbolic and hard links, device files,
//! FIFOs, and any other entry type. Readers never create files from member names: they only
//! compare names with the ones they expect, so these checks are a second line of defence and
//! a clear error for the user.

use crate::error::ArchiveError;
use std::io::Read;
use tar::EntryType;

/// What a member is, once it passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberKind {
    File,
    Directory,
    /// Metadata-only entries (pax global headers) that readers skip.
    Skip,
}

/// Validate a member; returns its normalised name (no leading `./`, no trailing `/`).
pub(crate) fn check_member<R: Read>(
    entry: &tar::Entry<'_, R>,
) -> Result<(String, MemberKind), ArchiveError> {
    let raw = entry.path_bytes();
    let shown = String::from_utf8_lossy(&raw).into_owned();
    let unsafe_member = |reason: &str| ArchiveError::UnsafeMember {
        name: shown.clone(),
        reason: reason.to_string(),
    };
    let kind = match entry.header().entry_type() {
        EntryType::Regular | EntryType::Continuous => MemberKind::File,
        EntryType::Directory => MemberKind::Directory,
        EntryType::XGlobalHeader => return Ok((shown, MemberKind::Skip)),
        EntryType::Symlink => return Err(unsafe_member("symbolic links are not allowed")),
        EntryType::Link => return Err(unsafe_member("hard links are not allowed")),
        EntryType::Char | EntryType::Block => {
            return Err(unsafe_member("device files are not allowed"))
        }
        EntryType::Fifo => return Err(unsafe_member("FIFOs are not allowed")),
        other => {
            return Err(unsafe_member(&format!(
                "entry type {:?} is not allowed",
                other.as_byte() as char
            )))
        }
    };
    let name = std::str::from_utf8(&raw).map_err(|_| unsafe_member("name is not UTF-8"))?;
    let name = normalise_name(name).map_err(|r| unsafe_member(&r))?;
    Ok((name, kind))
}

/// Validate a member name as a relative path of plain components.
pub(crate) fn normalise_name(name: &str) -> Result<String, String> {
    if name.contains('\0') {
        return Err("name contains a NUL byte".into());
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Err("absolute paths are not allowed".into());
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err("'..' is not allowed in member names".into()),
            p if p.contains('\\') => {
                return Err("backslashes are not allowed in member names".into())
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err("name is empty".into());
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::normalise_name;

    #[test]
    fn names() {
        assert_eq!(normalise_name("./a/b").as_deref(), Ok("a/b"));
        assert_eq!(
            normalise_name("Ref:3/00000001").as_deref(),
            Ok("Ref:3/00000001")
        );
        assert_eq!(normalise_name("dir/").as_deref(), Ok("dir"));
        for bad in ["/etc/passwd", "../x", "a/../../x", "", "./", "a\\b", "a\0b"] {
            assert!(normalise_name(bad).is_err(), "{bad:?}");
        }
    }
}

/// Largest pax extended header accepted.
pub(crate) const MAX_PAX_BYTES: u64 = 64 << 10;
/// Largest GNU long name or long link accepted.
pub(crate) const MAX_LONG_NAME_BYTES: u64 = 4 << 10;

/// A reader that follows the tar structure of the bytes passing through it and fails before
/// the `tar` crate buffers something unbounded: that crate reads pax and GNU long-name
/// members whole into memory and collects GNU sparse maps, so a compressed archive with a
/// 16 GiB "long name" would exhaust memory before any member check runs. Refused here: pax
/// headers over 64 KiB, long names over 4 KiB, and GNU sparse members.
pub(crate) struct GuardedTar<R> {
    inner: R,
    header: [u8; 512],
    filled: usize,
    /// Bytes of member data (with padding) still to pass before the next header.
    skip: u64,
}

impl<R> GuardedTar<R> {
    pub(crate) fn new(inner: R) -> Self {
        GuardedTar {
            inner,
            header: [0; 512],
            filled: 0,
            skip: 0,
        }
    }

    fn header_done(&mut self) -> std::io::Result<()> {
        let h = &self.header;
        if h.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let size = parse_size(&h[124..136]).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "tar header has an invalid size",
            )
        })?;
        let limit = match h[156] {
            b'x' | b'g' => Some(("pax extended header", MAX_PAX_BYTES)),
            b'L' | b'K' => Some(("GNU long name", MAX_LONG_NAME_BYTES)),
            b'S' => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "GNU sparse members are not allowed",
                ))
            }
            _ => None,
        };
        if let Some((what, max)) = limit {
            if size > max {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("tar {what} of {size} bytes is larger than the maximum of {max}"),
                ));
            }
        }
        self.skip = size.div_ceil(512).saturating_mul(512);
        Ok(())
    }
}

/// A tar size field: octal text, or GNU base-256 when the high bit is set.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

impl<R: Read> Read for GuardedTar<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut i = 0;
        while i < n {
            if self.skip > 0 {
                let k = (self.skip.min((n - i) as u64)) as usize;
                self.skip -= k as u64;
                i += k;
                continue;
            }
            let k = (512 - self.filled).min(n - i);
            self.header[self.filled..self.filled + k].copy_from_slice(&buf[i..i + k]);
            self.filled += k;
            i += k;
            if self.filled == 512 {
                self.filled = 0;
                self.header_done()?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    fn header(kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn huge_extension_headers_are_refused_before_buffering() {
        // A long name declaring 1 GiB: the guard fails on the header, before the data.
        let mut bytes = header(b'L', 1 << 30);
        bytes.extend(vec![b'a'; 4096]);
        let mut ar = tar::Archive::new(GuardedTar::new(&bytes[..]));
        let err = ar.entries().unwrap().next().unwrap().err().unwrap();
        assert!(err.to_string().contains("GNU long name"), "{err}");
        let bytes = header(b'x', 1 << 20);
        let mut ar = tar::Archive::new(GuardedTar::new(&bytes[..]));
        let err = ar.entries().unwrap().next().unwrap().err().unwrap();
        assert!(err.to_string().contains("pax extended header"), "{err}");
        let bytes = header(b'S', 10);
        let mut ar = tar::Archive::new(GuardedTar::new(&bytes[..]));
        assert!(ar.entries().unwrap().next().unwrap().is_err());
    }

    #[test]
    fn ordinary_archives_pass_through() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/file", "d".repeat(200));
        let mut h = tar::Header::new_gnu();
        h.set_size(700);
        b.append_data(&mut h, &long, &vec![1u8; 700][..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        b.append_data(&mut h, "b", &b"xyz"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let mut ar = tar::Archive::new(GuardedTar::new(&bytes[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [long, "b".to_string()]);
    }
}
