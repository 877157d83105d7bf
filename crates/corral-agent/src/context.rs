//! [`Host`]: the narrow context that VM actors and operations share, instead of the whole
//! [`crate::Agent`]. It holds the host's records (store), the event bus, the task registry,
//! the state directory layout, the VM registry (names, ids, handles) and the template
//! catalogue, and answers the host facts the spec step checks requests against
//! ([`crate::spec::HostFacts`]). It knows nothing of QEMU: launching and re-attaching
//! processes is the [`crate::vm::runtime::Runtime`]'s job, and the accelerator probe, stats
//! sampler and configuration stay in the facade.
//!
//! Flow: the facade builds one `Host` at start and hands an `Arc<Host>` to every actor and
//! operation; they read and write records through [`Records`], publish events, report tasks.

use crate::config::Layout;
use crate::error::Error;
use crate::events::EventBus;
use crate::keys;
use crate::network::{self, DEFAULT_NETWORK};
use crate::registry::Registry;
use crate::tasks::Tasks;
use crate::templates::Templates;
use crate::vm::{Notice, VmHandle};
use corral_model::host::{Network, StorageRepository};
use corral_model::{ErrorKind, VmInfo};
use corral_store::{Expect, Store, StoreError, TxnOp};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::mpsc;

/// JSON records in the store, with errors mapped to API kinds once.
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
}

/// A store failure as the API reports it: a write that lost a compare-and-swap is a
/// `conflict`; anything else is `internal` with the store's own chain.
pub(crate) fn store_error(e: StoreError) -> Error {
    match e {
        StoreError::Conflict { .. } => Error::conflict(e.to_string()),
        // The pool's store is down: say so (it names the endpoints it tried), as its own
        // kind, so clients can tell "retry later" from a bug.
        StoreError::Unavailable { .. } => Error::caused(
            ErrorKind::Unavailable,
            "the pool's state store cannot be reached (guests keep running; reads come from this host's cache)",
            e,
        ),
        other => Error::caused(ErrorKind::Internal, "state database", other),
    }
}

/// `a: b: c` from an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Records {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Records { store }
    }
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn put_json<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        expect: Expect,
    ) -> Result<u64, Error> {
        let bytes = encode(key, value)?;
        self.store
            .put(key, &bytes, expect)
            .await
            .map_err(store_error)
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, Error> {
        match self.store.get(key).await.map_err(store_error)? {
            Some(v) => serde_json::from_slice(&v.value).map(Some).map_err(|e| {
                Error::caused(ErrorKind::Internal, format!("corrupt record {key}"), e)
            }),
            None => Ok(None),
        }
    }

    /// Every record under `prefix`, decoded; `what` names them in errors.
    pub async fn list_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        what: &str,
    ) -> Result<Vec<T>, Error> {
        self.store
            .list(prefix)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|(key, v)| {
                serde_json::from_slice(&v.value).map_err(|e| {
                    Error::caused(
                        ErrorKind::Internal,
                        format!("corrupt {what} record {key}"),
                        e,
                    )
                })
            })
            .collect()
    }

    pub async fn delete(&self, key: &str, expect: Expect) -> Result<(), Error> {
        self.store.delete(key, expect).await.map_err(store_error)
    }

    /// Apply every op or none.
    pub async fn txn(&self, ops: Vec<TxnOp>) -> Result<u64, Error> {
        self.store.txn(ops).await.map_err(store_error)
    }
}

/// A record as the JSON bytes the store keeps.
pub fn encode<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| {
        Error::caused(
            ErrorKind::Internal,
            format!("cannot encode record {key}"),
            e,
        )
    })
}

