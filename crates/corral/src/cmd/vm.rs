//! `corral vm ...`: create, list, show, power actions, settings, disks, CD, NICs, consoles.

use crate::output;
use anyhow::{bail, Context};
use clap::Subcommand;
use corral_client::Client;
use corral_model::api::*;
use corral_model::validate::{describe_cpu_weight, parse_cpu_weight};
use corral_model::*;
use std::path::PathBuf;

/// `300ms`, `2s`, `10m` or plain milliseconds, as milliseconds.
fn duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        (t, 1)
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a duration (300ms, 2s, 10m)"))
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text)
}
fn weight(text: &str) -> Result<u32, String> {
    parse_cpu_weight(text)
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// Create a VM (the chapter's "Install XenVM" form).
    #[command(long_about = "Create a VM.\n\n\
        Every field may come from a template (--template NAME; see `corral template list`); \
        flags override it. Without a template: 1 vCPU, 1 GiB, no disks, one virtio NIC on the \
        `default` network.\n\n\
        --disk SIZE[,sr=REPO][,format=qcow2|raw][,bus=virtio|sata|ide][,from=IMAGE]   (repeatable)\n\
        --disk ,from=IMAGE   copies an existing image (qcow2, raw, vmdk...) into a new volume\n\
        --nic NETWORK[,model=virtio|e1000|rtl8139][,mac=52:54:00:..]   (repeat, at most 8)\n\n\
        Examples:\n  \
        corral vm create --name web01 --description \"intranet web\" --vcpus 2 --memory 1G \\\n      \
        --disk 10G --disk 20G,sr=fast --nic default --nic lan,model=e1000 --autostart --cpu-weight high\n  \
        corral vm create --name t1 --template corral-test-guest --kernel /boot/vmlinuz --initrd /boot/initrd.img --cmdline console=ttyS0")]
    Create(CreateArgs),
    /// Create a VM and install an OS into it: from an install tree, media, PXE or an image.
    #[command(long_about = crate::cmd::install::INSTALL_HELP)]
    Install(crate::cmd::install::InstallArgs),
    /// List VMs.
    List,
    /// Show one VM.
    Show { name: String },
    /// Start a halted VM.
    Start {
        name: String,
        /// Return at once with the task id.
        #[arg(long)]
        no_wait: bool,
        /// Start it on this pool member (`auto`: placement picks). A halted VM whose disks are
        /// all on shared repositories moves there first.
        #[arg(long, value_name = "auto|HOST")]
        on: Option<String>,
    },
    /// Move a VM to another pool member. A running (or paused) VM moves live: its memory,
    /// devices and MAC addresses go over an encrypted stream between the two QEMUs while it
    /// keeps running, and it pauses only for the switchover. A halted VM just changes owner.
    /// Pre-checks run first and say what would fail and why (`--check` stops there). Until
    /// the switchover the VM runs here; a failure or `corral task cancel` leaves it running
    /// here and removes what the target had started.
    ///
    /// Examples:
    ///   corral vm migrate web01 --to xen02
    ///   corral vm migrate web01 --to auto --check
    ///   corral vm migrate db01 --to xen02 --with-storage --max-downtime 500ms
    #[command(verbatim_doc_comment)]
    Migrate {
        name: String,
        /// The target member, or `auto` for the one placement rates best.
        #[arg(long, value_name = "HOST|auto")]
        to: String,
        /// Kept for the chapter's `xm migrate --live`: a running VM always moves live.
        #[arg(long)]
        live: bool,
        /// Mirror every disk to a new volume on the target (disks it cannot see).
        #[arg(long)]
        with_storage: bool,
        /// The target's repository for mirrored disks [default: its `default`].
        #[arg(long, value_name = "REPO", requires = "with_storage")]
        target_sr: Option<String>,
        /// Longest pause the migration may escalate to: 300ms, 2s [default: 300ms; it starts at 50ms].
        #[arg(long, value_parser = duration_ms, value_name = "DURATION")]
        max_downtime: Option<u64>,
        /// Limit the migration stream: 100M, 1G (bytes per second) [default: no limit].
        #[arg(long, value_parser = size, value_name = "RATE")]
        bandwidth: Option<u64>,
        /// Allow post-copy as the last escalation step (the guest runs on the target while
        /// the rest of its memory follows; a failure then loses the guest).
        #[arg(long)]
        postcopy: bool,
        /// Give up after this long, keeping the VM here: 90s, 10m [default: 10m].
        #[arg(long, value_parser = duration_ms, value_name = "DURATION")]
        deadline: Option<u64>,
        /// Send the migration stream in clear (only on a network you trust).
        #[arg(long)]
        insecure_stream: bool,
        /// Run the pre-checks only; nothing moves.
        #[arg(long)]
        check: bool,
        /// Return at once with the task id.
        #[arg(long)]
        no_wait: bool,
    },
    /// Press the ACPI power button and wait for the guest to power off.
    Shutdown {
        name: String,
        /// Seconds to wait for the guest.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[arg(long)]
        no_wait: bool,
    },
    /// Pull the plug (no guest cooperation).
    Poweroff { name: String },
    /// Reset the VM (hard reboot).
    Reboot { name: String },
    /// Freeze the VM's vCPUs.
    Pause { name: String },
    /// Continue a paused VM.
    Resume { name: String },
    /// Delete a VM and its disks.
    Delete {
        name: String,
        /// Power off a running VM first.
        #[arg(long)]
        force: bool,
        /// Keep the disk volumes.
        #[arg(long)]
        keep_disks: bool,
    },
    /// Change settings. vCPU and memory changes apply at the next start; CPU weight at once.
    Set(SetArgs),
    /// Add or remove virtual disks (VM halted).
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Insert or eject CD/DVD media (also while running).
    #[command(subcommand)]
    Cdrom(CdromCommand),
    /// Add or remove network interfaces (VM halted).
    #[command(subcommand)]
    Nic(NicCommand),
    /// Interactive serial console (Ctrl-] detaches), or its log with --log.
    Console {
        name: String,
        /// Print what the console has shown since the VM started, and exit. With --json:
        /// {"vm", "log" (text; bytes that are not UTF-8 become U+FFFD), "bytes" (the raw
        /// length), "lossy" (true if any byte was replaced)}.
        #[arg(long)]
        log: bool,
    },
    /// Guest tools (paravirtual drivers) for the VM.
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// The graphical console (VNC). Without --listen: where it listens on the VM's host
    /// (loopback only, for a viewer on that host). With --listen: serve it here, through
    /// the agent, wherever in the pool the VM runs (it follows migrations):
    /// `corral vm vnc web01 --listen 127.0.0.1:5901`, then `vncviewer 127.0.0.1:5901`.
    /// Runs until interrupted (Ctrl-C).
    Vnc {
        name: String,
        /// Loopback address to serve the console on (port 0: any free port, printed). VNC
        /// here has no password of its own, so only loopback addresses are accepted; reach
        /// it from elsewhere through an SSH tunnel.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Operations on this VM, oldest first.
    History { name: String },
    /// Measured load: current sample and p50/p95/max per metric at 5 s, 1 min and 1 h.
    Stats {
        name: String,
        /// Then print each new sample as it is taken (every 5 s) until interrupted; it
        /// follows the VM to another member after a migration. With --json: one document per
        /// line, the statistics first, then each sample.
        #[arg(long)]
        follow: bool,
    },
    /// Rate the hosts 0-5 for this VM, with reasons (measured load, else its configuration).
    RecommendHost { name: String },
    /// Export a halted VM to an archive file (corral or OVA), with progress.
    Export(super::transfer::ExportArgs),
    /// Import a VM from a corral archive, OVA, OVF package or XenServer XVA, or convert a
    /// Linux server's disk image (raw, qcow2, VMDK) into a VM that boots on virtio.
    #[command(long_about = super::transfer::IMPORT_HELP)]
    Import(super::transfer::ImportArgs),
    /// Linked clone of a halted VM or template (copy-on-write, instant).
    Clone { source: String, name: String },
    /// Full, independent copy of a halted VM or template.
    Copy {
        source: String,
        name: String,
        /// Storage repository for the copy's disks.
        #[arg(long)]
        sr: Option<String>,
    },
    /// Make a halted VM a template: it can no longer start; create VMs from it.
    ConvertToTemplate { name: String },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// ISO for the CD drive (path or name in the ISO library); the VM boots from it first.
    #[arg(long)]
    cdrom: Option<PathBuf>,
    /// Boot this kernel directly (with --initrd and --cmdline).
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// First boot device: disk, cdrom or network.
    #[arg(long, value_parser = parse_boot)]
    boot: Option<BootDevice>,
    /// Start the VM once created.
    #[arg(long)]
    start: bool,
    /// The pool member to create it on: a host name, or `auto` for the one placement picks
    /// [default: the host the CLI talks to].
    #[arg(long, value_name = "auto|HOST")]
    host: Option<String>,
}

