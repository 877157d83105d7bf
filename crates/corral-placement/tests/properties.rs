//! Property tests: whatever the input, no host goes over any limit, every constraint holds,
//! every workload is either placed once or reported unplaced, and the same input gives the
//! same plan.

use corral_placement::{plan, Demand, Host, Mode, PlanOptions, Workload, RESOURCES, TIME_BUCKETS};
use proptest::prelude::*;

/// cores, GHz, memory, net, disk, IOPS, reaches dmz, max VMs.
type HostSpec = (u32, f64, f64, f64, f64, Option<f64>, bool, Option<u32>);
/// peak, apart group, together group, pinned host, needs dmz, has a series.
type LoadSpec = (
    [f64; RESOURCES],
    Option<u8>,
    Option<u8>,
    Option<u8>,
    bool,
    bool,
);
use std::collections::BTreeMap;

fn host_strategy(
) -> impl Strategy<Value = (u32, f64, f64, f64, f64, Option<f64>, bool, Option<u32>)> {
    (
        1u32..16,
        0.5f64..3.0,
        2.0f64..64.0,
        100.0f64..2000.0,
        50.0f64..1000.0,
        prop::option::of(100.0f64..5000.0),
        any::<bool>(),
        prop::option::of(1u32..5),
    )
}

fn workload_strategy() -> impl Strategy<
    Value = (
        [f64; RESOURCES],
        Option<u8>,
        Option<u8>,
        Option<u8>,
        bool,
        bool,
    ),
> {
    (
        [
            0.0f64..8.0,
            0.0f64..24.0,
            0.0f64..600.0,
            0.0f64..600.0,
            0.0f64..300.0,
            0.0f64..1500.0,
        ],
        prop::option::of(0u8..3), // apart group
        prop::option::of(0u8..3), // together group
        prop::option::of(0u8..8), // pin (index into hosts, may be out of range → dropped)
        any::<bool>(),            // needs network "dmz"
        any::<bool>(),            // has an hourly series
    )
}

