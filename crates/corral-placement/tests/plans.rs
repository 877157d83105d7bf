//! Hand-computed plans, the chapter's example, and bad input.

use corral_placement::input::{
    apply_constraints, parse_hosts_csv, parse_hosts_toml, parse_workloads_csv, parse_workloads_for,
    InputError,
};
use corral_placement::{
    consumed_ghz, plan, rate_hosts, report, Demand, Host, HostLoad, Mode, ModelError, PlanOptions,
    Resource, Workload, TIME_BUCKETS,
};

fn raw() -> PlanOptions {
    PlanOptions {
        max_utilisation: 1.0,
        reserve_memory_gib: 0.0,
        ..PlanOptions::default()
    }
}

fn host_of<'a>(p: &'a corral_placement::Plan, w: &str) -> Option<&'a str> {
    p.assignments
        .iter()
        .find(|a| a.workload == w)
        .map(|a| a.host.as_str())
}

#[test]
fn chapter_example_four_cpus_at_one_ghz_and_forty_percent_is_one_point_six_ghz() {
    assert!((consumed_ghz(4, 1.0, 0.40) - 1.6).abs() < 1e-12);
    let w = parse_workloads_csv(
        "name,cores,ghz,cpu_percent,memory_gib,net_mbps,disk_mbps\nold1,4,1.0,40%,2,10,5\nold2,4,1,40,2,10,5\n",
        "w.csv",
    )
    .unwrap();
    assert!((w[0].demand.peak[Resource::Cpu as usize] - 1.6).abs() < 1e-12);
    assert!((w[1].demand.peak[Resource::Cpu as usize] - 1.6).abs() < 1e-12);
    // A 2 × 1 GHz host capped at 85 % offers 1.7 GHz: one old server each.
    let small = vec![
        Host::new("a", 2, 1.0, 64.0, 1000.0, 500.0),
        Host::new("b", 2, 1.0, 64.0, 1000.0, 500.0),
    ];
    let p = plan(&small, &w, &PlanOptions::default()).unwrap();
    assert_eq!(p.hosts_used, 2);
    // A 4 × 1 GHz host at 100 % holds both (3.2 GHz of 4).
    let big = vec![
        Host::new("a", 4, 1.0, 64.0, 1000.0, 500.0),
        Host::new("b", 4, 1.0, 64.0, 1000.0, 500.0),
    ];
    let p = plan(&big, &w, &raw()).unwrap();
    assert_eq!(p.hosts_used, 1);
    let cpu = &p.hosts[0].resources[Resource::Cpu as usize];
    assert!((cpu.peak - 3.2).abs() < 1e-9 && (cpu.utilisation - 0.8).abs() < 1e-9);
}

#[test]
fn memory_with_reserve_and_cap_is_explained_per_decision() {
    // 16 GiB × 85 % − 1 GiB reserve = 12.6 GiB for VMs: two 6 GiB workloads per host.
    let hosts = vec![
        Host::new("a", 16, 2.0, 16.0, 10000.0, 1000.0),
        Host::new("b", 16, 2.0, 16.0, 10000.0, 1000.0),
    ];
    let w: Vec<Workload> = ["x", "y", "z"]
        .iter()
        .map(|n| Workload::new(n, 1.0, 6.0, 10.0, 10.0))
        .collect();
    let p = plan(&hosts, &w, &PlanOptions::default()).unwrap();
    assert_eq!(p.hosts_used, 2);
    assert!(p.unplaced.is_empty());
    let lonely = p
        .decisions
        .iter()
        .find(|d| d.host == "b")
        .expect("one workload on b");
    assert!(
        lonely.summary.contains("memory 6 % → 44 %"),
        "{}",
        lonely.summary
    );
    assert!(
        lonely
            .summary
            .contains("host a rejected: memory would reach 119 % (limit 85 %)"),
        "{}",
        lonely.summary
    );
    let mem = &p.hosts[0].resources[Resource::Memory as usize];
    assert!(
        (mem.peak - 13.0).abs() < 1e-9,
        "reserve counts as used: {}",
        mem.peak
    );
    assert!((mem.headroom.unwrap() - 0.6).abs() < 1e-9);
}

