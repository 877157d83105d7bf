//! QEMU's migration monitor commands, typed: what `query-migrate` and `query-block-jobs`
//! answer, and the capabilities and parameters a corral migration sets. Pure parsing; the
//! agent's migration driver (`corral_agent::migrate`) issues the commands.

use serde::Deserialize;
use serde_json::{json, Value};

/// `query-migrate`'s `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    #[default]
    None,
    Setup,
    Cancelling,
    Cancelled,
    Active,
    PostcopyActive,
    PostcopyPaused,
    PostcopyRecover,
    Completed,
    Failed,
    Colo,
    PreSwitchover,
    Device,
    WaitUnplug,
}

impl MigrationStatus {
    /// The migration is over, one way or the other.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamStats {
    #[serde(default)]
    pub transferred: u64,
    #[serde(default)]
    pub remaining: u64,
    #[serde(default)]
    pub total: u64,
    /// Pages dirtied per second in the last iteration.
    #[serde(default)]
    pub dirty_pages_rate: u64,
    #[serde(default)]
    pub page_size: u64,
    /// Throughput of the stream in Mbit/s.
    #[serde(default)]
    pub mbps: f64,
    #[serde(default)]
    pub dirty_sync_count: u64,
}

/// `query-migrate`'s answer, the parts the agent uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    #[serde(default)]
    pub status: MigrationStatus,
    #[serde(default)]
    pub ram: Option<RamStats>,
    #[serde(default)]
    pub expected_downtime: Option<u64>,
    /// Measured by the source QEMU, when completed.
    #[serde(default)]
    pub downtime: Option<u64>,
    #[serde(default)]
    pub total_time: Option<u64>,
    #[serde(default)]
    pub cpu_throttle_percentage: Option<u64>,
    #[serde(default)]
    pub error_desc: Option<String>,
    /// On the target: where `migrate-incoming` listens (the real port when asked for 0).
    #[serde(default)]
    pub socket_address: Vec<SocketAddress>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SocketAddress {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: String,
}

impl MigrationInfo {
    pub fn parse(v: &Value) -> Result<MigrationInfo, serde_json::Error> {
        MigrationInfo::deserialize(v)
    }

    /// Bytes per second the guest dirties.
    pub fn dirty_rate(&self) -> u64 {
        self.ram
            .as_ref()
            .map(|r| r.dirty_pages_rate.saturating_mul(r.page_size.max(1)))
            .unwrap_or(0)
    }

    /// Bytes per second the stream carries.
    pub fn transfer_rate(&self) -> u64 {
        self.ram
            .as_ref()
            .map(|r| (r.mbps * 1_000_000.0 / 8.0) as u64)
            .unwrap_or(0)
    }

    /// The port `migrate-incoming` listens on.
    pub fn listening_port(&self) -> Option<u16> {
        self.socket_address
            .iter()
            .find_map(|a| a.port.parse::<u16>().ok())
    }
}

/// One entry of `query-block-jobs`.
#[derive(Debug, Clone, Deserialize)]
pub struct BlockJob {
    pub device: String,
    #[serde(default)]
    pub len: u64,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

pub fn parse_block_jobs(v: &Value) -> Result<Vec<BlockJob>, serde_json::Error> {
    Vec::<BlockJob>::deserialize(v)
}

/// The capabilities a corral migration runs with. `auto-converge` is on from the start
/// because QEMU refuses capability changes during a migration; [`neutral_throttle`] keeps
/// it from throttling until the agent's convergence policy decides to.
pub fn capabilities(postcopy: bool, pause_before_switchover: bool) -> Value {
    let caps = [
        ("events", true),
        ("auto-converge", true),
        ("postcopy-ram", postcopy),
        ("pause-before-switchover", pause_before_switchover),
    ];
    json!({
        "capabilities": caps
            .iter()
            .map(|(c, on)| json!({ "capability": c, "state": on }))
            .collect::<Vec<_>>()
    })
}

/// Throttle parameters that hold auto-converge to 1 % at most (QEMU's floor): the guest
/// runs at full speed unless the agent escalates.
pub fn neutral_throttle() -> Value {
    json!({
        "cpu-throttle-initial": 1,
        "cpu-throttle-increment": 1,
        "max-cpu-throttle": 1,
    })
}

/// Throttle parameters of the escalation step: start at 20 %, add 10 % each round up to 99 %.
pub fn escalated_throttle() -> Value {
    json!({
        "cpu-throttle-initial": 20,
        "cpu-throttle-increment": 10,
        "max-cpu-throttle": 99,
        "throttle-trigger-threshold": 50,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_migrate_answers_parse() {
        let active = json!({"status": "active", "expected-downtime": 42,
            "ram": {"total": 536_870_912u64, "remaining": 1_048_576, "transferred": 300_000_000,
                    "dirty-pages-rate": 256, "page-size": 4096, "mbps": 800.0, "dirty-sync-count": 3}});
        let i = MigrationInfo::parse(&active).unwrap();
        assert_eq!(i.status, MigrationStatus::Active);
        assert_eq!(i.dirty_rate(), 1_048_576);
        assert_eq!(i.transfer_rate(), 100_000_000);
        assert_eq!(i.expected_downtime, Some(42));
        let done = json!({"status": "completed", "downtime": 7, "total-time": 71});
        let d = MigrationInfo::parse(&done).unwrap();
        assert!(d.status.is_final());
        assert_eq!((d.downtime, d.total_time), (Some(7), Some(71)));
        let target = json!({"socket-address": [{"port": "37629", "ipv4": true, "host": "127.0.0.1", "type": "inet"}]});
        assert_eq!(
            MigrationInfo::parse(&target).unwrap().listening_port(),
            Some(37629)
        );
        let sw = json!({"status": "pre-switchover"});
        assert_eq!(
            MigrationInfo::parse(&sw).unwrap().status,
            MigrationStatus::PreSwitchover
        );
    }
}