fn build(hosts_in: Vec<HostSpec>, loads: Vec<LoadSpec>) -> (Vec<Host>, Vec<Workload>) {
    let hosts: Vec<Host> = hosts_in
        .iter()
        .enumerate()
        .map(|(i, &(cores, ghz, mem, net, disk, iops, dmz, max_vms))| {
            let mut h = Host::new(&format!("h{i}"), cores, ghz, mem, net, disk);
            h.iops = iops;
            h.max_vms = max_vms;
            if dmz {
                h.networks = vec!["dmz".into()];
            }
            h
        })
        .collect();
    let mut together_seen: BTreeMap<u8, Option<String>> = BTreeMap::new();
    let workloads = loads
        .iter()
        .enumerate()
        .map(|(i, (peak, apart, together, pin, dmz, series))| {
            let mut w = Workload::new(&format!("w{i}"), 0.0, 0.0, 0.0, 0.0);
            w.demand = if *series {
                Demand::from_series(
                    (0..TIME_BUCKETS)
                        .map(|h| {
                            let f = if (h + i) % 3 == 0 { 1.0 } else { 0.3 };
                            let mut a = peak.map(|v| v * f);
                            a[1] = peak[1];
                            a
                        })
                        .collect(),
                )
            } else {
                Demand::constant(*peak)
            };
            w.host = pin
                .filter(|&p| (p as usize) < hosts.len())
                .map(|p| format!("h{p}"));
            // Keep generated inputs valid: members of one together group share their pin, and
            // only a group's first member joins an apart group.
            if let Some(t) = together {
                let first = !together_seen.contains_key(t);
                let pin = together_seen.entry(*t).or_insert(w.host.clone());
                w.together = vec![format!("t{t}")];
                w.host = pin.clone();
                if first {
                    w.apart = apart.map(|a| vec![format!("a{a}")]).unwrap_or_default();
                }
            } else if let Some(a) = apart {
                w.apart = vec![format!("a{a}")];
            }
            if *dmz {
                w.networks = vec!["dmz".into()];
            }
            w
        })
        .collect();
    (hosts, workloads)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn plans_respect_capacity_and_constraints_and_are_deterministic(
        hosts_in in prop::collection::vec(host_strategy(), 1..5),
        loads in prop::collection::vec(workload_strategy(), 0..14),
        performance in any::<bool>(),
        cap in 0.5f64..1.0,
        reserve in 0.0f64..2.0,
        overhead in prop_oneof![Just(0.0f64), 0.0f64..1.5],
        max_vms_per_host in prop::option::of(1u32..4),
    ) {
        let (hosts, workloads) = build(hosts_in, loads);
        let options = PlanOptions {
            mode: if performance { Mode::Performance } else { Mode::Density },
            max_utilisation: cap,
            reserve_memory_gib: reserve,
            vm_overhead_gib: overhead,
            max_vms_per_host,
            ..PlanOptions::default()
        };
        let p = plan(&hosts, &workloads, &options).expect("generated input is valid");
        let again = plan(&hosts, &workloads, &options).expect("generated input is valid");
        prop_assert_eq!(&p, &again);

        // Placed exactly once or unplaced exactly once.
        prop_assert_eq!(p.assignments.len() + p.unplaced.len(), workloads.len());
        let placed: BTreeMap<&str, &str> = p.assignments.iter().map(|a| (a.workload.as_str(), a.host.as_str())).collect();
        for u in &p.unplaced {
            prop_assert!(!placed.contains_key(u.workload.as_str()));
            prop_assert!(!u.reason.is_empty());
        }

        for (hi, h) in hosts.iter().enumerate() {
            let on: Vec<&Workload> = workloads.iter().filter(|w| placed.get(w.name.as_str()) == Some(&h.name.as_str())).collect();
            let cap_amounts = h.capacity();
            for b in 0..TIME_BUCKETS {
                for (d, raw_cap) in cap_amounts.iter().enumerate() {
                    let mut load: f64 = on.iter().map(|w| w.demand.at(b)[d]).sum();
                    let mut limit = raw_cap * cap;
                    if d == 1 {
                        // Each VM costs its QEMU overhead on top of its guest memory.
                        load += reserve + overhead * on.len() as f64;
                        limit = limit.max(reserve);
                    }
                    if !on.is_empty() {
                        prop_assert!(load <= limit + 1e-6, "host {} resource {} hour {}: {} > {}", h.name, d, b, load, limit);
                    }
                }
            }
            if let Some(max) = h.max_vms {
                prop_assert!(on.len() as u32 <= max);
            }
            if let Some(max) = max_vms_per_host {
                prop_assert!(on.len() as u32 <= max, "{} VMs on {} (plan-wide max {})", on.len(), h.name, max);
            }
            for w in &on {
                if let Some(pin) = &w.host {
                    prop_assert_eq!(pin, &h.name);
                }
                for n in &w.networks {
                    prop_assert!(h.networks.contains(n), "{} needs {} on {}", w.name, n, h.name);
                }
            }
            let mut groups: BTreeMap<&str, usize> = BTreeMap::new();
            for w in &on {
                for g in &w.apart {
                    *groups.entry(g.as_str()).or_default() += 1;
                }
            }
            prop_assert!(groups.values().all(|&c| c <= 1), "apart group shares host {}: {:?}", hi, groups);
        }
        // Keep-together groups share one host (or are all unplaced).
        let mut together: BTreeMap<&str, Vec<Option<&str>>> = BTreeMap::new();
        for w in &workloads {
            for g in &w.together {
                together.entry(g.as_str()).or_default().push(placed.get(w.name.as_str()).copied());
            }
        }
        for (g, where_) in together {
            prop_assert!(where_.windows(2).all(|x| x[0] == x[1]), "group {} split: {:?}", g, where_);
        }
        if !performance {
            prop_assert!(p.hosts_used >= p.bounds.volume || p.assignments.is_empty());
        }
    }
}

