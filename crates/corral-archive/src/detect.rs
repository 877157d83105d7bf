//! Tell an archive's format from its first bytes, so `corral vm import FILE` needs no flag.
//!
//! Pass at least the first 4 KiB (or the whole input if shorter). Compressed tars (gzip, zstd)
//! are XVAs: neither corral's format nor OVA compresses the container. For a tar, the first
//! member's name decides (pax and GNU long-name headers are skipped).

/// What an input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// corral's native archive (first member `corral-archive.json`).
    Native,
    /// An OVA (tar whose first file is a `.ovf`).
    Ova,
    /// A XenServer XVA (tar whose first file is `ova.xml`; plain, gzip or zstd).
    Xva,
    /// A bare OVF descriptor (XML).
    OvfDescriptor,
    Unknown,
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// Detect the format from the first bytes of the input.
pub fn detect_format(head: &[u8]) -> ArchiveKind {
    if head.starts_with(&[0x1f, 0x8b]) || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return ArchiveKind::Xva;
    }
    let mut pos = 0usize;
    let mut long_name: Option<String> = None;
    while head.len() >= pos + 512 {
        let h = &head[pos..pos + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let is_tar = &h[257..262] == b"ustar" || {
            // v7 tar: check the header checksum.
            let stored = octal(&h[148..156]);
            let sum: u64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        b as u64
                    }
                })
                .sum();
            stored == Some(sum)
        };
        if !is_tar {
            break;
        }
        let size = octal(&h[124..136]).unwrap_or(0);
        let data = pos + 512;
        let next = data + (size as usize).div_ceil(512) * 512;
        match h[156] {
            b'x' | b'g' => {
                // pax: a `path=` record overrides the name.
                if let Some(rec) = head.get(data..data + size as usize) {
                    let text = String::from_utf8_lossy(rec);
                    if let Some(p) = text.lines().find_map(|l| l.split_once(" path=")) {
                        long_name = Some(p.1.to_string());
                    }
                }
                pos = next;
                continue;
            }
            b'L' => {
                if let Some(rec) = head.get(data..data + size as usize) {
                    long_name = Some(
                        String::from_utf8_lossy(rec)
                            .trim_end_matches('\0')
                            .to_string(),
                    );
                }
                pos = next;
                continue;
            }
            b'5' => {
                pos = next;
                long_name = None;
                continue;
            }
            _ => {}
        }
        let name = long_name.take().unwrap_or_else(|| {
            let end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
            let mut n = String::from_utf8_lossy(&h[..end]).into_owned();
            if &h[257..262] == b"ustar" && h[345] != 0 {
                let pend = h[345..500].iter().position(|&b| b == 0).unwrap_or(155);
                n = format!("{}/{n}", String::from_utf8_lossy(&h[345..345 + pend]));
            }
            n
        });
        let name = name.trim_start_matches("./").to_ascii_lowercase();
        return match name.as_str() {
            "corral-archive.json" => ArchiveKind::Native,
            "ova.xml" => ArchiveKind::Xva,
            n if n.ends_with(".ovf") => ArchiveKind::Ova,
            _ => ArchiveKind::Unknown,
        };
    }
    let text = String::from_utf8_lossy(&head[..head.len().min(512)]);
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if t.starts_with("<?xml") || t.starts_with("<Envelope") || t.starts_with("<ovf:Envelope") {
        ArchiveKind::OvfDescriptor
    } else {
        ArchiveKind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(name: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn kinds() {
        assert_eq!(
            detect_format(&tar_with("corral-archive.json")),
            ArchiveKind::Native
        );
        assert_eq!(detect_format(&tar_with("ova.xml")), ArchiveKind::Xva);
        assert_eq!(detect_format(&tar_with("Appliance.OVF")), ArchiveKind::Ova);
        assert_eq!(detect_format(&tar_with("readme.txt")), ArchiveKind::Unknown);
        let long = format!("{}.ovf", "x".repeat(150));
        assert_eq!(detect_format(&tar_with(&long)), ArchiveKind::Ova);
        assert_eq!(detect_format(&[0x1f, 0x8b, 8, 0]), ArchiveKind::Xva);
        assert_eq!(
            detect_format(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            ArchiveKind::Xva
        );
        assert_eq!(
            detect_format(b"\xef\xbb\xbf<?xml version=\"1.0\"?><Envelope/>"),
            ArchiveKind::OvfDescriptor
        );
        assert_eq!(detect_format(b"garbage"), ArchiveKind::Unknown);
        assert_eq!(detect_format(&[]), ArchiveKind::Unknown);
    }
}
