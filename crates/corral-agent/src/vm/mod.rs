//! Per-VM operations. [`VmHandle`] is how the rest of the agent reaches a VM: a command channel
//! to its actor and the latest published snapshot of its state.

pub mod actor;
pub mod jobs;
pub mod runtime;
pub mod state;
#[cfg(test)]
mod tests;
pub mod tpm;

use crate::error::Error;
use crate::tasks::TaskHandle;
use corral_model::api::*;
use corral_model::VmInfo;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

/// Something to do to one VM.
#[derive(Debug)]
pub(crate) enum Op {
    Action(VmAction, ActionRequest),
    Update(VmUpdateRequest),
    DiskAdd(DiskRequest),
    DiskRemove(String),
    CdromInsert(PathBuf),
    CdromEject,
    NicAdd(NicRequest),
    NicRemove(String),
    Delete(VmDeleteRequest),
    /// End of an install: drop the installer boot settings, eject install media, boot from disk.
    FinishInstall {
        eject_cdrom: bool,
    },
    /// Read the counters only the actor can reach (QMP block statistics, tap names); answers
    /// `None` when the VM is not running. Changes nothing.
    Counters(oneshot::Sender<Option<RuntimeCounters>>),
    /// Hold the halted VM's disks for reading (export, copy): while the lease lives, start,
    /// delete, disk changes and clones are refused. Does not finish the caller's task.
    Lease(Arc<Lease>),
    /// Freeze the disks into read-only bases and give the VM overlays on them, for a linked
    /// clone (`crate::clone`); answers the bases. Does not finish the caller's task.
    Freeze(oneshot::Sender<Vec<crate::ops::clone::FrozenDisk>>),
    /// Make the VM a template: its disks become read-only bases.
    ConvertToTemplate,
    /// Another pool member owns the VM now: kill a QEMU that still runs here (the new
    /// owner may start it), clear this host's runtime files, end the actor. The record and
    /// the disks stay.
    Release,
}

/// What the actor reports for the stats sampler (see `crate::stats`).
#[derive(Debug, Clone, Default)]
pub struct RuntimeCounters {
    pub pid: u32,
    pub taps: Vec<String>,
    /// Summed over every block device; `None` when QMP did not answer.
    pub block: Option<crate::stats::BlockCounters>,
}

/// A read hold on a VM's disks; released when the last clone of the `Arc` is dropped.
#[derive(Debug)]
pub struct Lease {
    pub kind: state::LeaseKind,
}

/// What an actor tells the rest of the agent, one way: the actor never calls back into the
/// facade, it leaves a notice that the facade's loop acts on.
pub enum Notice {
    /// An installer started with no task watching it (a retried install): the receiver
    /// watches it under `task` and switches the VM to disk boot when it powers off.
    InstallerStarted { vm_id: String, task: TaskHandle },
}

pub(crate) struct Command {
    pub op: Op,
    pub task: TaskHandle,
    pub reply: oneshot::Sender<Result<(), Error>>,
}

#[derive(Clone)]
pub struct VmHandle {
    pub id: String,
    tx: mpsc::Sender<Command>,
    info: Arc<RwLock<VmInfo>>,
}

impl VmHandle {
    /// The latest snapshot; never waits for the actor.
    pub fn info(&self) -> VmInfo {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Hand an operation to the actor and wait for it; the actor finishes `task`.
    pub(crate) async fn call(&self, op: Op, task: TaskHandle) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        let gone = || Error::not_found("the VM was deleted");
        if self
            .tx
            .send(Command {
                op,
                task: task.clone(),
                reply,
            })
            .await
            .is_err()
        {
            let e = gone();
            task.fail(&e);
            return Err(e);
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Ask the actor for its runtime counters without recording a task.
    pub(crate) async fn counters(
        &self,
        tasks: &Arc<crate::tasks::Tasks>,
    ) -> Option<RuntimeCounters> {
        let (tx, rx) = oneshot::channel();
        self.call(Op::Counters(tx), tasks.untracked()).await.ok()?;
        rx.await.ok().flatten()
    }
}
