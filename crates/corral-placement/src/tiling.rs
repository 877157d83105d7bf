//! Perfect tilings: when the workloads add up to exactly `k` identical hosts in every resource
//! (a host's worth of load split into VMs, the benchmark's known-optimum family), a plan on `k`
//! hosts must fill every one of them exactly. That is an **exact cover**: choose exact fills
//! (sets of workloads summing to a host's limits) that use every workload once.
//!
//! Why a search of its own: the greedy fills and the exact-fill hunt (`exact.rs`) take the
//! first exact fill they find. In 4 resources many exact fills mix workloads of different
//! "true" hosts, and once one is fixed the rest cannot be tiled; the local searches then end
//! one host above the optimum with the slack spread over five or six hosts, where repacking
//! any few of them cannot help (measured: the repacks of `complete.rs` prove those
//! sub-problems infeasible).
//!
//! How: depth-first exact cover with the *most constrained workload first* (Knuth's rule for
//! exact cover): among the largest free workloads, the one with the fewest exact fills left
//! is covered next, trying each of its fills; a workload with none ends the branch at once,
//! one with a single fill is forced. A workload's exact fills are enumerated among the
//! workloads free at that level (fewer and cheaper as the cover grows; deeper levels only
//! lose workloads, so the list stays complete for them, and it is forgotten when the level
//! fails), by a depth-first search over sets of up to [`MAX_SEARCHED`] further workloads
//! whose last one or two are looked up in hash tables of single demands and pair sums; a
//! fill stays usable while all its workloads are free.
//! Demands are integers (micro-units). Work is counted in nodes; the result is placed through
//! `State::fits`, so constraints hold as everywhere else.

use crate::engine::{State, D, MEM, NONE};
use std::collections::{HashMap, HashSet};

type Vector = [i64; D];

/// Workloads searched (besides the one covered) before the one or two looked up: fills of up
/// to this + 3 workloads.
const MAX_SEARCHED: usize = 5;

fn quantise(v: f64) -> i64 {
    (v * 1e6).round() as i64
}

struct Tiler {
    need: Vec<Vector>,
    cap: Vector,
    /// Items by decreasing size; `suffix_max[p]` is the largest demand per resource among
    /// `by_size[p..]`.
    by_size: Vec<u32>,
    pos: Vec<usize>,
    suffix_max: Vec<Vector>,
    free: Vec<bool>,
    singles: HashMap<Vector, Vec<u32>>,
    pairs: HashMap<Vector, Vec<(u32, u32)>>,
    /// Every exact fill found (sorted item lists), and the fills each item is in.
    fills: Vec<Vec<u32>>,
    of_item: Vec<Vec<u32>>,
    nodes: u64,
    limit: u64,
    chosen: Vec<u32>,
}

impl Tiler {
    fn fits_in(v: &Vector, room: &Vector) -> bool {
        (0..D).all(|d| v[d] <= room[d])
    }

    /// Enumerate every exact fill of up to `MAX_SEARCHED + 3` items, each once from its
    /// largest item, the others taken in decreasing size. False when the budget ran out.
    fn enumerate_all(&mut self) -> bool {
        let mut found: HashSet<Vec<u32>> = HashSet::new();
        let n = self.by_size.len();
        for p0 in 0..n {
            let x = self.by_size[p0];
            let mut room = self.cap;
            for d in 0..D {
                room[d] -= self.need[x as usize][d];
            }
            let mut cur = vec![x];
            if !self.enum_dfs(p0 + 1, &room, &mut cur, &mut found, 0) {
                return false;
            }
        }
        let mut list: Vec<Vec<u32>> = found.into_iter().collect();
        list.sort();
        for (f, items) in list.iter().enumerate() {
            for &i in items {
                self.of_item[i as usize].push(f as u32);
            }
        }
        self.fills = list;
        true
    }

