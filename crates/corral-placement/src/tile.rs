//! Perfect tiling: when the total demand is exactly the capacity of `k` identical hosts, a plan
//! on `k` hosts must fill every one of them to every limit at once, so it is an exact cover of
//! the workloads by *exact fills* (sets of workloads whose demand vectors sum to one host's
//! limits). [`tile`] enumerates every exact fill of up to [`MAX_FILL`] workloads and solves the
//! exact cover with Knuth's Algorithm X (most constrained workload first).
//!
//! Enumeration is meet-in-the-middle. With the workloads sorted by decreasing size, a fill's
//! members in that order split into a head `A` (the first ⌈s/2⌉) and a tail `B` (the rest, every
//! one after all of `A`); `B` is no larger than `A`, so it holds at most half a host. All
//! subsets of up to four workloads that fit in half a host are tabled by their demand sum; a
//! depth-first walk over the heads (up to four workloads, at least half a host) looks up
//! `limit − sum(A)` in the table, so every fill is found exactly once, by one lookup.
//!
//! The cover picks, at each node, the uncovered workload in the fewest fills still open (a
//! workload in none closes the branch at once) and tries its fills in turn. Demands are compared
//! as integers (micro-units); the result is placed through `State::fits`, so a cover that breaks
//! any other rule is dropped. Everything is counted in nodes against a budget; inputs whose
//! demand does not add up to whole hosts return at once.

use crate::engine::{Instance, State, D, MEM};
use crate::exact::{key, quantise, Vector};
use std::collections::HashMap;

/// Largest exact fill looked for (head and tail of up to four workloads each).
pub(crate) const MAX_FILL: usize = 8;
const HALF: usize = MAX_FILL / 2;

fn add(a: &Vector, b: &Vector) -> Vector {
    let mut r = *a;
    for (x, y) in r.iter_mut().zip(b) {
        *x += y;
    }
    r
}

fn fits_in(a: &Vector, cap: &Vector) -> bool {
    a.iter().zip(cap).all(|(x, c)| x <= c)
}

/// A plan on fewer hosts than `st` uses, every host exactly full, or `None` (not a zero-slack
/// input, no cover within `budget` nodes, or a cover that breaks some other rule). Work is
/// added to `st.work`.
pub(crate) fn tile<'a>(st: &mut State<'a>, budget: u64) -> Option<State<'a>> {
    let inst: &'a Instance = st.inst;
    let n = inst.items.len();
    if inst.t != 1 || n == 0 || n > u16::MAX as usize || st.unplaced_workloads() > 0 {
        return None;
    }
    // Pinned workloads and host masks tie workloads to hosts: not a plain cover.
    if inst
        .items
        .iter()
        .any(|it| it.pinned.is_some() || it.mask.is_some())
    {
        return None;
    }
    // The hosts of the largest kind (same limits and overhead as the first in host order).
    let first = &inst.hosts[inst.host_order[0] as usize];
    let mut cap: Vector = [0; D];
    for (d, c) in cap.iter_mut().enumerate() {
        if inst.active[d] {
            if !first.limit[d].is_finite() || first.limit[d] <= 0.0 {
                return None;
            }
            *c = quantise(first.limit[d]);
        }
    }
    let same: Vec<usize> = inst
        .host_order
        .iter()
        .map(|&h| h as usize)
        .filter(|&h| {
            let hc = &inst.hosts[h];
            hc.overhead == first.overhead
                && (0..D).all(|d| !inst.active[d] || quantise(hc.limit[d]) == cap[d])
        })
        .collect();
    let need: Vec<Vector> = inst
        .items
        .iter()
        .map(|it| {
            let mut v = [0; D];
            for (d, x) in v.iter_mut().enumerate() {
                if inst.active[d] {
                    let extra = if d == MEM {
                        f64::from(it.vms) * first.overhead
                    } else {
                        0.0
                    };
                    *x = quantise(it.peak[d] + extra);
                }
            }
            v
        })
        .collect();
    // Total demand must be exactly k hosts' limits, with k below what the plan uses.
    let total = need.iter().fold([0; D], |a, v| add(&a, v));
    let dims: Vec<usize> = (0..D).filter(|&d| inst.active[d]).collect();
    let d0 = *dims.first()?;
    if total[d0] % cap[d0] != 0 {
        return None;
    }
    let k = (total[d0] / cap[d0]) as usize;
    if k == 0
        || k >= st.hosts_used()
        || k > same.len()
        || dims.iter().any(|&d| total[d] != cap[d] * k as i64)
    {
        return None;
    }
    let fills = enumerate(&need, &cap, &dims, budget, &mut st.work)?;
    let cover = cover(n, &fills, budget / COVER_SHARE, &mut st.work)?;
    let mut out = State::new(inst);
    for (row, &h) in cover.iter().zip(&same) {
        for &i in &fills[*row] {
            if !out.fits(i as usize, h) {
                st.work += out.work;
                return None;
            }
            out.place(i as usize, h);
        }
    }
    st.work += out.work;
    Some(out)
}

