//! Who a VM's QEMU runs as, and which files it may touch.
//!
//! Each QEMU runs as its own dynamic user: a uid (and gid of the same number) from a range
//! reserved for corral, [`UID_BASE`] .. `UID_BASE + UID_COUNT`, derived from the VM's id and
//! moved on when another process already runs as it. No `/etc/passwd` entry is needed: the
//! kernel only knows numbers. Why one uid per VM rather than one shared `corral-qemu` user
//! with a group per VM: processes of one uid may signal and `ptrace` each other (and read
//! each other's `/proc/PID/mem` and open descriptors), so with a shared user an escaped QEMU
//! would reach every other VM's memory and open disks whatever the file modes say.
//!
//! The agent (root) keeps every file root-owned and private (umask 077; at start it also
//! removes group and other access from the state's files, [`secure_state`]). For a launch it
//! adds POSIX ACL entries for the VM's uid only, recorded in a ledger (`run/<vm-uuid>/
//! confined.json`, in the run directory, which the agent owns and QEMU cannot write):
//! read-write on the VM's own disks, UEFI variables, serial and runtime logs, pid file and
//! swtpm socket; read-only on shared files (bases of linked clones, ISOs, kernels, the PXE
//! boot directory, migration TLS credentials); search-only on each directory leading to
//! them that "others" cannot already search. File owners and modes never change. After QEMU
//! exits (or, after an agent restart, when the agent finds it gone) [`revoke_all`] removes
//! exactly the ledger's entries, which restores every file's previous ACL.
//!
//! QEMU never needs to create a file: the agent binds the QMP and serial sockets and passes
//! them (and tap devices) as descriptors, and pre-creates the pid file and logs. So the run
//! directory is search-only for QEMU, which keeps a hostile QEMU from planting symbolic
//! links there for the agent (root) to follow.

use crate::error::Error;
use corral_model::ErrorKind;
use corral_qemu::confine::Identity;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// First uid (and gid) of the range corral hands to QEMU processes. Above systemd's
/// container range (`0x00080000..0x6FFFFFFF`), below the `0x7FFE0000` range systemd keeps
/// for foreign mounts and below 2^31, which some tools mishandle.
pub const UID_BASE: u32 = 0x7C00_0000;
/// How many uids the range holds.
pub const UID_COUNT: u32 = 0x1_0000;
/// The ledger file in a VM's run directory.
const LEDGER: &str = "confined.json";

/// Read, write, search/execute bits of an ACL entry.
pub const R: u16 = 4;
pub const W: u16 = 2;
pub const X: u16 = 1;

/// Whether QEMU processes are confined here: only an agent running as root can switch them
/// to another user (an unprivileged agent's QEMUs run as the agent, sandboxed all the same).
pub fn available() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Make files the agent creates private to it (0600/0700): what a VM may read is then only
/// what [`grant`] opened for it.
pub fn set_private_umask() {
    // SAFETY: sets the process's file mode mask, cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// The candidate uid of a VM: FNV-1a of its id, folded into the range.
fn derived_uid(vm_id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in vm_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    UID_BASE + h % UID_COUNT
}

/// Uids of every process on the host.
fn uids_in_use() -> std::collections::HashSet<u32> {
    let mut used = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Ok(md) = e.metadata() {
                if e.file_name().as_bytes().iter().all(u8::is_ascii_digit) {
                    used.insert(md.uid());
                }
            }
        }
    }
    used
}

/// Uids handed out by this agent whose QEMU has not been cleaned up yet (a launch in
/// progress has no process yet).
static RESERVED: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

/// Uids that other VMs' ledgers under `run_root` (`STATE/run`) still hold grants for: a
/// QEMU that died while nobody cleaned up (its record moved to another pool member, say).
/// Reusing one would hand the new QEMU those files.
fn uids_with_grants(run_root: &Path, vm_id: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(run_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() != vm_id)
        .filter_map(|e| granted_uid(&e.path()))
        .collect()
}

