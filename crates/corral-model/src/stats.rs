//! Measured load of VMs and placement advice: the bodies of `GET /v1/vms/{name}/stats` and
//! `GET /v1/vms/{name}/recommend-host`, and this host's capacity in the planner's model.
//!
//! Rates are per second (bytes/s, operations/s); CPU is consumed GHz (cores busy × clock), the
//! planner's unit. A metric the agent cannot measure is `null`, never zero: NICs on user-mode
//! NAT have no counters, so their traffic is "not available".

use serde::{Deserialize, Serialize};

/// One sample of a running VM, or one coarse point averaging finer samples (with their
/// maxima in `max`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StatsSample {
    /// End of the interval, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Consumed CPU of the QEMU process in GHz (host cores busy × host clock).
    pub cpu_ghz: f64,
    /// The same as a percentage of one host core (200 = two cores busy).
    pub cpu_percent: f64,
    /// Resident memory of the QEMU process.
    pub memory_bytes: u64,
    /// Received by the guest over bridged NICs; `null` when no NIC has counters.
    pub net_rx_bytes_per_s: Option<f64>,
    pub net_tx_bytes_per_s: Option<f64>,
    /// From QMP `query-blockstats`, summed over the VM's disks and CD-ROMs.
    pub disk_read_bytes_per_s: Option<f64>,
    pub disk_write_bytes_per_s: Option<f64>,
    pub disk_read_iops: Option<f64>,
    pub disk_write_iops: Option<f64>,
    /// On a coarse point (1 min, 1 h): the highest value of each metric over its interval, so
    /// a burst shorter than the step still shows (the point itself is the mean). Absent on
    /// 5 s samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Box<StatsSample>>,
}

/// p50 / p95 / max of one metric over the points of one resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MetricSummary {
    /// Field name of [`StatsSample`], e.g. `cpu_ghz`.
    pub metric: String,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

/// The points kept at one resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StatsSeries {
    /// `5s`, `1m` or `1h`.
    pub resolution: String,
    pub step_seconds: u64,
    /// How far back this resolution reaches.
    pub span_seconds: u64,
    /// Oldest first.
    pub points: Vec<StatsSample>,
    /// One entry per metric that has values; metrics never measured are left out.
    pub summary: Vec<MetricSummary>,
}

/// `GET /v1/vms/{name}/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VmStats {
    pub vm: String,
    /// Seconds between samples.
    pub interval_seconds: u64,
    /// The latest sample, while the VM runs; `null` when it is halted (or just started).
    pub current: Option<StatsSample>,
    /// Metrics that are not measured, and why.
    pub not_available: Vec<String>,
    /// Finest first: 5 s for 10 minutes, 1 min for 2 hours, 1 h for a week.
    pub series: Vec<StatsSeries>,
}

/// A host in the planner's capacity model (`corral plan` hosts CSV columns), as
/// `corral measure`'s host model finds it, with the figures set in the agent's configuration
/// (`[capacity]`, `corral serve --capacity-*`) in their place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PlannerCapacity {
    pub name: String,
    /// Logical CPUs.
    pub cores: u32,
    /// Clock of each core: the cpufreq rated maximum when the kernel has it.
    pub ghz: f64,
    pub memory_gib: f64,
    /// NIC bandwidth in Mbit/s each way, summed over the physical NICs (pooled per host).
    pub net_mbps: f64,
    /// Disk bandwidth in MB/s, reads plus writes; a typical figure per device unless configured.
    pub disk_mbps: f64,
    /// Disk operations per second; a typical figure per device unless configured.
    pub iops: f64,
    /// Networks defined on this host.
    pub networks: Vec<String>,
    /// Where each figure came from: read from the kernel, assumed, or set by configuration.
    pub notes: Vec<String>,
}

/// One host's rating for a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostScore {
    pub host: String,
    /// 0 (cannot take it) to 5 (plenty of room).
    pub score: f64,
    pub reasons: Vec<String>,
}

/// `GET /v1/vms/{name}/recommend-host`: every host of the pool rated for the VM, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostRecommendation {
    pub vm: String,
    /// `measured` (p95 of its stats) or `configured` (its vCPUs and memory).
    pub basis: String,
    /// What the VM was taken to need, in planner units (`cpu_ghz`, `memory_gib`, ...).
    pub demand: Vec<(String, f64)>,
    pub hosts: Vec<HostScore>,
}