/// Every exact fill of up to [`MAX_FILL`] items (item indexes, sorted), or `None` when the
/// enumeration passes `budget` nodes.
fn enumerate(
    need: &[Vector],
    cap: &Vector,
    dims: &[usize],
    budget: u64,
    work: &mut u64,
) -> Option<Vec<Vec<u32>>> {
    let n = need.len();
    // Normalised size; positions sorted by decreasing size, ties by index.
    let size: Vec<f64> = need
        .iter()
        .map(|v| dims.iter().map(|&d| v[d] as f64 / cap[d] as f64).sum())
        .collect();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by(|&a, &b| {
        size[b as usize]
            .total_cmp(&size[a as usize])
            .then(a.cmp(&b))
    });
    let vec: Vec<Vector> = order.iter().map(|&i| need[i as usize]).collect();
    let sz: Vec<f64> = order.iter().map(|&i| size[i as usize]).collect();
    let whole = dims.len() as f64;
    let half = whole / 2.0 + 1e-9;
    let mut e = Enum {
        vec: &vec,
        sz: &sz,
        cap: *cap,
        half,
        tails: Vec::new(),
        table: HashMap::new(),
        chain: Vec::new(),
        cur: Vec::new(),
        fills: Vec::new(),
        nodes: 0,
        limit: budget,
    };
    // Tails: subsets of up to HALF positions, at most half a host (the empty tail included).
    e.table.insert(key(&[0; D]), 0);
    e.chain.push(u32::MAX);
    e.tails.push(([0; HALF], 0));
    e.tails_dfs(0, [0; D], 0.0);
    if e.nodes >= e.limit {
        *work += e.nodes;
        return None;
    }
    // Heads: subsets of 1..=HALF positions, at least half a host.
    e.heads_dfs(0, [0; D], 0.0);
    *work += e.nodes;
    if e.nodes >= e.limit {
        return None;
    }
    Some(
        e.fills
            .into_iter()
            .map(|f| {
                let mut v: Vec<u32> = f.iter().map(|&p| order[p as usize]).collect();
                v.sort_unstable();
                v
            })
            .collect(),
    )
}

struct Enum<'v> {
    vec: &'v [Vector],
    sz: &'v [f64],
    cap: Vector,
    half: f64,
    /// Tails: members (first `len` used) and length.
    tails: Vec<([u16; HALF], u8)>,
    /// Key of a demand sum → last tail with it; `chain[t]` is the tail before `t` with the
    /// same key (`u32::MAX` ends the chain).
    table: HashMap<u64, u32>,
    chain: Vec<u32>,
    cur: Vec<u16>,
    fills: Vec<Vec<u16>>,
    nodes: u64,
    limit: u64,
}

