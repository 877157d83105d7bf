//! Placement advice on a live host: this host's capacity in the planner's model (for
//! `corral host info`) and `corral vm recommend-host NAME`, which rates hosts 0–5 for a VM with
//! the planner's `rate_hosts`.
//!
//! Flow of a recommendation: the VM's demand is its measured profile when the stats sampler
//! has 5 s points for it (p95 of each metric, memory at its highest), else its configuration
//! (every vCPU busy at the host clock, its memory). Each candidate host is a `HostLoad`: its
//! capacity plus the summed demand of the VMs running there, the VM itself left out (the
//! question is where it should run, wherever it runs now). Today the pool is this host alone
//! ([`Agent::pool_loads`]); a pool of hosts plugs in by returning one `HostLoad` per member,
//! with nothing else changing.

use crate::agent::Agent;
use corral_model::stats::{HostRecommendation, HostScore, PlannerCapacity, StatsSample};
use corral_model::{ApiError, PowerState, VmInfo};
use corral_placement::{rate_hosts, Demand, Host, HostLoad, PlanOptions, Workload, RESOURCES};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Total speed of the physical NICs (those with a `device` link) in Mbit/s, if reported.
fn nic_speed_mbps() -> Option<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/sys/class/net").ok()?.flatten() {
        let p = entry.path();
        if !p.join("device").exists() {
            continue;
        }
        let speed: f64 = std::fs::read_to_string(p.join("speed"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1.0);
        if speed > 0.0 {
            total += speed;
        }
    }
    (total > 0.0).then_some(total)
}

/// Planner demand of a VM from its 5 s samples, or `None` without samples.
fn measured(samples: &[StatsSample]) -> Option<[f64; RESOURCES]> {
    if samples.is_empty() {
        return None;
    }
    let p95 = |f: &dyn Fn(&StatsSample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let rank = ((0.95 * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    let mbit = |b: Option<f64>| b.unwrap_or(0.0) * 8.0 / 1e6;
    Some([
        p95(&|s| s.cpu_ghz),
        samples
            .iter()
            .map(|s| s.memory_bytes as f64 / GIB)
            .fold(0.0, f64::max),
        p95(&|s| mbit(s.net_rx_bytes_per_s)),
        p95(&|s| mbit(s.net_tx_bytes_per_s)),
        p95(&|s| {
            (s.disk_read_bytes_per_s.unwrap_or(0.0) + s.disk_write_bytes_per_s.unwrap_or(0.0)) / 1e6
        }),
        p95(&|s| s.disk_read_iops.unwrap_or(0.0) + s.disk_write_iops.unwrap_or(0.0)),
    ])
}

impl Agent {
    /// This host in the planner's model.
    pub fn planner_capacity(&self) -> PlannerCapacity {
        let cpu = crate::host::cpu_facts();
        let (memory_bytes, _) = crate::host::memory();
        let mut notes = Vec::new();
        let ghz = if cpu.mhz > 0.0 {
            cpu.mhz / 1000.0
        } else {
            notes.push("the CPU clock is not reported in /proc/cpuinfo; 1 GHz assumed".into());
            1.0
        };
        let net_mbps = nic_speed_mbps();
        if net_mbps.is_none() {
            notes.push(
                "no physical NIC reports its speed; network is not limited in ratings".into(),
            );
        }
        notes.push(
            "disk bandwidth and IOPS are not measured by the agent; not limited in ratings".into(),
        );
        PlannerCapacity {
            name: self.hostname.clone(),
            cores: cpu.cores,
            ghz,
            memory_gib: memory_bytes as f64 / GIB,
            net_mbps,
            disk_mbps: None,
            iops: None,
            networks: self
                .list_networks()
                .unwrap_or_default()
                .into_iter()
                .map(|n| n.name)
                .collect(),
            notes,
        }
    }

    /// What a VM needs in planner units, and whether that was measured or configured.
    fn vm_demand(&self, info: &VmInfo, ghz: f64) -> ([f64; RESOURCES], &'static str) {
        let running = matches!(info.power_state, PowerState::Running | PowerState::Paused);
        let samples = if running {
            self.recent_samples(&info.id)
        } else {
            Vec::new()
        };
        match measured(&samples) {
            Some(d) => (d, "measured"),
            None => (
                [
                    f64::from(info.vcpus) * ghz,
                    info.memory_bytes as f64 / GIB,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                ],
                "configured",
            ),
        }
    }

    /// Every host a VM could go to, with what already runs there (`except` left out). Today
    /// that is this host; a pool returns one entry per member.
    pub fn pool_loads(&self, except: &str) -> Vec<HostLoad> {
        let cap = self.planner_capacity();
        let mut host = Host::new(
            &cap.name,
            cap.cores,
            cap.ghz,
            cap.memory_gib,
            cap.net_mbps.unwrap_or(f64::INFINITY),
            cap.disk_mbps.unwrap_or(f64::INFINITY),
        );
        host.iops = cap.iops;
        host.networks = cap.networks.clone();
        let mut load = [0.0; RESOURCES];
        let mut vms = 0;
        for info in self.list_vms() {
            if info.id == except
                || !matches!(info.power_state, PowerState::Running | PowerState::Paused)
            {
                continue;
            }
            let (d, _) = self.vm_demand(&info, cap.ghz);
            for (l, x) in load.iter_mut().zip(d) {
                *l += x;
            }
            vms += 1;
        }
        vec![HostLoad {
            host,
            load: Demand::constant(load),
            vms,
            apart_groups: Vec::new(),
        }]
    }

    /// `GET /v1/vms/{name}/recommend-host`.
    pub fn recommend_host(&self, name: &str) -> Result<HostRecommendation, ApiError> {
        let info = self.vm(name)?.info();
        let pool = self.pool_loads(&info.id);
        let ghz = pool.first().map_or(1.0, |h| h.host.ghz);
        let (demand, basis) = self.vm_demand(&info, ghz);
        let mut workload = Workload::new(&info.name, 0.0, 0.0, 0.0, 0.0);
        workload.demand = Demand::constant(demand);
        workload.networks = info.nics.iter().map(|n| n.network.clone()).collect();
        workload.networks.sort();
        workload.networks.dedup();
        let ratings = rate_hosts(&workload, &pool, &PlanOptions::default());
        Ok(HostRecommendation {
            vm: info.name.clone(),
            basis: basis.to_string(),
            demand: corral_placement::Resource::ALL
                .iter()
                .map(|r| (r.key().to_string(), demand[*r as usize]))
                .collect(),
            hosts: ratings
                .into_iter()
                .map(|r| HostScore {
                    host: r.host,
                    score: r.score,
                    reasons: r.reasons.iter().map(|x| x.to_string()).collect(),
                })
                .collect(),
        })
    }
}