/// The identity for a new QEMU of `vm_id`: the derived uid, or the next one in the range
/// that no process on the host runs as, no account names, no other launch of this agent
/// holds and no other VM's ledger under `run_root` names.
pub fn allocate(run_root: &Path, vm_id: &str) -> Result<Identity, Error> {
    let mut used = uids_in_use();
    used.extend(uids_with_grants(run_root, vm_id));
    let mut reserved = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
    reserved.retain(|(id, _)| id != vm_id);
    let first = derived_uid(vm_id) - UID_BASE;
    for step in 0..UID_COUNT {
        let uid = UID_BASE + (first + step) % UID_COUNT;
        // SAFETY: getpwuid/getgrgid return static storage we only test for null.
        let named = unsafe { !libc::getpwuid(uid).is_null() || !libc::getgrgid(uid).is_null() };
        if used.contains(&uid) || named || reserved.iter().any(|(_, u)| *u == uid) {
            continue;
        }
        reserved.push((vm_id.to_string(), uid));
        return Ok(Identity { uid, gid: uid });
    }
    Err(Error::new(
        ErrorKind::Busy,
        "no free uid left in corral's range for another QEMU",
    ))
}

/// Forget the reservation of `vm_id`'s uid (its QEMU is gone).
fn release(vm_id: &str) {
    RESERVED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(id, _)| id != vm_id);
}

/// What was granted to one VM's QEMU, so it can be taken back exactly.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    uid: u32,
    /// Every path that got an ACL entry for `uid`, with its permissions.
    entries: Vec<(PathBuf, u16)>,
}

fn ledger_path(run_dir: &Path) -> PathBuf {
    run_dir.join(LEDGER)
}

fn read_ledger(run_dir: &Path) -> Option<Ledger> {
    let text = std::fs::read(ledger_path(run_dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_ledger(run_dir: &Path, ledger: &Ledger) -> std::io::Result<()> {
    let text = serde_json::to_vec(ledger).map_err(std::io::Error::other)?;
    crate::files::write_private(&ledger_path(run_dir), &text, 0o600)
}

/// The uid a VM's QEMU was given, if it has grants outstanding.
pub fn granted_uid(run_dir: &Path) -> Option<u32> {
    read_ledger(run_dir).map(|l| l.uid)
}

/// One process at a time edits ACLs: two VMs granting on the same directory would otherwise
/// each write back what they read and lose the other's entry.
static ACL_LOCK: Mutex<()> = Mutex::new(());

/// Give `uid` the permissions `perm` on each path (on that path alone; [`grant_tree`] for a
/// whole directory), plus search on every directory leading to it that others cannot
/// already search. Recorded in the ledger of `run_dir` before the ACLs change, so a crash in
/// between leaves nothing that [`revoke_all`] does not find.
pub fn grant(run_dir: &Path, uid: u32, paths: &[(PathBuf, u16)]) -> Result<(), Error> {
    let _guard = ACL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut ledger = read_ledger(run_dir).unwrap_or(Ledger {
        uid,
        entries: Vec::new(),
    });
    if ledger.uid != uid {
        // Left from an earlier QEMU of this VM that nobody cleaned up: take it back first.
        revoke_entries(&ledger);
        ledger = Ledger {
            uid,
            entries: Vec::new(),
        };
    }
    let mut wanted: Vec<(PathBuf, u16)> = Vec::new();
    for (path, perm) in paths {
        let md = std::fs::metadata(path).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot give QEMU access to {}", path.display()),
                e,
            )
        })?;
        if !covered(&md, uid, *perm) {
            wanted.push((path.clone(), *perm));
        }
        for dir in path.ancestors().skip(1) {
            match std::fs::metadata(dir) {
                Ok(md) if !covered(&md, uid, X) => wanted.push((dir.to_path_buf(), X)),
                _ => {}
            }
        }
    }
    for (path, perm) in &wanted {
        match ledger.entries.iter_mut().find(|(p, _)| p == path) {
            Some((_, have)) => *have |= perm,
            None => ledger.entries.push((path.clone(), *perm)),
        }
    }
    write_ledger(run_dir, &ledger).map_err(|e| {
        Error::caused(
            ErrorKind::Internal,
            format!("cannot record QEMU's grants in {}", run_dir.display()),
            e,
        )
    })?;
    for (path, _) in &wanted {
        let perm = ledger
            .entries
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, p)| *p)
            .unwrap_or(0);
        acl_set_user(path, uid, Some(perm)).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot give QEMU access to {} (ACL)", path.display()),
                e,
            )
        })?;
    }
    Ok(())
}

