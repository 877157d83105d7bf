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
