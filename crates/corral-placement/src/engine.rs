//! The planner's internal form and its packing machinery.
//!
//! [`compile`] turns validated hosts and workloads into an [`Instance`]: keep-together groups
//! become one item, pins and network requirements become a host mask, apart groups become small
//! integer ids, and every demand becomes a dense `buckets × resources` row. A [`State`] holds a
//! (partial) assignment with per-host load per hour and answers "does item i fit on host h?"
//! in O(buckets × resources). The heuristics in `density` and `performance` only ever move
//! items through `State::place`/`State::remove`, so capacity and constraints are checked in one
//! place.

use crate::model::{Host, ModelError, PlanOptions, Workload, TIME_BUCKETS};
use crate::resource::{Amounts, Resource, RESOURCES};
use std::collections::BTreeMap;

pub(crate) const D: usize = RESOURCES;
pub(crate) const MEM: usize = Resource::Memory as usize;
pub(crate) const NONE: u32 = u32::MAX;

/// Relative tolerance for capacity checks, so that loads that sum exactly to a limit fit.
fn tolerance(limit: f64) -> f64 {
    1e-9 * limit.abs().max(1.0)
}

pub(crate) struct HostCap {
    pub cap: Amounts,
    /// What VMs may use: `cap × max_utilisation`, memory also less the reserve.
    pub limit: Amounts,
    /// `limit` plus the rounding tolerance: the largest load that still fits.
    pub threshold: Amounts,
    pub reserve: f64,
    pub overhead: f64,
    pub max_vms: u32,
}

pub(crate) struct Item {
    /// Workload indexes (more than one for a keep-together group).
    pub members: Vec<usize>,
    /// Demand per bucket and resource, row-major `[bucket][resource]`.
    pub dem: Vec<f64>,
    pub peak: Amounts,
    /// Lowest demand over the buckets, per resource (for pruning).
    pub low: Amounts,
    pub apart: Vec<u32>,
    pub mask: Option<u32>,
    pub pinned: Option<u32>,
    pub vms: u32,
    /// Normalised size: sum over resources of peak / mean host limit.
    pub size: f64,
    /// Largest normalised resource.
    pub max_dim: f64,
    /// Sum of squared normalised resources.
    pub sq: f64,
}

pub(crate) struct Instance {
    pub t: usize,
    pub hosts: Vec<HostCap>,
    pub items: Vec<Item>,
    pub masks: Vec<Vec<bool>>,
    pub apart_names: Vec<String>,
    /// Resources some item uses and some host limits.
    pub active: [bool; D],
    /// Hosts by decreasing normalised capacity, ties by input order.
    pub host_order: Vec<u32>,
}

