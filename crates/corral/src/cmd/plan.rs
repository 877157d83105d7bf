//! `corral plan`: read hosts and workloads, plan the consolidation with `corral-placement`,
//! and print a table, JSON, or write an HTML report. Synchronous; no agent needed.

use anyhow::Context;
use corral_placement::{input, plan, report, Host, Mode, PlanOptions, Workload};
use std::path::{Path, PathBuf};

const EXAMPLES: &str = "\
Examples:
  # Which of these servers fit together, and on how many hosts?
  corral plan --hosts hosts.csv --workloads workloads.csv

  # Profiles measured with `corral measure` (a directory of JSON files), spread for performance
  corral plan --hosts hosts.toml --workloads profiles/ --mode performance --html plan.html

  # Plan against the raw capacities, machine-readable
  corral plan --hosts hosts.csv --workloads workloads.csv --max-utilisation 100% --reserve-memory 0 --json

hosts.csv (units in the column names; networks separated by `;`):
  name,cores,ghz,memory_gib,net_mbps,disk_mbps,iops,networks
  hv1,32,2.6,256,20000,2000,100000,lan;san

workloads.csv (cpu_ghz is consumed GHz: 4 cores x 1 GHz x 40 % = 1.6):
  name,cpu_ghz,memory_gib,net_mbps,disk_mbps,iops,group_apart,group_together,host,networks
  db1,1.6,12,200,80,1500,sql,,,lan;san
  db2,1.4,12,200,80,1500,sql,,,lan;san
  Instead of cpu_ghz a row may give the old server's cores,ghz,cpu_percent.
  A single net_mbps is reserved in both directions (give net_in_mbps,net_out_mbps to be exact);
  disk_mbps is reads plus writes (or give disk_read_mbps,disk_write_mbps).

hosts.toml:
  [[host]]
  name = \"hv\"
  count = 4              # hv-1 .. hv-4
  cores = 32
  ghz = 2.6
  memory_gib = 256
  disk_mbps = 2000
  [[host.nic]]
  mbps = 10000
  networks = [\"lan\"]

constraints.toml (for profiles, which carry no constraints):
  [[apart]]
  workloads = [\"db1\", \"db2\"]
  [pin]
  db1 = \"hv-1\"

Every resource is capped at --max-utilisation of the host's raw capacity (a host's own
max_utilisation column wins); memory counts the --reserve-memory as used and is never
overcommitted unless --memory-overcommit RATIO says so. NIC bandwidth is pooled per host.
`corral plan ... --json | head` is fine: a closed pipe ends the output quietly. Workloads measured over time are packed
hour by hour (UTC), so a nightly backup and a daytime web server can share a host.
See docs/placement.md for the model and the algorithm.";

/// Plan which workloads share which host.
#[derive(Debug, clap::Args)]
#[command(
    about = "Plan which workloads fit together on which hosts, and explain why",
    long_about = "Plan a consolidation: place every workload (a measured server or VM) on a host \
                  so that no host exceeds the cap on CPU, memory, network in/out, disk bandwidth \
                  or IOPS, honouring keep-apart and keep-together groups, pinned hosts, required \
                  networks and VM limits. Prints the hosts needed, each host's utilisation with \
                  headroom, the workloads that cannot be placed with the reason, and why each \
                  workload went where it did.",
    after_long_help = EXAMPLES
)]
pub struct PlanArgs {
    /// Hosts: a CSV file (name,cores,ghz,memory_gib,net_mbps,disk_mbps[,iops,networks,max_vms]) or a .toml file.
    #[arg(long, value_name = "FILE")]
    pub hosts: PathBuf,
    /// Workloads: a CSV file, a profile JSON written by `corral measure`, or a directory of them; repeatable.
    #[arg(long, value_name = "FILE|DIR", required = true)]
    pub workloads: Vec<PathBuf>,
    /// Extra constraints (TOML: [[apart]], [[together]], [pin], [networks]); names must exist.
    #[arg(long, value_name = "FILE")]
    pub constraints: Option<PathBuf>,
    /// density: fewest hosts; performance: lowest peak utilisation, using every host.
    #[arg(long, default_value = "density", value_parser = parse_mode)]
    pub mode: Mode,
    /// Cap on every resource, as a percentage of raw capacity.
    #[arg(long, value_name = "PERCENT", default_value = "85%", value_parser = parse_percent)]
    pub max_utilisation: f64,
    /// Memory kept free on each host for the host itself (e.g. 1G, 512M, 0).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_gib)]
    pub reserve_memory: f64,
    /// Memory each VM costs beyond its guest memory (QEMU's own), e.g. 64M.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_gib)]
    pub vm_overhead: f64,
    /// At most this many VMs on any host.
    #[arg(long, value_name = "N")]
    pub max_vms_per_host: Option<u32>,
    /// Let VMs' memory add up to RATIO × each host's memory (e.g. 1.5). Without it memory is
    /// never overcommitted.
    #[arg(long, value_name = "RATIO", default_value = "1", value_parser = parse_ratio)]
    pub memory_overcommit: f64,
    /// Print the plan as JSON (hosts_used, assignments, unplaced, per-host utilisation, decisions).
    #[arg(long, conflicts_with = "html")]
    pub json: bool,
    /// Write a self-contained HTML report with a chart per host and resource.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// In the table, also print why each workload went where it did.
    #[arg(long)]
    pub explain: bool,
}

