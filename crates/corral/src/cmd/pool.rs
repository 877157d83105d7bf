//! `corral pool show` and the pool side of `corral host` (list, show, evacuate, forget).

use crate::output;
use corral_client::Client;
use corral_model::format_size;
use corral_model::pool::{EvacuateRequest, HostSummary};

#[derive(clap::Subcommand)]
pub enum PoolCommand {
    /// The pool: its name, the store (etcd members and their health), hosts, HA timings
    /// and how fencing is done.
    Show,
}

pub async fn pool(c: &Client, cmd: PoolCommand, json: bool) -> anyhow::Result<()> {
    let PoolCommand::Show = cmd;
    let p = c.pool_info().await?;
    if json {
        output::json(&p);
        return Ok(());
    }
    let up = p
        .hosts
        .iter()
        .filter(|h| h.state == corral_model::pool::HostState::Up)
        .count();
    let mut rows = vec![
        ("pool", p.name.clone()),
        ("store", p.store.clone()),
        ("hosts", format!("{} ({up} up)", p.hosts.len())),
        (
            "ha",
            format!(
                "lease {} s, self-fence {} s before expiry, restart {} s after expiry; {} VM(s) protected",
                p.ha.lease_ttl_secs, p.ha.self_fence_margin_secs, p.ha.restart_delay_secs, p.ha.protected_vms
            ),
        ),
        ("fencing", p.ha.fencing.clone()),
    ];
    if let Some(ca) = &p.ca_sha256 {
        rows.push(("pool CA sha256", ca.clone()));
    }
    if let Some(t) = &p.join_token_path {
        rows.push((
            "join token",
            format!("in {t} (give it to `corral serve --join-token`)"),
        ));
    }
    output::fields(&rows);
    println!();
    output::table(
        &["ENDPOINT", "HEALTHY", "DETAIL"],
        p.endpoints
            .iter()
            .map(|e| vec![e.endpoint.clone(), e.healthy.to_string(), e.detail.clone()])
            .collect(),
    );
    println!();
    host_table(&p.hosts);
    Ok(())
}

fn host_table(hosts: &[HostSummary]) {
    output::table(
        &[
            "NAME",
            "STATE",
            "SINCE",
            "ADDRESS",
            "VMS",
            "RUNNING",
            "FREE MEMORY",
            "LOAD",
        ],
        hosts
            .iter()
            .map(|h| {
                vec![
                    if h.this_host {
                        format!("{} *", h.name)
                    } else {
                        h.name.clone()
                    },
                    h.state.as_str().to_string(),
                    output::time(h.since_ms),
                    h.address.clone().unwrap_or_else(|| "-".into()),
                    h.vms.to_string(),
                    h.vms_running.to_string(),
                    format!(
                        "{} of {}",
                        format_size(h.memory_free_bytes),
                        format_size(h.memory_total_bytes)
                    ),
                    format!("{:.2}", h.load1),
                ]
            })
            .collect(),
    );
}

pub async fn list(c: &Client, json: bool) -> anyhow::Result<()> {
    let hosts = c.list_hosts().await?;
    if json {
        output::json(&hosts);
    } else {
        host_table(&hosts);
    }
    Ok(())
}

pub async fn show(c: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let h = c.show_host(name).await?;
    if json {
        output::json(&h);
        return Ok(());
    }
    let s = &h.summary;
    output::fields(&[
        ("name", s.name.clone()),
        ("id", s.id.clone()),
        (
            "state",
            format!("{} since {}", s.state.as_str(), output::time(s.since_ms)),
        ),
        ("address", s.address.clone().unwrap_or_else(|| "-".into())),
        ("cpu cores", s.cpu_cores.to_string()),
        (
            "memory",
            format!(
                "{} free of {}",
                format_size(s.memory_free_bytes),
                format_size(s.memory_total_bytes)
            ),
        ),
        ("load", format!("{:.2}", s.load1)),
        ("joined", output::time(h.joined_at_ms)),
        ("last report", output::time(h.updated_at_ms)),
        ("repositories", h.srs.join(", ")),
        (
            "vms",
            if h.vm_names.is_empty() {
                "-".into()
            } else {
                h.vm_names.join(", ")
            },
        ),
    ]);
    Ok(())
}

pub async fn evacuate(
    c: &Client,
    name: &str,
    to: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let a = c.evacuate_host(name, &EvacuateRequest { to }).await?;
    if json {
        output::json(&a);
        return Ok(());
    }
    for m in &a.moved {
        match &m.task {
            Some(t) => println!("migrating {} live to {} (task {t})", m.vm, m.to),
            None => println!("moved {} to {}", m.vm, m.to),
        }
    }
    for r in &a.refused {
        println!("left {} where it is: {}", r.vm, r.reason);
    }
    if a.moved.is_empty() && a.refused.is_empty() {
        println!("host {name} owns no VM");
    }
    if !a.refused.is_empty() {
        anyhow::bail!("{} VM(s) could not be moved off {name}", a.refused.len());
    }
    Ok(())
}

pub async fn forget(c: &Client, name: &str) -> anyhow::Result<()> {
    c.forget_host(name).await?;
    println!("forgot host {name}");
    Ok(())
}