/// [`grant`] a directory tree: `R|X` on directories, `R` on files (the PXE boot directory
/// QEMU's TFTP server reads).
pub fn grant_tree(run_dir: &Path, uid: u32, root: &Path) -> Result<(), Error> {
    let mut paths = vec![(root.to_path_buf(), R | X)];
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                paths.push((e.path(), R | X));
                stack.push(e.path());
            } else if ft.is_file() {
                paths.push((e.path(), R));
            }
        }
    }
    grant(run_dir, uid, &paths)
}

/// Whether `uid` (not the owner, in no group: a dynamic user) already has `perm` through
/// the "others" bits.
fn covered(md: &std::fs::Metadata, uid: u32, perm: u16) -> bool {
    if md.uid() == uid {
        return true;
    }
    let other = (md.mode() & 0o7) as u16;
    other & perm == perm
}

/// Take back one path's grant (a CD that was ejected), keeping the directories' search
/// entries until the VM stops.
pub fn revoke_path(run_dir: &Path, path: &Path) {
    let _guard = ACL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut ledger) = read_ledger(run_dir) else {
        return;
    };
    let before = ledger.entries.len();
    ledger.entries.retain(|(p, _)| p != path);
    if ledger.entries.len() != before {
        if let Err(e) = acl_set_user(path, ledger.uid, None) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove QEMU's ACL entry");
        }
        let _ = write_ledger(run_dir, &ledger);
    }
}

/// Remove every ACL entry the ledger of `run_dir` records, then the ledger. Idempotent.
pub fn revoke_all(run_dir: &Path, vm_id: &str) {
    release(vm_id);
    let _guard = ACL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ledger) = read_ledger(run_dir) {
        revoke_entries(&ledger);
    }
    let _ = std::fs::remove_file(ledger_path(run_dir));
}

fn revoke_entries(ledger: &Ledger) {
    for (path, _) in &ledger.entries {
        match acl_set_user(path, ledger.uid, None) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove QEMU's ACL entry")
            }
        }
    }
}

/// At agent start: take group and other access away from the files of the state directory
/// that a QEMU could otherwise reach by name (the store, the token, volumes, UEFI variables,
/// vTPM state, seeds, installer files, run directories), from before the agent set its
/// umask. Directories keep their modes: what a VM may pass through is granted per launch.
pub fn secure_state(root: &Path, extra_dirs: &[PathBuf]) {
    let mut dirs: Vec<(PathBuf, bool)> = vec![(root.to_path_buf(), false)];
    for sub in [
        "nvram", "seeds", "tpm", "install", "run", "tls", "pool", "srs",
    ] {
        dirs.push((root.join(sub), true));
    }
    dirs.extend(extra_dirs.iter().map(|d| (d.clone(), true)));
    for (dir, recursive) in dirs {
        tighten(&dir, recursive, 0);
    }
}

fn tighten(dir: &Path, recursive: bool, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        if md.is_file() && md.mode() & 0o077 != 0 {
            // With an ACL the group bits are its mask: clearing them would silence the
            // entries of a running VM's QEMU. Its named entries are the grants; only
            // "others" go.
            let has_acl = read_acl(&e.path()).is_ok_and(|a| a.iter().any(|e| e.tag == TAG_MASK));
            let keep = if has_acl { 0o7770 } else { 0o7700 };
            let mode = md.mode() & keep;
            if mode != md.mode() & 0o7777 {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode));
            }
        } else if md.is_dir() && recursive && depth < 4 {
            tighten(&e.path(), recursive, depth + 1);
        }
    }
}