/// Compile validated inputs into the planner's internal form.
pub(crate) fn compile(
    hosts: &[Host],
    workloads: &[Workload],
    options: &PlanOptions,
) -> Result<Instance, ModelError> {
    let t = if workloads.iter().any(|w| w.demand.series.is_some()) {
        TIME_BUCKETS
    } else {
        1
    };
    let host_index: BTreeMap<&str, u32> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i as u32))
        .collect();
    let caps: Vec<HostCap> = hosts
        .iter()
        .map(|h| {
            let cap = h.capacity();
            let reserve = h.reserve_memory_gib.unwrap_or(options.reserve_memory_gib);
            let overhead = h.vm_overhead_gib.unwrap_or(options.vm_overhead_gib);
            let cap_fraction = h.max_utilisation.unwrap_or(options.max_utilisation);
            let mut limit = cap.map(|c| c * cap_fraction);
            // Overcommit stretches what VMs may be given, never the reserve the host keeps.
            limit[MEM] = (limit[MEM] * options.memory_overcommit - reserve).max(0.0);
            let max_vms = match (h.max_vms, options.max_vms_per_host) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => u32::MAX,
            };
            HostCap {
                cap,
                limit,
                threshold: limit.map(|l| l + tolerance(l)),
                reserve,
                overhead,
                max_vms,
            }
        })
        .collect();

    // Keep-together groups: union-find over workloads sharing a group name.
    let mut parent: Vec<usize> = (0..workloads.len()).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut first_of_group: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, w) in workloads.iter().enumerate() {
        for g in &w.together {
            match first_of_group.get(g.as_str()) {
                Some(&j) => {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    let (lo, hi) = (a.min(b), a.max(b));
                    parent[hi] = lo;
                }
                None => {
                    first_of_group.insert(g.as_str(), i);
                }
            }
        }
    }
    let mut components: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..workloads.len() {
        let root = find(&mut parent, i);
        components.entry(root).or_default().push(i);
    }

    let mut apart_ids: BTreeMap<&str, u32> = BTreeMap::new();
    let mut apart_names = Vec::new();
    for w in workloads {
        for g in &w.apart {
            if !apart_ids.contains_key(g.as_str()) {
                apart_ids.insert(g.as_str(), apart_names.len() as u32);
                apart_names.push(g.clone());
            }
        }
    }

    let mut mask_ids: BTreeMap<(Vec<String>, Option<u32>), u32> = BTreeMap::new();
    let mut masks: Vec<Vec<bool>> = Vec::new();
    let mut items = Vec::with_capacity(components.len());
    for members in components.into_values() {
        let together_name = |a: usize| workloads[a].together.first().cloned().unwrap_or_default();
        // Pins must agree; apart groups must not repeat inside a together group.
        let mut pinned: Option<(u32, usize)> = None;
        let mut seen_apart: BTreeMap<u32, usize> = BTreeMap::new();
        let mut networks: Vec<String> = Vec::new();
        let mut dem = vec![0.0; t * D];
        let mut peak = [0.0; D];
        for &m in &members {
            let w = &workloads[m];
            if let Some(h) = &w.host {
                let hi = *host_index
                    .get(h.as_str())
                    .ok_or_else(|| ModelError::UnknownHost {
                        workload: w.name.clone(),
                        host: h.clone(),
                    })?;
                match pinned {
                    Some((p, _)) if p != hi => {
                        return Err(ModelError::ConflictingPins {
                            group: together_name(m),
                            a: hosts[p as usize].name.clone(),
                            b: h.clone(),
                        })
                    }
                    _ => pinned = Some((hi, m)),
                }
            }
            for g in &w.apart {
                let id = apart_ids[g.as_str()];
                if let Some(&other) = seen_apart.get(&id) {
                    if other != m {
                        return Err(ModelError::TogetherAndApart {
                            a: workloads[other].name.clone(),
                            b: w.name.clone(),
                            together: together_name(m),
                            apart: g.clone(),
                        });
                    }
                }
                seen_apart.insert(id, m);
            }
            networks.extend(w.networks.iter().cloned());
            for b in 0..t {
                let a = if t == 1 {
                    w.demand.peak
                } else {
                    w.demand.at(b)
                };
                for d in 0..D {
                    dem[b * D + d] += a[d];
                }
            }
        }
        for b in 0..t {
            for d in 0..D {
                peak[d] = f64::max(peak[d], dem[b * D + d]);
            }
        }
        let mut low = [f64::INFINITY; D];
        for b in 0..t {
            for d in 0..D {
                low[d] = low[d].min(dem[b * D + d]);
            }
        }
        networks.sort();
        networks.dedup();
        let pin = pinned.map(|(h, _)| h);
        let mask = if networks.is_empty() && pin.is_none() {
            None
        } else {
            let key = (networks.clone(), pin);
            let next = masks.len() as u32;
            let id = *mask_ids.entry(key).or_insert(next);
            if id == next {
                masks.push(
                    hosts
                        .iter()
                        .enumerate()
                        .map(|(hi, h)| {
                            pin.is_none_or(|p| p as usize == hi)
                                && networks.iter().all(|n| h.networks.contains(n))
                        })
                        .collect(),
                );
            }
            Some(id)
        };
        let mut apart: Vec<u32> = seen_apart.into_keys().collect();
        apart.sort_unstable();
        items.push(Item {
            vms: members.len() as u32,
            members,
            dem,
            peak,
            low,
            apart,
            mask,
            pinned: pin,
            size: 0.0,
            max_dim: 0.0,
            sq: 0.0,
        });
    }

    // Normalise by the mean limit of the hosts, per resource.
    let mut scale = [0.0; D];
    for (d, s) in scale.iter_mut().enumerate() {
        let finite: Vec<f64> = caps
            .iter()
            .map(|h| h.limit[d])
            .filter(|l| l.is_finite() && *l > 0.0)
            .collect();
        if !finite.is_empty() {
            *s = finite.len() as f64 / finite.iter().sum::<f64>();
        }
    }
    let mut active = [false; D];
    for it in &mut items {
        let mut size = 0.0;
        let mut max_dim: f64 = 0.0;
        let mut sq = 0.0;
        for d in 0..D {
            let v = it.peak[d] * scale[d];
            size += v;
            max_dim = max_dim.max(v);
            sq += v * v;
            if v > 0.0 {
                active[d] = true;
            }
        }
        it.size = size;
        it.max_dim = max_dim;
        it.sq = sq;
    }
    let host_size = |h: &HostCap| -> f64 {
        (0..D)
            .filter(|&d| h.limit[d].is_finite())
            .map(|d| h.limit[d] * scale[d])
            .sum()
    };
    let mut host_order: Vec<u32> = (0..caps.len() as u32).collect();
    host_order.sort_by(|&a, &b| {
        host_size(&caps[b as usize])
            .total_cmp(&host_size(&caps[a as usize]))
            .then(a.cmp(&b))
    });
    Ok(Instance {
        t,
        hosts: caps,
        items,
        masks,
        apart_names,
        active,
        host_order,
    })
}