/// The VM settings `vm create` and `vm install` share.
#[derive(clap::Args)]
pub struct SettingsArgs {
    /// Unique name: letters, digits, '.', '_', '-' (max 63).
    #[arg(long)]
    name: String,
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    template: Option<String>,
    #[arg(long)]
    vcpus: Option<u32>,
    /// Initial memory: 512M, 1G, 1GiB or bytes.
    #[arg(long, value_parser = size)]
    memory: Option<u64>,
    /// SIZE[,sr=REPO][,format=qcow2|raw][,bus=virtio|sata|ide][,from=IMAGE]; repeatable.
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// Create the VM without disks even if its template has some.
    #[arg(long, conflicts_with = "disks")]
    no_disks: bool,
    /// NETWORK[,model=virtio|e1000|rtl8139][,mac=MAC]; repeatable.
    #[arg(long = "nic")]
    nics: Vec<String>,
    /// Create the VM without NICs.
    #[arg(long, conflicts_with = "nics")]
    no_nics: bool,
    /// Start when the host agent starts (--autostart, --autostart=true|false); absent: the
    /// template's setting, else no.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    autostart: Option<bool>,
    /// low (128), normal (256), high (512) or 1..65535.
    #[arg(long, value_parser = weight)]
    cpu_weight: Option<u32>,
    /// bios, uefi, or uefi-secure (UEFI with Secure Boot on and Microsoft's keys enrolled,
    /// as Windows 11 needs).
    #[arg(long, value_parser = parse_firmware)]
    firmware: Option<Firmware>,
    /// Attach a virtual TPM 2.0 (swtpm); its state stays with the VM (--tpm, --tpm=true|false;
    /// absent: the template's setting, else none).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    tpm: Option<bool>,
}

