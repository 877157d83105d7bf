//! Faults other than a crash of the agent, each of which must end in a clear error and a
//! consistent state (`common::invariants`): a repository's file system filling up during
//! import, export, copy and disk add (a small loop-mounted ext4 as the repository); a QEMU
//! killed or hung (SIGSTOP) under the agent; the state store becoming read-only. The loop
//! mount and the read-only flag are undone on every exit path (their guards' `Drop`), and
//! need root, as CI runs; without root these tests say so and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
use common::invariants::{inconsistencies, listed, now_ms, stale_running_tasks};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A small ext4 file system on a loop device, mounted on a temporary directory; unmounted
/// (and its loop device released) when dropped, even when the test panics.
struct LoopFs {
    mount: tempfile::TempDir,
    _image_dir: tempfile::TempDir,
    mounted: bool,
}

impl LoopFs {
    fn new(size_mib: u64) -> LoopFs {
        let image_dir = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        // No journal and no reserved blocks: the free space is what the test says it is.
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal",
                image.to_str().unwrap(),
            ],
        );
        unmount_stale();
        let mount = tempfile::Builder::new()
            .prefix(&format!("corral-small-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let mut fs = LoopFs {
            mount,
            _image_dir: image_dir,
            mounted: false,
        };
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                fs.mount.path().to_str().unwrap(),
            ],
        );
        fs.mounted = true;
        fs
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }

    fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.path().to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_frsize
    }

    /// Take all free space but `leave` bytes with a filler file (outside any repository).
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let take = self.free_bytes().saturating_sub(leave);
        run(
            "fallocate",
            &["-l", &take.to_string(), filler.to_str().unwrap()],
        );
        filler
    }
}