#[test]
fn keep_apart_together_pins_networks_and_vm_limits_are_honoured() {
    let mut hosts = vec![
        Host::new("a", 32, 2.0, 256.0, 10000.0, 1000.0),
        Host::new("b", 32, 2.0, 256.0, 10000.0, 1000.0),
    ];
    hosts[1].networks = vec!["dmz".into()];
    let mut w: Vec<Workload> = ["db1", "db2", "app", "cache", "web", "pinned"]
        .iter()
        .map(|n| Workload::new(n, 1.0, 4.0, 10.0, 10.0))
        .collect();
    w[0].apart = vec!["sql".into()];
    w[1].apart = vec!["sql".into()];
    w[2].together = vec!["tier".into()];
    w[3].together = vec!["tier".into()];
    w[4].networks = vec!["dmz".into()];
    w[5].host = Some("b".into());
    let p = plan(&hosts, &w, &PlanOptions::default()).unwrap();
    assert!(p.unplaced.is_empty(), "{:?}", p.unplaced);
    assert_ne!(host_of(&p, "db1"), host_of(&p, "db2"));
    assert_eq!(host_of(&p, "app"), host_of(&p, "cache"));
    assert_eq!(host_of(&p, "web"), Some("b"));
    assert_eq!(host_of(&p, "pinned"), Some("b"));

    let opts = PlanOptions {
        max_vms_per_host: Some(2),
        ..PlanOptions::default()
    };
    let three: Vec<Workload> = ["p", "q", "r"]
        .iter()
        .map(|n| Workload::new(n, 0.1, 0.1, 1.0, 1.0))
        .collect();
    let p = plan(&hosts, &three, &opts).unwrap();
    assert_eq!(p.hosts_used, 2);
}

#[test]
fn workloads_whose_peaks_do_not_coincide_share_a_host() {
    let hosts = vec![
        Host::new("a", 10, 1.0, 64.0, 1000.0, 500.0),
        Host::new("b", 10, 1.0, 64.0, 1000.0, 500.0),
    ];
    let day = |hours: std::ops::Range<usize>, name: &str| {
        let series = (0..TIME_BUCKETS)
            .map(|h| {
                let cpu = if hours.contains(&h) { 8.0 } else { 1.0 };
                [cpu, 4.0, 10.0, 10.0, 10.0, 0.0]
            })
            .collect();
        let mut w = Workload::new(name, 0.0, 0.0, 0.0, 0.0);
        w.demand = Demand::from_series(series);
        w
    };
    let backup = day(0..6, "backup");
    let web = day(9..18, "web");
    let p = plan(&hosts, &[backup.clone(), web.clone()], &raw()).unwrap();
    assert_eq!(p.hosts_used, 1, "8 + 1 GHz at any hour fits 10 GHz");
    let cpu = &p.hosts.iter().find(|h| h.used).unwrap().resources[Resource::Cpu as usize];
    assert_eq!(cpu.hourly.len(), TIME_BUCKETS);
    assert!((cpu.utilisation - 0.9).abs() < 1e-9);
    // Planned on their peaks alone (16 GHz together) they need two hosts.
    let flat: Vec<Workload> = [backup, web]
        .into_iter()
        .map(|mut w| {
            w.demand = Demand::constant(w.demand.peak);
            w
        })
        .collect();
    assert_eq!(plan(&hosts, &flat, &raw()).unwrap().hosts_used, 2);
}

