//! Live migration between pool members: what a user asks (`vm migrate`), what the pre-checks
//! answer, and the messages the two agents exchange over the pool's mutual-TLS channel
//! (`/v1/pool/migrations/...`, members only). The migration stream itself runs between the
//! two QEMU processes; these messages only set it up, keep it alive and end it.

use serde::{Deserialize, Serialize};

/// Lowest and highest downtime a user may allow (`--max-downtime`).
pub const MIN_DOWNTIME_MS: u64 = 10;
pub const MAX_DOWNTIME_MS: u64 = 60_000;
/// The downtime limit a migration starts with: short enough that a converging guest pauses
/// for no more than about this long; escalation raises it up to `max_downtime_ms`.
pub const DEFAULT_START_DOWNTIME_MS: u64 = 50;
/// The ceiling escalation may raise the downtime limit to when the user gave none.
pub const DEFAULT_MAX_DOWNTIME_MS: u64 = 300;
/// How long a migration may run before it is cancelled with the figures that show why.
pub const DEFAULT_DEADLINE_SECS: u64 = 600;

/// `POST /v1/vms/{name}/migrate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// A member's name, or `auto` for the one the planner rates best.
    pub to: String,
    /// Mirror every disk to a new volume on the target (for disks the target cannot see).
    #[serde(default)]
    pub with_storage: bool,
    /// The repository on the target that receives mirrored disks (default: its `default`).
    #[serde(default)]
    pub target_sr: Option<String>,
    /// The longest pause of the guest escalation may allow, in ms.
    #[serde(default)]
    pub max_downtime_ms: Option<u64>,
    /// Bandwidth limit of the migration stream, bytes per second.
    #[serde(default)]
    pub bandwidth_bytes_per_s: Option<u64>,
    /// Allow post-copy as the last escalation step.
    #[serde(default)]
    pub postcopy: bool,
    /// Give up (and keep the VM on its host) after this many seconds.
    #[serde(default)]
    pub deadline_secs: Option<u64>,
    /// Send the migration stream in clear (trusted networks only).
    #[serde(default)]
    pub insecure_stream: bool,
    /// Run the pre-checks only.
    #[serde(default)]
    pub check: bool,
}

/// One pre-check and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PreCheck {
    /// `target-up`, `memory`, `machine`, `cpu`, `networks`, `storage`, `cdrom`, ...
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What `vm migrate` answers: the pre-checks, and the task when it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MigrateAnswer {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// `live`, `move` (a halted VM changes owner), or `check` (nothing moved).
    pub mode: String,
    pub checks: Vec<PreCheck>,
    #[serde(default)]
    pub task: Option<String>,
}

impl MigrateAnswer {
    /// The failed checks as one sentence, for an error message.
    pub fn refusals(&self) -> Option<String> {
        failed_checks(&self.checks)
    }
}

/// The failed checks as one sentence (`name: detail; ...`), or `None` when all passed.
pub fn failed_checks(checks: &[PreCheck]) -> Option<String> {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// What the source's QEMU is, so the target can check it can receive its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceQemu {
    /// `7.2.22`.
    pub version: String,
    /// The versioned machine type behind `q35` on the source (`pc-q35-7.2`).
    pub machine: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// The `-cpu` model the guest runs with.
    pub cpu: String,
}

/// Source to target: get ready to receive (or only check) this VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncomingRequest {
    pub migration_id: String,
    pub source_host_id: String,
    pub record: crate::VmRecord,
    pub source: SourceQemu,
    pub with_storage: bool,
    pub target_sr: Option<String>,
    pub tls: bool,
    /// The target's QEMU needs post-copy enabled too.
    pub postcopy: bool,
    /// A UEFI guest's variable store, hex: the target's QEMU opens its own copy of it.
    #[serde(default)]
    pub nvram_hex: Option<String>,
    pub check: bool,
}

/// Target to source: where to send the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncomingAnswer {
    pub checks: Vec<PreCheck>,
    /// The address QEMU listens on for the migration stream (`IP`), and its port.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub migration_port: Option<u16>,
    /// With storage: the target's QEMU exports the new disks over NBD (named after the
    /// devices), reached through the member stream `GET /v1/pool/migrations/{id}/nbd`.
    #[serde(default)]
    pub nbd: bool,
    /// With storage and `--insecure-stream`: the TCP port on `host` where the target's QEMU
    /// serves those exports itself, plain, for the source's agent to connect to directly.
    #[serde(default)]
    pub nbd_port: Option<u16>,
    /// With storage: device -> the new volume's path on the target.
    #[serde(default)]
    pub volumes: Vec<(String, std::path::PathBuf)>,
    /// The TLS server name the target's QEMU presents.
    #[serde(default)]
    pub tls_hostname: Option<String>,
}

impl IncomingAnswer {
    /// An answer that carries only the checks (a check, or a refusal).
    pub fn checks_only(checks: Vec<PreCheck>) -> Self {
        IncomingAnswer {
            checks,
            host: None,
            migration_port: None,
            nbd: false,
            nbd_port: None,
            volumes: Vec::new(),
            tls_hostname: None,
        }
    }
}

/// Target's view of one incoming migration (answer to heartbeats and status queries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncomingState {
    /// QEMU waits for or receives the state.
    Receiving,
    /// The guest runs on the target and the target holds it for the ownership flip.
    Committed,
    /// The target knows nothing of it (aborted, or cleaned up after a restart).
    Unknown,
}

/// Convergence figures a migration task carries while it runs and after.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MigrationFigures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_rate_bytes_per_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_rate_bytes_per_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_downtime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_limit_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_percent: Option<u64>,
    /// As QEMU measured them, when the migration completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// Bytes of the memory stream QEMU sent (pages sent again after being dirtied count
    /// again; zero pages cost a few bytes each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes_sent: Option<u64>,
    /// Bytes of disk the mirror went through, zeros included (with storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Escalation steps taken, each with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalations: Vec<String>,
}

impl MigrationFigures {
    pub fn is_empty(&self) -> bool {
        *self == MigrationFigures::default()
    }
}
