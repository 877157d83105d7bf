//! Confinement of a QEMU process: the identity it runs as and the seccomp sandbox it asks
//! QEMU for, as typed values of the launch ([`crate::argv::Launch`]), and the privilege drop
//! that [`crate::process::spawn_confined`] performs between `fork` and `exec`.
//!
//! Why the agent drops privileges itself instead of QEMU's `-runas`: `-runas` switches user
//! only after QEMU has opened every disk, socket and device as root, so a file the VM should
//! not reach would still be opened; and QEMU 7.2's `-runas` takes a user name (or
//! `uid:gid`) but never empties the capability bounding set. Dropping before `exec` makes
//! QEMU open everything as the VM's own user from its first instruction, with no
//! supplementary groups, an empty capability bounding set (so no later `execve` of a setuid
//! binary could give anything back either) and `PR_SET_NO_NEW_PRIVS`.
//!
//! Why not `-daemonize`: QEMU 7.2 installs its seccomp filter before it daemonizes, and
//! `spawn=deny` forbids the `fork` that `-daemonize` needs (QEMU dies with SIGSYS, measured
//! here). The agent starts QEMU in its own session instead (`setsid` before `exec`), which
//! outlives the agent just the same.

use serde::{Deserialize, Serialize};

/// The `-sandbox` value every confined QEMU gets: the seccomp filter on, and the obsolete
/// system calls, privilege changes (setuid and friends), process creation (fork, exec) and
/// resource control (scheduler, affinity, priorities) denied.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The unprivileged identity one QEMU process runs as. Never root: [`crate::argv::build_argv`]
/// refuses uid or gid 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// The highest capability number this kernel knows, for emptying the bounding set.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(63)
}

/// What the child does between `fork` and `exec`: a new session, the passed descriptors made
/// inheritable, then (with an identity) the capability bounding set emptied, the ambient set
/// cleared, no supplementary groups, the gid and uid switched (real, effective and saved),
/// and no new privileges. Only async-signal-safe system calls: this runs in the forked child
/// of a multi-threaded process.
pub(crate) struct PreExec {
    identity: Option<Identity>,
    keep_fds: Vec<i32>,
    last_cap: u32,
}

impl PreExec {
    pub(crate) fn new(identity: Option<Identity>, keep_fds: &[i32]) -> Self {
        PreExec {
            identity,
            keep_fds: keep_fds.to_vec(),
            last_cap: last_capability(),
        }
    }

    pub(crate) fn run(&self) -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        // SAFETY: plain system calls on values owned by this closure; no allocation.
        unsafe {
            if libc::setsid() < 0 {
                return Err(err());
            }
            for &fd in &self.keep_fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(err());
                }
            }
            let Some(id) = self.identity else {
                return Ok(());
            };
            for cap in 0..=self.last_cap {
                // EINVAL for a number this kernel does not have: nothing to drop.
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    return Err(err());
                }
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(err());
            }
            if libc::setgroups(0, std::ptr::null()) < 0
                || libc::setresgid(id.gid, id.gid, id.gid) < 0
                || libc::setresuid(id.uid, id.uid, id.uid) < 0
            {
                return Err(err());
            }
            // A failed switch must never exec QEMU as root.
            if libc::getuid() != id.uid || libc::geteuid() != id.uid || libc::getegid() != id.gid {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(err());
            }
        }
        Ok(())
    }
}

/// The identity fields of `/proc/PID/status` that matter for confinement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessCredentials {
    /// Real, effective, saved, filesystem.
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub groups: Vec<u32>,
    /// `CapEff` as a bit set.
    pub cap_eff: u64,
    pub cap_bnd: u64,
    /// `Seccomp`: 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    pub no_new_privs: bool,
}

/// Read a process's credentials from `/proc/PID/status`.
pub fn process_credentials(pid: u32) -> std::io::Result<ProcessCredentials> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse_status(&text))
}

fn parse_status(text: &str) -> ProcessCredentials {
    let mut c = ProcessCredentials::default();
    let nums = |v: &str| -> Vec<u32> {
        v.split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    let hex = |v: &str| u64::from_str_radix(v.trim(), 16).unwrap_or(u64::MAX);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "Uid" => c.uids = nums(value),
            "Gid" => c.gids = nums(value),
            "Groups" => c.groups = nums(value),
            "CapEff" => c.cap_eff = hex(value),
            "CapBnd" => c.cap_bnd = hex(value),
            "Seccomp" => c.seccomp = value.trim().parse().unwrap_or(0),
            "NoNewPrivs" => c.no_new_privs = value.trim() == "1",
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let c = parse_status(
            "Name:\tqemu\nUid:\t2080374800\t2080374800\t2080374800\t2080374800\nGid:\t7\t7\t7\t7\nGroups:\t \nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nNoNewPrivs:\t1\nSeccomp:\t2\n",
        );
        assert_eq!(c.uids, vec![2080374800; 4]);
        assert_eq!(c.gids, vec![7; 4]);
        assert!(c.groups.is_empty());
        assert_eq!(c.cap_eff, 0);
        assert_eq!(c.cap_bnd, 0x1ff_ffff_ffff);
        assert_eq!(c.seccomp, 2);
        assert!(c.no_new_privs);
    }
}
