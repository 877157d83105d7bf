//! Intents: how creating and deleting a VM stay whole across a crash of the agent.
//!
//! A VM is files (volumes) plus a record; no step writes both at once. So before the first
//! file is touched, the host writes an intent naming the files (`hosts/<host>/intents/<vm>`):
//! - **create**: the intent is written before the volumes are made, and removed in the same
//!   transaction that writes the VM's record. Found at start with no record: the create died
//!   half-way; its volumes are removed.
//! - **delete**: the record, the name and a new intent go in one transaction; then the files
//!   are removed, then the intent. Found at start: the files are removed (again).
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
    let intent = Intent {
        op: IntentOp::Create,
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
        if host.registry().is_reserved(&i.vm_name) {
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
                notes.push(format!(
                    "removed the volumes of VM {:?}, whose create the agent's stop interrupted",
                    i.vm_name
                ));
            }
            (IntentOp::Delete, _) => {
                for p in &i.paths {
                    let _ = corral_storage::remove_volume(p).await;
                }
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
