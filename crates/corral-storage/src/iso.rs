//! The ISO library: `*.iso` files in a configured directory, and the check that a file offered
//! as CD media really is an ISO 9660 / UDF image.

use corral_model::host::IsoImage;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// ISO images in `dir`, sorted by name. A missing directory is an empty library.
pub fn list_isos(dir: &Path) -> Vec<IsoImage> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut isos: Vec<IsoImage> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let is_iso = path
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("iso"));
            let meta = e.metadata().ok()?;
            (is_iso && meta.is_file()).then(|| IsoImage {
                name: e.file_name().to_string_lossy().into_owned(),
                path,
                size_bytes: meta.len(),
            })
        })
        .collect();
    isos.sort_by(|a, b| a.name.cmp(&b.name));
    isos
}

/// Check that `path` is a readable ISO 9660 (or UDF bridge) image: the primary volume
/// descriptor at 32 KiB carries the `CD001` identifier.
pub fn check_iso(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("ISO path {} is not absolute", path.display()));
    }
    let mut f = std::fs::File::open(path)
        .map_err(|e| format!("cannot open ISO {}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read ISO {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("ISO {} is not a regular file", path.display()));
    }
    let mut id = [0u8; 5];
    let found = f.seek(SeekFrom::Start(0x8001)).is_ok() && f.read_exact(&mut id).is_ok();
    if !found || (&id != b"CD001" && &id != b"BEA01") {
        return Err(format!(
            "{} is not an ISO 9660 image (no CD001 volume descriptor at 32 KiB)",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("b.iso");
        let mut data = vec![0u8; 0x9000];
        data[0x8001..0x8006].copy_from_slice(b"CD001");
        std::fs::write(&good, &data).unwrap();
        let bad = dir.path().join("a.ISO");
        std::fs::write(&bad, b"not an iso").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let names: Vec<String> = list_isos(dir.path()).into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["a.ISO", "b.iso"]);
        assert!(check_iso(&good).is_ok());
        assert!(check_iso(&bad).unwrap_err().contains("not an ISO"));
        assert!(check_iso(&dir.path().join("missing.iso"))
            .unwrap_err()
            .contains("cannot open"));
        assert!(list_isos(&dir.path().join("nope")).is_empty());
    }
}
