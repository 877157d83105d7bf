//! The pool: this host as one member of many that share a store (etcd), or a one-host pool
//! on the embedded SQLite store when the agent runs without `--etcd`.
//!
//! What it owns:
//! - **Joining** ([`Pool::start`]): the first host founds the pool (its CA and join token,
//!   [`pki`]); later hosts enroll with the token. Host names are unique through
//!   `pool/host-names/<name>`, written in the same transaction as the host's record.
//! - **Membership**: each member keeps a lease alive and a leased key `pool/members/<id>`;
//!   a member is `up` while that key exists. After every successful renewal the self-fence
//!   deadline moves on ([`fence`]); a member that cannot renew has its HA VMs killed by its
//!   fence guard before the lease can expire.
//! - **The view**: every VM record and every member's record, learnt from store watches
//!   (resumed from the last revision seen; reloaded when the history was compacted). `vm
//!   list` and `host list` read it without asking the store, so they answer while the store
//!   is unreachable.
//! - **Ownership moves**: a VM's owner changes only in a transaction that expects the
//!   record's revision. When the view sees a record become this host's, the VM's actor is
//!   spawned here (adopted); when it sees one of this host's VMs become another's, the actor
//!   is released (its QEMU killed if it still ran).
//! - **HA restart**: when a member's lease expires, survivors wait [`HaTimings::restart_delay`]
//!   and restart its `--ha restart` VMs that were running, highest priority first, each on
//!   the member placement picks (the one with the most free memory that fits it).
//!
//! Request forwarding to the owner of a VM lives in `corral-api`; it asks [`Pool::route`].

pub mod fence;
pub mod pki;

use crate::context::{encode, store_error, Host};
use crate::error::Error;
use crate::keys;
use crate::vm::runtime::QemuRuntime;
use crate::vm::{self, Op};
use corral_model::api::{ActionRequest, VmAction};
use corral_model::event::Event;
use corral_model::host::StorageRepository;
use corral_model::pool::*;
use corral_model::task::Operation;
use corral_model::{ErrorKind, PowerState, VmInfo, VmRecord};
use corral_store::{Change, Expect, LeaseId, Store, StoreError, TxnOp, WatchEvent};
use fence::FenceFiles;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The timings of membership and HA; see `docs/pools.md` for why they are safe.
#[derive(Debug, Clone, Copy)]
pub struct HaTimings {
    pub lease_ttl: Duration,
    pub renew_every: Duration,
    /// The fence deadline is this long before the lease can expire.
    pub fence_margin: Duration,
    /// Survivors wait this long after a lease expired before restarting its HA VMs.
    pub restart_delay: Duration,
    /// How often a member republishes its record (free memory, load).
    pub publish_every: Duration,
}

impl Default for HaTimings {
    fn default() -> Self {
        HaTimings {
            lease_ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(1),
            fence_margin: Duration::from_secs(3),
            restart_delay: Duration::from_secs(3),
            publish_every: Duration::from_secs(2),
        }
    }
}

/// How the agent takes part in a pool (`corral serve --etcd ... --host-name ...`).
#[derive(Debug, Clone, Default)]
pub struct PoolOptions {
    /// etcd endpoints; empty for a one-host pool on the local store.
    pub etcd: Vec<String>,
    pub host_name: String,
    /// `https://ADDR:PORT` other members reach this one at.
    pub address: Option<String>,
    /// The join token, to enroll in an existing pool (not needed by its founder, nor after
    /// the first join: it is kept in `STATE/pool/join-token`).
    pub join_token: Option<String>,
    /// Name of a pool founded by this host.
    pub pool_name: String,
    pub timings: HaTimings,
    /// This executable, started as the fence guard (`fence-guard`); `None`: no guard (tests
    /// of the actor layer, one-host pools).
    pub guard_exe: Option<PathBuf>,
}

/// TLS material of a member: the pool CA and this host's certificate (PEM).
#[derive(Debug, Clone)]
pub struct PoolTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_sha256: String,
    /// SHA-256 of this member's certificate: what remote clients pin when it serves HTTPS.
    pub cert_sha256: String,
}

/// This host in the planner's model: capacity, hourly load of its running VMs, their
/// keep-apart groups (computed by [`crate::advice::Advisor::local_planner`]).
#[derive(Debug, Clone, Default)]
pub struct LocalPlanner {
    pub capacity: Option<corral_model::stats::PlannerCapacity>,
    pub load_hourly: Vec<[f64; 6]>,
    pub apart_groups: Vec<String>,
}

/// What a VM needs from the host placement picks for it.
#[derive(Debug, Clone, Default)]
pub struct Need {
    pub name: String,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub networks: Vec<String>,
    pub apart: Option<String>,
    /// A host it must not go to (the one being evacuated).
    pub exclude_host: Option<String>,
}

impl Need {
    pub fn of(rec: &VmRecord) -> Need {
        let mut networks: Vec<String> = rec.spec.nics.iter().map(|n| n.network.clone()).collect();
        networks.sort();
        networks.dedup();
        Need {
            name: rec.spec.name.clone(),
            vcpus: rec.spec.vcpus,
            memory_bytes: rec.spec.memory_bytes,
            networks,
            apart: rec.ha.apart.clone(),
            exclude_host: None,
        }
    }
}

/// A member's published capacity and load as the planner's `HostLoad`.
pub fn host_load(
    name: &str,
    capacity: &corral_model::stats::PlannerCapacity,
    load_hourly: &[[f64; 6]],
    vms: u32,
    apart: &[String],
) -> corral_placement::HostLoad {
    let mut host = corral_placement::Host::new(
        name,
        capacity.cores,
        capacity.ghz,
        capacity.memory_gib,
        capacity.net_mbps,
        capacity.disk_mbps,
    );
    host.iops = capacity.iops.is_finite().then_some(capacity.iops);
    host.networks = capacity.networks.clone();
    let load = if load_hourly.len() == corral_placement::TIME_BUCKETS {
        corral_placement::Demand::from_series(load_hourly.to_vec())
    } else {
        corral_placement::Demand::constant([0.0; 6])
    };
    corral_placement::HostLoad {
        host,
        load,
        vms,
        apart_groups: apart.to_vec(),
    }
}