    fn enum_dfs(
        &mut self,
        from: usize,
        room: &Vector,
        cur: &mut Vec<u32>,
        found: &mut HashSet<Vec<u32>>,
        depth: usize,
    ) -> bool {
        self.nodes += 1;
        if self.nodes > self.limit {
            return false;
        }
        let mut record = |extra: &[u32]| {
            let mut f = cur.clone();
            f.extend_from_slice(extra);
            f.sort_unstable();
            f.dedup();
            if f.len() == cur.len() + extra.len() {
                found.insert(f);
            }
        };
        if room.iter().all(|&r| r == 0) {
            record(&[]);
            return true;
        }
        let pos = &self.pos;
        // The last one or two, looked up among the items not larger than those taken.
        if let Some(list) = self.singles.get(room) {
            for &a in list {
                if pos[a as usize] >= from {
                    record(&[a]);
                }
            }
        }
        if let Some(list) = self.pairs.get(room) {
            for &(a, b) in list {
                if pos[a as usize] >= from && pos[b as usize] >= from {
                    record(&[a, b]);
                }
            }
        }
        if depth >= MAX_SEARCHED || from >= self.by_size.len() {
            return true;
        }
        // The items still allowed cannot close a room larger than this.
        let left = (MAX_SEARCHED - depth + 2) as i64;
        let m = self.suffix_max[from];
        if (0..D).any(|d| room[d] > left * m[d]) {
            return true;
        }
        for p in from..self.by_size.len() {
            let i = self.by_size[p];
            let v = self.need[i as usize];
            if !Self::fits_in(&v, room) {
                continue;
            }
            let mut next = *room;
            for d in 0..D {
                next[d] -= v[d];
            }
            cur.push(i);
            let ok = self.enum_dfs(p + 1, &next, cur, found, depth + 1);
            cur.pop();
            if !ok {
                return false;
            }
        }
        true
    }

    fn usable(&self, f: u32) -> bool {
        self.fills[f as usize]
            .iter()
            .all(|&i| self.free[i as usize])
    }

    /// Cover every free item (the one with the fewest usable fills first); true when done
    /// (fills in `chosen`).
    fn search(&mut self) -> bool {
        self.nodes += 1;
        if self.nodes > self.limit {
            return false;
        }
        let mut best: Option<(usize, u32)> = None;
        for &x in &self.by_size {
            if !self.free[x as usize] {
                continue;
            }
            let count = self.of_item[x as usize]
                .iter()
                .filter(|&&f| self.usable(f))
                .count();
            self.nodes += 1;
            if count == 0 {
                return false; // nothing can cover it any more
            }
            if best.is_none_or(|(c, _)| count < c) {
                best = Some((count, x));
                if count == 1 {
                    break;
                }
            }
        }
        let Some((_, x)) = best else {
            return true; // every item covered
        };
        let options: Vec<u32> = self.of_item[x as usize]
            .iter()
            .copied()
            .filter(|&f| self.usable(f))
            .collect();
        for f in options {
            let items = self.fills[f as usize].clone();
            for &i in &items {
                self.free[i as usize] = false;
            }
            self.chosen.push(f);
            if self.search() {
                return true;
            }
            self.chosen.pop();
            for &i in &items {
                self.free[i as usize] = true;
            }
            if self.nodes > self.limit {
                return false;
            }
        }
        false
    }
}

