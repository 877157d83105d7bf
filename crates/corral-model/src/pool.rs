//! Pools of hosts: the records members publish about themselves (`HostRecord`), what
//! `corral host list/show` and `corral pool show` answer, and a VM's HA policy.
//!
//! A host that runs without `--etcd` is a one-host pool: the same types describe it.

use serde::{Deserialize, Serialize};

/// What a member publishes about itself in the pool's store (`pool/hosts/<id>`), refreshed
/// every few seconds; its liveness is a separate leased key (`pool/members/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostRecord {
    pub id: String,
    pub name: String,
    /// `https://ADDR:PORT` where members reach it (mutual TLS); absent without `--listen`.
    #[serde(default)]
    pub address: Option<String>,
    pub joined_at_ms: u64,
    pub updated_at_ms: u64,
    pub cpu_cores: u32,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// 1-minute load average.
    pub load1: f64,
    pub vms_running: u32,
    /// The host in the planner's model (capacity and networks), for placement across the pool.
    #[serde(default)]
    pub planner: Option<crate::stats::PlannerCapacity>,
    /// Names of the repositories this host has (shared ones included).
    #[serde(default)]
    pub srs: Vec<String>,
    /// What its running VMs use, in planner units, hour by hour of the day (24 rows of CPU
    /// GHz, memory GiB, net in/out Mbit/s, disk MB/s, IOPS): measured where the agent has
    /// statistics, configured otherwise. Placement rates members with it.
    #[serde(default)]
    pub load_hourly: Vec<[f64; 6]>,
    /// Keep-apart groups of the VMs running on it.
    #[serde(default)]
    pub apart_groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Its membership lease is alive.
    Up,
    /// Its lease expired (or it never renewed it since this member started watching).
    Down,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Up => "up",
            HostState::Down => "down",
        }
    }
}

/// A member as `corral host list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostSummary {
    pub name: String,
    pub id: String,
    pub state: HostState,
    /// When it entered that state, as far as the answering member saw (ms since the epoch).
    pub since_ms: u64,
    #[serde(default)]
    pub address: Option<String>,
    /// VMs it owns (any power state).
    pub vms: u32,
    pub vms_running: u32,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    pub cpu_cores: u32,
    pub load1: f64,
    /// The member that answered.
    pub this_host: bool,
}

/// `GET /v1/hosts/{name}`: the summary plus what the host publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostDetail {
    #[serde(flatten)]
    pub summary: HostSummary,
    pub joined_at_ms: u64,
    pub updated_at_ms: u64,
    pub srs: Vec<String>,
    #[serde(default)]
    pub planner: Option<crate::stats::PlannerCapacity>,
    /// Its VMs by name.
    pub vm_names: Vec<String>,
}

/// One etcd member as the pool's client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StoreEndpoint {
    pub endpoint: String,
    pub healthy: bool,
    /// Why not, or the member's answer time.
    pub detail: String,
}

/// How HA restarts are made safe; see docs/pools.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HaStatus {
    /// Membership lease of every host.
    pub lease_ttl_secs: u64,
    /// A host that could not renew its lease kills its HA VMs this long before the lease can
    /// expire.
    pub self_fence_margin_secs: u64,
    /// Survivors wait this long after a lease expired before restarting its HA VMs.
    pub restart_delay_secs: u64,
    /// The fencing device: the fence guard process, and the kernel watchdog when armed.
    pub fencing: String,
    /// VMs with `--ha restart` in the pool.
    pub protected_vms: u32,
}

/// `GET /v1/pool`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PoolInfo {
    pub name: String,
    /// `sqlite` (a one-host pool on the embedded store) or `etcd`.
    pub store: String,
    pub endpoints: Vec<StoreEndpoint>,
    pub hosts: Vec<HostSummary>,
    pub ha: HaStatus,
    /// SHA-256 of the pool CA certificate (mutual TLS between members); absent for a
    /// one-host pool.
    #[serde(default)]
    pub ca_sha256: Option<String>,
    /// Where the join token lives on the founding host, when this host founded the pool.
    #[serde(default)]
    pub join_token_path: Option<String>,
}

/// A VM's high-availability policy (`vm set --ha restart|off --ha-priority N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HaPolicy {
    /// Restart it on a surviving host when its host goes down (its disks must be on shared
    /// repositories).
    #[serde(default)]
    pub restart: bool,
    /// Higher restarts first.
    #[serde(default)]
    pub priority: i32,
    /// Keep-apart group (the chapter's HA pairs): placement never puts two running VMs of
    /// one group on the same host.
    #[serde(default)]
    pub apart: Option<String>,
}

/// `POST /v1/hosts/{name}/evacuate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EvacuateRequest {
    /// `auto` (placement chooses per VM) or a host name.
    #[serde(default)]
    pub to: Option<String>,
}

/// What an evacuation did, per VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EvacuateAnswer {
    pub moved: Vec<MovedVm>,
    /// VMs left where they are, with the reason.
    pub refused: Vec<RefusedVm>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MovedVm {
    pub vm: String,
    pub to: String,
    /// A running VM moves live: the `vm.migrate` task on its owner (`corral task show`).
    #[serde(default)]
    pub task: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RefusedVm {
    pub vm: String,
    pub reason: String,
}
