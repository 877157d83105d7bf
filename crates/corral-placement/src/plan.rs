//! The planner's entry point and its answer.
//!
//! [`plan`] validates the inputs, compiles them, runs the chosen mode's search, and turns the
//! winning assignment into a [`Plan`]: assignments, per-host utilisation of every resource
//! (with hourly curves when demands have series), unplaced workloads with the reason, lower
//! bounds on the hosts needed, and one [`Decision`] per placement saying what it did to the
//! chosen host and why other hosts were not used.

use crate::bound;
use crate::engine::{compile, Instance, Misfit, State, D, MEM, NONE};
use crate::model::{validate, Host, Mode, ModelError, PlanOptions, Workload};
use crate::resource::{percent, Resource};
use crate::{density, performance, repair};
use serde::{Deserialize, Serialize};

/// A complete plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub mode: Mode,
    /// The cap applied to every resource, as a fraction.
    pub max_utilisation: f64,
    pub hosts_used: usize,
    pub hosts_available: usize,
    /// One entry per placed workload, in input order.
    pub assignments: Vec<Assignment>,
    /// Workloads that could not be placed, with the reason.
    pub unplaced: Vec<Unplaced>,
    /// Every host, used or not, in input order.
    pub hosts: Vec<HostReport>,
    /// Why each workload went where it went.
    pub decisions: Vec<Decision>,
    pub bounds: Bounds,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub workload: String,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unplaced {
    pub workload: String,
    pub reason: String,
}

/// One host's load after the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    pub used: bool,
    pub workloads: Vec<String>,
    pub resources: Vec<ResourceUse>,
}

/// Load of one resource on one host. Utilisations are fractions of the raw capacity; memory
/// includes the host's reserve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceUse {
    pub resource: Resource,
    /// Raw capacity (`null` when not limited).
    pub capacity: Option<f64>,
    /// Most the plan lets it reach (`null` when not limited).
    pub limit: Option<f64>,
    /// Highest load over the day.
    pub peak: f64,
    /// `peak / capacity`.
    pub utilisation: f64,
    /// `limit − peak`: what is still free under the cap (`null` when not limited).
    pub headroom: Option<f64>,
    /// Utilisation per hour of the day (UTC); empty when no workload has a series.
    pub hourly: Vec<f64>,
}

/// Change of one resource on the chosen host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub resource: Resource,
    pub before: f64,
    pub after: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub host: String,
    pub reason: String,
}

/// Why a workload (or keep-together group) went to its host. Computed on the final plan: the
/// chosen host without and with the workload, and the other hosts, with every other workload
/// where the plan puts it (not replayed from the moment of the heuristic's decision, since the
/// improvement phase moves workloads afterwards).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The workload, or the members of a keep-together group joined with `+`.
    pub workload: String,
    pub host: String,
    /// Utilisation of the chosen host without and with this workload (fractions).
    pub changes: Vec<Change>,
    /// Hosts that could not take it, with the reason (the first few in host order).
    pub rejected: Vec<Rejection>,
    /// Used hosts that could also have taken it.
    pub alternatives: Vec<String>,
    /// The whole decision as one sentence.
    pub summary: String,
}

/// Lower bounds on the number of hosts the placed workloads need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Volume bound: hosts needed if every resource could be poured like water.
    pub volume: usize,
    /// Linear-programming bound (configuration LP, solved with an LP solver) when computed.
    pub lp: Option<f64>,
    /// True when the LP was cut short (pricing or round limit): `lp` is then the best Farley
    /// bound found, valid but weaker than the LP optimum.
    #[serde(default)]
    pub lp_truncated: bool,
    /// True when `hosts_used` equals a lower bound and every unplaced workload fits no host
    /// even alone, so no plan places more workloads or uses fewer hosts.
    pub proven_optimal: bool,
    /// True when no valid plan places more workloads than this one: every unplaced workload
    /// fits no host even alone, or an exhaustive search over all arrangements showed it.
    pub max_placed_proven: bool,
}

