//! Closing a host by exact repacking of a few hosts (large-neighbourhood search with an exact
//! sub-solver).
//!
//! Why: when the optimum fills every host to the limit in every resource (a host's worth of
//! load split into VMs, the benchmark's known-optimum family), the greedy fills and the hunt
//! for exact fills (`exact.rs`) commit to the first exact fill they find. In 4 resources many
//! exact fills mix workloads of different "true" hosts; once such a fill is fixed, what is
//! left cannot be tiled and one host too many stays with slack spread over a few hosts. The
//! refill rounds (`density::refill`) only reopen hosts with slack, so they never undo the
//! wrong exact fill that caused it.
//!
//! What: take every host with slack plus up to [`MAX_EXTRA`] full hosts (every combination,
//! full hosts nearest to the slack in fill order first), and repack all their workloads onto
//! one host fewer by **bin completion** (Korf): the largest remaining workload opens the next
//! host (hosts in a selection are interchangeable, so that loses nothing), the host is
//! completed by a depth-first enumeration of the sets of remaining workloads that leave at
//! most the selection's total slack unused in each resource, and the search recurses on the
//! rest. With no slack at all (a perfect tiling), each completion must fill its host exactly,
//! which prunes hard. Workloads with the same demand are tried once per level. A repack that
//! succeeds is kept (one host fewer) and the search starts again; one that fails or runs out
//! of its node budget restores the hosts as they were.
//!
//! Everything goes through `State::fits`, so constraints (keep-apart groups, networks, VM
//! caps) hold as everywhere else; the search is counted in nodes, so the plan is
//! deterministic.

use crate::engine::{State, D, MEM, NONE};
use std::collections::HashMap;

/// Full hosts added to the hosts with slack in one repack attempt, at most.
const MAX_EXTRA: usize = 3;
/// Hosts with slack in one attempt, at most (the least filled ones when there are more).
const MAX_SLACK_HOSTS: usize = 6;

type Vector = [i64; D];

fn quantise(v: f64) -> i64 {
    (v * 1e6).round() as i64
}

/// One repack attempt: items to place on `hosts`, with the waste allowed in total.
struct Pack {
    /// Demand of every item of the instance (quantised; zero for inactive resources).
    need: Vec<Vector>,
    nodes: u64,
    limit: u64,
    /// The attempt's items, largest first.
    order: Vec<u32>,
    /// Exact-completion tables of the attempt's items (demand → items, summed demand of two →
    /// pairs), used when no slack is allowed: the last one or two workloads of a host are
    /// looked up instead of searched.
    singles: HashMap<Vector, Vec<u32>>,
    pairs: HashMap<Vector, Vec<(u32, u32)>>,
}

impl Pack {
    /// Place `items` (sorted, largest first) on `hosts` with at most `slack` unused per
    /// resource over all of them; true when done (the placements stay in `st`).
    fn pack(&mut self, st: &mut State, hosts: &[usize], items: &[u32], slack: &Vector) -> bool {
        let Some((&seed, rest)) = items.split_first() else {
            return true;
        };
        let Some((&h, others)) = hosts.split_first() else {
            return false;
        };
        self.nodes += 1;
        if self.nodes > self.limit || !st.fits(seed as usize, h) {
            return false;
        }
        let cap = limit_vector(st, h);
        let mut room = cap;
        sub(&mut room, &self.need[seed as usize]);
        st.place(seed as usize, h);
        let mut chosen = vec![seed];
        let ok = self.complete(st, h, others, rest, 0, &mut room, slack, &mut chosen);
        if !ok {
            st.remove(seed as usize);
        }
        ok
    }

    /// Add items of `rest[from..]` to host `h` (room left: `room`); whenever the host's waste
    /// fits in `slack`, try packing what is left on `others`.
    #[allow(clippy::too_many_arguments)]
    fn complete(
        &mut self,
        st: &mut State,
        h: usize,
        others: &[usize],
        rest: &[u32],
        from: usize,
        room: &mut Vector,
        slack: &Vector,
        chosen: &mut Vec<u32>,
    ) -> bool {
        self.nodes += 1;
        if self.nodes > self.limit {
            return false;
        }
        // What is still to place must reach the room minus the slack in every resource.
        let mut reach: Vector = [0; D];
        for &i in &rest[from..] {
            add(&mut reach, &self.need[i as usize]);
        }
        if (0..D).any(|d| room[d] - reach[d] > slack[d]) {
            return false;
        }
        if (0..D).all(|d| room[d] <= slack[d]) {
            let left: Vec<u32> = rest
                .iter()
                .copied()
                .filter(|&i| st.host_of[i as usize] == NONE)
                .collect();
            let mut left_slack = *slack;
            sub(&mut left_slack, room);
            if self.pack(st, others, &left, &left_slack) {
                return true;
            }
            if self.nodes > self.limit {
                return false;
            }
        }
        // No slack: the host must be filled exactly; look up the last one or two workloads.
        if slack.iter().all(|&s| s == 0) && self.exact_finish(st, h, others, room, chosen) {
            return true;
        }
        let mut last: Option<Vector> = None;
        for p in from..rest.len() {
            let i = rest[p];
            let n = self.need[i as usize];
            // Items with the same demand as one tried at this level lead to the same plans.
            if last == Some(n) || (0..D).any(|d| n[d] > room[d]) {
                continue;
            }
            last = Some(n);
            if !st.fits(i as usize, h) {
                continue;
            }
            st.place(i as usize, h);
            chosen.push(i);
            sub(room, &n);
            if self.complete(st, h, others, rest, p + 1, room, slack, chosen) {
                return true;
            }
            add(room, &n);
            chosen.pop();
            st.remove(i as usize);
            if self.nodes > self.limit {
                return false;
            }
        }
        false
    }
}