impl Enum<'_> {
    fn tails_dfs(&mut self, from: usize, sum: Vector, s: f64) {
        for p in from..self.vec.len() {
            if self.nodes >= self.limit {
                return;
            }
            self.nodes += 1;
            if s + self.sz[p] > self.half {
                continue;
            }
            let next = add(&sum, &self.vec[p]);
            if !fits_in(&next, &self.cap) {
                continue;
            }
            self.cur.push(p as u16);
            let id = self.tails.len() as u32;
            let mut t = [0u16; HALF];
            t[..self.cur.len()].copy_from_slice(&self.cur);
            self.tails.push((t, self.cur.len() as u8));
            let prev = self.table.insert(key(&next), id).unwrap_or(u32::MAX);
            self.chain.push(prev);
            if self.cur.len() < HALF {
                self.tails_dfs(p + 1, next, s + self.sz[p]);
            }
            self.cur.pop();
        }
    }

    fn heads_dfs(&mut self, from: usize, sum: Vector, s: f64) {
        let whole = 2.0 * self.half;
        for p in from..self.vec.len() {
            if self.nodes >= self.limit {
                return;
            }
            self.nodes += 1;
            // Sizes decrease: the rest of the head cannot reach half a host.
            let slots = (HALF - self.cur.len()) as f64;
            if s + slots * self.sz[p] < whole / 2.0 - 2e-9 {
                return;
            }
            let next = add(&sum, &self.vec[p]);
            if !fits_in(&next, &self.cap) {
                continue;
            }
            self.cur.push(p as u16);
            let s2 = s + self.sz[p];
            if s2 >= whole / 2.0 - 2e-9 {
                let mut room = self.cap;
                for (r, x) in room.iter_mut().zip(&next) {
                    *r -= x;
                }
                let a = self.cur.len();
                let mut id = self.table.get(&key(&room)).copied().unwrap_or(u32::MAX);
                while id != u32::MAX {
                    {
                        self.nodes += 1;
                        let (t, len) = &self.tails[id as usize];
                        let tail = &t[..*len as usize];
                        let b = tail.len();
                        if (b == a || b + 1 == a)
                            && tail.first().is_none_or(|&q| q as usize > p)
                            && tail
                                .iter()
                                .fold([0; D], |acc, &q| add(&acc, &self.vec[q as usize]))
                                == room
                        {
                            let mut f = self.cur.clone();
                            f.extend_from_slice(tail);
                            self.fills.push(f);
                        }
                    }
                    id = self.chain[id as usize];
                }
            }
            if self.cur.len() < HALF {
                self.heads_dfs(p + 1, next, s2);
            }
            self.cur.pop();
        }
    }
}

/// Algorithm X: rows of `fills` covering each of `n` items exactly once, most constrained item
/// first; `None` when there is none or the search passes `budget` nodes.
fn cover(n: usize, fills: &[Vec<u32>], budget: u64, work: &mut u64) -> Option<Vec<usize>> {
    let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (r, f) in fills.iter().enumerate() {
        for &i in f {
            rows_of[i as usize].push(r as u32);
        }
    }
    if rows_of.iter().any(Vec::is_empty) {
        return None;
    }
    let mut x = Cover {
        fills,
        rows_of: &rows_of,
        count: rows_of.iter().map(|r| r.len() as u32).collect(),
        small: rows_of
            .iter()
            .map(|rs| {
                let mut c = [0u32; SMALL + 1];
                for &r in rs {
                    let len = fills[r as usize].len();
                    if len <= SMALL {
                        c[len] += 1;
                    }
                }
                c
            })
            .collect(),
        blocked: vec![0; fills.len()],
        covered: vec![false; n],
        chosen: Vec::new(),
        nodes: 0,
        limit: budget,
    };
    let found = x.search(n);
    *work += x.nodes;
    found.then_some(x.chosen)
}

/// Share of the budget the enumeration may use that the cover search may use (a cover, when
/// there is one that this search finds, takes well under a tenth of the enumeration's nodes).
const COVER_SHARE: u64 = 10;

/// Fills of up to this many items count as short in the choice of item.
const SMALL: usize = 5;

struct Cover<'f> {
    fills: &'f [Vec<u32>],
    rows_of: &'f [Vec<u32>],
    /// Open rows per item.
    count: Vec<u32>,
    /// Open rows per item and row length, for lengths up to `SMALL`.
    small: Vec<[u32; SMALL + 1]>,
    /// Per row: how many chosen rows share an item with it (open when 0).
    blocked: Vec<u32>,
    covered: Vec<bool>,
    chosen: Vec<usize>,
    nodes: u64,
    limit: u64,
}

