//! `corral p2v`: copy the running Linux server this command runs on into a new VM on an
//! agent, converted to boot on virtio (issue 12, `docs/p2v.md`).
//!
//! How it flows: [`corral_p2v::scan`] finds the system disk, its file systems, the OS and
//! anything that makes the server unsupported (a `--dry-run` prints this and stops; a
//! refusal stops here too, before anything is sent). The agent opens a session
//! (`POST /v1/p2v`: name, space and converter checked, name reserved). The first pass
//! reads the ranges that hold data ([`corral_p2v::ranges`]) while the server runs and sends
//! them as frames ([`send_pass`]); the final pass freezes the server's file systems
//! ([`corral_p2v::freeze`]), reads the ranges again and sends only pieces whose content
//! changed, then thaws: its duration is the cut-over's downtime. An upload that breaks is
//! resumed after the last frame the agent applied. `finish` hands the disk to the agent's
//! conversion, which this command follows like any task. Ctrl-C or an error abandons the
//! session; the agent then removes what it received.
//!
//! Nothing is written to the source: its disk is opened read-only, and while frozen nothing
//! is printed (the terminal or log may live on a frozen file system).

use crate::progress::{bytes_style, follow_task};
use anyhow::{bail, Context};
use corral_client::ChannelBody;
use corral_client::Client;
use corral_model::transfer::{ConvertNetwork, P2vFinishRequest, P2vStartRequest};
use corral_model::{format_size, parse_size};
use corral_p2v::disk::DiskReader;
use corral_p2v::pass::{windows, Ledger, PassKind, Progress, Window};
use corral_p2v::ranges::{scan_disk_ranges, DiskRanges};
use corral_p2v::scan::SourcePlan;
use corral_p2v::wire;
use indicatif::{ProgressBar, ProgressDrawTarget};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `corral p2v --help`.
pub const P2V_HELP: &str =
    "Copy this running Linux server into a new VM on an agent, converted to \
    boot on virtio. Run it as root on the server; the server keeps running and is never \
    written.\n\n\
    What happens:\n  \
    1. the system disk (the one / is on), its partitions, LVM volumes and file systems are \
    found; an unsupported server (not Debian-family, no initramfs-tools, root on RAID or an \
    encrypted volume) is refused here, before anything is sent (--dry-run stops here and \
    shows what was found);\n  \
    2. first pass: the blocks the file systems use are sent (free blocks are not), compressed \
    and checksummed, while the server works normally;\n  \
    3. final pass: the server's file systems are frozen for a few seconds (writes wait), \
    and only what changed since the first pass is sent; this is the cut-over's downtime;\n  \
    4. the agent converts its copy to boot on virtio (initramfs with virtio drivers, fstab \
    and GRUB by UUID, network by DHCP or --network keep) and records the VM.\n\
    A dropped connection is resumed where the agent stopped. Ctrl-C abandons the copy and \
    the agent removes what it received.\n\n\
    Examples:\n  \
    corral p2v --dry-run\n  \
    corral p2v --to https://xen01:8443 --token-file t --fingerprint AB:CD:.. --name oldweb \
    --description \"old web server\"\n  \
    corral p2v --to https://xen01:8443 --token-file t --fingerprint AB:CD:.. --disk-size /=20G \
    --network keep";

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct P2vArgs {
    #[command(subcommand)]
    pub sub: Option<P2vCommand>,
    /// The agent that receives the server: https://HOST:PORT (an agent started with
    /// `serve --listen`). Needs --fingerprint and a token (--token-file or --token).
    #[arg(long, value_name = "URL", required_unless_present = "dry_run")]
    pub to: Option<String>,
    /// File holding the agent's token (its STATE_DIR/token, or one from `corral token create`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Name of the new VM (default: this server's host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Description of the new VM (default: one naming this server and how it was copied).
    #[arg(long)]
    pub description: Option<String>,
    /// The VM's disk size: SIZE for the whole disk, or /=SIZE for the root file system; the
    /// root grows into the new space. Default: the server's disk size.
    #[arg(long, value_name = "SIZE|/=SIZE")]
    pub disk_size: Option<String>,
    /// dhcp: any NIC of the VM comes up with DHCP (the old NIC's configuration is kept,
    /// commented out); keep: the configuration stays and the VM's NIC takes the old name.
    #[arg(long, value_parser = super::transfer::parse_network, value_name = "dhcp|keep", default_value = "dhcp")]
    pub network: ConvertNetwork,
    /// Storage repository on the agent for the VM's disk (default: its default repository).
    #[arg(long)]
    pub sr: Option<String>,
    /// Copy this disk instead of the one / is on: the server's disk when this runs from the
    /// P2V media (nothing of it is mounted, so one pass is enough), or another disk whose
    /// mounted file systems are frozen for the final pass.
    #[arg(long, value_name = "DEVICE")]
    pub source_disk: Option<PathBuf>,
    /// A directory whose contents are left out of the copy (repeatable): its files' blocks
    /// are not sent, and the conversion empties it. E.g. --exclude /var/cache/apt. Only on
    /// ext2/3/4 file systems.
    #[arg(long, value_name = "DIR")]
    pub exclude: Vec<String>,
    /// A shell command run after the first pass, before the file systems are frozen for the
    /// final one: e.g. stop a database so its files are consistent on disk
    /// ("systemctl stop postgresql"). The copy stops if it fails.
    #[arg(long, value_name = "COMMAND")]
    pub before_final_pass: Option<String>,
    /// Show what was found (disks, file systems, boot loader, kernel, initramfs tool) and what
    /// the conversion will change; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the disk is sent, printing the conversion's task id.
    #[arg(long)]
    pub no_wait: bool,
    /// zstd level for the data on the wire (1, the default, is the fastest; 0: uncompressed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub level: i32,
}

