//! Performance mode: spread workloads so the highest utilisation on any host is as low as it
//! can be made.
//!
//! Workloads are placed largest first on the host whose pressure (highest load / limit over
//! resources and hours) would be lowest afterwards, then a local search moves or swaps
//! workloads off the most pressed host while that lowers its pressure without raising another
//! host to the same level. Budgeted in fit checks, so the result is deterministic. On small
//! instances (at most [`EXACT_ITEMS`] workloads, all placed) a branch and bound over every
//! assignment then finds the lowest highest-pressure plan exactly, since the local search can
//! stop at a plan one swap of three cannot improve.

use crate::density::{order_items, SizeKey};
use crate::engine::{Instance, State};
use crate::repair::{repair, Repaired};

pub(crate) fn solve(inst: &Instance, effort: u32) -> (State<'_>, Repaired) {
    let mut st = State::new(inst);
    for &i in &order_items(inst, SizeKey::Sum) {
        let i = i as usize;
        let mut best: Option<(f64, usize)> = None;
        for h in 0..inst.hosts.len() {
            if st.fits(i, h) {
                let p = st.pressure_with(i, h);
                if best.is_none_or(|(bp, _)| p < bp - 1e-12) {
                    best = Some((p, h));
                }
            }
        }
        if let Some((_, h)) = best {
            st.place(i, h);
        }
    }
    let repaired = repair(&mut st, u64::from(effort));
    if effort > 0 {
        relieve(&mut st, 300_000 * u64::from(effort));
        exact(&mut st, 200_000 * u64::from(effort));
    }
    (st, repaired)
}

/// Instances up to this many items are searched exhaustively (within a node budget).
const EXACT_ITEMS: usize = 10;

fn max_pressure(st: &State) -> f64 {
    (0..st.inst.hosts.len())
        .filter(|&h| !st.on[h].is_empty())
        .map(|h| st.pressure(h))
        .fold(0.0, f64::max)
}

/// Branch and bound over every assignment of a small, fully placed instance: the lowest
/// highest pressure, everything still placed. Keeps the current plan if the budget runs out
/// before a better one is proven.
fn exact(st: &mut State, budget: u64) {
    let n = st.inst.items.len();
    if n == 0 || n > EXACT_ITEMS || st.host_of.contains(&crate::engine::NONE) {
        return;
    }
    let items: Vec<usize> = order_items(st.inst, SizeKey::Sum)
        .iter()
        .map(|&i| i as usize)
        .collect();
    let mut best = max_pressure(st);
    let incumbent: Vec<usize> = (0..n).map(|i| st.host_of[i] as usize).collect();
    for &i in &items {
        st.remove(i);
    }
    let mut found: Option<Vec<usize>> = None;
    let mut nodes = 0u64;
    let mut assign = vec![0usize; n];
    search(
        st,
        &items,
        0,
        0.0,
        &mut best,
        &mut assign,
        &mut found,
        &mut nodes,
        budget,
    );
    let plan = found.unwrap_or(incumbent);
    for (i, &h) in plan.iter().enumerate() {
        st.place(i, h);
    }
}

#[allow(clippy::too_many_arguments)]
fn search(
    st: &mut State,
    items: &[usize],
    k: usize,
    worst: f64,
    best: &mut f64,
    assign: &mut Vec<usize>,
    found: &mut Option<Vec<usize>>,
    nodes: &mut u64,
    budget: u64,
) {
    if k == items.len() {
        if worst < *best - 1e-12 {
            *best = worst;
            *found = Some(assign.clone());
        }
        return;
    }
    let i = items[k];
    // Hosts differ for items with a pin or required networks; otherwise empty hosts with
    // the same limits are interchangeable.
    let symmetric = st.inst.items.iter().all(|it| it.mask.is_none());
    let mut empty_tried = Vec::new();
    for h in 0..st.inst.hosts.len() {
        *nodes += 1;
        if *nodes > budget {
            return;
        }
        // Empty hosts with the same limits are interchangeable: try one of each kind.
        if symmetric && st.on[h].is_empty() {
            let key = &st.inst.hosts[h];
            let same = |g: usize| {
                let o = &st.inst.hosts[g];
                o.limit == key.limit && o.overhead == key.overhead && o.max_vms == key.max_vms
            };
            if empty_tried.iter().any(|&g| same(g)) {
                continue;
            }
            empty_tried.push(h);
        }
        if !st.fits(i, h) {
            continue;
        }
        let p = st.pressure_with(i, h);
        let w = worst.max(p);
        if w >= *best - 1e-12 {
            continue;
        }
        st.place(i, h);
        assign[i] = h;
        search(st, items, k + 1, w, best, assign, found, nodes, budget);
        st.remove(i);
    }
}

/// Move or swap items off the most pressed host while that strictly lowers it.
fn relieve(st: &mut State, budget: u64) {
    let start = st.work;
    let m = st.inst.hosts.len();
    while st.work - start <= budget {
        let Some((top, u)) = (0..m)
            .map(|h| (h, st.pressure(h)))
            .filter(|(h, _)| !st.on[*h].is_empty())
            .fold(None, |acc: Option<(usize, f64)>, (h, p)| match acc {
                Some((_, bp)) if bp >= p => acc,
                _ => Some((h, p)),
            })
        else {
            return;
        };
        if !(improve_move(st, top, u) || improve_swap(st, top, u)) {
            return;
        }
    }
}

fn movable(st: &State, top: usize) -> Vec<usize> {
    st.on[top]
        .iter()
        .map(|&i| i as usize)
        .filter(|&i| st.inst.items[i].pinned.is_none())
        .collect()
}

fn improve_move(st: &mut State, top: usize, u: f64) -> bool {
    let mut best: Option<(f64, usize, usize)> = None;
    for i in movable(st, top) {
        if st.pressure_without(i, top) >= u - 1e-9 {
            continue;
        }
        for g in 0..st.inst.hosts.len() {
            if g == top || !st.fits(i, g) {
                continue;
            }
            let p = st.pressure_with(i, g);
            if p < u - 1e-9 && best.is_none_or(|(bp, _, _)| p < bp - 1e-12) {
                best = Some((p, i, g));
            }
        }
    }
    match best {
        Some((_, i, g)) => {
            st.remove(i);
            st.place(i, g);
            true
        }
        None => false,
    }
}

fn improve_swap(st: &mut State, top: usize, u: f64) -> bool {
    for i in movable(st, top) {
        for g in 0..st.inst.hosts.len() {
            if g == top || st.on[g].is_empty() {
                continue;
            }
            let residents: Vec<usize> = st.on[g]
                .iter()
                .map(|&j| j as usize)
                .filter(|&j| st.inst.items[j].pinned.is_none())
                .collect();
            for j in residents {
                if st.inst.items[j].size >= st.inst.items[i].size {
                    continue;
                }
                st.remove(i);
                st.remove(j);
                let ok = st.fits(i, g) && st.fits(j, top) && {
                    st.place(i, g);
                    st.place(j, top);
                    let fine = st.pressure(g) < u - 1e-9 && st.pressure(top) < u - 1e-9;
                    if !fine {
                        st.remove(i);
                        st.remove(j);
                    }
                    fine
                };
                if ok {
                    return true;
                }
                st.place(i, top);
                st.place(j, g);
            }
        }
    }
    false
}
