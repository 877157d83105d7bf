//! QEMU processes: start them detached, find them again, stop them.
//!
//! A VM's QEMU must outlive the agent, so it is started with `-daemonize`: the process the
//! agent spawns forks the real QEMU (which calls `setsid()` and writes the pid file) and exits
//! once initialisation succeeded or failed. [`spawn_daemonized`] waits for that exit, and on
//! failure returns QEMU's own stderr text, which went to the VM's log file. After an agent
//! restart, [`find_vm_process`] reads the pid file and checks `/proc/PID/cmdline` really is
//! QEMU started with that VM's `-uuid` (pids are reused), so the agent never adopts or
//! signals a stranger.

use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corral_model::ErrorKind;

/// The QEMU binary corral runs unless configured otherwise.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// How much of QEMU's stderr a start error quotes.
const STDERR_TAIL: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open QEMU log {path:?}")]
    OpenLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {binary:?}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU argv lacks -daemonize; refusing to wait for a process that never detaches")]
    NotDaemonized,
    #[error("a confined QEMU cannot -daemonize (its sandbox forbids the fork)")]
    Daemonized,
    #[error("QEMU failed to start ({status}): {stderr}")]
    StartFailed { status: String, stderr: String },
    #[error("QEMU did not finish starting within {after:?}: {stderr}")]
    StartTimeout { after: Duration, stderr: String },
    #[error("cannot read pid file {path:?}")]
    ReadPidfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pid file {path:?} does not hold a process id: {content:?}")]
    BadPidfile { path: PathBuf, content: String },
    #[error("refusing to signal pid {pid}")]
    BadPid { pid: u32 },
    #[error("cannot signal pid {pid}")]
    Signal {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU started but its monitor did not answer")]
    Monitor(#[source] crate::qmp::QmpError),
    #[error("cannot read the QEMU version from {binary:?}: {message}")]
    Version { binary: PathBuf, message: String },
}

impl ProcessError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProcessError::StartFailed { .. } => ErrorKind::InvalidInput,
            // QEMU that did not detach in time: a wait that ran out, as the API names it.
            ProcessError::StartTimeout { .. } => ErrorKind::Timeout,
            ProcessError::Monitor(e) => e.kind(),
            _ => ErrorKind::Internal,
        }
    }
}

/// Start QEMU with `argv` (which must contain `-daemonize` and `-pidfile PIDFILE`), its
/// stdout and stderr appended to `log`, and wait up to `timeout` for it to detach.
/// Returns the pid of the detached QEMU, read from `pidfile`.
pub async fn spawn_daemonized(
    binary: &Path,
    argv: &[String],
    log: &Path,
    pidfile: &Path,
    timeout: Duration,
) -> Result<u32, ProcessError> {
    if !argv.iter().any(|a| a == "-daemonize") {
        return Err(ProcessError::NotDaemonized);
    }
    let open_err = |source| ProcessError::OpenLog {
        path: log.to_path_buf(),
        source,
    };
    let (out, start_offset) = open_log(binary, argv, log)?;
    let err = out.try_clone().map_err(open_err)?;
    // A stale pid file or runtime log from an earlier run must not be mistaken for this one.
    let _ = std::fs::remove_file(pidfile);
    if let Some(w) = argv.windows(2).find(|w| w[0] == "-D") {
        let _ = std::fs::remove_file(&w[1]);
    }

    let mut child = tokio::process::Command::new(binary)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        // Own process group: a Ctrl-C aimed at the agent's terminal does not reach QEMU
        // in the instant before it calls setsid().
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            return Err(ProcessError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })
        }
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            // The detached child may exist already; stop it so nothing half-started lingers.
            if let Ok(pid) = read_pidfile(pidfile) {
                if let Ok(cmdline) = read_cmdline(pid) {
                    if cmdline.iter().any(|a| a == "-pidfile") && is_qemu(&cmdline) {
                        let _ = send_signal(pid, Signal::Kill);
                    }
                }
            }
            return Err(ProcessError::StartTimeout {
                after: timeout,
                stderr: startup_messages(log, start_offset, argv),
            });
        }
    };
    if !status.success() {
        return Err(ProcessError::StartFailed {
            status: status.to_string(),
            stderr: startup_messages(log, start_offset, argv),
        });
    }
    read_pidfile(pidfile)
}

