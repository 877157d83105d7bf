//! Membership and HA: renewing the lease (and moving the fence deadline on after each
//! renewal), rejoining after the lease was lost, the reconcile pass that settles what a lost
//! store answer left open, and restarting a dead member's HA VMs on the survivors.

use super::*;

impl Pool {
    /// Renew the membership lease; after each success move the fence deadline on. A lease
    /// found expired means the pool took this host for dead: its HA VMs are killed now (a
    /// survivor may be restarting them) and a new lease is taken.
    pub(super) async fn renew_loop(self: Arc<Self>) {
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
    pub(super) fn fence_now_if_due(&self) {
        if let Some(f) = &self.fence {
            for vm in f.fence_if_due(fence::monotonic_ms()) {
                tracing::warn!(vm = %vm, "killed an HA VM: this host lost its pool membership");
            }
        }
    }

    pub(super) fn set_store_ok(&self, ok: bool) {
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
    pub(super) async fn reconcile_loop(self: Arc<Self>) {
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

    pub(super) fn spawn_failover(&self, host_id: String) {
        // `apply` has `&self` only; the failover task needs an `Arc` that outlives it.
        if let Some(me) = self.this.get().and_then(std::sync::Weak::upgrade) {
            tokio::spawn(me.failover(host_id));
        }
    }

    /// Restart the HA VMs of a member that went down, after the restart delay, in rounds
    /// until none is left or the member is back. In the first rounds only the member that
    /// placement picks claims a VM; later any survivor does (the claim is a transaction on
    /// the record's revision, so exactly one wins).
    pub(super) async fn failover(self: Arc<Self>, dead: String) {
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

    pub(super) async fn claim_and_start(&self, mut rec: VmRecord, rev: u64) {
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
