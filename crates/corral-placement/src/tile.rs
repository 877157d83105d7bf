//! Perfect tiling: when the total demand is exactly the capacity of `k` identical hosts, a plan
//! on `k` hosts must fill every one of them to every limit at once, so it is an exact cover of
//! the workloads by *exact fills* (sets of workloads whose demand vectors sum to one host's
//! limits). [`tile`] enumerates every exact fill of up to [`MAX_FILL`] workloads and solves the
//! exact cover with Knuth's Algorithm X on array-based dancing links.
//!
//! Enumeration is meet-in-the-middle. With the workloads sorted by decreasing size, a fill's
//! members in that order split into a head `A` (the first ⌈s/2⌉) and a tail `B` (the rest, every
//! one after all of `A`); `B` is no larger than `A`, so it holds at most half a host. All
//! subsets of up to four workloads that fit in half a host are tabled by their demand sum; a
//! depth-first walk over the heads (up to four workloads, at least half a host) looks up
//! `limit − sum(A)` in the table, so every fill is found exactly once, by one lookup.
//!
//! The cover picks, at each node, the uncovered workload in the fewest fills still open (a
//! workload in none closes the branch at once) and tries its fills least constraining first;
//! when that search runs out of budget, a second one branches on the workload with the shortest
//! open fill instead. The known-optimum inputs have essentially one cover among thousands of
//! fills, and nothing local tells its fills from the others (a composition of a host is as
//! likely as any other set of parts with the same sums), so what decides is how many nodes a
//! budget buys: closing a row costs a few array writes, and only rows still open are touched.
//! Demands are compared as integers (micro-units); the result is placed through `State::fits`,
//! so a cover that breaks any other rule is dropped. Everything is counted in work units
//! against a budget; inputs whose demand does not add up to whole hosts return at once.

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
    let cover = cover(n, &fills, budget, &mut st.work)?;
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

/// Algorithm X: rows of `fills` covering each of `n` items exactly once, or `None` when there
/// is none or the searches pass their budgets (units: row removals and candidates ranked).
/// Two searches that differ only in the item branched on run one after the other: most
/// constrained item first (`budget`), then shortest open fill first (`budget / 4`). On the
/// 4-resource known-optimum instances each covers some that the other misses within budget.
fn cover(n: usize, fills: &[Vec<u32>], budget: u64, work: &mut u64) -> Option<Vec<usize>> {
    let mut x = Links::new(n, fills)?;
    let mut found = x.search(budget, false);
    if !found {
        // A search that stops restores every row it closed, so the second starts afresh.
        let second = x.work + budget / 4;
        found = x.search(second, true);
    }
    *work += x.work;
    found.then(|| x.chosen.iter().map(|&r| r as usize).collect())
}

/// Dancing links on arrays (Knuth's Algorithm X with sparse sets instead of linked lists).
///
/// Each item keeps the rows (exact fills) that contain it in one slice of `list`; the first
/// `len[i]` entries are the rows still open. Closing a row swaps its entry behind the open
/// part of each of its items' slices, so reopening it is only `len += 1`, provided rows are
/// reopened in the reverse order they were closed, which the depth-first search guarantees.
/// A search node therefore costs what it removes, not what the instance holds: the counting
/// version this replaces visited every row of an item, open or not, and reached only about a
/// thousand nodes in its budget on 140 workloads.
struct Links<'f> {
    fills: &'f [Vec<u32>],
    /// Entry `row * MAX_FILL + slot`: where that slot's entry sits in `list`.
    pos: Vec<u32>,
    /// Per item, its rows as entries `row * MAX_FILL + slot`, open ones first.
    list: Vec<u32>,
    start: Vec<u32>,
    len: Vec<u32>,
    /// Per item, its open rows by length (index = number of workloads in the fill).
    by_len: Vec<[u32; MAX_FILL + 1]>,
    /// Uncovered items, the first `left` of `items`; `at[i]` is item i's index there.
    items: Vec<u32>,
    at: Vec<u32>,
    left: usize,
    chosen: Vec<u32>,
    work: u64,
}