/// An independent brute-force checker for small instances: which sets of workloads some valid
/// plan places. Written from the model's rules, not from the planner's code.
struct Brute<'a> {
    hosts: &'a [Host],
    workloads: &'a [Workload],
    cap: f64,
    reserve: f64,
    /// Keep-together groups (and single workloads) as units that share one host.
    units: Vec<Vec<usize>>,
    nodes: u64,
}

impl<'a> Brute<'a> {
    fn new(hosts: &'a [Host], workloads: &'a [Workload], cap: f64, reserve: f64) -> Brute<'a> {
        let mut units: Vec<Vec<usize>> = Vec::new();
        let mut by_group: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, w) in workloads.iter().enumerate() {
            match w.together.first() {
                Some(g) => match by_group.get(g.as_str()) {
                    Some(&u) => units[u].push(i),
                    None => {
                        by_group.insert(g.as_str(), units.len());
                        units.push(vec![i]);
                    }
                },
                None => units.push(vec![i]),
            }
        }
        Brute {
            hosts,
            workloads,
            cap,
            reserve,
            units,
            nodes: 0,
        }
    }

    /// Can these workloads all run on host `h`?
    fn host_ok(&self, h: usize, on: &[usize]) -> bool {
        let host = &self.hosts[h];
        if let Some(max) = host.max_vms {
            if on.len() as u32 > max {
                return false;
            }
        }
        let mut groups: Vec<&str> = Vec::new();
        for &i in on {
            let w = &self.workloads[i];
            if w.host.as_ref().is_some_and(|p| p != &host.name) {
                return false;
            }
            if !w.networks.iter().all(|n| host.networks.contains(n)) {
                return false;
            }
            for g in &w.apart {
                if groups.contains(&g.as_str()) {
                    return false;
                }
                groups.push(g);
            }
        }
        let caps = host.capacity();
        for b in 0..TIME_BUCKETS {
            for (d, c) in caps.iter().enumerate() {
                let load: f64 = on.iter().map(|&i| self.workloads[i].demand.at(b)[d]).sum();
                let mut limit = c * self.cap;
                if d == 1 {
                    limit = (limit - self.reserve).max(0.0);
                }
                if load > 0.0 && load > limit + 1e-9 * limit.abs().max(1.0) {
                    return false;
                }
            }
        }
        true
    }

    /// Most workloads any valid plan places, considering only `units[k]` for k in `allowed`
    /// and requiring those in `required` to be placed. `None` when `required` cannot be met.
    fn max_placed(&mut self, required: &[usize], optional: &[usize]) -> Option<usize> {
        let order: Vec<(usize, bool)> = required
            .iter()
            .map(|&u| (u, true))
            .chain(optional.iter().map(|&u| (u, false)))
            .collect();
        let mut on: Vec<Vec<usize>> = vec![Vec::new(); self.hosts.len()];
        let mut best: Option<usize> = None;
        self.dfs(&order, 0, &mut on, 0, &mut best);
        best
    }

    fn dfs(
        &mut self,
        order: &[(usize, bool)],
        k: usize,
        on: &mut Vec<Vec<usize>>,
        placed: usize,
        best: &mut Option<usize>,
    ) {
        self.nodes += 1;
        let rest: usize = order[k..].iter().map(|&(u, _)| self.units[u].len()).sum();
        if best.is_some_and(|b| placed + rest <= b) {
            return;
        }
        if k == order.len() {
            *best = Some(placed);
            return;
        }
        let (u, required) = order[k];
        let members = self.units[u].clone();
        for h in 0..self.hosts.len() {
            let before = on[h].len();
            on[h].extend_from_slice(&members);
            if self.host_ok(h, &on[h]) {
                self.dfs(order, k + 1, on, placed + members.len(), best);
            }
            on[h].truncate(before);
        }
        if !required {
            self.dfs(order, k + 1, on, placed, best);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, .. ProptestConfig::default() })]

    /// Whenever the planner leaves a workload out, no valid plan places it together with
    /// everything the planner placed, and no valid plan places more workloads at all; and a
    /// plan is never called optimal while something placeable is left out.
    #[test]
    fn nothing_placeable_is_left_out_and_optimal_claims_hold(
        hosts_in in prop::collection::vec(host_strategy(), 1..4),
        loads in prop::collection::vec(workload_strategy(), 1..9),
        performance in any::<bool>(),
        cap in 0.5f64..1.0,
        reserve in 0.0f64..2.0,
    ) {
        let (hosts, workloads) = build(hosts_in, loads);
        let options = PlanOptions {
            mode: if performance { Mode::Performance } else { Mode::Density },
            max_utilisation: cap,
            reserve_memory_gib: reserve,
            explain: false,
            ..PlanOptions::default()
        };
        let p = plan(&hosts, &workloads, &options).expect("generated input is valid");
        let mut brute = Brute::new(&hosts, &workloads, cap, reserve);
        let all: Vec<usize> = (0..brute.units.len()).collect();
        let most = brute.max_placed(&[], &all).unwrap_or(0);
        prop_assert_eq!(p.assignments.len(), most, "planner placed {:?}, unplaced {:?}", p.assignments, p.unplaced);

        let placed: Vec<&str> = p.assignments.iter().map(|a| a.workload.as_str()).collect();
        let units = brute.units.clone();
        let unit_of = |name: &str| units.iter().position(|u| u.iter().any(|&i| workloads[i].name == name));
        let placed_units: Vec<usize> = all.iter().copied().filter(|&u| units[u].iter().all(|&i| placed.contains(&workloads[i].name.as_str()))).collect();
        for u in &p.unplaced {
            let unit = unit_of(&u.workload).expect("unplaced workload exists");
            let mut required = placed_units.clone();
            required.push(unit);
            prop_assert!(brute.max_placed(&required, &[]).is_none(), "{} could be placed with the others: {}", u.workload, u.reason);
        }
        prop_assert!(p.bounds.max_placed_proven, "small instances are searched exhaustively");
        if p.bounds.proven_optimal {
            for u in &p.unplaced {
                let unit = unit_of(&u.workload).expect("unplaced workload exists");
                prop_assert!(brute.max_placed(&[unit], &[]).is_none(), "optimal claimed while {} is placeable", u.workload);
            }
        }
    }
}