#[derive(clap::Args)]
pub struct SetArgs {
    name: String,
    #[arg(long, value_parser = size)]
    memory: Option<u64>,
    #[arg(long)]
    vcpus: Option<u32>,
    #[arg(long, value_parser = weight)]
    cpu_weight: Option<u32>,
    /// --autostart, --autostart=true or --autostart=false.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    autostart: Option<bool>,
    /// Attach (--tpm, --tpm=true) or remove (--tpm=false) the virtual TPM 2.0; VM halted.
    /// Removing it deletes its keys.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    tpm: Option<bool>,
    #[arg(long)]
    description: Option<String>,
    /// Rename the VM.
    #[arg(long)]
    rename: Option<String>,
    /// disk, cdrom or network.
    #[arg(long, value_parser = parse_boot)]
    boot: Option<BootDevice>,
    /// Direct kernel boot; an empty string turns it off.
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// pv: move every disk and NIC to virtio; emulated: to IDE + e1000. Disk contents and
    /// MAC addresses stay (VM halted). Install on emulated devices, add the guest's
    /// paravirtual drivers, then switch to pv.
    #[arg(long, value_parser = parse_device_model)]
    device_model: Option<DeviceModel>,
    /// Give up an unfinished install (VM halted): boot from disk from now on and remove the
    /// installer's files. Without it, `vm start` retries the installer.
    #[arg(long)]
    abandon_install: bool,
    /// High availability in a pool: `restart` starts it on a surviving host when its host
    /// goes down (every disk must be on a shared repository); `off` does not.
    #[arg(long, value_parser = parse_ha, value_name = "restart|off")]
    ha: Option<bool>,
    /// Order of HA restarts: higher first (default 0).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    ha_priority: Option<i32>,
    /// Keep-apart group (HA pairs): placement never runs two VMs of a group on one host.
    /// An empty value ("") leaves the group.
    #[arg(long, value_name = "GROUP")]
    keep_apart: Option<String>,
}

fn parse_ha(s: &str) -> Result<bool, String> {
    match s {
        "restart" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?}: expected restart or off")),
    }
}

fn parse_device_model(s: &str) -> Result<DeviceModel, String> {
    match s {
        "pv" | "virtio" => Ok(DeviceModel::Pv),
        "emulated" => Ok(DeviceModel::Emulated),
        o => Err(format!("device model {o:?} is not pv or emulated")),
    }
}

#[derive(Subcommand)]
pub enum ToolsCommand {
    /// Put the guest-tools ISO (virtio-win.iso from the ISO library, or the agent's
    /// --tools-iso) into the CD drive, running or not. Then, in the guest, install the drivers
    /// and switch with `corral vm set NAME --device-model pv`.
    Insert { name: String },
}

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Add a disk: SIZE[,sr=REPO][,format=qcow2|raw][,bus=virtio|sata|ide].
    Add { name: String, disk: String },
    /// Remove a disk (and delete its volume) by device name, e.g. disk1.
    Remove { name: String, device: String },
}

