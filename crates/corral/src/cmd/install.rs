//! `corral vm install`: turn flags into a `VmInstallRequest` (reading the answer files here, so
//! a missing file is reported before anything is sent), start the install task, and follow it
//! with a progress bar until the installed system runs (or print the task with `--no-wait`).
//! `--dry-run` asks the agent for the plan instead and prints it; nothing is created.

use crate::cmd::vm::{abs, abs_file, settings_request, SettingsArgs};
use crate::output;
use anyhow::{bail, Context};
use corral_client::Client;
use corral_model::api::*;
use corral_model::format_size;
use corral_model::install::InstallPlan;
use std::path::{Path, PathBuf};

/// `corral vm install --help`'s text (on the subcommand: a doc comment there would win).
pub const INSTALL_HELP: &str = "Create a VM and install an operating system into it, as one task with phases \
    (fetching the installer, booting it, installing, rebooting into the installed system).\n\n\
    Give exactly one source:\n  \
    --location URL        an install tree: http://, ftp://, nfs://host/export/path or a local \
    directory. The layout (Debian/Ubuntu mirror or netboot, RHEL .treeinfo, SUSE, ...) is \
    detected; when nothing matches, the error lists every probe. Override detection with \
    URL,kernel=PATH,initrd=PATH.\n  \
    --cdrom ISO           vendor media: boots from CD once, then from disk (media ejected, \
    drive kept).\n  \
    --pxe                 network boot: on the default network with --boot-server DIR (boot.ipxe \
    or pxelinux.0) or --location URL (the agent serves the tree's kernel and initrd); on a \
    bridged network the LAN's boot server answers.\n  \
    --disk-import IMAGE   a cloud image as the first disk, optionally seeded with --cloud-init.\n\
    Without --template, a tree install takes the template for the OS it detects (e.g.     debian-12 for .../dists/bookworm/main/installer-amd64/), or osinfo-db's defaults for it.
    --dry-run runs every check and the detection, creates nothing and prints the plan.
    With --template NAME of a template VM (`corral vm convert-to-template`) no source is needed: \
    the new VM is a linked clone of its installed system.\n\n\
    The installer's own reboot (or power-off) ends the install; the VM then boots from its \
    disk. A failure before the installer boots leaves no VM; after it (timeout, cancel), the \
    VM is left halted so `corral vm console NAME --log` shows the installer's last screen.\n\n\
    Examples:\n  \
    corral vm install --template debian-12 --name web01 --location http://deb.debian.org/debian/\n  \
    corral vm install --name web02 --dry-run \
    --location http://deb.debian.org/debian/dists/bookworm/main/installer-amd64/\n  \
    corral vm install --template rhel-9 --name db01 --location nfs://filer/exports/rhel9\n  \
    corral vm install --template windows-server-2022 --name ad01 --cdrom win2022.iso\n  \
    corral vm install --template debian-12 --name n1 --pxe --boot-server /srv/tftp\n  \
    corral vm install --template ubuntu-24.04 --name c1 --disk-import noble.qcow2 \
    --cloud-init user-data=u.yaml";

#[derive(clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Install tree: URL or directory, optionally URL,kernel=PATH,initrd=PATH.
    #[arg(long, group = "source")]
    location: Option<String>,
    /// Install media (path or name in the ISO library).
    #[arg(long, group = "source", conflicts_with_all = ["pxe", "location"])]
    cdrom: Option<PathBuf>,
    /// Boot the installer from the network.
    #[arg(long)]
    pxe: bool,
    /// TFTP directory the agent serves for --pxe on the default network.
    #[arg(long, requires = "pxe", conflicts_with = "location")]
    boot_server: Option<PathBuf>,
    /// A ready disk image (qcow2, raw, vmdk...) to import as the first disk.
    #[arg(long, group = "source", conflicts_with_all = ["pxe", "location", "cdrom"])]
    disk_import: Option<PathBuf>,
    /// cloud-init NoCloud seed for --disk-import:
    /// user-data=FILE[,meta-data=FILE][,network-config=FILE].
    #[arg(long, requires = "disk_import")]
    cloud_init: Option<String>,
    /// Unattended answer file (preseed, kickstart or AutoYaST, per the template), put into the
    /// installer's initrd.
    #[arg(long)]
    unattended: Option<PathBuf>,
    /// More installer kernel arguments.
    #[arg(long, allow_hyphen_values = true)]
    extra_args: Option<String>,
    /// Fail the install (and power the VM off) if the installer runs longer: 90, 90s, 30m, 2h.
    #[arg(long, value_parser = parse_duration_secs)]
    timeout: Option<u64>,
    /// Return at once with the task id (follow it with `corral task show ID --wait`).
    #[arg(long, conflicts_with = "dry_run")]
    no_wait: bool,
    /// Run every check and the install tree's detection, create nothing, print the plan:
    /// detected OS, template and why, kernel and initrd, kernel arguments, disks and NICs.
    #[arg(long)]
    dry_run: bool,
}

/// `90`, `90s`, `30m`, `2h` as seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90, 90s, 30m, 2h)"))?;
    if n == 0 {
        return Err("a timeout of 0 makes no sense".into());
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too long"))
}

fn read_text(what: &str, path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))
}

fn cloud_init_request(spec: &str) -> anyhow::Result<CloudInitRequest> {
    let mut ci = CloudInitRequest::default();
    let mut user_data = None;
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--cloud-init {spec:?}: {part:?} is not KEY=FILE"))?;
        let path = PathBuf::from(v);
        match k {
            "user-data" => user_data = Some(read_text("cloud-init user-data", &path)?),
            "meta-data" => ci.meta_data = Some(read_text("cloud-init meta-data", &path)?),
            "network-config" => {
                ci.network_config = Some(read_text("cloud-init network-config", &path)?)
            }
            o => bail!(
                "--cloud-init {spec:?}: unknown key {o:?} (known: user-data, meta-data, \
                 network-config)"
            ),
        }
    }
    ci.user_data =
        user_data.with_context(|| format!("--cloud-init {spec:?} needs user-data=FILE"))?;
    Ok(ci)
}

