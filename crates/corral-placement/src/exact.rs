//! Exact fills: a set of remaining workloads that fills an empty host to every limit at once,
//! found by iterative deepening over all seeds (the shallowest first).
//!
//! The minimum-bin-slack fill (`density::Fill`) seeds a host with the largest remaining
//! workload and searches depth first; when VMs come from templates or a host's worth of load was
//! split up, a perfect fill exists but may need seven or eight workloads, and the depth-first
//! search runs out of budget in the first branches. [`hunt`] instead looks for *any* perfect
//! fill, shallowest first: for depth 0, 1, 2, … it tries every seed with every set of `depth`
//! further workloads and looks up, in a table of single workloads and of pairs keyed by their
//! summed demand, one or two workloads that fill the rest exactly. Small perfect fills are
//! found with little work wherever they are; taking them first leaves fewer workloads, where
//! the larger ones become cheap to find.
//!
//! Demands are compared as integers (micro-units) and keyed by an additive hash, so the key of
//! the room left is updated in O(1) per step; every match is confirmed on the exact integer
//! vectors, and the caller places the result through `State::fits`. Single-bucket demands
//! only (profiles with a time series never fill a host "exactly"). Work is counted in nodes.

use crate::engine::{State, D, MEM};
use std::collections::HashMap;

/// A demand in integer micro-units, one per resource (shared with `crate::tile`).
pub(crate) type Vector = [i64; D];

pub(crate) fn quantise(v: f64) -> i64 {
    (v * 1e6).round() as i64
}

/// Odd multipliers for the additive key (fixed, so runs repeat).
const MULT: [u64; D] = [
    0x9e37_79b9_7f4a_7c15,
    0xbf58_476d_1ce4_e5b9,
    0x94d0_49bb_1331_11eb,
    0xd6e8_feb8_6659_fd93,
    0xa076_1d64_78bd_642f,
    0xe703_7ed1_a0b4_28db,
];

/// The additive key of a demand: the key of a sum is the sum of the keys.
pub(crate) fn key(v: &Vector) -> u64 {
    v.iter().zip(MULT).fold(0u64, |k, (&x, m)| {
        k.wrapping_add((x as u64).wrapping_mul(m))
    })
}

struct Hunt<'c> {
    cands: &'c [u32],
    need: Vec<Vector>,
    keys: Vec<u64>,
    singles: HashMap<u64, Vec<u16>>,
    pairs: HashMap<u64, Vec<(u16, u16)>>,
    used: Vec<bool>,
    cur: Vec<u16>,
    nodes: u64,
    limit: u64,
    found: Option<Vec<u16>>,
}

/// A perfect fill of empty host `h` from `remaining` found within `limit` nodes (the first at
/// the shallowest depth: depth `k` finds fills of up to `k + 3` items), as item indexes, or
/// `None`. `max_depth` caps the search depth (the fill has at most
/// `max_depth + 3` items).
pub(crate) fn hunt(
    st: &mut State,
    h: usize,
    remaining: &[u32],
    limit: u64,
    max_depth: usize,
) -> Option<Vec<u32>> {
    let inst = st.inst;
    if inst.t != 1 || !st.on[h].is_empty() {
        return None;
    }
    let hc = &inst.hosts[h];
    // Only resources with a finite limit can be filled exactly; all others must be unused.
    let mut cap: Vector = [0; D];
    for (d, c) in cap.iter_mut().enumerate() {
        if inst.active[d] {
            if !hc.limit[d].is_finite() || hc.limit[d] <= 0.0 {
                return None;
            }
            *c = quantise(hc.limit[d]);
        }
    }
    let cands: Vec<u32> = remaining
        .iter()
        .copied()
        .filter(|&i| st.fits(i as usize, h))
        .collect();
    if cands.is_empty() || cands.len() > u16::MAX as usize {
        return None;
    }
    let need: Vec<Vector> = cands
        .iter()
        .map(|&i| {
            let it = &inst.items[i as usize];
            let mut v = [0; D];
            for (d, x) in v.iter_mut().enumerate() {
                if inst.active[d] {
                    let extra = if d == MEM {
                        f64::from(it.vms) * hc.overhead
                    } else {
                        0.0
                    };
                    *x = quantise(it.peak[d] + extra);
                }
            }
            v
        })
        .collect();
    let keys: Vec<u64> = need.iter().map(key).collect();
    let mut singles: HashMap<u64, Vec<u16>> = HashMap::new();
    for (p, &k) in keys.iter().enumerate() {
        singles.entry(k).or_default().push(p as u16);
    }
    let mut pairs: HashMap<u64, Vec<(u16, u16)>> = HashMap::new();
    let c = cands.len();
    let mut work = c as u64;
    if c <= 600 {
        for a in 0..c {
            for b in a + 1..c {
                if (0..D).all(|d| need[a][d] + need[b][d] <= cap[d]) {
                    pairs
                        .entry(keys[a].wrapping_add(keys[b]))
                        .or_default()
                        .push((a as u16, b as u16));
                }
            }
        }
        work += (c * c / 2) as u64;
    }
    let mut hunt = Hunt {
        cands: &cands,
        need,
        keys,
        singles,
        pairs,
        used: vec![false; c],
        cur: Vec::new(),
        nodes: work,
        limit,
        found: None,
    };
    for depth in 0..=max_depth {
        for s in 0..c {
            if hunt.nodes >= hunt.limit {
                st.work += hunt.nodes;
                return None;
            }
            let mut room = cap;
            for (r, x) in room.iter_mut().zip(&hunt.need[s]) {
                *r -= x;
            }
            let k = key(&cap).wrapping_sub(hunt.keys[s]);
            hunt.used[s] = true;
            hunt.cur.push(s as u16);
            hunt.dfs(&room, k, s + 1, depth);
            hunt.cur.pop();
            hunt.used[s] = false;
            if let Some(set) = hunt.found.take() {
                st.work += hunt.nodes;
                return Some(set.into_iter().map(|p| hunt.cands[p as usize]).collect());
            }
        }
    }
    st.work += hunt.nodes;
    None
}

