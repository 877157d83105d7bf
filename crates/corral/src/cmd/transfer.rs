//! `corral vm export|import|clone|copy|convert-to-template`.
//!
//! Export downloads the archive stream into `FILE.partial` while following the export task's
//! progress, and renames it to `FILE` only when the stream ended cleanly and the task
//! succeeded; on any failure or Ctrl-C the partial file is removed (and the task cancelled).
//! Import uploads the file as a stream with a byte counter; an OVF package given as a
//! directory or a `.ovf` file is sent as an OVA that is tarred on the fly (descriptor, its
//! manifest, then the files the descriptor references), so the agent has one import path
//! for streams and never reads client-side paths.

use crate::output;
use crate::progress::{follow_task, watch_task};
use anyhow::{bail, Context};
use bytes::Bytes;
use corral_client::{ChannelBody, Client, ImportOutcome};
use corral_model::transfer::*;
use corral_model::*;
use indicatif::{ProgressBar, ProgressDrawTarget};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const CHUNK: usize = 1 << 20;

#[derive(clap::Args)]
pub struct ExportArgs {
    pub name: String,
    /// Archive file to write (refused if it exists).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// corral (native, fast) or ova (OVF 1.0 package for other hypervisors).
    #[arg(long, default_value = "corral", value_parser = parse_format)]
    pub format: ExportFormat,
    /// zstd or none (corral format only).
    #[arg(long, value_parser = parse_compress)]
    pub compress: Option<ExportCompression>,
    /// zstd level 1..19 (corral format only; default 1).
    #[arg(long)]
    pub level: Option<i32>,
}

/// `corral vm import --help`.
pub const IMPORT_HELP: &str = "Import a VM from an archive, or convert a server's disk image into a VM.\n\n\
    FILE is a corral archive, an OVA, an XVA (plain, gzip or zstd), a .ovf file or a directory \
    holding one; the format is detected from the content. The file is uploaded to the agent, \
    which reads it as a stream (a dry run first checks the name and the archive's description \
    after a few megabytes).\n\n\
    With --convert, FILE is an offline disk image (raw, qcow2 or a single-file VMDK) of a Linux \
    server (Debian or Ubuntu family, BIOS or UEFI, GRUB 2), e.g. a dd copy of a physical disk \
    or another hypervisor's disk. The image itself is never changed: the new VM gets its own \
    copy, converted inside a libguestfs appliance so that it boots on virtio-blk and \
    virtio-net:\n  \
    - /etc/fstab, crypttab and GRUB name file systems by UUID instead of /dev/sdX;\n  \
    - the initramfs is rebuilt by the guest's update-initramfs with the virtio drivers;\n  \
    - GRUB is reinstalled (BIOS) or the EFI fallback loader set up (UEFI), grub.cfg regenerated;\n  \
    - the network configuration bound to the old NIC is commented out and any Ethernet NIC \
    gets DHCP (--network dhcp), or the VM's NIC is given the old NIC's name (--network keep);\n  \
    - services for hardware a VM lacks (SMART, IPMI, other hypervisors' tools) are disabled;\n  \
    - with --disk-size, the disk, the root partition (and LVM volumes) and file system grow.\n\
    Phases: copying, inspecting, converting, done (several minutes under TCG). Every change \
    is listed when it ends (`corral task show ID` keeps them). Refused before any VM or \
    volume exists: a disk without Linux, an unreadable root file system, an unsupported \
    guest, too little space in the repository.\n\n\
    Examples:\n  \
    corral vm import web01.corral\n  \
    corral vm import appliance.ova --name app2 --sr fast\n  \
    corral vm import oldweb.img --convert --name oldweb --disk-size 20G\n  \
    corral vm import db.vmdk --convert --name db --network keep";