/// A test killed outright (a timeout's SIGKILL) cannot unmount in `Drop`: the next run
/// unmounts what runs whose process is gone left (the mount point names the pid).
fn unmount_stale() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let Some(point) = line.split_whitespace().nth(1) else {
            continue;
        };
        let Some(rest) = Path::new(point)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("corral-small-"))
        else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| !pid_alive(p)) {
            let _ = Command::new("umount").args(["-l", point]).status();
            let _ = std::fs::remove_dir(point);
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let p = self.mount.path().to_string_lossy().into_owned();
            let ok = Command::new("umount")
                .arg(&p)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Something still holds a file there: detach now, the kernel finishes later.
                let _ = Command::new("umount").args(["-l", &p]).status();
            }
        }
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// No file left behind, nothing running that should not, nothing half-made.
fn assert_consistent(a: &TestAgent, what: &str) {
    let vms = listed(a);
    let bad = inconsistencies(a, &vms);
    assert!(bad.is_empty(), "after {what}: {bad:#?}");
    let running: Vec<String> = a
        .json(&["task", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "running")
        .map(|t| t.to_string())
        .collect();
    assert!(
        running.is_empty(),
        "after {what}, tasks still run: {running:?}"
    );
}

fn says_no_space(err: &str) -> bool {
    let e = err.to_lowercase();
    e.contains("no space left") || e.contains("not enough space") || e.contains("disk full")
}

#[test]
fn a_full_repository_fails_import_export_copy_and_disk_add_cleanly() {
    if !is_root() {
        eprintln!("skipped: a loop-mounted file system needs root");
        return;
    }
    let g = guest();
    // Declared before the agent, so the agent (and any QEMU) is gone before the unmount.
    let fs = LoopFs::new(48);
    let a = TestAgent::start();
    let sr = fs.path().join("sr");
    std::fs::create_dir_all(&sr).unwrap();
    a.ok(&["sr", "create", "small", "--path", sr.to_str().unwrap()]);
    // A VM whose disk holds about 16 MiB of data, and an archive of it on the big disk.
    let from = format!(",from={}", g.disk_qcow2.display());
    a.create_kernel_vm("src", &["--disk", &from]);
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("src.corral");
    a.ok(&["vm", "export", "src", "-o", archive.to_str().unwrap()]);
    let filler = fs.fill(4 << 20);
    let vms_before: Vec<String> = listed(&a).into_iter().map(|v| v.name).collect();

    // import into the full repository
    let err = a.fails(&[
        "vm",
        "import",
        archive.to_str().unwrap(),
        "--name",
        "imp",
        "--sr",
        "small",
    ]);
    println!("import on a full file system: {}", err.trim());
    assert!(says_no_space(&err), "import: {err}");
    assert!(
        files_under(&sr).is_empty(),
        "import left {:?}",
        files_under(&sr)
    );
    assert_consistent(&a, "the failed import");

    // copy into it
    let err = a.fails(&["vm", "copy", "src", "cp", "--sr", "small"]);
    println!("copy on a full file system: {}", err.trim());
    assert!(says_no_space(&err), "copy: {err}");
    assert!(
        files_under(&sr).is_empty(),
        "copy left {:?}",
        files_under(&sr)
    );
    assert_consistent(&a, "the failed copy");

    // a disk added there, copied from an image
    let disk = format!("64M,sr=small,from={}", g.disk_qcow2.display());
    let err = a.fails(&["vm", "disk", "add", "src", &disk]);
    println!("disk add on a full file system: {}", err.trim());
    assert!(says_no_space(&err), "disk add: {err}");
    assert!(
        files_under(&sr).is_empty(),
        "disk add left {:?}",
        files_under(&sr)
    );
    assert_eq!(a.vm("src")["disks"].as_array().unwrap().len(), 1);
    assert_consistent(&a, "the failed disk add");

    // an export onto the full file system (the client's side fills up)
    let out = fs.path().join("src.corral");
    let err = a.fails(&["vm", "export", "src", "-o", out.to_str().unwrap()]);
    println!("export on a full file system: {}", err.trim());
    assert!(says_no_space(&err), "export: {err}");
    assert!(
        !out.exists() && !fs.path().join("src.corral.partial").exists(),
        "export left {:?}",
        files_under(fs.path())
    );
    // The export's read lease is gone: the VM's disks can change again.
    wait_until(Duration::from_secs(10), "the export task to end", || {
        !a.json(&["task", "list"])
            .to_string()
            .contains("\"running\"")
    });
    a.ok(&["vm", "disk", "add", "src", "8M"]);
    assert_consistent(&a, "the failed export");

    let names: Vec<String> = listed(&a).into_iter().map(|v| v.name).collect();
    assert_eq!(names, vms_before, "no VM came or went");

    // With space again, the same import succeeds; a restart finds everything in order.
    std::fs::remove_file(&filler).unwrap();
    a.ok(&[
        "vm",
        "import",
        archive.to_str().unwrap(),
        "--name",
        "imp",
        "--sr",
        "small",
    ]);
    let mut a = a;
    a.kill9();
    let since = now_ms();
    a.spawn();
    assert_consistent(&a, "a restart");
    assert!(stale_running_tasks(&a, since).is_empty());
    a.ok(&["vm", "delete", "imp"]);
    drop(a);
}

fn qemu_pid(a: &TestAgent, name: &str) -> i32 {
    a.vm(name)["pid"].as_i64().expect("a running VM has a pid") as i32
}

/// Run `f` and return how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

#[test]
fn a_killed_or_hung_qemu_neither_confuses_nor_blocks_the_agent() {
    let a = TestAgent::start();
    for n in ["dies", "hangs", "other"] {
        a.create_kernel_vm(n, &[]);
    }
    a.ok(&["vm", "start", "dies"]);
    a.ok(&["vm", "start", "hangs"]);
    a.wait_console("dies", MARKER, 1, BOOT);
    a.wait_console("hangs", MARKER, 1, BOOT);

    // QEMU killed under the agent: the VM is halted, says why, and starts again.
    let dead = qemu_pid(&a, "dies");
    unsafe { libc::kill(dead, libc::SIGKILL) };
    a.wait_state("dies", "halted", Duration::from_secs(15));
    assert!(a.vm("dies")["pid"].is_null());

    // QEMU hung (SIGSTOP): its monitor stops answering.
    let hung = qemu_pid(&a, "hangs");
    unsafe { libc::kill(hung, libc::SIGSTOP) };
    // An action on the hung VM waits for QEMU at most the monitor's timeout...
    let socket = a.socket.clone();
    let pause = std::thread::spawn(move || {
        let t = Instant::now();
        let out = Command::new(corral_bin())
            .arg("--connect")
            .arg(&socket)
            .args(["vm", "pause", "hangs"])
            .output()
            .unwrap();
        (out, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    // ...and meanwhile the API and the other VMs do not wait for it.
    for args in [
        vec!["vm", "list"],
        vec!["vm", "show", "hangs"],
        vec!["host", "info"],
        vec!["task", "list"],
    ] {
        let (_, took) = timed(|| a.ok(&args));
        assert!(
            took < Duration::from_secs(3),
            "{args:?} took {took:?} while a QEMU hangs"
        );
    }
    let (_, took) = timed(|| a.ok(&["vm", "disk", "add", "other", "8M"]));
    assert!(
        took < Duration::from_secs(5),
        "disk add on another VM took {took:?}"
    );
    let (_, took) = timed(|| a.ok(&["vm", "start", "dies"]));
    assert!(
        took < Duration::from_secs(20),
        "start of another VM took {took:?}"
    );
    let (out, took) = pause.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "pausing a hung QEMU cannot succeed");
    assert!(
        err.contains("did not answer") || err.contains("timed out") || err.contains("timeout"),
        "pause of a hung QEMU: {err}"
    );
    println!("pause of a hung QEMU failed after {took:?}: {}", err.trim());
    assert!(took < Duration::from_secs(20), "pause took {took:?}");
    // The hung VM still shows as running (its QEMU exists), with its pid.
    assert_eq!(a.power_state("hangs"), "running");

    // Force-off works on a hung QEMU, within a bounded time.
    let (_, took) = timed(|| a.ok(&["vm", "poweroff", "hangs"]));
    println!("poweroff of a hung QEMU took {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "poweroff of a hung QEMU took {took:?}"
    );
    assert_eq!(a.power_state("hangs"), "halted");
    wait_until(Duration::from_secs(5), "the hung QEMU to be gone", || {
        !pid_alive(hung as u32) || {
            // A zombie waiting for init is gone for our purposes.
            std::fs::read_to_string(format!("/proc/{hung}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        }
    });
    a.ok(&["vm", "poweroff", "dies"]);
    assert_consistent(&a, "a killed and a hung QEMU");
}

/// `chattr +i` on the store's files (root may write any file, but not an immutable one; an
/// already open descriptor is refused too), undone on drop.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(files: Vec<PathBuf>) -> Immutable {
        let files: Vec<PathBuf> = files.into_iter().filter(|f| f.exists()).collect();
        for f in &files {
            run("chattr", &["+i", f.to_str().unwrap()]);
        }
        Immutable(files)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(f).status();
        }
    }
}

/// The database and its write-ahead log. Not the `-shm` index: SQLite maps it into memory,
/// and a write fault on a mapped page is SIGBUS, which is not what a read-only store does.
fn store_files(a: &TestAgent) -> Vec<PathBuf> {
    ["corral.db", "corral.db-wal"]
        .iter()
        .map(|n| a.state_dir().join(n))
        .collect()
}

#[test]
fn a_read_only_store_refuses_changes_cleanly() {
    if !is_root() {
        eprintln!("skipped: chattr needs root");
        return;
    }
    let mut a = TestAgent::start();
    a.create_kernel_vm("kept", &[]);
    let kept = a.vm("kept");
    let sr = a.state_dir().join("srs/default");
    let volumes_before = files_under(&sr);
    {
        let _ro = Immutable::set(store_files(&a));
        // Changes are refused with an error that says the state could not be written...
        for args in [
            vec![
                "vm", "create", "--name", "new", "--memory", "64M", "--disk", "8M",
            ],
            vec!["vm", "delete", "kept"],
            vec!["vm", "set", "kept", "--description", "changed"],
            vec!["vm", "disk", "add", "kept", "8M"],
            vec!["vm", "clone", "kept", "twin"],
        ] {
            let (err, took) = timed(|| a.fails(&args));
            assert!(
                took < Duration::from_secs(30),
                "{args:?} took {took:?} on a read-only store"
            );
            let e = err.to_lowercase();
            assert!(
                e.contains("state") || e.contains("store") || e.contains("database"),
                "{args:?}: the error should name the state store: {err}"
            );
        }
        // ...reads still answer, and nothing was half-done.
        assert_eq!(a.vm("kept")["disks"], kept["disks"]);
        assert_eq!(a.vm("kept")["description"], kept["description"]);
        let names: Vec<String> = listed(&a).into_iter().map(|v| v.name).collect();
        assert_eq!(names, vec!["kept".to_string()]);
        assert_eq!(files_under(&sr), volumes_before, "no volume came or went");
        assert_consistent_files(&a);
    }
    // Writable again: the agent carries on, and a restart agrees with what was answered.
    a.ok(&["vm", "set", "kept", "--description", "changed"]);
    a.kill9();
    // The agent refuses to start on a read-only store, saying why, instead of half-starting.
    {
        let _ro = Immutable::set(store_files(&a));
        let mut child = Command::new(corral_bin())
            .args(["serve", "--accel", "tcg", "--state-dir"])
            .arg(a.state_dir())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent kept running on a read-only store");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{text}");
        assert!(
            text.to_lowercase().contains("state"),
            "the refusal should name the state: {text}"
        );
    }
    a.spawn();
    assert_eq!(a.vm("kept")["description"], "changed");
    assert_consistent(&a, "a read-only store and a restart");
}

/// The file-level part of [`assert_consistent`] (tasks cannot be recorded as finished while
/// the store refuses writes, so they are checked after it is writable again).
fn assert_consistent_files(a: &TestAgent) {
    let vms = listed(a);
    let bad = inconsistencies(a, &vms);
    assert!(bad.is_empty(), "{bad:#?}");
}
