//! Parsing of the planner's inputs from text handed in by the caller (this crate reads no
//! files): hosts and workloads as CSV with a header row, hosts as TOML, workload profiles as
//! JSON written by `corral measure`, and an optional constraints TOML.
//!
//! Every error names the file and, where the text has one, the line. Values are checked where
//! they are read (a zero capacity is reported at its line), and again by [`crate::validate`].

use crate::model::{Demand, Host, Workload, TIME_BUCKETS};
use crate::resource::{Amounts, RESOURCES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use toml::Spanned;

/// An input that does not parse or does not make sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("{file}:{line}: {message}")]
    AtLine {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    InFile { file: String, message: String },
}

fn at(file: &str, line: usize, message: impl Into<String>) -> InputError {
    InputError::AtLine {
        file: file.to_string(),
        line,
        message: message.into(),
    }
}

fn in_file(file: &str, message: impl Into<String>) -> InputError {
    InputError::InFile {
        file: file.to_string(),
        message: message.into(),
    }
}

/// Split one CSV line into fields (double quotes protect commas; `""` is a quote).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.trim().is_empty() => {
                cur.clear();
                quoted = true;
            }
            (',', false) => fields.push(std::mem::take(&mut cur).trim().to_string()),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".to_string());
    }
    fields.push(cur.trim().to_string());
    Ok(fields)
}

/// A CSV table: header names and data rows with their line numbers.
struct Table {
    columns: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

fn read_table(text: &str, file: &str, known: &[&str]) -> Result<Table, InputError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_start_matches('\u{feff}')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (hline, header) = lines
        .next()
        .ok_or_else(|| in_file(file, "is empty: expected a header row"))?;
    let columns: Vec<String> = split_csv(header)
        .map_err(|e| at(file, hline, e))?
        .into_iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    for (k, c) in columns.iter().enumerate() {
        if !known.contains(&c.as_str()) {
            return Err(at(
                file,
                hline,
                format!("unknown column {c:?} (known columns: {})", known.join(", ")),
            ));
        }
        if columns[..k].contains(c) {
            return Err(at(file, hline, format!("column {c:?} appears twice")));
        }
    }
    let mut rows = Vec::new();
    for (n, line) in lines {
        let fields = split_csv(line).map_err(|e| at(file, n, e))?;
        if fields.len() != columns.len() {
            return Err(at(
                file,
                n,
                format!(
                    "has {} fields, the header has {}",
                    fields.len(),
                    columns.len()
                ),
            ));
        }
        rows.push((n, fields));
    }
    Ok(Table { columns, rows })
}

struct Row<'a> {
    file: &'a str,
    line: usize,
    columns: &'a [String],
    fields: &'a [String],
}

impl Row<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.columns
            .iter()
            .position(|c| c == name)
            .map(|k| self.fields[k].as_str())
            .filter(|v| !v.is_empty())
    }

    fn require(&self, name: &str) -> Result<&str, InputError> {
        self.get(name).ok_or_else(|| {
            at(
                self.file,
                self.line,
                format!("column {name:?} is empty or missing"),
            )
        })
    }

    fn number(&self, name: &str, value: &str) -> Result<f64, InputError> {
        let v = value.trim();
        let (v, scale) = match v.strip_suffix('%') {
            Some(p) => (p.trim(), 0.01),
            None => (v, 1.0),
        };
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x * scale),
            _ => Err(at(
                self.file,
                self.line,
                format!("{name} {value:?} is not a number"),
            )),
        }
    }

    fn positive(&self, name: &str) -> Result<f64, InputError> {
        let x = self.number(name, self.require(name)?)?;
        if x > 0.0 {
            Ok(x)
        } else {
            Err(at(
                self.file,
                self.line,
                format!("{name} must be more than zero, got {x}"),
            ))
        }
    }

    fn optional_positive(&self, name: &str) -> Result<Option<f64>, InputError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.positive(name).map(Some),
        }
    }

    fn non_negative(&self, name: &str) -> Result<f64, InputError> {
        let x = self.number(name, self.require(name)?)?;
        if x >= 0.0 {
            Ok(x)
        } else {
            Err(at(
                self.file,
                self.line,
                format!("{name} must not be negative, got {x}"),
            ))
        }
    }

    fn optional_non_negative(&self, name: &str) -> Result<Option<f64>, InputError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.non_negative(name).map(Some),
        }
    }

    fn whole(&self, name: &str) -> Result<Option<u32>, InputError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<u32>() {
                Ok(x) if x > 0 => Ok(Some(x)),
                _ => Err(at(
                    self.file,
                    self.line,
                    format!("{name} {v:?} is not a whole number above zero"),
                )),
            },
        }
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split(';')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