/// Plan `workloads` onto `hosts`.
pub fn plan(
    hosts: &[Host],
    workloads: &[Workload],
    options: &PlanOptions,
) -> Result<Plan, ModelError> {
    validate(hosts, workloads, options)?;
    let inst = compile(hosts, workloads, options)?;
    let (st, repaired) = match options.mode {
        Mode::Density => density::solve(&inst, options.effort),
        Mode::Performance => performance::solve(&inst, options.effort),
    };
    Ok(report(
        &inst,
        st,
        repaired.max_placed_proven,
        hosts,
        workloads,
        options,
    ))
}

/// Plan with the reference first-fit decreasing only (for comparisons and benchmarks).
pub fn plan_first_fit_decreasing(
    hosts: &[Host],
    workloads: &[Workload],
    options: &PlanOptions,
) -> Result<Plan, ModelError> {
    validate(hosts, workloads, options)?;
    let inst = compile(hosts, workloads, options)?;
    let mut st = density::reference_ffd(&inst);
    // Effort 0: no repair, only the check whether what is unplaced could be placed at all.
    let repaired = repair::repair(&mut st, 0);
    Ok(report(
        &inst,
        st,
        repaired.max_placed_proven,
        hosts,
        workloads,
        options,
    ))
}

fn item_name(inst: &Instance, workloads: &[Workload], i: usize) -> String {
    inst.items[i]
        .members
        .iter()
        .map(|&m| workloads[m].name.as_str())
        .collect::<Vec<_>>()
        .join("+")
}

/// Utilisation of resource `d` on host `h` for a VM load (memory adds the reserve).
fn util(inst: &Instance, h: usize, d: usize, load: f64) -> f64 {
    let hc = &inst.hosts[h];
    let base = if d == MEM { hc.reserve } else { 0.0 };
    if hc.cap[d].is_finite() && hc.cap[d] > 0.0 {
        (load + base) / hc.cap[d]
    } else {
        0.0
    }
}

fn limit_util(inst: &Instance, h: usize, d: usize) -> f64 {
    util(inst, h, d, inst.hosts[h].limit[d])
}

/// Why item `i` does not fit host `h` in state `st`, in words.
fn misfit_text(
    st: &State,
    hosts: &[Host],
    workloads: &[Workload],
    i: usize,
    h: usize,
    why: &Misfit,
) -> String {
    let inst = st.inst;
    let it = &inst.items[i];
    match why {
        Misfit::Mask => {
            if let Some(p) = it.pinned {
                if p as usize != h {
                    return format!("pinned to host {}", hosts[p as usize].name);
                }
            }
            let mut missing: Vec<&str> = Vec::new();
            for &m in &it.members {
                for n in &workloads[m].networks {
                    if !hosts[h].networks.contains(n) && !missing.contains(&n.as_str()) {
                        missing.push(n);
                    }
                }
            }
            format!("does not reach network {}", missing.join(", "))
        }
        Misfit::MaxVms => format!(
            "already has {} VMs (at most {})",
            st.vms[h], inst.hosts[h].max_vms
        ),
        Misfit::Apart(g) => {
            let other = st.on[h]
                .iter()
                .flat_map(|&j| inst.items[j as usize].members.iter())
                .find(|&&m| {
                    workloads[m]
                        .apart
                        .iter()
                        .any(|a| a == &inst.apart_names[*g as usize])
                })
                .map(|&m| workloads[m].name.clone())
                .unwrap_or_default();
            format!(
                "keep-apart group {}: {} is there",
                inst.apart_names[*g as usize], other
            )
        }
        Misfit::Capacity { resource, after } => {
            let r = Resource::ALL[*resource];
            format!(
                "{} would reach {} (limit {})",
                r.label(),
                percent(util(inst, h, *resource, *after)),
                percent(limit_util(inst, h, *resource))
            )
        }
    }
}