#[derive(Subcommand)]
pub enum CdromCommand {
    /// Insert an ISO (path, or name in the ISO library).
    Insert { name: String, iso: PathBuf },
    /// Eject the media; the empty drive stays.
    Eject { name: String },
}

#[derive(Subcommand)]
pub enum NicCommand {
    /// Add a NIC: NETWORK[,model=virtio|e1000|rtl8139][,mac=MAC].
    Add { name: String, nic: String },
    /// Remove a NIC by device name, e.g. nic1.
    Remove { name: String, device: String },
}

fn parse_firmware(s: &str) -> Result<Firmware, String> {
    match s {
        "bios" => Ok(Firmware::Bios),
        "uefi" => Ok(Firmware::Uefi),
        "uefi-secure" => Ok(Firmware::UefiSecure),
        o => Err(format!("firmware {o:?} is not bios, uefi or uefi-secure")),
    }
}

fn parse_boot(s: &str) -> Result<BootDevice, String> {
    match s {
        "disk" => Ok(BootDevice::Disk),
        "cdrom" => Ok(BootDevice::Cdrom),
        "network" | "pxe" => Ok(BootDevice::Network),
        o => Err(format!("boot device {o:?} is not disk, cdrom or network")),
    }
}

/// Split `first,key=value,...` into the first item and checked key/values.
fn split_spec<'a>(
    what: &str,
    spec: &'a str,
    keys: &[&str],
) -> anyhow::Result<(&'a str, Vec<(&'a str, &'a str)>)> {
    let mut parts = spec.split(',');
    let first = parts.next().unwrap_or_default();
    let mut kv = Vec::new();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("{what} {spec:?}: {p:?} is not key=value"))?;
        if !keys.contains(&k) {
            bail!(
                "{what} {spec:?}: unknown key {k:?} (known: {})",
                keys.join(", ")
            );
        }
        kv.push((k, v));
    }
    Ok((first, kv))
}

pub fn parse_disk(spec: &str) -> anyhow::Result<DiskRequest> {
    let (size_text, kv) = split_spec("disk", spec, &["sr", "format", "bus", "from"])?;
    let has_source = kv.iter().any(|(k, _)| *k == "from");
    let size_bytes = if size_text.is_empty() && has_source {
        0
    } else {
        parse_size(size_text).map_err(|e| anyhow::anyhow!("disk {spec:?}: {e}"))?
    };
    let mut d = DiskRequest {
        size_bytes,
        ..Default::default()
    };
    for (k, v) in kv {
        match k {
            "sr" => d.sr = Some(v.to_string()),
            "from" => d.import_from = Some(abs_file(PathBuf::from(v))),
            "format" => {
                d.format = Some(match v {
                    "qcow2" => DiskFormat::Qcow2,
                    "raw" => DiskFormat::Raw,
                    o => bail!("disk {spec:?}: format {o:?} is not qcow2 or raw"),
                })
            }
            _ => {
                d.bus = Some(match v {
                    "virtio" => DiskBus::Virtio,
                    "sata" => DiskBus::Sata,
                    "ide" => DiskBus::Ide,
                    o => bail!("disk {spec:?}: bus {o:?} is not virtio, sata or ide"),
                })
            }
        }
    }
    Ok(d)
}

pub fn parse_nic(spec: &str) -> anyhow::Result<NicRequest> {
    let (network, kv) = split_spec("NIC", spec, &["model", "mac"])?;
    if network.is_empty() {
        bail!("NIC {spec:?}: no network named (e.g. --nic default)");
    }
    let mut n = NicRequest {
        network: network.to_string(),
        ..Default::default()
    };
    for (k, v) in kv {
        match k {
            "model" => {
                n.model = Some(match v {
                    "virtio" => NicModel::Virtio,
                    "e1000" => NicModel::E1000,
                    "rtl8139" => NicModel::Rtl8139,
                    o => bail!("NIC {spec:?}: model {o:?} is not virtio, e1000 or rtl8139"),
                })
            }
            _ => n.mac = Some(v.to_string()),
        }
    }
    Ok(n)
}