// POSIX ACLs as the kernel stores them in the `system.posix_acl_access` extended attribute
// (the `setfacl` tool is not installed everywhere; the format is small and stable).
const ACL_XATTR: &str = "system.posix_acl_access";
const ACL_VERSION: u32 = 2;
const TAG_USER_OBJ: u16 = 0x01;
const TAG_USER: u16 = 0x02;
const TAG_GROUP_OBJ: u16 = 0x04;
const TAG_GROUP: u16 = 0x08;
const TAG_MASK: u16 = 0x10;
const TAG_OTHER: u16 = 0x20;
const NO_ID: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AclEntry {
    tag: u16,
    perm: u16,
    id: u32,
}

fn cpath(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn read_acl(path: &Path) -> std::io::Result<Vec<AclEntry>> {
    let c = cpath(path)?;
    let name = CString::new(ACL_XATTR).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: buffer and its length are valid; the names are NUL-terminated.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENODATA) {
            let mode = std::fs::metadata(path)?.mode();
            return Ok(mode_entries(mode));
        }
        return Err(err);
    }
    Ok(parse_acl(&buf[..n as usize]))
}

fn mode_entries(mode: u32) -> Vec<AclEntry> {
    let bits = |shift: u32| ((mode >> shift) & 7) as u16;
    vec![
        AclEntry {
            tag: TAG_USER_OBJ,
            perm: bits(6),
            id: NO_ID,
        },
        AclEntry {
            tag: TAG_GROUP_OBJ,
            perm: bits(3),
            id: NO_ID,
        },
        AclEntry {
            tag: TAG_OTHER,
            perm: bits(0),
            id: NO_ID,
        },
    ]
}

