//! corral-convert: makes an offline disk of a Linux server boot as a VM on virtio-blk and
//! virtio-net (V2V, issue 12). The agent hands it the new VM's own copy of the disk
//! ([`convert_disk`]); it never sees the source image.
//!
//! How a conversion flows: one libguestfs appliance is started on the disk
//! ([`guestfish`]; `LIBGUESTFS_BACKEND=direct`, TCG when the agent runs guests under TCG);
//! `facts.rs` reads the disk's layout, finds the root by mounting each Linux file system
//! read-only, mounts the guest as its fstab says and reads its configuration with one script
//! run by the guest's own shell; [`plan::plan`] (pure, table-tested) decides every change or
//! refuses; then each step is applied in the same appliance and its change recorded, the
//! guest's own tools (update-initramfs, grub-install, update-grub) running last. One appliance
//! for everything: measured here, this is about half of what `virt-v2v-in-place` takes for the
//! same disk, and virt-v2v's result still did not boot (`docs/p2v.md`).
//!
//! Before any of that, [`probe`] looks at a raw image as it is uploaded and refuses a disk
//! where nothing can be Linux (FAT, NTFS, blank) without starting an appliance.
//!
//! When the root cannot grow where it is (another partition follows it), [`expand_by_copy`]
//! runs `virt-resize`, which moves partitions by copying, as a second pass.

pub mod facts;
pub mod guestfish;
pub mod plan;
pub mod probe;

pub use guestfish::{ApplianceOptions, GuestfishError};
pub use plan::{exclude_path_ok, ExpandByCopy, NetworkMode, Options, Refusal};

use corral_model::Firmware;
use guestfish::Guestfish;
use plan::{Action, GuestFacts, Step};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// Longest a command of the guest's own (update-initramfs) may run.
const GUEST_COMMAND_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest the appliance may take to start.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot mount {device} ({what})")]
    Unreadable {
        what: String,
        device: String,
        #[source]
        source: GuestfishError,
    },
    #[error("the conversion appliance failed")]
    Appliance(#[from] GuestfishError),
    #[error("`{command}` failed in the guest (exit status {status})")]
    GuestCommand {
        command: String,
        status: i32,
        #[source]
        output: CommandOutput,
    },
    #[error("virt-resize failed")]
    Resize(#[source] CommandOutput),
    #[error("the conversion was cancelled")]
    Cancelled,
}

/// The last lines a failed command printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandOutput(pub String);

/// Where a conversion is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Starting the appliance, reading the disk and the guest's configuration.
    Inspecting,
    /// Applying the plan.
    Converting,
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The guest's name for itself (`Debian GNU/Linux 12 (bookworm)`).
    pub os: String,
    /// How the source booted, and so how the VM must.
    pub firmware: Firmware,
    /// The root file system's device in the appliance.
    pub root: String,
    /// Every change made, in order.
    pub changes: Vec<String>,
    pub warnings: Vec<String>,
    /// The root could not grow in place: run [`expand_by_copy`] to grow it.
    pub expand_by_copy: Option<ExpandByCopy>,
}

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The VM's own copy of the disk (it is changed in place).
    pub disk: &'a Path,
    /// Its format (`qcow2`, `raw`).
    pub format: &'a str,
    pub options: Options,
    pub appliance: ApplianceOptions,
}

/// Convert `req.disk` in place. `progress` hears the stage, the progress within it (0..1)
/// and what is being done; when `cancel` resolves the appliance is killed and
/// [`ConvertError::Cancelled`] returned (the disk is then half-converted: throw it away).
pub async fn convert_disk(
    req: &Request<'_>,
    progress: &(dyn Fn(Stage, f64, &str) + Send + Sync),
    cancel: impl Future<Output = ()>,
) -> Result<Report, ConvertError> {
    tokio::select! {
        r = run(req, progress) => r,
        _ = cancel => Err(ConvertError::Cancelled),
    }
}