impl Pack {
    /// With no slack: one unplaced workload whose demand is `room`, or two whose demands sum
    /// to it, close host `h`; then pack the rest on `others`.
    fn exact_finish(
        &mut self,
        st: &mut State,
        h: usize,
        others: &[usize],
        room: &Vector,
        chosen: &mut Vec<u32>,
    ) -> bool {
        let free = |st: &State, i: u32| st.host_of[i as usize] == NONE;
        let mut options: Vec<Vec<u32>> = Vec::new();
        if let Some(list) = self.singles.get(room) {
            if let Some(&a) = list.iter().find(|&&a| free(st, a)) {
                options.push(vec![a]);
            }
        }
        if let Some(list) = self.pairs.get(room) {
            let mut seen: Vec<(Vector, Vector)> = Vec::new();
            for &(a, b) in list {
                let key = (self.need[a as usize], self.need[b as usize]);
                if free(st, a) && free(st, b) && !seen.contains(&key) {
                    seen.push(key);
                    options.push(vec![a, b]);
                }
            }
        }
        for set in options {
            self.nodes += 1;
            if self.nodes > self.limit {
                return false;
            }
            let mut placed = Vec::new();
            for &i in &set {
                if st.fits(i as usize, h) {
                    st.place(i as usize, h);
                    placed.push(i);
                }
            }
            if placed.len() == set.len() {
                let left: Vec<u32> = self
                    .order
                    .iter()
                    .copied()
                    .filter(|&i| st.host_of[i as usize] == NONE)
                    .collect();
                chosen.extend(&set);
                if self.pack(st, others, &left, &[0; D]) {
                    return true;
                }
                chosen.truncate(chosen.len() - set.len());
            }
            for i in placed {
                st.remove(i as usize);
            }
        }
        false
    }
}

fn add(a: &mut Vector, b: &Vector) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn sub(a: &mut Vector, b: &Vector) {
    for (x, y) in a.iter_mut().zip(b) {
        *x -= y;
    }
}

/// A host's limits over the active resources (quantised; zero for the others).
fn limit_vector(st: &State, h: usize) -> Vector {
    let inst = st.inst;
    let mut v = [0; D];
    for (d, x) in v.iter_mut().enumerate() {
        if inst.active[d] {
            *x = quantise(inst.hosts[h].limit[d]);
        }
    }
    v
}

/// Can this instance be repacked exactly here? Single-bucket demands, finite limits on every
/// active resource, hosts with identical limits and overheads (so hosts in a selection are
/// interchangeable), no pinned workloads.
fn applicable(st: &State) -> bool {
    let inst = st.inst;
    if inst.t != 1 || inst.hosts.is_empty() || inst.items.iter().any(|i| i.pinned.is_some()) {
        return false;
    }
    let first = &inst.hosts[0];
    inst.hosts.iter().all(|h| {
        h.overhead == first.overhead
            && (0..D).all(|d| {
                !inst.active[d] || (h.limit[d] == first.limit[d] && h.limit[d].is_finite())
            })
    })
}

/// Every `k`-subset of `0..n` in lexicographic order, at most `cap` of them.
fn combinations(n: usize, k: usize, cap: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    if k > n {
        return out;
    }
    let mut c: Vec<usize> = (0..k).collect();
    loop {
        out.push(c.clone());
        if out.len() >= cap {
            return out;
        }
        let mut i = k;
        loop {
            if i == 0 {
                return out;
            }
            i -= 1;
            if c[i] < n - k + i {
                break;
            }
            if i == 0 {
                return out;
            }
        }
        c[i] += 1;
        for j in i + 1..k {
            c[j] = c[j - 1] + 1;
        }
    }
}