#[test]
fn a_workload_larger_than_any_host_is_unplaced_with_its_reason() {
    let hosts = vec![Host::new("a", 8, 2.0, 64.0, 1000.0, 500.0)];
    let w = vec![
        Workload::new("huge", 1.0, 300.0, 10.0, 10.0),
        Workload::new("ok", 1.0, 4.0, 10.0, 10.0),
    ];
    let p = plan(&hosts, &w, &PlanOptions::default()).unwrap();
    assert_eq!(p.assignments.len(), 1);
    assert_eq!(p.unplaced.len(), 1);
    assert_eq!(p.unplaced[0].workload, "huge");
    assert!(
        p.unplaced[0]
            .reason
            .contains("larger than any host: needs 300 GiB of memory"),
        "{}",
        p.unplaced[0].reason
    );
    let json: serde_json::Value = serde_json::from_str(&report::to_json(&p)).unwrap();
    assert_eq!(json["hosts_used"], 1);
    assert_eq!(json["assignments"][0]["workload"], "ok");
    assert_eq!(json["assignments"][0]["host"], "a");
    assert_eq!(json["unplaced"][0]["workload"], "huge");
    assert!(
        json["hosts"][0]["resources"][1]["utilisation"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let table = report::to_table(&p, true);
    assert!(
        table.contains("1 of 2 workloads fit on 1 of 1 host ") && table.contains("Cannot place:"),
        "{table}"
    );
    let html = report::to_html(&p);
    assert!(
        html.starts_with("<!DOCTYPE html>")
            && html.matches("<svg").count() >= 5
            && !html.contains("http://ex")
    );
}

#[test]
fn a_full_keep_apart_group_reports_where_its_members_are() {
    let hosts = vec![
        Host::new("a", 8, 2.0, 64.0, 1000.0, 500.0),
        Host::new("b", 8, 2.0, 64.0, 1000.0, 500.0),
    ];
    let mut w: Vec<Workload> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Workload::new(n, 0.5, 1.0, 1.0, 1.0))
        .collect();
    for x in &mut w {
        x.apart = vec!["ring".into()];
    }
    let p = plan(&hosts, &w, &PlanOptions::default()).unwrap();
    assert_eq!(p.unplaced.len(), 1);
    assert!(
        p.unplaced[0].reason.contains("keep-apart group ring"),
        "{}",
        p.unplaced[0].reason
    );
}

#[test]
fn keep_apart_does_not_strand_a_workload_another_arrangement_places() {
    // Greedy placement puts db1 and mail on A and web1 on B, leaving web2 (apart from web1)
    // nowhere; A: db1 + web1, B: web2 + mail places everything.
    let hosts = vec![
        Host::new("hostA", 8, 2.4, 64.0, 1000.0, 500.0),
        Host::new("hostB", 8, 2.4, 64.0, 1000.0, 500.0),
    ];
    let mut w = vec![
        Workload::new("web1", 1.6, 8.0, 0.0, 0.0),
        Workload::new("web2", 1.6, 8.0, 0.0, 0.0),
        Workload::new("db1", 6.0, 40.0, 0.0, 0.0),
        Workload::new("mail", 2.0, 12.0, 0.0, 0.0),
    ];
    w[0].apart = vec!["web".into()];
    w[1].apart = vec!["web".into()];
    for mode in [Mode::Density, Mode::Performance] {
        let opts = PlanOptions {
            mode,
            ..PlanOptions::default()
        };
        let p = plan(&hosts, &w, &opts).unwrap();
        assert!(p.unplaced.is_empty(), "{mode}: {:?}", p.unplaced);
        assert_eq!(p.hosts_used, 2);
        assert_ne!(host_of(&p, "web1"), host_of(&p, "web2"));
        assert_ne!(host_of(&p, "db1"), host_of(&p, "mail"));
        assert!(p.bounds.max_placed_proven);
        assert_eq!(p.bounds.proven_optimal, mode == Mode::Density);
    }
    // Reference FFD alone still strands web2, and must not call that optimal.
    let f =
        corral_placement::plan_first_fit_decreasing(&hosts, &w, &PlanOptions::default()).unwrap();
    assert_eq!(f.unplaced.len(), 1);
    assert!(!f.bounds.proven_optimal && !f.bounds.max_placed_proven);
}

#[test]
fn a_plan_with_placeable_unplaced_workloads_is_never_called_optimal() {
    // Three apart members, two hosts: one must stay out. Every plan places two of three, so the
    // count is proven maximal, but the host-count bound covers only the placed ones.
    let hosts = vec![
        Host::new("a", 8, 2.0, 64.0, 1000.0, 500.0),
        Host::new("b", 8, 2.0, 64.0, 1000.0, 500.0),
    ];
    let mut w: Vec<Workload> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Workload::new(n, 0.5, 1.0, 1.0, 1.0))
        .collect();
    for x in &mut w {
        x.apart = vec!["ring".into()];
    }
    let p = plan(&hosts, &w, &PlanOptions::default()).unwrap();
    assert_eq!(p.unplaced.len(), 1);
    assert!(p.bounds.max_placed_proven);
    assert!(!p.bounds.proven_optimal);
    assert!(
        p.unplaced[0]
            .reason
            .contains("every arrangement was checked"),
        "{}",
        p.unplaced[0].reason
    );
    // A workload too large for any host is provably out; the plan of the rest can be optimal.
    let w = vec![
        Workload::new("small", 1.0, 4.0, 1.0, 1.0),
        Workload::new("huge", 1.0, 400.0, 1.0, 1.0),
    ];
    let p = plan(&hosts, &w, &PlanOptions::default()).unwrap();
    assert_eq!(p.unplaced.len(), 1);
    assert!(p.bounds.max_placed_proven && p.bounds.proven_optimal);
}

