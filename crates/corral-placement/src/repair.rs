//! Placing what the constructive heuristics left out, and proving when nothing more fits.
//!
//! Greedy placement decides one workload at a time and never revisits a choice, so a
//! keep-apart group or a tight resource can strand a workload that a different arrangement
//! would place (web1 takes the host web2 needed, while db1 and mail filled the other). Both
//! modes call [`repair`] after their constructive phase:
//!
//! 1. Workloads that fit no host even when it is empty (too large, no host reaches their
//!    networks, pinned to a host too small) cannot be in any plan; they stay out, and that is
//!    proven.
//! 2. Ejection chains: for a stranded item, pick a host, move off the residents that block it
//!    (keep-apart partners first, then the residents that free the most of the resources it
//!    lacks), place it, and re-insert the displaced residents the same way, a few levels deep,
//!    with every move journalled and undone if the chain fails.
//! 3. On instances small enough, an exact depth-first search over all arrangements (one branch
//!    per host plus "leave it out", identical empty hosts tried once) finds the largest number
//!    of workloads any valid plan places. When it completes, the count is proven maximal;
//!    when its node budget runs out, the plan keeps the best it found and says it is unproven.
//!
//! Placed workloads are counted by members, so a keep-together group of three weighs three.
//! All effort is counted in fit checks and nodes, never time, so the result is deterministic.

use crate::engine::{Instance, State, D, NONE};

/// Outcome of a repair: whether no valid plan places more workloads than the state does.
pub(crate) struct Repaired {
    pub max_placed_proven: bool,
}

/// Workloads an item stands for.
fn weight(inst: &Instance, i: usize) -> u64 {
    inst.items[i].members.len() as u64
}

/// Does item `i` fit some host when that host is empty? If not, no plan can place it.
pub(crate) fn placeable_alone(empty: &mut State, i: usize) -> bool {
    (0..empty.inst.hosts.len()).any(|h| empty.fits(i, h))
}

/// Try to place every unplaced item; see the module documentation.
pub(crate) fn repair(st: &mut State, effort: u64) -> Repaired {
    let inst = st.inst;
    let mut empty = State::new(inst);
    let alone: Vec<bool> = (0..inst.items.len())
        .map(|i| placeable_alone(&mut empty, i))
        .collect();
    let stranded = |st: &State| -> Vec<usize> {
        let mut v: Vec<usize> = (0..inst.items.len())
            .filter(|&i| st.host_of[i] == NONE && alone[i])
            .collect();
        v.sort_by(|&a, &b| {
            inst.items[b]
                .size
                .total_cmp(&inst.items[a].size)
                .then(a.cmp(&b))
        });
        v
    };
    if stranded(st).is_empty() {
        return Repaired {
            max_placed_proven: true,
        };
    }
    if effort == 0 {
        return Repaired {
            max_placed_proven: false,
        };
    }

    let stop_at = st.work + 200_000 * effort;
    for i in stranded(st) {
        if st.work > stop_at {
            break;
        }
        let mut journal = Vec::new();
        let mut tabu = vec![i];
        insert(st, i, 3, &mut tabu, &mut journal, stop_at);
    }
    if stranded(st).is_empty() {
        return Repaired {
            max_placed_proven: true,
        };
    }

    // Exact search where it can finish: a few dozen items.
    if inst.items.len() <= 64 {
        let current: u64 = (0..inst.items.len())
            .filter(|&i| st.host_of[i] != NONE)
            .map(|i| weight(inst, i))
            .sum();
        let (best, complete) = exact_max_placed(inst, &alone, current, 2_000_000 * effort);
        if let Some(host_of) = best {
            let mut fresh = State::new(inst);
            fresh.work = st.work;
            for (i, &h) in host_of.iter().enumerate() {
                if h != NONE {
                    fresh.place(i, h as usize);
                }
            }
            *st = fresh;
        }
        return Repaired {
            max_placed_proven: complete || stranded(st).is_empty(),
        };
    }
    Repaired {
        max_placed_proven: false,
    }
}

/// Move item `i` to host `to` (or off every host with `NONE`), remembering where it was.
fn shift(st: &mut State, journal: &mut Vec<(u32, u32)>, i: usize, to: u32) {
    journal.push((i as u32, st.host_of[i]));
    st.remove(i);
    if to != NONE {
        st.place(i, to as usize);
    }
}

