//! Density improvement by repacking: empty one host at a time through a pool of displaced
//! workloads (a consistent-neighbourhood tabu search after Buljubašić and Vasquez).
//!
//! Moving a host's workloads one by one onto other hosts (`density::empty_hosts`) fails as soon
//! as one of them fits nowhere as things stand, which is the common case when hosts are well
//! filled. Here the workloads of the host being closed go into a pool, and the search swaps
//! them into the other used hosts, each time taking out up to two residents that make room;
//! those join the pool. The pool's weight (sum of squared normalised sizes) steers the search:
//! large workloads go into hosts and small, easy ones come out, until the pool is empty (one
//! host fewer, and the search goes on with the next host) or the attempt's budget is spent
//! (the state is restored). A short tabu list stops a workload from going straight back into
//! the host it just left, so the search does not cycle.
//!
//! Every move goes through the same capacity and constraint checks as the rest of the planner
//! ([`fits_swap`] is `State::fits` with some residents taken out), and all effort is counted
//! in fit checks, so the result is deterministic.

use crate::engine::{State, D, MEM, NONE};

/// Pool weight of an item: its squared normalised size.
fn weight(st: &State, i: usize) -> f64 {
    let s = st.inst.items[i].size;
    s * s
}

/// Does item `p` fit host `g` once the residents in `out` are taken off it?
pub(crate) fn fits_swap(st: &mut State, p: usize, g: usize, out: &[usize]) -> bool {
    st.work += 1;
    let inst = st.inst;
    let it = &inst.items[p];
    if let Some(m) = it.mask {
        if !inst.masks[m as usize][g] {
            return false;
        }
    }
    let out_vms: u32 = out.iter().map(|&r| inst.items[r].vms).sum();
    if (st.vms[g] - out_vms).saturating_add(it.vms) > inst.hosts[g].max_vms {
        return false;
    }
    for a in &it.apart {
        let here = st.groups[g].iter().filter(|x| *x == a).count();
        let leaving = out
            .iter()
            .filter(|&&r| inst.items[r].apart.contains(a))
            .count();
        if here > leaving {
            return false;
        }
    }
    let hc = &inst.hosts[g];
    let n = inst.t * D;
    let base = g * n;
    for k in 0..n {
        let d = k % D;
        let mut need = it.dem[k];
        if d == MEM {
            need += f64::from(it.vms) * hc.overhead;
        }
        if need <= 0.0 {
            continue;
        }
        let mut load = st.load[base + k];
        for &r in out {
            load -= inst.items[r].dem[k];
            if d == MEM {
                load -= f64::from(inst.items[r].vms) * hc.overhead;
            }
        }
        if load + need > hc.threshold[d] {
            return false;
        }
    }
    true
}

/// Try to close used hosts one after another; keeps every success.
pub(crate) fn reduce_hosts(st: &mut State, budget: u64, attempt_budget: u64) {
    let stop = st.work + budget;
    loop {
        let mut used: Vec<(f64, usize)> = (0..st.inst.hosts.len())
            .filter(|&h| {
                !st.on[h].is_empty()
                    && st.on[h]
                        .iter()
                        .all(|&i| st.inst.items[i as usize].pinned.is_none())
            })
            .map(|h| (st.fill(h), h))
            .collect();
        used.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut closed = false;
        for &(_, h) in used.iter().take(4) {
            if st.work >= stop {
                return;
            }
            let snapshot = st.clone();
            let limit = stop.min(st.work + attempt_budget);
            if close_host(st, h, limit) {
                closed = true;
                break;
            }
            let work = st.work;
            *st = snapshot;
            st.work = work;
        }
        if !closed {
            return;
        }
    }
}

/// Empty host `h` through the pool; false (with the state half-changed) when the budget runs out.
fn close_host(st: &mut State, h: usize, limit: u64) -> bool {
    const TENURE: u64 = 8;
    let hosts: Vec<usize> = st
        .inst
        .host_order
        .iter()
        .map(|&g| g as usize)
        .filter(|&g| g != h && !st.on[g].is_empty())
        .collect();
    if hosts.is_empty() {
        return false;
    }
    let mut pool: Vec<usize> = st.on[h].iter().map(|&i| i as usize).collect();
    for &i in &pool {
        st.remove(i);
    }
    // (item, host it left, last iteration it may not return).
    let mut tabu: Vec<(usize, usize, u64)> = Vec::new();
    // A fixed-seed generator varies tenure and breaks ties, so the search does not settle
    // into a cycle; the seed depends only on the input, so runs repeat exactly.
    let mut rng = Splitmix(0x5eed ^ (h as u64) ^ (st.inst.items.len() as u64) << 20);
    let mut iter: u64 = 0;
    while !pool.is_empty() {
        if st.work >= limit {
            return false;
        }
        iter += 1;
        tabu.retain(|&(_, _, until)| until >= iter);
        // Largest first, so the scan meets the most valuable direct insertions early.
        pool.sort_by(|&a, &b| weight(st, b).total_cmp(&weight(st, a)).then(a.cmp(&b)));
        let mut best: Option<(f64, usize, usize, [usize; 2])> = None;
        for (pi, &p) in pool.iter().enumerate() {
            let wp = weight(st, p) * (1.0 + 0.05 * rng.unit());
            for &g in &hosts {
                let is_tabu = tabu.iter().any(|&(i, x, _)| i == p && x == g);
                if is_tabu && pool.len() > 1 {
                    continue;
                }
                if let Some(m) = st.inst.items[p].mask {
                    if !st.inst.masks[m as usize][g] {
                        continue;
                    }
                }
                if fits_swap(st, p, g, &[]) {
                    let delta = -wp;
                    if best.is_none_or(|(b, ..)| delta < b - 1e-12) {
                        best = Some((delta, pi, g, [NONE as usize; 2]));
                    }
                    continue;
                }
                let residents: Vec<usize> = st.on[g]
                    .iter()
                    .map(|&r| r as usize)
                    .filter(|&r| st.inst.items[r].pinned.is_none())
                    .collect();
                let mut single = false;
                for &a in &residents {
                    let delta = weight(st, a) - wp;
                    if best.is_some_and(|(b, ..)| delta >= b - 1e-12) {
                        continue;
                    }
                    if fits_swap(st, p, g, &[a]) {
                        single = true;
                        best = Some((delta, pi, g, [a, NONE as usize]));
                    }
                }
                if single {
                    continue;
                }
                for (x, &a) in residents.iter().enumerate() {
                    for &b in &residents[x + 1..] {
                        let delta = weight(st, a) + weight(st, b) - wp;
                        if best.is_some_and(|(bd, ..)| delta >= bd - 1e-12) {
                            continue;
                        }
                        if fits_swap(st, p, g, &[a, b]) {
                            best = Some((delta, pi, g, [a, b]));
                        }
                    }
                }
            }
            if st.work >= limit {
                return false;
            }
        }
        let Some((_, pi, g, out)) = best else {
            return false;
        };
        let p = pool.swap_remove(pi);
        for r in out {
            if r != NONE as usize {
                st.remove(r);
                pool.push(r);
                tabu.push((r, g, iter + TENURE + rng.next() % TENURE));
            }
        }
        st.place(p, g);
    }
    true
}

/// splitmix64: a tiny deterministic generator for tie-breaking.
struct Splitmix(u64);

impl Splitmix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