#[test]
fn performance_mode_spreads_and_density_packs() {
    let hosts: Vec<Host> = (0..4)
        .map(|i| Host::new(&format!("h{i}"), 16, 2.0, 64.0, 1000.0, 500.0))
        .collect();
    let w: Vec<Workload> = (0..4)
        .map(|i| Workload::new(&format!("w{i}"), 4.0, 8.0, 10.0, 10.0))
        .collect();
    let dense = plan(&hosts, &w, &PlanOptions::default()).unwrap();
    assert_eq!(dense.hosts_used, 1);
    assert!(dense.bounds.proven_optimal);
    let spread = plan(
        &hosts,
        &w,
        &PlanOptions {
            mode: Mode::Performance,
            ..PlanOptions::default()
        },
    )
    .unwrap();
    assert_eq!(spread.hosts_used, 4);
}

#[test]
fn lp_bound_proves_three_large_workloads_need_three_hosts() {
    let hosts: Vec<Host> = (0..4)
        .map(|i| Host::new(&format!("h{i}"), 10, 1.0, 100.0, 1000.0, 500.0))
        .collect();
    let w: Vec<Workload> = (0..3)
        .map(|i| Workload::new(&format!("w{i}"), 6.0, 10.0, 1.0, 1.0))
        .collect();
    let p = plan(&hosts, &w, &raw()).unwrap();
    assert_eq!(p.hosts_used, 3);
    assert_eq!(p.bounds.volume, 2);
    assert!((p.bounds.lp.unwrap() - 3.0).abs() < 1e-6, "{:?}", p.bounds);
    assert!(p.bounds.proven_optimal);
}

#[test]
fn rate_hosts_prefers_room_and_zeroes_hosts_that_cannot_take_it() {
    let mk = |name: &str, mem_used: f64| HostLoad {
        host: Host::new(name, 16, 2.0, 64.0, 1000.0, 500.0),
        load: Demand::constant([4.0, mem_used, 10.0, 10.0, 10.0, 0.0]),
        vms: 3,
        apart_groups: vec![],
    };
    let pool = vec![mk("full", 50.0), mk("busy", 30.0), mk("idle", 2.0)];
    let w = Workload::new("new", 2.0, 8.0, 10.0, 10.0);
    let r = rate_hosts(&w, &pool, &PlanOptions::default());
    assert_eq!(r[0].host, "idle");
    assert_eq!(r[1].host, "busy");
    assert!(r[0].score > r[1].score && r[1].score >= 1.0);
    assert_eq!(r[2].host, "full");
    assert_eq!(r[2].score, 0.0);
    assert_eq!(
        r[2].reasons[0].to_string(),
        "memory would reach 92 % (limit 85 %)"
    );
}

fn err_text(e: InputError) -> String {
    e.to_string()
}

#[test]
fn bad_csv_lines_name_file_and_line() {
    let zero = parse_hosts_csv(
        "name,cores,ghz,memory_gib,net_mbps,disk_mbps\na,8,2,64,1000,500\nb,0,2,64,1000,500\n",
        "hosts.csv",
    );
    assert_eq!(
        err_text(zero.unwrap_err()),
        "hosts.csv:3: cores must be more than zero, got 0"
    );
    let neg = parse_hosts_csv(
        "name,cores,ghz,memory_gib,net_mbps,disk_mbps\n# comment\na,8,2,-64,1000,500\n",
        "h.csv",
    );
    assert_eq!(
        err_text(neg.unwrap_err()),
        "h.csv:3: memory_gib must be more than zero, got -64"
    );
    let junk = parse_workloads_csv(
        "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\nw,1.5,lots,10,10\n",
        "w.csv",
    );
    assert_eq!(
        err_text(junk.unwrap_err()),
        "w.csv:2: memory_gib \"lots\" is not a number"
    );
    let short = parse_workloads_csv(
        "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\nw,1.5,2\n",
        "w.csv",
    );
    assert_eq!(
        err_text(short.unwrap_err()),
        "w.csv:2: has 3 fields, the header has 5"
    );
    let typo = parse_hosts_csv("name,cores,ghz,memory_gb,net_mbps,disk_mbps\n", "h.csv");
    assert!(err_text(typo.unwrap_err()).starts_with("h.csv:1: unknown column \"memory_gb\""));
    let neg_demand = parse_workloads_csv(
        "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\nw,-1,2,10,10\n",
        "w.csv",
    );
    assert_eq!(
        err_text(neg_demand.unwrap_err()),
        "w.csv:2: cpu_ghz must not be negative, got -1"
    );
}

