//! Intents: how creating and deleting a VM stay whole across a crash of the agent.
//!
//! A VM is files (volumes) plus a record; no step writes both at once. So before the first
//! file is touched, the host writes an intent naming the files (`hosts/<host>/intents/<vm>`):
//! - **create**: the intent is written before the volumes are made, and removed in the same
//!   transaction that writes the VM's record. Found at start with no record: the create died
//!   half-way; its volumes are removed.
//!   Creates, copies, clones and installs all write it. Since a new VM's id is a fresh UUID
//!   and every file it gets is named by it (`SR/<id>-disk0.qcow2`, `SR/<id>-kernel`,
//!   `run/<id>`, `tpm/<id>`, `seeds/<id>.iso`), the undo also sweeps every file so named, not
//!   only the paths the intent listed (a copy makes boot files and TPM state the intent could
//!   not know in advance).
//! - **delete**: the record, the name and a new intent go in one transaction; then the files
//!   are removed, then the intent. Found at start: the files and the VM's per-VM state
//!   (`run/`, `tpm/`, `seeds/`, `install/`, `nvram/`) are removed (again).
//! - **disk add**: written before the new volume is made, removed after the record names it.
//!   Found at start: the volume is kept if the record names it, else removed.
//!
//! So after any crash a VM exists whole (record and volumes) or not at all, and no volume
//! is left without a VM. [`recover`] runs at every agent start, before VMs are loaded.

use crate::context::{encode, Host};
use crate::error::Error;
use crate::keys;
use corral_store::{Expect, TxnOp};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentOp {
    Create,
    Delete,
    DiskAdd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub op: IntentOp,
    pub vm_id: String,
    pub vm_name: String,
    /// Files that belong to the VM while the operation runs (volumes).
    pub paths: Vec<PathBuf>,
    pub at_ms: u64,
}

pub fn key(host: &Host, vm_id: &str) -> String {
    format!("{}{vm_id}", keys::intents(&host.host_id))
}

/// Record that a create of `vm_id` is about to make `paths`.
pub async fn begin_create(
    host: &Host,
    vm_id: &str,
    vm_name: &str,
    paths: Vec<PathBuf>,
) -> Result<(), Error> {
    begin(host, IntentOp::Create, vm_id, vm_name, paths).await
}

/// Record that VM `vm_id` (recorded, its actor running) is about to make the volume of a new
/// disk at `path`.
pub async fn begin_disk_add(
    host: &Host,
    vm_id: &str,
    vm_name: &str,
    path: PathBuf,
) -> Result<(), Error> {
    begin(host, IntentOp::DiskAdd, vm_id, vm_name, vec![path]).await
}

async fn begin(
    host: &Host,
    op: IntentOp,
    vm_id: &str,
    vm_name: &str,
    paths: Vec<PathBuf>,
) -> Result<(), Error> {
    let intent = Intent {
        op,
        vm_id: vm_id.to_string(),
        vm_name: vm_name.to_string(),
        paths,
        at_ms: crate::now_ms(),
    };
    host.records
        .put_json(&key(host, vm_id), &intent, Expect::Any)
        .await
        .map(|_| ())
}

/// The step of a transaction that says a create or delete is over.
pub fn clear(host: &Host, vm_id: &str) -> TxnOp {
    TxnOp::delete(key(host, vm_id), Expect::Any)
}

/// The step of the delete transaction that remembers the files still to remove.
pub fn delete_step(
    host: &Host,
    vm_id: &str,
    vm_name: &str,
    paths: Vec<PathBuf>,
) -> Result<TxnOp, Error> {
    let k = key(host, vm_id);
    let intent = Intent {
        op: IntentOp::Delete,
        vm_id: vm_id.to_string(),
        vm_name: vm_name.to_string(),
        paths,
        at_ms: crate::now_ms(),
    };
    Ok(TxnOp::put(k.clone(), encode(&k, &intent)?, Expect::Any))
}

/// Forget an intent whose operation ended (best effort: a leftover is redone at start).
pub async fn finish(host: &Host, vm_id: &str) {
    let _ = host.records.delete(&key(host, vm_id), Expect::Any).await;
}

