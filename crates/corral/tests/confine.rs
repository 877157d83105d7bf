//! End-to-end: a VM's QEMU is confined (issue 13). Real agents (root), real QEMUs under TCG.
//!
//! From the identity a running QEMU has (uid, gid and groups read from `/proc/PID/status`,
//! entered with `setpriv`), its own disk is readable, another VM's disk, the state database
//! and the API token are not; the process has no capabilities, no way to gain any, a seccomp
//! filter and its own cgroup; a QEMU made to spawn a helper (a bridge netdev's helper, hot
//! added over a second monitor or given at launch) is killed by the filter and the helper
//! never runs; the grants are taken back when the VM stops, also after an agent restart
//! that re-attached the VM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const UID_BASE: u32 = 0x7C00_0000;
const UID_COUNT: u32 = 0x1_0000;

struct Creds {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    fields: std::collections::HashMap<String, String>,
}

fn creds(pid: u32) -> Creds {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let fields: std::collections::HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    let nums = |k: &str| -> Vec<u32> {
        fields[k]
            .split_whitespace()
            .map(|n| n.parse().expect("number"))
            .collect()
    };
    let uids = nums("Uid");
    let gids = nums("Gid");
    assert!(uids.iter().all(|u| *u == uids[0]), "uids differ: {uids:?}");
    assert!(gids.iter().all(|g| *g == gids[0]), "gids differ: {gids:?}");
    Creds {
        uid: uids[0],
        gid: gids[0],
        groups: nums("Groups"),
        fields,
    }
}

/// Run `head -c 1 PATH` as the QEMU's identity; `Ok` if it could read.
fn read_as(c: &Creds, path: &Path) -> Result<(), String> {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", c.uid))
        .arg(format!("--regid={}", c.gid));
    if c.groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = c.groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    let out = cmd
        .args(["head", "-c", "1"])
        .arg(path)
        .output()
        .expect("setpriv");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn vm_id(a: &TestAgent, name: &str) -> String {
    a.vm(name)["id"].as_str().expect("id").to_string()
}

fn disk_path(a: &TestAgent, name: &str) -> PathBuf {
    PathBuf::from(a.vm(name)["disks"][0]["path"].as_str().expect("disk path"))
}

fn qemu_pid(a: &TestAgent, name: &str) -> u32 {
    let pidfile = a
        .state_dir()
        .join("run")
        .join(vm_id(a, name))
        .join("qemu.pid");
    let mut pid = 0;
    wait_until(Duration::from_secs(10), "QEMU's pid file", || {
        pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        pid > 1
    });
    pid
}

/// The named ACL entries (`user` tag) of a path: (uid, perm).
fn acl_users(path: &Path) -> Vec<(u32, u16)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and buffer.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Vec::new();
    }
    buf[4..n as usize]
        .chunks_exact(8)
        .filter(|e| u16::from_le_bytes([e[0], e[1]]) == 2)
        .map(|e| {
            (
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                u16::from_le_bytes([e[2], e[3]]),
            )
        })
        .collect()
}

/// Every path from `path` up to `/` with a named ACL entry for `uid`.
fn entries_for(uid: u32, paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for p in paths {
        for a in p.ancestors() {
            if acl_users(a).iter().any(|(u, _)| *u == uid) && !found.contains(&a.to_path_buf()) {
                found.push(a.to_path_buf());
            }
        }
    }
    found
}