#[derive(clap::Args)]
pub struct ImportArgs {
    /// A corral archive, an OVA, an XVA (plain, gzip or zstd), a .ovf file or a directory
    /// holding one; with --convert, a disk image (raw, qcow2 or VMDK) of a Linux server.
    pub file: PathBuf,
    /// Name of the new VM (default: the name in the archive; with --convert, the image's
    /// file name without its extension).
    #[arg(long)]
    pub name: Option<String>,
    /// Storage repository for the disks.
    #[arg(long)]
    pub sr: Option<String>,
    /// Import as a template VM.
    #[arg(long)]
    pub as_template: bool,
    /// Keep the archive's MAC addresses (default: new ones).
    #[arg(long)]
    pub preserve_macs: bool,
    /// Show what would be created and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// FILE is a Linux server's disk image: convert the VM's copy of it to boot on virtio
    /// (V2V; see above).
    #[arg(long)]
    pub convert: bool,
    /// With --convert: the VM's disk size (e.g. 20G); larger than the image grows the root
    /// partition and file system into the new space.
    #[arg(long, requires = "convert", value_parser = parse_size, value_name = "SIZE")]
    pub disk_size: Option<u64>,
    /// With --convert: dhcp (default): the old NIC's configuration is commented out and any
    /// Ethernet NIC comes up with DHCP; keep: the configuration stays and the VM's NIC takes
    /// the old NIC's name.
    #[arg(long, requires = "convert", value_parser = parse_network, value_name = "dhcp|keep")]
    pub network: Option<ConvertNetwork>,
}

pub(crate) fn parse_network(s: &str) -> Result<ConvertNetwork, String> {
    match s {
        "dhcp" => Ok(ConvertNetwork::Dhcp),
        "keep" => Ok(ConvertNetwork::Keep),
        o => Err(format!("network mode {o:?} is not dhcp or keep")),
    }
}

/// A VM name from an image's file name: its stem, with characters names cannot hold
/// replaced by `-`.
fn name_from_file(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_string_lossy();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let name: String = name.chars().take(63).collect();
    (!name.is_empty()).then_some(name)
}

fn parse_format(s: &str) -> Result<ExportFormat, String> {
    match s {
        "corral" => Ok(ExportFormat::Corral),
        "ova" => Ok(ExportFormat::Ova),
        o => Err(format!("format {o:?} is not corral or ova")),
    }
}

