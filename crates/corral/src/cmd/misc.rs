//! Host, repositories, ISOs, networks, templates, tasks and events.

use crate::output;
use anyhow::Context;
use clap::Subcommand;
use corral_client::Client;
use corral_model::api::*;
use corral_model::event::Event;
use corral_model::task::Task;
use corral_model::*;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum HostCommand {
    /// CPU, memory, accelerator (and why), QEMU version, repositories, networks.
    Info,
    /// Every member of the pool: up/down and since when, address, VMs, free memory, load.
    List,
    /// One member of the pool, with its VMs.
    Show { name: String },
    /// Move every VM off a host: halted VMs on shared repositories change owner; running
    /// ones migrate live (each answer names its task); the rest are refused with the reason.
    Evacuate {
        name: String,
        /// Where to: `auto` (placement picks per VM) or a host name.
        #[arg(long, default_value = "auto")]
        to: String,
    },
    /// Drop a member that is down and owns no VM from the pool.
    Forget { name: String },
}

#[derive(Subcommand)]
pub enum SrCommand {
    /// List storage repositories with free space.
    List,
    /// Register a directory as a storage repository.
    Create {
        name: String,
        /// An existing, writable directory.
        #[arg(long)]
        path: PathBuf,
        /// The directory is shared between hosts (NFS), so VMs on it can live-migrate.
        #[arg(long)]
        shared: bool,
    },
}

#[derive(Subcommand)]
pub enum IsoCommand {
    /// ISO images in the library directory.
    List,
}

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// List networks.
    List,
    /// Create a bridged network on an existing Linux bridge.
    Create {
        name: String,
        #[arg(long)]
        bridge: String,
    },
}

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// List templates (built-in and user ones).
    List {
        /// List the templates read from osinfo-db (`osinfo:<short-id>`) instead.
        #[arg(long)]
        osinfo: bool,
    },
    /// Show one template, fully resolved.
    Show { name: String },
    /// Add a template from a TOML file (see docs/install.md for the format).
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a user template (built-in ones cannot be deleted).
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum TaskCommand {
    /// The running tasks and the most recent finished ones, oldest first.
    ///
    /// Running tasks are always listed; `--limit` bounds the finished ones (the agent keeps
    /// the last 5,000). `corral vm history NAME` lists every task of one VM.
    List {
        /// How many of the most recent finished tasks to show.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=5000))]
        limit: u64,
        /// Only the tasks of this VM.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
    },
    /// One task.
    Show {
        id: String,
        /// Wait until it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Ask a running task to stop.
    Cancel { id: String },
}

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Also print events after this sequence number that the agent still remembers.
    #[arg(long)]
    since: Option<u64>,
}

pub async fn host(c: &Client, cmd: HostCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        HostCommand::Info => {}
        HostCommand::List => return super::pool::list(c, json).await,
        HostCommand::Show { name } => return super::pool::show(c, &name, json).await,
        HostCommand::Evacuate { name, to } => {
            return super::pool::evacuate(c, &name, Some(to), json).await
        }
        HostCommand::Forget { name } => return super::pool::forget(c, &name).await,
    }
    let h = c.host_info().await?;
    if json {
        output::json(&h);
        return Ok(());
    }
    let mut rows = vec![
        ("hostname", h.hostname.clone()),
        ("host id", h.host_id.clone()),
        (
            "cpu",
            format!(
                "{} ({} cores, {:.0} MHz)",
                h.cpu_model, h.cpu_cores, h.cpu_mhz
            ),
        ),
        (
            "memory",
            format!(
                "{} ({} available)",
                format_size(h.memory_bytes),
                format_size(h.memory_available_bytes)
            ),
        ),
        (
            "accelerator",
            format!("{} ({})", h.accelerator.name.as_str(), h.accelerator.reason),
        ),
        ("qemu", h.qemu_version.clone()),
        ("agent", h.agent_version.clone()),
        ("cpu weight", h.cpu_weight_support.clone()),
        ("state dir", h.state_dir.display().to_string()),
        (
            "remote access",
            match &h.remote {
                None => {
                    "none (unix socket only; `corral serve --listen ADDR:PORT` adds HTTPS)".into()
                }
                Some(r) => format!("https on {}", r.listen.join(", ")),
            },
        ),
    ];
    if let Some(r) = &h.remote {
        rows.extend([
            ("certificate sha256", r.cert_sha256.clone()),
            ("certificate", r.cert_path.display().to_string()),
            ("token file", r.token_path.display().to_string()),
        ]);
    }
    output::fields(&rows);
    if let Some(p) = &h.planner {
        output::fields(&[(
            "planner model",
            format!(
                "{} cores × {:.2} GHz, {:.1} GiB, network {:.0} Mbit/s, disk {:.0} MB/s and {:.0} IOPS",
                p.cores, p.ghz, p.memory_gib, p.net_mbps, p.disk_mbps, p.iops
            ),
        )]);
        for n in &p.notes {
            println!("  note: {n}");
        }
    }
    println!();
    print_srs(&h.storage_repositories);
    println!();
    print_networks(&h.networks);
    Ok(())
}

