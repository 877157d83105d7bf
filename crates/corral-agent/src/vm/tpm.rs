//! The vTPM of a running VM: one `swtpm` process per VM with `spec.tpm`, started just before
//! its QEMU and gone with it.
//!
//! Flow: [`start`] runs `swtpm socket --tpm2` daemonized with a pid file, its state in the
//! VM's own directory (`STATE/tpm/<vm-uuid>/`, see `crate::vmfiles`) and its control socket
//! in the VM's run directory; QEMU connects to that socket (`-chardev socket` + `-tpmdev
//! emulator`). Like QEMU, swtpm is not the agent's child in the sense that matters: it keeps
//! running across an agent restart, and `--terminate` makes it exit by itself once QEMU's
//! connection closes, so a QEMU that dies while the agent is down takes its swtpm with it. On
//! re-attach [`find`] checks that the pid file names a live swtpm serving this VM's state
//! directory; after QEMU exits [`stop`] makes sure it is gone (it normally already is) and
//! removes the socket and pid file. The state directory stays: it is the TPM's persistent
//! identity (keys, sealed secrets, Windows' BitLocker protector).
//!
//! swtpm parses its option values as `key=value,...` with no escape for a comma, so a path
//! with a comma is refused ([`TpmError::UnsafePath`]) rather than misparsed.

use corral_model::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The swtpm binary (Debian package `swtpm`).
pub const SWTPM: &str = "swtpm";
/// How long swtpm may take to daemonize and open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where one VM's swtpm keeps its state and its runtime files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPaths {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub pidfile: PathBuf,
    pub log: PathBuf,
}

impl TpmPaths {
    pub fn new(state_dir: PathBuf, run_dir: &Path) -> Self {
        TpmPaths {
            state_dir,
            socket: run_dir.join("swtpm.sock"),
            pidfile: run_dir.join("swtpm.pid"),
            log: run_dir.join("swtpm.log"),
        }
    }
}

/// Why a VM's TPM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("a TPM needs Debian's swtpm package (`{SWTPM}` was not found)")]
    NotInstalled,
    #[error("swtpm cannot take the path {path:?}: its options have no escape for a comma")]
    UnsafePath { path: String },
    #[error("cannot prepare {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("swtpm did not start: {stderr}")]
    Failed { stderr: String },
    #[error("swtpm did not open {} within {}s", socket.display(), START_TIMEOUT.as_secs())]
    Timeout { socket: PathBuf },
}

impl TpmError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TpmError::NotInstalled => ErrorKind::Unsupported,
            TpmError::UnsafePath { .. } => ErrorKind::InvalidInput,
            TpmError::Timeout { .. } => ErrorKind::Timeout,
            TpmError::Prepare { .. } | TpmError::Failed { .. } => ErrorKind::Internal,
        }
    }
}

fn plain(p: &Path) -> Result<&str, TpmError> {
    match p.to_str() {
        Some(s) if !s.contains(',') => Ok(s),
        _ => Err(TpmError::UnsafePath {
            path: p.display().to_string(),
        }),
    }
}

/// The swtpm command line (without the binary) for `paths`.
pub fn swtpm_args(paths: &TpmPaths) -> Result<Vec<String>, TpmError> {
    Ok(vec![
        "socket".into(),
        "--tpm2".into(),
        "--tpmstate".into(),
        format!("dir={},mode=0600", plain(&paths.state_dir)?),
        "--ctrl".into(),
        format!("type=unixio,path={},mode=0600", plain(&paths.socket)?),
        "--pid".into(),
        format!("file={}", plain(&paths.pidfile)?),
        "--log".into(),
        format!("file={},level=1", plain(&paths.log)?),
        // Exit once QEMU's connection closes: a QEMU that dies while the agent is down does
        // not leave an orphan holding the state directory's lock.
        "--terminate".into(),
        "--daemon".into(),
    ])
}

