//! One libguestfs appliance, driven through a `guestfish` child process reading commands on
//! its standard input: one appliance launch (about 15 s under TCG here) serves the whole
//! conversion, and the child dies with its parent, since its input ends when the agent goes
//! away (libguestfs then kills the appliance's QEMU). Guest file systems are only ever
//! mounted inside the appliance, never by the host kernel.
//!
//! Every call is the command (prefixed with `-`, so a failure does not end the session),
//! then a marker echoed on standard error (by a local `!echo`) and on standard output:
//! what arrives before the markers is the command's output and its error. Arguments are
//! always double-quoted with guestfish's escapes, so no guest-supplied text is parsed as
//! guestfish syntax.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum GuestfishError {
    #[error("cannot start guestfish (is libguestfs-tools installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("{command}: {message}")]
    Failed { command: String, message: String },
    #[error("guestfish exited during {command}: {stderr}")]
    Exited { command: String, stderr: String },
    #[error("{command} did not finish within {} s", .timeout.as_secs())]
    Timeout { command: String, timeout: Duration },
    #[error("cannot talk to guestfish")]
    Io(#[source] std::io::Error),
}

/// Quote one argument for guestfish's command line: double quotes with C-style escapes.
pub fn quote(arg: &str) -> String {
    let mut s = String::with_capacity(arg.len() + 2);
    s.push('"');
    for c in arg.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                s.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The label the disk is added with: inside the appliance it is also
/// [`GUEST_DISK`], a name that is right in the guest's shell too. The API's `/dev/sda` is
/// translated by libguestfs's daemon, but the kernel may enumerate the appliance's own disk
/// first (seen with two vCPUs: `grub-install /dev/sda` then hit the appliance's disk).
pub const DISK_LABEL: &str = "corral";
pub const GUEST_DISK: &str = "/dev/disk/guestfs/corral";

/// How the appliance runs.
#[derive(Debug, Clone)]
pub struct ApplianceOptions {
    /// QEMU's TCG instead of KVM (the agent's accelerator probe decides).
    pub tcg: bool,
    /// Per-command limit; the appliance is killed when one runs longer.
    pub command_timeout: Duration,
    /// Virtual CPUs of the appliance.
    pub smp: u32,
}

pub struct Guestfish {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: mpsc::UnboundedReceiver<String>,
    seq: u64,
    token: String,
    timeout: Duration,
}

impl Guestfish {
    /// Start guestfish with `disk` (in `format`, read-write) added; the appliance is launched
    /// by the first `run`.
    pub async fn start(
        disk: &Path,
        format: &str,
        opts: &ApplianceOptions,
    ) -> Result<Guestfish, GuestfishError> {
        let mut cmd = Command::new("guestfish");
        cmd.env("LIBGUESTFS_BACKEND", "direct")
            .env_remove("LIBGUESTFS_DEBUG")
            .env_remove("LIBGUESTFS_TRACE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if opts.tcg {
            cmd.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
        } else {
            cmd.env_remove("LIBGUESTFS_BACKEND_SETTINGS");
        }
        let mut child = cmd.spawn().map_err(GuestfishError::Spawn)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(GuestfishError::Spawn(std::io::Error::other(
                "no pipes to guestfish",
            )));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut g = Guestfish {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr: rx,
            seq: 0,
            token: uuid::Uuid::new_v4().simple().to_string(),
            timeout: opts.command_timeout,
        };
        let disk = disk.to_string_lossy().into_owned();
        g.call(
            "add",
            &[
                &disk,
                &format!("format:{format}"),
                &format!("label:{DISK_LABEL}"),
            ],
        )
        .await?;
        if opts.smp > 1 {
            g.call("set-smp", &[&opts.smp.to_string()]).await?;
        }
        Ok(g)
    }

    /// Run one command; its output (trailing newline removed).
    pub async fn call(&mut self, command: &str, args: &[&str]) -> Result<String, GuestfishError> {
        let timeout = self.timeout;
        self.call_with_timeout(command, args, timeout).await
    }

    pub async fn call_with_timeout(
        &mut self,
        command: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String, GuestfishError> {
        self.seq += 1;
        let marker = format!("@@corral-{}-{}", self.token, self.seq);
        let mut line = format!("-{command}");
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        line.push_str(&format!("\n!echo {marker} >&2\necho {marker}\n"));
        let shown = match args.first() {
            Some(a) if a.len() <= 80 && !a.contains('\n') => format!("{command} {a}"),
            _ => command.to_string(),
        };
        tracing::debug!(command = %shown, "guestfish");
        let work = async {
            self.stdin
                .write_all(line.as_bytes())
                .await
                .map_err(GuestfishError::Io)?;
            self.stdin.flush().await.map_err(GuestfishError::Io)?;
            let mut out = Vec::new();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = self
                    .stdout
                    .read_until(b'\n', &mut buf)
                    .await
                    .map_err(GuestfishError::Io)?;
                if n == 0 {
                    return Err(None);
                }
                if buf.strip_suffix(b"\n").unwrap_or(&buf) == marker.as_bytes() {
                    break;
                }
                out.extend_from_slice(&buf);
            }
            let mut err = Vec::new();
            loop {
                match self.stderr.recv().await {
                    Some(l) if l == marker => break,
                    Some(l) => err.push(l),
                    None => return Err(None),
                }
            }
            Ok((out, err))
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                let _ = self.child.start_kill();
                return Err(GuestfishError::Timeout {
                    command: shown,
                    timeout,
                });
            }
        };
        let (out, err) = match result {
            Ok(v) => v,
            Err(Some(e)) => return Err(e),
            Err(None) => {
                let mut rest = Vec::new();
                while let Ok(l) = self.stderr.try_recv() {
                    rest.push(l);
                }
                return Err(GuestfishError::Exited {
                    command: shown,
                    stderr: rest.join("\n"),
                });
            }
        };
        // Warnings do not make a command fail; anything else on stderr does.
        let errors: Vec<String> = err
            .into_iter()
            .filter(|l| !l.contains("warning:") && !l.trim().is_empty())
            .map(|l| strip_error_prefix(&l))
            .collect();
        if !errors.is_empty() {
            return Err(GuestfishError::Failed {
                command: shown,
                message: errors.join("; "),
            });
        }
        let mut s = String::from_utf8_lossy(&out).into_owned();
        if s.ends_with('\n') {
            s.pop();
        }
        Ok(s)
    }

    /// Unmount, end the appliance and wait for guestfish to exit (killed after 60 s).
    pub async fn close(mut self) {
        let _ = self.stdin.write_all(b"-umount-all\nexit\n").await;
        let _ = self.stdin.flush().await;
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `*stdin*:3: libguestfs: error: mount: ...` → `mount: ...`.
fn strip_error_prefix(l: &str) -> String {
    let l = match l.find("libguestfs: error: ") {
        Some(i) => &l[i + "libguestfs: error: ".len()..],
        None => l,
    };
    l.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_with_escapes() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(
            quote("a \"b\" \\c\nd\te\u{1}"),
            "\"a \\\"b\\\" \\\\c\\nd\\te\\x01\""
        );
        assert_eq!(quote("$HOME `x` #y"), "\"$HOME `x` #y\"");
        assert_eq!(
            strip_error_prefix("*stdin*:15: libguestfs: error: download: /x: No such file"),
            "download: /x: No such file"
        );
    }
}
