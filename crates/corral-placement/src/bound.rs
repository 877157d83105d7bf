//! Lower bounds on the number of hosts a set of workloads needs.
//!
//! The volume bound pours each resource (and each hour) into the largest hosts first. The
//! configuration-LP bound is the linear relaxation of "choose host fillings (configurations)
//! covering every workload", the strongest classic bound for vector bin packing. It is computed
//! through its dual with the `good_lp` modeller and the `microlp` solver: maximise Σ πᵢ subject to
//! Σ_{i∈c} πᵢ ≤ 1 for every configuration c found so far; an exact branch-and-bound on a
//! surrogate-relaxed knapsack finds the configuration the current π violates most, which is
//! added as a cut until none is violated. Every round also yields Farley's bound Σπ / max_c π(c),
//! so stopping early still gives a valid bound. It applies when hosts are interchangeable
//! (same limits, no per-workload host masks); otherwise only the volume bound is reported.

use crate::engine::{Instance, State, D, MEM, NONE};
use good_lp::{microlp, variable, Expression, ProblemVariables, Solution, SolverModel, Variable};

/// Hosts needed if every resource of every hour could be split freely across hosts.
pub(crate) fn volume_bound(inst: &Instance, st: &State) -> usize {
    let placed: Vec<usize> = (0..inst.items.len())
        .filter(|&i| st.host_of[i] != NONE)
        .collect();
    if placed.is_empty() {
        return 0;
    }
    let min_overhead = inst
        .hosts
        .iter()
        .map(|h| h.overhead)
        .fold(f64::INFINITY, f64::min);
    let mut best = 1usize;
    for d in 0..D {
        let mut limits: Vec<f64> = inst.hosts.iter().map(|h| h.limit[d]).collect();
        limits.sort_by(|a, b| b.total_cmp(a));
        for b in 0..inst.t {
            let mut total: f64 = placed.iter().map(|&i| inst.items[i].dem[b * D + d]).sum();
            if d == MEM {
                total += placed
                    .iter()
                    .map(|&i| f64::from(inst.items[i].vms))
                    .sum::<f64>()
                    * min_overhead;
            }
            let mut acc = 0.0;
            let mut k = 0usize;
            while k < limits.len() && acc < total - 1e-9 * total.max(1.0) {
                acc += limits[k];
                k += 1;
            }
            best = best.max(k);
        }
    }
    let max_vms = inst
        .hosts
        .iter()
        .map(|h| h.max_vms)
        .max()
        .unwrap_or(u32::MAX);
    let vms: u64 = placed.iter().map(|&i| u64::from(inst.items[i].vms)).sum();
    if max_vms < u32::MAX && max_vms > 0 {
        best = best.max(vms.div_ceil(u64::from(max_vms)) as usize);
    }
    best
}

/// The configuration-LP bound for the placed items, when hosts are interchangeable and the
/// instance is small enough to be worth it, and whether it was cut short (see [`config_lp`]).
pub(crate) fn configuration_lp_bound(inst: &Instance, st: &State) -> Option<(f64, bool)> {
    let placed: Vec<usize> = (0..inst.items.len())
        .filter(|&i| st.host_of[i] != NONE)
        .collect();
    if placed.is_empty() || placed.len() > 200 {
        return None;
    }
    let h0 = &inst.hosts[0];
    let interchangeable = inst
        .hosts
        .iter()
        .all(|h| h.limit == h0.limit && h.overhead == h0.overhead && h.max_vms == h0.max_vms)
        && placed.iter().all(|&i| inst.items[i].mask.is_none());
    if !interchangeable {
        return None;
    }
    let mut configs: Vec<Vec<usize>> = Vec::new();
    for h in 0..inst.hosts.len() {
        if !st.on[h].is_empty() {
            configs.push(
                st.on[h]
                    .iter()
                    .filter_map(|&i| placed.iter().position(|&p| p == i as usize))
                    .collect(),
            );
        }
    }
    config_lp(inst, &placed, configs, 200, 200_000)
}