fn report(
    inst: &Instance,
    mut st: State,
    max_placed_proven: bool,
    hosts: &[Host],
    workloads: &[Workload],
    options: &PlanOptions,
) -> Plan {
    let t = inst.t;
    let mut assignments = Vec::new();
    let mut host_of_workload: Vec<Option<usize>> = vec![None; workloads.len()];
    for (i, it) in inst.items.iter().enumerate() {
        if st.host_of[i] != NONE {
            for &m in &it.members {
                host_of_workload[m] = Some(st.host_of[i] as usize);
            }
        }
    }
    for (m, w) in workloads.iter().enumerate() {
        if let Some(h) = host_of_workload[m] {
            assignments.push(Assignment {
                workload: w.name.clone(),
                host: hosts[h].name.clone(),
            });
        }
    }

    let host_reports = (0..hosts.len())
        .map(|h| {
            let hc = &inst.hosts[h];
            let mut names: Vec<(usize, String)> = st.on[h]
                .iter()
                .flat_map(|&i| inst.items[i as usize].members.iter())
                .map(|&m| (m, workloads[m].name.clone()))
                .collect();
            names.sort();
            let resources = Resource::ALL
                .iter()
                .map(|&r| {
                    let d = r as usize;
                    let peak = st.peak(h, d);
                    let base = if d == MEM { hc.reserve } else { 0.0 };
                    let finite = hc.cap[d].is_finite();
                    ResourceUse {
                        resource: r,
                        capacity: finite.then_some(hc.cap[d]),
                        limit: finite.then_some(hc.limit[d] + base),
                        peak: peak + base,
                        utilisation: util(inst, h, d, peak),
                        headroom: finite.then_some(hc.limit[d] - peak),
                        hourly: if t > 1 {
                            (0..t)
                                .map(|b| util(inst, h, d, st.load[h * t * D + b * D + d]))
                                .collect()
                        } else {
                            Vec::new()
                        },
                    }
                })
                .collect();
            HostReport {
                host: hosts[h].name.clone(),
                used: !st.on[h].is_empty(),
                workloads: names.into_iter().map(|(_, n)| n).collect(),
                resources,
            }
        })
        .collect();

    let mut unplaced = Vec::new();
    for i in 0..inst.items.len() {
        if st.host_of[i] == NONE {
            let reason = unplaced_reason(&st, hosts, workloads, i, max_placed_proven);
            for &m in &inst.items[i].members {
                unplaced.push((
                    m,
                    Unplaced {
                        workload: workloads[m].name.clone(),
                        reason: reason.clone(),
                    },
                ));
            }
        }
    }
    unplaced.sort_by_key(|(m, _)| *m);
    let unplaced = unplaced.into_iter().map(|(_, u)| u).collect();

    let decisions = if options.explain {
        let mut order: Vec<usize> = (0..inst.items.len())
            .filter(|&i| st.host_of[i] != NONE)
            .collect();
        order.sort_by_key(|&i| inst.items[i].members[0]);
        order
            .into_iter()
            .map(|i| explain(&mut st, hosts, workloads, i, options.mode))
            .collect()
    } else {
        Vec::new()
    };

    let hosts_used = st.hosts_used();
    let volume = bound::volume_bound(inst, &st);
    let (lp, lp_truncated) = match options.effort {
        0 => (None, false),
        _ => match bound::configuration_lp_bound(inst, &st) {
            Some((v, cut)) => (Some(v), cut),
            None => (None, false),
        },
    };
    let best_bound = lp.map_or(volume, |v| volume.max((v - 1e-6).ceil() as usize));
    // The bounds count only placed workloads, so they speak for the whole plan only when no
    // unplaced workload could be in any plan at all.
    let mut empty = State::new(inst);
    let nothing_placeable_left = (0..inst.items.len())
        .all(|i| st.host_of[i] != NONE || !repair::placeable_alone(&mut empty, i));
    Plan {
        mode: options.mode,
        max_utilisation: options.max_utilisation,
        hosts_used,
        hosts_available: hosts.len(),
        assignments,
        unplaced,
        hosts: host_reports,
        decisions,
        bounds: Bounds {
            volume,
            lp,
            lp_truncated,
            proven_optimal: options.mode == Mode::Density
                && hosts_used <= best_bound
                && nothing_placeable_left,
            max_placed_proven: max_placed_proven || nothing_placeable_left,
        },
    }
}

