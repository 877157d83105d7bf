//! Placement across the pool and ownership moves: which member a VM goes to (the planner's
//! ratings over every member's published capacity and load), moving a halted VM to another
//! member (one transaction on its record's revision), evacuating a member, forgetting one.

use super::*;

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
        Need {
            apart: rec.ha.apart.clone(),
            ..Need::of_spec(&rec.spec)
        }
    }

    /// The same from a VM as front ends see it.
    pub fn of_info(info: &VmInfo) -> Need {
        Need {
            name: info.name.clone(),
            vcpus: info.vcpus,
            memory_bytes: info.memory_bytes,
            networks: networks(&info.nics),
            apart: info.ha.apart.clone(),
            exclude_host: None,
        }
    }

    fn of_spec(spec: &corral_model::VmSpec) -> Need {
        Need {
            name: spec.name.clone(),
            vcpus: spec.vcpus,
            memory_bytes: spec.memory_bytes,
            networks: networks(&spec.nics),
            apart: None,
            exclude_host: None,
        }
    }
}

/// The networks a VM's NICs need, each once.
fn networks(nics: &[corral_model::Nic]) -> Vec<String> {
    let mut n: Vec<String> = nics.iter().map(|n| n.network.clone()).collect();
    n.sort();
    n.dedup();
    n
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

impl Pool {
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
        if !self.is_clustered() {
            // A one-host pool: this host, if it is the one asked for.
            return Ok((self.host.host_id.clone(), self.host.host_name.clone()));
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

    /// The member that owns the VM with id `vm_id`, as the view has it.
    pub fn owner_of(&self, vm_id: &str) -> Option<String> {
        self.read().vms.get(vm_id).map(|(r, _)| r.host.clone())
    }

    /// Whether `path` lies in a shared repository (every member sees it).
    pub fn is_on_shared_sr(&self, path: &std::path::Path) -> bool {
        self.read()
            .shared_srs
            .values()
            .any(|sr| path.starts_with(&sr.path))
    }

    pub(super) fn record_of(&self, key: &str) -> Option<(VmRecord, u64)> {
        let v = self.read();
        let id = v.id_of(key);
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
                    "VM {:?} is {}: a running VM moves with `corral vm migrate`",
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

    /// `host evacuate`: every VM off `name`: halted ones on shared storage change owner,
    /// running ones migrate live (their owner drives it; the answer names each task); the
    /// others are refused with the reason.
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
            let moved = if rec.power_state == PowerState::Halted {
                self.move_vm(&vm, &target.0).await.map(|_| None)
            } else {
                // A running VM migrates live, driven by its owner.
                let req = corral_model::migrate::MigrateRequest {
                    to: target.1.clone(),
                    ..Default::default()
                };
                self.call::<corral_model::migrate::MigrateAnswer>(
                    &rec.host,
                    &format!("/v1/vms/{}/migrate", rec.spec.name),
                    &req,
                    Duration::from_secs(60),
                )
                .await
                .map(|a| a.task)
            };
            match moved {
                Ok(task) => answer.moved.push(MovedVm {
                    vm,
                    to: target.1,
                    task,
                }),
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
}
