//! `nfs://host/export/path` sources, read as an NFSv3 client entirely in user space.
//!
//! The client is libnfs, through the `nfs-cat` tool of Debian's `libnfs-utils` package: it
//! needs no root, no kernel NFS client and no mount point, works from containers, and speaks
//! to any NFSv3 server (the kernel's, nfs-ganesha, NAS appliances) via the portmapper. Each
//! read runs one `nfs-cat` process whose standard output is streamed, capped and timed like
//! any other download; its standard error is classified into not-found, refused (not
//! exported, permission denied) and unreachable. A `:port` in the URL is passed as libnfs's
//! `nfsport=`.
//!
//! Why not a kernel mount: it needs root and `mount.nfs`, leaves state behind when the agent
//! dies, and hangs uninterruptibly on a dead server. Why not a Rust crate: `nfs3_client` is
//! async-only and young; libnfs is what QEMU itself uses for `nfs://` drives.

use super::{read_capped, stream_to_file, FetchError, FetchOptions, ProgressFn, Source};
use crate::tree::{Probe, ProbeResult};
use crate::url::SourceUrl;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The libnfs tool used for reads; `CORRAL_NFS_CAT` overrides the path (tests, odd installs).
fn nfs_cat() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CORRAL_NFS_CAT") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("nfs-cat"))
        .find(|p| p.is_file())
}

pub struct NfsSource {
    url: SourceUrl,
    opts: FetchOptions,
    tool: PathBuf,
    /// Whether the tree's root directory itself can be mounted (checked on demand).
    root_mounts: std::sync::OnceLock<bool>,
}

impl NfsSource {
    /// Check that the client tool is installed. The server is first contacted by the first
    /// probe, whose error then says whether it is unreachable or does not export the path.
    pub fn connect(url: SourceUrl, opts: FetchOptions) -> Result<Self, FetchError> {
        let tool = nfs_cat().ok_or_else(|| FetchError::Unsupported {
            url: url.to_string(),
            detail: "reading nfs:// trees needs the nfs-cat tool (Debian package libnfs-utils)"
                .into(),
        })?;
        if url.path.contains('?') {
            return Err(FetchError::Unsupported {
                url: url.to_string(),
                detail: "NFS paths containing '?' are not supported".into(),
            });
        }
        Ok(NfsSource {
            url: url.as_dir(),
            opts,
            tool,
            root_mounts: std::sync::OnceLock::new(),
        })
    }