fn explain(
    st: &mut State,
    hosts: &[Host],
    workloads: &[Workload],
    i: usize,
    mode: Mode,
) -> Decision {
    let inst = st.inst;
    let h = st.host_of[i] as usize;
    let it = &inst.items[i];
    st.remove(i);
    let mut changes = Vec::new();
    for r in Resource::ALL {
        let d = r as usize;
        if (it.peak[d] > 0.0 || d <= MEM) && inst.hosts[h].cap[d].is_finite() {
            changes.push(Change {
                resource: r,
                before: util(inst, h, d, st.peak(h, d)),
                after: util(inst, h, d, st.peak_with(i, h, d)),
            });
        }
    }
    let my_pressure = st.pressure_with(i, h);
    let mut rejected = Vec::new();
    let mut alternatives = Vec::new();
    let mut unused_fitting = 0usize;
    for &g in &inst.host_order {
        let g = g as usize;
        if g == h {
            continue;
        }
        if rejected.len() >= 3 && alternatives.len() >= 3 {
            break;
        }
        // The reason is worked out only while it is shown (the first three); past that a
        // quick fit check (constraints, then loads with an early exit) is enough, which is
        // most of the cost on a large pool of full hosts.
        let why = if rejected.len() < 3 {
            st.misfit(i, g)
        } else if st.allowed(i, g) && st.fits_load(i, g) {
            None
        } else {
            continue;
        };
        match why {
            Some(why) => {
                rejected.push(Rejection {
                    host: hosts[g].name.clone(),
                    reason: misfit_text(st, hosts, workloads, i, g, &why),
                });
            }
            None if st.on[g].is_empty() && mode == Mode::Density => unused_fitting += 1,
            None => {
                if alternatives.len() < 3 {
                    alternatives.push((g, st.pressure_with(i, g)));
                }
            }
        }
    }
    st.place(i, h);

    let name = item_name(inst, workloads, i);
    let mut summary = format!("{name} → host {}: ", hosts[h].name);
    summary.push_str(
        &changes
            .iter()
            .map(|c| {
                format!(
                    "{} {} → {}",
                    c.resource.label(),
                    percent(c.before),
                    percent(c.after)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    for r in &rejected {
        summary.push_str(&format!("; host {} rejected: {}", r.host, r.reason));
    }
    match mode {
        Mode::Density => {
            if !alternatives.is_empty() {
                summary.push_str(&format!(
                    "; also fits on {} (kept here to leave room for larger workloads)",
                    alternatives
                        .iter()
                        .map(|(g, _)| format!("host {}", hosts[*g].name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if unused_fitting > 0 {
                summary.push_str("; unused hosts stay empty to keep the host count down");
            }
        }
        Mode::Performance => {
            for (g, p) in &alternatives {
                summary.push_str(&format!(
                    "; host {} would be at {} of its limit (here {})",
                    hosts[*g].name,
                    percent(*p),
                    percent(my_pressure)
                ));
            }
        }
    }
    Decision {
        workload: name,
        host: hosts[h].name.clone(),
        changes,
        rejected,
        alternatives: alternatives
            .into_iter()
            .map(|(g, _)| hosts[g].name.clone())
            .collect(),
        summary,
    }
}

fn unplaced_reason(
    st: &State,
    hosts: &[Host],
    workloads: &[Workload],
    i: usize,
    proven: bool,
) -> String {
    let inst = st.inst;
    let it = &inst.items[i];
    let prefix = if it.members.len() > 1 {
        format!("keep-together group {}: ", item_name(inst, workloads, i))
    } else {
        String::new()
    };
    // Would it fit an empty host at all?
    let empty = State::new(inst);
    let alone: Vec<(usize, Option<Misfit>)> =
        (0..hosts.len()).map(|h| (h, empty.misfit(i, h))).collect();
    if alone.iter().all(|(_, m)| m.is_some()) {
        if alone.iter().all(|(_, m)| *m == Some(Misfit::Mask)) {
            return match it.pinned {
                Some(p) => format!(
                    "{prefix}pinned to host {}, which {}",
                    hosts[p as usize].name,
                    misfit_text(&empty, hosts, workloads, i, p as usize, &Misfit::Mask)
                ),
                None => format!(
                    "{prefix}{} on every host",
                    misfit_text(&empty, hosts, workloads, i, 0, &Misfit::Mask)
                ),
            };
        }
        if alone.iter().all(|(_, m)| *m == Some(Misfit::MaxVms)) {
            return format!(
                "{prefix}needs {} VMs on one host, more than any host allows",
                it.vms
            );
        }
        // Name a resource that no host can hold.
        for d in 0..D {
            let need = it.peak[d];
            let best = (0..hosts.len())
                .filter(|&h| it.mask.is_none_or(|m| inst.masks[m as usize][h]))
                .map(|h| {
                    (
                        inst.hosts[h].limit[d]
                            - f64::from(it.vms)
                                * if d == MEM {
                                    inst.hosts[h].overhead
                                } else {
                                    0.0
                                },
                        h,
                    )
                })
                .fold(None, |acc: Option<(f64, usize)>, (l, h)| match acc {
                    Some((bl, _)) if bl >= l => acc,
                    _ => Some((l, h)),
                });
            if let Some((most, h)) = best {
                if need > most + 1e-9 * most.max(1.0) {
                    let r = Resource::ALL[d];
                    return format!(
                        "{prefix}larger than any host: needs {} of {}, the most any host allows is {} (host {}: {} of {}{})",
                        r.format_amount(need),
                        r.label(),
                        r.format_amount(most.max(0.0)),
                        hosts[h].name,
                        percent(inst.hosts[h].limit[d] / inst.hosts[h].cap[d] + if d == MEM { inst.hosts[h].reserve / inst.hosts[h].cap[d] } else { 0.0 }),
                        r.format_amount(inst.hosts[h].cap[d]),
                        if d == MEM { format!(", less {} reserved", r.format_amount(inst.hosts[h].reserve)) } else { String::new() }
                    );
                }
            }
        }
        let why: Vec<String> = alone
            .iter()
            .take(3)
            .filter_map(|(h, m)| {
                m.as_ref().map(|m| {
                    format!(
                        "host {}: {}",
                        hosts[*h].name,
                        misfit_text(&empty, hosts, workloads, i, *h, m)
                    )
                })
            })
            .collect();
        return format!(
            "{prefix}no host can hold all of it at once: {}",
            why.join("; ")
        );
    }
    let mut why: Vec<String> = Vec::new();
    let mut more = 0usize;
    for &h in &inst.host_order {
        let h = h as usize;
        if let Some(m) = st.misfit(i, h) {
            if why.len() < 3 {
                why.push(format!(
                    "host {}: {}",
                    hosts[h].name,
                    misfit_text(st, hosts, workloads, i, h, &m)
                ));
            } else {
                more += 1;
            }
        }
    }
    let tail = if more > 0 {
        format!(" (and {more} more hosts)")
    } else {
        String::new()
    };
    let verdict = if proven {
        "no arrangement of the placed workloads leaves room for it (every arrangement was checked)"
    } else {
        "no room found (the search budget ran out; another arrangement might still fit it)"
    };
    format!("{prefix}{verdict}: {}{tail}", why.join("; "))
}