/// Where a request about a VM must go.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// This host owns it (or nobody knows it: the local handler answers not-found).
    Local,
    /// Another member that is up.
    Remote {
        host_id: String,
        host_name: String,
        address: String,
    },
    /// Its owner is down or cannot be reached.
    Unreachable { host_name: String, why: String },
}

#[derive(Debug, Clone, Default)]
struct HostEntry {
    record: Option<HostRecord>,
    up: bool,
    since_ms: u64,
}

#[derive(Default)]
struct View {
    hosts: BTreeMap<String, HostEntry>,
    vms: HashMap<String, (VmRecord, u64)>,
    vm_names: HashMap<String, String>,
    shared_srs: BTreeMap<String, StorageRepository>,
}

impl View {
    fn host_name(&self, id: &str) -> String {
        self.hosts
            .get(id)
            .and_then(|h| h.record.as_ref())
            .map(|r| r.name.clone())
            .unwrap_or_else(|| id.to_string())
    }
}

pub struct Pool {
    host: Arc<Host>,
    runtime: Arc<QemuRuntime>,
    store: Arc<dyn Store>,
    options: PoolOptions,
    record: Option<pki::PoolRecord>,
    tls: Option<PoolTls>,
    view: RwLock<View>,
    /// Bumped whenever the view or the registry changes, for waiters.
    changed: tokio::sync::watch::Sender<u64>,
    lease: AtomicI64,
    fence: Option<FenceFiles>,
    store_ok: AtomicBool,
    joined_at_ms: u64,
    founded_here: bool,
    /// This host in the planner's model, as the advisor last computed it (published in the
    /// host record for the other members' placement).
    local_planner: RwLock<LocalPlanner>,
    /// The pool itself, for tasks spawned from `&self` methods.
    this: std::sync::OnceLock<std::sync::Weak<Pool>>,
}

fn now_ms() -> u64 {
    crate::now_ms()
}

fn pool_dir(host: &Host) -> PathBuf {
    host.layout.root.join("pool")
}

impl Pool {
    /// Join (or found) the pool, load the view, and start membership, watches and HA.
    pub async fn start(
        host: Arc<Host>,
        runtime: Arc<QemuRuntime>,
        options: PoolOptions,
    ) -> Result<Arc<Pool>, Error> {
        let store = host.records.store().clone();
        let clustered = !options.etcd.is_empty();
        let (record, tls, founded_here) = if clustered {
            let (r, t, f) = enroll(&host, store.as_ref(), &options).await?;
            (Some(r), Some(t), f)
        } else {
            (None, None, false)
        };
        let fence = clustered.then(|| FenceFiles::new(&host.layout.root));
        if let Some(f) = &fence {
            f.create().map_err(|e| {
                Error::caused(ErrorKind::Internal, "cannot create the fence directory", e)
            })?;
            host.set_fence(f.clone());
            if let Some(exe) = &options.guard_exe {
                fence::ensure_guard(&host.layout.root, exe).map_err(|e| {
                    Error::caused(ErrorKind::Internal, "cannot start the fence guard", e)
                })?;
            }
        }
        claim_host_name(store.as_ref(), &host.host_id, &options.host_name).await?;
        let lease = membership_lease(store.as_ref(), fence.as_ref(), options.timings).await?;
        let (changed, _) = tokio::sync::watch::channel(0);
        let pool = Arc::new(Pool {
            host,
            runtime,
            store,
            options,
            record,
            tls,
            view: RwLock::new(View::default()),
            changed,
            lease: AtomicI64::new(lease.0),
            fence,
            store_ok: AtomicBool::new(true),
            joined_at_ms: now_ms(),
            founded_here,
            this: std::sync::OnceLock::new(),
            local_planner: RwLock::new(LocalPlanner::default()),
        });
        let _ = pool.this.set(Arc::downgrade(&pool));
        pool.put_member(lease).await?;
        if let Some(f) = &pool.fence {
            // The lease was just renewed or granted: the deadline starts from now.
            let _ = f.set_deadline(pool.deadline_from(fence::monotonic_ms()));
        }
        pool.publish_record().await?;
        let revision = pool.store.revision().await.map_err(store_error)?;
        pool.reload(keys::VMS).await?;
        pool.reload(keys::POOL).await?;
        for prefix in [keys::VMS, keys::POOL] {
            tokio::spawn(Arc::clone(&pool).watch_loop(prefix, revision));
        }
        tokio::spawn(Arc::clone(&pool).renew_loop());
        tokio::spawn(Arc::clone(&pool).reconcile_loop());
        tokio::spawn(Arc::clone(&pool).publish_loop());
        // Members already down when this one starts: their leases expired before it came.
        let down: Vec<String> = {
            let v = pool.read();
            v.hosts
                .iter()
                .filter(|(id, h)| !h.up && **id != pool.host.host_id)
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in down {
            tokio::spawn(Arc::clone(&pool).failover(id));
        }
        Ok(pool)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_clustered(&self) -> bool {
        !self.options.etcd.is_empty()
    }
    pub fn host_name(&self) -> &str {
        &self.options.host_name
    }
    pub fn tls(&self) -> Option<&PoolTls> {
        self.tls.as_ref()
    }
    pub fn timings(&self) -> HaTimings {
        self.options.timings
    }
    pub fn fence_files(&self) -> Option<&FenceFiles> {
        self.fence.as_ref()
    }

    fn deadline_from(&self, sent_ms: u64) -> u64 {
        let t = self.options.timings;
        sent_ms + t.lease_ttl.as_millis() as u64 - t.fence_margin.as_millis() as u64
    }

    async fn put_member(&self, lease: LeaseId) -> Result<(), Error> {
        self.store
            .txn(vec![TxnOp::Put {
                key: keys::pool_member(&self.host.host_id),
                value: self.options.host_name.as_bytes().to_vec(),
                expect: Expect::Any,
                lease: Some(lease),
            }])
            .await
            .map_err(store_error)?;
        Ok(())
    }

    fn this_record(&self) -> HostRecord {
        let local = self
            .local_planner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (total, available) = crate::host::memory();
        let registry = self.host.registry();
        let vms_running = registry
            .by_id
            .values()
            .filter(|h| h.info().power_state != PowerState::Halted)
            .count() as u32;
        drop(registry);
        HostRecord {
            id: self.host.host_id.clone(),
            name: self.options.host_name.clone(),
            address: self.options.address.clone(),
            joined_at_ms: self.joined_at_ms,
            updated_at_ms: now_ms(),
            cpu_cores: crate::host::cpu_facts().cores,
            memory_total_bytes: total,
            memory_free_bytes: available,
            load1: load_average(),
            vms_running,
            planner: local.capacity,
            srs: self.host.list_srs().into_iter().map(|s| s.name).collect(),
            load_hourly: local.load_hourly,
            apart_groups: local.apart_groups,
        }
    }

    async fn publish_record(&self) -> Result<(), Error> {
        let rec = self.this_record();
        let key = keys::pool_host(&self.host.host_id);
        self.store
            .put(&key, &encode(&key, &rec)?, Expect::Any)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn publish_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.options.timings.publish_every).await;
            if let Err(e) = self.publish_record().await {
                tracing::debug!(error = %e, "cannot publish this host's record");
            }
        }
    }

