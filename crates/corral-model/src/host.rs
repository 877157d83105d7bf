//! Host facts (`corral host info`), storage repositories, networks and ISOs.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AcceleratorInfo {
    pub name: Accelerator,
    /// Why this accelerator: "probe: kvm guest did not boot within 5s (...)", "forced by --accel".
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostInfo {
    pub hostname: String,
    pub host_id: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub cpu_mhz: f64,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub accelerator: AcceleratorInfo,
    pub qemu_version: String,
    pub agent_version: String,
    pub state_dir: PathBuf,
    pub storage_repositories: Vec<StorageRepository>,
    pub networks: Vec<Network>,
    /// How the agent applies CPU weights: "cgroup v2 at ...", "cgroup v1 cpu.shares at ...",
    /// or why it cannot.
    pub cpu_weight_support: String,
    /// This host in the planner's capacity model (what `corral plan` and recommend-host use).
    #[serde(default)]
    pub planner: Option<crate::stats::PlannerCapacity>,
    /// Network access over HTTPS (`corral serve --listen`); absent when the agent serves its
    /// unix socket only.
    #[serde(default)]
    pub remote: Option<RemoteAccess>,
}

/// How remote clients reach this agent: TLS with a self-signed certificate pinned by its
/// SHA-256 fingerprint, and a bearer token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RemoteAccess {
    /// `ADDR:PORT` of each TLS listener.
    pub listen: Vec<String>,
    /// SHA-256 of the certificate (DER), upper-case hex pairs joined by `:`.
    pub cert_sha256: String,
    /// Where the certificate lives on the host.
    pub cert_path: PathBuf,
    /// Where the token lives on the host (readable by the agent's user only).
    pub token_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StorageRepository {
    pub name: String,
    pub path: PathBuf,
    pub shared: bool,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default)]
    pub free_bytes: Option<u64>,
    #[serde(default)]
    pub total_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// QEMU user-mode NAT: works unprivileged, guests reach out, nothing reaches in.
    User,
    /// Tap devices on an existing Linux bridge.
    Bridge,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Network {
    pub name: String,
    pub kind: NetworkKind,
    #[serde(default)]
    pub bridge: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct IsoImage {
    pub name: String,
    pub path: PathBuf,
    pub size_bytes: u64,
}