impl Cover<'_> {
    fn search(&mut self, left: usize) -> bool {
        if left == 0 {
            return true;
        }
        self.nodes += 1;
        if self.nodes >= self.limit {
            return false;
        }
        // The item with the shortest open fill (short exact fills are rare by chance, so
        // they are likely part of a cover), then the item with fewest open fills.
        let mut col = usize::MAX;
        let mut best = (usize::MAX, u32::MAX);
        for (i, &c) in self.count.iter().enumerate() {
            if self.covered[i] {
                continue;
            }
            if c == 0 {
                return false;
            }
            let short = self.small[i]
                .iter()
                .position(|&x| x > 0)
                .unwrap_or(SMALL + 1);
            if (short, c) < best {
                best = (short, c);
                col = i;
            }
        }
        // Shortest fill first, then the least constraining one (the fewest other open fills
        // closed: sum of its items' open counts), ties by row.
        let mut rows: Vec<(u64, u32)> = self.rows_of[col]
            .iter()
            .filter(|&&r| self.blocked[r as usize] == 0)
            .map(|&r| {
                let cost: u64 = self.fills[r as usize]
                    .iter()
                    .map(|&i| u64::from(self.count[i as usize]))
                    .sum();
                let len = self.fills[r as usize].len() as u64;
                (len << 40 | cost, r)
            })
            .collect();
        rows.sort_unstable();
        for (_, r) in rows {
            let r = r as usize;
            self.select(r, true);
            self.chosen.push(r);
            if self.search(left - self.fills[r].len()) {
                return true;
            }
            self.chosen.pop();
            self.select(r, false);
            if self.nodes >= self.limit {
                return false;
            }
        }
        false
    }

    /// Choose (or undo) row `r`: cover its items and block every row that shares one.
    fn select(&mut self, r: usize, on: bool) {
        let fills = self.fills;
        let rows_of = self.rows_of;
        for &i in &fills[r] {
            self.covered[i as usize] = on;
            for &r2 in &rows_of[i as usize] {
                let r2 = r2 as usize;
                self.nodes += 1;
                if on {
                    self.blocked[r2] += 1;
                    if self.blocked[r2] == 1 {
                        let len = fills[r2].len();
                        for &j in &fills[r2] {
                            self.count[j as usize] -= 1;
                            if len <= SMALL {
                                self.small[j as usize][len] -= 1;
                            }
                        }
                    }
                } else {
                    self.blocked[r2] -= 1;
                    if self.blocked[r2] == 0 {
                        let len = fills[r2].len();
                        for &j in &fills[r2] {
                            self.count[j as usize] += 1;
                            if len <= SMALL {
                                self.small[j as usize][len] += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::compile;
    use crate::model::{Host, PlanOptions, Workload};

    fn raw() -> PlanOptions {
        PlanOptions {
            max_utilisation: 1.0,
            reserve_memory_gib: 0.0,
            vm_overhead_gib: 0.0,
            ..PlanOptions::default()
        }
    }

    #[test]
    fn tiles_zero_slack_inputs_and_nothing_else() {
        // Hosts: 10 GHz, 100 GiB, 1000 Mbit/s net and disk.
        let hosts: Vec<Host> = (0..6)
            .map(|i| Host::new(&format!("h{i}"), 10, 1.0, 100.0, 1000.0, 1000.0))
            .collect();
        let w = |n: &str, c: f64, m: f64, x: f64| Workload::new(n, c, m, x, x);
        // Two hosts' worth: {a, b, c} and {d, e, f} fill a host each, exactly.
        let workloads = vec![
            w("a", 6.0, 30.0, 500.0),
            w("b", 2.0, 50.0, 250.0),
            w("c", 2.0, 20.0, 250.0),
            w("d", 5.0, 40.0, 400.0),
            w("e", 4.0, 10.0, 300.0),
            w("f", 1.0, 50.0, 300.0),
        ];
        let inst = compile(&hosts, &workloads, &raw()).unwrap();
        // One workload per host: six hosts.
        let mut st = State::new(&inst);
        for i in 0..inst.items.len() {
            assert!(st.fits(i, i));
            st.place(i, i);
        }
        let out = tile(&mut st, 1_000_000).expect("a two-host tiling exists");
        assert_eq!(out.unplaced_workloads(), 0);
        assert_eq!(out.hosts_used(), 2);

        // One unit of CPU less in total: not whole hosts, so no tiling is tried.
        let mut less = workloads.clone();
        less[5] = w("f", 0.5, 50.0, 300.0);
        let inst = compile(&hosts, &less, &raw()).unwrap();
        let mut st = State::new(&inst);
        for i in 0..inst.items.len() {
            st.place(i, i);
        }
        assert!(tile(&mut st, 1_000_000).is_none());
    }
}