const HOST_COLUMNS: &[&str] = &[
    "name",
    "cores",
    "ghz",
    "memory_gib",
    "net_mbps",
    "disk_mbps",
    "iops",
    "networks",
    "max_vms",
    "reserve_memory_gib",
    "vm_overhead_gib",
    "max_utilisation",
];

/// Hosts from CSV: `name,cores,ghz,memory_gib,net_mbps,disk_mbps` and optionally `iops`,
/// `networks` (`a;b`), `max_vms`, `reserve_memory_gib`, `vm_overhead_gib`.
pub fn parse_hosts_csv(text: &str, file: &str) -> Result<Vec<Host>, InputError> {
    let table = read_table(text, file, HOST_COLUMNS)?;
    for c in [
        "name",
        "cores",
        "ghz",
        "memory_gib",
        "net_mbps",
        "disk_mbps",
    ] {
        if !table.columns.iter().any(|x| x == c) {
            return Err(in_file(file, format!("header has no {c:?} column")));
        }
    }
    let mut hosts: Vec<Host> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (line, fields) in &table.rows {
        let row = Row {
            file,
            line: *line,
            columns: &table.columns,
            fields,
        };
        let name = row.require("name")?.to_string();
        if let Some(first) = seen.insert(name.clone(), *line) {
            return Err(at(
                file,
                *line,
                format!("host {name:?} is already defined on line {first}"),
            ));
        }
        let cores = row.positive("cores")?;
        if cores.fract() != 0.0 || cores > f64::from(u32::MAX) {
            return Err(at(
                file,
                *line,
                format!("cores must be a whole number, got {cores}"),
            ));
        }
        hosts.push(Host {
            name,
            cores: cores as u32,
            ghz: row.positive("ghz")?,
            memory_gib: row.positive("memory_gib")?,
            net_mbps: row.positive("net_mbps")?,
            disk_mbps: row.positive("disk_mbps")?,
            iops: row.optional_positive("iops")?,
            networks: row.list("networks"),
            max_vms: row.whole("max_vms")?,
            reserve_memory_gib: row.optional_non_negative("reserve_memory_gib")?,
            vm_overhead_gib: row.optional_non_negative("vm_overhead_gib")?,
            max_utilisation: match row.get("max_utilisation") {
                Some(v) => Some(
                    fraction(v).map_err(|m| at(file, *line, format!("max_utilisation: {m}")))?,
                ),
                None => None,
            },
        });
    }
    if hosts.is_empty() {
        return Err(in_file(file, "has a header but no hosts"));
    }
    Ok(hosts)
}

const WORKLOAD_COLUMNS: &[&str] = &[
    "name",
    "cpu_ghz",
    "cores",
    "ghz",
    "cpu_percent",
    "memory_gib",
    "net_mbps",
    "net_in_mbps",
    "net_out_mbps",
    "disk_mbps",
    "disk_read_mbps",
    "disk_write_mbps",
    "iops",
    "group_apart",
    "group_together",
    "host",
    "networks",
];

/// Workloads from CSV: `name,cpu_ghz,memory_gib,net_mbps,disk_mbps` and optionally `iops`,
/// `group_apart`, `group_together`, `host`, `networks` (lists separated by `;`).
///
/// Instead of `cpu_ghz` a row may give the old server's `cores,ghz,cpu_percent` (the chapter's
/// 4 × 1 GHz × 40 % = 1.6 GHz). A single `net_mbps` is reserved in both directions; give
/// `net_in_mbps,net_out_mbps` to be exact. `disk_mbps` is reads plus writes, or give
/// `disk_read_mbps,disk_write_mbps`.
pub fn parse_workloads_csv(text: &str, file: &str) -> Result<Vec<Workload>, InputError> {
    parse_workloads_csv_for(text, file, None)
}