    /// Renew the membership lease; after each success move the fence deadline on. A lease
    /// found expired means the pool took this host for dead: its HA VMs are killed now (a
    /// survivor may be restarting them) and a new lease is taken.
    async fn renew_loop(self: Arc<Self>) {
        let t = self.options.timings;
        loop {
            tokio::time::sleep(t.renew_every).await;
            let sent = fence::monotonic_ms();
            let lease = LeaseId(self.lease.load(Ordering::Relaxed));
            match tokio::time::timeout(
                t.renew_every.max(Duration::from_millis(500)),
                self.store.keep_alive(lease),
            )
            .await
            {
                Ok(Ok(())) => {
                    if let Some(f) = &self.fence {
                        let _ = f.set_deadline(self.deadline_from(sent));
                    }
                    self.set_store_ok(true);
                }
                Ok(Err(StoreError::LeaseNotFound(_))) => {
                    tracing::warn!("this host's pool membership lease expired; fencing its HA VMs and rejoining");
                    if let Some(f) = &self.fence {
                        let _ = f.set_deadline(0);
                        f.fence_if_due(fence::monotonic_ms());
                    }
                    match self.store.grant_lease(t.lease_ttl).await {
                        Ok(new) => {
                            self.lease.store(new.0, Ordering::Relaxed);
                            if let Some(f) = &self.fence {
                                let _ = f.save_lease(new.0);
                                let _ = f.set_deadline(self.deadline_from(sent));
                            }
                            if let Err(e) = self.put_member(new).await {
                                tracing::warn!(error = %e, "cannot rejoin the pool");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot take a new membership lease"),
                    }
                }
                Ok(Err(e)) => {
                    self.set_store_ok(false);
                    tracing::debug!(error = %e, "cannot renew the membership lease");
                    self.fence_now_if_due();
                }
                Err(_) => {
                    self.set_store_ok(false);
                    self.fence_now_if_due();
                }
            }
        }
    }

    /// The agent fences too (the guard is the one that cannot be frozen with it).
    fn fence_now_if_due(&self) {
        if let Some(f) = &self.fence {
            for vm in f.fence_if_due(fence::monotonic_ms()) {
                tracing::warn!(vm = %vm, "killed an HA VM: this host lost its pool membership");
            }
        }
    }

    fn set_store_ok(&self, ok: bool) {
        let was = self.store_ok.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!("the pool's store answers again");
            } else {
                tracing::warn!(endpoints = %self.options.etcd.join(","), "the pool's store cannot be reached");
            }
        }
    }

    /// Every few seconds, settle what a lost store answer left open: a VM record that is
    /// this host's but has no actor here (a create whose answer was lost, a move whose
    /// forwarded request never came) is adopted; a create intent with no record is undone.
    async fn reconcile_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let orphans: Vec<(VmRecord, u64)> = {
                let v = self.read();
                let reg = self.host.registry();
                v.vms
                    .values()
                    .filter(|(r, _)| {
                        r.host == self.host.host_id
                            && !reg.by_id.contains_key(&r.id)
                            && !reg.is_reserved(&r.spec.name)
                    })
                    .cloned()
                    .collect()
            };
            for (rec, rev) in orphans {
                tracing::info!(vm = %rec.spec.name, "adopting a VM record of this host that had no actor");
                self.adopt(rec, rev);
            }
            match crate::intents::recover(&self.host).await {
                Ok(notes) => {
                    for n in notes {
                        tracing::info!("{n}");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot settle intents now"),
            }
        }
    }

    // ----- the view -----

    /// Read everything under `prefix` into the view (at start, and after a compaction).
    async fn reload(&self, prefix: &str) -> Result<u64, Error> {
        let revision = self.store.revision().await.map_err(store_error)?;
        let items = self.store.list(prefix).await.map_err(store_error)?;
        {
            let mut v = self.write();
            if prefix == keys::VMS {
                v.vms.clear();
                v.vm_names.clear();
            } else {
                for h in v.hosts.values_mut() {
                    h.up = false;
                }
            }
        }
        for (key, val) in items {
            self.apply(
                &WatchEvent {
                    key,
                    change: Change::Put(val.value),
                    mod_revision: val.mod_revision,
                },
                false,
            );
        }
        self.bump();
        Ok(revision)
    }

