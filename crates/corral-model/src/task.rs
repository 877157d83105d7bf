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
}