/// Highest pressure (load / limit over resources; memory with the reserve) of an assignment,
/// or `None` if it breaks a limit. Written from the model's rules, not the planner's code.
fn pressure(
    hosts: &[Host],
    loads: &[[f64; RESOURCES]],
    on: &[usize],
    cap: f64,
    reserve: f64,
) -> Option<f64> {
    let mut worst: f64 = 0.0;
    for (h, host) in hosts.iter().enumerate() {
        let caps = host.capacity();
        for d in 0..RESOURCES {
            let load: f64 = (0..loads.len())
                .filter(|&i| on[i] == h)
                .map(|i| loads[i][d])
                .sum();
            let mut limit = caps[d] * cap;
            if d == 1 {
                limit -= reserve;
            }
            if load > limit + 1e-9 * limit.abs().max(1.0) {
                return None;
            }
            if limit > 0.0 && limit.is_finite() {
                worst = worst.max(load / limit);
            }
        }
    }
    Some(worst)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Performance mode against every assignment of a small instance: when all workloads fit,
    /// the plan places them all and its highest utilisation (relative to the limits) is the
    /// lowest any assignment reaches.
    #[test]
    fn performance_mode_minimises_the_highest_utilisation(
        hosts_in in prop::collection::vec((1u32..8, 1.0f64..3.0, 8.0f64..64.0), 2..4),
        loads in prop::collection::vec([0.1f64..6.0, 0.5f64..16.0], 1..7),
    ) {
        let hosts: Vec<Host> = hosts_in
            .iter()
            .enumerate()
            .map(|(i, &(c, g, m))| Host::new(&format!("h{i}"), c, g, m, 1000.0, 1000.0))
            .collect();
        let workloads: Vec<Workload> = loads
            .iter()
            .enumerate()
            .map(|(i, l)| Workload::new(&format!("w{i}"), l[0], l[1], 0.0, 0.0))
            .collect();
        let amounts: Vec<[f64; RESOURCES]> = workloads.iter().map(|w| w.demand.peak).collect();
        let (cap, reserve) = (0.85, 1.0);
        let options = PlanOptions { mode: Mode::Performance, ..PlanOptions::default() };
        // Every assignment: hosts^workloads, at most 3^6 = 729.
        let (m, n) = (hosts.len(), workloads.len());
        let mut best: Option<f64> = None;
        let mut on = vec![0usize; n];
        for code in 0..m.pow(n as u32) {
            let mut c = code;
            for x in on.iter_mut() {
                *x = c % m;
                c /= m;
            }
            if let Some(p) = pressure(&hosts, &amounts, &on, cap, reserve) {
                best = Some(best.map_or(p, |b: f64| b.min(p)));
            }
        }
        let p = plan(&hosts, &workloads, &options).expect("valid input");
        let Some(best) = best else {
            // No assignment places everything; the plan must say some are unplaced.
            prop_assert!(!p.unplaced.is_empty());
            return Ok(());
        };
        prop_assert!(p.unplaced.is_empty(), "all fit, yet unplaced: {:?}", p.unplaced);
        let index: BTreeMap<&str, usize> = hosts.iter().enumerate().map(|(i, h)| (h.name.as_str(), i)).collect();
        let mut got = vec![0usize; n];
        for a in &p.assignments {
            let w: usize = a.workload[1..].parse().expect("w<i>");
            got[w] = index[a.host.as_str()];
        }
        let mine = pressure(&hosts, &amounts, &got, cap, reserve).expect("plan within limits");
        prop_assert!(mine <= best + 1e-9, "plan's highest utilisation {} vs best possible {}", mine, best);
    }

    /// Memory is never overcommitted unless asked; with `memory_overcommit` the VMs' memory
    /// stays within ratio × memory × cap − reserve, and an instance that needs the overcommit
    /// fits only with it.
    #[test]
    fn memory_overcommit_only_when_asked(
        mem in 8.0f64..64.0,
        ratio in 1.1f64..3.0,
        n in 2usize..6,
    ) {
        let hosts = vec![Host::new("h", 64, 3.0, mem, 10_000.0, 10_000.0)];
        // n workloads whose memory together is just over what fits without overcommit.
        let limit = mem * 0.85 - 1.0;
        let each = limit * 1.05 / n as f64;
        let workloads: Vec<Workload> = (0..n)
            .map(|i| Workload::new(&format!("w{i}"), 0.1, each, 0.0, 0.0))
            .collect();
        let plain = plan(&hosts, &workloads, &PlanOptions::default()).expect("valid");
        prop_assert!(!plain.unplaced.is_empty(), "memory overcommitted without being asked");
        let placed_mem: f64 = each * plain.assignments.len() as f64;
        prop_assert!(placed_mem <= limit + 1e-9);
        let over = PlanOptions { memory_overcommit: ratio, ..PlanOptions::default() };
        let p = plan(&hosts, &workloads, &over).expect("valid");
        let placed_mem: f64 = each * p.assignments.len() as f64;
        prop_assert!(placed_mem <= mem * 0.85 * ratio - 1.0 + 1e-9);
        if each * n as f64 <= mem * 0.85 * ratio - 1.0 {
            prop_assert!(p.unplaced.is_empty(), "fits with overcommit {}: {:?}", ratio, p.unplaced);
        }
    }
}