#[test]
fn a_confined_qemu_reaches_only_its_own_files() {
    if !is_root() {
        eprintln!("skipped: confinement needs a root agent");
        return;
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let mut a = TestAgent::start_with(&["--listen", &listen]);
    for name in ["conf1", "conf2"] {
        a.create_kernel_vm(name, &["--disk", "16M"]);
        a.ok(&["vm", "start", name]);
    }
    let (pid1, pid2) = (qemu_pid(&a, "conf1"), qemu_pid(&a, "conf2"));
    let (c1, c2) = (creds(pid1), creds(pid2));

    // Identity: its own dynamic user, no groups, no capabilities, seccomp filter on.
    for c in [&c1, &c2] {
        assert!(
            (UID_BASE..UID_BASE + UID_COUNT).contains(&c.uid),
            "uid {} outside corral's range",
            c.uid
        );
        assert_eq!(c.gid, c.uid);
        assert!(c.groups.is_empty(), "groups {:?}", c.groups);
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(c.fields[cap], "0000000000000000", "{cap}");
        }
        assert_eq!(c.fields["Seccomp"], "2", "seccomp filter mode");
        assert_eq!(c.fields["NoNewPrivs"], "1");
    }
    assert_ne!(c1.uid, c2.uid, "each VM has its own user");
    let cmdline = std::fs::read(format!("/proc/{pid1}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ),
        "{cmdline}"
    );
    // Its own cgroup (the cpu controller's `corral/<vm-uuid>` here).
    let cgroup = std::fs::read_to_string(format!("/proc/{pid1}/cgroup")).expect("cgroup");
    assert!(
        cgroup.contains(&format!("corral/{}", vm_id(&a, "conf1"))),
        "{cgroup}"
    );

    // Files: its own disk yes; the other VM's disk and console log, the store and the token
    // no.
    let (d1, d2) = (disk_path(&a, "conf1"), disk_path(&a, "conf2"));
    let state = a.state_dir().to_path_buf();
    let run2 = state.join("run").join(vm_id(&a, "conf2"));
    read_as(&c1, &d1).expect("QEMU reads its own disk");
    read_as(&c2, &d2).expect("QEMU reads its own disk");
    for (what, path) in [
        ("another VM's disk", d2.clone()),
        ("another VM's console log", run2.join("serial.log")),
        ("the state database", state.join("corral.db")),
        ("the API token", state.join("token")),
    ] {
        assert!(path.exists(), "{what}: {} missing", path.display());
        let err = read_as(&c1, &path).expect_err(what);
        assert!(err.contains("Permission denied"), "{what}: {err}");
    }
    assert!(read_as(&c2, &d1).is_err(), "conf2 reads conf1's disk");
    a.wait_console("conf1", MARKER, 1, BOOT);

    // Stop: every grant of conf1's user is gone, the disk is back to root's alone.
    let granted1 = [
        d1.clone(),
        a.state_dir().join("run").join(vm_id(&a, "conf1")),
    ];
    assert!(!entries_for(c1.uid, &granted1).is_empty(), "no grants seen");
    a.ok(&["vm", "poweroff", "conf1"]);
    wait_until(Duration::from_secs(10), "conf1's QEMU to exit", || {
        !pid_alive(pid1)
    });
    let g = guest();
    let mut shared = granted1.to_vec();
    shared.extend([g.kernel.clone(), g.initrd.clone()]);
    assert_eq!(entries_for(c1.uid, &shared), Vec::<PathBuf>::new());
    let md = std::fs::metadata(&d1).expect("disk");
    assert_eq!((md.uid(), md.gid()), (0, 0));
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "disk mode");
    assert!(
        read_as(&c1, &d1).is_err(),
        "a stopped VM's user keeps its disk"
    );

    // An agent restart re-attaches the running confined VM; stopping it still takes its
    // grants back (the ledger is in the run directory, root's).
    a.kill9();
    a.spawn();
    assert_eq!(a.power_state("conf2"), "running");
    assert_eq!(qemu_pid(&a, "conf2"), pid2);
    assert!(read_as(&c2, &d2).is_ok());
    a.ok(&["vm", "poweroff", "conf2"]);
    wait_until(Duration::from_secs(10), "conf2's QEMU to exit", || {
        !pid_alive(pid2)
    });
    assert_eq!(
        entries_for(c2.uid, &[d2.clone(), run2.clone(), g.kernel.clone()]),
        Vec::<PathBuf>::new()
    );
    // And it starts again, confined.
    a.ok(&["vm", "start", "conf2"]);
    a.wait_console("conf2", MARKER, 1, BOOT);
    assert_eq!(creds(qemu_pid(&a, "conf2")).fields["Seccomp"], "2");
    a.ok(&["vm", "poweroff", "conf2"]);
}