fn parse_compress(s: &str) -> Result<ExportCompression, String> {
    match s {
        "zstd" => Ok(ExportCompression::Zstd),
        "none" => Ok(ExportCompression::None),
        o => Err(format!("compression {o:?} is not zstd or none")),
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

pub async fn export(c: &Client, a: ExportArgs, json: bool) -> anyhow::Result<()> {
    if a.output.exists() {
        bail!(
            "{} already exists; remove it or choose another file",
            a.output.display()
        );
    }
    let partial = partial_path(&a.output);
    let q = ExportQuery {
        format: a.format,
        compress: a.compress.unwrap_or_default(),
        level: a.level,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let started = std::time::Instant::now();
    let mut dl = match c.export_vm(&a.name, &q).await {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    let task = dl.task.clone();
    let partial_name = partial.display().to_string();
    // `async move`: the stream ends with this future. Were it only borrowed, a failed write
    // (a full disk) would end the download but keep the connection open, the agent would
    // wait for us to read on, its task would never end, and neither would `watch`.
    let download = async move {
        let partial = partial_name;
        let mut written = 0u64;
        while let Some(chunk) = dl.chunk().await? {
            file.write_all(&chunk)
                .await
                .with_context(|| format!("cannot write {partial}"))?;
            written += chunk.len() as u64;
        }
        file.sync_all().await?;
        anyhow::Ok(written)
    };
    let watch = watch_task(c, &task, json);
    let outcome = tokio::select! {
        r = async { tokio::join!(download, watch) } => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    let (written, t) = match outcome {
        None => {
            let _ = std::fs::remove_file(&partial);
            let _ = c.cancel_task(&task).await;
            bail!("interrupted; the export was cancelled and nothing was written");
        }
        Some((d, w)) => match (d, w) {
            (Ok(n), Ok(t)) if t.state == task::TaskState::Succeeded => (n, t),
            (d, w) => {
                let _ = std::fs::remove_file(&partial);
                // Our own write failed (a full disk): that is why, whatever the task says
                // about the client that went away.
                if let Err(e) = &d {
                    if e.root_cause().downcast_ref::<std::io::Error>().is_some() {
                        let _ = c.cancel_task(&task).await;
                        return d.map(|_| ());
                    }
                }
                // The task's error says why; else the stream's.
                if let Ok(t) = &w {
                    if let Some(e) = &t.error {
                        return Err(corral_client::ClientError::Api(e.clone()).into());
                    }
                }
                d?;
                w?;
                bail!("the export did not complete");
            }
        },
    };
    std::fs::rename(&partial, &a.output).with_context(|| {
        format!(
            "cannot rename {} to {}",
            partial.display(),
            a.output.display()
        )
    })?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        output::json(&serde_json::json!({
            "file": a.output, "bytes": written, "seconds": secs, "task": t.id, "result": t.result,
        }));
    } else {
        println!(
            "exported {} to {} ({}, {:.1} s)",
            a.name,
            a.output.display(),
            format_size(written),
            secs
        );
    }
    Ok(())
}

/// Writes into the upload channel in chunks.
struct ChanWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
    /// Bytes left to send (a dry run sends only the head).
    left: u64,
    /// Counts what was sent, when a progress bar is shown.
    bar: Option<ProgressBar>,
}

/// Why the upload writer stopped on purpose, told apart from real I/O errors by type.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum FeedStop {
    #[error("enough of the archive was sent for a dry run")]
    CapReached,
    #[error("upload closed")]
    Closed,
}

/// Whether `e` (anywhere in its chain) is the writer stopping with `stop`.
fn stopped_with(e: &anyhow::Error, stop: FeedStop) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<FeedStop>())
            == Some(&stop)
    })
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            self.flush()?;
            return Err(std::io::Error::other(FeedStop::CapReached));
        }
        let data = &data[..data.len().min(self.left as usize)];
        self.left -= data.len() as u64;
        self.buf.extend_from_slice(data);
        if let Some(b) = &self.bar {
            b.inc(data.len() as u64);
        }
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // A full-size buffer for the next chunk: `take` would leave an empty one that grows by
        // doubling, copying every chunk about twice more.
        let b = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(b))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, FeedStop::Closed))
    }
}

/// The OVF descriptor of a package given as a directory or a `.ovf` file, if it is one.
fn ovf_descriptor(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    if path.is_dir() {
        let mut found = Vec::new();
        for e in std::fs::read_dir(path)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ovf")) {
                found.push(p);
            }
        }
        return match found.len() {
            1 => Ok(found.pop()),
            0 => bail!("{} holds no .ovf file", path.display()),
            n => bail!("{} holds {n} .ovf files; name one", path.display()),
        };
    }
    let mut head = [0u8; 4096];
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(
        (corral_archive::detect_format(&head[..n]) == corral_archive::ArchiveKind::OvfDescriptor)
            .then(|| path.to_path_buf()),
    )
}

/// The members of an OVF package sent as an OVA: descriptor, manifest, referenced files,
/// each with its name in the archive and its path here.
fn ovf_package_files(desc: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = desc.parent().unwrap_or(Path::new("."));
    let xml =
        std::fs::read_to_string(desc).with_context(|| format!("cannot read {}", desc.display()))?;
    let plan = corral_archive::ova::parse_ovf(xml.trim_start_matches('\u{feff}'))
        .with_context(|| format!("{} is not a valid OVF descriptor", desc.display()))?;
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let name_of = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    files.push((name_of(desc), desc.to_path_buf()));
    let mf = desc.with_extension("mf");
    if mf.is_file() {
        files.push((name_of(&mf), mf));
    }
    for f in &plan.files {
        let rel = Path::new(&f.href);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!(
                "the descriptor references {:?}, which is not a file inside the package",
                f.href
            );
        }
        files.push((f.href.clone(), dir.join(rel)));
    }
    Ok(files)
}