/// Try to use one host fewer by repacking the hosts with slack together with a few full ones.
/// Returns whether a host was closed; stops when `budget` nodes are spent (`per_attempt` for
/// each repack).
pub(crate) fn close_one_host(st: &mut State, budget: u64, per_attempt: u64) -> bool {
    if !applicable(st) {
        return false;
    }
    let inst = st.inst;
    let need: Vec<Vector> = inst
        .items
        .iter()
        .map(|it| {
            let mut v = [0; D];
            for (d, x) in v.iter_mut().enumerate() {
                if inst.active[d] {
                    let extra = if d == MEM {
                        f64::from(it.vms) * inst.hosts[0].overhead
                    } else {
                        0.0
                    };
                    *x = quantise(it.peak[d] + extra);
                }
            }
            v
        })
        .collect();
    let perfect = (0..D).filter(|&d| inst.active[d]).count() as f64;
    let mut used: Vec<usize> = inst
        .host_order
        .iter()
        .map(|&h| h as usize)
        .filter(|&h| !st.on[h].is_empty())
        .collect();
    if used.len() < 2 {
        return false;
    }
    // Least filled first: the hosts with slack, then the full ones.
    used.sort_by(|&a, &b| st.fill(a).total_cmp(&st.fill(b)).then(a.cmp(&b)));
    let slack_hosts: Vec<usize> = used
        .iter()
        .copied()
        .filter(|&h| st.fill(h) < perfect - 1e-9)
        .take(MAX_SLACK_HOSTS)
        .collect();
    if slack_hosts.is_empty() {
        return false;
    }
    let full: Vec<usize> = used
        .iter()
        .copied()
        .filter(|h| !slack_hosts.contains(h))
        .collect();
    eprintln!(
        "DBG close: used {} slack {} full {}",
        used.len(),
        slack_hosts.len(),
        full.len()
    );
    let start = st.work;
    let mut pack = Pack {
        need,
        nodes: 0,
        limit: 0,
        order: Vec::new(),
        singles: HashMap::new(),
        pairs: HashMap::new(),
    };
    if std::env::var_os("DBG_GLOBAL").is_some() {
        let all = used.clone();
        let lim: u64 = std::env::var("DBG_GLOBAL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000_000);
        if try_repack(st, &mut pack, &all, lim) {
            return true;
        }
    }
    for extra in 0..=MAX_EXTRA.min(full.len()) {
        for combo in combinations(full.len(), extra, 20_000) {
            if st.work - start >= budget {
                return false;
            }
            let mut sel: Vec<usize> = slack_hosts.clone();
            sel.extend(combo.iter().map(|&c| full[c]));
            if try_repack(st, &mut pack, &sel, per_attempt) {
                return true;
            }
        }
    }
    false
}

/// Repack the workloads of `sel` onto all of `sel` but one; keep it when it works.
fn try_repack(st: &mut State, pack: &mut Pack, sel: &[usize], limit: u64) -> bool {
    let mut items: Vec<u32> = sel.iter().flat_map(|&h| st.on[h].clone()).collect();
    // Total slack of the target hosts must be non-negative in every resource.
    let targets: Vec<usize> = sel[..sel.len() - 1].to_vec();
    let mut slack: Vector = [0; D];
    for &h in &targets {
        add(&mut slack, &limit_vector(st, h));
    }
    for &i in &items {
        sub(&mut slack, &pack.need[i as usize]);
    }
    st.work += items.len() as u64;
    if slack.iter().any(|&s| s < 0) {
        return false;
    }
    let before: Vec<(u32, usize)> = items
        .iter()
        .map(|&i| (i, st.host_of[i as usize] as usize))
        .collect();
    for &i in &items {
        st.remove(i as usize);
    }
    // Largest first: sum of the quantised demand, ties by index.
    let size = |i: u32| -> i64 { pack.need[i as usize].iter().sum() };
    items.sort_by(|&a, &b| size(b).cmp(&size(a)).then(a.cmp(&b)));
    pack.nodes = 0;
    pack.limit = limit;
    pack.order.clone_from(&items);
    pack.singles.clear();
    pack.pairs.clear();
    if slack.iter().all(|&s| s == 0) {
        for (p, &a) in items.iter().enumerate() {
            pack.singles
                .entry(pack.need[a as usize])
                .or_default()
                .push(a);
            for &b in &items[p + 1..] {
                let mut sum = pack.need[a as usize];
                add(&mut sum, &pack.need[b as usize]);
                pack.pairs.entry(sum).or_default().push((a, b));
            }
        }
        st.work += (items.len() * items.len() / 2) as u64;
    }
    let ok = pack.pack(st, &targets, &items, &slack);
    st.work += pack.nodes;
    if std::env::var_os("DBG_CLOSE").is_some() {
        eprintln!(
            "DBG try sel {} items {} nodes {} ok {ok} slack {:?}",
            sel.len(),
            items.len(),
            pack.nodes,
            slack
        );
    }
    if ok && items.iter().all(|&i| st.host_of[i as usize] != NONE) {
        return true;
    }
    for &i in &items {
        st.remove(i as usize);
    }
    for (i, h) in before {
        st.place(i as usize, h);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_in_order() {
        assert_eq!(combinations(4, 2, 100).len(), 6);
        assert_eq!(combinations(4, 2, 100)[0], vec![0, 1]);
        assert_eq!(combinations(4, 2, 100)[5], vec![2, 3]);
        assert_eq!(combinations(3, 0, 100), vec![Vec::<usize>::new()]);
        assert!(combinations(2, 3, 100).is_empty());
        assert_eq!(combinations(10, 3, 7).len(), 7);
    }
}
