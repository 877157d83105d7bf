//! Files a VM owns beside its disk volumes, and what happens to them when the VM is exported,
//! imported, cloned, copied or deleted.
//!
//! Two kinds:
//! - **Boot files an import carried** (the direct-boot kernel and initrd of an exported VM):
//!   `SR/<vm-uuid>-kernel` and `SR/<vm-uuid>-initrd`, in the repository the import chose,
//!   named by the VM's id like its volumes, so the cleanup of an interrupted import
//!   (`transfer::import_volumes_in`) finds them too. A VM created with `--kernel /boot/vmlinuz`
//!   does not own that file: a VM owns a boot file only when the file's name is its own id
//!   followed by `-kernel` or `-initrd`. Copies and clones get their own copy of owned boot
//!   files (so deleting either VM never takes the other's kernel away); user paths are shared.
//! - **vTPM state**: `STATE/tpm/<vm-uuid>/`, swtpm's state directory (`tpm2-00.permall`: the
//!   TPM's seeds, keys and NV storage). Created on the first start, removed with the VM,
//!   carried in native exports, copied on clone and copy. A VM created from a template VM
//!   starts with a fresh TPM instead: a TPM's identity (its endorsement seed) must not be shared
//!   by every VM stamped from one template. Migration moves the directory with the VM (the
//!   state is one small file, and QEMU's migration stream carries the TPM's volatile state).
//!
//! - **The cloud-init seed** of an image install (`STATE/seeds/<vm-uuid>.iso`, in the CD
//!   drive): removed with the VM, so copies and clones get their own copy.
//!
//! Everything here is plain file work with the names decided by the agent; nothing takes a
//! name from an archive or a user.

use crate::config::Layout;
use crate::error::Error;
use corral_archive::FileRole;
use corral_model::VmSpec;
use std::path::{Path, PathBuf};

/// swtpm's file for a TPM 2.0's persistent state inside its state directory.
pub const TPM_STATE_FILE: &str = "tpm2-00.permall";

/// The vTPM state directory of a VM.
pub fn tpm_dir(layout: &Layout, vm_id: &str) -> PathBuf {
    layout.root.join("tpm").join(vm_id)
}

/// The persistent TPM state file of a VM (exists once its TPM has run).
pub fn tpm_state_file(layout: &Layout, vm_id: &str) -> PathBuf {
    tpm_dir(layout, vm_id).join(TPM_STATE_FILE)
}

/// Create a VM's TPM state directory, readable by the agent only (it holds the TPM's seeds).
pub fn create_tpm_dir(layout: &Layout, vm_id: &str) -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = tpm_dir(layout, vm_id);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            Error::caused(
                corral_model::ErrorKind::Internal,
                format!("cannot create {}", dir.display()),
                e,
            )
        })?;
    Ok(dir)
}

/// File name of a boot file `role` owned by VM `vm_id`.
pub fn boot_file_name(vm_id: &str, role: FileRole) -> String {
    format!("{vm_id}-{role}")
}

/// Whether `path` is a boot file some VM owns (`<uuid>-kernel` or `<uuid>-initrd`), as
/// opposed to a host file a user pointed the VM at.
fn owned_boot_file(path: &Path) -> Option<FileRole> {
    let name = path.file_name()?.to_str()?;
    for role in [FileRole::Kernel, FileRole::Initrd] {
        if let Some(id) = name.strip_suffix(&format!("-{role}")) {
            if uuid::Uuid::parse_str(id).is_ok() {
                return Some(role);
            }
        }
    }
    None
}

/// Whether `path` is a boot file owned by VM `vm_id` itself.
fn owned_by(path: &Path, vm_id: &str) -> bool {
    owned_boot_file(path).is_some_and(|role| {
        path.file_name().and_then(|n| n.to_str()) == Some(&boot_file_name(vm_id, role))
    })
}

/// The boot files a spec names, with their roles.
pub fn boot_files(spec: &VmSpec) -> Vec<(FileRole, PathBuf)> {
    let mut out = Vec::new();
    if let Some(kb) = &spec.kernel_boot {
        out.push((FileRole::Kernel, kb.kernel.clone()));
        if let Some(i) = &kb.initrd {
            out.push((FileRole::Initrd, i.clone()));
        }
    }
    out
}

/// The boot files of `spec` that VM `vm_id` owns (removed with it, unless its disks are kept).
pub fn owned_boot_files(spec: &VmSpec, vm_id: &str) -> Vec<PathBuf> {
    boot_files(spec)
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| owned_by(p, vm_id))
        .collect()
}

/// What an export carries beside the disks: the boot files the VM boots from (its own or a
/// user's), and its TPM state when it has a TPM that has run.
pub fn export_files(layout: &Layout, vm_id: &str, spec: &VmSpec) -> Vec<(FileRole, PathBuf)> {
    let mut out = boot_files(spec);
    let tpm = tpm_state_file(layout, vm_id);
    if spec.tpm && tpm.is_file() {
        out.push((FileRole::TpmState, tpm));
    }
    out
}

