//! Tasks: every operation the agent performs on behalf of a user is a task with an id, a phase,
//! progress, and a result; finished tasks are the history (`vm history`, `task list`).

use crate::error::ApiError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_finished(self) -> bool {
        !matches!(self, TaskState::Running)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

/// What a task does. On the wire a task's `operation` is the dotted name (`vm.start`), so
/// clients and older records keep reading it as a string; inside the agent it is this enum,
/// which also says which operations can be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    AgentStart,
    VmCreate,
    VmStart,
    VmAutostart,
    VmShutdown,
    VmPoweroff,
    VmReboot,
    VmPause,
    VmResume,
    VmUpdate,
    VmDelete,
    VmDiskAdd,
    VmDiskRemove,
    VmCdromInsert,
    VmCdromEject,
    VmToolsInsert,
    VmNicAdd,
    VmNicRemove,
    VmInstall,
    VmFinishInstall,
    VmImport,
    VmExport,
    VmClone,
    VmCopy,
    VmConvertToTemplate,
    VmReattach,
    VmRecover,
    SrCreate,
    NetworkCreate,
    /// A pool member restarting an HA VM of a host that went down.
    VmHaRestart,
    /// A VM given to another pool member (`vm start --on`, `host evacuate`).
    VmMove,
    HostEvacuate,
    HostForget,
    /// A running VM moved to another pool member with its memory (and, with storage, disks).
    VmMigrate,
}

impl Operation {
    pub const ALL: &'static [Operation] = &[
        Operation::AgentStart,
        Operation::VmCreate,
        Operation::VmStart,
        Operation::VmAutostart,
        Operation::VmShutdown,
        Operation::VmPoweroff,
        Operation::VmReboot,
        Operation::VmPause,
        Operation::VmResume,
        Operation::VmUpdate,
        Operation::VmDelete,
        Operation::VmDiskAdd,
        Operation::VmDiskRemove,
        Operation::VmCdromInsert,
        Operation::VmCdromEject,
        Operation::VmToolsInsert,
        Operation::VmNicAdd,
        Operation::VmNicRemove,
        Operation::VmInstall,
        Operation::VmFinishInstall,
        Operation::VmImport,
        Operation::VmExport,
        Operation::VmClone,
        Operation::VmCopy,
        Operation::VmConvertToTemplate,
        Operation::VmReattach,
        Operation::VmRecover,
        Operation::SrCreate,
        Operation::NetworkCreate,
        Operation::VmHaRestart,
        Operation::VmMove,
        Operation::HostEvacuate,
        Operation::HostForget,
        Operation::VmMigrate,
    ];

    /// The dotted name tasks carry on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::AgentStart => "agent.start",
            Operation::VmCreate => "vm.create",
            Operation::VmStart => "vm.start",
            Operation::VmAutostart => "vm.autostart",
            Operation::VmShutdown => "vm.shutdown",
            Operation::VmPoweroff => "vm.poweroff",
            Operation::VmReboot => "vm.reboot",
            Operation::VmPause => "vm.pause",
            Operation::VmResume => "vm.resume",
            Operation::VmUpdate => "vm.update",
            Operation::VmDelete => "vm.delete",
            Operation::VmDiskAdd => "vm.disk.add",
            Operation::VmDiskRemove => "vm.disk.remove",
            Operation::VmCdromInsert => "vm.cdrom.insert",
            Operation::VmCdromEject => "vm.cdrom.eject",
            Operation::VmToolsInsert => "vm.tools.insert",
            Operation::VmNicAdd => "vm.nic.add",
            Operation::VmNicRemove => "vm.nic.remove",
            Operation::VmInstall => "vm.install",
            Operation::VmFinishInstall => "vm.finish-install",
            Operation::VmImport => "vm.import",
            Operation::VmExport => "vm.export",
            Operation::VmClone => "vm.clone",
            Operation::VmCopy => "vm.copy",
            Operation::VmConvertToTemplate => "vm.convert_to_template",
            Operation::VmReattach => "vm.reattach",
            Operation::VmRecover => "vm.recover",
            Operation::SrCreate => "sr.create",
            Operation::NetworkCreate => "network.create",
            Operation::VmHaRestart => "vm.ha_restart",
            Operation::VmMove => "vm.move",
            Operation::HostEvacuate => "host.evacuate",
            Operation::HostForget => "host.forget",
            Operation::VmMigrate => "vm.migrate",
        }
    }

    /// The operation a task's dotted name stands for.
    pub fn parse(s: &str) -> Option<Operation> {
        Operation::ALL.iter().copied().find(|o| o.as_str() == s)
    }

    /// Whether a running task of this operation stops when cancelled: copies, installs and
    /// transfers stop and clean up; a shutdown stops waiting for the guest (which keeps
    /// running). Cancelling anything else is refused rather than silently ignored.
    pub fn cancellable(self) -> bool {
        matches!(
            self,
            Operation::VmCopy
                | Operation::VmInstall
                | Operation::VmImport
                | Operation::VmExport
                | Operation::VmShutdown
                | Operation::VmMigrate
        )
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Task {
    pub id: String,
    /// VM id and name the task acts on, if any.
    #[serde(default)]
    pub vm_id: Option<String>,
    #[serde(default)]
    pub vm_name: Option<String>,
    /// `vm.create`, `vm.start`, `agent.restart`, ...
    pub operation: String,
    pub state: TaskState,
    /// Human phase: "creating disks", "booting", ...
    pub phase: String,
    /// 0.0 ..= 1.0
    pub progress: f64,
    #[serde(default)]
    pub bytes_done: Option<u64>,
    #[serde(default)]
    pub bytes_total: Option<u64>,
    pub started_at_ms: u64,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// Free-form note on success (e.g. "guest died while the agent was down").
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub error: Option<ApiError>,
    /// What the task changed, one line each, in order (a V2V import lists every change it
    /// made to the guest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// A live migration's convergence figures (rates, expected and measured downtime),
    /// at the task's top level beside `bytes_done`.
    #[serde(flatten)]
    pub migration: crate::migrate::MigrationFigures,
}

#[cfg(test)]
mod operation_tests {
    use super::Operation;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for op in Operation::ALL {
            assert!(seen.insert(op.as_str()), "duplicate {op}");
            assert_eq!(Operation::parse(op.as_str()), Some(*op));
        }
        assert_eq!(Operation::parse("vm.nonsense"), None);
        assert!(Operation::VmExport.cancellable());
        assert!(!Operation::VmStart.cancellable());
    }
}
