//! The planner's inputs: hosts and their capacities, workloads and their demands, the
//! constraints between them, and the options of a planning run.
//!
//! Everything here is plain data; [`validate`] checks it once (positive capacities, unique
//! names, constraints that name real hosts and agree with each other) before the planner
//! compiles it into its internal form.

use crate::resource::{Amounts, Resource, RESOURCES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Number of time-of-day buckets a demand series has: one per hour of the day, in UTC.
///
/// Profiles measured over different days are folded onto the same 24 hours, keeping the
/// highest sample of each hour, so a nightly backup and a daytime web server can share a host.
pub const TIME_BUCKETS: usize = 24;

/// A physical host that VMs can be placed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// Unique name.
    pub name: String,
    /// Physical cores (hardware threads count if the admin says so).
    pub cores: u32,
    /// Clock of each core in GHz.
    pub ghz: f64,
    /// Installed memory in GiB.
    pub memory_gib: f64,
    /// Total NIC bandwidth in Mbit/s, available in each direction (full duplex).
    pub net_mbps: f64,
    /// Disk bandwidth in MB/s, reads plus writes.
    pub disk_mbps: f64,
    /// Disk operations per second; `None` means not limited in the plan.
    #[serde(default)]
    pub iops: Option<f64>,
    /// Networks this host's NICs reach. A host that lists none reaches no named network.
    #[serde(default)]
    pub networks: Vec<String>,
    /// At most this many VMs on this host (overrides the plan-wide option when smaller).
    #[serde(default)]
    pub max_vms: Option<u32>,
    /// Memory kept free for the host itself, in GiB (overrides the plan-wide option).
    #[serde(default)]
    pub reserve_memory_gib: Option<f64>,
    /// Memory each VM costs beyond its guest memory (QEMU itself), in GiB (overrides the option).
    #[serde(default)]
    pub vm_overhead_gib: Option<f64>,
    /// Cap on every resource of this host as a fraction of raw capacity (overrides the
    /// plan-wide `max_utilisation`).
    #[serde(default)]
    pub max_utilisation: Option<f64>,
}

impl Host {
    /// A host with the CSV's required columns and no optional ones.
    pub fn new(
        name: &str,
        cores: u32,
        ghz: f64,
        memory_gib: f64,
        net_mbps: f64,
        disk_mbps: f64,
    ) -> Host {
        Host {
            name: name.to_string(),
            cores,
            ghz,
            memory_gib,
            net_mbps,
            disk_mbps,
            iops: None,
            networks: Vec::new(),
            max_vms: None,
            reserve_memory_gib: None,
            vm_overhead_gib: None,
            max_utilisation: None,
        }
    }

    /// Raw capacity per resource: cores × GHz, memory, NIC speed each way, disk, IOPS
    /// (infinite when unknown).
    pub fn capacity(&self) -> Amounts {
        [
            f64::from(self.cores) * self.ghz,
            self.memory_gib,
            self.net_mbps,
            self.net_mbps,
            self.disk_mbps,
            self.iops.unwrap_or(f64::INFINITY),
        ]
    }
}

/// What a workload consumes: its peak per resource and, optionally, its demand through the day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    /// Highest demand per resource; what the planner reserves when there is no series.
    pub peak: Amounts,
    /// Demand per hour of the day ([`TIME_BUCKETS`] entries); memory always uses the peak.
    #[serde(default)]
    pub series: Option<Vec<Amounts>>,
}

impl Demand {
    /// A demand that is the same at every hour.
    pub fn constant(peak: Amounts) -> Demand {
        Demand { peak, series: None }
    }

    /// A demand through the day; the peak is the highest value of each resource.
    pub fn from_series(series: Vec<Amounts>) -> Demand {
        let mut peak: Amounts = [0.0; RESOURCES];
        for sample in &series {
            for (p, v) in peak.iter_mut().zip(sample) {
                *p = p.max(*v);
            }
        }
        Demand {
            peak,
            series: Some(series),
        }
    }

    /// Demand at hour `bucket` (the peak when there is no series).
    pub fn at(&self, bucket: usize) -> Amounts {
        match &self.series {
            Some(series) => {
                let mut a = series.get(bucket).copied().unwrap_or(self.peak);
                a[Resource::Memory as usize] = self.peak[Resource::Memory as usize];
                a
            }
            None => self.peak,
        }
    }
}