#[test]
fn bad_toml_names_file_and_line() {
    let text = "[[host]]\nname = \"a\"\ncores = 8\nghz = 2.0\nmemory_gib = \"lots\"\nnet_mbps = 1000\ndisk_mbps = 500\n";
    let e = err_text(parse_hosts_toml(text, "hosts.toml").unwrap_err());
    assert!(e.starts_with("hosts.toml:5: "), "{e}");
    let zero = "[[host]]\nname = \"a\"\ncores = 0\nghz = 2.0\nmemory_gib = 8\nnet_mbps = 1000\ndisk_mbps = 500\n";
    assert_eq!(
        err_text(parse_hosts_toml(zero, "hosts.toml").unwrap_err()),
        "hosts.toml:2: host \"a\": cores must be more than zero, got 0"
    );
    let ok = "[defaults]\nreserve_memory_gib = 2\n[[host]]\nname = \"hv\"\ncount = 3\ncores = 8\nghz = 2.0\nmemory_gib = 64\ndisk_mbps = 500\n[[host.nic]]\nmbps = 1000\nnetworks = [\"lan\"]\n[[host.nic]]\nmbps = 1000\nnetworks = [\"san\"]\n";
    let hosts = parse_hosts_toml(ok, "hosts.toml").unwrap();
    assert_eq!(hosts.len(), 3);
    assert_eq!(hosts[2].name, "hv-3");
    assert_eq!(hosts[0].net_mbps, 2000.0);
    assert_eq!(
        hosts[0].networks,
        vec!["lan".to_string(), "san".to_string()]
    );
    assert_eq!(hosts[0].reserve_memory_gib, Some(2.0));
}

#[test]
fn constraints_naming_unknown_workloads_or_hosts_are_errors() {
    let hosts = vec![Host::new("a", 8, 2.0, 64.0, 1000.0, 500.0)];
    let mut w = vec![
        Workload::new("db1", 1.0, 1.0, 1.0, 1.0),
        Workload::new("db2", 1.0, 1.0, 1.0, 1.0),
    ];
    let e = apply_constraints(
        "[[apart]]\nworkloads = [\"db1\",\n  \"db9\"]\n",
        "c.toml",
        &mut w,
        &hosts,
    )
    .unwrap_err();
    assert_eq!(
        err_text(e),
        "c.toml:3: constraint names unknown workload \"db9\""
    );
    // The first mention of db9 is a comment; the error is on the line that names it.
    let e = apply_constraints(
        "# db9 retired\n[pin]\ndb9 = \"a\"\n",
        "c.toml",
        &mut w,
        &hosts,
    )
    .unwrap_err();
    assert_eq!(
        err_text(e),
        "c.toml:3: constraint names unknown workload \"db9\""
    );
    let e = apply_constraints(
        "[[apart]]\nname = \"x\"\nworkloads = [\"db1\"]\n",
        "c.toml",
        &mut w,
        &hosts,
    )
    .unwrap_err();
    assert_eq!(
        err_text(e),
        "c.toml:3: apart group \"x\" needs at least two workloads"
    );
    let e = apply_constraints("[pin]\ndb1 = \"nowhere\"\n", "c.toml", &mut w, &hosts).unwrap_err();
    assert_eq!(
        err_text(e),
        "c.toml:2: workload \"db1\" is pinned to unknown host \"nowhere\""
    );
    // A CSV pin to an unknown host is caught by validation.
    let mut pinned = w.clone();
    pinned[0].host = Some("ghost".into());
    assert_eq!(
        plan(&hosts, &pinned, &PlanOptions::default()).unwrap_err(),
        ModelError::UnknownHost {
            workload: "db1".into(),
            host: "ghost".into()
        }
    );
    let mut both = w.clone();
    for x in &mut both {
        x.apart = vec!["sql".into()];
        x.together = vec!["pair".into()];
    }
    assert!(matches!(
        plan(&hosts, &both, &PlanOptions::default()),
        Err(ModelError::TogetherAndApart { .. })
    ));
}