/// Bytes of the tar stream `tar_ovf_package` writes for `files`: a header and whole
/// 512-byte blocks per member, two zero blocks at the end (names over 100 bytes add a
/// block or two, so this is what the progress bar aims at, not a promise).
fn ovf_package_tar_len(files: &[(String, PathBuf)]) -> anyhow::Result<u64> {
    let mut total = 1024;
    for (_, path) in files {
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .len();
        total += 512 + len.div_ceil(512) * 512;
    }
    Ok(total)
}

/// Tar an OVF package as an OVA into `out`.
fn tar_ovf_package(files: Vec<(String, PathBuf)>, out: ChanWriter) -> anyhow::Result<()> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Deterministic);
    for (name, path) in files {
        let mut file = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut h = tar::Header::new_ustar();
        h.set_size(file.metadata()?.len());
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &name, &mut file)
            .with_context(|| format!("cannot send {}", path.display()))?;
    }
    b.into_inner()?.flush()?;
    Ok(())
}

/// Most bytes a dry run sends: the agent reads no further than the archive's description.
const DRY_RUN_BYTES: u64 = 32 << 20;

pub async fn import(c: &Client, a: ImportArgs, json: bool) -> anyhow::Result<()> {
    let file = std::path::absolute(&a.file).unwrap_or(a.file.clone());
    let (name, data_bytes, image_bytes) = if a.convert {
        use std::os::unix::fs::MetadataExt;
        let m =
            std::fs::metadata(&file).with_context(|| format!("cannot open {}", file.display()))?;
        if !m.is_file() {
            bail!("{} is not a disk image file", file.display());
        }
        let name = match a.name {
            Some(n) => n,
            None => name_from_file(&file).with_context(|| {
                format!(
                    "cannot make a VM name of {}; give one with --name",
                    file.display()
                )
            })?,
        };
        (
            Some(name),
            Some((m.blocks() * 512).min(m.len())),
            Some(m.len()),
        )
    } else {
        (a.name, None, None)
    };
    let q = ImportQuery {
        name,
        sr: a.sr,
        as_template: a.as_template,
        preserve_macs: a.preserve_macs,
        dry_run: true,
        convert: a.convert,
        disk_size_bytes: a.disk_size,
        network: a.network,
        data_bytes,
        image_bytes,
    };
    // A dry run first: a name collision or an unreadable archive is reported after a few
    // megabytes instead of after the whole upload.
    let plan = upload(c, &file, &q, json || !a.dry_run).await?;
    if a.dry_run {
        return print_outcome(plan, json);
    }
    let q = ImportQuery {
        dry_run: false,
        image_bytes: None,
        ..q
    };
    let done = upload(c, &file, &q, json).await?;
    if let ImportOutcome::Accepted(task) = done {
        return follow_conversion(c, &task, q.name.as_deref().unwrap_or_default(), json).await;
    }
    print_outcome(done, json)
}

