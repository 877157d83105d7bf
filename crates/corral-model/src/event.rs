//! Events on the agent's bus, streamed to `corral events` and the web console.

use crate::task::Task;
use crate::vm::PowerState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    VmCreated {
        vm: String,
        id: String,
    },
    VmDeleted {
        vm: String,
        id: String,
    },
    VmChanged {
        vm: String,
        id: String,
    },
    PowerStateChanged {
        vm: String,
        id: String,
        from: PowerState,
        to: PowerState,
        reason: String,
    },
    TaskUpdated {
        task: Box<Task>,
    },
    /// A pool member came up, went down, joined, left or published its load (`GET
    /// /v1/hosts` has the figures).
    HostChanged {
        /// The member's name (its id when the pool does not know it yet).
        host: String,
        id: String,
    },
}

impl Event {
    /// The VM the event is about (a task's VM for task updates), for callers that may only
    /// see some VMs.
    pub fn vm_name(&self) -> Option<&str> {
        match self {
            Event::VmCreated { vm, .. }
            | Event::VmDeleted { vm, .. }
            | Event::VmChanged { vm, .. }
            | Event::PowerStateChanged { vm, .. } => Some(vm),
            Event::TaskUpdated { task } => task.vm_name.as_deref(),
            Event::HostChanged { .. } => None,
        }
    }
}

/// An event with its sequence number and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EventEnvelope {
    pub seq: u64,
    pub time_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}