#[test]
fn zero_capacity_hosts_built_in_code_are_rejected() {
    let hosts = vec![Host::new("a", 8, 0.0, 64.0, 1000.0, 500.0)];
    let e = plan(&hosts, &[], &PlanOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "host \"a\": ghz must be a positive number, got 0"
    );
}

#[test]
fn error_lines_come_from_the_parser_not_a_text_search() {
    // hv2's name appears (quoted) in hv1's networks first; the error is on hv2's own line.
    let text = "[[host]]\nname = \"hv1\"\ncores = 8\nghz = 2.0\nmemory_gib = 64\n\
                net_mbps = 1000\ndisk_mbps = 500\nnetworks = [\"hv2\"]\n\n\
                [[host]]\nname = \"hv2\"\ncores = 8\nghz = 0\nmemory_gib = 64\n\
                net_mbps = 1000\ndisk_mbps = 500\n";
    let e = parse_hosts_toml(text, "h.toml").unwrap_err();
    assert_eq!(
        err_text(e),
        "h.toml:11: host \"hv2\": ghz must be more than zero, got 0"
    );
    // A name defined twice points at the second definition and names the first.
    let twice = "[[host]]\nname = \"a\"\ncores = 8\nghz = 2.0\nmemory_gib = 64\n\
                 net_mbps = 1000\ndisk_mbps = 500\n[[host]]\nname = \"a\"\ncores = 8\n\
                 ghz = 2.0\nmemory_gib = 64\nnet_mbps = 1000\ndisk_mbps = 500\n";
    let e = parse_hosts_toml(twice, "h.toml").unwrap_err();
    assert_eq!(
        err_text(e),
        "h.toml:9: host \"a\" is already defined on line 2"
    );
    // A CSV `host` column naming an unknown host: file and line, while parsing.
    let hosts = vec![Host::new("hv1", 8, 2.0, 64.0, 1000.0, 500.0)];
    let csv = "name,cpu_ghz,memory_gib,net_mbps,disk_mbps,host\n\
               web,1,2,10,5,hv1\n\
               db,1,2,10,5,hv9\n";
    let e = parse_workloads_for(csv, "w.csv", &hosts).unwrap_err();
    assert_eq!(
        err_text(e),
        "w.csv:3: workload \"db\" is pinned to unknown host \"hv9\""
    );
    assert_eq!(
        parse_workloads_for(&csv.replace("hv9", "hv1"), "w.csv", &hosts)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_hosts_own_max_utilisation_replaces_the_plan_wide_cap() {
    let toml = "[[host]]\nname = \"a\"\ncores = 4\nghz = 2.5\nmemory_gib = 16\nnet_mbps = 1000\n\
                disk_mbps = 500\nmax_utilisation = 50\n";
    let hosts = parse_hosts_toml(toml, "h.toml").unwrap();
    assert_eq!(hosts[0].max_utilisation, Some(0.5));
    let bad = toml.replace("= 50", "= 150");
    let e = parse_hosts_toml(&bad, "h.toml").unwrap_err();
    assert!(err_text(e).starts_with("h.toml:2: host \"a\": max_utilisation:"));
    let csv = "name,cores,ghz,memory_gib,net_mbps,disk_mbps,max_utilisation\n\
               a,4,2.5,16,1000,500,60%\nb,4,2.5,16,1000,500,0%\n";
    let e = parse_hosts_csv(csv, "h.csv").unwrap_err();
    assert!(err_text(e).starts_with("h.csv:3: max_utilisation:"));
    // 6 GHz fits under a's own 60 % of 10 GHz at the plan's 100 %, 7 GHz does not.
    let hosts = parse_hosts_csv(&csv.replace("\nb,4,2.5,16,1000,500,0%", ""), "h.csv").unwrap();
    let w = [
        Workload::new("six", 6.0, 1.0, 0.0, 0.0),
        Workload::new("seven", 7.0, 1.0, 0.0, 0.0),
    ];
    let p = plan(&hosts[..1], &w[..1], &raw()).unwrap();
    assert!(p.unplaced.is_empty(), "{:?}", p.unplaced);
    let p = plan(&hosts[..1], &w[1..], &raw()).unwrap();
    assert_eq!(p.unplaced.len(), 1);
    assert!(
        p.unplaced[0].reason.contains("60 %"),
        "{}",
        p.unplaced[0].reason
    );
}
