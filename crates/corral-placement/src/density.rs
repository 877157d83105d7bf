//! Density mode: as few hosts as possible.
//!
//! A portfolio of constructive heuristics runs on the same [`Instance`]: first-fit decreasing
//! under three size measures (sum, largest resource, sum of squares of the normalised demand),
//! best-fit decreasing, and a bin-oriented "minimum bin slack" fill that seeds each host with the
//! largest remaining workload and searches (depth-first, with a node budget) for the set of
//! remaining workloads that fills it best. The plan with fewest unplaced workloads, then fewest
//! hosts, wins, and a local search then tries to empty the least-filled hosts by moving and
//! swapping their workloads onto the others. Every step is budgeted in fit checks, never in
//! wall-clock time, so the same input always gives the same plan. The reference first-fit
//! decreasing is part of the portfolio, so the result never uses more hosts than it.

use crate::engine::{FitTree, Instance, State, NONE};
use crate::repair::{repair, Repaired};
use std::cmp::Ordering;

/// Item orders the portfolio tries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SizeKey {
    Sum,
    Max,
    Squares,
}

/// Pinned items first (they have no choice), then decreasing size, ties by index.
pub(crate) fn order_items(inst: &Instance, key: SizeKey) -> Vec<u32> {
    let size = |i: usize| {
        let it = &inst.items[i];
        match key {
            SizeKey::Sum => it.size,
            SizeKey::Max => it.max_dim + 1e-6 * it.size,
            SizeKey::Squares => it.sq,
        }
    };
    let mut order: Vec<u32> = (0..inst.items.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        let pa = inst.items[a].pinned.is_some();
        let pb = inst.items[b].pinned.is_some();
        pb.cmp(&pa)
            .then(size(b).total_cmp(&size(a)))
            .then(a.cmp(&b))
    });
    order
}

/// First-fit over hosts in `inst.host_order`, items in `order`.
pub(crate) fn first_fit<'a>(inst: &'a Instance, order: &[u32]) -> State<'a> {
    let mut st = State::new(inst);
    let hosts = &inst.host_order;
    let mut tree = FitTree::new(&st, hosts);
    for &i in order {
        let i = i as usize;
        if let Some(pos) = tree.first_fit(&mut st, hosts, i) {
            st.place(i, hosts[pos] as usize);
            tree.update(&st, hosts, pos);
        }
    }
    st
}

/// The reference first-fit decreasing: sum of normalised demand, hosts largest first.
pub(crate) fn reference_ffd(inst: &Instance) -> State<'_> {
    first_fit(inst, &order_items(inst, SizeKey::Sum))
}

/// Best-fit: the open host left fullest; a new host only when no open host fits.
fn best_fit<'a>(inst: &'a Instance, order: &[u32]) -> State<'a> {
    let mut st = State::new(inst);
    let mut open: Vec<usize> = Vec::new();
    let mut next_new = 0usize;
    for &i in order {
        let i = i as usize;
        let mut best: Option<(f64, usize)> = None;
        for &h in &open {
            if st.fits(i, h) {
                let f = fill_after(&st, i, h);
                if best.is_none_or(|(bf, _)| f > bf + 1e-12) {
                    best = Some((f, h));
                }
            }
        }
        if let Some((_, h)) = best {
            st.place(i, h);
            continue;
        }
        // Open the first unused host (in order) that takes it; hosts skipped stay available.
        let mut placed = false;
        for pos in next_new..inst.host_order.len() {
            let h = inst.host_order[pos] as usize;
            if st.on[h].is_empty() && st.fits(i, h) {
                st.place(i, h);
                open.push(h);
                placed = true;
                break;
            }
        }
        if placed {
            while next_new < inst.host_order.len()
                && !st.on[inst.host_order[next_new] as usize].is_empty()
            {
                next_new += 1;
            }
        }
    }
    st
}

/// Fill of host `h` (sum of peak / limit over active resources) if item `i` joined it.
fn fill_after(st: &State, i: usize, h: usize) -> f64 {
    let inst = st.inst;
    let hc = &inst.hosts[h];
    (0..crate::engine::D)
        .filter(|&d| inst.active[d] && hc.limit[d].is_finite() && hc.limit[d] > 0.0)
        .map(|d| st.peak_with(i, h, d) / hc.limit[d])
        .sum()
}