/// A workload to place: a physical server or VM that becomes one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Unique name.
    pub name: String,
    /// What it consumes.
    pub demand: Demand,
    /// Keep-apart groups: no two members of a group share a host (cluster pairs, HA).
    #[serde(default)]
    pub apart: Vec<String>,
    /// Keep-together groups: all members of a group share one host.
    #[serde(default)]
    pub together: Vec<String>,
    /// Must run on this host.
    #[serde(default)]
    pub host: Option<String>,
    /// Networks it must reach (isolation): only hosts reaching all of them qualify.
    #[serde(default)]
    pub networks: Vec<String>,
}

impl Workload {
    /// A workload with constant demand and no constraints. `net_mbps` is one figure for both
    /// directions, so it is reserved in each (the conservative reading of a single number).
    pub fn new(
        name: &str,
        cpu_ghz: f64,
        memory_gib: f64,
        net_mbps: f64,
        disk_mbps: f64,
    ) -> Workload {
        Workload {
            name: name.to_string(),
            demand: Demand::constant([cpu_ghz, memory_gib, net_mbps, net_mbps, disk_mbps, 0.0]),
            apart: Vec::new(),
            together: Vec::new(),
            host: None,
            networks: Vec::new(),
        }
    }
}

/// What the planner optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Fewest hosts.
    #[default]
    Density,
    /// Lowest highest utilisation, spreading over every host.
    Performance,
}

impl std::str::FromStr for Mode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Mode, ModelError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "density" => Ok(Mode::Density),
            "performance" => Ok(Mode::Performance),
            _ => Err(ModelError::InvalidOption(format!(
                "mode {s:?} is not one of density, performance"
            ))),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Density => "density",
            Mode::Performance => "performance",
        })
    }
}

/// Options of a planning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Density or performance.
    pub mode: Mode,
    /// Cap on every resource as a fraction of raw capacity (0.85 = 85 %).
    pub max_utilisation: f64,
    /// Memory kept free on each host for the host itself, in GiB; counts as used memory.
    pub reserve_memory_gib: f64,
    /// Memory each VM costs beyond its guest memory, in GiB.
    pub vm_overhead_gib: f64,
    /// At most this many VMs on any host.
    pub max_vms_per_host: Option<u32>,
    /// VMs' memory may add up to this many times a host's memory (before the cap and the
    /// reserve); 1 (the default) never overcommits memory.
    #[serde(default = "one")]
    pub memory_overcommit: f64,
    /// Write an explanation for every decision (costs a scan of the hosts per workload).
    pub explain: bool,
    /// Search effort multiplier for the improvement phase; 0 keeps the constructive heuristics only.
    pub effort: u32,
}

fn one() -> f64 {
    1.0
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            mode: Mode::Density,
            max_utilisation: 0.85,
            reserve_memory_gib: 1.0,
            vm_overhead_gib: 0.0,
            max_vms_per_host: None,
            memory_overcommit: 1.0,
            explain: true,
            effort: 1,
        }
    }
}

/// Invalid hosts, workloads, constraints or options.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("host {host:?}: {what} must be a positive number, got {value}")]
    InvalidCapacity {
        host: String,
        what: &'static str,
        value: f64,
    },
    #[error("workload {workload:?}: {what} must be zero or more, got {value}")]
    InvalidDemand {
        workload: String,
        what: String,
        value: f64,
    },
    #[error("workload {workload:?}: demand series has {got} hours, expected {TIME_BUCKETS}")]
    InvalidSeries { workload: String, got: usize },
    #[error("host name {0:?} appears more than once")]
    DuplicateHost(String),
    #[error("workload name {0:?} appears more than once")]
    DuplicateWorkload(String),
    #[error("name must not be empty")]
    EmptyName,
    #[error("workload {workload:?} is pinned to unknown host {host:?}")]
    UnknownHost { workload: String, host: String },
    #[error("constraint names unknown workload {0:?}")]
    UnknownWorkload(String),
    #[error("workloads {a:?} and {b:?} must share a host (group {together:?}) and be apart (group {apart:?})")]
    TogetherAndApart {
        a: String,
        b: String,
        together: String,
        apart: String,
    },
    #[error("keep-together group {group:?} is pinned to two hosts, {a:?} and {b:?}")]
    ConflictingPins { group: String, a: String, b: String },
    #[error("{0}")]
    InvalidOption(String),
    #[error("no hosts to plan on")]
    NoHosts,
}

