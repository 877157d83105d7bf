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
    /// Start a live migration (see `crate::migrate`): the job runs off the actor's loop and
    /// ends with [`Op::MigrateEnd`]. Does not finish the caller's task.
    Migrate {
        plan: Box<crate::migrate::Plan>,
        handle: VmHandle,
    },
    /// The migration driver's outcome: hand the VM over to the target, or keep it here.
    MigrateEnd(Box<Result<crate::migrate::Completed, Error>>),
    /// After an agent restart with a migration marker: cancel whatever migration QEMU still
    /// runs and answer QEMU's run state (`running`, `postmigrate`, ...).
    StopMigration(oneshot::Sender<Option<String>>),
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

/// What an actor publishes after every change: the VM as lists and shows answer it, and the
/// same already encoded as JSON, so a `vm list` of thousands of VMs copies bytes instead of
/// cloning and encoding every VM again.
pub struct Snapshot {
    pub info: VmInfo,
    pub json: bytes::Bytes,
}

impl Snapshot {
    pub fn new(info: VmInfo) -> Self {
        let json = serde_json::to_vec(&info)
            .map(bytes::Bytes::from)
            .unwrap_or_default();
        Snapshot { info, json }
    }
}

#[derive(Clone)]
pub struct VmHandle {
    pub id: String,
    tx: mpsc::Sender<Command>,
    snapshot: Arc<RwLock<Snapshot>>,
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle").field("id", &self.id).finish()
    }
}

impl VmHandle {
    /// The latest snapshot; never waits for the actor.
    pub fn info(&self) -> VmInfo {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .info
            .clone()
    }

    /// The VM's name and its snapshot as JSON (a reference-counted copy).
    pub fn listing(&self) -> (String, bytes::Bytes) {
        let s = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        (s.info.name.clone(), s.json.clone())
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

    /// Start a live migration reporting to `task` (which the actor finishes when it ends).
    pub(crate) async fn migrate(
        &self,
        plan: crate::migrate::Plan,
        task: TaskHandle,
    ) -> Result<(), Error> {
        self.call(
            Op::Migrate {
                plan: Box::new(plan),
                handle: self.clone(),
            },
            task,
        )
        .await
    }

    /// See [`Op::StopMigration`].
    pub(crate) async fn stop_migration(&self, tasks: &Arc<crate::tasks::Tasks>) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.call(Op::StopMigration(tx), tasks.untracked())
            .await
            .ok()?;
        rx.await.ok().flatten()
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