/// A directory anyone may read and search (the wrapper below runs as the VM's user).
fn public_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("corral-confine-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).expect("script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn a_confined_qemu_cannot_spawn_a_process() {
    if !is_root() {
        eprintln!("skipped: confinement needs a root agent");
        return;
    }
    let dir = public_dir();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).expect("mkdir");
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let marker = sockets.join("helper-ran");
    let helper = dir.path().join("helper.sh");
    write_script(&helper, &format!("#!/bin/sh\ntouch {}\n", marker.display()));
    let netdev = format!("bridge,id=evil,br=corralnone0,helper={}", helper.display());

    // Control: without the sandbox, QEMU runs a bridge netdev's helper.
    let _ = Command::new("qemu-system-x86_64")
        .args(["-machine", "none", "-nodefaults", "-display", "none"])
        .args(["-netdev", &netdev])
        .output()
        .expect("qemu");
    assert!(marker.exists(), "the helper should run without a sandbox");
    std::fs::remove_file(&marker).expect("rm");

    // The agent's QEMU, with a second monitor (or, when asked, the same netdev at launch)
    // added by a wrapper: what an attacker in control of QEMU could do.
    let extra_qmp = sockets.join("extra-qmp.sock");
    let evil_launch = dir.path().join("evil-launch");
    let wrapper = dir.path().join("qemu-wrapper");
    write_script(
        &wrapper,
        &format!(
            "#!/bin/sh\ncase \" $* \" in *\" -uuid \"*) ;; *) exec qemu-system-x86_64 \"$@\" ;; esac\n\
             if [ -e {evil} ]; then exec qemu-system-x86_64 \"$@\" -netdev {netdev}; fi\n\
             exec qemu-system-x86_64 \"$@\" -qmp unix:{qmp},server=on,wait=off\n",
            evil = evil_launch.display(),
            qmp = extra_qmp.display(),
        ),
    );
    let a = TestAgent::start_with(&["--qemu", wrapper.to_str().expect("utf-8")]);
    a.create_kernel_vm("spawner", &[]);
    a.ok(&["vm", "start", "spawner"]);
    let pid = qemu_pid(&a, "spawner");
    assert_eq!(creds(pid).fields["Seccomp"], "2");

    // Hot-add over the second monitor: the fork for the helper is denied and the filter
    // kills QEMU (QEMU 7.2's action for a denied system call); the helper never runs, and
    // the agent sees the VM stop.
    let mut s = std::os::unix::net::UnixStream::connect(&extra_qmp).expect("extra QMP");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    assert!(line.contains("QMP"), "{line}");
    writeln!(s, r#"{{"execute":"qmp_capabilities"}}"#).expect("send");
    line.clear();
    r.read_line(&mut line).expect("caps");
    writeln!(
        s,
        r#"{{"execute":"netdev_add","arguments":{{"type":"bridge","id":"evil","br":"corralnone0","helper":"{}"}}}}"#,
        helper.display()
    )
    .expect("send");
    line.clear();
    let _ = r.read_line(&mut line);
    assert!(!line.contains("\"return\""), "netdev_add succeeded: {line}");
    wait_until(Duration::from_secs(10), "QEMU killed by its filter", || {
        !pid_alive(pid)
    });
    a.wait_state("spawner", "halted", Duration::from_secs(20));
    assert!(!marker.exists(), "the helper ran");

    // At launch: QEMU dies of SIGSYS while it initialises, the start fails saying so, and
    // nothing ran.
    std::fs::write(&evil_launch, b"").expect("flag");
    let err = a.fails(&["vm", "start", "spawner"]);
    assert!(err.contains("QEMU did not start"), "{err}");
    assert!(err.contains("SIGSYS"), "{err}");
    assert!(!marker.exists(), "the helper ran");
    assert_eq!(a.power_state("spawner"), "halted");
    std::fs::remove_file(&evil_launch).expect("rm");
    a.ok(&["vm", "start", "spawner"]);
    a.wait_console("spawner", MARKER, 1, BOOT);
    a.ok(&["vm", "poweroff", "spawner"]);
}
