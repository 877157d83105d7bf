//! Density mode: as few hosts as possible.
//!
//! A portfolio of constructive heuristics runs on the same [`Instance`]: first-fit decreasing
//! under three size measures (sum, largest resource, sum of squares of the normalised demand),
//! best-fit decreasing, and a bin-oriented "minimum bin slack" fill that takes an exact
//! fill of each host when one is found (`exact`), and otherwise seeds the host with the largest
//! remaining workload and searches (depth-first, with a node budget) for the set of remaining
//! workloads that fills it best. The plan with fewest unplaced workloads, then fewest hosts,
//! wins; `repair` then places what the heuristics stranded, a local search tries to empty the
//! least-filled hosts by moving and swapping their workloads onto the others, on inputs whose
//! total demand is exactly whole hosts an exact cover by perfect fills (`tile`), the pool search
//! in `repack` closes hosts that need several swaps at once, and on small instances refill
//! rounds empty and refill every host with slack. Every step is budgeted in fit checks or
//! search nodes, never in wall-clock time, so the same input always gives the same plan. The reference first-fit
//! decreasing is part of the portfolio, so the result never uses more hosts than it.

use crate::engine::{FitTree, Instance, State, NONE};
use crate::repack::reduce_hosts;
use crate::repair::{repair, Repaired};
use std::cmp::Ordering;
use std::collections::HashMap;

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
    fill_hosts(&mut st, &inst.host_order, remaining, node_limit);
    st
}