/// Undo the journal back to `mark` entries.
fn undo(st: &mut State, journal: &mut Vec<(u32, u32)>, mark: usize) {
    while journal.len() > mark {
        let Some((i, from)) = journal.pop() else {
            break;
        };
        st.remove(i as usize);
        if from != NONE {
            st.place(i as usize, from as usize);
        }
    }
}

/// The host that takes `i` as it stands: the fullest used host, else the largest unused one.
fn direct_host(st: &mut State, i: usize) -> Option<usize> {
    let inst = st.inst;
    let mut best: Option<(f64, usize)> = None;
    for &h in &inst.host_order {
        let h = h as usize;
        if !st.on[h].is_empty() && st.fits(i, h) {
            let f = st.fill(h);
            if best.is_none_or(|(bf, _)| f > bf + 1e-12) {
                best = Some((f, h));
            }
        }
    }
    if let Some((_, h)) = best {
        return Some(h);
    }
    for &h in &inst.host_order {
        let h = h as usize;
        if st.on[h].is_empty() && st.fits(i, h) {
            return Some(h);
        }
    }
    None
}

/// Place `i` (currently unplaced), displacing at most two residents of one host and
/// re-inserting them recursively (`depth` levels). Items in `tabu` are not displaced again.
/// On failure every move since the call is undone.
fn insert(
    st: &mut State,
    i: usize,
    depth: u32,
    tabu: &mut Vec<usize>,
    journal: &mut Vec<(u32, u32)>,
    stop_at: u64,
) -> bool {
    if let Some(h) = direct_host(st, i) {
        shift(st, journal, i, h as u32);
        return true;
    }
    if depth == 0 {
        return false;
    }
    let inst = st.inst;
    let it = &inst.items[i];
    // Used hosts first: displacing onto empty hosts is what direct placement already tried.
    let mut hosts: Vec<usize> = inst.host_order.iter().map(|&h| h as usize).collect();
    hosts.sort_by_key(|&h| st.on[h].is_empty());
    for h in hosts {
        if st.work > stop_at {
            return false;
        }
        if st.on[h].is_empty() {
            continue;
        }
        if let Some(m) = it.mask {
            if !inst.masks[m as usize][h] {
                continue;
            }
        }
        let mark = journal.len();
        let tabu_mark = tabu.len();
        let mut ejected: Vec<usize> = Vec::new();
        let mut ok = true;
        // Keep-apart partners must go.
        let partners: Vec<usize> = st.on[h]
            .iter()
            .map(|&j| j as usize)
            .filter(|&j| inst.items[j].apart.iter().any(|g| it.apart.contains(g)))
            .collect();
        for j in partners {
            if inst.items[j].pinned.is_some() || tabu.contains(&j) {
                ok = false;
                break;
            }
            shift(st, journal, j, NONE);
            ejected.push(j);
        }
        // Then whoever frees most of what is missing, until it fits.
        while ok && !st.fits(i, h) {
            if ejected.len() >= 2 {
                ok = false;
                break;
            }
            let lacking = lacking(st, i, h);
            let pick = st.on[h]
                .iter()
                .map(|&j| j as usize)
                .filter(|&j| inst.items[j].pinned.is_none() && !tabu.contains(&j))
                .map(|j| {
                    let frees: f64 = (0..D)
                        .filter(|&d| lacking[d] > 0.0)
                        .map(|d| (inst.items[j].peak[d] / lacking[d]).min(1.0))
                        .sum::<f64>()
                        + if st.vms[h].saturating_add(it.vms) > inst.hosts[h].max_vms {
                            1.0
                        } else {
                            0.0
                        };
                    (frees, j)
                })
                .filter(|&(f, _)| f > 0.0)
                .fold(None, |acc: Option<(f64, usize)>, (f, j)| match acc {
                    Some((bf, _)) if bf >= f => acc,
                    _ => Some((f, j)),
                });
            match pick {
                Some((_, j)) => {
                    shift(st, journal, j, NONE);
                    ejected.push(j);
                }
                None => ok = false,
            }
        }
        if ok {
            shift(st, journal, i, h as u32);
            tabu.extend_from_slice(&ejected);
            for &j in &ejected {
                if !insert(st, j, depth - 1, tabu, journal, stop_at) {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return true;
        }
        tabu.truncate(tabu_mark);
        undo(st, journal, mark);
    }
    false
}

/// Per resource, how much item `i` lacks on host `h` in its worst hour (0 where it fits).
fn lacking(st: &State, i: usize, h: usize) -> [f64; D] {
    let hc = &st.inst.hosts[h];
    let mut out = [0.0; D];
    for (d, o) in out.iter_mut().enumerate() {
        let after = st.peak_with(i, h, d);
        if after > hc.threshold[d] {
            *o = after - hc.limit[d];
        }
    }
    out
}

/// Largest total weight of items any valid plan places, by exhaustive depth-first search.
/// Returns an assignment placing more than `current` (if one exists and was found) and whether
/// the search completed within `work_limit` fit checks (so the maximum is proven).
pub(crate) fn exact_max_placed(
    inst: &Instance,
    alone: &[bool],
    current: u64,
    work_limit: u64,
) -> (Option<Vec<u32>>, bool) {
    let mut empty = State::new(inst);
    let allowed_count =
        |i: usize, empty: &mut State| (0..inst.hosts.len()).filter(|&h| empty.fits(i, h)).count();
    let mut order: Vec<(usize, usize)> = (0..inst.items.len())
        .filter(|&i| alone[i])
        .map(|i| (allowed_count(i, &mut empty), i))
        .collect();
    // Fewest choices first, then largest: failures show up near the root.
    order.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(inst.items[b.1].size.total_cmp(&inst.items[a.1].size))
            .then(a.1.cmp(&b.1))
    });
    let order: Vec<usize> = order.into_iter().map(|(_, i)| i).collect();
    // Hosts that are interchangeable when empty: same limits, overhead, VM limit, and the same
    // answer in every host mask.
    let class: Vec<usize> = (0..inst.hosts.len())
        .map(|h| {
            (0..h)
                .find(|&g| {
                    let (a, b) = (&inst.hosts[g], &inst.hosts[h]);
                    a.limit == b.limit
                        && a.overhead == b.overhead
                        && a.max_vms == b.max_vms
                        && inst.masks.iter().all(|m| m[g] == m[h])
                })
                .unwrap_or(h)
        })
        .collect();
    let suffix: Vec<u64> = {
        let mut s = vec![0u64; order.len() + 1];
        for k in (0..order.len()).rev() {
            s[k] = s[k + 1] + weight(inst, order[k]);
        }
        s
    };
    let mut search = Exact {
        order: &order,
        suffix: &suffix,
        class: &class,
        best: current,
        best_host_of: None,
        limit: work_limit,
        exhausted: false,
    };
    let mut st = State::new(inst);
    search.dfs(&mut st, 0, 0);
    (search.best_host_of, !search.exhausted)
}

