//! The pure decisions of `vm import IMAGE --convert` ([`super::import_image`]): what an
//! uploaded image is, from its first bytes; whether `qemu-img info` of the received image is
//! safe to convert (no backing file, no data file or extent outside it, a sane size); how much
//! space the import needs where; and what the VM record says about where it came from.
//! Table-tested; nothing here touches a file.

use corral_model::format_size;

/// Images the conversion takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
    Vmdk,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
        }
    }
}

/// What the first bytes of an upload say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHead {
    pub format: ImageFormat,
    /// The guest disk's size in bytes.
    pub virtual_size: u64,
}

/// Bytes of an upload read before deciding (a qcow2 or VMDK header, a tar header).
pub const IMAGE_HEAD_BYTES: usize = 64 << 10;
/// Smallest and largest disk taken.
pub const MIN_DISK_BYTES: u64 = 1 << 20;
pub const MAX_DISK_BYTES: u64 = 64 << 40;

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Tell the image's format and size from its first bytes (`length`: the upload's length,
/// when the client sent it). Anything that is not a qcow2 or VMDK header is a raw disk, as
/// long as it is not one of the formats corral imports otherwise or cannot convert.
pub fn detect_image(head: &[u8], length: Option<u64>) -> Result<ImageHead, String> {
    let sane = |format: ImageFormat, size: u64| {
        if !(MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&size) {
            return Err(format!(
                "the {} image's disk size ({size} bytes) is not between {} and {}",
                format.as_str(),
                format_size(MIN_DISK_BYTES),
                format_size(MAX_DISK_BYTES)
            ));
        }
        Ok(ImageHead {
            format,
            virtual_size: size,
        })
    };
    if head.starts_with(b"QFI\xfb") {
        let version = be_u32(head, 4).unwrap_or(0);
        if version != 2 && version != 3 {
            return Err(format!("qcow2 version {version} is not supported (2 or 3)"));
        }
        if be_u64(head, 8).unwrap_or(0) != 0 {
            return Err(
                "the qcow2 image names a backing file; upload a standalone image (qemu-img convert -O qcow2 flattens it)"
                    .into(),
            );
        }
        if be_u32(head, 32).unwrap_or(0) != 0 {
            return Err("the qcow2 image is encrypted; decrypt it first".into());
        }
        return sane(ImageFormat::Qcow2, be_u64(head, 24).unwrap_or(0));
    }
    if head.starts_with(b"KDMV") {
        let sectors = le_u64(head, 12).unwrap_or(0);
        return sane(ImageFormat::Vmdk, sectors.saturating_mul(512));
    }
    if head.starts_with(b"# Disk DescriptorFile") {
        return Err("this is a VMDK descriptor, whose data is in separate files; upload a single-file VMDK (monolithicSparse or streamOptimized), or convert it with qemu-img convert -O qcow2".into());
    }
    if head.starts_with(b"conectix") || head.starts_with(b"vhdxfile") {
        return Err(
            "VHD and VHDX images are not taken; convert it with qemu-img convert -O qcow2 first"
                .into(),
        );
    }
    if head.starts_with(b"LUKS\xba\xbe") {
        return Err("the image is LUKS-encrypted as a whole; the conversion cannot open it".into());
    }
    match corral_archive::detect_format(head) {
        corral_archive::ArchiveKind::Unknown => {}
        corral_archive::ArchiveKind::OvfDescriptor => {
            return Err("this is an OVF descriptor; import the package without --convert".into())
        }
        _ => {
            return Err(
                "this is an archive (corral, OVA or XVA), not a disk image; import it without --convert"
                    .into(),
            )
        }
    }
    let Some(length) = length else {
        return Err(
            "a raw image's size is its length: send the upload with a Content-Length".into(),
        );
    };
    sane(ImageFormat::Raw, length.div_ceil(512).saturating_mul(512))
}