#[derive(clap::Subcommand)]
pub enum P2vCommand {
    /// Make the cold-P2V boot media (an ISO): boot a server from it to copy its disk
    /// without running anything from it.
    #[command(long_about = super::p2v_media::MEDIA_HELP)]
    Media(super::p2v_media::MediaArgs),
}

/// How long the final pass may keep the file systems frozen before they are thawed anyway
/// (and the copy abandoned): a server must never stay frozen.
const MAX_FREEZE: Duration = Duration::from_secs(120);
/// How long a broken upload is retried before the copy is abandoned.
const RETRY_FOR: Duration = Duration::from_secs(120);

pub async fn run(
    args: P2vArgs,
    token: Option<String>,
    fingerprint: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let given = args.source_disk.clone();
    let plan = tokio::task::spawn_blocking(move || match given {
        Some(d) => corral_p2v::scan::discover_disk(&d),
        None => corral_p2v::scan::discover(),
    })
    .await?
    .context("cannot examine this server")?;
    let disk = Arc::new(Mutex::new(
        DiskReader::open(&plan.disk)
            .with_context(|| format!("cannot open {}", plan.disk.display()))?,
    ));
    let excluded = Arc::new(checked_excludes(&plan, &args.exclude)?);
    let found = data_ranges(&plan, &disk, &excluded).await?;
    let data_bytes = found.bytes;
    if args.dry_run {
        return print_plan(&plan, &found, json);
    }
    for n in &found.notes {
        eprintln!("note: {n}");
    }
    if !plan.refusals.is_empty() {
        bail!(
            "this server cannot be converted: {}",
            plan.refusals.join("; ")
        );
    }
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let Some(to) = args.to.as_deref() else {
        bail!("--to URL is needed (the agent that receives the server)");
    };
    let token = match (&args.token_file, token) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, t) => t,
    };
    let client = Client::https(to, token.as_deref(), fingerprint.as_deref())?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "server".into());
    let name = args.name.clone().unwrap_or_else(|| host.clone());
    let disk_size_bytes = match args.disk_size.as_deref() {
        None => None,
        Some(s) => Some(target_disk_size(&plan, s)?),
    };
    let session = client
        .p2v_start(&P2vStartRequest {
            name: name.clone(),
            description: args.description.clone(),
            sr: args.sr.clone(),
            disk_bytes: plan.disk_bytes,
            data_bytes,
            disk_size_bytes,
            network: Some(args.network),
            source_host: Some(host.clone()),
            exclude: args.exclude.clone(),
        })
        .await?;
    let id = session.id.clone();
    if !json {
        eprintln!(
            "copying {} ({}, {} of data) to {to} as VM {name:?} (task {})",
            plan.disk.display(),
            format_size(plan.disk_bytes),
            format_size(data_bytes),
            session.task
        );
    }
    // Ctrl-C (or a SIGTERM/SIGHUP) drops the copy where it is: a freeze in progress is
    // thawed by its guard's drop, and the session is abandoned below. A file system frozen
    // by FIFREEZE stays frozen after the process dies, so this matters.
    let copied = tokio::select! {
        r = copy(
            &client,
            &id,
            &plan,
            disk,
            &excluded,
            found.ranges,
            args.before_final_pass.as_deref(),
            args.level,
            json,
        ) => r,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}; the copy was abandoned and nothing was created")),
    };
    let stats = match copied {
        Ok(s) => s,
        Err(e) => {
            let _ = client.p2v_cancel(&id).await;
            return Err(e);
        }
    };
    let task = client
        .p2v_finish(
            &id,
            &P2vFinishRequest {
                method: stats.method.clone(),
                final_pass_ms: Some(stats.final_pass.as_millis() as u64),
            },
        )
        .await?;
    let summary = serde_json::json!({
        "task": task,
        "vm": name,
        "method": stats.method,
        "data_bytes": stats.data_bytes,
        "wire_bytes": stats.wire_bytes,
        "first_pass_ms": stats.first_pass.as_millis() as u64,
        "final_pass_ms": stats.final_pass.as_millis() as u64,
        "final_pass_bytes": stats.final_pass_bytes,
    });
    if !json {
        eprintln!(
            "sent {} of data as {} in {:.1} s; final pass {} in {:.2} s ({}); converting (task {task})",
            format_size(stats.data_bytes),
            format_size(stats.wire_bytes),
            stats.first_pass.as_secs_f64(),
            format_size(stats.final_pass_bytes),
            stats.final_pass.as_secs_f64(),
            stats.method
        );
    }
    if args.no_wait {
        if json {
            println!("{summary}");
        } else {
            println!("{task}");
        }
        return Ok(());
    }
    let done = follow_task(&client, &task, json).await?;
    if json {
        let mut out = summary;
        out["result"] = serde_json::json!(done.result);
        out["changes"] = serde_json::json!(done.changes);
        println!("{out}");
    } else {
        println!("{}", done.result.unwrap_or_default());
        for c in &done.changes {
            println!("  {c}");
        }
    }
    Ok(())
}

