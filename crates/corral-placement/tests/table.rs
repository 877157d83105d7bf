//! Table tests: hand-computed inputs (the CSV a user writes) and the plan each must give,
//! starting with the chapter's example. Each case states which workloads share a host (hosts
//! of the same size are interchangeable, so the partition is what is computed by hand), where
//! the ones whose host is forced must go, and which cannot be placed.

use corral_placement::input::{parse_hosts_csv, parse_workloads_for};
use corral_placement::{plan, Mode, PlanOptions};
use std::collections::BTreeSet;

struct Case {
    name: &'static str,
    hosts: &'static str,
    workloads: &'static str,
    options: PlanOptions,
    /// Workloads on one host, per used host.
    together: &'static [&'static [&'static str]],
    /// (workload, host) where the host is forced.
    on: &'static [(&'static str, &'static str)],
    unplaced: &'static [&'static str],
}

const HOSTS2: &str = "name,cores,ghz,memory_gib,net_mbps,disk_mbps\n\
                      hv1,2,2.0,16,1000,500\n\
                      hv2,2,2.0,16,1000,500\n";

fn raw() -> PlanOptions {
    PlanOptions {
        max_utilisation: 1.0,
        reserve_memory_gib: 0.0,
        ..PlanOptions::default()
    }
}

fn cases() -> Vec<Case> {
    vec![
        // The chapter: an old server with 4 processors at 1 GHz, 40 % busy, consumes
        // 4 × 1 × 0.4 = 1.6 GHz. A new host of 2 cores × 2 GHz capped at 85 % gives 3.4 GHz:
        // two such servers (3.2 GHz) share it; one 60 % busy (2.4 GHz) shares with neither.
        Case {
            name: "chapter example",
            hosts: HOSTS2,
            workloads: "name,cores,ghz,cpu_percent,memory_gib,net_mbps,disk_mbps\n\
                        old1,4,1.0,40%,2,10,5\n\
                        old2,4,1.0,40%,2,10,5\n\
                        old3,4,1.0,60%,2,10,5\n",
            options: PlanOptions::default(),
            together: &[&["old1", "old2"], &["old3"]],
            on: &[],
            unplaced: &[],
        },
        // At 100 % without reserve a host takes exactly its raw capacity: 2 × 2.0 = 4 GHz is
        // filled by 2.5 + 1.5 GHz, and 16 GiB by 8 + 8.
        Case {
            name: "raw capacities are filled exactly",
            hosts: HOSTS2,
            workloads: "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\n\
                        a,2.5,8,500,250\n\
                        b,1.5,8,500,250\n",
            options: raw(),
            together: &[&["a", "b"]],
            on: &[],
            unplaced: &[],
        },
        // The same two at the defaults (85 %: 3.4 GHz, 16 × 0.85 − 1 = 12.6 GiB) need a host each.
        Case {
            name: "the default cap and reserve split them",
            hosts: HOSTS2,
            workloads: "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\n\
                        a,2.5,8,500,250\n\
                        b,1.5,8,500,250\n",
            options: PlanOptions::default(),
            together: &[&["a"], &["b"]],
            on: &[],
            unplaced: &[],
        },
        // 7.5 + 7.5 GiB fit 16 GiB raw, but not with 1 GiB of QEMU overhead per VM (17 GiB).
        Case {
            name: "per-VM overhead counts",
            hosts: HOSTS2,
            workloads: "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\n\
                        a,0.5,7.5,1,1\n\
                        b,0.5,7.5,1,1\n",
            options: PlanOptions {
                vm_overhead_gib: 1.0,
                ..raw()
            },
            together: &[&["a"], &["b"]],
            on: &[],
            unplaced: &[],
        },
        // Cluster pair kept apart although both would fit one host.
        Case {
            name: "keep-apart group",
            hosts: HOSTS2,
            workloads: "name,cpu_ghz,memory_gib,net_mbps,disk_mbps,group_apart\n\
                        db1,0.5,2,1,1,sql\n\
                        db2,0.5,2,1,1,sql\n",
            options: PlanOptions::default(),
            together: &[&["db1"], &["db2"]],
            on: &[],
            unplaced: &[],
        },
        // Networks and pins decide the host: only hv2 reaches dmz; db is pinned to hv1.
        Case {
            name: "networks and pins",
            hosts: "name,cores,ghz,memory_gib,net_mbps,disk_mbps,networks\n\
                    hv1,8,2.0,64,1000,500,lan\n\
                    hv2,8,2.0,64,1000,500,lan;dmz\n",
            workloads: "name,cpu_ghz,memory_gib,net_mbps,disk_mbps,networks,host\n\
                        web,1,2,10,5,dmz,\n\
                        db,1,2,10,5,lan,hv1\n",
            options: PlanOptions::default(),
            together: &[&["web"], &["db"]],
            on: &[("web", "hv2"), ("db", "hv1")],
            unplaced: &[],
        },
        // Larger than any host: reported, the rest still planned.
        Case {
            name: "a workload larger than any host",
            hosts: HOSTS2,
            workloads: "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\n\
                        huge,1,100,1,1\n\
                        small,1,2,1,1\n",
            options: PlanOptions::default(),
            together: &[&["small"]],
            on: &[],
            unplaced: &["huge"],
        },
        // At most one VM per host: three workloads, two hosts; the smallest is left over.
        Case {
            name: "max VMs per host",
            hosts: HOSTS2,
            workloads: "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\n\
                        a,0.2,2,1,1\n\
                        b,0.2,2,1,1\n\
                        c,0.1,1,1,1\n",
            options: PlanOptions {
                max_vms_per_host: Some(1),
                ..PlanOptions::default()
            },
            together: &[&["a"], &["b"]],
            on: &[],
            unplaced: &["c"],
        },
        // Performance mode spreads what density mode packs.
        Case {
            name: "performance mode spreads",
            hosts: HOSTS2,
            workloads: "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\n\
                        a,1,2,1,1\n\
                        b,1,2,1,1\n",
            options: PlanOptions {
                mode: Mode::Performance,
                ..PlanOptions::default()
            },
            together: &[&["a"], &["b"]],
            on: &[],
            unplaced: &[],
        },
        // 8 + 8 GiB on a 12 GiB host only with memory overcommit asked for (12 × 1.5 = 18).
        Case {
            name: "memory overcommit only when asked",
            hosts: "name,cores,ghz,memory_gib,net_mbps,disk_mbps\nhv1,8,2.0,12,1000,500\n",
            workloads: "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\n\
                        a,1,8,1,1\n\
                        b,1,8,1,1\n",
            options: PlanOptions {
                memory_overcommit: 1.5,
                ..raw()
            },
            together: &[&["a", "b"]],
            on: &[],
            unplaced: &[],
        },
    ]
}