/// What actors and operations share; see the module documentation.
pub struct Host {
    pub records: Records,
    pub events: Arc<EventBus>,
    pub tasks: Arc<Tasks>,
    pub layout: Layout,
    /// This host's id, written into every VM record it owns.
    pub host_id: String,
    /// Its name in the pool (`--host-name`; default: the system's host name).
    pub host_name: String,
    /// Where ISO names without a path are looked up.
    pub iso_dir: PathBuf,
    templates: RwLock<Templates>,
    registry: RwLock<Registry>,
    notices: mpsc::UnboundedSender<Notice>,
    /// This host's repositories and networks, read at start and kept current by the writes
    /// this host makes (host-scoped records have one writer: their host).
    srs: RwLock<BTreeMap<String, StorageRepository>>,
    networks: RwLock<BTreeMap<String, Network>>,
    /// Self-fencing files, set when the host is in a clustered pool (see
    /// [`crate::pool::fence`]).
    fence: std::sync::OnceLock<crate::pool::fence::FenceFiles>,
}

impl Host {
    /// The context and the receiving end of the actors' notices (see [`Notice`]). The host
    /// is named by its (id, name) in the pool.
    pub fn new(
        records: Records,
        events: Arc<EventBus>,
        tasks: Arc<Tasks>,
        layout: Layout,
        (host_id, host_name): (String, String),
        iso_dir: PathBuf,
        templates: Templates,
    ) -> (Self, mpsc::UnboundedReceiver<Notice>) {
        let (notices, rx) = mpsc::unbounded_channel();
        let host = Host {
            records,
            events,
            tasks,
            layout,
            host_id,
            host_name,
            iso_dir,
            templates: RwLock::new(templates),
            registry: RwLock::new(Registry::default()),
            notices,
            srs: RwLock::new(BTreeMap::new()),
            networks: RwLock::new(BTreeMap::new()),
            fence: std::sync::OnceLock::new(),
        };
        (host, rx)
    }

    /// From now on, arm the fence for running HA VMs (the host joined a clustered pool).
    pub fn set_fence(&self, files: crate::pool::fence::FenceFiles) {
        let _ = self.fence.set(files);
    }

    /// Arm or disarm the fence for a VM as its actor publishes it: an HA VM whose QEMU runs
    /// is killed by the fence guard if this host loses its pool membership.
    pub fn fence_sync(&self, rec: &corral_model::VmRecord, pid: Option<u32>) {
        let Some(f) = self.fence.get() else { return };
        match pid {
            Some(pid) if rec.ha.restart => {
                if let Err(e) = f.arm(&rec.id, pid) {
                    tracing::error!(vm = %rec.spec.name, error = %e, "cannot arm the fence for an HA VM");
                }
            }
            _ => f.disarm(&rec.id),
        }
    }

    /// Cache a shared repository another member created (learnt from the pool's store).
    pub fn cache_shared_sr(&self, sr: StorageRepository) {
        write(&self.srs).insert(sr.name.clone(), sr);
    }