/// Open `log` for appending and write the "starting QEMU" line with the command line.
/// Returns the file and the offset where this start's output begins.
fn open_log(
    binary: &Path,
    argv: &[String],
    log: &Path,
) -> Result<(std::fs::File, u64), ProcessError> {
    let open_err = |source| ProcessError::OpenLog {
        path: log.to_path_buf(),
        source,
    };
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(open_err)?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    writeln!(
        out,
        "--- corral: starting QEMU at unix time {stamp}: {} {}",
        binary.display(),
        shell_words(argv)
    )
    .map_err(open_err)?;
    let offset = out.seek(SeekFrom::End(0)).map_err(open_err)?;
    Ok((out, offset))
}

/// Start a confined QEMU (see [`crate::confine`]): in its own session, as `identity` when
/// given (else as the agent's own user), with `keep_fds` (tap devices, listening sockets,
/// all opened close-on-exec by the caller) inherited under their own numbers, stdout and
/// stderr appended to `log`. The argv must not contain `-daemonize` (the sandbox forbids
/// the fork it needs). Returns the pid and a QMP session on `qmp_socket` once QEMU answers,
/// which is after it initialised every device (with `-S`, before the vCPUs run). When QEMU
/// exits first, the error quotes what it said.
///
/// QEMU stays the agent's child while the agent lives (a task reaps it when it exits, so
/// it never lingers as a zombie); it is in its own session, so it outlives the agent.
pub async fn spawn_confined(
    binary: &Path,
    argv: &[String],
    log: &Path,
    identity: Option<crate::confine::Identity>,
    keep_fds: &[i32],
    qmp_socket: &Path,
    timeout: Duration,
) -> Result<(u32, crate::qmp::Qmp), ProcessError> {
    use std::os::unix::process::CommandExt;
    if argv.iter().any(|a| a == "-daemonize") {
        return Err(ProcessError::Daemonized);
    }
    let (out, start_offset) = open_log(binary, argv, log)?;
    let err = out.try_clone().map_err(|source| ProcessError::OpenLog {
        path: log.to_path_buf(),
        source,
    })?;
    let pre = crate::confine::PreExec::new(identity, keep_fds);
    let mut cmd = std::process::Command::new(binary);
    cmd.args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    // SAFETY: `PreExec::run` makes only async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || pre.run());
    }
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    let Some(pid) = child.id() else {
        return Err(ProcessError::StartFailed {
            status: "exited at once".into(),
            stderr: startup_messages(log, start_offset, argv),
        });
    };
    let connect = crate::qmp::Qmp::connect(qmp_socket, timeout);
    let outcome = tokio::select! {
        qmp = connect => Ok(qmp),
        status = child.wait() => Err(status),
    };
    match outcome {
        Ok(Ok(qmp)) => {
            // Reap QEMU when it exits, so `is_alive` and the actor see it gone at once.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            Ok((pid, qmp))
        }
        Ok(Err(e)) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            if matches!(e, crate::qmp::QmpError::Timeout { .. }) {
                return Err(ProcessError::StartTimeout {
                    after: timeout,
                    stderr: startup_messages(log, start_offset, argv),
                });
            }
            Err(ProcessError::Monitor(e))
        }
        Err(status) => Err(ProcessError::StartFailed {
            status: status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string()),
            stderr: startup_messages(log, start_offset, argv),
        }),
    }
}

/// The tail of a file from `offset` on, at most the last few KiB, trimmed.
fn read_tail(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).is_ok() {
                let start = buf.len().saturating_sub(STDERR_TAIL);
                text = String::from_utf8_lossy(&buf[start..]).trim().to_string();
            }
        }
    }
    text
}

/// What QEMU said while starting: its stderr since `offset` in `log`, plus the `-D` file
/// if the argv names one (a daemonizing QEMU moves its stderr there early; QEMU truncates
/// that file at each start, so all of it belongs to this run).
fn startup_messages(log: &Path, offset: u64, argv: &[String]) -> String {
    let mut parts = vec![read_tail(log, offset)];
    if let Some(w) = argv.windows(2).find(|w| w[0] == "-D") {
        parts.push(read_tail(Path::new(&w[1]), 0));
    }
    parts.retain(|p| !p.is_empty());
    if parts.is_empty() {
        "no error output".to_string()
    } else {
        parts.join("\n")
    }
}

/// Quote arguments for the log line, so it can be pasted into a shell.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=,.:/@+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The pid in a QEMU pid file.
pub fn read_pidfile(path: &Path) -> Result<u32, ProcessError> {
    let content = std::fs::read_to_string(path).map_err(|source| ProcessError::ReadPidfile {
        path: path.to_path_buf(),
        source,
    })?;
    match content.trim().parse::<u32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(ProcessError::BadPidfile {
            path: path.to_path_buf(),
            content,
        }),
    }
}

fn read_cmdline(pid: u32) -> std::io::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn is_qemu(cmdline: &[String]) -> bool {
    cmdline
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("qemu"))
}