/// Check hosts, workloads and options before planning.
pub fn validate(
    hosts: &[Host],
    workloads: &[Workload],
    options: &PlanOptions,
) -> Result<(), ModelError> {
    if !(options.max_utilisation > 0.0 && options.max_utilisation <= 1.0) {
        return Err(ModelError::InvalidOption(format!(
            "max utilisation must be more than 0 % and at most 100 %, got {} %",
            options.max_utilisation * 100.0
        )));
    }
    if !(options.memory_overcommit >= 1.0 && options.memory_overcommit.is_finite()) {
        return Err(ModelError::InvalidOption(format!(
            "memory overcommit must be at least 1 (1 = none), got {}",
            options.memory_overcommit
        )));
    }
    for h in hosts {
        if let Some(u) = h.max_utilisation {
            if !(u > 0.0 && u <= 1.0) {
                return Err(ModelError::InvalidOption(format!(
                    "host {:?}: max utilisation must be more than 0 % and at most 100 %, got {} %",
                    h.name,
                    u * 100.0
                )));
            }
        }
    }
    if !(options.reserve_memory_gib >= 0.0 && options.reserve_memory_gib.is_finite()) {
        return Err(ModelError::InvalidOption(format!(
            "reserve memory must be zero or more, got {} GiB",
            options.reserve_memory_gib
        )));
    }
    if !(options.vm_overhead_gib >= 0.0 && options.vm_overhead_gib.is_finite()) {
        return Err(ModelError::InvalidOption(format!(
            "VM overhead must be zero or more, got {} GiB",
            options.vm_overhead_gib
        )));
    }
    if hosts.is_empty() {
        return Err(ModelError::NoHosts);
    }
    let mut host_names = BTreeMap::new();
    for h in hosts {
        if h.name.trim().is_empty() {
            return Err(ModelError::EmptyName);
        }
        if host_names.insert(h.name.as_str(), ()).is_some() {
            return Err(ModelError::DuplicateHost(h.name.clone()));
        }
        let positive = |what: &'static str, value: f64| {
            if value > 0.0 && value.is_finite() {
                Ok(())
            } else {
                Err(ModelError::InvalidCapacity {
                    host: h.name.clone(),
                    what,
                    value,
                })
            }
        };
        positive("cores", f64::from(h.cores))?;
        positive("ghz", h.ghz)?;
        positive("memory_gib", h.memory_gib)?;
        positive("net_mbps", h.net_mbps)?;
        positive("disk_mbps", h.disk_mbps)?;
        if let Some(iops) = h.iops {
            positive("iops", iops)?;
        }
        if let Some(max) = h.max_vms {
            positive("max_vms", f64::from(max))?;
        }
        for (what, v) in [
            ("reserve_memory_gib", h.reserve_memory_gib),
            ("vm_overhead_gib", h.vm_overhead_gib),
        ] {
            if let Some(v) = v {
                if !(v >= 0.0 && v.is_finite()) {
                    return Err(ModelError::InvalidCapacity {
                        host: h.name.clone(),
                        what,
                        value: v,
                    });
                }
            }
        }
    }
    let mut names = BTreeMap::new();
    for w in workloads {
        if w.name.trim().is_empty() {
            return Err(ModelError::EmptyName);
        }
        if names.insert(w.name.as_str(), ()).is_some() {
            return Err(ModelError::DuplicateWorkload(w.name.clone()));
        }
        let check = |what: &str, v: f64| {
            if v >= 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(ModelError::InvalidDemand {
                    workload: w.name.clone(),
                    what: what.to_string(),
                    value: v,
                })
            }
        };
        for r in Resource::ALL {
            check(r.key(), w.demand.peak[r as usize])?;
        }
        if let Some(series) = &w.demand.series {
            if series.len() != TIME_BUCKETS {
                return Err(ModelError::InvalidSeries {
                    workload: w.name.clone(),
                    got: series.len(),
                });
            }
            for sample in series {
                for r in Resource::ALL {
                    check(r.key(), sample[r as usize])?;
                }
            }
        }
        if let Some(host) = &w.host {
            if !host_names.contains_key(host.as_str()) {
                return Err(ModelError::UnknownHost {
                    workload: w.name.clone(),
                    host: host.clone(),
                });
            }
        }
    }
    Ok(())
}
