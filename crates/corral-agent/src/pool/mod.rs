//! The pool: this host as one member of many that share a store (etcd), or a one-host pool
//! on the embedded SQLite store when the agent runs without `--etcd`.
//!
//! What it owns, module by module:
//! - **Joining** (`join.rs`, [`Pool::start`]): the first host founds the pool (its CA and
//!   join token, [`pki`]); later hosts enroll with the token. Host names are unique through
//!   `pool/host-names/<name>`.
//! - **Membership and HA** (`membership.rs`): each member keeps a lease alive and a leased
//!   key `pool/members/<id>`; a member is `up` while that key exists. After every successful
//!   renewal the self-fence deadline moves on ([`fence`]); a member that cannot renew has its
//!   HA VMs killed by its fence guard before the lease can expire. When a member's lease
//!   expires, survivors wait [`HaTimings::restart_delay`] and restart its `--ha restart` VMs
//!   that were running, highest priority first, each on the member placement picks. A
//!   reconcile pass settles what a lost store answer left open.
//! - **The view** (`view.rs`): every VM record and every member's record, learnt from store
//!   watches (resumed from the last revision seen; reloaded when the history was compacted).
//!   `vm list` and `host list` read it without asking the store, so they answer while the
//!   store is unreachable. When it sees a record become this host's, the VM's actor is
//!   spawned here (adopted); when one of this host's VMs becomes another's, the actor is
//!   released (its QEMU killed if it still ran).
//! - **Placement and moves** (`place.rs`): the planner's ratings over every member; a VM's
//!   owner changes only in a transaction that expects the record's revision.
//! - **Talking to members** (`peer.rs`): mutual-TLS connections and JSON calls to another
//!   member's internal routes (live migration uses them).
//! - This file: the [`Pool`] itself, publishing this host's record, and the reads front ends
//!   make (`vm list`, `host list`, `pool show`, where a request goes: [`Pool::route`]).
//!
//! Request forwarding to the owner of a VM lives in `corral-api`; it asks [`Pool::route`].

pub mod fence;
mod join;
mod membership;
pub mod peer;
pub mod pki;
mod place;
mod view;

use join::{claim_host_name, enroll, membership_lease};
pub use place::{host_load, LocalPlanner, Need};
use view::View;

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
        // A one-host pool has nobody to publish to, and its store answers every write.
        if pool.is_clustered() {
            tokio::spawn(Arc::clone(&pool).reconcile_loop());
            tokio::spawn(Arc::clone(&pool).publish_loop());
        }
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

    // ----- what front ends read -----

    /// Where a request about VM `key` (name or id) goes.
    pub fn route(&self, key: &str) -> Route {
        if self.host.registry().find(key).is_some() {
            return Route::Local;
        }
        let v = self.read();
        let id = v.id_of(key);
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

    /// `vm list` as JSON: this host's VMs from their actors' encoded snapshots, the other
    /// members' from the view's, by name; bytes are copied, nothing is encoded again.
    pub fn list_json(&self) -> Vec<u8> {
        // Lock order: the view, then the registry (as everywhere in this module).
        let v = self.read();
        let registry = self.host.registry();
        let mut items: Vec<(String, bytes::Bytes)> =
            registry.by_id.values().map(|h| h.listing()).collect();
        items.extend(
            v.listed
                .iter()
                .filter(|(id, _)| !registry.by_id.contains_key(*id))
                .map(|(_, item)| item.clone()),
        );
        drop(registry);
        drop(v);
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::with_capacity(items.iter().map(|(_, j)| j.len() + 1).sum::<usize>() + 2);
        out.push(b'[');
        for (i, (_, json)) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(json);
        }
        out.push(b']');
        out
    }

    /// A VM of another member as the view holds it.
    pub fn remote_vm(&self, key: &str) -> Option<VmInfo> {
        let v = self.read();
        let id = v.id_of(key);
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
        // This host's figures are read now; the others' are as they last published them.
        let (_, memory_free_here) = crate::host::memory();
        let load_here = load_average();
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
                let here = *id == self.host.host_id;
                Some(HostSummary {
                    name: r.name.clone(),
                    id: id.clone(),
                    state: if h.up { HostState::Up } else { HostState::Down },
                    since_ms: h.since_ms,
                    address: r.address.clone(),
                    vms: count,
                    vms_running: running,
                    memory_total_bytes: r.memory_total_bytes,
                    memory_free_bytes: if here {
                        memory_free_here
                    } else {
                        r.memory_free_bytes
                    },
                    cpu_cores: r.cpu_cores,
                    load1: if here { load_here } else { r.load1 },
                    this_host: here,
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
            // Every member at once, each within two seconds.
            let checks: Vec<_> = self
                .options
                .etcd
                .iter()
                .cloned()
                .map(|e| tokio::spawn(async move { member_health(&e).await }))
                .collect();
            let mut out = Vec::with_capacity(checks.len());
            for c in checks {
                if let Ok(e) = c.await {
                    out.push(e);
                }
            }
            out
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
}

/// Ask one etcd member its own health (`GET /health`, answered by etcd itself with whether
/// it has a leader and its store works), within two seconds (a new election takes some).
async fn member_health(endpoint: &str) -> StoreEndpoint {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let answer = async {
        let authority = endpoint
            .strip_prefix("http://")
            .ok_or("only http:// endpoints can be checked")?
            .trim_end_matches('/');
        let mut s = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        s.write_all(format!("GET /health HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        s.take(64 * 1024)
            .read_to_end(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&body);
        if text.contains("\"health\":\"true\"") {
            Ok(())
        } else if text.contains("\"health\"") {
            Err("unhealthy (no leader, or its store failed)".to_string())
        } else {
            Err("it does not answer like etcd".to_string())
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), answer).await {
        Ok(Ok(())) => StoreEndpoint {
            endpoint: endpoint.to_string(),
            healthy: true,
            detail: format!("healthy ({} ms)", started.elapsed().as_millis()),
        },
        Ok(Err(why)) => StoreEndpoint {
            endpoint: endpoint.to_string(),
            healthy: false,
            detail: why,
        },
        Err(_) => StoreEndpoint {
            endpoint: endpoint.to_string(),
            healthy: false,
            detail: "no answer within 2 s".into(),
        },
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