/// Follow the task converting an uploaded image; print what it changed and the new VM.
async fn follow_conversion(c: &Client, task: &str, name: &str, json: bool) -> anyhow::Result<()> {
    let outcome = tokio::select! {
        r = watch_task(c, task, json) => Some(r?),
        _ = tokio::signal::ctrl_c() => None,
    };
    let Some(t) = outcome else {
        let _ = c.cancel_task(task).await;
        bail!("interrupted; the conversion was cancelled and nothing was created");
    };
    if t.state != task::TaskState::Succeeded {
        if let Some(e) = t.error {
            return Err(corral_client::ClientError::Api(e).into());
        }
        bail!(
            "the conversion ended {}{}",
            t.state.as_str(),
            t.result.map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    let vm = c.show_vm(name).await?;
    if json {
        output::json(&serde_json::json!({ "task": t, "vm": vm }));
        return Ok(());
    }
    println!("{}", t.result.as_deref().unwrap_or("converted"));
    for change in &t.changes {
        println!("  - {change}");
    }
    println!(
        "imported {} ({}); start it with `corral vm start {}`",
        vm.name, vm.id, vm.name
    );
    Ok(())
}

async fn upload(
    c: &Client,
    file: &Path,
    q: &ImportQuery,
    quiet: bool,
) -> anyhow::Result<ImportOutcome> {
    let cap = if q.dry_run { DRY_RUN_BYTES } else { u64::MAX };
    // A package given as a directory or a .ovf file is tarred on the fly: its length is
    // known only roughly, so the request is chunked and the bar aims at the tar's size.
    let package = ovf_descriptor(file)?
        .map(|d| ovf_package_files(&d))
        .transpose()?;
    let (length, bar_len) = match &package {
        Some(files) => (None, ovf_package_tar_len(files)?.min(cap)),
        None => {
            let len = std::fs::metadata(file)
                .with_context(|| format!("cannot open {}", file.display()))?
                .len()
                .min(cap);
            (Some(len), len)
        }
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::with_draw_target(Some(bar_len), ProgressDrawTarget::stderr());
        b.set_style(crate::progress::bytes_style("uploading"));
        b
    });
    let feeder = {
        let (file, bar) = (file.to_path_buf(), bar.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut out = ChanWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
                left: cap,
                bar: bar.clone(),
            };
            let r = match package {
                Some(files) => tar_ovf_package(files, out),
                None => (|| {
                    let mut f = std::fs::File::open(&file)?;
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 || out.left == 0 {
                            break;
                        }
                        out.write_all(&buf[..n])?;
                    }
                    out.flush()?;
                    anyhow::Ok(())
                })(),
            };
            if let (Ok(()), Some(b)) = (&r, &bar) {
                // The agent still decodes, verifies and places the last data it received:
                // say so rather than leave a bar standing at 100 %.
                b.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                b.set_message("uploaded; the agent is verifying and placing the volumes");
                b.enable_steady_tick(std::time::Duration::from_millis(200));
            }
            if let Err(e) = &r {
                if stopped_with(e, FeedStop::CapReached) {
                    return Ok(());
                }
                // Abort the upload rather than let the agent see a short, clean stream.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
            r
        })
    };
    let answer = c.import_vm(q, ChannelBody(rx), length).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            // A local read error explains a failed upload better than the agent's view.
            if let Ok(Err(local)) = feeder.await {
                if !stopped_with(&local, FeedStop::Closed) {
                    return Err(local);
                }
            }
            return Err(e.into());
        }
    };
    // A dry run of a tarred OVF package stops reading early; the feeder's error is expected.
    let _ = feeder.await;
    Ok(answer)
}