/// Workloads from CSV, with each `host` pin checked against `hosts` (when given) so an unknown
/// host is reported at its file and line.
fn parse_workloads_csv_for(
    text: &str,
    file: &str,
    hosts: Option<&[Host]>,
) -> Result<Vec<Workload>, InputError> {
    let table = read_table(text, file, WORKLOAD_COLUMNS)?;
    let has = |c: &str| table.columns.iter().any(|x| x == c);
    if !has("name") || !has("memory_gib") {
        return Err(in_file(
            file,
            "header must have \"name\" and \"memory_gib\" columns",
        ));
    }
    if !(has("cpu_ghz") || has("cores") && has("ghz") && has("cpu_percent")) {
        return Err(in_file(
            file,
            "header needs \"cpu_ghz\" (or \"cores\", \"ghz\" and \"cpu_percent\")",
        ));
    }
    if !(has("net_mbps") || has("net_in_mbps") && has("net_out_mbps")) {
        return Err(in_file(
            file,
            "header needs \"net_mbps\" (or \"net_in_mbps\" and \"net_out_mbps\")",
        ));
    }
    if !(has("disk_mbps") || has("disk_read_mbps") && has("disk_write_mbps")) {
        return Err(in_file(
            file,
            "header needs \"disk_mbps\" (or \"disk_read_mbps\" and \"disk_write_mbps\")",
        ));
    }
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (line, fields) in &table.rows {
        let row = Row {
            file,
            line: *line,
            columns: &table.columns,
            fields,
        };
        let name = row.require("name")?.to_string();
        if let Some(first) = seen.insert(name.clone(), *line) {
            return Err(at(
                file,
                *line,
                format!("workload {name:?} is already defined on line {first}"),
            ));
        }
        let cpu = match row.get("cpu_ghz") {
            Some(_) => row.non_negative("cpu_ghz")?,
            None => {
                let cores = row.non_negative("cores")?;
                let ghz = row.non_negative("ghz")?;
                let raw = row.require("cpu_percent")?;
                let mut p = row.non_negative("cpu_percent")?;
                if !raw.trim().ends_with('%') {
                    p /= 100.0;
                }
                cores * ghz * p
            }
        };
        let (net_in, net_out) = match row.get("net_mbps") {
            Some(_) => {
                let n = row.non_negative("net_mbps")?;
                (n, n)
            }
            None => (
                row.non_negative("net_in_mbps")?,
                row.non_negative("net_out_mbps")?,
            ),
        };
        let disk = match row.get("disk_mbps") {
            Some(_) => row.non_negative("disk_mbps")?,
            None => row.non_negative("disk_read_mbps")? + row.non_negative("disk_write_mbps")?,
        };
        let iops = row.optional_non_negative("iops")?.unwrap_or(0.0);
        let pin = row.get("host").map(str::to_string);
        if let (Some(p), Some(hosts)) = (&pin, hosts) {
            if !hosts.iter().any(|h| &h.name == p) {
                return Err(at(
                    file,
                    *line,
                    format!("workload {name:?} is pinned to unknown host {p:?}"),
                ));
            }
        }
        out.push(Workload {
            name,
            demand: Demand::constant([
                cpu,
                row.non_negative("memory_gib")?,
                net_in,
                net_out,
                disk,
                iops,
            ]),
            apart: row.list("group_apart"),
            together: row.list("group_together"),
            host: pin,
            networks: row.list("networks"),
        });
    }
    Ok(out)
}