fn print_srs(srs: &[host::StorageRepository]) {
    output::table(
        &["REPOSITORY", "FREE", "TOTAL", "SHARED", "PATH"],
        srs.iter()
            .map(|s| {
                vec![
                    format!("{}{}", s.name, if s.is_default { " (default)" } else { "" }),
                    s.free_bytes.map(format_size).unwrap_or_else(|| "-".into()),
                    s.total_bytes.map(format_size).unwrap_or_else(|| "-".into()),
                    if s.shared { "yes" } else { "no" }.into(),
                    s.path.display().to_string(),
                ]
            })
            .collect(),
    );
}

fn print_networks(nets: &[host::Network]) {
    output::table(
        &["NETWORK", "KIND", "BRIDGE"],
        nets.iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    match n.kind {
                        host::NetworkKind::User => "user-mode NAT".into(),
                        host::NetworkKind::Bridge => "bridge".into(),
                    },
                    n.bridge.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    );
}

pub async fn sr(c: &Client, cmd: SrCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        SrCommand::List => {
            let srs = c.list_srs().await?;
            if json {
                output::json(&srs)
            } else {
                print_srs(&srs)
            }
        }
        SrCommand::Create { name, path, shared } => {
            let path = if path.is_absolute() {
                path
            } else {
                std::env::current_dir()?.join(path)
            };
            let sr = c.create_sr(&SrCreateRequest { name, path, shared }).await?;
            if json {
                output::json(&sr)
            } else {
                println!(
                    "created storage repository {} at {}",
                    sr.name,
                    sr.path.display()
                )
            }
        }
    }
    Ok(())
}