/// Check `qemu-img info --output=json -f FORMAT` of the received image (at `path`): the
/// format is what was detected, nothing outside the file is referenced (backing file, qcow2
/// external data file, VMDK extents), it is not encrypted, its size is sane. The virtual size.
pub fn check_image_info(
    info: &serde_json::Value,
    path: &str,
    format: ImageFormat,
) -> Result<u64, String> {
    let got = info["format"].as_str().unwrap_or("");
    if got != format.as_str() {
        return Err(format!(
            "qemu-img reads the image as {got:?}, not {}",
            format.as_str()
        ));
    }
    for k in ["backing-filename", "full-backing-filename"] {
        if info.get(k).is_some_and(|v| !v.is_null()) {
            return Err("the image names a backing file; upload a standalone image".into());
        }
    }
    if info["encrypted"].as_bool() == Some(true) {
        return Err("the image is encrypted; decrypt it first".into());
    }
    let data = &info["format-specific"]["data"];
    if data.get("data-file").is_some_and(|v| !v.is_null()) {
        return Err(
            "the qcow2 image keeps its data in an external file; upload a standalone image".into(),
        );
    }
    if let Some(extents) = data["extents"].as_array() {
        for e in extents {
            let f = e["filename"].as_str().unwrap_or("");
            if f != path {
                return Err(format!(
                    "the VMDK image reads an extent from {f:?}, outside the image; upload a single-file VMDK"
                ));
            }
        }
    }
    let size = info["virtual-size"].as_u64().unwrap_or(0);
    if !(MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&size) {
        return Err(format!(
            "the image's disk size ({size} bytes) is out of range"
        ));
    }
    Ok(size)
}

/// Room the conversion may take beyond the data itself: the rebuilt initramfs, GRUB, the
/// copy-on-write of touched clusters, file system growth.
pub const CONVERSION_MARGIN: u64 = 256 << 20;

/// Where the import writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Staging,
    Repository,
}

/// Bytes the import still needs in staging and in the repository (one figure when both are
/// the same file system). `data` is the converted volume's size (the best figure known),
/// `upload` what is staged before it is converted (0 when the upload is written straight
/// as the volume, as a raw image is), `written` what of all that is in staging already.
pub fn space_needed(data: u64, upload: u64, written: u64, same_fs: bool) -> Vec<(Place, u64)> {
    let volume = data + CONVERSION_MARGIN + data / 20;
    let staging = (upload + volume).saturating_sub(written);
    if same_fs {
        // The staged upload and the converted volume coexist until the first is removed;
        // the volume is then renamed into the repository.
        vec![(Place::Repository, staging)]
    } else {
        vec![(Place::Staging, staging), (Place::Repository, volume)]
    }
}

/// The first shortfall, as (place, needed, free).
pub fn shortfall(needs: &[(Place, u64)], free: impl Fn(Place) -> u64) -> Option<(Place, u64, u64)> {
    needs
        .iter()
        .map(|&(p, n)| (p, n, free(p)))
        .find(|&(_, n, f)| n > f)
}

/// The VM's description after a conversion.
pub fn converted_description(
    format: ImageFormat,
    os: &str,
    firmware: &str,
    changes: usize,
    task: &str,
) -> String {
    format!(
        "converted to virtio from a {} disk image of {os} ({firmware}); {changes} changes, listed in task {task}",
        format.as_str()
    )
}