/// Line (1-based) of a byte offset.
fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn toml_error(text: &str, file: &str, e: toml::de::Error) -> InputError {
    let message = e.message().to_string();
    match e.span() {
        Some(span) => at(file, line_of_offset(text, span.start), message),
        None => in_file(file, message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsToml {
    #[serde(default)]
    defaults: HostDefaults,
    #[serde(default)]
    host: Vec<HostToml>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HostDefaults {
    reserve_memory_gib: Option<f64>,
    vm_overhead_gib: Option<f64>,
    max_vms: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostToml {
    /// Spanned so errors point at this host's own `name` line.
    name: toml::Spanned<String>,
    #[serde(default)]
    count: Option<u32>,
    cores: i64,
    ghz: f64,
    memory_gib: f64,
    #[serde(default)]
    net_mbps: Option<f64>,
    #[serde(default)]
    nic: Vec<NicToml>,
    disk_mbps: f64,
    #[serde(default)]
    iops: Option<f64>,
    #[serde(default)]
    networks: Vec<String>,
    #[serde(default)]
    max_vms: Option<u32>,
    #[serde(default)]
    reserve_memory_gib: Option<f64>,
    #[serde(default)]
    vm_overhead_gib: Option<f64>,
    /// Percent (`70`) or fraction (`0.7`).
    #[serde(default)]
    max_utilisation: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NicToml {
    mbps: f64,
    #[serde(default)]
    networks: Vec<String>,
}

/// Hosts from TOML: `[[host]]` tables with the CSV's fields, NICs either as `net_mbps` plus
/// `networks` or as `[[host.nic]]` tables (`mbps`, `networks`), `count = N` for N identical
/// hosts named `name-1`…`name-N`, and a `[defaults]` table for reserve, overhead and max VMs.
pub fn parse_hosts_toml(text: &str, file: &str) -> Result<Vec<Host>, InputError> {
    let doc: HostsToml = toml::from_str(text).map_err(|e| toml_error(text, file, e))?;
    if doc.host.is_empty() {
        return Err(in_file(file, "has no [[host]] tables"));
    }
    let mut hosts = Vec::new();
    // Line of each host's `name`, for the duplicate check after expansion.
    let mut lines = Vec::new();
    for h in doc.host {
        let line = line_of_offset(text, h.name.span().start);
        let name = h.name.into_inner();
        let err = |m: String| at(file, line, format!("host {name:?}: {m}"));
        let positive = |what: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(v)
            } else {
                Err(err(format!("{what} must be more than zero, got {v}")))
            }
        };
        if h.cores <= 0 || h.cores > i64::from(u32::MAX) {
            return Err(err(format!(
                "cores must be more than zero, got {}",
                h.cores
            )));
        }
        let mut networks = h.networks.clone();
        let net_mbps = match (h.net_mbps, h.nic.is_empty()) {
            (Some(n), true) => positive("net_mbps", n)?,
            (None, false) => {
                let mut total = 0.0;
                for nic in &h.nic {
                    total += positive("nic mbps", nic.mbps)?;
                    networks.extend(nic.networks.iter().cloned());
                }
                total
            }
            (Some(_), false) => {
                return Err(err("give net_mbps or [[host.nic]] tables, not both".into()))
            }
            (None, true) => return Err(err("needs net_mbps or [[host.nic]] tables".into())),
        };
        networks.sort();
        networks.dedup();
        let iops = match h.iops {
            Some(v) => Some(positive("iops", v)?),
            None => None,
        };
        for (what, v) in [
            (
                "reserve_memory_gib",
                h.reserve_memory_gib.or(doc.defaults.reserve_memory_gib),
            ),
            (
                "vm_overhead_gib",
                h.vm_overhead_gib.or(doc.defaults.vm_overhead_gib),
            ),
        ] {
            if let Some(v) = v {
                if !(v >= 0.0 && v.is_finite()) {
                    return Err(err(format!("{what} must not be negative, got {v}")));
                }
            }
        }
        let template = Host {
            name: name.clone(),
            cores: h.cores as u32,
            ghz: positive("ghz", h.ghz)?,
            memory_gib: positive("memory_gib", h.memory_gib)?,
            net_mbps,
            disk_mbps: positive("disk_mbps", h.disk_mbps)?,
            iops,
            networks,
            max_vms: h.max_vms.or(doc.defaults.max_vms),
            reserve_memory_gib: h.reserve_memory_gib.or(doc.defaults.reserve_memory_gib),
            vm_overhead_gib: h.vm_overhead_gib.or(doc.defaults.vm_overhead_gib),
            max_utilisation: match h.max_utilisation {
                Some(v) => Some(
                    fraction(&v.to_string()).map_err(|m| err(format!("max_utilisation: {m}")))?,
                ),
                None => None,
            },
        };
        if template.max_vms == Some(0) {
            return Err(err("max_vms must be more than zero".into()));
        }
        match h.count {
            None => {
                hosts.push(template);
                lines.push(line);
            }
            Some(0) => return Err(err("count must be more than zero".into())),
            Some(n) => {
                for k in 1..=n {
                    let mut c = template.clone();
                    c.name = format!("{name}-{k}");
                    hosts.push(c);
                    lines.push(line);
                }
            }
        }
    }
    let mut seen = BTreeMap::new();
    for (h, line) in hosts.iter().zip(&lines) {
        if let Some(first) = seen.insert(h.name.clone(), *line) {
            return Err(at(
                file,
                *line,
                format!("host {:?} is already defined on line {first}", h.name),
            ));
        }
    }
    Ok(hosts)
}

/// A utilisation cap: `70%` or `70` → 0.7 (a bare number of at most 1 is a fraction: `0.7`).
fn fraction(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let v: f64 = t
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage (e.g. 85%)"))?;
    let f = if t.ends_with('%') || v > 1.0 {
        v / 100.0
    } else {
        v
    };
    if !(f > 0.0 && f <= 1.0) {
        return Err(format!(
            "must be more than 0 % and at most 100 %, got {text}"
        ));
    }
    Ok(f)
}

/// Hosts from a file's text, by extension: `.toml` is TOML, anything else CSV.
pub fn parse_hosts(text: &str, file: &str) -> Result<Vec<Host>, InputError> {
    if file.to_ascii_lowercase().ends_with(".toml") {
        parse_hosts_toml(text, file)
    } else {
        parse_hosts_csv(text, file)
    }
}

/// p50, p95 and maximum of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Stats {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

impl Stats {
    /// Percentiles by nearest rank of `values` (all zero for none).
    pub fn of(values: &[f64]) -> Stats {
        if values.is_empty() {
            return Stats::default();
        }
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Stats {
            p50: rank(0.50),
            p95: rank(0.95),
            max: v[v.len() - 1],
        }
    }
}

/// One NIC's traffic in a sample.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NicSample {
    pub rx_bytes_per_s: f64,
    pub tx_bytes_per_s: f64,
}

/// One disk's traffic in a sample.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DiskSample {
    pub read_bytes_per_s: f64,
    pub write_bytes_per_s: f64,
    pub read_iops: f64,
    pub write_iops: f64,
}

/// One interval of a measurement (rates are averages over the interval ending at `unix`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sample {
    /// End of the interval, seconds since the Unix epoch.
    pub unix: f64,
    /// Busy fraction of all CPUs (0–1).
    pub cpu_utilisation: f64,
    /// Consumed GHz: cores × GHz × utilisation.
    pub cpu_ghz: f64,
    /// Memory used, excluding page cache and buffers.
    pub memory_used_gib: f64,
    pub net_in_mbps: f64,
    pub net_out_mbps: f64,
    pub disk_read_mbps: f64,
    pub disk_write_mbps: f64,
    pub iops: f64,
    #[serde(default)]
    pub nics: BTreeMap<String, NicSample>,
    #[serde(default)]
    pub disks: BTreeMap<String, DiskSample>,
}

/// A workload profile as `corral measure` writes it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Profile {
    /// Always `corral-profile/1`.
    pub format: String,
    pub hostname: String,
    pub cpu_model: String,
    /// Logical CPUs (hardware threads). `cpu_ghz` in the samples is
    /// `cores × mhz × utilisation` over these, so it is the clock the threads were given.
    pub cores: u32,
    /// Physical cores (0 in profiles written before this field existed). A host of `cores`
    /// threads on fewer physical cores delivers less than `cores × GHz` when every thread is
    /// busy; the planner takes the host's `cores` column as given.
    #[serde(default)]
    pub physical_cores: u32,
    pub mhz: f64,
    pub memory_total_gib: f64,
    pub interval_s: f64,
    pub samples: Vec<Sample>,
    /// p50/p95/max per metric, keyed by the sample field name; also `read_iops`, `write_iops`,
    /// and per device `nic.NAME.rx_mbps`/`tx_mbps`, `disk.NAME.read_mbps`/`write_mbps`/
    /// `read_iops`/`write_iops`.
    pub summary: BTreeMap<String, Stats>,
    /// Whether the measurement was stopped early (Ctrl-C) instead of running its duration.
    #[serde(default)]
    pub interrupted: bool,
}