/// `1.5` → 1.5; at least 1 (below 1 would be a smaller host: say so with the hosts file).
fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a ratio (e.g. 1.5)"))?;
    if !(v.is_finite() && v >= 1.0) {
        return Err(format!("{s:?} must be at least 1 (1 = no overcommit)"));
    }
    Ok(v)
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse::<Mode>().map_err(|e| e.to_string())
}

/// `85%` or `85` → 0.85.
fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches('%').trim();
    let v: f64 = t
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 85%)"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!("{s:?} must be more than 0% and at most 100%"));
    }
    if !s.contains('%') && v <= 1.0 {
        return Err(format!(
            "{s:?} is ambiguous: write it as a percentage, e.g. 85%"
        ));
    }
    Ok(v / 100.0)
}

/// `1G`, `512M`, `1.5GiB`, `0` → GiB.
fn parse_gib(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1G, 512M)"))?;
    let gib = match unit.trim().to_ascii_lowercase().as_str() {
        "" if v == 0.0 => 0.0,
        "" => return Err(format!("{s:?} needs a unit (e.g. {s}G or {s}M)")),
        "k" | "kb" | "kib" => v / (1024.0 * 1024.0),
        "m" | "mb" | "mib" => v / 1024.0,
        "g" | "gb" | "gib" => v,
        "t" | "tb" | "tib" => v * 1024.0,
        other => {
            return Err(format!(
                "{s:?} has unknown unit {other:?} (use K, M, G or T)"
            ))
        }
    };
    Ok(gib)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn load_hosts(path: &Path) -> anyhow::Result<Vec<Host>> {
    Ok(input::parse_hosts(
        &read(path)?,
        &path.display().to_string(),
    )?)
}

/// Workloads from files and directories (a directory contributes its .csv and .json files);
/// CSV pins are checked against `hosts` as each line is read.
fn load_workloads(paths: &[PathBuf], hosts: &[Host]) -> anyhow::Result<Vec<Workload>> {
    let mut out = Vec::new();
    for path in paths {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        e.eq_ignore_ascii_case("json") || e.eq_ignore_ascii_case("csv")
                    })
                })
                .collect();
            v.sort();
            if v.is_empty() {
                anyhow::bail!("{} has no .json profiles or .csv files", path.display());
            }
            v
        } else {
            vec![path.clone()]
        };
        for f in files {
            out.extend(input::parse_workloads_for(
                &read(&f)?,
                &f.display().to_string(),
                hosts,
            )?);
        }
    }
    Ok(out)
}

/// Run `corral plan` (synchronous).
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let hosts = load_hosts(&args.hosts)?;
    let mut workloads = load_workloads(&args.workloads, &hosts)?;
    if let Some(c) = &args.constraints {
        input::apply_constraints(&read(c)?, &c.display().to_string(), &mut workloads, &hosts)?;
    }
    let options = PlanOptions {
        mode: args.mode,
        max_utilisation: args.max_utilisation,
        reserve_memory_gib: args.reserve_memory,
        vm_overhead_gib: args.vm_overhead,
        max_vms_per_host: args.max_vms_per_host,
        memory_overcommit: args.memory_overcommit,
        // Explanations cost a scan of the hosts per workload (about ten times the plan
        // itself on 10,000 workloads): only for the outputs that show them.
        explain: args.json || args.explain || args.html.is_some(),
        effort: 1,
    };
    let plan = plan(&hosts, &workloads, &options).context("cannot plan")?;
    if args.json {
        return print_out(&(report::to_json(&plan) + "\n"));
    }
    print_out(&report::to_table(&plan, args.explain))?;
    if let Some(path) = &args.html {
        std::fs::write(path, report::to_html(&plan))
            .with_context(|| format!("cannot write {}", path.display()))?;
        print_out(&format!("\nHTML report written to {}\n", path.display()))?;
    }
    Ok(())
}

/// Write to stdout; a reader that went away (`corral plan --json | head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}
