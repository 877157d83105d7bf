//! The pool's view: every VM record and member record, learnt from store watches and kept
//! in memory, and what happens when it changes: an ownership move adopts or releases a VM's
//! actor here, another member's change is announced on this host's event bus, a member
//! whose lease expired starts the failover of its HA VMs.
//!
//! A watch resumes from the last revision it delivered; history etcd has compacted is
//! reloaded whole. Lock order, everywhere in the pool: the view, then the registry.

use super::*;

#[derive(Debug, Clone, Default)]
pub(super) struct HostEntry {
    pub(super) record: Option<HostRecord>,
    pub(super) up: bool,
    pub(super) since_ms: u64,
}

#[derive(Default)]
pub(super) struct View {
    pub(super) hosts: BTreeMap<String, HostEntry>,
    pub(super) vms: HashMap<String, (VmRecord, u64)>,
    pub(super) vm_names: HashMap<String, String>,
    pub(super) shared_srs: BTreeMap<String, StorageRepository>,
    /// Other members' VMs as `vm list` shows them (name, JSON), encoded once per change.
    pub(super) listed: HashMap<String, (String, bytes::Bytes)>,
}

impl View {
    /// Encode a VM of another member for `vm list` (again when its host's name arrives).
    pub(super) fn render(&mut self, rec: &VmRecord) {
        let info = VmInfo::from_record(rec, &self.host_name(&rec.host));
        let json = serde_json::to_vec(&info)
            .map(bytes::Bytes::from)
            .unwrap_or_default();
        self.listed
            .insert(rec.id.clone(), (rec.spec.name.clone(), json));
    }

    pub(super) fn host_name(&self, id: &str) -> String {
        self.hosts
            .get(id)
            .and_then(|h| h.record.as_ref())
            .map(|r| r.name.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// The id of the VM named (or with the id) `key`.
    pub(super) fn id_of(&self, key: &str) -> String {
        self.vm_names
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_string())
    }
}

impl Pool {
    /// Read everything under `prefix` into the view (at start, and after a compaction).
    pub(super) async fn reload(&self, prefix: &str) -> Result<u64, Error> {
        let revision = self.store.revision().await.map_err(store_error)?;
        let items = self.store.list(prefix).await.map_err(store_error)?;
        {
            let mut v = self.write();
            if prefix == keys::VMS {
                v.vms.clear();
                v.vm_names.clear();
                v.listed.clear();
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

    pub(super) async fn watch_loop(self: Arc<Self>, prefix: &'static str, mut after: u64) {
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

    pub(super) fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Apply one change to the view; `live` changes (not the initial load) also move actors
    /// and announce remote VMs' changes on this host's event bus.
    /// Front ends re-read the hosts on this event (the web console's tree, `corral events`).
    fn publish_host_changed(&self, id: &str) {
        self.host.events.publish(Event::HostChanged {
            host: self.name_of(id),
            id: id.to_string(),
        });
    }

    pub(super) fn apply(self: &Pool, ev: &WatchEvent, live: bool) {
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
                        if rec.host == me {
                            v.listed.remove(&id);
                        } else {
                            v.render(&rec);
                        }
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
                        v.listed.remove(&id);
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
            if live {
                self.publish_host_changed(id);
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
                        let renamed = e.record.as_ref().is_none_or(|r| r.name != rec.name);
                        e.record = Some(rec);
                        if renamed && id != me {
                            // Its VMs were listed under its id or an old name.
                            let own: Vec<VmRecord> = v
                                .vms
                                .values()
                                .filter(|(r, _)| r.host == id)
                                .map(|(r, _)| r.clone())
                                .collect();
                            for r in &own {
                                v.render(r);
                            }
                        }
                    }
                }
                Change::Delete => {
                    v.hosts.remove(id);
                }
            }
            drop(v);
            // After the view holds it: a page that reads the hosts on this event sees it.
            if live {
                self.publish_host_changed(id);
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

    pub(super) fn announce_remote(&self, prev: Option<VmRecord>, rec: &VmRecord) {
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
    ///
    /// The name is reserved in the registry until the actor is in: the watch and the
    /// reconcile loop can both see the VM without an actor while one adoption re-attaches
    /// (seconds, under load), and a second actor on the same QEMU would find its monitor
    /// taken, record the guest halted and leave the first with a stale revision.
    pub(super) fn adopt(&self, rec: VmRecord, rev: u64) {
        let name = rec.spec.name.clone();
        {
            let mut reg = self.host.registry_mut();
            if reg.by_id.contains_key(&rec.id) || reg.reserve(&name).is_err() {
                return;
            }
        }
        let host = self.host.clone();
        let runtime = self.runtime.clone();
        let changed = self.changed.clone();
        tokio::spawn(async move {
            let id = rec.id.clone();
            // The store, not the view, says what is ours now (the view may lag a delete).
            let current = match host.records.store().get(&keys::vm(&id)).await {
                Ok(Some(v)) => match serde_json::from_slice::<VmRecord>(&v.value) {
                    Ok(r) if r.host == host.host_id && v.mod_revision >= rev => {
                        Some((r, v.mod_revision))
                    }
                    _ => None,
                },
                _ => None,
            };
            let Some((rec, rev)) = current else {
                host.registry_mut().release(&name);
                return;
            };
            let handle = vm::actor::spawn(host.clone(), runtime, rec, rev).await;
            host.registry_mut().insert(&name, handle);
            tracing::info!(vm = %name, "this host now owns the VM");
            host.events.publish(Event::VmChanged { vm: name, id });
            changed.send_modify(|n| *n += 1);
        });
    }

    /// One of this host's VMs became another member's: stop its actor (killing a QEMU that
    /// still runs: the new owner may start it).
    pub(super) fn release(&self, id: &str) {
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
                let id = v.id_of(key);
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
}