/// Why an item does not fit a host, first failing check first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Misfit {
    Mask,
    MaxVms,
    Apart(u32),
    /// Resource, the bucket where it is worst, and the load it would reach.
    Capacity {
        resource: usize,
        after: f64,
    },
}

/// A (partial) assignment of items to hosts with the load it puts on each host.
#[derive(Clone)]
pub(crate) struct State<'a> {
    pub inst: &'a Instance,
    /// `[host][bucket][resource]`.
    pub load: Vec<f64>,
    pub vms: Vec<u32>,
    pub groups: Vec<Vec<u32>>,
    pub host_of: Vec<u32>,
    pub on: Vec<Vec<u32>>,
    /// Fit checks and placements done, the unit of search effort.
    pub work: u64,
}

impl<'a> State<'a> {
    pub fn new(inst: &'a Instance) -> State<'a> {
        let m = inst.hosts.len();
        State {
            inst,
            load: vec![0.0; m * inst.t * D],
            vms: vec![0; m],
            groups: vec![Vec::new(); m],
            host_of: vec![NONE; inst.items.len()],
            on: vec![Vec::new(); m],
            work: 0,
        }
    }

    /// Constraint checks only (mask, VM count, apart groups).
    #[inline]
    pub fn allowed(&self, i: usize, h: usize) -> bool {
        let it = &self.inst.items[i];
        if let Some(m) = it.mask {
            if !self.inst.masks[m as usize][h] {
                return false;
            }
        }
        if self.vms[h].saturating_add(it.vms) > self.inst.hosts[h].max_vms {
            return false;
        }
        it.apart.is_empty() || !self.groups[h].iter().any(|g| it.apart.contains(g))
    }

    #[inline]
    pub fn fits(&mut self, i: usize, h: usize) -> bool {
        self.work += 1;
        self.allowed(i, h) && self.fits_load(i, h)
    }

    #[inline]
    pub fn fits_load(&self, i: usize, h: usize) -> bool {
        let it = &self.inst.items[i];
        let hc = &self.inst.hosts[h];
        let n = self.inst.t * D;
        let base = h * n;
        let load = &self.load[base..base + n];
        let extra = f64::from(it.vms) * hc.overhead;
        for (ld, dm) in load.chunks_exact(D).zip(it.dem.chunks_exact(D)) {
            for (d, ((l, x), t)) in ld.iter().zip(dm).zip(&hc.threshold).enumerate() {
                let need = if d == MEM { x + extra } else { *x };
                if need > 0.0 && l + need > *t {
                    return false;
                }
            }
        }
        true
    }

    /// The first reason item `i` does not fit host `h`, or `None` when it fits.
    pub fn misfit(&self, i: usize, h: usize) -> Option<Misfit> {
        let it = &self.inst.items[i];
        if let Some(m) = it.mask {
            if !self.inst.masks[m as usize][h] {
                return Some(Misfit::Mask);
            }
        }
        if self.vms[h].saturating_add(it.vms) > self.inst.hosts[h].max_vms {
            return Some(Misfit::MaxVms);
        }
        if let Some(g) = it.apart.iter().find(|g| self.groups[h].contains(g)) {
            return Some(Misfit::Apart(*g));
        }
        let hc = &self.inst.hosts[h];
        let mut worst: Option<(f64, usize, f64)> = None;
        for d in 0..D {
            let after = self.peak_with(i, h, d);
            if after > hc.limit[d] + tolerance(hc.limit[d]) {
                let over = if hc.cap[d] > 0.0 {
                    after / hc.cap[d]
                } else {
                    f64::INFINITY
                };
                if worst.is_none_or(|(o, _, _)| over > o) {
                    worst = Some((over, d, after));
                }
            }
        }
        worst.map(|(_, resource, after)| Misfit::Capacity { resource, after })
    }

    /// Peak over the buckets of resource `d` on host `h` (VM load only).
    pub fn peak(&self, h: usize, d: usize) -> f64 {
        let n = self.inst.t * D;
        (0..self.inst.t)
            .map(|b| self.load[h * n + b * D + d])
            .fold(0.0, f64::max)
    }

    /// Peak of resource `d` on host `h` if item `i` were added.
    pub fn peak_with(&self, i: usize, h: usize, d: usize) -> f64 {
        let it = &self.inst.items[i];
        let n = self.inst.t * D;
        let extra = if d == MEM {
            f64::from(it.vms) * self.inst.hosts[h].overhead
        } else {
            0.0
        };
        (0..self.inst.t)
            .map(|b| self.load[h * n + b * D + d] + it.dem[b * D + d] + extra)
            .fold(0.0, f64::max)
    }

    /// Highest utilisation of host `h` relative to its limits, over resources and buckets.
    pub fn pressure(&self, h: usize) -> f64 {
        let hc = &self.inst.hosts[h];
        let n = self.inst.t * D;
        let mut worst: f64 = 0.0;
        for k in 0..n {
            let d = k % D;
            if hc.limit[d].is_finite() && hc.limit[d] > 0.0 {
                worst = worst.max(self.load[h * n + k] / hc.limit[d]);
            }
        }
        worst
    }

    /// Pressure of host `h` if item `i` were added.
    pub fn pressure_with(&self, i: usize, h: usize) -> f64 {
        let it = &self.inst.items[i];
        let hc = &self.inst.hosts[h];
        let n = self.inst.t * D;
        let extra = f64::from(it.vms) * hc.overhead;
        let mut worst: f64 = 0.0;
        for k in 0..n {
            let d = k % D;
            if hc.limit[d].is_finite() && hc.limit[d] > 0.0 {
                let need = if d == MEM {
                    it.dem[k] + extra
                } else {
                    it.dem[k]
                };
                worst = worst.max((self.load[h * n + k] + need) / hc.limit[d]);
            }
        }
        worst
    }

    /// Pressure of host `h` if item `i` (which is on it) were removed.
    pub fn pressure_without(&self, i: usize, h: usize) -> f64 {
        let it = &self.inst.items[i];
        let hc = &self.inst.hosts[h];
        let n = self.inst.t * D;
        let extra = f64::from(it.vms) * hc.overhead;
        let mut worst: f64 = 0.0;
        for k in 0..n {
            let d = k % D;
            if hc.limit[d].is_finite() && hc.limit[d] > 0.0 {
                let need = if d == MEM {
                    it.dem[k] + extra
                } else {
                    it.dem[k]
                };
                worst = worst.max((self.load[h * n + k] - need) / hc.limit[d]);
            }
        }
        worst
    }

    /// How full host `h` is: sum over active resources of peak / limit.
    pub fn fill(&self, h: usize) -> f64 {
        let hc = &self.inst.hosts[h];
        (0..D)
            .filter(|&d| self.inst.active[d] && hc.limit[d].is_finite() && hc.limit[d] > 0.0)
            .map(|d| self.peak(h, d) / hc.limit[d])
            .sum()
    }

    /// Largest free amount per resource over the buckets (an upper bound on what fits).
    pub fn residual(&self, h: usize) -> Amounts {
        let hc = &self.inst.hosts[h];
        let n = self.inst.t * D;
        let mut r = [f64::NEG_INFINITY; D];
        for row in self.load[h * n..(h + 1) * n].chunks_exact(D) {
            for ((r, l), lim) in r.iter_mut().zip(row).zip(&hc.limit) {
                *r = r.max(lim - l);
            }
        }
        r
    }

    pub fn place(&mut self, i: usize, h: usize) {
        self.work += 1;
        let it = &self.inst.items[i];
        let n = self.inst.t * D;
        let extra = f64::from(it.vms) * self.inst.hosts[h].overhead;
        for k in 0..n {
            self.load[h * n + k] += it.dem[k] + if k % D == MEM { extra } else { 0.0 };
        }
        self.vms[h] += it.vms;
        self.groups[h].extend_from_slice(&it.apart);
        self.host_of[i] = h as u32;
        self.on[h].push(i as u32);
    }

    pub fn remove(&mut self, i: usize) {
        let h = self.host_of[i];
        if h == NONE {
            return;
        }
        let h = h as usize;
        let it = &self.inst.items[i];
        let n = self.inst.t * D;
        let extra = f64::from(it.vms) * self.inst.hosts[h].overhead;
        for k in 0..n {
            self.load[h * n + k] -= it.dem[k] + if k % D == MEM { extra } else { 0.0 };
        }
        self.vms[h] -= it.vms;
        for g in &it.apart {
            if let Some(p) = self.groups[h].iter().position(|x| x == g) {
                self.groups[h].swap_remove(p);
            }
        }
        self.host_of[i] = NONE;
        if let Some(p) = self.on[h].iter().position(|&x| x as usize == i) {
            self.on[h].remove(p);
        }
        if self.on[h].is_empty() {
            // Clear rounding residue so an emptied host is exactly empty again.
            for k in 0..n {
                self.load[h * n + k] = 0.0;
            }
        }
    }

    pub fn hosts_used(&self) -> usize {
        self.on.iter().filter(|o| !o.is_empty()).count()
    }

    /// Workloads (members of unplaced items) left out.
    pub fn unplaced_workloads(&self) -> usize {
        self.host_of
            .iter()
            .zip(&self.inst.items)
            .filter(|(&h, _)| h == NONE)
            .map(|(_, it)| it.members.len())
            .sum()
    }
}

/// A tournament tree over hosts (in a chosen order) holding each subtree's largest residual per
/// resource and largest number of free VM slots; first-fit descends left to right and skips
/// subtrees where the item cannot fit, so a placement costs about O(log hosts) fit checks.
pub(crate) struct FitTree {
    size: usize,
    res: Vec<Amounts>,
    free: Vec<u32>,
}

impl FitTree {
    pub fn new(state: &State, order: &[u32]) -> FitTree {
        let size = order.len().next_power_of_two().max(1);
        let mut tree = FitTree {
            size,
            res: vec![[f64::NEG_INFINITY; D]; 2 * size],
            free: vec![0; 2 * size],
        };
        for (pos, &h) in order.iter().enumerate() {
            tree.res[size + pos] = state.residual(h as usize);
            tree.free[size + pos] = state.inst.hosts[h as usize].max_vms - state.vms[h as usize];
        }
        for node in (1..size).rev() {
            tree.pull(node);
        }
        tree
    }