/// Remove what VM `vm_id` owns besides its volumes (on delete); `keep_boot_files` (with
/// `vm delete --keep-disks`) keeps its boot files beside the kept volumes. Errors are logged,
/// not returned: the record is already gone, and a leftover file is harmless.
pub fn remove_owned(layout: &Layout, vm_id: &str, spec: &VmSpec, keep_boot_files: bool) {
    for (_, p) in boot_files(spec) {
        if !keep_boot_files && owned_by(&p, vm_id) {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a boot file");
            }
        }
    }
    // The Secure Boot variable store (`vm::runtime` names it; the plain UEFI one is removed
    // by the actor).
    let _ = std::fs::remove_file(layout.root.join("nvram").join(format!("{vm_id}-secure.fd")));
    let dir = tpm_dir(layout, vm_id);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove TPM state");
        }
    }
}

/// After `vm set --kernel/--initrd` replaced a boot file VM `vm_id` owned, remove the old one
/// (nothing else can name it).
pub fn remove_replaced(vm_id: &str, old: &VmSpec, new: &VmSpec) {
    let kept = boot_files(new);
    for (_, p) in boot_files(old) {
        if owned_by(&p, vm_id) && !kept.iter().any(|(_, k)| *k == p) {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a replaced boot file");
            }
        }
    }
}

/// Give a new VM `new_id` (spec copied from `src_id`'s) its own copies of the source's owned
/// boot files, next to the originals, and of its TPM state when `copy_tpm`. Points `spec` at
/// the copies. Returns what was created, for the caller to remove if recording the VM fails;
/// on error, whatever this call created is already removed.
pub fn copy_owned(
    layout: &Layout,
    src_id: &str,
    new_id: &str,
    spec: &mut VmSpec,
    copy_tpm: bool,
) -> Result<Vec<PathBuf>, Error> {
    let mut created: Vec<PathBuf> = Vec::new();
    let result = copy_owned_into(layout, src_id, new_id, spec, copy_tpm, &mut created);
    if result.is_err() {
        remove_created(&created);
        return result.map(|_| Vec::new());
    }
    Ok(created)
}

fn copy_owned_into(
    layout: &Layout,
    src_id: &str,
    new_id: &str,
    spec: &mut VmSpec,
    copy_tpm: bool,
    created: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    if let Some(kb) = spec.kernel_boot.as_mut() {
        let mut slots: Vec<&mut PathBuf> = vec![&mut kb.kernel];
        if let Some(i) = kb.initrd.as_mut() {
            slots.push(i);
        }
        for slot in slots {
            let Some(role) = owned_boot_file(slot) else {
                continue;
            };
            let Some(dir) = slot.parent() else { continue };
            let dest = dir.join(boot_file_name(new_id, role));
            copy_new(slot, &dest)?;
            created.push(dest.clone());
            *slot = dest;
        }
    }
    // The cloud-init seed of an image install sits in the VM's CD drive and is removed with
    // the VM, so a copy or clone sharing it would lose its medium when the source goes.
    let seed = layout.seed_iso(src_id);
    for cd in spec.cdroms.iter_mut() {
        if cd.media.as_deref() == Some(seed.as_path()) && seed.is_file() {
            let dest = layout.seed_iso(new_id);
            copy_new(&seed, &dest)?;
            created.push(dest.clone());
            cd.media = Some(dest);
        }
    }
    let src = tpm_dir(layout, src_id);
    if copy_tpm && spec.tpm && src.join(TPM_STATE_FILE).is_file() {
        let dest = create_tpm_dir(layout, new_id)?;
        created.push(dest.clone());
        copy_new(&src.join(TPM_STATE_FILE), &dest.join(TPM_STATE_FILE))?;
    }
    Ok(())
}

/// Copy `src` to a new file `dest` (refused if it exists), synced.
fn copy_new(src: &Path, dest: &Path) -> Result<(), Error> {
    let fail = |e: std::io::Error| {
        Error::internal(format!(
            "cannot copy {} to {}: {e}",
            src.display(),
            dest.display()
        ))
    };
    let mut from = std::fs::File::open(src).map_err(fail)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(fail)?;
    let r = std::io::copy(&mut from, &mut to).and_then(|_| to.sync_all());
    if let Err(e) = r {
        let _ = std::fs::remove_file(dest);
        return Err(fail(e));
    }
    Ok(())
}

