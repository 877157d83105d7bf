//! Every store key the agent uses, and the upgrade of older layouts.
//!
//! Layout (schema 2): what the pool shares is global — `vms/<uuid>` (a VM record names its
//! owning host) and `vm-names/<name>` (the name index: the VM's id, created and deleted in
//! the same transaction as the record, so a name is unique across the pool). What belongs to
//! one host is under `hosts/<host-id>/`: its repositories (`srs/<name>`), networks
//! (`networks/<name>`), task history (`tasks/<uuid>`) and VM statistics (`stats/<vm-uuid>`).
//! `meta/schema` holds the layout's version. The host's own id is not in the store (a shared
//! store has many hosts): it lives in `STATE_DIR/host-id`.
//!
//! Schema 1 (before pools) had `host/id` and unscoped `srs/`, `networks/`, `tasks/`,
//! `stats/`. [`upgrade`] moves such a state in one transaction at start.

use crate::context::store_error;
use crate::error::Error;
use corral_store::{Expect, Store, TxnOp};
use std::path::Path;

pub const SCHEMA_KEY: &str = "meta/schema";
pub const SCHEMA: u32 = 2;
pub const VMS: &str = "vms/";

/// The pool: `pool/info` (name, CA, sealed CA key, token check), `pool/hosts/<id>` (what
/// a member publishes), `pool/members/<id>` (leased: present while the member is up),
/// `pool/host-names/<name>` (the name index), `pool/srs/<name>` (shared repositories).
pub const POOL: &str = "pool/";
pub const POOL_INFO: &str = "pool/info";
pub const POOL_HOSTS: &str = "pool/hosts/";
pub const POOL_MEMBERS: &str = "pool/members/";
pub const POOL_HOST_NAMES: &str = "pool/host-names/";
pub const POOL_SRS: &str = "pool/srs/";
pub fn pool_host(id: &str) -> String {
    format!("{POOL_HOSTS}{id}")
}
pub fn pool_member(id: &str) -> String {
    format!("{POOL_MEMBERS}{id}")
}
pub fn pool_host_name(name: &str) -> String {
    format!("{POOL_HOST_NAMES}{name}")
}
pub fn pool_sr(name: &str) -> String {
    format!("{POOL_SRS}{name}")
}

/// API tokens, pool-wide: `auth/tokens/<name>` (see [`crate::auth`]).
pub const TOKENS: &str = "auth/tokens/";
pub fn token(name: &str) -> String {
    format!("{TOKENS}{name}")
}
/// The audit log, pool-wide: `audit/<time_ms, 16 digits>-<uuid>`, so keys sort by time.
pub const AUDIT: &str = "audit/";
pub fn audit(time_ms: u64, unique: &str) -> String {
    format!("{AUDIT}{time_ms:016}-{unique}")
}

pub fn vm(id: &str) -> String {
    format!("vms/{id}")
}
pub fn vm_name(name: &str) -> String {
    format!("vm-names/{name}")
}
fn host(host_id: &str) -> String {
    format!("hosts/{host_id}/")
}
pub fn srs(host_id: &str) -> String {
    format!("{}srs/", host(host_id))
}
pub fn sr(host_id: &str, name: &str) -> String {
    format!("{}{name}", srs(host_id))
}
pub fn networks(host_id: &str) -> String {
    format!("{}networks/", host(host_id))
}
pub fn network(host_id: &str, name: &str) -> String {
    format!("{}{name}", networks(host_id))
}
pub fn tasks(host_id: &str) -> String {
    format!("{}tasks/", host(host_id))
}
/// Creates and deletes in progress (see [`crate::intents`]).
pub fn intents(host_id: &str) -> String {
    format!("{}intents/", host(host_id))
}
pub fn stats(host_id: &str) -> String {
    format!("{}stats/", host(host_id))
}

/// Schema-1 keys, only read by the upgrade.
const LEGACY_HOST_ID: &str = "host/id";
const LEGACY_SCOPED: [&str; 4] = ["srs/", "networks/", "tasks/", "stats/"];