pub async fn iso(c: &Client, _cmd: IsoCommand, json: bool) -> anyhow::Result<()> {
    let isos = c.list_isos().await?;
    if json {
        output::json(&isos);
    } else {
        output::table(
            &["ISO", "SIZE", "PATH"],
            isos.iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        format_size(i.size_bytes),
                        i.path.display().to_string(),
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}

pub async fn network(c: &Client, cmd: NetworkCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        NetworkCommand::List => {
            let nets = c.list_networks().await?;
            if json {
                output::json(&nets)
            } else {
                print_networks(&nets)
            }
        }
        NetworkCommand::Create { name, bridge } => {
            let n = c
                .create_network(&NetworkCreateRequest { name, bridge })
                .await?;
            if json {
                output::json(&n)
            } else {
                println!(
                    "created network {} on bridge {}",
                    n.name,
                    n.bridge.unwrap_or_default()
                )
            }
        }
    }
    Ok(())
}

pub async fn template(c: &Client, cmd: TemplateCommand, json: bool) -> anyhow::Result<()> {
    let s = |v: &serde_json::Value, k: &str| match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    match cmd {
        TemplateCommand::List { osinfo } => {
            let ts = c.list_templates(osinfo).await?;
            if json {
                output::json(&ts);
            } else {
                output::table(
                    &["TEMPLATE", "VCPUS", "MEMORY", "DESCRIPTION"],
                    ts.iter()
                        .map(|t| {
                            let mem = t["memory_recommended_bytes"]
                                .as_u64()
                                .map(format_size)
                                .unwrap_or_default();
                            vec![s(t, "name"), s(t, "vcpus"), mem, s(t, "description")]
                        })
                        .collect(),
                );
            }
        }
        TemplateCommand::Show { name } => {
            let t = c.show_template(&name).await?;
            output::json(&t);
        }
        TemplateCommand::Create { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let t = c.create_template(&text).await?;
            if json {
                output::json(&t)
            } else {
                println!("created template {}", s(&t, "name"))
            }
        }
        TemplateCommand::Delete { name } => {
            c.delete_template(&name).await?;
            if json {
                output::json(&serde_json::json!({"deleted": name}));
            } else {
                println!("deleted template {name}");
            }
        }
    }
    Ok(())
}

pub fn print_tasks(tasks: &[Task], json: bool) {
    if json {
        output::json(&tasks);
        return;
    }
    output::table(
        &[
            "STARTED",
            "OPERATION",
            "VM",
            "STATE",
            "PROGRESS",
            "RESULT",
            "ID",
        ],
        tasks
            .iter()
            .map(|t| {
                vec![
                    output::time(t.started_at_ms),
                    t.operation.clone(),
                    t.vm_name.clone().unwrap_or_else(|| "-".into()),
                    t.state.as_str().into(),
                    format!("{:.0}%", t.progress * 100.0),
                    t.error
                        .as_ref()
                        .map(|e| e.to_string())
                        .or_else(|| t.result.clone())
                        .unwrap_or_default(),
                    t.id.clone(),
                ]
            })
            .collect(),
    );
}

pub async fn task(c: &Client, cmd: TaskCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::List { limit, vm } => print_tasks(
            &c.list_recent_tasks(limit as usize, vm.as_deref()).await?,
            json,
        ),
        TaskCommand::Show { id, wait } => {
            let t = if wait {
                crate::progress::watch_task(c, &id, json).await?
            } else {
                c.show_task(&id, false).await?
            };
            if json {
                output::json(&t);
            } else {
                output::fields(&[
                    ("id", t.id.clone()),
                    ("operation", t.operation.clone()),
                    ("vm", t.vm_name.clone().unwrap_or_else(|| "-".into())),
                    ("state", t.state.as_str().into()),
                    ("phase", t.phase.clone()),
                    ("progress", format!("{:.0}%", t.progress * 100.0)),
                    ("started", output::time(t.started_at_ms)),
                    (
                        "finished",
                        t.finished_at_ms
                            .map(output::time)
                            .unwrap_or_else(|| "-".into()),
                    ),
                    ("result", t.result.clone().unwrap_or_else(|| "-".into())),
                    (
                        "error",
                        t.error
                            .as_ref()
                            .map(|e| e.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ),
                ]);
                if !t.changes.is_empty() {
                    println!("changes:");
                    for c in &t.changes {
                        println!("  - {c}");
                    }
                }
            }
        }
        TaskCommand::Cancel { id } => {
            c.cancel_task(&id).await?;
            if json {
                output::json(&serde_json::json!({"task": id, "cancel_requested": true}));
            } else {
                println!("cancellation requested for task {id}");
            }
        }
    }
    Ok(())
}

pub async fn events(c: &Client, a: EventsArgs, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    c.events(a.since, |e| {
        let line = if json {
            serde_json::to_string(&e).unwrap_or_default()
        } else {
            let what = match &e.event {
                Event::VmCreated { vm, .. } => format!("vm {vm} created"),
                Event::VmDeleted { vm, .. } => format!("vm {vm} deleted"),
                Event::VmChanged { vm, .. } => format!("vm {vm} changed"),
                Event::PowerStateChanged {
                    vm,
                    from,
                    to,
                    reason,
                    ..
                } => format!("vm {vm} {from} -> {to} ({reason})"),
                Event::TaskUpdated { task } => format!(
                    "task {} {} {} {} {:.0}%",
                    task.operation,
                    task.vm_name.as_deref().unwrap_or("-"),
                    task.state.as_str(),
                    task.phase,
                    task.progress * 100.0
                ),
                Event::HostChanged { host, .. } => format!("host {host} changed"),
            };
            format!("{} #{} {what}", output::time(e.time_ms), e.seq)
        };
        println!("{line}");
        std::io::stdout().flush().is_ok()
    })
    .await?;
    Ok(())
}