fn perfect_fill(inst: &Instance, h: usize) -> f64 {
    let hc = &inst.hosts[h];
    (0..crate::engine::D)
        .filter(|&d| inst.active[d] && hc.limit[d].is_finite() && hc.limit[d] > 0.0)
        .count() as f64
}

/// Minimum bin slack: fill one host at a time with the subset of remaining items that leaves
/// the least room, always including the largest remaining item that fits.
fn min_bin_slack<'a>(inst: &'a Instance, order: &[u32], node_limit: u64) -> State<'a> {
    let mut st = State::new(inst);
    let mut remaining: Vec<u32> = Vec::with_capacity(order.len());
    for &i in order {
        if let Some(p) = inst.items[i as usize].pinned {
            if st.fits(i as usize, p as usize) {
                st.place(i as usize, p as usize);
            }
        } else {
            remaining.push(i);
        }
    }
    for &h in &inst.host_order {
        let h = h as usize;
        if remaining.is_empty() {
            break;
        }
        let seed = if st.on[h].is_empty() {
            match remaining.iter().position(|&i| st.fits(i as usize, h)) {
                Some(p) => {
                    let i = remaining.remove(p);
                    st.place(i as usize, h);
                    true
                }
                None => false,
            }
        } else {
            true
        };
        if !seed {
            continue;
        }
        let cands: Vec<u32> = remaining
            .iter()
            .copied()
            .filter(|&i| st.fits(i as usize, h))
            .collect();
        let mut search = Fill {
            h,
            best: Vec::new(),
            best_fill: st.fill(h),
            cur: Vec::new(),
            nodes: 0,
            limit: node_limit,
            perfect: perfect_fill(inst, h),
        };
        search.dfs(&mut st, &cands, 0);
        for &i in &search.best {
            st.place(i as usize, h);
        }
        remaining.retain(|&i| st.host_of[i as usize] == NONE);
    }
    st
}

struct Fill {
    h: usize,
    best: Vec<u32>,
    best_fill: f64,
    cur: Vec<u32>,
    nodes: u64,
    limit: u64,
    perfect: f64,
}

impl Fill {
    /// Returns true to stop the whole search (perfect fill found or budget spent).
    fn dfs(&mut self, st: &mut State, cands: &[u32], start: usize) -> bool {
        for p in start..cands.len() {
            if self.nodes >= self.limit {
                return true;
            }
            self.nodes += 1;
            let i = cands[p] as usize;
            if !st.fits(i, self.h) {
                continue;
            }
            st.place(i, self.h);
            self.cur.push(i as u32);
            let f = st.fill(self.h);
            let mut stop = false;
            if f > self.best_fill + 1e-12 {
                self.best_fill = f;
                self.best.clone_from(&self.cur);
                stop = f >= self.perfect - 1e-9;
            }
            if !stop {
                stop = self.dfs(st, cands, p + 1);
            }
            self.cur.pop();
            st.remove(i);
            if stop {
                return true;
            }
        }
        false
    }
}

/// Lexicographic quality of a density plan: fewer unplaced workloads, then fewer hosts.
fn better(a: &State, b: &State) -> bool {
    match a.unplaced_workloads().cmp(&b.unplaced_workloads()) {
        Ordering::Less => true,
        Ordering::Greater => false,
        Ordering::Equal => a.hosts_used() < b.hosts_used(),
    }
}

/// Run the portfolio, repair what it left unplaced, then the local search; the best plan
/// found and whether no plan places more workloads.
pub(crate) fn solve(inst: &Instance, effort: u32) -> (State<'_>, Repaired) {
    let n = inst.items.len();
    let m = inst.hosts.len();
    let effort = u64::from(effort);
    let mut best = reference_ffd(inst);
    fn consider<'a>(s: State<'a>, best: &mut State<'a>) {
        if better(&s, best) {
            *best = s;
        }
    }
    // Large pools get the two cheapest orders; smaller ones the whole portfolio.
    let large = (n as u64) * (m as u64) > 2_000_000;
    let keys: &[SizeKey] = if large {
        &[SizeKey::Max]
    } else {
        &[SizeKey::Max, SizeKey::Squares]
    };
    for &key in keys {
        let s = first_fit(inst, &order_items(inst, key));
        consider(s, &mut best);
    }
    if effort > 0 && (n as u64) * (m as u64) <= 2_000_000 {
        for key in [SizeKey::Sum, SizeKey::Max] {
            let s = best_fit(inst, &order_items(inst, key));
            consider(s, &mut best);
        }
    }
    if effort > 0 && n <= 4000 {
        for key in [SizeKey::Sum, SizeKey::Max, SizeKey::Squares] {
            let s = min_bin_slack(inst, &order_items(inst, key), 4000 * effort);
            consider(s, &mut best);
        }
    }
    let repaired = repair(&mut best, effort);
    if effort > 0 {
        empty_hosts(&mut best, if large { 40_000 } else { 300_000 } * effort);
    }
    (best, repaired)
}