/// The first of SIGINT, SIGTERM, SIGHUP (never, if they cannot be watched).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn next(s: Option<&mut Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    tokio::select! {
        _ = next(int.as_mut()) => "SIGINT",
        _ = next(term.as_mut()) => "SIGTERM",
        _ = next(hup.as_mut()) => "SIGHUP",
    }
}

/// `--disk-size SIZE` is the whole disk; `/=SIZE` the root file system's size, which grows
/// the disk by what the root lacks.
fn target_disk_size(plan: &SourcePlan, text: &str) -> anyhow::Result<u64> {
    match text.strip_prefix("/=") {
        None => parse_size(text).map_err(|e| anyhow::anyhow!("--disk-size {text:?}: {e}")),
        Some(size) => {
            let want =
                parse_size(size).map_err(|e| anyhow::anyhow!("--disk-size {text:?}: {e}"))?;
            let root = plan
                .file_systems
                .iter()
                .find(|f| f.mountpoint == std::path::Path::new("/"))
                .context("--disk-size /=SIZE needs the root file system mounted (give the disk's size, --disk-size SIZE)")?;
            if want < root.size_bytes {
                bail!(
                    "--disk-size {text}: the root file system is {} already; file systems are not shrunk",
                    format_size(root.size_bytes)
                );
            }
            Ok(plan.disk_bytes + (want - root.size_bytes))
        }
    }
}

/// A directory left out of the copy, and the file system it is on.
pub struct Excluded {
    dir: PathBuf,
    fs: corral_p2v::scan::FileSystem,
}

/// Check each `--exclude` directory: a path the conversion may empty, an existing
/// directory, on a copied ext file system (other file systems may share blocks between
/// files, so leaving some out could damage others).
fn checked_excludes(plan: &SourcePlan, dirs: &[String]) -> anyhow::Result<Vec<Excluded>> {
    dirs.iter()
        .map(|d| {
            corral_convert::exclude_path_ok(d).map_err(|e| anyhow::anyhow!(e))?;
            let dir = PathBuf::from(d);
            if !std::fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
                bail!("--exclude {d}: not a directory on this server");
            }
            let fs = plan
                .file_systems
                .iter()
                .filter(|f| !f.mountpoint.as_os_str().is_empty() && dir.starts_with(&f.mountpoint))
                .max_by_key(|f| f.mountpoint.as_os_str().len())
                .with_context(|| format!("--exclude {d}: not on a file system that is copied"))?;
            if !corral_p2v::ranges::is_ext(&fs.fstype) {
                bail!(
                    "--exclude {d}: it is on {} ({}); only ext2/3/4 directories can be left out",
                    fs.mountpoint.display(),
                    fs.fstype
                );
            }
            Ok(Excluded {
                dir,
                fs: fs.clone(),
            })
        })
        .collect()
}