/// The VM's description after a P2V conversion (when the user gave none).
pub fn p2v_description(
    host: &str,
    method: &str,
    os: &str,
    firmware: &str,
    changes: usize,
    task: &str,
) -> String {
    format!(
        "server {host} ({os}, {firmware}) copied by P2V ({method}) and converted to virtio; {changes} changes, listed in task {task}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qcow2(version: u32, backing: u64, size: u64, crypt: u32) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[32..36].copy_from_slice(&crypt.to_be_bytes());
        h
    }

    #[test]
    fn images_are_told_by_their_first_bytes() {
        let g = 1u64 << 30;
        assert_eq!(
            detect_image(&qcow2(3, 0, 2 * g, 0), Some(12345)),
            Ok(ImageHead {
                format: ImageFormat::Qcow2,
                virtual_size: 2 * g
            })
        );
        let mut vmdk = vec![0u8; 512];
        vmdk[..4].copy_from_slice(b"KDMV");
        vmdk[12..20].copy_from_slice(&(4u64 << 21).to_le_bytes());
        assert_eq!(
            detect_image(&vmdk, None),
            Ok(ImageHead {
                format: ImageFormat::Vmdk,
                virtual_size: 4 * g
            })
        );
        let mbr = {
            let mut b = vec![0u8; 4096];
            b[510] = 0x55;
            b[511] = 0xaa;
            b
        };
        assert_eq!(
            detect_image(&mbr, Some(2 * g + 100)),
            Ok(ImageHead {
                format: ImageFormat::Raw,
                virtual_size: 2 * g + 512
            })
        );
        for (head, len, says) in [
            (qcow2(3, 4096, g, 0), None, "backing file"),
            (qcow2(3, 0, g, 1), None, "encrypted"),
            (qcow2(1, 0, g, 0), None, "version 1"),
            (qcow2(3, 0, 0, 0), None, "not between"),
            (
                b"# Disk DescriptorFile\nversion=1\n".to_vec(),
                Some(100),
                "descriptor",
            ),
            (b"conectix".to_vec(), Some(g), "VHD"),
            (b"LUKS\xba\xbe\0\x02".to_vec(), Some(g), "LUKS"),
            (mbr.clone(), None, "Content-Length"),
            (mbr.clone(), Some(1000), "not between"),
            (vec![0x1f, 0x8b, 8, 0], Some(g), "archive"),
        ] {
            let e = detect_image(&head, len).unwrap_err();
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn received_images_reference_nothing_outside() {
        let path = "/state/staging/x/upload.vmdk";
        let ok = json!({"format": "vmdk", "virtual-size": 1u64 << 30,
            "format-specific": {"type": "vmdk", "data": {"extents": [{"filename": path}]}}});
        assert_eq!(check_image_info(&ok, path, ImageFormat::Vmdk), Ok(1 << 30));
        let outside = json!({"format": "vmdk", "virtual-size": 1u64 << 30,
            "format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "/etc/shadow"}]}}});
        assert!(check_image_info(&outside, path, ImageFormat::Vmdk)
            .unwrap_err()
            .contains("/etc/shadow"));
        let backing =
            json!({"format": "qcow2", "virtual-size": 1u64 << 30, "backing-filename": "/x"});
        assert!(check_image_info(&backing, path, ImageFormat::Qcow2).is_err());
        let data_file = json!({"format": "qcow2", "virtual-size": 1u64 << 30,
            "format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}});
        assert!(check_image_info(&data_file, path, ImageFormat::Qcow2)
            .unwrap_err()
            .contains("external file"));
        let wrong = json!({"format": "raw", "virtual-size": 1u64 << 30});
        assert!(check_image_info(&wrong, path, ImageFormat::Qcow2).is_err());
    }

    #[test]
    fn space_is_counted_where_it_is_taken() {
        let m = CONVERSION_MARGIN;
        let g = 1u64 << 30;
        assert_eq!(
            space_needed(20 * g, 0, 0, true),
            vec![(Place::Repository, 21 * g + m)]
        );
        assert_eq!(
            space_needed(20 * g, 10 * g, 0, false),
            vec![
                (Place::Staging, 31 * g + m),
                (Place::Repository, 21 * g + m)
            ]
        );
        // Once received, what is in staging counts as taken.
        assert_eq!(
            space_needed(20 * g, 0, 20 * g, true),
            vec![(Place::Repository, g + m)]
        );
        assert_eq!(
            space_needed(20 * g, 10 * g, 10 * g, true),
            vec![(Place::Repository, 21 * g + m)]
        );
        let needs = space_needed(g, 0, 0, false);
        assert_eq!(shortfall(&needs, |_| 100 * g), None);
        let short = shortfall(&needs, |p| {
            if p == Place::Repository {
                64 << 20
            } else {
                100 * g
            }
        });
        assert_eq!(short, Some((Place::Repository, g + g / 20 + m, 64 << 20)));
    }
}