fn is_zombie(pid: u32) -> bool {
    // /proc/PID/stat: "pid (comm) S ..."; comm may contain spaces and parentheses.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(raw, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// What a pid turned out to be when looking for a VM's QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessMatch {
    /// A live QEMU whose command line has `-uuid VM_ID`.
    Running,
    /// No such process (or a zombie).
    Gone,
    /// The pid belongs to something else now.
    Other,
}

/// Check that `pid` is the QEMU of VM `vm_id`.
pub fn check_vm_process(pid: u32, vm_id: &str) -> ProcessMatch {
    if !is_alive(pid) {
        return ProcessMatch::Gone;
    }
    match read_cmdline(pid) {
        Err(_) => ProcessMatch::Gone,
        Ok(args) => {
            let has_uuid = args
                .windows(2)
                .any(|w| w[0] == "-uuid" && w[1].eq_ignore_ascii_case(vm_id));
            if has_uuid && is_qemu(&args) {
                ProcessMatch::Running
            } else {
                ProcessMatch::Other
            }
        }
    }
}

/// The pid of VM `vm_id`'s running QEMU according to its pid file, if it is really running.
pub fn find_vm_process(pidfile: &Path, vm_id: &str) -> Option<u32> {
    let pid = read_pidfile(pidfile).ok()?;
    (check_vm_process(pid, vm_id) == ProcessMatch::Running).then_some(pid)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ask to exit (QEMU shuts down like `quit`, without telling the guest).
    Term,
    /// Kill outright.
    Kill,
}

/// Send a signal to one process (never a group: pids 0, 1 and above `i32::MAX` are refused).
pub fn send_signal(pid: u32, signal: Signal) -> Result<(), ProcessError> {
    let raw = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or(ProcessError::BadPid { pid })?;
    let sig = match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: plain syscall on a positive pid.
    if unsafe { libc::kill(raw, sig) } == 0 {
        Ok(())
    } else {
        Err(ProcessError::Signal {
            pid,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Wait until `pid` has exited; false if it is still alive after `timeout`.
pub async fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A QEMU version from `--version`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
    /// The whole first line, e.g. `QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)`.
    pub full: String,
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Parse the first line of `qemu-system-x86_64 --version`.
pub fn parse_version(text: &str) -> Option<QemuVersion> {
    let line = text.lines().next()?.trim();
    let rest = line.split("version ").nth(1)?;
    let number = rest.split_whitespace().next()?;
    let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let micro = parts.next().flatten().unwrap_or(0);
    Some(QemuVersion {
        major,
        minor,
        micro,
        full: line.to_string(),
    })
}

/// Run `BINARY --version`.
pub async fn qemu_version(binary: &Path) -> Result<QemuVersion, ProcessError> {
    let verr = |message: String| ProcessError::Version {
        binary: binary.to_path_buf(),
        message,
    };
    let out = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| verr(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(verr(format!(
            "exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_version(&text).ok_or_else(|| verr(format!("unrecognised output {:?}", text.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = parse_version(
            "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright",
        )
        .expect("parse");
        assert_eq!((v.major, v.minor, v.micro), (7, 2, 22));
        assert_eq!(v.to_string(), "7.2.22");
        assert_eq!(
            parse_version("QEMU emulator version 8.0\n").map(|v| v.minor),
            Some(0)
        );
        assert!(parse_version("bash: not found").is_none());
    }

    #[test]
    fn pidfiles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pid");
        std::fs::write(&p, "1234\n").expect("write");
        assert_eq!(read_pidfile(&p).expect("pid"), 1234);
        for bad in ["", "abc", "0", "1", "-5"] {
            std::fs::write(&p, bad).expect("write");
            assert!(
                matches!(read_pidfile(&p), Err(ProcessError::BadPidfile { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn liveness_and_identity() {
        let me = std::process::id();
        assert!(is_alive(me));
        // The test binary is alive but is not a QEMU of any VM.
        assert_eq!(
            check_vm_process(me, "00000000-0000-0000-0000-000000000000"),
            ProcessMatch::Other
        );
        assert!(!is_alive(0));
        assert!(!is_alive(u32::MAX));
        assert!(matches!(
            send_signal(0, Signal::Term),
            Err(ProcessError::BadPid { .. })
        ));
        assert!(matches!(
            send_signal(1, Signal::Term),
            Err(ProcessError::BadPid { .. })
        ));
    }

    #[test]
    fn log_lines_are_shell_quoted() {
        let words = shell_words(&["-name".into(), "guest=a b,,c".into(), "it's".into()]);
        assert_eq!(words, r"-name 'guest=a b,,c' 'it'\''s'");
    }
}