impl<'f> Links<'f> {
    /// `None` when some item is in no row (no cover can exist).
    fn new(n: usize, fills: &'f [Vec<u32>]) -> Option<Links<'f>> {
        // Entries are numbered `row * MAX_FILL + slot`: a longer row would collide.
        debug_assert!(fills.iter().all(|f| f.len() <= MAX_FILL));
        let mut len = vec![0u32; n];
        for f in fills {
            for &i in f {
                len[i as usize] += 1;
            }
        }
        if len.contains(&0) {
            return None;
        }
        let mut start = Vec::with_capacity(n);
        let mut acc = 0u32;
        for &l in &len {
            start.push(acc);
            acc += l;
        }
        let mut by_len = vec![[0u32; MAX_FILL + 1]; n];
        for f in fills {
            for &i in f {
                by_len[i as usize][f.len()] += 1;
            }
        }
        let mut list = vec![0u32; acc as usize];
        let mut pos = vec![0u32; fills.len() * MAX_FILL];
        let mut fill_level = vec![0u32; n];
        for (r, f) in fills.iter().enumerate() {
            for (slot, &i) in f.iter().enumerate() {
                let i = i as usize;
                let p = start[i] + fill_level[i];
                fill_level[i] += 1;
                let entry = (r * MAX_FILL + slot) as u32;
                list[p as usize] = entry;
                pos[entry as usize] = p;
            }
        }
        Some(Links {
            fills,
            pos,
            list,
            start,
            len,
            by_len,
            items: (0..n as u32).collect(),
            at: (0..n as u32).collect(),
            left: n,
            chosen: Vec::new(),
            work: 0,
        })
    }

    /// Close row `r` in the slices of its items other than `skip`.
    fn close(&mut self, r: usize, skip: u32) {
        self.work += 1;
        let size = self.fills[r].len();
        for (slot, &j) in self.fills[r].iter().enumerate() {
            if j == skip {
                continue;
            }
            let j = j as usize;
            let entry = r * MAX_FILL + slot;
            let p = self.pos[entry] as usize;
            let last = (self.start[j] + self.len[j] - 1) as usize;
            let other = self.list[last];
            self.list[p] = other;
            self.pos[other as usize] = p as u32;
            self.list[last] = entry as u32;
            self.pos[entry] = last as u32;
            self.len[j] -= 1;
            self.by_len[j][size] -= 1;
        }
    }

    /// Reopen row `r` (the last row closed in each of those slices).
    fn reopen(&mut self, r: usize, skip: u32) {
        let size = self.fills[r].len();
        for &j in self.fills[r].iter().rev() {
            if j != skip {
                self.len[j as usize] += 1;
                self.by_len[j as usize][size] += 1;
            }
        }
    }

    fn row(&self, i: usize, k: usize) -> usize {
        self.list[(self.start[i] as usize) + k] as usize / MAX_FILL
    }

    /// Cover item `i`: take it off the uncovered set and close every open row through it.
    fn cover_item(&mut self, i: usize) {
        let p = self.at[i] as usize;
        let last = self.left - 1;
        let o = self.items[last] as usize;
        self.items.swap(p, last);
        self.at[o] = p as u32;
        self.at[i] = last as u32;
        self.left -= 1;
        for k in 0..self.len[i] as usize {
            let r = self.row(i, k);
            self.close(r, i as u32);
        }
    }

    fn uncover_item(&mut self, i: usize) {
        for k in (0..self.len[i] as usize).rev() {
            let r = self.row(i, k);
            self.reopen(r, i as u32);
        }
        self.left += 1;
    }

    fn select(&mut self, r: usize) {
        for &i in &self.fills[r] {
            self.cover_item(i as usize);
        }
        self.chosen.push(r as u32);
    }

    fn unselect(&mut self, r: usize) {
        self.chosen.pop();
        for &i in self.fills[r].iter().rev() {
            self.uncover_item(i as usize);
        }
    }

    /// Depth-first search. The item branched on is the uncovered one with fewest open rows (a
    /// forced item first; an item with none ends the branch), or with `short_first` the one
    /// with the shortest open row, then fewest open rows (a fill of few workloads is rare by
    /// chance, so likely part of the cover). Its rows go least constraining first: fewest open
    /// rows through their items, which are the rows choosing them closes; ties by row index.
    fn search(&mut self, budget: u64, short_first: bool) -> bool {
        if self.left == 0 {
            return true;
        }
        let mut col = usize::MAX;
        let mut best = (usize::MAX, u32::MAX);
        for &i in &self.items[..self.left] {
            let i = i as usize;
            let l = self.len[i];
            let short = if short_first && l > 0 {
                self.by_len[i].iter().position(|&c| c > 0).unwrap_or(0)
            } else {
                0
            };
            if (short, l) < best || ((short, l) == best && i < col) {
                best = (short, l);
                col = i;
            }
        }
        let best = best.1;
        if best == 0 {
            return false;
        }
        let mut rows: Vec<(u64, u32)> = (0..best as usize)
            .map(|k| {
                let r = self.row(col, k);
                let cost: u64 = self.fills[r]
                    .iter()
                    .map(|&i| u64::from(self.len[i as usize]))
                    .sum();
                (cost, r as u32)
            })
            .collect();
        self.work += rows.len() as u64;
        rows.sort_unstable();
        for (_, r) in rows {
            if self.work >= budget {
                return false;
            }
            let r = r as usize;
            self.select(r);
            if self.search(budget, short_first) {
                return true;
            }
            self.unselect(r);
        }
        false
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

    /// Knuth's example (items A..G as 0..6): the only exact cover is {A, D}, {C, E, F}, {B, G}.
    fn knuth() -> Vec<Vec<u32>> {
        vec![
            vec![2, 4, 5],
            vec![0, 3, 6],
            vec![1, 2, 5],
            vec![0, 3],
            vec![1, 6],
            vec![3, 4, 6],
        ]
    }

    #[test]
    fn dancing_links_find_the_only_cover_under_either_rule() {
        let fills = knuth();
        for short_first in [false, true] {
            let mut x = Links::new(7, &fills).expect("every item is in a row");
            assert!(x.search(1_000, short_first));
            let mut rows: Vec<u32> = x.chosen.clone();
            rows.sort_unstable();
            assert_eq!(rows, vec![0, 3, 4], "short_first = {short_first}");
        }
        let mut work = 0;
        let mut rows = cover(7, &fills, 1_000, &mut work).expect("a cover");
        rows.sort_unstable();
        assert_eq!(rows, vec![0, 3, 4]);
        assert!(work > 0);
    }

    #[test]
    fn dancing_links_restore_everything_when_there_is_no_cover() {
        // Without {B, G}, B must come with C and F, then A, D, E, G are left: {A, D, G} leaves
        // E alone and {D, E, G} leaves A alone, so there is no cover.
        let mut fills = knuth();
        fills.remove(4);
        let mut x = Links::new(7, &fills).expect("every item is in a row");
        let (len, by_len, list) = (x.len.clone(), x.by_len.clone(), x.list.clone());
        assert!(!x.search(1_000, false));
        assert!(!x.search(x.work + 1_000, true));
        assert_eq!(x.left, 7);
        assert!(x.chosen.is_empty());
        assert_eq!(x.len, len);
        assert_eq!(x.by_len, by_len);
        // Rows may sit in another order within an item's slice, but the same rows are there.
        for i in 0..7 {
            let slice = |l: &[u32]| {
                let a = x.start[i] as usize;
                let mut v: Vec<u32> = l[a..a + len[i] as usize].to_vec();
                v.sort_unstable();
                v
            };
            assert_eq!(slice(&x.list), slice(&list));
        }
        let mut work = 0;
        assert_eq!(cover(7, &fills, 1_000, &mut work), None);
        // An item in no row: no cover, found before any search.
        assert!(Links::new(8, &knuth()).is_none());
    }

    #[test]
    fn dancing_links_stop_at_the_budget() {
        let fills = knuth();
        let mut work = 0;
        // Ranking the first item's two rows already spends a budget of 1.
        assert_eq!(cover(7, &fills, 1, &mut work), None);
        assert!(work >= 1);
    }
}