pub fn abs(p: PathBuf) -> PathBuf {
    if p.is_absolute() || p.components().count() == 1 {
        // A bare file name may be an ISO-library name; the agent resolves it.
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

pub fn abs_file(p: PathBuf) -> PathBuf {
    if p.is_absolute() || p.as_os_str().is_empty() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

pub fn create_request(a: CreateArgs) -> anyhow::Result<VmCreateRequest> {
    Ok(VmCreateRequest {
        cdrom: a.cdrom.map(abs),
        kernel: a.kernel.map(abs_file),
        initrd: a.initrd.map(abs_file),
        cmdline: a.cmdline,
        boot_device: a.boot,
        start: a.start,
        host: a.host,
        ..settings_request(a.settings)?
    })
}

/// The request `vm create` and `vm install` share: name, resources, disks, NICs.
pub fn settings_request(a: SettingsArgs) -> anyhow::Result<VmCreateRequest> {
    let disks = if a.no_disks {
        Some(vec![])
    } else if a.disks.is_empty() {
        None
    } else {
        Some(
            a.disks
                .iter()
                .map(|d| parse_disk(d))
                .collect::<anyhow::Result<_>>()?,
        )
    };
    let nics = if a.no_nics {
        Some(vec![])
    } else if a.nics.is_empty() {
        None
    } else {
        Some(
            a.nics
                .iter()
                .map(|n| parse_nic(n))
                .collect::<anyhow::Result<_>>()?,
        )
    };
    Ok(VmCreateRequest {
        name: a.name,
        template: a.template,
        description: a.description,
        vcpus: a.vcpus,
        memory_bytes: a.memory,
        // Absent means "not given": a template's autostart must not be overridden by a default.
        autostart: a.autostart,
        cpu_weight: a.cpu_weight,
        firmware: a.firmware,
        tpm: a.tpm,
        disks,
        nics,
        ..Default::default()
    })
}

pub async fn run(c: &Client, cmd: VmCommand, json: bool) -> anyhow::Result<()> {
    use super::transfer;
    match cmd {
        VmCommand::Install(a) => crate::cmd::install::run(c, a, json).await?,
        VmCommand::Tools(ToolsCommand::Insert { name }) => {
            let ans = c.tools_insert(&name).await?;
            if json {
                output::json(&ans.vm);
            } else {
                let media = ans
                    .vm
                    .cdroms
                    .first()
                    .and_then(|c| c.media.as_ref())
                    .map(|m| m.display().to_string())
                    .unwrap_or_default();
                println!("inserted guest tools {media} into {name}'s CD drive");
            }
        }
        VmCommand::Export(a) => transfer::export(c, a, json).await?,
        VmCommand::Import(a) => transfer::import(c, a, json).await?,
        VmCommand::Clone { source, name } => transfer::clone(c, &source, &name, json).await?,
        VmCommand::Copy { source, name, sr } => transfer::copy(c, &source, &name, sr, json).await?,
        VmCommand::ConvertToTemplate { name } => {
            transfer::convert_to_template(c, &name, json).await?
        }
        VmCommand::Create(a) => {
            let req = create_request(a)?;
            let ans = c.create_vm(&req).await?;
            if json {
                output::json(&ans.vm);
            } else {
                println!("created VM {} ({})", ans.vm.name, ans.vm.id);
                if req.start {
                    println!(
                        "started; see its console with `corral vm console {}`",
                        ans.vm.name
                    );
                }
            }
        }
        VmCommand::List => {
            let vms = c.list_vms().await?;
            if json {
                output::json(&vms);
            } else {
                output::table(
                    &[
                        "NAME",
                        "STATE",
                        "HOST",
                        "VCPUS",
                        "MEMORY",
                        "DISKS",
                        "NICS",
                        "AUTOSTART",
                        "DESCRIPTION",
                    ],
                    vms.iter()
                        .map(|v| {
                            vec![
                                v.name.clone(),
                                if v.is_template {
                                    "template".into()
                                } else {
                                    v.power_state.to_string()
                                },
                                v.host.clone(),
                                v.vcpus.to_string(),
                                format_size(v.memory_bytes),
                                v.disks.len().to_string(),
                                v.nics.len().to_string(),
                                if v.autostart { "yes" } else { "no" }.into(),
                                v.description.clone(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        VmCommand::Show { name } => {
            let v = c.show_vm(&name).await?;
            if json {
                output::json(&v);
            } else {
                show(&v);
            }
        }
        VmCommand::Start { name, no_wait, on } => {
            let opts = ActionRequest {
                on,
                ..ActionRequest::default()
            };
            action(c, &name, VmAction::Start, opts, no_wait, json).await?
        }
        VmCommand::Migrate {
            name,
            to,
            live: _,
            with_storage,
            target_sr,
            max_downtime,
            bandwidth,
            postcopy,
            deadline,
            insecure_stream,
            check,
            no_wait,
        } => {
            let req = corral_model::migrate::MigrateRequest {
                to,
                with_storage,
                target_sr,
                max_downtime_ms: max_downtime,
                bandwidth_bytes_per_s: bandwidth,
                postcopy,
                deadline_secs: deadline.map(|ms| ms.div_ceil(1000)),
                insecure_stream,
                check,
            };
            migrate(c, &name, req, no_wait, json).await?
        }
        VmCommand::Shutdown {
            name,
            timeout,
            no_wait,
        } => {
            let opts = ActionRequest {
                timeout_secs: Some(timeout),
                ..ActionRequest::default()
            };
            action(c, &name, VmAction::Shutdown, opts, no_wait, json).await?
        }
        VmCommand::Poweroff { name } => simple(c, &name, VmAction::Poweroff, json).await?,
        VmCommand::Reboot { name } => simple(c, &name, VmAction::Reboot, json).await?,
        VmCommand::Pause { name } => simple(c, &name, VmAction::Pause, json).await?,
        VmCommand::Resume { name } => simple(c, &name, VmAction::Resume, json).await?,
        VmCommand::Delete {
            name,
            force,
            keep_disks,
        } => {
            let t = c.delete_vm(&name, force, keep_disks).await?;
            if json {
                output::json(&t);
            } else {
                println!(
                    "deleted VM {name}{}",
                    if keep_disks { " (disks kept)" } else { "" }
                );
            }
        }
        VmCommand::Set(a) => {
            let req = VmUpdateRequest {
                description: a.description,
                vcpus: a.vcpus,
                memory_bytes: a.memory,
                autostart: a.autostart,
                cpu_weight: a.cpu_weight,
                name: a.rename,
                boot_device: a.boot,
                kernel: a.kernel.map(abs_file),
                initrd: a.initrd.map(abs_file),
                cmdline: a.cmdline,
                device_model: a.device_model,
                abandon_install: a.abandon_install,
                tpm: a.tpm,
                ha: a.ha,
                ha_priority: a.ha_priority,
                keep_apart: a.keep_apart,
            };
            if req == VmUpdateRequest::default() {
                bail!("nothing to change: give at least one setting (see `corral vm set --help`)");
            }
            let changes_hw = req.vcpus.is_some() || req.memory_bytes.is_some();
            let ans = c.update_vm(&a.name, &req).await?;
            if json {
                output::json(&ans.vm);
            } else {
                println!("updated VM {}", ans.vm.name);
                if changes_hw && ans.vm.power_state != PowerState::Halted {
                    println!("vCPU and memory changes take effect at the next start");
                }
            }
        }
        VmCommand::Disk(DiskCommand::Add { name, disk }) => {
            let ans = c.disk_add(&name, &parse_disk(&disk)?).await?;
            let d = ans.vm.disks.last().cloned();
            if json {
                output::json(&ans.vm);
            } else if let Some(d) = d {
                println!(
                    "added {} ({}) at {}",
                    d.device,
                    format_size(d.size_bytes),
                    d.path.display()
                );
            }
        }
        VmCommand::Disk(DiskCommand::Remove { name, device }) => {
            let ans = c.disk_remove(&name, &device).await?;
            done(json, &ans.vm, &format!("removed {device} from {name}"));
        }
        VmCommand::Cdrom(CdromCommand::Insert { name, iso }) => {
            let ans = c.cdrom_insert(&name, abs(iso)).await?;
            done(json, &ans.vm, &format!("inserted media into {name}"));
        }
        VmCommand::Cdrom(CdromCommand::Eject { name }) => {
            let ans = c.cdrom_eject(&name).await?;
            done(json, &ans.vm, &format!("ejected the media of {name}"));
        }
        VmCommand::Nic(NicCommand::Add { name, nic }) => {
            let ans = c.nic_add(&name, &parse_nic(&nic)?).await?;
            let n = ans.vm.nics.last().cloned();
            if json {
                output::json(&ans.vm);
            } else if let Some(n) = n {
                println!("added {} on {} ({})", n.device, n.network, n.mac);
            }
        }
        VmCommand::Nic(NicCommand::Remove { name, device }) => {
            let ans = c.nic_remove(&name, &device).await?;
            done(json, &ans.vm, &format!("removed {device} from {name}"));
        }
        VmCommand::Console { name, log } => {
            if log {
                let bytes = c.console_log(&name).await?;
                if json {
                    let text = String::from_utf8_lossy(&bytes);
                    let lossy = matches!(text, std::borrow::Cow::Owned(_));
                    output::json(&serde_json::json!({
                        "vm": name,
                        "log": text,
                        "bytes": bytes.len(),
                        "lossy": lossy,
                    }));
                } else {
                    use std::io::Write;
                    std::io::stdout().write_all(&bytes)?;
                }
            } else {
                crate::cmd::console::attach(c, &name).await?;
            }
        }
        VmCommand::Vnc {
            name,
            listen: Some(addr),
        } => crate::cmd::console::serve_vnc(c, &name, addr, json).await?,
        VmCommand::Vnc { name, listen: None } => {
            let v = c.show_vm(&name).await?;
            match &v.vnc {
                Some(addr) => {
                    // QEMU's display N listens on port 5900 + N.
                    let display = addr
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse::<u32>().ok())
                        .and_then(|p| p.checked_sub(5900));
                    if json {
                        output::json(&serde_json::json!({ "vnc": addr, "display": display }))
                    } else if let Some(d) = display {
                        println!("{addr} (display :{d})")
                    } else {
                        println!("{addr}")
                    }
                }
                None => bail!(
                    "VM {name:?} is {}; the graphical console exists while it runs",
                    v.power_state
                ),
            }
        }
        VmCommand::History { name } => {
            let tasks = c.history(&name).await?;
            crate::cmd::misc::print_tasks(&tasks, json);
        }
        VmCommand::Stats {
            name,
            follow: false,
        } => {
            let s = c.vm_stats(&name).await?;
            if json {
                output::json(&s);
            } else {
                crate::cmd::stats::print_stats(&s);
            }
        }
        VmCommand::Stats { name, follow: true } => {
            crate::cmd::stats::follow(c, &name, json).await?
        }
        VmCommand::RecommendHost { name } => {
            let r = c.recommend_host(&name).await?;
            if json {
                output::json(&r);
            } else {
                crate::cmd::stats::print_recommendation(&r);
            }
        }
    }
    Ok(())
}

fn done(json: bool, vm: &VmInfo, text: &str) {
    if json {
        output::json(vm);
    } else {
        println!("{text}");
    }
}

/// An action without options, waited for.
async fn simple(c: &Client, name: &str, a: VmAction, json: bool) -> anyhow::Result<()> {
    action(c, name, a, ActionRequest::default(), false, json).await
}

async fn action(
    c: &Client,
    name: &str,
    action: VmAction,
    opts: ActionRequest,
    no_wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    if no_wait {
        let task = c.action_nowait(name, action, &opts).await?;
        if json {
            output::json(&serde_json::json!({ "task": task }));
        } else {
            println!("{task}");
        }
        return Ok(());
    }
    let ans = c.action(name, action, &opts).await?;
    if json {
        output::json(&ans.vm);
    } else {
        println!("{}: {}", ans.vm.name, ans.vm.power_state);
    }
    Ok(())
}

fn show(v: &VmInfo) {
    let mut rows: Vec<(&str, String)> = vec![
        ("name", v.name.clone()),
        ("id", v.id.clone()),
        (
            "power state",
            if v.is_template {
                "template".into()
            } else {
                v.power_state.to_string()
            },
        ),
        ("host", v.host.clone()),
        (
            "ha",
            match (&v.ha.restart, &v.ha.apart) {
                (true, apart) => format!(
                    "restart elsewhere when its host goes down (priority {}){}",
                    v.ha.priority,
                    apart
                        .as_ref()
                        .map(|g| format!("; keep apart: {g}"))
                        .unwrap_or_default()
                ),
                (false, Some(g)) => format!("off; keep apart: {g}"),
                (false, None) => "off".into(),
            },
        ),
        ("description", v.description.clone()),
        ("vcpus", v.vcpus.to_string()),
        ("memory", format_size(v.memory_bytes)),
        ("autostart", v.autostart.to_string()),
        ("cpu weight", describe_cpu_weight(v.cpu_weight)),
        ("firmware", v.firmware.to_string()),
        ("tpm", if v.tpm { "TPM 2.0 (swtpm)" } else { "none" }.into()),
        ("boot", format!("{:?}", v.boot_device).to_lowercase()),
    ];
    if let Some(t) = &v.template {
        rows.push(("template", t.clone()));
    }
    if let Some(s) = &v.cpu_weight_status {
        rows.push((
            "cpu weight (host)",
            match (&s.applied, &s.reason) {
                (Some(a), _) => a.clone(),
                (None, Some(r)) => format!("not applied: {r}"),
                _ => "-".into(),
            },
        ));
    }
    if let Some(p) = v.pid {
        rows.push(("qemu pid", p.to_string()));
    }
    if let Some(k) = &v.kernel_boot {
        rows.push(("kernel", k.kernel.display().to_string()));
        if let Some(i) = &k.initrd {
            rows.push(("initrd", i.display().to_string()));
        }
        rows.push(("cmdline", k.cmdline.clone()));
    }
    output::fields(&rows);
    println!();
    output::table(
        &["DISK", "SIZE", "FORMAT", "BUS", "SR", "PATH"],
        v.disks
            .iter()
            .map(|d| {
                vec![
                    d.device.clone(),
                    format_size(d.size_bytes),
                    d.format.as_str().into(),
                    format!("{:?}", d.bus).to_lowercase(),
                    d.sr.clone(),
                    d.path.display().to_string(),
                ]
            })
            .chain(v.cdroms.iter().map(|c| {
                vec![
                    c.device.clone(),
                    "-".into(),
                    "iso".into(),
                    format!("{:?}", c.bus).to_lowercase(),
                    "-".into(),
                    c.media
                        .as_ref()
                        .map(|m| m.display().to_string())
                        .unwrap_or_else(|| "(empty)".into()),
                ]
            }))
            .collect(),
    );
    println!();
    output::table(
        &["NIC", "NETWORK", "MODEL", "MAC"],
        v.nics
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
}

/// `vm migrate`: print the pre-checks, then follow the migration's task.
async fn migrate(
    c: &Client,
    name: &str,
    req: corral_model::migrate::MigrateRequest,
    no_wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let answer = c.migrate_vm(name, &req).await?;
    if !json {
        for ch in &answer.checks {
            println!(
                "{} {:<10} {}",
                if ch.ok { "ok  " } else { "FAIL" },
                ch.name,
                ch.detail
            );
        }
    }
    let Some(task) = answer.task.clone() else {
        if json {
            output::json(&answer);
        } else if answer.mode == "check" {
            match answer.refusals() {
                None => println!("VM {} can migrate to host {}", answer.vm, answer.to),
                // A failed check is an error, so scripts can test `vm migrate --check`.
                Some(why) => anyhow::bail!(
                    "VM {} cannot migrate to host {}: {why}",
                    answer.vm,
                    answer.to
                ),
            }
        } else {
            println!("moved halted VM {} to host {}", answer.vm, answer.to);
        }
        return Ok(());
    };
    if no_wait {
        if json {
            output::json(&answer);
        } else {
            println!("{task}");
        }
        return Ok(());
    }
    let t = crate::progress::follow_task(c, &task, json).await?;
    if json {
        output::json(&t);
    } else {
        println!(
            "{}",
            t.result
                .unwrap_or_else(|| format!("migrated VM {name} to host {}", answer.to))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        let d = parse_disk("20G,sr=fast,format=raw,bus=ide").unwrap();
        assert_eq!(d.size_bytes, 20 << 30);
        assert_eq!(d.sr.as_deref(), Some("fast"));
        assert_eq!(d.format, Some(DiskFormat::Raw));
        assert_eq!(d.bus, Some(DiskBus::Ide));
        assert!(parse_disk("abc").unwrap_err().to_string().contains("abc"));
        assert!(parse_disk("1G,speed=fast")
            .unwrap_err()
            .to_string()
            .contains("unknown key"));
        assert!(parse_disk("1G,bus=scsi").is_err());
        let d = parse_disk(",from=/img/a.qcow2").unwrap();
        assert_eq!(
            (d.size_bytes, d.import_from),
            (0, Some(PathBuf::from("/img/a.qcow2")))
        );
    }

    #[test]
    fn nic_specs() {
        let n = parse_nic("lan,model=e1000,mac=52:54:00:00:00:01").unwrap();
        assert_eq!(n.network, "lan");
        assert_eq!(n.model, Some(NicModel::E1000));
        assert_eq!(n.mac.as_deref(), Some("52:54:00:00:00:01"));
        assert!(parse_nic(",model=e1000").is_err());
    }

    /// `vm create` without `--autostart` sends no autostart, so a template VM's setting (or
    /// the agent's default) decides; the flag alone means true; `=false` is explicit.
    #[test]
    fn autostart_is_sent_only_when_given() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: CreateArgs,
        }
        let req = |extra: &[&str]| {
            let mut argv = vec!["t", "--name", "a1"];
            argv.extend_from_slice(extra);
            create_request(T::try_parse_from(argv).expect("parse").a).expect("request")
        };
        assert_eq!(req(&[]).autostart, None);
        assert_eq!(req(&["--autostart"]).autostart, Some(true));
        assert_eq!(req(&["--autostart=false"]).autostart, Some(false));
        assert_eq!(req(&["--autostart", "--vcpus", "2"]).autostart, Some(true));
    }
}