impl Hunt<'_> {
    /// Look up one or two unused candidates that fill `room` exactly.
    fn complete(&mut self, room: &Vector, k: u64) -> bool {
        if room.iter().all(|&r| r == 0) {
            self.found = Some(self.cur.clone());
            return true;
        }
        if let Some(list) = self.singles.get(&k) {
            for &a in list {
                if !self.used[a as usize] && self.need[a as usize] == *room {
                    let mut set = self.cur.clone();
                    set.push(a);
                    self.found = Some(set);
                    return true;
                }
            }
        }
        if let Some(list) = self.pairs.get(&k) {
            for &(a, b) in list {
                if self.used[a as usize] || self.used[b as usize] {
                    continue;
                }
                let (na, nb) = (&self.need[a as usize], &self.need[b as usize]);
                if (0..D).all(|d| na[d] + nb[d] == room[d]) {
                    let mut set = self.cur.clone();
                    set.extend([a, b]);
                    self.found = Some(set);
                    return true;
                }
            }
        }
        false
    }

    /// Add `depth` more candidates (positions `from..`) that fit, then look up the rest.
    fn dfs(&mut self, room: &Vector, k: u64, from: usize, depth: usize) {
        self.nodes += 1;
        if depth == 0 {
            self.complete(room, k);
            return;
        }
        for p in from..self.cands.len() {
            if self.nodes >= self.limit || self.found.is_some() {
                return;
            }
            let n = &self.need[p];
            if (0..D).any(|d| n[d] > room[d]) {
                continue;
            }
            let mut next = *room;
            for (r, x) in next.iter_mut().zip(n) {
                *r -= x;
            }
            let nk = k.wrapping_sub(self.keys[p]);
            self.used[p] = true;
            self.cur.push(p as u16);
            self.dfs(&next, nk, p + 1, depth - 1);
            self.cur.pop();
            self.used[p] = false;
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
            ..PlanOptions::default()
        }
    }

    fn names(inst: &crate::engine::Instance, set: &[u32]) -> Vec<usize> {
        let mut v: Vec<usize> = set
            .iter()
            .flat_map(|&i| inst.items[i as usize].members.clone())
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn finds_exact_fills_and_nothing_inexact() {
        // Host: 10 GHz (10 cores × 1 GHz), 100 GiB, 1000 Mbit/s net and disk.
        let hosts = vec![Host::new("h", 10, 1.0, 100.0, 1000.0, 1000.0)];
        let w = |n: &str, c: f64, m: f64| Workload::new(n, c, m, 100.0, 100.0);
        // w0+w1+w2 fill CPU and memory exactly but not net/disk: so nothing is exact until
        // the net and disk columns add up too.
        let workloads = vec![
            w("a", 6.0, 30.0),
            w("b", 2.0, 50.0),
            w("c", 2.0, 20.0),
            w("d", 5.0, 50.0),
        ];
        let inst = compile(&hosts, &workloads, &raw()).unwrap();
        let mut st = State::new(&inst);
        let all: Vec<u32> = (0..inst.items.len() as u32).collect();
        assert_eq!(hunt(&mut st, 0, &all, 1_000_000, 5), None);

        let w = |n: &str, c: f64, m: f64, x: f64| Workload::new(n, c, m, x, x);
        let workloads = vec![
            w("a", 6.0, 30.0, 500.0),
            w("b", 2.0, 50.0, 250.0),
            w("c", 2.0, 20.0, 250.0),
            w("d", 5.0, 50.0, 400.0),
            w("e", 5.0, 50.0, 600.0),
        ];
        let inst = compile(&hosts, &workloads, &raw()).unwrap();
        let mut st = State::new(&inst);
        let all: Vec<u32> = (0..inst.items.len() as u32).collect();
        let set = hunt(&mut st, 0, &all, 1_000_000, 5).expect("an exact fill exists");
        // Depth 0 (a seed and one or two looked up) finds one of the two exact fills.
        let found = names(&inst, &set);
        assert!(found == vec![0, 1, 2] || found == vec![3, 4], "{found:?}");
        // Without d, the three-workload fill a + b + c is the only one.
        let rest: Vec<u32> = all
            .iter()
            .copied()
            .filter(|&i| inst.items[i as usize].members != vec![3])
            .collect();
        let set = hunt(&mut st, 0, &rest, 1_000_000, 5).expect("a + b + c");
        assert_eq!(names(&inst, &set), vec![0, 1, 2]);
    }
}