/// Start the VM's swtpm and return its control socket once it is there.
pub async fn start(paths: &TpmPaths) -> Result<PathBuf, TpmError> {
    let args = swtpm_args(paths)?;
    // A swtpm left from an earlier start whose QEMU never connected still holds the state
    // directory's lock; it serves nobody.
    stop(paths);
    for dir in [Some(paths.state_dir.as_path()), paths.socket.parent()]
        .into_iter()
        .flatten()
    {
        create_private_dir(dir)?;
    }
    let out = tokio::process::Command::new(SWTPM)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(START_TIMEOUT, out).await {
        Err(_) => {
            return Err(TpmError::Timeout {
                socket: paths.socket.clone(),
            })
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TpmError::NotInstalled)
        }
        Ok(Err(e)) => {
            return Err(TpmError::Failed {
                stderr: e.to_string(),
            })
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = format!("exit status {}", out.status);
        }
        return Err(TpmError::Failed { stderr });
    }
    // `--daemon` returns once the socket is bound; poll briefly in case it is not yet.
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while !paths.socket.exists() {
        if tokio::time::Instant::now() > deadline {
            stop(paths);
            return Err(TpmError::Timeout {
                socket: paths.socket.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(paths.socket.clone())
}

fn create_private_dir(dir: &Path) -> Result<(), TpmError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TpmError::Prepare {
            path: dir.to_path_buf(),
            source,
        })
}

/// The pid of the live swtpm serving `paths` (its pid file names a process whose command
/// line is swtpm's with this state directory), if any.
pub fn find(paths: &TpmPaths) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(&paths.pidfile)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_swtpm = args
        .first()
        .and_then(|a| Path::new(std::str::from_utf8(a).ok()?).file_name())
        .is_some_and(|n| n == SWTPM);
    let state = format!("dir={},mode=0600", paths.state_dir.display());
    let ours = args.contains(&state.as_bytes());
    (is_swtpm && ours && pid > 1).then_some(pid)
}

/// Make sure the VM's swtpm is gone (after its QEMU exited, or a failed start) and remove its
/// socket and pid file. The state directory stays.
pub fn stop(paths: &TpmPaths) {
    if let Some(pid) = find(paths) {
        let _ = corral_qemu::process::send_signal(pid, corral_qemu::process::Signal::Term);
        // swtpm writes its state on every change, so a TERM loses nothing; wait briefly so
        // the next start does not meet its lock.
        for _ in 0..50 {
            if !corral_qemu::process::is_alive(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if corral_qemu::process::is_alive(pid) {
            let _ = corral_qemu::process::send_signal(pid, corral_qemu::process::Signal::Kill);
        }
    }
    let _ = std::fs::remove_file(&paths.socket);
    let _ = std::fs::remove_file(&paths.pidfile);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_commas_are_refused_not_misparsed() {
        let p = TpmPaths::new("/state/tpm/x".into(), Path::new("/run/a,b"));
        let err = swtpm_args(&p).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("/run/a,b/swtpm.sock"), "{err}");
        let ok = TpmPaths::new("/state/tpm/x".into(), Path::new("/run/x"));
        let args = swtpm_args(&ok).unwrap();
        assert!(args.contains(&"dir=/state/tpm/x,mode=0600".to_string()));
        assert!(args.contains(&"--terminate".to_string()));
    }

    /// A real swtpm: started, found by its pid file, and gone after `stop`.
    #[tokio::test]
    async fn swtpm_starts_is_found_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let p = TpmPaths::new(dir.path().join("state"), &dir.path().join("run"));
        match start(&p).await {
            Err(TpmError::NotInstalled) => {
                panic!("swtpm is not installed: run scripts/install-deps.sh")
            }
            r => {
                r.unwrap();
            }
        }
        let pid = find(&p).expect("a live swtpm");
        assert!(corral_qemu::process::is_alive(pid));
        // Another VM's paths never match this process.
        let other = TpmPaths {
            state_dir: dir.path().join("other"),
            ..p.clone()
        };
        assert_eq!(find(&other), None);
        stop(&p);
        assert!(!corral_qemu::process::is_alive(pid));
        assert!(!p.socket.exists() && !p.pidfile.exists());
        assert!(p.state_dir.is_dir(), "the state stays");
    }
}
