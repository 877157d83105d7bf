//! Self-fencing: a host that cannot renew its pool membership lease kills its own HA VMs
//! before the lease can expire, so a survivor that restarts them (after the lease expired
//! plus a delay) never overlaps with the old copy. See `docs/pools.md`, "Fencing timeline".
//!
//! The killing is done by a **fence guard**, a small process apart from the agent
//! (`corral fence-guard`, started by the agent, one per state directory), because the
//! agent is exactly what may be frozen or dead when fencing is needed. They talk through
//! files in `STATE/run/fence/`:
//! - `deadline`: a `CLOCK_MONOTONIC` time in milliseconds (a system-wide clock, so two
//!   processes compare it). The agent moves it forward after every successful lease renewal
//!   to `time the renewal was sent + TTL - margin`.
//! - `armed/<vm-id>`: `<pid> <start time>` of each running HA VM's QEMU. The start time
//!   (field 22 of `/proc/<pid>/stat`) guards against a reused pid.
//! - `log`: one line per VM the guard killed.
//!
//! The guard polls every 100 ms; once the monotonic clock passes the deadline it kills every
//! armed QEMU with SIGKILL and removes its file. An agent restart keeps guests running: the
//! new agent renews the same lease (`lease` file) and moves the deadline on before it passes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the guard looks at the deadline.
pub const GUARD_POLL: Duration = Duration::from_millis(100);

/// Milliseconds of `CLOCK_MONOTONIC` (not `Instant`, which is opaque to other processes).
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The agent's side of the files.
#[derive(Debug, Clone)]
pub struct FenceFiles {
    dir: PathBuf,
}

impl FenceFiles {
    pub fn new(state_dir: &Path) -> Self {
        FenceFiles {
            dir: state_dir.join("run").join("fence"),
        }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    fn armed_dir(&self) -> PathBuf {
        self.dir.join("armed")
    }

    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.armed_dir())
    }

    /// Move the deadline (monotonic ms), atomically.
    pub fn set_deadline(&self, deadline_ms: u64) -> std::io::Result<()> {
        write_atomic(
            &self.dir.join("deadline"),
            format!("{deadline_ms}\n").as_bytes(),
        )
    }

    pub fn deadline(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("deadline"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The guard must kill this QEMU when the deadline passes.
    pub fn arm(&self, vm_id: &str, pid: u32) -> std::io::Result<()> {
        let start = process_start_time(pid).unwrap_or(0);
        write_atomic(
            &self.armed_dir().join(vm_id),
            format!("{pid} {start}\n").as_bytes(),
        )
    }

    pub fn disarm(&self, vm_id: &str) {
        let _ = std::fs::remove_file(self.armed_dir().join(vm_id));
    }

    pub fn is_armed(&self, vm_id: &str) -> bool {
        self.armed_dir().join(vm_id).exists()
    }

    /// The lease this host renews, kept so a restarted agent renews the same one.
    pub fn saved_lease(&self) -> Option<i64> {
        std::fs::read_to_string(self.dir.join("lease"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
    pub fn save_lease(&self, lease: i64) -> std::io::Result<()> {
        write_atomic(&self.dir.join("lease"), format!("{lease}\n").as_bytes())
    }

    /// Lines of the guard's log (what it killed), oldest first.
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log"))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Kill every armed QEMU whose deadline has passed; answers the VM ids killed. The
    /// guard's one step, also run by the agent itself when it sees its lease lost.
    pub fn fence_if_due(&self, now_ms: u64) -> Vec<String> {
        let Some(deadline) = self.deadline() else {
            return Vec::new();
        };
        if now_ms <= deadline {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir(self.armed_dir()) else {
            return Vec::new();
        };
        let mut killed = Vec::new();
        for entry in entries.flatten() {
            let vm = entry.file_name().to_string_lossy().to_string();
            if vm.ends_with(".tmp") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let mut parts = text.split_whitespace();
            let pid: Option<u32> = parts.next().and_then(|p| p.parse().ok());
            let start: Option<u64> = parts.next().and_then(|p| p.parse().ok());
            if let Some(pid) = pid.filter(|p| *p > 1) {
                // Only the process that was armed: a pid reused since is left alone.
                let same = start.is_none_or(|s| s == 0 || process_start_time(pid) == Some(s));
                if same {
                    // SAFETY: plain kill(2) of a pid we recorded.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    let _ = append_line(
                        &self.dir.join("log"),
                        &format!(
                            "{} killed QEMU {pid} of VM {vm}: lease deadline {deadline} passed (now {now_ms})",
                            wall_ms()
                        ),
                    );
                    killed.push(vm.clone());
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
        killed
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")
}

/// The guard's main loop (`corral fence-guard --state-dir DIR`). One guard per state
/// directory: it holds an exclusive `flock` on `guard.lock` and exits if another has it. It
/// ends when the fence directory disappears (the state was removed).
pub fn run_guard(state_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let files = FenceFiles::new(state_dir);
    files.create()?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(files.dir.join("guard.lock"))?;
    // SAFETY: flock on a descriptor we own; it is held until the process exits.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(()); // another guard watches this state directory
    }
    loop {
        if !files.armed_dir().is_dir() {
            return Ok(());
        }
        files.fence_if_due(monotonic_ms());
        std::thread::sleep(GUARD_POLL);
    }
}

/// Whether a guard holds the lock of this state directory.
pub fn guard_running(state_dir: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let files = FenceFiles::new(state_dir);
    let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(files.dir.join("guard.lock"))
    else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `f` is dropped.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    !free
}

/// Start the guard (this executable with `fence-guard`) in its own session so it outlives
/// the agent, unless one runs already.
pub fn ensure_guard(state_dir: &Path, exe: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    FenceFiles::new(state_dir).create()?;
    if guard_running(state_dir) {
        return Ok(());
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("fence-guard")
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid in the child before exec: the guard leaves the agent's session and
    // process group, so a signal to the agent's group does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // Reap it in the background if it exits early (another guard won the lock).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    // The guard takes its lock at once; wait briefly so a caller can rely on it.
    for _ in 0..50 {
        if guard_running(state_dir) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(std::io::Error::other("the fence guard did not start"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn nothing_is_killed_before_the_deadline_and_everything_armed_after() {
        let dir = tempfile::tempdir().unwrap();
        let files = FenceFiles::new(dir.path());
        files.create().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        files.arm("vm-a", child.id()).unwrap();
        let now = monotonic_ms();
        // No deadline yet: never armed against.
        assert!(files.fence_if_due(now).is_empty());
        files.set_deadline(now + 10_000).unwrap();
        assert!(files.fence_if_due(now).is_empty());
        assert!(files.is_armed("vm-a"));
        assert_eq!(files.fence_if_due(now + 10_001), vec!["vm-a".to_string()]);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!files.is_armed("vm-a"));
        assert_eq!(files.log().len(), 1);
    }

    #[test]
    fn a_reused_pid_is_not_killed() {
        let dir = tempfile::tempdir().unwrap();
        let files = FenceFiles::new(dir.path());
        files.create().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Armed with a start time that is not this process's: as if the pid was reused.
        std::fs::write(
            files.armed_dir().join("vm-b"),
            format!("{} 1\n", child.id()),
        )
        .unwrap();
        files.set_deadline(1).unwrap();
        assert!(files.fence_if_due(monotonic_ms()).is_empty());
        assert!(child.try_wait().unwrap().is_none(), "a stranger was killed");
        child.kill().unwrap();
        let _ = child.wait();
    }

    #[test]
    fn start_time_parses_names_with_spaces_and_parentheses() {
        let me = std::process::id();
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(u32::MAX), None);
    }
}