/// The disk's ranges that hold data, without the blocks of excluded files, read on a
/// blocking thread (file systems' bitmaps, the excluded files' extents).
async fn data_ranges(
    plan: &SourcePlan,
    disk: &Arc<Mutex<DiskReader>>,
    excluded: &Arc<Vec<Excluded>>,
) -> anyhow::Result<DiskRanges> {
    let (plan, disk, excluded) = (plan.clone(), disk.clone(), excluded.clone());
    tokio::task::spawn_blocking(move || {
        let mut found = {
            let mut d = disk.lock().unwrap_or_else(|p| p.into_inner());
            scan_disk_ranges(&plan, &mut d)
        };
        if excluded.is_empty() {
            return Ok(found);
        }
        let mut holes = Vec::new();
        // Every file there now, whatever its age.
        let any_age = std::time::SystemTime::now() + Duration::from_secs(365 * 86400);
        for e in excluded.iter() {
            let extents = corral_p2v::unchanged::unchanged_file_extents(&e.dir, any_age)
                .with_context(|| format!("cannot list the files under {}", e.dir.display()))?;
            holes.extend(corral_p2v::ranges::fs_to_disk(&e.fs, &extents));
        }
        found.ranges = corral_p2v::ranges::subtract(found.ranges, holes);
        found.bytes = corral_p2v::ranges::total(&found.ranges);
        Ok(found)
    })
    .await?
}

fn print_plan(plan: &SourcePlan, found: &DiskRanges, json: bool) -> anyhow::Result<()> {
    let data_bytes = found.bytes;
    if json {
        let mut v = serde_json::to_value(plan)?;
        v["data_bytes"] = serde_json::json!(data_bytes);
        v["notes"] = serde_json::json!(found.notes);
        println!("{v}");
    } else {
        println!(
            "system disk   {} ({}), {} to send",
            plan.disk.display(),
            format_size(plan.disk_bytes),
            format_size(data_bytes)
        );
        for f in &plan.file_systems {
            let at = match f.mountpoint.as_os_str().is_empty() {
                true => "(not mounted)".to_string(),
                false => f.mountpoint.display().to_string(),
            };
            println!(
                "file system   {} on {} ({}, {} used of {})",
                at,
                f.device.display(),
                f.fstype,
                format_size(f.used_bytes),
                format_size(f.size_bytes)
            );
        }
        println!(
            "os            {} (kernel {})",
            plan.os.pretty_name, plan.os.kernel
        );
        println!(
            "boot          {} with {}",
            plan.firmware,
            plan.boot_loader
                .as_deref()
                .unwrap_or("no boot loader found")
        );
        println!(
            "initramfs     {}",
            plan.os.initramfs_tool.as_deref().unwrap_or("no tool found")
        );
        for d in &plan.other_disks {
            println!("not copied    {d}");
        }
        for n in &found.notes {
            println!("note: {n}");
        }
        println!("the conversion will:");
        for c in [
            "rebuild the initramfs with virtio_blk, virtio_net and virtio_pci",
            "name file systems by UUID in /etc/fstab and GRUB instead of /dev/sdX",
            "reinstall GRUB and regenerate its configuration",
            "set up the network for any NIC (dhcp) or keep it under the old name (keep)",
            "disable services for hardware a VM does not have",
        ] {
            println!("  - {c}");
        }
        for w in &plan.warnings {
            println!("warning: {w}");
        }
        for r in &plan.refusals {
            println!("refused: {r}");
        }
    }
    if plan.refusals.is_empty() {
        Ok(())
    } else {
        bail!(
            "this server cannot be converted: {}",
            plan.refusals.join("; ")
        )
    }
}

/// What the two passes did.
struct CopyStats {
    method: String,
    data_bytes: u64,
    wire_bytes: u64,
    first_pass: Duration,
    final_pass: Duration,
    final_pass_bytes: u64,
}