/// Fill `hosts` one after another from `remaining` (minimum bin slack): first hunt for the
/// shallowest exact fill of an empty host (`exact::hunt`); failing that, seed it with the first
/// remaining item that fits and search for the subset that fills it best.
fn fill_hosts(st: &mut State, hosts: &[u32], mut remaining: Vec<u32>, node_limit: u64) {
    // Exact-fill hunts cost up to HUNT_BUDGET × the per-host budget each; after two misses in a
    // row the hosts left are filled by the seeded search alone (instances with slack everywhere
    // have no exact fills to find).
    let mut misses = 0;
    for &h in hosts {
        let h = h as usize;
        if remaining.is_empty() {
            break;
        }
        if misses < 2 && st.on[h].is_empty() {
            match crate::exact::hunt(st, h, &remaining, node_limit * HUNT_BUDGET, HUNT_DEPTH) {
                Some(set) => {
                    let mut placed = Vec::new();
                    for &i in &set {
                        if st.fits(i as usize, h) {
                            st.place(i as usize, h);
                            placed.push(i);
                        } else {
                            break;
                        }
                    }
                    if placed.len() == set.len() {
                        misses = 0;
                        remaining.retain(|&i| st.host_of[i as usize] == NONE);
                        continue;
                    }
                    for i in placed {
                        st.remove(i as usize);
                    }
                    misses += 1;
                }
                None => misses += 1,
            }
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
        let mut search = Fill::new(st, h, &cands, node_limit);
        if !search.complete(st) {
            search.dfs(st, &cands);
        }
        for &i in &search.best {
            st.place(i as usize, h);
        }
        remaining.retain(|&i| st.host_of[i as usize] == NONE);
    }
}

/// How concentrated the load is: sum over used hosts of the squared relative fill. Between
/// plans with the same number of hosts, the higher one has its slack on fewer hosts, which is
/// closer to emptying one.
fn concentration(st: &State) -> f64 {
    (0..st.inst.hosts.len())
        .filter(|&h| !st.on[h].is_empty())
        .map(|h| {
            let f = st.fill(h) / perfect_fill(st.inst, h);
            f * f
        })
        .sum()
}

/// Large-neighbourhood search over the hosts with slack: take every workload off the used
/// hosts that are not perfectly full and fill those hosts again (minimum bin slack) with a
/// deeper per-host search, under a different size order each round and twice the depth every
/// third round. A round is kept when it uses fewer hosts, or as many with the load more
/// concentrated; otherwise it is undone. Perfectly full hosts stay as they are, so each kept
/// round searches a smaller remainder, where the fill search finds exact fits it missed among
/// all workloads. Stops after `rounds` rounds, when fewer than two hosts have slack, when the
/// volume bound is met, or when `budget` fit checks are spent.
fn refill(st: &mut State, rounds: u32, per_host: u64, budget: u64) {
    let inst = st.inst;
    let stop = st.work + budget;
    let keys = [SizeKey::Sum, SizeKey::Max, SizeKey::Squares];
    for round in 0..rounds {
        if st.work >= stop || st.hosts_used() <= crate::bound::volume_bound(inst, st) {
            return;
        }
        // Hosts with slack, in host order; hosts holding pinned workloads stay as they are.
        let slack: Vec<u32> = inst
            .host_order
            .iter()
            .copied()
            .filter(|&h| {
                let h = h as usize;
                !st.on[h].is_empty()
                    && st.fill(h) < perfect_fill(inst, h) - 1e-9
                    && st.on[h]
                        .iter()
                        .all(|&i| inst.items[i as usize].pinned.is_none())
            })
            .collect();
        if slack.len() < 2 {
            return;
        }
        let before = (st.hosts_used(), concentration(st));
        let snapshot = st.clone();
        let mut items: Vec<u32> = Vec::new();
        for &h in &slack {
            items.extend(st.on[h as usize].iter().copied());
        }
        for &i in &items {
            st.remove(i as usize);
        }
        let rank = order_items(inst, keys[round as usize % keys.len()]);
        let mut pos = vec![0usize; inst.items.len()];
        for (p, &i) in rank.iter().enumerate() {
            pos[i as usize] = p;
        }
        items.sort_by_key(|&i| pos[i as usize]);
        // The emptied hosts first, then unused ones (a round may need one more host).
        let mut hosts = slack.clone();
        hosts.extend(
            inst.host_order
                .iter()
                .copied()
                .filter(|&h| st.on[h as usize].is_empty() && !slack.contains(&h)),
        );
        let depth = per_host << (round / 3).min(6);
        fill_hosts(st, &hosts, items, depth);
        let after = (st.hosts_used(), concentration(st));
        let kept = st.unplaced_workloads() <= snapshot.unplaced_workloads()
            && (after.0 < before.0 || (after.0 == before.0 && after.1 > before.1 + 1e-9));
        if !kept {
            let work = st.work;
            *st = snapshot;
            st.work = work;
        }
    }
}

/// Depth-first search for the subset of `cands` that fills host `h` best. Two things keep it
/// short: a fractional bound (what the remaining candidates could add per resource, capped by
/// the room left) prunes branches that cannot beat the best fill, and at every node a lookup
/// finds one or two candidates that fill the remaining room exactly, so a perfect fill (common
/// when VMs come from a few templates) is found without enumerating the subsets before it.
struct Fill {
    h: usize,
    best: Vec<u32>,
    best_fill: f64,
    cur: Vec<u32>,
    nodes: u64,
    limit: u64,
    perfect: f64,
    /// Resources that count (used by someone, limited on this host).
    dims: Vec<usize>,
    /// Exact-completion tables (single hour only): quantised demand → candidates, and
    /// quantised sum of two candidates → pairs.
    single: HashMap<Vec<i64>, Vec<u32>>,
    pairs: HashMap<Vec<i64>, Vec<(u32, u32)>>,
}

fn quantise(v: f64) -> i64 {
    (v * 1e6).round() as i64
}

impl Fill {
    fn new(st: &State, h: usize, cands: &[u32], limit: u64) -> Fill {
        let inst = st.inst;
        let hc = &inst.hosts[h];
        let dims: Vec<usize> = (0..crate::engine::D)
            .filter(|&d| inst.active[d] && hc.limit[d].is_finite() && hc.limit[d] > 0.0)
            .collect();
        let need = |i: usize, d: usize| {
            let it = &inst.items[i];
            it.peak[d]
                + if d == crate::engine::MEM {
                    f64::from(it.vms) * hc.overhead
                } else {
                    0.0
                }
        };
        let mut single: HashMap<Vec<i64>, Vec<u32>> = HashMap::new();
        let mut pairs: HashMap<Vec<i64>, Vec<(u32, u32)>> = HashMap::new();
        if inst.t == 1 {
            let keys: Vec<Vec<i64>> = cands
                .iter()
                .map(|&i| {
                    dims.iter()
                        .map(|&d| quantise(need(i as usize, d)))
                        .collect()
                })
                .collect();
            for (p, key) in keys.iter().enumerate() {
                single.entry(key.clone()).or_default().push(cands[p]);
            }
            if cands.len() <= 300 {
                for a in 0..cands.len() {
                    for b in a + 1..cands.len() {
                        let key: Vec<i64> =
                            keys[a].iter().zip(&keys[b]).map(|(x, y)| x + y).collect();
                        pairs.entry(key).or_default().push((cands[a], cands[b]));
                    }
                }
            }
        }
        Fill {
            h,
            best: Vec::new(),
            best_fill: st.fill(h),
            cur: Vec::new(),
            nodes: 0,
            limit,
            perfect: perfect_fill(inst, h),
            dims,
            single,
            pairs,
        }
    }

    /// Look up one or two candidates that fill the room left exactly; on success they become
    /// the best (a perfect fill) and true is returned.
    fn complete(&mut self, st: &mut State) -> bool {
        if self.single.is_empty() {
            return false;
        }
        let hc = &st.inst.hosts[self.h];
        let room: Vec<i64> = self
            .dims
            .iter()
            .map(|&d| quantise(hc.limit[d] - st.load[self.h * crate::engine::D + d]))
            .collect();
        if room.iter().any(|&r| r < 0) {
            return false;
        }
        let used =
            |i: u32, cur: &[u32], st: &State| cur.contains(&i) || st.host_of[i as usize] != NONE;
        if let Some(list) = self.single.get(&room) {
            for &i in list {
                if !used(i, &self.cur, st) && st.fits(i as usize, self.h) {
                    self.best.clone_from(&self.cur);
                    self.best.push(i);
                    self.best_fill = self.perfect;
                    return true;
                }
            }
        }
        if let Some(list) = self.pairs.get(&room) {
            for &(a, b) in list.iter().take(64) {
                if used(a, &self.cur, st) || used(b, &self.cur, st) || !st.fits(a as usize, self.h)
                {
                    continue;
                }
                st.place(a as usize, self.h);
                let ok = st.fits(b as usize, self.h);
                st.remove(a as usize);
                if ok {
                    self.best.clone_from(&self.cur);
                    self.best.extend([a, b]);
                    self.best_fill = self.perfect;
                    return true;
                }
            }
        }
        false
    }

    /// Fill reachable from the current node with `cands` (fractional, capped by the room).
    fn bound(&self, st: &State, cands: &[u32]) -> f64 {
        let inst = st.inst;
        let hc = &inst.hosts[self.h];
        let mut f = 0.0;
        for &d in &self.dims {
            let load = st.peak(self.h, d);
            let room = (hc.limit[d] - load).max(0.0);
            let extra = if d == crate::engine::MEM {
                hc.overhead
            } else {
                0.0
            };
            let total: f64 = cands
                .iter()
                .map(|&i| {
                    let it = &inst.items[i as usize];
                    it.peak[d] + f64::from(it.vms) * extra
                })
                .sum();
            f += (load + room.min(total)) / hc.limit[d];
        }
        f
    }

    /// Search subsets of `cands` (each of which fits as things stand); true stops the whole
    /// search (perfect fill found or budget spent). Each level keeps only the candidates that
    /// still fit, so the node budget is spent on real branches.
    fn dfs(&mut self, st: &mut State, cands: &[u32]) -> bool {
        if cands.is_empty() || self.bound(st, cands) <= self.best_fill + 1e-12 {
            return false;
        }
        for p in 0..cands.len() {
            if self.nodes >= self.limit {
                return true;
            }
            self.nodes += 1;
            let i = cands[p] as usize;
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
                stop = self.complete(st);
            }
            if !stop {
                let next: Vec<u32> = cands[p + 1..]
                    .iter()
                    .copied()
                    .filter(|&j| st.fits(j as usize, self.h))
                    .collect();
                stop = self.dfs(st, &next);
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

/// Budget of an exact-fill hunt, as a multiple of the per-host fill budget (a hunt node is a
/// few integer compares and a hash lookup, far cheaper than a fill node).
const HUNT_BUDGET: u64 = 10;
/// Deepest hunt: a seed, this many more workloads, and one or two looked up.
const HUNT_DEPTH: usize = 5;

/// Largest instance (in items) the perfect-tiling search runs on, and its budget: enumeration
/// nodes, and work units for the first cover search (the second gets a quarter). 30 million
/// lets the enumeration finish on 4-resource inputs of about 150 workloads (24.5 million on
/// the benchmark's 154) and the first search reach covers that need up to 26 million.
const TILE_MAX_ITEMS: usize = 200;
const TILE_BUDGET: u64 = 30_000_000;

/// Largest instance (in items) the refill search runs on.
const REFILL_MAX_ITEMS: usize = 200;

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
    // Stop as soon as everything is placed on as few hosts as the volume bound allows.
    let done = |st: &State| {
        st.unplaced_workloads() == 0 && st.hosts_used() <= crate::bound::volume_bound(inst, st)
    };
    if effort > 0 && !done(&best) && (n as u64) * (m as u64) <= 2_000_000 {
        for key in [SizeKey::Sum, SizeKey::Max] {
            let s = best_fit(inst, &order_items(inst, key));
            consider(s, &mut best);
        }
    }
    if effort > 0 && n <= 4000 {
        // Deep searches per host on small instances, shallower ones as they grow.
        let per_host = (4_000_000 / n.max(1) as u64).clamp(4_000, 40_000) * effort;
        for key in [SizeKey::Sum, SizeKey::Max, SizeKey::Squares] {
            if done(&best) {
                break;
            }
            let s = min_bin_slack(inst, &order_items(inst, key), per_host);
            consider(s, &mut best);
        }
    }
    let repaired = repair(&mut best, effort);
    if effort > 0 && !done(&best) {
        empty_hosts(&mut best, if large { 40_000 } else { 300_000 } * effort);
        // The pool search pays on small and mid-sized instances; on large pools the time
        // goal (10,000 workloads in 50 ms) leaves no room for it.
        // Zero-slack inputs (total demand exactly whole hosts): an exact cover by perfect
        // fills, when one exists within the budget, is optimal.
        if n <= TILE_MAX_ITEMS && !done(&best) {
            let budget = TILE_BUDGET * effort;
            if let Some(s) = crate::tile::tile(&mut best, budget) {
                let work = best.work;
                if better(&s, &best) {
                    best = s;
                    best.work = work;
                }
            }
        }
        if !large && !done(&best) {
            reduce_hosts(&mut best, 2_000_000 * effort, 400_000 * effort);
        }
        // The refill rounds pay on instances of up to a few hundred workloads; beyond that a
        // round costs too much for what it finds.
        if n <= REFILL_MAX_ITEMS && !done(&best) {
            refill(&mut best, 12, 20_000 * effort, 40_000_000 * effort);
        }
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