fn print_outcome(answer: ImportOutcome, json: bool) -> anyhow::Result<()> {
    match answer {
        ImportOutcome::Plan(p) => {
            if json {
                output::json(&p);
            } else {
                print_plan(&p);
            }
        }
        ImportOutcome::Accepted(task) => {
            if json {
                output::json(&serde_json::json!({ "task": task }));
            } else {
                println!("the import runs as task {task}");
            }
        }
        ImportOutcome::Imported(ans) => {
            if json {
                output::json(&ans);
            } else {
                for w in &ans.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "imported {} ({}){}",
                    ans.vm.name,
                    ans.vm.id,
                    if ans.vm.is_template {
                        " as a template"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

fn print_plan(p: &ImportPlan) {
    let s = &p.spec;
    if matches!(p.format.as_str(), "raw" | "qcow2" | "vmdk") {
        println!(
            "would convert a {} disk image into (the firmware is the image's):",
            p.format
        );
    } else {
        println!("would import a {} archive as:", p.format);
    }
    output::fields(&[
        ("name", s.name.clone()),
        ("description", s.description.clone()),
        ("vcpus", s.vcpus.to_string()),
        ("memory", format_size(s.memory_bytes)),
        ("cpu weight", s.cpu_weight.to_string()),
        ("autostart", s.autostart.to_string()),
        ("firmware", s.firmware.to_string()),
        ("template", s.is_template.to_string()),
    ]);
    output::table(
        &["DISK", "SIZE", "DATA", "BUS", "FORMAT"],
        p.disks
            .iter()
            .map(|d| {
                vec![
                    d.device.clone(),
                    format_size(d.virtual_size_bytes),
                    d.allocated_bytes
                        .map(format_size)
                        .unwrap_or_else(|| "-".into()),
                    format!("{:?}", d.bus).to_lowercase(),
                    d.format.as_str().into(),
                ]
            })
            .collect(),
    );
    output::table(
        &["NIC", "NETWORK", "MODEL", "MAC"],
        s.nics
            .iter()
            .map(|n| {
                vec![
                    n.device.clone(),
                    n.network.clone(),
                    format!("{:?}", n.model).to_lowercase(),
                    n.mac.clone(),
                ]
            })
            .collect(),
    );
    for w in &p.warnings {
        println!("warning: {w}");
    }
}

pub async fn clone(c: &Client, source: &str, name: &str, json: bool) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let ans = c
        .clone_vm(
            source,
            &CloneRequest {
                name: name.into(),
                sr: None,
            },
        )
        .await?;
    if json {
        output::json(&ans.vm);
    } else {
        println!(
            "cloned {source} to {} ({}) in {:.1} ms",
            ans.vm.name,
            ans.vm.id,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

pub async fn copy(
    c: &Client,
    source: &str,
    name: &str,
    sr: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let task = c
        .copy_vm_nowait(
            source,
            &CloneRequest {
                name: name.into(),
                sr,
            },
        )
        .await?;
    let interrupted = tokio::select! {
        r = follow_task(c, &task, json) => { r?; false }
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        let _ = c.cancel_task(&task).await;
        bail!("interrupted; the copy was cancelled");
    }
    let vm = c.show_vm(name).await?;
    if json {
        output::json(&vm);
    } else {
        println!("copied {source} to {} ({})", vm.name, vm.id);
    }
    Ok(())
}

pub async fn convert_to_template(c: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let ans = c.convert_to_template(name).await?;
    if json {
        output::json(&ans.vm);
    } else {
        println!("{name} is now a template; create VMs from it with `corral vm create --template {name} --name NEW`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upload bar of a directory or .ovf import aims at the tar's size: it must end at
    /// exactly 100 % for ordinary member names.
    #[test]
    fn image_file_names_make_vm_names() {
        for (file, name) in [
            ("/x/oldweb.img", Some("oldweb")),
            ("/x/My Server (2).qcow2", Some("My-Server--2-")),
            ("/x/.hidden.raw", Some("hidden")),
            ("/x/__.vmdk", None),
        ] {
            assert_eq!(name_from_file(Path::new(file)).as_deref(), name, "{file}");
        }
    }

    #[test]
    fn ovf_package_tar_len_is_the_streamed_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (name, len) in [
            ("app.ovf", 700usize),
            ("app.mf", 0),
            ("disk-1.vmdk", (1 << 20) + 3),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![7u8; len]).unwrap();
            files.push((name.to_string(), p));
        }
        let expected = ovf_package_tar_len(&files).unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        let out = ChanWriter {
            tx,
            buf: Vec::new(),
            left: u64::MAX,
            bar: None,
        };
        tar_ovf_package(files, out).unwrap();
        let mut sent = 0u64;
        while let Ok(chunk) = rx.try_recv() {
            sent += chunk.unwrap().len() as u64;
        }
        assert_eq!(sent, expected);
    }
}