    /// libnfs mounts the directory that holds the file it reads, and servers refuse to mount
    /// a directory that does not exist just as they refuse one that is not exported. When the
    /// tree's root mounts fine, a refused deeper directory simply is not there.
    fn refine(&self, rel: &str, e: FetchError) -> FetchError {
        let FetchError::Refused { url, detail } = e else {
            return e;
        };
        if !rel.contains('/') || !detail.contains("does not export") {
            return FetchError::Refused { url, detail };
        }
        let root_ok = *self.root_mounts.get_or_init(|| {
            let ls = self.tool.with_file_name("nfs-ls");
            let mut root = format!(
                "nfs://{}{}",
                self.url.host,
                self.url.path.trim_end_matches('/')
            );
            if let Some(p) = self.url.port {
                root.push_str(&format!("?nfsport={p}"));
            }
            Command::new(ls)
                .arg(root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if root_ok {
            FetchError::NotFound {
                url,
                detail: "no such directory".into(),
            }
        } else {
            FetchError::Refused { url, detail }
        }
    }

    fn libnfs_url(&self, rel: &str) -> String {
        let mut u = format!("nfs://{}{}", self.url.host, self.url.join_path(rel));
        if let Some(p) = self.url.port {
            u.push_str(&format!("?nfsport={p}"));
        }
        u
    }

    fn spawn(&self, rel: &str, deadline: Duration) -> Result<CatProcess, FetchError> {
        let shown = self.url.join(rel).to_string();
        let mut child = Command::new(&self.tool)
            .arg(self.libnfs_url(rel))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| FetchError::Unsupported {
                url: shown.clone(),
                detail: format!("cannot run {}: {e}", self.tool.display()),
            })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(FetchError::Unsupported {
                url: shown,
                detail: "nfs-cat pipes unavailable".into(),
            });
        };
        let done = Arc::new(AtomicBool::new(false));
        let timed_out = Arc::new(AtomicBool::new(false));
        let pid = child.id();
        {
            let (done, timed_out) = (done.clone(), timed_out.clone());
            let start = Instant::now();
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if start.elapsed() > deadline {
                        timed_out.store(true, Ordering::SeqCst);
                        // SAFETY: kill(2) on the pid of a child we spawned and have not yet
                        // reaped (`done` is set before `wait`), so the pid cannot be reused.
                        unsafe {
                            libc::kill(pid as libc::pid_t, libc::SIGKILL);
                        }
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        Ok(CatProcess {
            child,
            stdout,
            stderr: Some(stderr),
            done,
            timed_out,
            shown,
            deadline,
        })
    }

    /// Read a whole file or its first bytes, then classify the exit.
    fn read_small(&self, rel: &str) -> Result<Vec<u8>, FetchError> {
        let mut p = self.spawn(rel, self.opts.connect_timeout + self.opts.io_timeout)?;
        let shown = p.shown.clone();
        let bytes = read_capped(&mut p, &shown, &self.opts);
        let status = p.finish(
            bytes
                .as_ref()
                .map(|b| b.len() < crate::tree::PROBE_CAP_BYTES)
                .unwrap_or(true),
        );
        status?;
        bytes
    }
}

/// A running `nfs-cat`, read as a stream.
struct CatProcess {
    child: Child,
    stdout: ChildStdout,
    stderr: Option<ChildStderr>,
    done: Arc<AtomicBool>,
    timed_out: Arc<AtomicBool>,
    shown: String,
    deadline: Duration,
}

impl Read for CatProcess {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl CatProcess {
    /// Wait for the process (killing it first when `complete` is false, i.e. we stopped
    /// reading early) and turn its exit into a result.
    fn finish(&mut self, complete: bool) -> Result<(), FetchError> {
        if !complete {
            let _ = self.child.kill();
        }
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = (&mut e).take(64 * 1024).read_to_string(&mut err);
        }
        let status = self.child.wait();
        self.done.store(true, Ordering::SeqCst);
        if self.timed_out.load(Ordering::SeqCst) {
            return Err(FetchError::Timeout {
                url: self.shown.clone(),
                secs: self.deadline.as_secs(),
            });
        }
        if !complete {
            return Ok(());
        }
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(_) => Err(classify(&self.shown, &err)),
            Err(e) => Err(FetchError::Refused {
                url: self.shown.clone(),
                detail: e.to_string(),
            }),
        }
    }
}

impl Drop for CatProcess {
    fn drop(&mut self) {
        if !self.done.load(Ordering::SeqCst) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.done.store(true, Ordering::SeqCst);
        }
    }
}

/// Turn libnfs's messages into the error users need.
fn classify(url: &str, stderr: &str) -> FetchError {
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("nfs-cat failed without a message (the path may be a directory)")
        .trim()
        .to_string();
    let has = |k: &str| stderr.contains(k);
    if has("NFS3ERR_NOENT") || has("MNT3ERR_NOENT") {
        FetchError::NotFound {
            url: url.to_string(),
            detail: "NFS3ERR_NOENT".into(),
        }
    } else if has("NFS3ERR_ISDIR") {
        FetchError::NotFound {
            url: url.to_string(),
            detail: "is a directory".into(),
        }
    } else if has("MNT3ERR_ACCES") || has("NFS3ERR_ACCES") || has("NFS3ERR_PERM") {
        FetchError::Refused {
            url: url.to_string(),
            detail: "the server does not export this path to us (permission denied)".into(),
        }
    } else if has("nfs_service failed") || has("Failed to start connection") || has("connect") {
        FetchError::Unreachable {
            url: url.to_string(),
            detail: format!("no NFS service answered ({first})"),
        }
    } else if has("resolv") {
        FetchError::Resolve {
            host: url.to_string(),
            detail: first,
        }
    } else if stderr.trim().is_empty() {
        // nfs-cat exits silently when the path is a directory.
        FetchError::NotFound {
            url: url.to_string(),
            detail: "not a regular file".into(),
        }
    } else {
        FetchError::Refused {
            url: url.to_string(),
            detail: first,
        }
    }
}

impl Probe for NfsSource {
    fn fetch(&self, rel: &str) -> ProbeResult {
        match self.read_small(rel) {
            Ok(b) => ProbeResult::Found(b),
            Err(e) => self.refine(rel, e).into_probe_result(),
        }
    }

    fn exists(&self, rel: &str) -> ProbeResult {
        // Reading one byte is the cheapest existence check nfs-cat offers.
        match self.spawn(rel, self.opts.connect_timeout + self.opts.io_timeout) {
            Ok(mut p) => {
                let mut one = [0u8; 1];
                let got = p.read(&mut one).unwrap_or(0);
                match p.finish(got == 0) {
                    Ok(()) => ProbeResult::Found(Vec::new()),
                    Err(e) => self.refine(rel, e).into_probe_result(),
                }
            }
            Err(e) => e.into_probe_result(),
        }
    }

    fn describe(&self, rel: &str) -> String {
        format!("READ {}", self.url.join(rel))
    }
}

impl Source for NfsSource {
    fn url(&self) -> &SourceUrl {
        &self.url
    }

    fn fetch_to_file(
        &self,
        rel: &str,
        dest: &Path,
        progress: ProgressFn<'_>,
    ) -> Result<u64, FetchError> {
        let started = Instant::now();
        let mut p = self.spawn(rel, self.opts.total_timeout)?;
        let shown = p.shown.clone();
        let res = stream_to_file(&mut p, &shown, None, dest, &self.opts, started, progress);
        let status = p.finish(res.is_ok());
        match (res, status) {
            (Ok(n), Ok(())) => Ok(n),
            // The process's own verdict explains an empty or cut stream better.
            (_, Err(e)) => {
                let _ = std::fs::remove_file(dest);
                Err(self.refine(rel, e))
            }
            (Err(e), Ok(())) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libnfs_messages_are_classified() {
        let cases: &[(&str, &str)] = &[
            ("Failed to open file /x: open call failed with \"NFS: Lookup of /x failed with NFS3ERR_NOENT(-2)\"", "not found (NFS3ERR_NOENT)"),
            ("Failed to mount nfs share : mount_cb: RPC error: Mount failed with error MNT3ERR_ACCES(13) Permission denied(13)", "does not export this path"),
            ("Failed to mount nfs share : nfs_service failed\nFailed to open nfs://h/x", "cannot reach"),
            ("", "not found (not a regular file)"),
        ];
        for (stderr, needle) in cases {
            let msg = classify("nfs://h/x", stderr).to_string();
            assert!(msg.contains(needle), "{stderr}: {msg}");
        }
    }
}