/// Finish what a crash interrupted; answers one note per intent found. At start every
/// intent is stale; later (the pool's reconcile pass) those of operations still running
/// here (their VM name reserved) are left alone.
pub async fn recover(host: &Host) -> Result<Vec<String>, Error> {
    let intents: Vec<Intent> = host
        .records
        .list_json(&keys::intents(&host.host_id), "intent")
        .await?;
    let mut notes = Vec::new();
    for i in intents {
        // An operation still under way on this host (only in the pool's reconcile pass: at
        // start nothing is reserved or loaded yet).
        let live = match i.op {
            IntentOp::Create => host.registry().is_reserved(&i.vm_name),
            IntentOp::DiskAdd => host.registry().by_id.contains_key(&i.vm_id),
            IntentOp::Delete => false,
        };
        if live {
            continue;
        }
        let record = host
            .records
            .store()
            .get(&keys::vm(&i.vm_id))
            .await
            .map_err(crate::context::store_error)?;
        match (i.op, record) {
            // The create finished but its intent's removal was not seen: nothing to undo.
            (IntentOp::Create, Some(_)) => {}
            (IntentOp::Create, None) => {
                for p in &i.paths {
                    let _ = corral_storage::remove_volume(p).await;
                }
                remove_named_files(host, &i.vm_id);
                remove_vm_state(host, &i.vm_id);
                notes.push(format!(
                    "removed the volumes of VM {:?}, whose create the agent's stop interrupted",
                    i.vm_name
                ));
            }
            (IntentOp::DiskAdd, record) => {
                let named: Vec<PathBuf> = record
                    .and_then(|r| serde_json::from_slice::<corral_model::VmRecord>(&r.value).ok())
                    .map(|r| r.spec.disks.into_iter().map(|d| d.path).collect())
                    .unwrap_or_default();
                for p in i.paths.iter().filter(|p| !named.contains(p)) {
                    let _ = corral_storage::remove_volume(p).await;
                    notes.push(format!(
                        "removed the volume {} of a disk add to VM {:?} that the agent's stop interrupted",
                        p.display(),
                        i.vm_name
                    ));
                }
            }
            (IntentOp::Delete, _) => {
                for p in &i.paths {
                    let _ = corral_storage::remove_volume(p).await;
                }
                remove_vm_state(host, &i.vm_id);
                notes.push(format!(
                    "finished deleting the volumes of VM {:?}",
                    i.vm_name
                ));
            }
        }
        finish(host, &i.vm_id).await;
    }
    Ok(notes)
}

/// Remove every file in this host's repositories (and their `bases/`) whose name starts with
/// `<vm_id>-`: a VM's id is a fresh UUID, so only that VM's volumes and boot files match.
fn remove_named_files(host: &Host, vm_id: &str) {
    let prefix = format!("{vm_id}-");
    for sr in host.list_srs() {
        for dir in [sr.path.clone(), sr.path.join(crate::ops::clone::BASES_DIR)] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let owned = e.file_name().to_string_lossy().starts_with(&prefix);
                if owned && e.path().is_file() {
                    match std::fs::remove_file(e.path()) {
                        Ok(()) => {
                            tracing::info!(path = %e.path().display(), "removed a file of an interrupted create")
                        }
                        Err(err) => {
                            tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a file of an interrupted create")
                        }
                    }
                }
            }
        }
    }
}

/// Remove a VM's per-VM state outside the repositories: its run directory (sockets, pid file,
/// console log), installer scratch files, cloud-init seed, UEFI variables and TPM state.
fn remove_vm_state(host: &Host, vm_id: &str) {
    let layout = &host.layout;
    let _ = std::fs::remove_dir_all(layout.run_dir(vm_id));
    let _ = std::fs::remove_dir_all(layout.install_dir(vm_id));
    let seed = layout.seed_iso(vm_id);
    let _ = std::fs::remove_file(&seed);
    // A seed being written when the agent died (`corral_install::seed` names it `.<seed>-*`).
    if let (Some(dir), Some(name)) = (seed.parent(), seed.file_name()) {
        let partial = format!(".{}-", name.to_string_lossy());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&partial) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_file(layout.nvram(vm_id));
    let _ = std::fs::remove_file(layout.root.join("nvram").join(format!("{vm_id}-secure.fd")));
    let _ = std::fs::remove_dir_all(crate::vmfiles::tpm_dir(layout, vm_id));
}