/// The profile format tag.
pub const PROFILE_FORMAT: &str = "corral-profile/1";

impl Sample {
    /// The sample as demand amounts: CPU GHz, memory GiB, net in/out Mbit/s, disk MB/s, IOPS.
    pub fn amounts(&self) -> Amounts {
        [
            self.cpu_ghz,
            self.memory_used_gib,
            self.net_in_mbps,
            self.net_out_mbps,
            self.disk_read_mbps + self.disk_write_mbps,
            self.iops,
        ]
    }
}

impl Profile {
    /// Summarise the samples into p50/p95/max per metric.
    pub fn summarise(&mut self) {
        type Metric = (&'static str, fn(&Sample) -> f64);
        let metrics: [Metric; 9] = [
            ("cpu_utilisation", |s| s.cpu_utilisation),
            ("cpu_ghz", |s| s.cpu_ghz),
            ("memory_used_gib", |s| s.memory_used_gib),
            ("net_in_mbps", |s| s.net_in_mbps),
            ("net_out_mbps", |s| s.net_out_mbps),
            ("disk_read_mbps", |s| s.disk_read_mbps),
            ("disk_write_mbps", |s| s.disk_write_mbps),
            ("iops", |s| s.iops),
            ("disk_mbps", |s| s.disk_read_mbps + s.disk_write_mbps),
        ];
        self.summary = metrics
            .iter()
            .map(|(k, f)| {
                let v: Vec<f64> = self.samples.iter().map(f).collect();
                (k.to_string(), Stats::of(&v))
            })
            .collect();
        // Read and write operations apart (a disk's budget differs between them), and each
        // NIC and disk on its own (`nic.eth0.rx_mbps`, `disk.sda.write_iops`): the totals
        // cannot tell one saturated NIC from two half-busy ones.
        let per =
            |f: &dyn Fn(&Sample) -> f64| Stats::of(&self.samples.iter().map(f).collect::<Vec<_>>());
        let sum_disks =
            |f: fn(&DiskSample) -> f64| move |s: &Sample| s.disks.values().map(f).sum::<f64>();
        if self.samples.iter().any(|s| !s.disks.is_empty()) {
            self.summary
                .insert("read_iops".into(), per(&sum_disks(|d| d.read_iops)));
            self.summary
                .insert("write_iops".into(), per(&sum_disks(|d| d.write_iops)));
        }
        let nics: std::collections::BTreeSet<String> = self
            .samples
            .iter()
            .flat_map(|s| s.nics.keys().cloned())
            .collect();
        for n in nics {
            let nic = |s: &Sample| s.nics.get(&n).copied().unwrap_or_default();
            let mbit = |b: f64| b * 8.0 / 1e6;
            self.summary.insert(
                format!("nic.{n}.rx_mbps"),
                per(&|s| mbit(nic(s).rx_bytes_per_s)),
            );
            self.summary.insert(
                format!("nic.{n}.tx_mbps"),
                per(&|s| mbit(nic(s).tx_bytes_per_s)),
            );
        }
        let disks: std::collections::BTreeSet<String> = self
            .samples
            .iter()
            .flat_map(|s| s.disks.keys().cloned())
            .collect();
        for d in disks {
            let disk = |s: &Sample| s.disks.get(&d).copied().unwrap_or_default();
            self.summary.insert(
                format!("disk.{d}.read_mbps"),
                per(&|s| disk(s).read_bytes_per_s / 1e6),
            );
            self.summary.insert(
                format!("disk.{d}.write_mbps"),
                per(&|s| disk(s).write_bytes_per_s / 1e6),
            );
            self.summary
                .insert(format!("disk.{d}.read_iops"), per(&|s| disk(s).read_iops));
            self.summary
                .insert(format!("disk.{d}.write_iops"), per(&|s| disk(s).write_iops));
        }
    }

    /// The workload this profile describes: each hour of the day (UTC) takes the highest
    /// sample measured in that hour; hours never measured take the overall peak. Memory is
    /// always the peak.
    pub fn to_workload(&self, name: &str) -> Workload {
        let mut peak: Amounts = [0.0; RESOURCES];
        let mut hours: Vec<Option<Amounts>> = vec![None; TIME_BUCKETS];
        for s in &self.samples {
            let a = s.amounts();
            let hour = ((s.unix.max(0.0) as u64 / 3600) % TIME_BUCKETS as u64) as usize;
            let slot = hours[hour].get_or_insert([0.0; RESOURCES]);
            for d in 0..RESOURCES {
                slot[d] = slot[d].max(a[d]);
                peak[d] = peak[d].max(a[d]);
            }
        }
        let series = hours.into_iter().map(|h| h.unwrap_or(peak)).collect();
        Workload {
            name: name.to_string(),
            demand: Demand::from_series(series),
            apart: Vec::new(),
            together: Vec::new(),
            host: None,
            networks: Vec::new(),
        }
    }
}

/// A profile from JSON; `name` is the workload name to give it (usually the file stem).
pub fn parse_profile(text: &str, file: &str, name: &str) -> Result<Workload, InputError> {
    let profile: Profile =
        serde_json::from_str(text).map_err(|e| at(file, e.line(), e.to_string()))?;
    if profile.format != PROFILE_FORMAT {
        return Err(in_file(
            file,
            format!(
                "format is {:?}, expected {PROFILE_FORMAT:?}",
                profile.format
            ),
        ));
    }
    if profile.samples.is_empty() {
        return Err(in_file(file, "has no samples"));
    }
    for (k, s) in profile.samples.iter().enumerate() {
        if s.amounts().iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(in_file(
                file,
                format!("sample {} has a negative or invalid value", k + 1),
            ));
        }
    }
    Ok(profile.to_workload(name))
}