/// This host's id: `STATE_DIR/host-id`; else the id a schema-1 store holds (so an upgraded
/// host keeps its identity and its VMs stay its own); else a new one. Written to the file.
pub async fn host_id(state_dir: &Path, store: &dyn Store) -> Result<String, Error> {
    let file = state_dir.join("host-id");
    if let Ok(text) = std::fs::read_to_string(&file) {
        let id = text.trim();
        if uuid::Uuid::parse_str(id).is_ok() {
            return Ok(id.to_string());
        }
        return Err(Error::internal(format!(
            "{} does not hold a host id (a UUID); remove it to make a new one",
            file.display()
        )));
    }
    let id = match store.get(LEGACY_HOST_ID).await.map_err(store_error)? {
        Some(v) => String::from_utf8_lossy(&v.value).trim().to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let tmp = state_dir.join("host-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|_| std::fs::rename(&tmp, &file))
        .map_err(|e| {
            Error::caused(
                corral_model::ErrorKind::Internal,
                format!("cannot write {}", file.display()),
                e,
            )
        })?;
    Ok(id)
}

/// What [`upgrade`] did, for the agent's start note.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upgrade {
    pub from: u32,
    pub moved: usize,
    pub names: usize,
}

/// Bring the store to [`SCHEMA`] in one transaction (nothing changes if it fails). A store
/// newer than this agent is refused rather than misread.
pub async fn upgrade(store: &dyn Store, host_id: &str) -> Result<Option<Upgrade>, Error> {
    let current = match store.get(SCHEMA_KEY).await.map_err(store_error)? {
        Some(v) => String::from_utf8_lossy(&v.value)
            .trim()
            .parse::<u32>()
            .map_err(|_| Error::internal("the state's schema version is unreadable"))?,
        None => 1,
    };
    if current == SCHEMA {
        return Ok(None);
    }
    if current > SCHEMA {
        return Err(Error::new(
            corral_model::ErrorKind::Unsupported,
            format!(
                "the state was written by a newer corral (schema {current}; this agent knows {SCHEMA})"
            ),
        ));
    }
    let mut ops = Vec::new();
    let mut report = Upgrade {
        from: current,
        ..Upgrade::default()
    };
    for prefix in LEGACY_SCOPED {
        for (key, v) in store.list(prefix).await.map_err(store_error)? {
            let new_key = format!("hosts/{host_id}/{key}");
            ops.push(TxnOp::put(new_key, v.value, Expect::Absent));
            ops.push(TxnOp::delete(key, Expect::Revision(v.mod_revision)));
            report.moved += 1;
        }
    }
    for (key, v) in store.list(VMS).await.map_err(store_error)? {
        let Ok(rec) = serde_json::from_slice::<corral_model::VmRecord>(&v.value) else {
            continue;
        };
        let id = key.trim_start_matches(VMS);
        ops.push(TxnOp::put(vm_name(&rec.spec.name), id, Expect::Absent));
        report.names += 1;
    }
    ops.push(TxnOp::delete(LEGACY_HOST_ID, Expect::Any));
    ops.push(TxnOp::put(
        SCHEMA_KEY,
        SCHEMA.to_string().into_bytes(),
        Expect::Any,
    ));
    store.txn(ops).await.map_err(|e| {
        Error::caused(
            corral_model::ErrorKind::Internal,
            format!("cannot upgrade the state to schema {SCHEMA}"),
            e,
        )
    })?;
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_store::MemoryStore;

    #[tokio::test]
    async fn a_schema_1_store_moves_under_its_host_in_one_step() {
        let s = MemoryStore::new();
        s.put(LEGACY_HOST_ID, b"h1", Expect::Any).await.unwrap();
        s.put("srs/default", b"{}", Expect::Any).await.unwrap();
        s.put("tasks/t1", b"{}", Expect::Any).await.unwrap();
        let rec = serde_json::json!({"id": "v1", "host": "h1", "spec": {"name": "web01", "vcpus": 1, "memory_bytes": 1073741824}, "power_state": "halted"});
        s.put("vms/v1", rec.to_string().as_bytes(), Expect::Any)
            .await
            .unwrap();
        let r = upgrade(&s, "h1").await.unwrap().unwrap();
        assert_eq!((r.from, r.moved), (1, 2));
        assert!(s.get("srs/default").await.unwrap().is_none());
        assert!(s.get("hosts/h1/srs/default").await.unwrap().is_some());
        assert!(s.get("hosts/h1/tasks/t1").await.unwrap().is_some());
        assert!(s.get(LEGACY_HOST_ID).await.unwrap().is_none());
        assert_eq!(upgrade(&s, "h1").await.unwrap(), None, "idempotent");
        s.put(SCHEMA_KEY, b"9", Expect::Any).await.unwrap();
        assert_eq!(
            upgrade(&s, "h1").await.unwrap_err().kind,
            corral_model::ErrorKind::Unsupported
        );
    }
}