struct Exact<'s> {
    order: &'s [usize],
    suffix: &'s [u64],
    class: &'s [usize],
    best: u64,
    best_host_of: Option<Vec<u32>>,
    limit: u64,
    exhausted: bool,
}

impl Exact<'_> {
    fn dfs(&mut self, st: &mut State, k: usize, placed: u64) {
        if self.exhausted || placed + self.suffix[k] <= self.best {
            return;
        }
        if k == self.order.len() {
            self.best = placed;
            self.best_host_of = Some(st.host_of.clone());
            return;
        }
        // Counted in fit checks, so wide pools cost their share of the budget.
        if st.work > self.limit {
            self.exhausted = true;
            return;
        }
        let i = self.order[k];
        let w = st.inst.items[i].members.len() as u64;
        let mut tried_empty: Vec<usize> = Vec::new();
        for h in 0..st.inst.hosts.len() {
            if st.on[h].is_empty() {
                if tried_empty.contains(&self.class[h]) {
                    continue;
                }
                tried_empty.push(self.class[h]);
            }
            if !st.fits(i, h) {
                continue;
            }
            st.place(i, h);
            self.dfs(st, k + 1, placed + w);
            st.remove(i);
            if self.exhausted {
                return;
            }
        }
        // Leave it out.
        self.dfs(st, k + 1, placed);
    }
}
