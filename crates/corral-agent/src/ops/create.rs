//! `vm create`: a validated spec becomes volumes, a record and a running actor.
//!
//! Flow: the facade reserves the name, [`crate::spec::spec_from_request`] turns the request
//! into a spec (nothing written yet), [`materialize_vm`] creates each volume (empty or copied
//! from an image) and then [`add_vm`] writes the record create-only and spawns the VM's actor.
//! A failure at any step removes the volumes this step made, so nothing is left half-created.

use crate::context::{encode, Host};
use crate::error::Error;
use crate::keys;
use crate::tasks::TaskHandle;
use crate::vm::runtime::Runtime;
use crate::vm::{self, VmHandle};
use corral_model::event::Event;
use corral_model::*;
use corral_store::{Expect, TxnOp};
use std::path::PathBuf;
use std::sync::Arc;

/// Create the volumes of a validated spec (`sources[i]`: image to copy into disk i), store
/// the record and start the VM's actor. The name must be reserved; on error every volume
/// created here is removed again.
pub async fn materialize_vm<R: Runtime>(
    host: &Arc<Host>,
    runtime: &Arc<R>,
    id: String,
    mut spec: VmSpec,
    sources: Vec<Option<PathBuf>>,
    task: &TaskHandle,
) -> Result<VmHandle, Error> {
    task.phase("creating disks", 0.3);
    // Before any file exists: a crash from here on is undone at the next start.
    let paths: Vec<PathBuf> = spec.disks.iter().map(|d| d.path.clone()).collect();
    crate::intents::begin_create(host, &id, &spec.name, paths).await?;
    let mut created: Vec<PathBuf> = Vec::new();
    for (i, disk) in spec.disks.iter_mut().enumerate() {
        if let Some(phase) = sources.get(i).and_then(|s| s.as_ref()) {
            task.phase(&format!("importing {}", phase.display()), 0.3);
        }
        if let Err(e) = create_disk_volume(disk, sources.get(i).cloned().flatten()).await {
            remove_volumes(&created).await;
            crate::intents::finish(host, &id).await;
            return Err(e);
        }
        created.push(disk.path.clone());
    }
    match add_vm(host, runtime, id.clone(), spec).await {
        Ok(handle) => Ok(handle),
        // Whether the record exists is unknown: the intent stays, and the pool's reconcile
        // pass (or the next start) adopts the VM or removes its volumes.
        Err(e) if e.kind == ErrorKind::Unavailable => Err(e),
        Err(e) => {
            remove_volumes(&created).await;
            crate::intents::finish(host, &id).await;
            Err(e)
        }
    }
}

/// Whether a record was written after a write whose answer was lost: `Some(Some(rev))`
/// written, `Some(None)` not, `None` the store still does not answer (about 5 s).
async fn settle(host: &Host, key: &str) -> Option<Option<u64>> {
    for _ in 0..10 {
        match host.records.store().get(key).await {
            Ok(v) => return Some(v.map(|v| v.mod_revision)),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
    None
}

async fn remove_volumes(paths: &[PathBuf]) {
    for p in paths {
        let _ = corral_storage::remove_volume(p).await;
    }
}

/// Record a new, halted VM on this host (its volumes exist), start its actor and announce
/// it. The name must be reserved by the caller.
pub async fn add_vm<R: Runtime>(
    host: &Arc<Host>,
    runtime: &Arc<R>,
    id: String,
    spec: VmSpec,
) -> Result<VmHandle, Error> {
    let rec = VmRecord {
        id: id.clone(),
        host: host.host_id.clone(),
        spec,
        power_state: PowerState::Halted,
        created_at_ms: crate::now_ms(),
        ha: Default::default(),
    };
    // The record and its name in one transaction: a name taken anywhere in the pool fails
    // the whole create.
    let key = keys::vm(&id);
    let written = host
        .records
        .txn(vec![
            TxnOp::put(key.clone(), encode("vm", &rec)?, Expect::Absent),
            TxnOp::put(keys::vm_name(&rec.spec.name), id.as_bytes(), Expect::Absent),
            // A create's intent (if any) ends with the record.
            crate::intents::clear(host, &id),
        ])
        .await;
    let rev = match written {
        Ok(rev) => rev,
        Err(e) if e.kind == ErrorKind::Conflict => return Err(Host::exists_as(e, "VM", &rec.spec.name)),
        // The store did not answer: the write may have happened. Ask until it answers.
        Err(e) => match settle(host, &key).await {
            Some(Some(rev)) => rev,
            Some(None) => return Err(e),
            None => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the state store did not answer, so whether VM {:?} was created is unknown; this host finishes or undoes it once the store answers",
                        rec.spec.name
                    ),
                ))
            }
        },
    };
    let name = rec.spec.name.clone();
    let handle = vm::actor::spawn(host.clone(), runtime.clone(), rec, rev).await;
    host.registry_mut().insert(&name, handle.clone());
    host.events.publish(Event::VmCreated { vm: name, id });
    Ok(handle)
}

/// Create the volume of a new disk, empty or as a copy of `source`; records the final size.
pub async fn create_disk_volume(disk: &mut Disk, source: Option<PathBuf>) -> Result<(), Error> {
    match source {
        Some(src) => {
            let size =
                corral_storage::import_volume(&src, &disk.path, disk.format, disk.size_bytes)
                    .await
                    .map_err(|e| {
                        Error::caused(
                            ErrorKind::InvalidInput,
                            format!("cannot import {} as disk {}", src.display(), disk.device),
                            e,
                        )
                    })?;
            disk.size_bytes = size;
            Ok(())
        }
        None => corral_storage::create_volume(&disk.path, disk.format, disk.size_bytes, None)
            .await
            .map_err(|e| {
                Error::caused(
                    ErrorKind::Internal,
                    format!("cannot create disk {}", disk.device),
                    e,
                )
            }),
    }
}