async fn run(
    req: &Request<'_>,
    progress: &(dyn Fn(Stage, f64, &str) + Send + Sync),
) -> Result<Report, ConvertError> {
    progress(Stage::Inspecting, 0.0, "starting the appliance");
    let mut g = Guestfish::start(req.disk, req.format, &req.appliance).await?;
    g.call_with_timeout("run", &[], LAUNCH_TIMEOUT).await?;
    progress(Stage::Inspecting, 0.6, "reading the disk's layout");
    let layout = facts::read_layout(&mut g).await?;
    progress(Stage::Inspecting, 0.7, "looking for the root file system");
    let root = facts::find_root(&mut g, &layout).await?;
    let fstab = plan::parse_fstab(root.fstab.as_deref().unwrap_or(""));
    let mounts = plan::plan_mounts(&root.device, &fstab, &layout);
    facts::mount_guest(&mut g, &mounts).await?;
    progress(Stage::Inspecting, 0.9, "reading the guest's configuration");
    let files = facts::read_guest_files(&mut g, guestfish::GUEST_DISK).await?;
    let facts = GuestFacts {
        layout,
        guest_disk: guestfish::GUEST_DISK.into(),
        root: root.device,
        mounts,
        files,
    };
    let plan = plan::plan(&facts, &req.options)?;
    tracing::info!(
        os = %plan.os.name(),
        firmware = plan.firmware.as_str(),
        root = %facts.root,
        steps = plan.grow_unmounted.len() + plan.steps.len(),
        "conversion planned"
    );

    let total = (plan.grow_unmounted.len() + plan.steps.len()).max(1) as f64;
    let mut done = 0usize;
    let mut changes = Vec::new();
    if !plan.grow_unmounted.is_empty() {
        g.call("umount-all", &[]).await?;
        for s in &plan.grow_unmounted {
            progress(Stage::Converting, done as f64 / total, &label(s));
            apply(&mut g, s).await?;
            record(&mut changes, s);
            done += 1;
        }
        facts::mount_guest(&mut g, &facts.mounts).await?;
    }
    for s in &plan.steps {
        progress(Stage::Converting, done as f64 / total, &label(s));
        apply(&mut g, s).await?;
        record(&mut changes, s);
        done += 1;
    }
    // Everything on the disk before the appliance goes.
    g.call("umount-all", &[]).await?;
    g.call("sync", &[]).await?;
    g.call("shutdown", &[]).await?;
    g.close().await;
    progress(Stage::Converting, 1.0, "done");
    Ok(Report {
        os: plan.os.name(),
        firmware: plan.firmware,
        root: facts.root,
        changes,
        warnings: plan.warnings,
        expand_by_copy: plan.expand_by_copy,
    })
}

fn record(changes: &mut Vec<String>, s: &Step) {
    changes.extend(s.changes.iter().cloned());
}

/// A few words on a step, for progress.
fn label(s: &Step) -> String {
    match &s.action {
        Action::Write { path, .. } => format!("writing {path}"),
        Action::Remove { path } => format!("removing {path}"),
        Action::Mkdir { path } => format!("creating {path}"),
        Action::Copy { to, .. } => format!("writing {to}"),
        Action::Run { script } => format!(
            "running {}",
            script
                .split_whitespace()
                .find(|w| !w.contains('='))
                .and_then(|c| c.rsplit('/').next())
                .unwrap_or("a command")
        ),
        Action::ExpandGpt { .. } | Action::ResizePartition { .. } => "growing the partition".into(),
        Action::ResizePv { .. } | Action::ExtendLv { .. } => "growing the LVM volumes".into(),
        Action::GrowExt { .. } | Action::GrowMounted { .. } => "growing the file system".into(),
    }
}

async fn apply(g: &mut Guestfish, step: &Step) -> Result<(), ConvertError> {
    match &step.action {
        Action::Write { path, content } => g.call("write", &[path, content]).await.map(drop)?,
        Action::Remove { path } => g.call("rm-f", &[path]).await.map(drop)?,
        Action::Mkdir { path } => g.call("mkdir-p", &[path]).await.map(drop)?,
        Action::Copy { from, to } => g.call("cp", &[from, to]).await.map(drop)?,
        Action::Run { script } => run_in_guest(g, script).await?,
        Action::ExpandGpt { disk } => g.call("part-expand-gpt", &[disk]).await.map(drop)?,
        Action::ResizePartition {
            disk,
            number,
            end_sector,
        } => g
            .call(
                "part-resize",
                &[disk, &number.to_string(), &end_sector.to_string()],
            )
            .await
            .map(drop)?,
        Action::ResizePv { device } => g.call("pvresize", &[device]).await.map(drop)?,
        Action::ExtendLv { lv } => g.call("lvresize-free", &[lv, "100"]).await.map(drop)?,
        Action::GrowExt { device } => {
            g.call_with_timeout("e2fsck-f", &[device], GUEST_COMMAND_TIMEOUT)
                .await?;
            g.call_with_timeout("resize2fs", &[device], GUEST_COMMAND_TIMEOUT)
                .await?;
        }
        Action::GrowMounted { mountpoint, fstype } => {
            let cmd = if fstype == "xfs" {
                "xfs-growfs"
            } else {
                "btrfs-filesystem-resize"
            };
            g.call(cmd, &[mountpoint]).await.map(drop)?
        }
    }
    Ok(())
}

