//! Single placement: rate every host 0–5 for one workload, with the reasons.
//!
//! This is the question `corral vm recommend-host` asks of a running pool, so it works on hosts
//! with their current load (a [`Demand`], optionally hourly) instead of a whole plan, and it is
//! a single pass over the hosts: about a microsecond per host. A host that cannot take the
//! workload scores 0; one that can scores from 1 (it would sit at its cap) to 5 (it stays
//! empty), by the headroom left on its most loaded resource.

use crate::model::{Demand, Host, PlanOptions, Workload, TIME_BUCKETS};
use crate::resource::{percent, Resource, RESOURCES};
use serde::{Deserialize, Serialize};

/// A host and what already runs on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostLoad {
    pub host: Host,
    /// Current load of its VMs (memory without the host reserve).
    pub load: Demand,
    /// VMs running on it.
    pub vms: u32,
    /// Keep-apart groups of the VMs on it.
    #[serde(default)]
    pub apart_groups: Vec<String>,
}

/// One host's rating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRating {
    pub host: String,
    /// 0 (cannot take it) to 5 (plenty of room), one decimal.
    pub score: f64,
    pub reasons: Vec<Reason>,
}

/// Why a host got its score. Utilisations are fractions of raw capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The resource goes from `before` to `after`, within `limit`.
    Load {
        resource: Resource,
        before: f64,
        after: f64,
    },
    /// The resource would exceed its limit.
    Over {
        resource: Resource,
        after: f64,
        limit: f64,
    },
    MissingNetwork {
        network: String,
    },
    PinnedElsewhere {
        host: String,
    },
    KeepApart {
        group: String,
    },
    MaxVms {
        max: u32,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Load {
                resource,
                before,
                after,
            } => {
                write!(
                    f,
                    "{} {} → {}",
                    resource.label(),
                    percent(*before),
                    percent(*after)
                )
            }
            Reason::Over {
                resource,
                after,
                limit,
            } => write!(
                f,
                "{} would reach {} (limit {})",
                resource.label(),
                percent(*after),
                percent(*limit)
            ),
            Reason::MissingNetwork { network } => write!(f, "does not reach network {network}"),
            Reason::PinnedElsewhere { host } => write!(f, "workload is pinned to host {host}"),
            Reason::KeepApart { group } => {
                write!(f, "keep-apart group {group} already has a member here")
            }
            Reason::MaxVms { max } => write!(f, "already runs {max} VMs, the most allowed"),
        }
    }
}

/// Rate every host for `workload`, best first (ties keep the input order).
pub fn rate_hosts(
    workload: &Workload,
    hosts: &[HostLoad],
    options: &PlanOptions,
) -> Vec<HostRating> {
    let mut out: Vec<HostRating> = hosts
        .iter()
        .map(|h| rate_one(workload, h, options))
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

fn rate_one(w: &Workload, hl: &HostLoad, options: &PlanOptions) -> HostRating {
    let host = &hl.host;
    let mut reasons = Vec::new();
    let mut blocked = false;
    if let Some(p) = &w.host {
        if p != &host.name {
            blocked = true;
            reasons.push(Reason::PinnedElsewhere { host: p.clone() });
        }
    }
    for n in &w.networks {
        if !host.networks.contains(n) {
            blocked = true;
            reasons.push(Reason::MissingNetwork { network: n.clone() });
        }
    }
    for g in &w.apart {
        if hl.apart_groups.contains(g) {
            blocked = true;
            reasons.push(Reason::KeepApart { group: g.clone() });
        }
    }
    let max_vms = match (host.max_vms, options.max_vms_per_host) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(max) = max_vms {
        if hl.vms >= max {
            blocked = true;
            reasons.push(Reason::MaxVms { max });
        }
    }
    let cap = host.capacity();
    let reserve = host
        .reserve_memory_gib
        .unwrap_or(options.reserve_memory_gib);
    let overhead = host.vm_overhead_gib.unwrap_or(options.vm_overhead_gib);
    let mem = Resource::Memory as usize;
    let mut before = [0.0f64; RESOURCES];
    let mut after = [0.0f64; RESOURCES];
    if w.demand.series.is_none() && hl.load.series.is_none() {
        before = hl.load.peak;
        for d in 0..RESOURCES {
            after[d] = before[d] + w.demand.peak[d];
        }
    } else {
        for b in 0..TIME_BUCKETS {
            let (l, x) = (hl.load.at(b), w.demand.at(b));
            for d in 0..RESOURCES {
                before[d] = before[d].max(l[d]);
                after[d] = after[d].max(l[d] + x[d]);
            }
        }
    }
    before[mem] += reserve;
    after[mem] += reserve + overhead;
    let mut worst: f64 = 0.0;
    for r in Resource::ALL {
        let d = r as usize;
        if !cap[d].is_finite() || cap[d] <= 0.0 {
            continue;
        }
        let (ub, ua) = (before[d] / cap[d], after[d] / cap[d]);
        let limit = if d == mem {
            host.max_utilisation.unwrap_or(options.max_utilisation) * options.memory_overcommit
        } else {
            host.max_utilisation.unwrap_or(options.max_utilisation)
        };
        if ua > limit + 1e-9 {
            blocked = true;
            reasons.push(Reason::Over {
                resource: r,
                after: ua,
                limit,
            });
        } else if w.demand.peak[d] > 0.0 || d <= mem {
            reasons.push(Reason::Load {
                resource: r,
                before: ub,
                after: ua,
            });
        }
        worst = worst.max(ua / limit);
    }
    let score = if blocked {
        0.0
    } else {
        ((1.0 + 4.0 * (1.0 - worst)).clamp(1.0, 5.0) * 10.0).round() / 10.0
    };
    if blocked {
        reasons.retain(|r| !matches!(r, Reason::Load { .. }));
    }
    HostRating {
        host: host.name.clone(),
        score,
        reasons,
    }
}