/// Local search: try to empty the least-filled hosts by moving their items onto other used
/// hosts (best fit), or by swapping an item into a host whose displaced item moves elsewhere.
pub(crate) fn empty_hosts(st: &mut State, budget: u64) {
    let start = st.work;
    loop {
        let mut used: Vec<usize> = (0..st.inst.hosts.len())
            .filter(|&h| !st.on[h].is_empty())
            .collect();
        let fills: Vec<f64> = used.iter().map(|&h| st.fill(h)).collect();
        let mut idx: Vec<usize> = (0..used.len()).collect();
        idx.sort_by(|&a, &b| fills[a].total_cmp(&fills[b]).then(used[a].cmp(&used[b])));
        used = idx.iter().map(|&k| used[k]).collect();
        let mut improved = false;
        for &h in &used {
            if st.work - start > budget {
                return;
            }
            // Pinned items cannot leave.
            if st.on[h]
                .iter()
                .any(|&i| st.inst.items[i as usize].pinned.is_some())
            {
                continue;
            }
            if try_empty(st, h, &used, start + budget) {
                improved = true;
                break;
            }
        }
        if !improved {
            return;
        }
    }
}

/// Move every item off `h`, or undo everything and return false (also when the work counter
/// passes `stop_at`, so one attempt cannot overrun the budget).
fn try_empty(st: &mut State, h: usize, used: &[usize], stop_at: u64) -> bool {
    let mut items: Vec<u32> = st.on[h].clone();
    items.sort_by(|&a, &b| {
        st.inst.items[b as usize]
            .size
            .total_cmp(&st.inst.items[a as usize].size)
            .then(a.cmp(&b))
    });
    // (item, host it was on before the move), in the order moves happened.
    let mut journal: Vec<(u32, usize)> = Vec::new();
    for &i in &items {
        let i = i as usize;
        st.remove(i);
        journal.push((i as u32, h));
        let mut best: Option<(f64, usize)> = None;
        for &g in used {
            if g != h && !st.on[g].is_empty() && st.fits(i, g) {
                let f = fill_after(st, i, g);
                if best.is_none_or(|(bf, _)| f > bf + 1e-12) {
                    best = Some((f, g));
                }
            }
        }
        if let Some((_, g)) = best {
            st.place(i, g);
            continue;
        }
        if st.work > stop_at || !swap_in(st, i, h, used, &mut journal, stop_at) {
            rollback(st, &journal);
            return false;
        }
    }
    true
}

/// Put `i` on some used host `g` by moving one of `g`'s items `j` to a third used host.
fn swap_in(
    st: &mut State,
    i: usize,
    h: usize,
    used: &[usize],
    journal: &mut Vec<(u32, usize)>,
    stop_at: u64,
) -> bool {
    for &g in used {
        if st.work > stop_at {
            return false;
        }
        if g == h || st.on[g].is_empty() || !st.allowed(i, g) {
            continue;
        }
        let residents: Vec<u32> = st.on[g].clone();
        for &j in &residents {
            let j = j as usize;
            if st.inst.items[j].pinned.is_some() {
                continue;
            }
            st.remove(j);
            if st.fits(i, g) {
                st.place(i, g);
                for &k in used {
                    if k != h && k != g && !st.on[k].is_empty() && st.fits(j, k) {
                        st.place(j, k);
                        journal.push((j as u32, g));
                        return true;
                    }
                }
                st.remove(i);
            }
            st.place(j, g);
        }
    }
    false
}

fn rollback(st: &mut State, journal: &[(u32, usize)]) {
    for &(i, from) in journal.iter().rev() {
        st.remove(i as usize);
        st.place(i as usize, from);
    }
}