    fn pull(&mut self, node: usize) {
        let (l, r) = (2 * node, 2 * node + 1);
        let mut m = [0.0; D];
        for (d, v) in m.iter_mut().enumerate() {
            *v = self.res[l][d].max(self.res[r][d]);
        }
        self.res[node] = m;
        self.free[node] = self.free[l].max(self.free[r]);
    }

    pub fn update(&mut self, state: &State, order: &[u32], pos: usize) {
        let h = order[pos] as usize;
        let mut node = self.size + pos;
        self.res[node] = state.residual(h);
        self.free[node] = state.inst.hosts[h].max_vms - state.vms[h];
        while node > 1 {
            node /= 2;
            self.pull(node);
        }
    }

    /// Position (in `order`) of the first host item `i` fits on.
    pub fn first_fit(&self, state: &mut State, order: &[u32], i: usize) -> Option<usize> {
        let it = &state.inst.items[i];
        let low = it.low;
        let vms = it.vms;
        let mut stack = vec![1usize];
        while let Some(node) = stack.pop() {
            if self.free[node] < vms {
                continue;
            }
            let r = &self.res[node];
            if (0..D).any(|d| low[d] > 0.0 && low[d] > r[d] + tolerance(r[d])) {
                continue;
            }
            if node >= self.size {
                let pos = node - self.size;
                if pos < order.len() && state.fits(i, order[pos] as usize) {
                    return Some(pos);
                }
                continue;
            }
            stack.push(2 * node + 1);
            stack.push(2 * node);
        }
        None
    }
}