    /// Leave a notice for the facade (see [`Notice`]); dropped if nobody listens any more.
    pub fn notify(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }

    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }
    pub fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }
    pub fn templates(&self) -> RwLockReadGuard<'_, Templates> {
        self.templates.read().unwrap_or_else(|p| p.into_inner())
    }
    pub fn templates_mut(&self) -> RwLockWriteGuard<'_, Templates> {
        self.templates.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The VM named (or with the id) `name`.
    pub fn vm(&self, name: &str) -> Result<VmHandle, Error> {
        self.registry()
            .find(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no VM named {name:?}")))
    }

    /// Whether `name` is a template VM (rather than an OS template): creating or installing
    /// from it makes a linked clone of its disks.
    pub fn is_template_vm(&self, name: &str) -> bool {
        self.registry()
            .find(name)
            .is_some_and(|h| h.info().is_template)
    }

    /// Snapshots of every VM, by name.
    pub fn list_vms(&self) -> Vec<VmInfo> {
        let mut out: Vec<VmInfo> = self.registry().by_id.values().map(|h| h.info()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Read this host's repositories and networks into the cache (at start).
    pub async fn load_catalog(&self) -> Result<(), Error> {
        let srs: Vec<StorageRepository> = self
            .records
            .list_json(&keys::srs(&self.host_id), "repository")
            .await?;
        let networks: Vec<Network> = self
            .records
            .list_json(&keys::networks(&self.host_id), "network")
            .await?;
        let shared: Vec<StorageRepository> =
            self.records.list_json(keys::POOL_SRS, "repository").await?;
        *write(&self.srs) = srs
            .into_iter()
            .chain(shared)
            .map(|s| (s.name.clone(), s))
            .collect();
        *write(&self.networks) = networks.into_iter().map(|n| (n.name.clone(), n)).collect();
        Ok(())
    }

    /// Record a new repository (create-only) and cache it.
    pub async fn add_sr(&self, sr: StorageRepository, expect: Expect) -> Result<(), Error> {
        // A shared repository is the pool's (every member sees it); a local one this host's.
        let key = if sr.shared {
            keys::pool_sr(&sr.name)
        } else {
            keys::sr(&self.host_id, &sr.name)
        };
        if read(&self.srs).contains_key(&sr.name) && expect == Expect::Absent {
            return Err(Error::conflict(format!(
                "a storage repository named {:?} already exists",
                sr.name
            )));
        }
        self.records
            .put_json(&key, &sr, expect)
            .await
            .map_err(|e| Host::exists_as(e, "storage repository", &sr.name))?;
        write(&self.srs).insert(sr.name.clone(), sr);
        Ok(())
    }

    /// Record a new network (create-only) and cache it.
    pub async fn add_network(&self, net: Network) -> Result<(), Error> {
        self.records
            .put_json(
                &keys::network(&self.host_id, &net.name),
                &net,
                Expect::Absent,
            )
            .await
            .map_err(|e| Host::exists_as(e, "network", &net.name))?;
        write(&self.networks).insert(net.name.clone(), net);
        Ok(())
    }

    pub fn sr(&self, name: &str) -> Result<StorageRepository, Error> {
        read(&self.srs)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("no storage repository named {name:?}")))
    }

    /// Every repository, with its free and total space filled in.
    pub fn list_srs(&self) -> Vec<StorageRepository> {
        let mut out: Vec<StorageRepository> = read(&self.srs).values().cloned().collect();
        for sr in &mut out {
            if let Some((free, total)) = corral_storage::fs_space(&sr.path) {
                sr.free_bytes = Some(free);
                sr.total_bytes = Some(total);
            }
        }
        out
    }

    pub fn network(&self, name: &str) -> Result<Network, Error> {
        if name == DEFAULT_NETWORK {
            return Ok(network::default_network());
        }
        read(&self.networks)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("no network named {name:?}")))
    }

    pub fn list_networks(&self) -> Vec<Network> {
        let mut out = vec![network::default_network()];
        out.extend(read(&self.networks).values().cloned());
        out
    }

    /// A conflict from a create-only write, renamed for the user.
    pub(crate) fn exists_as(e: Error, what: &str, name: &str) -> Error {
        if e.kind == ErrorKind::Conflict {
            Error::conflict(format!("a {what} named {name:?} already exists"))
        } else {
            e
        }
    }
}

impl crate::spec::HostFacts for Host {
    fn sr(&self, name: &str) -> Result<StorageRepository, Error> {
        Host::sr(self, name)
    }
    fn network(&self, name: &str) -> Result<Network, Error> {
        Host::network(self, name)
    }
    fn template(&self, name: &str) -> Result<corral_install::Template, Error> {
        self.templates().get(name).cloned()
    }
    fn memory_total_bytes(&self) -> u64 {
        crate::host::memory().0
    }
    fn iso_dir(&self) -> &Path {
        &self.iso_dir
    }
    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn check_iso(&self, path: &Path) -> Result<(), String> {
        corral_storage::check_iso(path)
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
