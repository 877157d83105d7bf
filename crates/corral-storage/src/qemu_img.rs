//! The one place corral runs `qemu-img`. Every volume operation (create, convert, resize,
//! info) goes through [`run`], or [`convert`] when the caller wants progress and a way to stop
//! it, so failures read the same everywhere ("qemu-img convert /path failed: <its stderr>")
//! and a test can see every invocation in one place.
//!
//! Paths are passed as separate arguments, never inside an option string, and are absolute
//! (checked by the callers), so neither a comma nor a ':' in a name means anything to it.

use crate::volume::VolumeError;
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

fn command() -> Command {
    let mut cmd = Command::new("qemu-img");
    cmd.kill_on_drop(true);
    cmd
}

/// Run `qemu-img <args>` for `op` on `subject`; its stdout on success, its stderr in the
/// error otherwise.
pub async fn run(
    op: &'static str,
    subject: &Path,
    args: &[&OsStr],
) -> Result<Vec<u8>, VolumeError> {
    let out = command()
        .args(args)
        .output()
        .await
        .map_err(VolumeError::Spawn)?;
    if !out.status.success() {
        return Err(VolumeError::QemuImg {
            op,
            path: subject.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// How [`convert`] reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions<'a> {
    /// Output format (`qcow2`, `raw`).
    pub output_format: &'a str,
    /// Input format when known (no probing of untrusted images).
    pub input_format: Option<&'a str>,
    /// Read an image another process holds open (`-U`).
    pub shared_read: bool,
}

/// `qemu-img convert` from `src` to `dst` (which must not exist), flattening any backing
/// chain. `progress` gets the percentage as qemu-img reports it; when `stop` resolves first,
/// the conversion is killed, `dst` removed and [`VolumeError::Cancelled`] returned. Any
/// failure removes `dst`.
pub async fn convert(
    src: &Path,
    dst: &Path,
    opts: ConvertOptions<'_>,
    mut progress: impl FnMut(f64) + Send,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), VolumeError> {
    let mut cmd = command();
    cmd.args(["convert", "-p", "-O", opts.output_format]);
    if let Some(f) = opts.input_format {
        cmd.args(["-f", f]);
    }
    if opts.shared_read {
        cmd.arg("-U");
    }
    cmd.arg(src)
        .arg(dst)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(VolumeError::Spawn)?;
    let Some(mut out) = child.stdout.take() else {
        let _ = child.kill().await;
        return Err(VolumeError::Spawn(std::io::Error::other("no stdout")));
    };
    let mut buf = [0u8; 256];
    let mut text = String::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            n = out.read(&mut buf) => {
                let n = n.unwrap_or(0);
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                // Lines look like "    (42.00/100%)\r".
                if let Some(pct) = text
                    .rsplit('(')
                    .next()
                    .and_then(|t| t.split('/').next())
                    .and_then(|p| p.trim().parse::<f64>().ok())
                {
                    progress(pct);
                }
                if text.len() > 4096 {
                    text.drain(..text.len() - 64);
                }
            }
            _ = &mut stop => {
                let _ = child.kill().await;
                let _ = std::fs::remove_file(dst);
                return Err(VolumeError::Cancelled);
            }
        }
    }
    let done = child.wait_with_output().await.map_err(VolumeError::Spawn)?;
    if !done.status.success() {
        let _ = std::fs::remove_file(dst);
        return Err(VolumeError::QemuImg {
            op: "convert",
            path: src.to_path_buf(),
            stderr: String::from_utf8_lossy(&done.stderr).trim().to_string(),
        });
    }
    progress(100.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{create_volume, volume_info};
    use corral_model::DiskFormat;

    #[tokio::test]
    async fn convert_reports_progress_and_a_stop_removes_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src, 1.qcow2");
        create_volume(&src, DiskFormat::Qcow2, 64 << 20, None)
            .await
            .unwrap();
        let dst = dir.path().join("dst.raw");
        let mut seen = Vec::new();
        let opts = ConvertOptions {
            output_format: "raw",
            input_format: Some("qcow2"),
            shared_read: false,
        };
        convert(&src, &dst, opts, |p| seen.push(p), std::future::pending())
            .await
            .unwrap();
        assert_eq!(seen.last(), Some(&100.0));
        assert_eq!(volume_info(&dst).await.unwrap().virtual_size, 64 << 20);

        let stopped = dir.path().join("stopped.qcow2");
        let e = convert(&src, &stopped, opts, |_| {}, async {}).await;
        assert!(matches!(e, Err(VolumeError::Cancelled)), "{e:?}");
        assert!(!stopped.exists());

        let bad = convert(
            &dir.path().join("missing"),
            &dst,
            opts,
            |_| {},
            std::future::pending(),
        )
        .await;
        assert!(
            matches!(&bad, Err(VolumeError::QemuImg { op: "convert", stderr, .. }) if !stderr.is_empty()),
            "{bad:?}"
        );
    }
}
