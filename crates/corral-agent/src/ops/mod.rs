//! Operations that span more than one VM action, one file each: [`create`] (new VMs),
//! [`clone`] (linked clones and their bases), [`copy`] (full copies), [`template`]
//! (templates and VMs stamped from them), [`export`] and [`import`] (over the byte plumbing of [`transfer`]),
//! [`import_image`] (a disk image converted to boot on virtio, over `corral-convert`), [`install`]
//! (installs from trees, media, PXE and images). They run on [`Ops`] — the narrow [`Host`] context, the [`QemuRuntime`] and the
//! few settings they need — never on the [`crate::Agent`] facade, which only forwards to them.
//! A VM is reached through its actor ([`crate::vm::VmHandle`]); what an operation writes to
//! the store goes through the host's records.

pub mod clone;
pub mod copy;
pub mod create;
pub mod export;
pub mod import;
pub mod import_image;
mod import_image_plan;
pub mod install;
mod install_plan;
pub mod p2v;
pub mod template;
pub mod transfer;

use crate::context::Host;
use crate::error::Error;
use crate::tasks::TaskHandle;
use crate::vm::runtime::QemuRuntime;
use crate::vm::{Op, VmHandle};
use corral_model::host::{Network, StorageRepository};
use corral_model::task::Operation;
use corral_model::{VmInfo, VmSpec};
use std::path::PathBuf;
use std::sync::Arc;

/// What operations work with.
pub struct Ops {
    pub host: Arc<Host>,
    pub runtime: Arc<QemuRuntime>,
    /// The ISO library (`--iso-dir`).
    pub iso_dir: PathBuf,
    /// The guest-tools ISO (`--tools-iso`), when configured.
    pub tools_iso: Option<PathBuf>,
    /// Open P2V sessions (`corral p2v`).
    pub p2v: p2v::P2vSessions,
}

impl Ops {
    pub fn vm(&self, name: &str) -> Result<VmHandle, Error> {
        self.host.vm(name)
    }
    pub fn list_vms(&self) -> Vec<VmInfo> {
        self.host.list_vms()
    }
    pub fn sr(&self, name: &str) -> Result<StorageRepository, Error> {
        self.host.sr(name)
    }
    pub fn list_srs(&self) -> Result<Vec<StorageRepository>, Error> {
        Ok(self.host.list_srs())
    }
    pub fn network(&self, name: &str) -> Result<Network, Error> {
        self.host.network(name)
    }

    /// Run an operation on a VM as a task and wait for it; the VM as it is after, and the
    /// task id.
    pub(crate) async fn vm_op(
        &self,
        name: &str,
        operation: Operation,
        op: Op,
    ) -> Result<(VmInfo, String), Error> {
        let (h, task) = self.vm_task(name, operation)?;
        let id = task.id.clone();
        h.call(op, task).await?;
        Ok((h.info(), id))
    }

    /// The VM named `name` and a new task of `operation` on it.
    fn vm_task(&self, name: &str, operation: Operation) -> Result<(VmHandle, TaskHandle), Error> {
        let h = self.vm(name)?;
        let info = h.info();
        let task = self
            .host
            .tasks
            .start(operation, Some((&info.id, &info.name)));
        Ok((h, task))
    }

    /// Start an operation on a VM as a task without waiting; returns the task id.
    pub(crate) fn vm_op_nowait(
        &self,
        name: &str,
        operation: Operation,
        op: Op,
    ) -> Result<String, Error> {
        let (h, task) = self.vm_task(name, operation)?;
        let id = task.id.clone();
        tokio::spawn(async move {
            let _ = h.call(op, task).await;
        });
        Ok(id)
    }

    /// See [`create::materialize_vm`].
    pub(crate) async fn materialize_vm(
        &self,
        id: String,
        spec: VmSpec,
        sources: Vec<Option<PathBuf>>,
        task: &TaskHandle,
    ) -> Result<VmHandle, Error> {
        create::materialize_vm(&self.host, &self.runtime, id, spec, sources, task).await
    }

    /// See [`create::add_vm`].
    pub(crate) async fn add_vm(&self, id: String, spec: VmSpec) -> Result<VmHandle, Error> {
        create::add_vm(&self.host, &self.runtime, id, spec).await
    }
}