/// Run `script` with the guest's `/bin/sh` (its `/dev`, `/proc` and `/sys` are the
/// appliance's); fails with the end of its output unless it exits 0. Temporary files go to
/// `/tmp`: `/var` may be a file system that is not on this disk (mkinitramfs would use
/// `/var/tmp`).
async fn run_in_guest(g: &mut Guestfish, script: &str) -> Result<(), ConvertError> {
    let wrapped = format!(
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C TMPDIR=/tmp\n\
         mkdir -p /tmp\n\
         ( {script}\n) </dev/null 2>&1\necho \"@@corral-rc=$?\"\n"
    );
    let started = std::time::Instant::now();
    let out = g
        .call_with_timeout("sh", &[&wrapped], GUEST_COMMAND_TIMEOUT)
        .await?;
    let (body, status) = split_status(&out);
    tracing::info!(
        command = %script,
        status,
        seconds = started.elapsed().as_secs_f64(),
        "ran in the guest"
    );
    tracing::debug!(output = %body, "guest command output");
    if status != 0 {
        return Err(ConvertError::GuestCommand {
            command: script.to_string(),
            status,
            output: CommandOutput(tail(body, 15)),
        });
    }
    Ok(())
}

/// The output before the status line, and the status (-1 when it is missing).
fn split_status(out: &str) -> (&str, i32) {
    match out.rfind("@@corral-rc=") {
        Some(i) => (
            out[..i].trim_end(),
            out[i + "@@corral-rc=".len()..].trim().parse().unwrap_or(-1),
        ),
        None => (out, -1),
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Grow the root by copying the disk into `dst` (already created, `format`, at the wanted
/// size) with `virt-resize --expand`, which moves the partitions that follow the root's.
/// Returns the change to record.
pub async fn expand_by_copy(
    src: &Path,
    dst: &Path,
    format: &str,
    e: &ExpandByCopy,
    appliance: &ApplianceOptions,
    cancel: impl Future<Output = ()>,
) -> Result<String, ConvertError> {
    let mut cmd = tokio::process::Command::new("virt-resize");
    cmd.env("LIBGUESTFS_BACKEND", "direct")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .args(["--format", format, "--output-format", format, "--expand"])
        .arg(&e.partition);
    if appliance.tcg {
        cmd.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
    }
    if let Some(lv) = &e.lv {
        cmd.args(["--lv-expand", lv]);
    }
    cmd.arg(src).arg(dst);
    let out = tokio::select! {
        o = cmd.output() => o.map_err(|io| ConvertError::Resize(CommandOutput(format!("cannot run virt-resize: {io}"))))?,
        _ = cancel => return Err(ConvertError::Cancelled),
    };
    if !out.status.success() {
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return Err(ConvertError::Resize(CommandOutput(tail(text.trim(), 15))));
    }
    Ok(match &e.lv {
        Some(lv) => format!(
            "grew partition {} and logical volume {lv} with the root file system into the new space ({}; virt-resize moved what follows)",
            e.partition, e.reason
        ),
        None => format!(
            "grew partition {} and the root file system into the new space ({}; virt-resize moved what follows)",
            e.partition, e.reason
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_command_status_is_read_from_its_last_line() {
        assert_eq!(split_status("a\nb\n@@corral-rc=0\n"), ("a\nb", 0));
        assert_eq!(split_status("oops\n@@corral-rc=2"), ("oops", 2));
        assert_eq!(split_status("cut short"), ("cut short", -1));
        assert_eq!(tail("1\n2\n3\n4", 2), "3\n4");
    }
}
