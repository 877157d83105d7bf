//! Performance mode: spread workloads so the highest utilisation on any host is as low as it
//! can be made.
//!
//! Workloads are placed largest first on the host whose pressure (highest load / limit over
//! resources and hours) would be lowest afterwards, then a local search moves or swaps
//! workloads off the most pressed host while that lowers its pressure without raising another
//! host to the same level. Budgeted in fit checks, so the result is deterministic.

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
    }
    (st, repaired)
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