fn parse_acl(buf: &[u8]) -> Vec<AclEntry> {
    if buf.len() < 4 || u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) != ACL_VERSION {
        return Vec::new();
    }
    buf[4..]
        .chunks_exact(8)
        .map(|c| AclEntry {
            tag: u16::from_le_bytes([c[0], c[1]]),
            perm: u16::from_le_bytes([c[2], c[3]]),
            id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

fn encode_acl(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = ACL_VERSION.to_le_bytes().to_vec();
    for e in entries {
        out.extend(e.tag.to_le_bytes());
        out.extend(e.perm.to_le_bytes());
        out.extend(e.id.to_le_bytes());
    }
    out
}

/// The entries with `uid`'s named entry set to `perm` (or removed), the mask recomputed as
/// `setfacl` does (the union of the group class), sorted as the kernel wants. `None` when
/// no named entry is left: then the plain mode says it all.
fn edit_acl(mut entries: Vec<AclEntry>, uid: u32, perm: Option<u16>) -> Option<Vec<AclEntry>> {
    entries.retain(|e| !(e.tag == TAG_USER && e.id == uid) && e.tag != TAG_MASK);
    if let Some(perm) = perm {
        entries.push(AclEntry {
            tag: TAG_USER,
            perm,
            id: uid,
        });
    }
    if !entries
        .iter()
        .any(|e| e.tag == TAG_USER || e.tag == TAG_GROUP)
    {
        return None;
    }
    let mask = entries
        .iter()
        .filter(|e| matches!(e.tag, TAG_USER | TAG_GROUP | TAG_GROUP_OBJ))
        .fold(0, |m, e| m | e.perm);
    entries.push(AclEntry {
        tag: TAG_MASK,
        perm: mask,
        id: NO_ID,
    });
    entries.sort_by_key(|e| (e.tag, e.id));
    Some(entries)
}

/// Set (`Some`) or remove (`None`) the named ACL entry of `uid` on `path`.
fn acl_set_user(path: &Path, uid: u32, perm: Option<u16>) -> std::io::Result<()> {
    let entries = read_acl(path)?;
    let group_obj = entries
        .iter()
        .find(|e| e.tag == TAG_GROUP_OBJ)
        .map(|e| e.perm)
        .unwrap_or(0);
    let c = cpath(path)?;
    let name = CString::new(ACL_XATTR).map_err(std::io::Error::other)?;
    match edit_acl(entries, uid, perm) {
        Some(entries) => {
            let value = encode_acl(&entries);
            // SAFETY: valid NUL-terminated names and a buffer of the given length.
            let rc = unsafe {
                libc::setxattr(
                    c.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        None => {
            // SAFETY: valid NUL-terminated names.
            let rc = unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ENODATA) {
                    return Err(err);
                }
            }
            // Without an ACL the group bits are the owning group's again, not the mask's.
            let mode = std::fs::metadata(path)?.mode();
            let restored = (mode & !0o070) | (u32::from(group_obj) << 3);
            if restored != mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(restored & 0o7777))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_in_the_range_and_stable() {
        let a = derived_uid("3f2b1c4e-8a9d-4e1f-9b2a-0c1d2e3f4a5b");
        assert_eq!(a, derived_uid("3f2b1c4e-8a9d-4e1f-9b2a-0c1d2e3f4a5b"));
        assert!((UID_BASE..UID_BASE + UID_COUNT).contains(&a));
        assert_ne!(a, derived_uid("3f2b1c4e-8a9d-4e1f-9b2a-0c1d2e3f4a5c"));
    }

    #[test]
    fn a_uid_another_ledger_holds_is_not_handed_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vm = "3f2b1c4e-8a9d-4e1f-9b2a-0c1d2e3f4a5b";
        let first = allocate(dir.path(), vm).expect("uid");
        let other = dir.path().join("other-vm");
        std::fs::create_dir_all(&other).expect("mkdir");
        write_ledger(
            &other,
            &Ledger {
                uid: first.uid,
                entries: Vec::new(),
            },
        )
        .expect("ledger");
        let second = allocate(dir.path(), vm).expect("uid");
        assert_ne!(second.uid, first.uid);
        release(vm);
    }

    #[test]
    fn acl_edits_keep_the_group_class_and_restore() {
        let base = mode_entries(0o640);
        let with = edit_acl(base.clone(), 7, Some(R | W)).expect("named entry");
        assert_eq!(
            with.iter().map(|e| (e.tag, e.perm)).collect::<Vec<_>>(),
            vec![
                (TAG_USER_OBJ, 6),
                (TAG_USER, 6),
                (TAG_GROUP_OBJ, 4),
                (TAG_MASK, 6),
                (TAG_OTHER, 0)
            ]
        );
        assert_eq!(parse_acl(&encode_acl(&with)), with);
        let two = edit_acl(with, 9, Some(X)).expect("two");
        let one = edit_acl(two, 7, None).expect("one left");
        assert!(one.iter().any(|e| e.tag == TAG_USER && e.id == 9));
        assert_eq!(
            one.iter().find(|e| e.tag == TAG_MASK).map(|e| e.perm),
            Some(R | X)
        );
        assert!(edit_acl(one, 9, None).is_none());
    }

    #[test]
    fn grants_are_recorded_and_taken_back() {
        if !available() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let private = dir.path().join("private");
        std::fs::create_dir_all(&run).expect("mkdir");
        std::fs::create_dir_all(&private).expect("mkdir");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let file = private.join("disk");
        std::fs::write(&file, b"x").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let uid = UID_BASE + 12345;
        grant(&run, uid, &[(file.clone(), R | W)]).expect("grant");
        let acl = read_acl(&file).expect("acl");
        assert!(acl.contains(&AclEntry {
            tag: TAG_USER,
            perm: R | W,
            id: uid
        }));
        assert!(read_acl(&private).expect("acl").contains(&AclEntry {
            tag: TAG_USER,
            perm: X,
            id: uid
        }));
        assert_eq!(granted_uid(&run), Some(uid));
        revoke_all(&run, "vm");
        assert_eq!(read_acl(&file).expect("acl"), mode_entries(0o640));
        assert_eq!(std::fs::metadata(&file).expect("md").mode() & 0o777, 0o640);
        assert_eq!(
            std::fs::metadata(&private).expect("md").mode() & 0o777,
            0o700
        );
        assert_eq!(granted_uid(&run), None);
    }
}