/// Column generation in the dual. `items` are item indexes; `configs` hold positions in `items`.
/// Returns the bound and whether it was cut short: when the pricing search runs out of nodes
/// or the rounds run out, the bound is the best Farley bound so far, a valid but weaker one
/// (it can be below the volume bound).
pub(crate) fn config_lp(
    inst: &Instance,
    items: &[usize],
    mut configs: Vec<Vec<usize>>,
    max_rounds: usize,
    node_limit: u64,
) -> Option<(f64, bool)> {
    let n = items.len();
    let pricer = Pricer::new(inst, items);
    let mut best_bound: f64 = 0.0;
    for _ in 0..max_rounds {
        let mut vars = ProblemVariables::new();
        let pi: Vec<Variable> = (0..n)
            .map(|_| vars.add(variable().min(0.0).max(1.0)))
            .collect();
        let objective: Expression = pi.iter().sum();
        let mut model = vars.maximise(objective).using(microlp);
        for c in &configs {
            let e: Expression = c.iter().map(|&k| pi[k]).sum();
            model = model.with(e.leq(1.0));
        }
        let solution = model.solve().ok()?;
        let values: Vec<f64> = pi.iter().map(|&v| solution.value(v).max(0.0)).collect();
        let total: f64 = values.iter().sum();
        // If the exact pricing runs out of nodes, the Farley bounds of earlier rounds stand.
        let Some((value, config)) = pricer.best_config(&values, node_limit) else {
            break;
        };
        if value > 0.0 {
            best_bound = best_bound.max(total / value.max(1.0));
        }
        if value <= 1.0 + 1e-7 {
            return Some((best_bound.max(total), false));
        }
        configs.push(config);
    }
    (best_bound > 0.0).then_some((best_bound, true))
}

/// Exact maximum-value host filling for dual prices, by depth-first branch and bound.
struct Pricer<'a> {
    inst: &'a Instance,
    items: Vec<usize>,
    /// Surrogate weight: sum over limited resources and hours of demand / limit.
    weight: Vec<f64>,
    capacity: f64,
}

impl<'a> Pricer<'a> {
    fn new(inst: &'a Instance, items: &[usize]) -> Pricer<'a> {
        let h = &inst.hosts[0];
        let limited: Vec<usize> = (0..D)
            .filter(|&d| h.limit[d].is_finite() && h.limit[d] > 0.0)
            .collect();
        let weight = items
            .iter()
            .map(|&i| {
                let it = &inst.items[i];
                let mut w = 0.0;
                for b in 0..inst.t {
                    for &d in &limited {
                        let extra = if d == MEM {
                            f64::from(it.vms) * h.overhead
                        } else {
                            0.0
                        };
                        w += (it.dem[b * D + d] + extra) / h.limit[d];
                    }
                }
                w
            })
            .collect();
        Pricer {
            inst,
            items: items.to_vec(),
            weight,
            capacity: (limited.len() * inst.t) as f64,
        }
    }

    /// Best value and its configuration (positions in `items`), or `None` if the search ran out.
    fn best_config(&self, prices: &[f64], node_limit: u64) -> Option<(f64, Vec<usize>)> {
        let mut order: Vec<usize> = (0..self.items.len())
            .filter(|&k| prices[k] > 1e-9)
            .collect();
        order.sort_by(|&a, &b| {
            let ra = prices[a] / self.weight[a].max(1e-12);
            let rb = prices[b] / self.weight[b].max(1e-12);
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        let mut st = State::new(self.inst);
        let mut search = Search {
            order: &order,
            prices,
            pricer: self,
            best: 0.0,
            best_set: Vec::new(),
            cur: Vec::new(),
            nodes: 0,
            limit: node_limit,
            exhausted: false,
        };
        search.dfs(&mut st, 0, 0.0, 0.0);
        if search.exhausted {
            return None;
        }
        Some((search.best, search.best_set))
    }
}

struct Search<'s, 'a> {
    order: &'s [usize],
    prices: &'s [f64],
    pricer: &'s Pricer<'a>,
    best: f64,
    best_set: Vec<usize>,
    cur: Vec<usize>,
    nodes: u64,
    limit: u64,
    exhausted: bool,
}

impl Search<'_, '_> {
    /// Surrogate fractional-knapsack upper bound on what positions `from..` can still add.
    fn bound(&self, from: usize, used: f64) -> f64 {
        let mut room = self.pricer.capacity - used;
        let mut add = 0.0;
        for &k in &self.order[from..] {
            if room <= 0.0 {
                break;
            }
            let w = self.pricer.weight[k];
            if w <= room {
                add += self.prices[k];
                room -= w;
            } else {
                add += self.prices[k] * room / w;
                room = 0.0;
            }
        }
        add
    }

    fn dfs(&mut self, st: &mut State, from: usize, value: f64, used: f64) {
        if value > self.best + 1e-12 {
            self.best = value;
            self.best_set.clone_from(&self.cur);
        }
        for p in from..self.order.len() {
            if self.exhausted {
                return;
            }
            if value + self.bound(p, used) <= self.best + 1e-12 {
                return;
            }
            self.nodes += 1;
            if self.nodes > self.limit {
                self.exhausted = true;
                return;
            }
            let k = self.order[p];
            let i = self.pricer.items[k];
            if !st.fits(i, 0) {
                continue;
            }
            st.place(i, 0);
            self.cur.push(k);
            self.dfs(
                st,
                p + 1,
                value + self.prices[k],
                used + self.pricer.weight[k],
            );
            self.cur.pop();
            st.remove(i);
        }
    }
}