/// When the placed load fills exactly `k` identical hosts in every active resource and the
/// plan uses more than `k`, look for a perfect tiling within `budget` nodes and take it.
/// Returns whether the plan changed.
pub(crate) fn tile(st: &mut State, budget: u64) -> bool {
    let inst = st.inst;
    if inst.t != 1
        || inst.items.is_empty()
        || inst.items.iter().any(|i| i.pinned.is_some())
        || st.host_of.contains(&NONE)
    {
        return false;
    }
    // Hosts interchangeable: identical limits and overheads on the active resources.
    let h0 = &inst.hosts[0];
    if !inst.hosts.iter().all(|h| {
        h.overhead == h0.overhead
            && (0..D).all(|d| {
                !inst.active[d]
                    || (h.limit[d] == h0.limit[d] && h.limit[d].is_finite() && h.limit[d] > 0.0)
            })
    }) {
        return false;
    }
    let need: Vec<Vector> = inst
        .items
        .iter()
        .map(|it| {
            let mut v = [0; D];
            for (d, x) in v.iter_mut().enumerate() {
                if inst.active[d] {
                    let extra = if d == MEM {
                        f64::from(it.vms) * h0.overhead
                    } else {
                        0.0
                    };
                    *x = quantise(it.peak[d] + extra);
                }
            }
            v
        })
        .collect();
    let mut cap = [0; D];
    for (d, c) in cap.iter_mut().enumerate() {
        if inst.active[d] {
            *c = quantise(h0.limit[d]);
        }
    }
    // The load must be exactly k hosts' worth in every active resource.
    let mut total = [0i64; D];
    for v in &need {
        for d in 0..D {
            total[d] += v[d];
        }
    }
    let Some(d0) = (0..D).find(|&d| inst.active[d]) else {
        return false;
    };
    if cap[d0] <= 0 || total[d0] % cap[d0] != 0 {
        return false;
    }
    let k = (total[d0] / cap[d0]) as usize;
    if k == 0
        || k >= st.hosts_used()
        || k > inst.hosts.len()
        || (0..D).any(|d| inst.active[d] && total[d] != cap[d] * k as i64)
    {
        return false;
    }
    let n = need.len();
    let mut singles: HashMap<Vector, Vec<u32>> = HashMap::new();
    let mut pairs: HashMap<Vector, Vec<(u32, u32)>> = HashMap::new();
    for a in 0..n {
        singles.entry(need[a]).or_default().push(a as u32);
        for b in a + 1..n {
            let mut s = need[a];
            for d in 0..D {
                s[d] += need[b][d];
            }
            if (0..D).all(|d| s[d] <= cap[d]) {
                pairs.entry(s).or_default().push((a as u32, b as u32));
            }
        }
    }
    st.work += (n * n / 2) as u64;
    let size = |i: usize| -> i64 { need[i].iter().sum() };
    let mut by_size: Vec<u32> = (0..n as u32).collect();
    by_size.sort_by(|&a, &b| size(b as usize).cmp(&size(a as usize)).then(a.cmp(&b)));
    let mut pos = vec![0; n];
    for (p, &i) in by_size.iter().enumerate() {
        pos[i as usize] = p;
    }
    let mut suffix_max = vec![[0; D]; n + 1];
    for p in (0..n).rev() {
        let v = need[by_size[p] as usize];
        for d in 0..D {
            suffix_max[p][d] = suffix_max[p + 1][d].max(v[d]);
        }
    }
    let mut t = Tiler {
        need,
        cap,
        by_size,
        pos,
        suffix_max,
        free: vec![true; n],
        singles,
        pairs,
        fills: Vec::new(),
        of_item: vec![Vec::new(); n],
        nodes: 0,
        limit: std::env::var("DBG_TILE_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(budget),
        chosen: Vec::new(),
    };
    let enumerated = t.enumerate_all();
    let found = enumerated && t.search();
    st.work += t.nodes;
    if std::env::var_os("DBG_TILE").is_some() {
        eprintln!(
            "DBG tile n {n} k {k} enumerated {enumerated} fills {} found {found} nodes {}",
            t.fills.len(),
            t.nodes
        );
    }
    if !found || t.chosen.len() != k {
        return false;
    }
    let chosen: Vec<Vec<u32>> = t
        .chosen
        .iter()
        .map(|&f| t.fills[f as usize].clone())
        .collect();
    // Place the tiling on the first k hosts (largest first; all identical here).
    let snapshot: Vec<u32> = st.host_of.clone();
    for i in 0..n {
        st.remove(i);
    }
    let hosts: Vec<usize> = inst
        .host_order
        .iter()
        .take(k)
        .map(|&h| h as usize)
        .collect();
    let mut ok = hosts.len() == k;
    'place: for (f, &h) in chosen.iter().zip(&hosts) {
        for &i in f {
            if !st.fits(i as usize, h) {
                ok = false;
                break 'place;
            }
            st.place(i as usize, h);
        }
    }
    if ok && !st.host_of.contains(&NONE) {
        return true;
    }
    for i in 0..n {
        st.remove(i);
    }
    for (i, &h) in snapshot.iter().enumerate() {
        if h != NONE {
            st.place(i, h as usize);
        }
    }
    false
}