/// Workloads from one file's text, by extension: `.json` is a profile (named after the file
/// stem), anything else CSV.
pub fn parse_workloads(text: &str, file: &str) -> Result<Vec<Workload>, InputError> {
    parse_workloads_inner(text, file, None)
}

/// [`parse_workloads`], with CSV `host` pins checked against `hosts` while parsing, so an
/// unknown host is an error naming the file and line (the model's own check cannot).
pub fn parse_workloads_for(
    text: &str,
    file: &str,
    hosts: &[Host],
) -> Result<Vec<Workload>, InputError> {
    parse_workloads_inner(text, file, Some(hosts))
}

fn parse_workloads_inner(
    text: &str,
    file: &str,
    hosts: Option<&[Host]>,
) -> Result<Vec<Workload>, InputError> {
    if file.to_ascii_lowercase().ends_with(".json") {
        let stem = std::path::Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(file);
        Ok(vec![parse_profile(text, file, stem)?])
    } else {
        parse_workloads_csv_for(text, file, hosts)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConstraintsToml {
    #[serde(default)]
    apart: Vec<GroupToml>,
    #[serde(default)]
    together: Vec<GroupToml>,
    /// Spanned (keys and values) so errors point at the line that names the thing.
    #[serde(default)]
    pin: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    networks: BTreeMap<Spanned<String>, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupToml {
    #[serde(default)]
    name: Option<String>,
    workloads: Spanned<Vec<Spanned<String>>>,
}

/// Apply a constraints TOML to workloads (useful with profiles, which carry none):
///
/// ```toml
/// [[apart]]                      # cluster pair: never on one host
/// name = "sql"
/// workloads = ["db1", "db2"]
/// [[together]]
/// workloads = ["app", "cache"]
/// [pin]
/// db1 = "host-a"
/// [networks]
/// web1 = ["dmz"]
/// ```
///
/// A workload or host name that does not exist is an error at its line.
pub fn apply_constraints(
    text: &str,
    file: &str,
    workloads: &mut [Workload],
    hosts: &[Host],
) -> Result<(), InputError> {
    let doc: ConstraintsToml = toml::from_str(text).map_err(|e| toml_error(text, file, e))?;
    let index: BTreeMap<String, usize> = workloads
        .iter()
        .enumerate()
        .map(|(i, w)| (w.name.clone(), i))
        .collect();
    // Lines come from the TOML parser's spans, never from searching the text.
    let line = |span: std::ops::Range<usize>| line_of_offset(text, span.start);
    let find = |name: &Spanned<String>| {
        index.get(name.get_ref()).copied().ok_or_else(|| {
            at(
                file,
                line(name.span()),
                format!("constraint names unknown workload {:?}", name.get_ref()),
            )
        })
    };
    for (kind, groups) in [("apart", &doc.apart), ("together", &doc.together)] {
        for (k, g) in groups.iter().enumerate() {
            let group = g
                .name
                .clone()
                .unwrap_or_else(|| format!("{kind}-{}", k + 1));
            if g.workloads.get_ref().len() < 2 {
                return Err(at(
                    file,
                    line(g.workloads.span()),
                    format!("{kind} group {group:?} needs at least two workloads"),
                ));
            }
            for w in g.workloads.get_ref() {
                let i = find(w)?;
                let list = if kind == "apart" {
                    &mut workloads[i].apart
                } else {
                    &mut workloads[i].together
                };
                list.push(group.clone());
            }
        }
    }
    for (w, h) in &doc.pin {
        let i = find(w)?;
        if !hosts.iter().any(|x| &x.name == h.get_ref()) {
            return Err(at(
                file,
                line(h.span()),
                format!(
                    "workload {:?} is pinned to unknown host {:?}",
                    w.get_ref(),
                    h.get_ref()
                ),
            ));
        }
        workloads[i].host = Some(h.get_ref().clone());
    }
    for (w, nets) in &doc.networks {
        let i = find(w)?;
        workloads[i].networks.extend(nets.iter().cloned());
    }
    Ok(())
}
