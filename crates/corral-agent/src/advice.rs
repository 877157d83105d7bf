//! Placement advice on a live host: this host's capacity in the planner's model (for
//! `corral host info`) and `corral vm recommend-host NAME`, which rates hosts 0–5 for a VM with
//! the planner's `rate_hosts`.
//!
//! Flow of a recommendation: the VM's demand is its measured profile when the stats sampler
//! has history for it (the highest value of each metric in each hour of the day, over the 5 s
//! samples and the maxima of the minute and hour points: up to a week), else its configuration
//! (every vCPU busy at the host clock, its memory). Each candidate host is a `HostLoad`: its
//! capacity (all six resources, [`Agent::planner_host`]) plus the demand of the VMs running
//! there summed hour by hour, the VM itself left out (the question is where it should run,
//! wherever it runs now). The pool is this host, computed at once, and every other member as
//! it last published itself (`crate::pool`: capacity, hourly load and keep-apart groups in
//! its host record, refreshed every two seconds from [`Advisor::local_planner`]).

use crate::config::CapacityOverrides;
use crate::context::Host as HostContext;
use crate::error::Error;
use crate::stats::Stats;
use corral_model::stats::{HostRecommendation, HostScore, PlannerCapacity, StatsSample};
use corral_model::{PowerState, VmInfo};
use corral_placement::{
    rate_hosts, Demand, Host, HostLoad, PlanOptions, Workload, RESOURCES, TIME_BUCKETS,
};
use std::sync::Arc;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One sample (a coarse point's maximum) in planner units.
fn amounts(s: &StatsSample) -> [f64; RESOURCES] {
    let s = s.max.as_deref().unwrap_or(s);
    let mbit = |b: Option<f64>| b.unwrap_or(0.0) * 8.0 / 1e6;
    [
        s.cpu_ghz,
        s.memory_bytes as f64 / GIB,
        mbit(s.net_rx_bytes_per_s),
        mbit(s.net_tx_bytes_per_s),
        (s.disk_read_bytes_per_s.unwrap_or(0.0) + s.disk_write_bytes_per_s.unwrap_or(0.0)) / 1e6,
        s.disk_read_iops.unwrap_or(0.0) + s.disk_write_iops.unwrap_or(0.0),
    ]
}

/// Planner demand of a VM from its history (5 s samples, minute and hour points), or `None`
/// without any: the highest value seen in each hour of the day (UTC), the form `corral plan`
/// builds from a `corral measure` profile, so peaks at different hours can share a host. An
/// hour with no history yet counts at the highest value seen at any hour, since nothing says
/// it is quieter.
pub(crate) fn measured(history: &[StatsSample]) -> Option<Demand> {
    if history.is_empty() {
        return None;
    }
    let mut hours: Vec<Option<[f64; RESOURCES]>> = vec![None; TIME_BUCKETS];
    let mut peak: [f64; RESOURCES] = [0.0; RESOURCES];
    for s in history {
        // A coarse point's stamp is the end of its interval; its hour is the one it covers.
        let hour = (s.at_ms.saturating_sub(1) / 3_600_000 % 24) as usize;
        let a = amounts(s);
        let slot = hours[hour].get_or_insert([0.0; RESOURCES]);
        for k in 0..RESOURCES {
            slot[k] = slot[k].max(a[k]);
            peak[k] = peak[k].max(a[k]);
        }
    }
    Some(Demand::from_series(
        hours.into_iter().map(|h| h.unwrap_or(peak)).collect(),
    ))
}

/// What placement advice works with: the host's VMs, their measured statistics, and the
/// capacity figures the admin configured.
pub struct Advisor {
    pub host: Arc<HostContext>,
    pub stats: Arc<Stats>,
    pub hostname: String,
    pub capacity: CapacityOverrides,
    /// The other members' published capacity and load.
    pub pool: Arc<crate::pool::Pool>,
}

impl Advisor {
    /// This host in the planner's model: [`corral_measure::host_capacity`] (the same model
    /// `corral measure` and `corral plan` use) with the figures the admin stated in the
    /// configuration put in their place. Every figure is finite, so ratings weigh all six
    /// resources; the notes say where each came from.
    pub fn planner_host(&self) -> (Host, Vec<String>) {
        let (mut host, mut notes) = match corral_measure::host_capacity("/") {
            Ok(c) => (c.host, c.notes),
            Err(e) => {
                // Not expected on Linux; keep advice working on the configured figures.
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
                let mut h = Host::new(&self.hostname, cores, 1.0, 1.0, 1000.0, 150.0);
                h.iops = Some(150.0);
                (
                    h,
                    vec![format!(
                        "the host could not be measured ({e}); {cores} cores × 1 GHz, 1 GiB, \
                         1000 Mbit/s, 150 MB/s and 150 IOPS assumed"
                    )],
                )
            }
        };
        host.name = self.hostname.clone();
        let o = &self.capacity;
        // A configured figure replaces the notes about what it replaces.
        let set = |notes: &mut Vec<String>, what: &str, value: String, replaces: &[&str]| {
            notes.retain(|n| !replaces.iter().any(|p| n.starts_with(p)));
            notes.push(format!("{what}: {value} set by configuration"));
        };
        if let Some(c) = o.cores {
            host.cores = c;
            set(&mut notes, "cores", c.to_string(), &["cores:"]);
        }
        if let Some(g) = o.ghz {
            host.ghz = g;
            set(&mut notes, "clock", format!("{g} GHz"), &["clock:"]);
        }
        if let Some(m) = o.memory_gib {
            host.memory_gib = m;
            set(&mut notes, "memory", format!("{m} GiB"), &["memory:"]);
        }
        if let Some(n) = o.net_mbps {
            host.net_mbps = n;
            set(
                &mut notes,
                "network",
                format!("{n} Mbit/s"),
                &["NIC ", "no physical NIC"],
            );
        }
        // The per-disk notes give both figures; they go once both are configured (removed
        // before either configured note is added).
        let disk_notes: &[&str] = if o.disk_mbps.is_some() && o.iops.is_some() {
            &["disk ", "no disk found"]
        } else {
            &[]
        };
        if let Some(d) = o.disk_mbps {
            host.disk_mbps = d;
            set(
                &mut notes,
                "disk bandwidth",
                format!("{d} MB/s"),
                disk_notes,
            );
        }
        if let Some(i) = o.iops {
            host.iops = Some(i);
            set(&mut notes, "disk IOPS", format!("{i}"), &[]);
        }
        host.networks = self
            .host
            .list_networks()
            .into_iter()
            .map(|n| n.name)
            .collect();
        (host, notes)
    }

    /// This host in the planner's model, as `host info` shows it.
    pub fn planner_capacity(&self) -> PlannerCapacity {
        let (host, notes) = self.planner_host();
        PlannerCapacity {
            name: host.name,
            cores: host.cores,
            ghz: host.ghz,
            memory_gib: host.memory_gib,
            net_mbps: host.net_mbps,
            disk_mbps: host.disk_mbps,
            iops: host.iops.unwrap_or(f64::INFINITY),
            networks: host.networks,
            notes,
        }
    }

    /// What a VM needs in planner units, and whether that was measured or configured.
    fn vm_demand(&self, info: &VmInfo, ghz: f64) -> (Demand, &'static str) {
        let running = matches!(info.power_state, PowerState::Running | PowerState::Paused);
        let history = if running {
            self.stats.history(&info.id)
        } else {
            Vec::new()
        };
        match measured(&history) {
            Some(d) => (d, "measured"),
            None => (
                Demand::constant([
                    f64::from(info.vcpus) * ghz,
                    info.memory_bytes as f64 / GIB,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                ]),
                "configured",
            ),
        }
    }

    /// This host's load hour by hour (running VMs but `except`), VM count and keep-apart
    /// groups.
    fn local_load(&self, host: &Host, except: &str) -> (Vec<[f64; RESOURCES]>, u32, Vec<String>) {
        // Peaks of different VMs at different hours do not add.
        let mut load = vec![[0.0; RESOURCES]; TIME_BUCKETS];
        let mut vms = 0;
        let mut apart = Vec::new();
        for info in self.host.list_vms() {
            if info.id == except
                || !matches!(info.power_state, PowerState::Running | PowerState::Paused)
            {
                continue;
            }
            let (d, _) = self.vm_demand(&info, host.ghz);
            for (hour, l) in load.iter_mut().enumerate() {
                for (l, x) in l.iter_mut().zip(d.at(hour)) {
                    *l += x;
                }
            }
            vms += 1;
            apart.extend(info.ha.apart.clone());
        }
        (load, vms, apart)
    }

    /// This host as the pool's other members see it (published in its host record).
    pub fn local_planner(&self) -> crate::pool::LocalPlanner {
        let (host, _) = self.planner_host();
        let (load_hourly, _, apart_groups) = self.local_load(&host, "");
        crate::pool::LocalPlanner {
            capacity: Some(self.planner_capacity()),
            load_hourly,
            apart_groups,
        }
    }

    /// Every host a VM could go to, with what already runs there (`except` left out): this
    /// host computed now, the other members as they last published themselves.
    pub fn pool_loads(&self, except: &str) -> Vec<HostLoad> {
        let (mut host, _) = self.planner_host();
        host.name = self.host.host_name.clone();
        let (load, vms, apart_groups) = self.local_load(&host, except);
        let mut out = vec![HostLoad {
            host,
            load: Demand::from_series(load),
            vms,
            apart_groups,
        }];
        out.extend(
            self.pool
                .member_loads()
                .into_iter()
                .filter(|(id, _)| *id != self.host.host_id)
                .map(|(_, l)| l),
        );
        out
    }

    /// `GET /v1/vms/{name}/recommend-host`.
    pub fn recommend_host(&self, name: &str) -> Result<HostRecommendation, Error> {
        let info = match self.host.vm(name) {
            Ok(h) => h.info(),
            Err(e) => self.pool.remote_vm(name).ok_or(e)?,
        };
        let pool = self.pool_loads(&info.id);
        let ghz = pool.first().map_or(1.0, |h| h.host.ghz);
        let (demand, basis) = self.vm_demand(&info, ghz);
        let mut workload = Workload::new(&info.name, 0.0, 0.0, 0.0, 0.0);
        let peak = demand.peak;
        workload.demand = demand;
        workload.networks = info.nics.iter().map(|n| n.network.clone()).collect();
        workload.networks.sort();
        workload.networks.dedup();
        workload.apart = info.ha.apart.iter().cloned().collect();
        let ratings = rate_hosts(&workload, &pool, &PlanOptions::default());
        Ok(HostRecommendation {
            vm: info.name.clone(),
            basis: basis.to_string(),
            demand: corral_placement::Resource::ALL
                .iter()
                .map(|r| (r.key().to_string(), peak[*r as usize]))
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

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn point(at_ms: u64, cpu: f64, peak_cpu: Option<f64>) -> StatsSample {
        StatsSample {
            at_ms,
            cpu_ghz: cpu,
            memory_bytes: 1 << 30,
            max: peak_cpu.map(|p| {
                Box::new(StatsSample {
                    at_ms,
                    cpu_ghz: p,
                    memory_bytes: 2 << 30,
                    ..StatsSample::default()
                })
            }),
            ..StatsSample::default()
        }
    }

    #[test]
    fn history_becomes_an_hourly_profile_of_maxima() {
        assert!(measured(&[]).is_none());
        // A busy hour point ending at 03:00 (covers 02:00-03:00), a quiet one ending at 15:00
        // whose mean hides a burst, and a 5 s sample at 15:30.
        let d = measured(&[
            point(3 * HOUR, 2.0, Some(2.5)),
            point(15 * HOUR, 0.1, Some(1.5)),
            point(15 * HOUR + HOUR / 2, 0.2, None),
        ])
        .expect("history");
        let series = d.series.as_ref().expect("hourly");
        assert_eq!(series.len(), TIME_BUCKETS);
        assert_eq!(series[2][0], 2.5, "the busy hour at its maximum");
        assert_eq!(series[14][0], 1.5, "the burst is not averaged away");
        assert_eq!(series[15][0], 0.2);
        assert_eq!(
            series[7][0], 2.5,
            "an hour without history counts at the peak"
        );
        assert_eq!(d.peak[0], 2.5);
        assert_eq!(d.peak[1], 2.0, "memory at its highest");
    }
}