/// Remove files and directories a failed operation created.
pub fn remove_created(paths: &[PathBuf]) {
    for p in paths {
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(p);
        } else {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Rename `staged` to `dest`, which must not exist yet. `Ok(false)`: they are on different
/// file systems and the caller copies instead.
pub fn rename_new(staged: &Path, dest: &Path) -> Result<bool, Error> {
    if dest.exists() {
        return Err(Error::conflict(format!(
            "{} already exists",
            dest.display()
        )));
    }
    match std::fs::rename(staged, dest) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Ok(false),
        Err(e) => Err(Error::internal(format!(
            "cannot move {} to {}: {e}",
            staged.display(),
            dest.display()
        ))),
    }
}

/// Move an imported file out of staging to `dest` (a new file): a rename on the same file
/// system, else a copy under a temporary name renamed at the end, so `dest` is never half
/// written.
pub fn place_file(staged: &Path, dest: &Path) -> Result<(), Error> {
    if rename_new(staged, dest)? {
        return Ok(());
    }
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    copy_new(staged, &tmp)?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::caused(
            corral_model::ErrorKind::Internal,
            format!("cannot rename {}", tmp.display()),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_model::KernelBoot;

    fn spec_with(kernel: &Path, initrd: Option<&Path>, tpm: bool) -> VmSpec {
        let mut spec: VmSpec = serde_json::from_value(serde_json::json!({
            "name": "a", "vcpus": 1, "memory_bytes": 268435456u64, "cpu_weight": 256
        }))
        .unwrap();
        spec.kernel_boot = Some(KernelBoot {
            kernel: kernel.to_path_buf(),
            initrd: initrd.map(Path::to_path_buf),
            cmdline: "console=ttyS0".into(),
        });
        spec.tpm = tpm;
        spec
    }

    #[test]
    fn copies_get_their_own_owned_files_and_share_user_files() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: root.path().to_path_buf(),
        };
        let sr = root.path().join("sr");
        std::fs::create_dir_all(&sr).unwrap();
        let src = uuid::Uuid::new_v4().to_string();
        let new = uuid::Uuid::new_v4().to_string();
        let kernel = sr.join(boot_file_name(&src, FileRole::Kernel));
        let user_initrd = root.path().join("initrd.img");
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&user_initrd, b"initrd").unwrap();
        std::fs::create_dir_all(tpm_dir(&layout, &src)).unwrap();
        std::fs::write(tpm_state_file(&layout, &src), b"tpm").unwrap();

        let mut spec = spec_with(&kernel, Some(&user_initrd), true);
        let created = copy_owned(&layout, &src, &new, &mut spec, true).unwrap();
        let kb = spec.kernel_boot.clone().unwrap();
        assert_eq!(kb.kernel, sr.join(format!("{new}-kernel")));
        assert_eq!(std::fs::read(&kb.kernel).unwrap(), b"kernel");
        assert_eq!(kb.initrd.as_deref(), Some(user_initrd.as_path()), "shared");
        assert_eq!(
            std::fs::read(tpm_state_file(&layout, &new)).unwrap(),
            b"tpm"
        );
        assert_eq!(created.len(), 2);

        // Deleting the copy removes its own files only.
        remove_owned(&layout, &new, &spec, false);
        assert!(!kb.kernel.exists());
        assert!(!tpm_dir(&layout, &new).exists());
        assert!(kernel.exists() && user_initrd.exists());
        assert!(tpm_state_file(&layout, &src).exists());

        // A user's file that merely looks owned by another VM is never removed by this one.
        let spec = spec_with(&kernel, None, false);
        remove_owned(&layout, &new, &spec, false);
        assert!(kernel.exists());
    }

    #[test]
    fn a_replaced_owned_kernel_is_removed_and_a_user_kernel_is_not() {
        let root = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let owned = root.path().join(boot_file_name(&id, FileRole::Kernel));
        let user = root.path().join("vmlinuz");
        std::fs::write(&owned, b"k").unwrap();
        std::fs::write(&user, b"k").unwrap();
        let (a, b) = (
            spec_with(&owned, None, false),
            spec_with(&user, None, false),
        );
        remove_replaced(&id, &a, &a);
        assert!(owned.exists(), "unchanged");
        remove_replaced(&id, &a, &b);
        assert!(!owned.exists());
        remove_replaced(&id, &b, &a);
        assert!(user.exists(), "a user's kernel is never removed");
    }

    #[test]
    fn without_copy_tpm_a_new_vm_gets_a_fresh_tpm() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: root.path().to_path_buf(),
        };
        let src = uuid::Uuid::new_v4().to_string();
        let new = uuid::Uuid::new_v4().to_string();
        std::fs::create_dir_all(tpm_dir(&layout, &src)).unwrap();
        std::fs::write(tpm_state_file(&layout, &src), b"tpm").unwrap();
        let k = root.path().join("vmlinuz");
        std::fs::write(&k, b"k").unwrap();
        let mut spec = spec_with(&k, None, true);
        let created = copy_owned(&layout, &src, &new, &mut spec, false).unwrap();
        assert!(created.is_empty());
        assert!(!tpm_dir(&layout, &new).exists());
    }
}