/// A local directory given as `--location` is sent as an absolute path (the agent runs
/// elsewhere); URLs pass unchanged.
fn absolute_location(loc: String) -> String {
    if loc.contains("://") || loc.starts_with('/') {
        loc
    } else {
        abs_file(PathBuf::from(&loc)).display().to_string()
    }
}

pub fn install_request(a: InstallArgs) -> anyhow::Result<VmInstallRequest> {
    let source = match (a.location, a.cdrom, a.pxe, a.disk_import) {
        // Only a template VM needs no source; the agent says so otherwise.
        (None, None, false, None) => None,
        (location, None, true, None) => Some(InstallSource::Pxe {
            boot_server: a.boot_server.map(abs_file),
            location: location.map(absolute_location),
        }),
        (Some(location), None, false, None) => Some(InstallSource::Location {
            location: absolute_location(location),
        }),
        (None, Some(iso), false, None) => Some(InstallSource::Cdrom { iso: abs(iso) }),
        (None, None, false, Some(image)) => Some(InstallSource::DiskImport {
            image: abs_file(image),
        }),
        _ => bail!(
            "give one install source: --location URL, --cdrom ISO, --pxe or --disk-import IMAGE \
             (see `corral vm install --help`)"
        ),
    };
    Ok(VmInstallRequest {
        vm: settings_request(a.settings)?,
        source,
        extra_args: a.extra_args,
        unattended: a
            .unattended
            .map(|p| read_text("unattended file", &p))
            .transpose()?,
        cloud_init: a
            .cloud_init
            .as_deref()
            .map(cloud_init_request)
            .transpose()?,
        timeout_secs: a.timeout,
    })
}

pub async fn run(c: &Client, a: InstallArgs, json: bool) -> anyhow::Result<()> {
    let no_wait = a.no_wait;
    let dry_run = a.dry_run;
    let req = install_request(a)?;
    if dry_run {
        let plan = c.plan_install(&req).await?;
        if json {
            output::json(&plan);
        } else {
            print!("{}", render_plan(&plan));
        }
        return Ok(());
    }
    let name = req.vm.name.clone();
    let task = c.install_vm(&req).await?;
    if no_wait {
        if json {
            output::json(&serde_json::json!({ "task": task }));
        } else {
            println!("{task}");
        }
        return Ok(());
    }
    if !json {
        eprintln!(
            "installing {name} (task {task}); the installer's console: corral vm console {name}"
        );
    }
    let done = crate::progress::follow_task(c, &task, json).await?;
    let vm = c.show_vm(&name).await?;
    if json {
        output::json(&vm);
    } else {
        println!(
            "installed VM {name}: {}",
            done.result.unwrap_or_else(|| "done".into())
        );
    }
    Ok(())
}

/// The plan as a block people read: one `key: value` line per fact, disks and NICs indented.
pub fn render_plan(p: &InstallPlan) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "dry run: nothing was created");
    let _ = writeln!(o, "name:          {}", p.name);
    let _ = writeln!(
        o,
        "source:        {}{}",
        p.source,
        p.location
            .as_deref()
            .map(|l| format!(" {l}"))
            .unwrap_or_default()
    );
    if let Some(d) = &p.detected {
        let _ = writeln!(
            o,
            "detected OS:   {} ({} {}{}, {} layout)",
            d.os.as_deref().unwrap_or("unknown to osinfo-db"),
            d.name,
            d.version,
            d.codename
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default(),
            d.layout
        );
        let _ = writeln!(o, "kernel:        {}", d.kernel);
        let _ = writeln!(o, "initrd:        {}", d.initrd);
    }
    let _ = writeln!(o, "template:      {}", p.template.explanation);
    if let Some(args) = &p.kernel_args {
        let _ = writeln!(o, "kernel args:   {args}");
    }
    let _ = writeln!(
        o,
        "vCPUs, memory: {}, {}",
        p.vcpus,
        format_size(p.memory_bytes)
    );
    let _ = writeln!(o, "firmware:      {}", enum_name(&p.firmware));
    let _ = writeln!(o, "boots from:    {}", enum_name(&p.boot_device));
    if let Some(t) = p.timeout_secs {
        let _ = writeln!(o, "timeout:       {t} s");
    }
    let _ = writeln!(o, "disks:");
    if p.disks.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for d in &p.disks {
        let _ = writeln!(
            o,
            "  {}  {} {} on {}, bus {}{}",
            d.device,
            format_size(d.size_bytes),
            d.format.as_str(),
            d.sr,
            enum_name(&d.bus),
            d.import_from
                .as_ref()
                .map(|i| format!(", copy of {}", i.display()))
                .unwrap_or_default()
        );
    }
    if let Some(c) = &p.cdrom {
        let _ = writeln!(o, "cdrom:         {}", c.display());
    }
    let _ = writeln!(o, "nics:");
    if p.nics.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for n in &p.nics {
        let _ = writeln!(
            o,
            "  {}  network {}, model {}",
            n.device,
            n.network,
            enum_name(&n.model)
        );
    }
    for n in &p.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

/// A model enum's wire name (`virtio`, `uefi`), as the JSON shows it.
fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("90s"), Ok(90));
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert_eq!(parse_duration_secs("2h"), Ok(7200));
        assert!(parse_duration_secs("0").is_err());
        assert!(parse_duration_secs("soon").is_err());
        assert!(parse_duration_secs("").is_err());
    }
}