/// Both passes: the first on the live server, the final one with its file systems frozen.
#[allow(clippy::too_many_arguments)]
async fn copy(
    client: &Client,
    id: &str,
    plan: &SourcePlan,
    disk: Arc<Mutex<DiskReader>>,
    excluded: &Arc<Vec<Excluded>>,
    ranges: Vec<(u64, u64)>,
    before_final_pass: Option<&str>,
    level: i32,
    quiet: bool,
) -> anyhow::Result<CopyStats> {
    let io = PassIo {
        disk: disk.clone(),
        ledger: Arc::new(Mutex::new(Ledger::default())),
        level,
    };
    let started = Instant::now();
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let bar = (!quiet && std::io::stderr().is_terminal()).then_some(total);
    let first = send_pass(
        client,
        id,
        1,
        PassKind::First,
        windows(&ranges),
        io.clone(),
        bar,
    )
    .await?;
    let first_pass = started.elapsed();
    // Nothing of the disk is in use (the server runs from the P2V media): one pass is a
    // consistent copy.
    let mountpoints = plan.mountpoints();
    if !quiet {
        eprintln!(
            "first pass: {} read, {} sent in {:.1} s{}",
            format_size(first.read),
            format_size(first.wire),
            first_pass.as_secs_f64(),
            if mountpoints.is_empty() {
                ""
            } else {
                "; freezing the file systems for the final pass"
            }
        );
    }
    if mountpoints.is_empty() {
        return Ok(CopyStats {
            method: "one pass, the disk not in use (cold)".into(),
            data_bytes: first.read,
            wire_bytes: first.wire,
            first_pass,
            final_pass: Duration::ZERO,
            final_pass_bytes: 0,
        });
    }

    if let Some(cmd) = before_final_pass {
        let st = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .await
            .with_context(|| format!("cannot run --before-final-pass {cmd:?}"))?;
        if !st.success() {
            bail!("--before-final-pass {cmd:?} failed ({st}); the copy was abandoned");
        }
    }

    // The final pass. Nothing may be printed until the thaw.
    let frozen = corral_p2v::freeze::freeze(&mountpoints, MAX_FREEZE)
        .context("cannot freeze the server's file systems for the final pass")?;
    let fin = async {
        // Read under the freeze, the bitmaps are exact.
        let again = data_ranges(plan, &disk, excluded).await?;
        send_pass(
            client,
            id,
            2,
            PassKind::Final,
            windows(&again.ranges),
            io,
            None,
        )
        .await
    }
    .await;
    let thawed = frozen.thaw();
    for e in &thawed.errors {
        eprintln!("error: {e} (run `fsfreeze -u MOUNTPOINT` to thaw it)");
    }
    if thawed.by_watchdog {
        bail!(
            "the final pass took longer than {} s, so the file systems were thawed before it ended and the copy is not consistent; nothing was created",
            MAX_FREEZE.as_secs()
        );
    }
    let fin = fin?;
    Ok(CopyStats {
        method: format!(
            "first pass live, final pass with {} frozen",
            mountpoints
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
        data_bytes: first.read,
        wire_bytes: first.wire + fin.wire,
        first_pass,
        final_pass: thawed.frozen_for,
        final_pass_bytes: fin.sent,
    })
}

/// What a pass reads from and remembers into.
#[derive(Clone)]
struct PassIo {
    disk: Arc<Mutex<DiskReader>>,
    ledger: Arc<Mutex<Ledger>>,
    level: i32,
}

#[derive(Debug, Default, Clone, Copy)]
struct PassStats {
    /// Disk bytes read.
    read: u64,
    /// Disk bytes sent (before compression).
    sent: u64,
    /// Bytes on the wire.
    wire: u64,
}

/// Send one pass, resuming after broken uploads for up to [`RETRY_FOR`].
async fn send_pass(
    client: &Client,
    id: &str,
    pass: u32,
    kind: PassKind,
    windows: Vec<Window>,
    io: PassIo,
    bar_total: Option<u64>,
) -> anyhow::Result<PassStats> {
    let windows = Arc::new(windows);
    let progress = Arc::new(Mutex::new(Progress::default()));
    let bar = bar_total.map(|t| {
        let b = ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr());
        b.set_style(bytes_style("first pass"));
        b
    });
    let stats = Arc::new(Mutex::new(PassStats::default()));
    let (mut from_window, mut next_seq) = (0usize, 1u64);
    let mut failing_since: Option<Instant> = None;
    loop {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let producer = {
            let (windows, progress, io, stats, bar) = (
                windows.clone(),
                progress.clone(),
                io.clone(),
                stats.clone(),
                bar.clone(),
            );
            std::thread::spawn(move || {
                produce(
                    kind,
                    &windows,
                    from_window,
                    next_seq,
                    &io,
                    &progress,
                    &stats,
                    bar.as_ref(),
                    tx,
                )
            })
        };
        let sent = client.p2v_data(id, pass, ChannelBody(rx)).await;
        let produced = producer
            .join()
            .map_err(|_| anyhow::anyhow!("the reader thread failed"))?;
        produced?;
        let why = match sent {
            Ok(s) if s.pass_complete => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                return Ok(*stats.lock().unwrap_or_else(|p| p.into_inner()));
            }
            Ok(_) => "the upload ended before the pass did".to_string(),
            // The agent refused the data or the session: retrying will not help. Only a
            // second upload still running there (409) or a broken connection is retried.
            Err(corral_client::ClientError::Api(a))
                if a.kind != corral_model::ErrorKind::Conflict =>
            {
                return Err(corral_client::ClientError::Api(a).into())
            }
            Err(e) => e.to_string(),
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RETRY_FOR {
            bail!(
                "the upload kept failing for {} s: {why}",
                RETRY_FOR.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Ok(s) = client.p2v_show(id).await else {
            continue;
        };
        (from_window, next_seq) = progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resume(s.applied);
        // Never print while frozen (the final pass): the terminal may be on a frozen file system.
        if kind == PassKind::First {
            eprintln!(
                "upload interrupted ({why}); resuming after frame {}",
                s.applied
            );
        }
    }
}

/// Read windows from `from_window` on, and feed their frames (numbered from `seq`) and the
/// pass's end frame into `tx`. Runs on its own thread; compression of a batch of windows
/// runs on as many threads as there are CPUs.
#[allow(clippy::too_many_arguments)]
fn produce(
    kind: PassKind,
    windows: &[Window],
    from_window: usize,
    first_seq: u64,
    io: &PassIo,
    progress: &Mutex<Progress>,
    stats: &Mutex<PassStats>,
    bar: Option<&ProgressBar>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut seq = first_seq - 1;
    let batch = threads * 2;
    let mut i = from_window;
    while i < windows.len() {
        // Read a batch and decide what to send, in disk order.
        let mut jobs: Vec<(usize, u64, Vec<u8>)> = Vec::new();
        let end = (i + batch).min(windows.len());
        for (wi, w) in windows.iter().enumerate().take(end).skip(i) {
            let mut disk = io.disk.lock().unwrap_or_else(|p| p.into_inner());
            let data = disk
                .read_at(w.offset, w.len as usize)
                .with_context(|| format!("cannot read the disk at byte {}", w.offset))?;
            let runs = io
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .runs(kind, *w, data);
            let mut st = stats.lock().unwrap_or_else(|p| p.into_inner());
            st.read += w.len;
            for r in runs {
                st.sent += r.len as u64;
                jobs.push((wi, r.offset, data[r.at..r.at + r.len].to_vec()));
            }
            if let Some(b) = bar {
                b.inc(w.len);
            }
        }
        // Compress in parallel, send in order.
        let level = (io.level > 0).then_some(io.level);
        let per_thread = jobs.len().div_ceil(threads).max(1);
        let mut frames: Vec<Vec<u8>> = vec![Vec::new(); jobs.len()];
        std::thread::scope(|s| {
            for (part, out) in jobs.chunks(per_thread).zip(frames.chunks_mut(per_thread)) {
                s.spawn(move || {
                    for ((_, offset, data), o) in part.iter().zip(out.iter_mut()) {
                        *o = wire::encode_data(0, *offset, data, level);
                    }
                });
            }
        });
        for ((wi, _, _), mut f) in jobs.into_iter().zip(frames) {
            seq = progress.lock().unwrap_or_else(|p| p.into_inner()).frame(wi);
            wire::set_seq(&mut f, seq);
            stats.lock().unwrap_or_else(|p| p.into_inner()).wire += f.len() as u64;
            if tx.blocking_send(Ok(bytes::Bytes::from(f))).is_err() {
                // The upload ended; the caller finds out why and resumes.
                return Ok(());
            }
        }
        i = end;
    }
    let _ = tx.blocking_send(Ok(bytes::Bytes::from(wire::encode_end(seq + 1))));
    Ok(())
}