    async fn watch_loop(self: Arc<Self>, prefix: &'static str, mut after: u64) {
        loop {
            match self.store.watch(prefix, after).await {
                Ok(mut w) => {
                    while let Some(ev) = w.next().await {
                        after = after.max(ev.mod_revision);
                        self.apply(&ev, true);
                        self.bump();
                    }
                }
                Err(StoreError::Compacted { .. }) => match self.reload(prefix).await {
                    Ok(rev) => {
                        after = rev;
                        continue;
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot reload the pool view"),
                },
                Err(e) => {
                    self.set_store_ok(false);
                    tracing::debug!(error = %e, prefix, "pool watch failed; retrying");
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Apply one change to the view; `live` changes (not the initial load) also move actors
    /// and announce remote VMs' changes on this host's event bus.
    fn apply(self: &Pool, ev: &WatchEvent, live: bool) {
        let me = self.host.host_id.clone();
        if let Some(id) = ev.key.strip_prefix(keys::VMS) {
            let id = id.to_string();
            match &ev.change {
                Change::Put(bytes) => {
                    let Ok(rec) = serde_json::from_slice::<VmRecord>(bytes) else {
                        tracing::warn!(key = %ev.key, "unreadable VM record in the pool store");
                        return;
                    };
                    let prev = {
                        let mut v = self.write();
                        if let Some((old, old_rev)) = v.vms.get(&id) {
                            if *old_rev > ev.mod_revision {
                                return; // a replay of something older than we hold
                            }
                            if old.spec.name != rec.spec.name {
                                let old_name = old.spec.name.clone();
                                v.vm_names.remove(&old_name);
                            }
                        }
                        v.vm_names.insert(rec.spec.name.clone(), id.clone());
                        v.vms.insert(id.clone(), (rec.clone(), ev.mod_revision))
                    };
                    if !live {
                        return;
                    }
                    let prev_host = prev.as_ref().map(|(r, _)| r.host.clone());
                    let known_here = self.host.registry().by_id.contains_key(&id);
                    if rec.host == me
                        && prev_host.as_deref().is_some_and(|h| h != me)
                        && !known_here
                    {
                        self.adopt(rec, ev.mod_revision);
                    } else if rec.host != me && known_here {
                        self.release(&id);
                    } else if rec.host != me {
                        self.announce_remote(prev.map(|(r, _)| r), &rec);
                    }
                }
                Change::Delete => {
                    let old = {
                        let mut v = self.write();
                        let old = v.vms.remove(&id);
                        if let Some((r, _)) = &old {
                            if v.vm_names.get(&r.spec.name) == Some(&id) {
                                v.vm_names.remove(&r.spec.name);
                            }
                        }
                        old
                    };
                    if let Some((r, _)) = old {
                        if live && r.host != me {
                            self.host.events.publish(Event::VmDeleted {
                                vm: r.spec.name,
                                id,
                            });
                        }
                    }
                }
            }
            return;
        }
        let now = now_ms();
        if let Some(id) = ev.key.strip_prefix(keys::POOL_MEMBERS) {
            let up = matches!(ev.change, Change::Put(_));
            let went_down = {
                let mut v = self.write();
                let e = v.hosts.entry(id.to_string()).or_default();
                let changed = e.up != up || e.since_ms == 0;
                if changed {
                    e.since_ms = now;
                }
                let went_down = e.up && !up;
                e.up = up;
                went_down
            };
            if live && went_down && id != me {
                tracing::warn!(host = %id, "a pool member's lease expired: it is down");
                self.spawn_failover(id.to_string());
            }
        } else if let Some(id) = ev.key.strip_prefix(keys::POOL_HOSTS) {
            let mut v = self.write();
            match &ev.change {
                Change::Put(bytes) => {
                    if let Ok(rec) = serde_json::from_slice::<HostRecord>(bytes) {
                        let e = v.hosts.entry(id.to_string()).or_default();
                        if e.since_ms == 0 {
                            e.since_ms = now;
                        }
                        e.record = Some(rec);
                    }
                }
                Change::Delete => {
                    v.hosts.remove(id);
                }
            }
        } else if let Some(name) = ev.key.strip_prefix(keys::POOL_SRS) {
            let mut v = self.write();
            match &ev.change {
                Change::Put(bytes) => {
                    if let Ok(sr) = serde_json::from_slice::<StorageRepository>(bytes) {
                        v.shared_srs.insert(name.to_string(), sr.clone());
                        drop(v);
                        self.host.cache_shared_sr(sr);
                    }
                }
                Change::Delete => {
                    v.shared_srs.remove(name);
                }
            }
        }
    }

    fn announce_remote(&self, prev: Option<VmRecord>, rec: &VmRecord) {
        let vm = rec.spec.name.clone();
        let id = rec.id.clone();
        match prev {
            None => self.host.events.publish(Event::VmCreated { vm, id }),
            Some(p) if p.power_state != rec.power_state => {
                self.host.events.publish(Event::PowerStateChanged {
                    vm,
                    id,
                    from: p.power_state,
                    to: rec.power_state,
                    reason: format!("on host {}", self.read().host_name(&rec.host)),
                })
            }
            Some(_) => self.host.events.publish(Event::VmChanged { vm, id }),
        }
    }

    /// A VM became this host's: start its actor here (re-attaching finds no QEMU; the record
    /// the new owner wrote says halted).
    fn adopt(&self, rec: VmRecord, rev: u64) {
        let host = self.host.clone();
        let runtime = self.runtime.clone();
        let changed = self.changed.clone();
        tokio::spawn(async move {
            let name = rec.spec.name.clone();
            let id = rec.id.clone();
            // The store, not the view, says what is ours now (the view may lag a delete).
            let (rec, rev) = match host.records.store().get(&keys::vm(&id)).await {
                Ok(Some(v)) => match serde_json::from_slice::<VmRecord>(&v.value) {
                    Ok(r) if r.host == host.host_id && v.mod_revision >= rev => (r, v.mod_revision),
                    _ => return,
                },
                _ => return,
            };
            if host.registry().by_id.contains_key(&id) {
                return;
            }
            let handle = vm::actor::spawn(host.clone(), runtime, rec, rev).await;
            host.registry_mut().insert(&name, handle);
            tracing::info!(vm = %name, "this host now owns the VM");
            host.events.publish(Event::VmChanged { vm: name, id });
            changed.send_modify(|n| *n += 1);
        });
    }

    /// One of this host's VMs became another member's: stop its actor (killing a QEMU that
    /// still runs: the new owner may start it).
    fn release(&self, id: &str) {
        let Ok(handle) = self.host.vm(id) else { return };
        let tasks = self.host.tasks.clone();
        let changed = self.changed.clone();
        tokio::spawn(async move {
            let _ = handle.call(Op::Release, tasks.untracked()).await;
            changed.send_modify(|n| *n += 1);
        });
    }

    /// Wait (bounded) until the VM `key` (name or id) is this host's and its actor runs,
    /// and its record is at least at `revision`: a forwarded request after an ownership
    /// move may arrive before this host's watch has seen the move.
    pub async fn wait_local(&self, key: &str, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ok = {
                let v = self.read();
                let id = v
                    .vm_names
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| key.to_string());
                let seen = v.vms.get(&id).is_some_and(|(_, r)| *r >= revision);
                seen && self.host.registry().by_id.contains_key(&id)
            };
            if ok {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    // ----- what front ends read -----

    /// Where a request about VM `key` (name or id) goes.
    pub fn route(&self, key: &str) -> Route {
        if self.host.registry().find(key).is_some() {
            return Route::Local;
        }
        let v = self.read();
        let id = v
            .vm_names
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_string());
        let Some((rec, _)) = v.vms.get(&id) else {
            return Route::Local;
        };
        if rec.host == self.host.host_id {
            return Route::Local;
        }
        let host_name = v.host_name(&rec.host);
        match v.hosts.get(&rec.host) {
            Some(h) if h.up => match h.record.as_ref().and_then(|r| r.address.clone()) {
                Some(address) => Route::Remote {
                    host_id: rec.host.clone(),
                    host_name,
                    address,
                },
                None => Route::Unreachable {
                    host_name,
                    why: "it serves no network address (start it with --listen)".into(),
                },
            },
            Some(h) => Route::Unreachable {
                host_name,
                why: format!("it is down (since {})", format_time(h.since_ms)),
            },
            None => Route::Unreachable {
                host_name,
                why: "it is not a member of the pool".into(),
            },
        }
    }

    /// Every VM of the pool: this host's from their actors, the others' from the view.
    pub fn list_vms(&self) -> Vec<VmInfo> {
        let mut out = self.host.list_vms();
        let local: std::collections::HashSet<String> = out.iter().map(|i| i.id.clone()).collect();
        let v = self.read();
        for (rec, _) in v.vms.values() {
            if !local.contains(&rec.id) && rec.host != self.host.host_id {
                out.push(VmInfo::from_record(rec, &v.host_name(&rec.host)));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A VM of another member as the view holds it.
    pub fn remote_vm(&self, key: &str) -> Option<VmInfo> {
        let v = self.read();
        let id = v
            .vm_names
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_string());
        v.vms
            .get(&id)
            .map(|(rec, _)| VmInfo::from_record(rec, &v.host_name(&rec.host)))
    }

    /// The name of the host with this id.
    pub fn name_of(&self, host_id: &str) -> String {
        if host_id == self.host.host_id {
            return self.options.host_name.clone();
        }
        self.read().host_name(host_id)
    }

    pub fn hosts(&self) -> Vec<HostSummary> {
        let v = self.read();
        let mut vms: HashMap<&str, (u32, u32)> = HashMap::new();
        for (rec, _) in v.vms.values() {
            let e = vms.entry(rec.host.as_str()).or_default();
            e.0 += 1;
            if rec.power_state != PowerState::Halted {
                e.1 += 1;
            }
        }
        let mut out: Vec<HostSummary> = v
            .hosts
            .iter()
            .filter_map(|(id, h)| {
                let r = h.record.as_ref()?;
                let (count, running) = vms.get(id.as_str()).copied().unwrap_or_default();
                Some(HostSummary {
                    name: r.name.clone(),
                    id: id.clone(),
                    state: if h.up { HostState::Up } else { HostState::Down },
                    since_ms: h.since_ms,
                    address: r.address.clone(),
                    vms: count,
                    vms_running: running,
                    memory_total_bytes: r.memory_total_bytes,
                    memory_free_bytes: r.memory_free_bytes,
                    cpu_cores: r.cpu_cores,
                    load1: r.load1,
                    this_host: *id == self.host.host_id,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn host(&self, name: &str) -> Result<HostDetail, Error> {
        let summary = self
            .hosts()
            .into_iter()
            .find(|h| h.name == name || h.id == name)
            .ok_or_else(|| Error::not_found(format!("no host named {name:?} in the pool")))?;
        let v = self.read();
        let r = v
            .hosts
            .get(&summary.id)
            .and_then(|h| h.record.clone())
            .ok_or_else(|| Error::not_found(format!("no host named {name:?} in the pool")))?;
        let mut vm_names: Vec<String> = v
            .vms
            .values()
            .filter(|(rec, _)| rec.host == summary.id)
            .map(|(rec, _)| rec.spec.name.clone())
            .collect();
        vm_names.sort();
        Ok(HostDetail {
            summary,
            joined_at_ms: r.joined_at_ms,
            updated_at_ms: r.updated_at_ms,
            srs: r.srs,
            planner: r.planner,
            vm_names,
        })
    }

    pub async fn info(&self) -> PoolInfo {
        let endpoints = if self.is_clustered() {
            let ok = self.store.revision().await.is_ok();
            self.options
                .etcd
                .iter()
                .map(|e| StoreEndpoint {
                    endpoint: e.clone(),
                    healthy: ok,
                    detail: if ok {
                        "answers".into()
                    } else {
                        "no answer from the cluster".into()
                    },
                })
                .collect()
        } else {
            vec![StoreEndpoint {
                endpoint: self.host.layout.db().display().to_string(),
                healthy: true,
                detail: "embedded SQLite (a one-host pool)".into(),
            }]
        };
        let t = self.options.timings;
        let protected = self
            .read()
            .vms
            .values()
            .filter(|(r, _)| r.ha.restart)
            .count() as u32;
        let watchdog = if std::path::Path::new("/dev/watchdog").exists() {
            "a kernel watchdog device exists (/dev/watchdog) but is not armed by corral yet"
        } else {
            "no kernel watchdog device on this host"
        };
        PoolInfo {
            name: self
                .record
                .as_ref()
                .map_or_else(|| self.options.host_name.clone(), |r| r.name.clone()),
            store: if self.is_clustered() {
                "etcd".into()
            } else {
                "sqlite".into()
            },
            endpoints,
            hosts: self.hosts(),
            ha: HaStatus {
                lease_ttl_secs: t.lease_ttl.as_secs(),
                self_fence_margin_secs: t.fence_margin.as_secs(),
                restart_delay_secs: t.restart_delay.as_secs(),
                fencing: if self.is_clustered() {
                    format!(
                        "fence guard process {} ({watchdog})",
                        if fence::guard_running(&self.host.layout.root) {
                            "running"
                        } else {
                            "NOT running"
                        }
                    )
                } else {
                    "none needed (one-host pool: nothing restarts elsewhere)".into()
                },
                protected_vms: protected,
            },
            ca_sha256: self.tls.as_ref().map(|t| t.ca_sha256.clone()),
            join_token_path: self.founded_here.then(|| {
                pool_dir(&self.host)
                    .join("join-token")
                    .display()
                    .to_string()
            }),
        }
    }

    // ----- placement and moves -----

    /// New planner figures of this host; the first ones are published at once, so the
    /// other members can place VMs here without waiting for the next report.
    pub async fn set_local_planner(&self, p: LocalPlanner) {
        let first = {
            let mut cur = self
                .local_planner
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let first = cur.capacity.is_none();
            *cur = p;
            first
        };
        if first {
            let _ = self.publish_record().await;
        }
    }

    /// Every member that is up and reachable, in the planner's model, as published (this
    /// host's own entry may be up to one publishing interval old). `except` (a VM id) is
    /// not counted in its host's load only when the caller computes that host itself.
    pub fn member_loads(&self) -> Vec<(String, corral_placement::HostLoad)> {
        let v = self.read();
        v.hosts
            .iter()
            .filter(|(id, h)| {
                h.up && h
                    .record
                    .as_ref()
                    .is_some_and(|r| r.address.is_some() || **id == self.host.host_id)
            })
            .filter_map(|(id, h)| {
                let r = h.record.as_ref()?;
                let cap = r.planner.as_ref()?;
                Some((
                    id.clone(),
                    host_load(&r.name, cap, &r.load_hourly, r.vms_running, &r.apart_groups),
                ))
            })
            .collect()
    }

    /// The member to put a VM on: `wanted` itself when it names an up member, or for
    /// `auto` the one the planner rates best for `need` (its CPU and memory, networks and
    /// keep-apart group against every member's capacity and load); ties go by name. A
    /// rating of 0 (it does not fit anywhere) is refused with the best host's reasons.
    pub fn choose_host(&self, wanted: &str, need: &Need) -> Result<(String, String), Error> {
        let hosts = self.hosts();
        if wanted != "auto" {
            let h = hosts
                .iter()
                .find(|h| h.name == wanted || h.id == wanted)
                .ok_or_else(|| Error::invalid(format!("no host named {wanted:?} in the pool")))?;
            if h.state != HostState::Up {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("host {:?} is down", h.name),
                ));
            }
            return Ok((h.id.clone(), h.name.clone()));
        }
        let mut loads = self.member_loads();
        loads.retain(|(id, _)| need.exclude_host.as_ref() != Some(id));
        if loads.is_empty() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "no pool member that is up has published its capacity yet",
            ));
        }
        let ghz = loads.iter().map(|(_, l)| l.host.ghz).fold(1.0, f64::max);
        let mut workload = corral_placement::Workload::new(
            &need.name,
            f64::from(need.vcpus) * ghz,
            need.memory_bytes as f64 / (1u64 << 30) as f64,
            0.0,
            0.0,
        );
        workload.networks = need.networks.clone();
        workload.apart = need.apart.iter().cloned().collect();
        let only: Vec<corral_placement::HostLoad> = loads.iter().map(|(_, l)| l.clone()).collect();
        let ratings = corral_placement::rate_hosts(
            &workload,
            &only,
            &corral_placement::PlanOptions::default(),
        );
        let best = ratings.iter().filter(|r| r.score > 0.0).max_by(|a, b| {
            a.score
                .total_cmp(&b.score)
                .then_with(|| b.host.cmp(&a.host))
        });
        match best {
            Some(r) => loads
                .iter()
                .find(|(_, l)| l.host.name == r.host)
                .map(|(id, l)| (id.clone(), l.host.name.clone()))
                .ok_or_else(|| Error::internal("the planner named an unknown host")),
            None => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "no pool member can take VM {:?}: {}",
                    need.name,
                    ratings
                        .first()
                        .map(|r| format!(
                            "{}: {}",
                            r.host,
                            r.reasons
                                .iter()
                                .map(|x| x.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ))
                        .unwrap_or_default()
                ),
            )),
        }
    }

    /// Why a VM cannot run on another member, or `None` when every disk is on a shared
    /// repository.
    pub fn movable(&self, rec: &VmRecord) -> Option<String> {
        let v = self.read();
        let local: Vec<&str> = rec
            .spec
            .disks
            .iter()
            .filter(|d| !v.shared_srs.contains_key(&d.sr))
            .map(|d| d.device.as_str())
            .collect();
        (!local.is_empty()).then(|| {
            format!(
                "its disks {} are on storage local to host {}",
                local.join(", "),
                v.host_name(&rec.host)
            )
        })
    }

    fn record_of(&self, key: &str) -> Option<(VmRecord, u64)> {
        let v = self.read();
        let id = v
            .vm_names
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_string());
        v.vms.get(&id).cloned()
    }

    /// Give a halted VM to another member (`vm start --on`, `host evacuate`): one
    /// transaction that expects the record's revision. Answers the new revision (the
    /// receiving member waits for it before it acts on a forwarded request).
    pub async fn move_vm(&self, key: &str, to_id: &str) -> Result<u64, Error> {
        let (mut rec, rev) = self
            .record_of(key)
            .ok_or_else(|| Error::not_found(format!("no VM named {key:?}")))?;
        if rec.host == to_id {
            return Ok(rev);
        }
        if rec.power_state != PowerState::Halted {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "VM {:?} is {}: only a halted VM moves between hosts until live migration lands",
                    rec.spec.name,
                    rec.power_state.as_str()
                ),
            ));
        }
        if let Some(why) = self.movable(&rec) {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("VM {:?} cannot move: {why}", rec.spec.name),
            ));
        }
        let from = self.name_of(&rec.host);
        rec.host = to_id.to_string();
        let key = keys::vm(&rec.id);
        let new_rev = self
            .store
            .put(&key, &encode(&key, &rec)?, Expect::Revision(rev))
            .await
            .map_err(store_error)?;
        self.host.tasks.record(
            Operation::VmMove,
            Some((&rec.id, &rec.spec.name)),
            Ok(format!(
                "moved from host {from} to host {}",
                self.name_of(to_id)
            )),
        );
        Ok(new_rev)
    }

    /// `host evacuate`: every VM off `name` (halted ones on shared storage move; others are
    /// refused with the reason).
    pub async fn evacuate(&self, name: &str, to: &str) -> Result<EvacuateAnswer, Error> {
        let detail = self.host(name)?;
        let mut answer = EvacuateAnswer {
            moved: Vec::new(),
            refused: Vec::new(),
        };
        for vm in detail.vm_names {
            let Some((rec, _)) = self.record_of(&vm) else {
                continue;
            };
            if rec.power_state != PowerState::Halted {
                answer.refused.push(RefusedVm {
                    vm,
                    reason: format!(
                        "it is {}; live migration is not available yet, shut it down first",
                        rec.power_state.as_str()
                    ),
                });
                continue;
            }
            let need = Need {
                exclude_host: Some(detail.summary.id.clone()),
                ..Need::of(&rec)
            };
            let target = match self.choose_host(to, &need) {
                Ok((id, _)) if id == detail.summary.id => {
                    answer.refused.push(RefusedVm {
                        vm,
                        reason: "no other host to move it to".into(),
                    });
                    continue;
                }
                Ok(t) => t,
                Err(e) => {
                    answer.refused.push(RefusedVm {
                        vm,
                        reason: e.message.clone(),
                    });
                    continue;
                }
            };
            match self.move_vm(&vm, &target.0).await {
                Ok(_) => answer.moved.push(MovedVm { vm, to: target.1 }),
                Err(e) => answer.refused.push(RefusedVm {
                    vm,
                    reason: e.message.clone(),
                }),
            }
        }
        Ok(answer)
    }

    /// `host forget`: drop a member that is down and owns no VM.
    pub async fn forget(&self, name: &str) -> Result<(), Error> {
        let detail = self.host(name)?;
        if detail.summary.state == HostState::Up {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("host {name:?} is up: stop its agent first (a member that is up cannot be forgotten)"),
            ));
        }
        if !detail.vm_names.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "host {name:?} still owns VMs {}: move them (`corral vm start NAME --on HOST`, `corral host evacuate {name}`) or delete them first",
                    detail.vm_names.join(", ")
                ),
            ));
        }
        self.store
            .txn(vec![
                TxnOp::delete(keys::pool_host(&detail.summary.id), Expect::Any),
                TxnOp::delete(keys::pool_host_name(&detail.summary.name), Expect::Any),
                TxnOp::delete(keys::pool_member(&detail.summary.id), Expect::Absent),
            ])
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => Error::new(
                    ErrorKind::InvalidState,
                    format!("host {name:?} came back up; it cannot be forgotten"),
                ),
                other => store_error(other),
            })?;
        self.host.tasks.record(
            Operation::HostForget,
            None,
            Ok(format!("forgot host {name}")),
        );
        Ok(())
    }

    // ----- HA -----

    fn spawn_failover(&self, host_id: String) {
        // `apply` has `&self` only; the failover task needs an `Arc` that outlives it.
        if let Some(me) = self.this.get().and_then(std::sync::Weak::upgrade) {
            tokio::spawn(me.failover(host_id));
        }
    }

    /// Restart the HA VMs of a member that went down, after the restart delay, in rounds
    /// until none is left or the member is back. In the first rounds only the member that
    /// placement picks claims a VM; later any survivor does (the claim is a transaction on
    /// the record's revision, so exactly one wins).
    async fn failover(self: Arc<Self>, dead: String) {
        let t = self.options.timings;
        tokio::time::sleep(t.restart_delay).await;
        for round in 0..30u32 {
            if self.read().hosts.get(&dead).is_some_and(|h| h.up) {
                return;
            }
            let mut pending: Vec<(VmRecord, u64)> = self
                .read()
                .vms
                .values()
                .filter(|(r, _)| {
                    r.host == dead && r.ha.restart && r.power_state != PowerState::Halted
                })
                .cloned()
                .collect();
            if pending.is_empty() {
                return;
            }
            pending.sort_by(|a, b| {
                b.0.ha
                    .priority
                    .cmp(&a.0.ha.priority)
                    .then(a.0.spec.name.cmp(&b.0.spec.name))
            });
            for (rec, rev) in pending {
                if let Some(why) = self.movable(&rec) {
                    if round == 0 {
                        self.host.tasks.record(
                            Operation::VmHaRestart,
                            Some((&rec.id, &rec.spec.name)),
                            Err(Error::new(
                                ErrorKind::InvalidState,
                                format!("not restarted: {why}"),
                            )),
                        );
                    }
                    continue;
                }
                let mine = match self.choose_host("auto", &Need::of(&rec)) {
                    Ok((id, _)) => id == self.host.host_id,
                    Err(_) => false,
                };
                if mine || round >= 3 {
                    self.claim_and_start(rec, rev).await;
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn claim_and_start(&self, mut rec: VmRecord, rev: u64) {
        let from = self.name_of(&rec.host);
        let (id, name) = (rec.id.clone(), rec.spec.name.clone());
        rec.host = self.host.host_id.clone();
        rec.power_state = PowerState::Halted;
        let key = keys::vm(&id);
        let Ok(bytes) = encode(&key, &rec) else {
            return;
        };
        let new_rev = match self.store.put(&key, &bytes, Expect::Revision(rev)).await {
            Ok(r) => r,
            Err(StoreError::Conflict { .. }) => return, // another survivor claimed it
            Err(e) => {
                tracing::warn!(vm = %name, error = %e, "cannot claim an HA VM");
                return;
            }
        };
        let task = self
            .host
            .tasks
            .start(Operation::VmHaRestart, Some((&id, &name)));
        task.phase(&format!("host {from} is down; starting the VM here"), 0.1);
        if !self.wait_local(&id, new_rev, Duration::from_secs(10)).await {
            task.fail(&Error::internal(
                "the claimed VM did not appear on this host",
            ));
            return;
        }
        let Ok(handle) = self.host.vm(&id) else {
            return;
        };
        let _ = handle
            .call(Op::Action(VmAction::Start, ActionRequest::default()), task)
            .await;
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn format_time(ms: u64) -> String {
    let secs = now_ms().saturating_sub(ms) / 1000;
    format!("{secs} s ago")
}

/// Found the pool, or enroll in it; answers the pool record, this member's TLS material
/// and whether this host founded the pool.
async fn enroll(
    host: &Host,
    store: &dyn Store,
    options: &PoolOptions,
) -> Result<(pki::PoolRecord, PoolTls, bool), Error> {
    let dir = pool_dir(host);
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::caused(
            ErrorKind::Internal,
            format!("cannot create {}", dir.display()),
            e,
        )
    })?;
    let token_file = dir.join("join-token");
    let saved_token = std::fs::read_to_string(&token_file)
        .ok()
        .map(|s| s.trim().to_string());
    let existing = store.get(keys::POOL_INFO).await.map_err(store_error)?;
    let (record, token, founded) = match existing {
        Some(v) => {
            let record: pki::PoolRecord = serde_json::from_slice(&v.value).map_err(|e| {
                Error::caused(ErrorKind::Internal, "the pool record is unreadable", e)
            })?;
            let token = options.join_token.clone().or(saved_token).ok_or_else(|| {
                Error::new(
                    ErrorKind::Unauthorized,
                    format!(
                        "pool {:?} exists in this store: give its join token (--join-token; the founding host keeps it in STATE_DIR/pool/join-token)",
                        record.name
                    ),
                )
            })?;
            let founded = record.founder == host.host_id;
            (record, token, founded)
        }
        None => {
            let token = match &options.join_token {
                Some(t) => t.clone(),
                None => pki::new_token()?,
            };
            let name = if options.pool_name.is_empty() {
                "pool".to_string()
            } else {
                options.pool_name.clone()
            };
            let record = pki::found(&name, &host.host_id, &token, now_ms())?;
            match store
                .put(keys::POOL_INFO, &encode("pool", &record)?, Expect::Absent)
                .await
            {
                Ok(_) => (record, token, true),
                Err(StoreError::Conflict { .. }) => {
                    return Err(Error::conflict(
                        "another host founded the pool at the same moment: start this one again with that pool's --join-token",
                    ))
                }
                Err(e) => return Err(store_error(e)),
            }
        }
    };
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            "a join token is at least 16 printable characters without spaces",
        ));
    }
    let member = pki::enroll(&record, &token, &host.host_id, &options.host_name)?;
    let write = |name: &str, text: &str| -> Result<(), Error> {
        let path = dir.join(name);
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(text.as_bytes()).map(|_| f))
                .map_err(|e| {
                    Error::caused(
                        ErrorKind::Internal,
                        format!("cannot write {}", path.display()),
                        e,
                    )
                })?;
            let _ = f.flush();
        }
        std::fs::rename(&tmp, &path).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot write {}", path.display()),
                e,
            )
        })
    };
    write("join-token", &format!("{token}\n"))?;
    write("ca.pem", &record.ca_cert_pem)?;
    write("cert.pem", &member.cert_pem)?;
    write("key.pem", &member.key_pem)?;
    let pem_sha256 = |pem: &str| -> Result<String, Error> {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Error::internal(format!("a pool certificate is unreadable: {e}")))?;
        Ok(sha256_hex(&der))
    };
    let ca_sha256 = pem_sha256(&record.ca_cert_pem)?;
    let cert_sha256 = pem_sha256(&member.cert_pem)?;
    Ok((
        record.clone(),
        PoolTls {
            ca_pem: record.ca_cert_pem,
            cert_pem: member.cert_pem,
            key_pem: member.key_pem,
            ca_sha256,
            cert_sha256,
        },
        founded,
    ))
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reserve `name` for this host in the pool: refused when another member has it.
async fn claim_host_name(store: &dyn Store, host_id: &str, name: &str) -> Result<(), Error> {
    corral_model::validate::validate_name("host", name).map_err(Error::invalid)?;
    let key = keys::pool_host_name(name);
    match store.get(&key).await.map_err(store_error)? {
        Some(v) if v.value == host_id.as_bytes() => Ok(()),
        Some(v) => {
            let other = String::from_utf8_lossy(&v.value).to_string();
            let up = store
                .get(&keys::pool_member(&other))
                .await
                .map_err(store_error)?
                .is_some();
            Err(Error::conflict(format!(
                "host name {name:?} is taken by another member of the pool (host id {other}, {}): choose another --host-name{}",
                if up { "up" } else { "down" },
                if up { String::new() } else { format!(", or `corral host forget {name}` if that host is gone") }
            )))
        }
        None => {
            // This host may have had another name: free it in the same transaction.
            let mut ops = vec![TxnOp::put(key.clone(), host_id.as_bytes(), Expect::Absent)];
            for (old_key, v) in store
                .list(keys::POOL_HOST_NAMES)
                .await
                .map_err(store_error)?
            {
                if v.value == host_id.as_bytes() {
                    ops.push(TxnOp::delete(old_key, Expect::Revision(v.mod_revision)));
                }
            }
            store.txn(ops).await.map_err(|e| match e {
                StoreError::Conflict { .. } => Error::conflict(format!(
                    "host name {name:?} was taken by another member at the same moment"
                )),
                other => store_error(other),
            })?;
            Ok(())
        }
    }
}

/// The membership lease: the one a previous run of this agent kept alive, if it still
/// lives (an agent restart is not a host failure), else a new one.
async fn membership_lease(
    store: &dyn Store,
    fence: Option<&FenceFiles>,
    t: HaTimings,
) -> Result<LeaseId, Error> {
    if let Some(saved) = fence.and_then(FenceFiles::saved_lease) {
        if store.keep_alive(LeaseId(saved)).await.is_ok() {
            return Ok(LeaseId(saved));
        }
    }
    let lease = store.grant_lease(t.lease_ttl).await.map_err(store_error)?;
    if let Some(f) = fence {
        let _ = f.save_lease(lease.0);
    }
    Ok(lease)
}