#[test]
fn hand_computed_plans() {
    for case in cases() {
        let hosts = parse_hosts_csv(case.hosts, "hosts.csv").expect(case.name);
        let workloads =
            parse_workloads_for(case.workloads, "workloads.csv", &hosts).expect(case.name);
        let p = plan(&hosts, &workloads, &case.options).expect(case.name);
        let mut by_host: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
        for a in &p.assignments {
            by_host
                .entry(a.host.as_str())
                .or_default()
                .insert(a.workload.as_str());
        }
        let got: BTreeSet<BTreeSet<&str>> = by_host.values().cloned().collect();
        let want: BTreeSet<BTreeSet<&str>> = case
            .together
            .iter()
            .map(|g| g.iter().copied().collect())
            .collect();
        assert_eq!(got, want, "{}: {:?}", case.name, p.assignments);
        assert_eq!(p.hosts_used, case.together.len(), "{}", case.name);
        for (w, h) in case.on {
            assert!(
                p.assignments
                    .iter()
                    .any(|a| a.workload == *w && a.host == *h),
                "{}: {w} on {h}: {:?}",
                case.name,
                p.assignments
            );
        }
        let unplaced: Vec<&str> = p.unplaced.iter().map(|u| u.workload.as_str()).collect();
        assert_eq!(unplaced, case.unplaced, "{}", case.name);
        assert!(p.unplaced.iter().all(|u| !u.reason.is_empty()));
    }
}
