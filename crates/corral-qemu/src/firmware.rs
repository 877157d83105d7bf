//! Locating UEFI firmware (OVMF) for UEFI guests.
//!
//! A UEFI VM needs the firmware code (shared, read-only) and its own writable copy of the
//! variable store, made from the package's template when the VM is created and kept with the
//! VM's disks (boot entries live there). The code and template must be a matching pair, so
//! they are looked up together.

use std::path::{Path, PathBuf};

/// Code / variable-store template pairs, preferred first (Debian's `ovmf` package layout).
/// The non-Secure-Boot builds are used: the Secure Boot ones need SMM and enrolled keys.
pub const OVMF_CANDIDATES: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
];

/// Secure Boot pairs: OVMF built with SMM and Secure Boot, and a variable store with
/// Microsoft's keys enrolled (Secure Boot on; Windows and shim-signed distributions boot).
/// Debian's `ovmf` pairs `OVMF_CODE_4M.secboot.fd` with `OVMF_VARS_4M.ms.fd`.
pub const OVMF_SECURE_CANDIDATES: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.secboot.fd",
        "/usr/share/OVMF/OVMF_VARS.ms.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd",
    ),
];

/// The firmware code and the variable-store template to copy for each VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvmfFirmware {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

/// The first installed OVMF pair, if any.
pub fn find_ovmf() -> Option<OvmfFirmware> {
    find_ovmf_in(
        OVMF_CANDIDATES
            .iter()
            .map(|(c, v)| (Path::new(*c), Path::new(*v))),
    )
}

/// The first installed Secure Boot pair, if any.
pub fn find_ovmf_secure() -> Option<OvmfFirmware> {
    find_ovmf_in(
        OVMF_SECURE_CANDIDATES
            .iter()
            .map(|(c, v)| (Path::new(*c), Path::new(*v))),
    )
}

fn find_ovmf_in<'a>(pairs: impl IntoIterator<Item = (&'a Path, &'a Path)>) -> Option<OvmfFirmware> {
    pairs
        .into_iter()
        .find(|(code, vars)| code.is_file() && vars.is_file())
        .map(|(code, vars)| OvmfFirmware {
            code: code.to_path_buf(),
            vars_template: vars.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_complete_pair_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = |n: &str| dir.path().join(n);
        for n in ["a_code", "b_code", "b_vars"] {
            std::fs::write(f(n), b"x").expect("write");
        }
        let (ac, av, bc, bv) = (f("a_code"), f("a_vars"), f("b_code"), f("b_vars"));
        let found = find_ovmf_in([(ac.as_path(), av.as_path()), (bc.as_path(), bv.as_path())]);
        assert_eq!(found.map(|o| o.code), Some(bc));
    }
}
