//! Pools end to end: a real 3-member etcd cluster on loopback, two real agents (each its own
//! state directory and HTTPS address), real guests, a shared repository both see.
//!
//! - the pool view: a VM created through host A on host B is listed and shown on both,
//!   started through A (forwarded to B over mutual TLS), and its console read through A;
//!   a viewer token made on A is honoured by B, and through A it reads web01 but is refused
//!   powering it off (the caller's role travels with the forwarded request);
//!   `host list` agrees on both members;
//! - bad input: a wrong join token, a taken host name, an endpoint that is not etcd,
//!   forgetting a host that is up: each refused with a clear error;
//! - HA: the owner's agent is killed (kill -9) and, later, frozen (SIGSTOP): the HA VM
//!   restarts on the survivor only after the old QEMU is dead (sampled every 100 ms), and
//!   the failover time is printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../corral-store/src/etcd_cluster.rs"]
mod etcd_cluster;
#[path = "common/pool.rs"]
mod pool_setup;

use common::*;
use pool_setup::*;
use std::time::{Duration, Instant};

#[test]
fn pool_view_forwarding_bad_input_and_ha_failover() {
    let mut p = start_pool();
    let urls = p.etcd.endpoints().join(",");

    // ----- one view of the pool -----
    let expect = vec![
        ("xen01".to_string(), "up".to_string()),
        ("xen02".to_string(), "up".to_string()),
    ];
    wait_until(Duration::from_secs(10), "both members in host list", || {
        hosts(&p.a) == expect && hosts(&p.b) == expect
    });
    let info = p.b.json(&["pool", "show"]);
    assert_eq!(info["store"], "etcd");
    assert_eq!(info["endpoints"].as_array().unwrap().len(), 3);
    assert!(info["ca_sha256"].as_str().unwrap().len() > 60);
    // The shared repository is seen by the member that did not create it.
    let srs = p.b.json(&["sr", "list"]);
    assert!(
        srs.as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "shared1" && s["shared"] == true),
        "{srs}"
    );

    // Created through A on B, listed and shown on both, started through A.
    p.a.create_kernel_vm("web01", &["--host", "xen02"]);
    for agent in [&p.a, &p.b] {
        wait_until(Duration::from_secs(5), "web01 in the pool view", || {
            agent
                .json(&["vm", "list"])
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == "web01" && v["host"] == "xen02")
        });
        assert_eq!(agent.vm("web01")["host"], "xen02");
    }
    p.a.ok(&["vm", "start", "web01"]);
    assert_eq!(p.b.power_state("web01"), "running");
    assert_eq!(p.b.qemu_pids().len(), 1, "web01 runs on B");
    assert!(p.a.qemu_pids().is_empty(), "nothing runs on A");
    p.a.wait_console("web01", MARKER, 1, Duration::from_secs(120));
    wait_until(Duration::from_secs(5), "A sees web01 running", || {
        p.a.power_state("web01") == "running"
    });
    let table = p.a.ok(&["vm", "list"]);
    assert!(table.contains("HOST") && table.contains("xen02"), "{table}");
    // The serial console through A reaches the guest on B (the upgrade is spliced through).
    let mut console = std::process::Command::new(corral_bin())
        .arg("--connect")
        .arg(&p.a.socket)
        .args(["vm", "console", "web01"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = console.stdin.as_mut().unwrap();
        stdin
            .write_all(b"\necho pool-console-$((6*7))-ok\n")
            .unwrap();
    }
    p.b.wait_console("web01", "pool-console-42-ok", 1, Duration::from_secs(30));
    drop(console.stdin.take());
    let _ = console.kill();
    let _ = console.wait();

    // Tokens are pool-wide and a forwarded request keeps its caller's role: a viewer token
    // made on A works on B; through A it reads web01 (on B) but may not power it off.
    let viewer =
        p.a.json(&["token", "create", "pool-viewer", "--role", "viewer"])["secret"]
            .as_str()
            .unwrap()
            .to_string();
    let https = |agent: &TestAgent| {
        let listen = agent.json(&["host", "info"])["remote"]["listen"][0]
            .as_str()
            .unwrap()
            .to_string();
        format!("https://{listen}")
    };
    let curl_status = |method: &str, url: String| {
        let o = std::process::Command::new("curl")
            .args([
                "-k",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                method,
            ])
            .args(["-H", &format!("authorization: Bearer {viewer}"), &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(
        curl_status("GET", format!("{}/v1/vms/web01", https(&p.a))),
        "200"
    );
    assert_eq!(curl_status("GET", format!("{}/v1/vms", https(&p.b))), "200");
    let stop = format!("{}/v1/vms/web01/actions/poweroff", https(&p.a));
    assert_eq!(curl_status("POST", stop), "403");
    assert_eq!(p.b.power_state("web01"), "running");
    // The pool-wide audit log has the refusal, recorded by the member that was asked.
    let audit = p.b.json(&["audit", "--vm", "web01"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["who"] == "pool-viewer" && e["status"] == 403 && e["host"] == "xen01"),
        "{audit}"
    );

    // Placement across the pool: B runs web01, so an `auto` VM goes to A.
    p.b.create_kernel_vm("auto01", &["--host", "auto"]);
    assert_eq!(p.b.vm("auto01")["host"], "xen01");
    // Keep-apart groups hold across hosts: with web01 (group "pair") on B, B cannot take
    // another member of the group, whatever its load.
    p.a.ok(&["vm", "set", "web01", "--keep-apart", "pair"]);
    p.a.create_kernel_vm("pair2", &["--host", "xen02"]);
    p.a.ok(&["vm", "set", "pair2", "--keep-apart", "pair"]);
    wait_until(Duration::from_secs(10), "xen02 rated 0 for pair2", || {
        let r = p.a.json(&["vm", "recommend-host", "pair2"]);
        r["hosts"].as_array().unwrap().iter().any(|h| {
            h["host"] == "xen02"
                && h["score"].as_f64() == Some(0.0)
                && h["reasons"].to_string().contains("pair")
        })
    });
    p.a.ok(&["vm", "start", "pair2", "--on", "auto"]);
    assert_eq!(p.a.vm("pair2")["host"], "xen01", "keep-apart ignored");
    p.a.ok(&["vm", "poweroff", "pair2"]);
    p.a.ok(&["vm", "poweroff", "web01"]);

    // ----- bad input, each refused and changing nothing -----
    let wrong = TestAgent::try_start(&member_args(
        &urls,
        "xen03",
        free_port(),
        Some("corral-join-0000000000000000000000000000000000000000000000000000000000000000"),
    ));
    assert!(wrong.contains("join token does not match"), "{wrong}");
    let token = std::fs::read_to_string(p.a.state_dir().join("pool/join-token")).unwrap();
    let taken = TestAgent::try_start(&member_args(
        &urls,
        "xen01",
        free_port(),
        Some(token.trim()),
    ));
    assert!(taken.contains("host name \"xen01\" is taken"), "{taken}");
    let not_etcd = format!("http://127.0.0.1:{}", closed_port());
    let bad = TestAgent::try_start(&member_args(&not_etcd, "xen04", free_port(), None));
    assert!(
        bad.contains("cannot reach the pool's etcd cluster"),
        "{bad}"
    );
    let up = p.b.fails(&["host", "forget", "xen01"]);
    assert!(up.contains("is up"), "{up}");
    assert_eq!(hosts(&p.a), expect, "a refused join left a trace");

    // ----- HA: kill -9 the owner's agent -----
    p.b.create_kernel_vm("ha01", &[]);
    p.b.ok(&[
        "vm",
        "set",
        "ha01",
        "--ha",
        "restart",
        "--ha-priority",
        "10",
    ]);
    let id = p.b.vm("ha01")["id"].as_str().unwrap().to_string();
    p.b.ok(&["vm", "start", "ha01"]);
    p.b.wait_console("ha01", MARKER, 1, Duration::from_secs(120));
    let sampler = OverlapSampler::start(id.clone());
    let lost = Instant::now();
    println!(
        "kill -9 of B's agent at {:.1?} after sampling began",
        sampler.elapsed()
    );
    p.b.kill9();
    wait_until(Duration::from_secs(60), "ha01 restarted on xen01", || {
        p.a.vm("ha01")["host"] == "xen01" && p.a.power_state("ha01") == "running"
    });
    p.a.wait_console("ha01", MARKER, 1, Duration::from_secs(120));
    let failover = lost.elapsed();
    assert_eq!(qemus_of(&id).len(), 1);
    println!(
        "failover after kill -9 of the owner's agent: {failover:.1?} (host loss to guest marker)"
    );

    // ----- HA: freeze the owner's agent (it cannot fence by itself) -----
    p.b.spawn(); // B back: it rejoins, and sees ha01 is A's now
    wait_until(Duration::from_secs(15), "xen02 up again", || {
        hosts(&p.a) == expect
    });
    let pid_a = p.a.pid();
    let lost = Instant::now();
    println!(
        "SIGSTOP of A's agent at {:.1?} after sampling began",
        sampler.elapsed()
    );
    unsafe { libc::kill(pid_a as i32, libc::SIGSTOP) };
    wait_until(Duration::from_secs(60), "ha01 restarted on xen02", || {
        p.b.vm("ha01")["host"] == "xen02" && p.b.power_state("ha01") == "running"
    });
    p.b.wait_console("ha01", MARKER, 1, Duration::from_secs(120));
    let failover2 = lost.elapsed();
    unsafe { libc::kill(pid_a as i32, libc::SIGCONT) };
    println!("failover after SIGSTOP of the owner's agent: {failover2:.1?}");
    // A comes back, finds its lease gone, and does not run ha01 again.
    wait_until(Duration::from_secs(20), "xen01 up again", || {
        hosts(&p.b) == expect
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(qemus_of(&id).len(), 1, "ha01 runs once after A came back");
    let (worst, first) = sampler.finish();
    let fenced = std::fs::read_to_string(p.a.state_dir().join("run/fence/log")).unwrap_or_default();
    let fenced_b =
        std::fs::read_to_string(p.b.state_dir().join("run/fence/log")).unwrap_or_default();
    assert_eq!(
        worst, 1,
        "two QEMUs ran ha01 at the same moment ({first:?}); fence logs: A {fenced:?}, B {fenced_b:?}"
    );
    assert!(
        fenced.contains(&id),
        "A's fence guard did not log killing ha01: {fenced:?}"
    );
    assert!(failover < Duration::from_secs(60) && failover2 < Duration::from_secs(60));
    drop(p.shared);
}

#[test]
fn etcd_member_loss_and_outage_keep_guests_running_and_catch_up() {
    let mut p = start_pool();
    let expect = vec![
        ("xen01".to_string(), "up".to_string()),
        ("xen02".to_string(), "up".to_string()),
    ];
    wait_until(Duration::from_secs(10), "both members up", || {
        hosts(&p.a) == expect && hosts(&p.b) == expect
    });
    p.a.create_kernel_vm("keep01", &[]);
    p.a.ok(&["vm", "start", "keep01"]);
    let pid = p.a.vm("keep01")["pid"].as_u64().unwrap() as u32;

    // One etcd member of three dies: nothing visible changes, and `pool show` says which.
    p.etcd.kill(0);
    wait_until(
        Duration::from_secs(15),
        "pool show: the dead member alone unhealthy",
        || {
            let health = p.a.json(&["pool", "show"]);
            let endpoints = health["endpoints"].as_array().unwrap().clone();
            endpoints[0]["healthy"] == false
                && endpoints[0]["detail"]
                    .as_str()
                    .unwrap()
                    .contains("cannot connect")
                && endpoints[1..].iter().all(|e| e["healthy"] == true)
        },
    );
    p.b.create_kernel_vm("during-loss", &[]);
    wait_until(Duration::from_secs(5), "A sees the VM B made", || {
        p.a.cli(&["vm", "show", "during-loss"]).status.success()
    });
    assert_eq!(hosts(&p.a), expect);
    p.etcd.restart(0);

    // Evacuate: a halted VM on shared storage moves; a running one is refused, with why.
    p.b.create_kernel_vm("mover", &["--disk", "64M,sr=shared1"]);
    p.b.create_kernel_vm("stayer", &["--disk", "64M"]);
    let out = p.a.cli(&["host", "evacuate", "xen02", "--to", "xen01"]);
    assert!(
        !out.status.success(),
        "an evacuation that left a VM behind succeeded"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("moved mover to xen01"), "{text}");
    assert!(
        text.contains("left stayer") && text.contains("local to host xen02"),
        "{text}"
    );
    let v = p.a.vm("mover");
    assert_eq!(v["host"], "xen01", "{v}");
    wait_until(Duration::from_secs(5), "B sees mover moved", || {
        p.b.vm("mover")["host"] == "xen01"
    });
    p.a.ok(&["vm", "start", "mover"]);
    assert_eq!(p.a.qemu_pids().len(), 2, "keep01 and mover run on A");
    p.a.ok(&["vm", "poweroff", "mover"]);

    // The whole cluster is down: guests keep running, reads come from the cache, writes are
    // refused as unavailable, naming the endpoints tried.
    p.etcd.kill_all();
    let list = p.a.json(&["vm", "list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "keep01" && v["power_state"] == "running"),
        "{list}"
    );
    let err = p.a.fails(&[
        "vm",
        "create",
        "--name",
        "refused",
        "--memory",
        "64M",
        "--no-disks",
    ]);
    assert!(
        err.contains("unavailable") && err.contains("127.0.0.1:"),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(pid_alive(pid), "a guest died while etcd was down");

    // etcd returns: writes work again and every member catches up.
    for i in 0..3 {
        p.etcd.restart(i);
    }
    wait_until(Duration::from_secs(60), "writes accepted again", || {
        p.a.cli(&[
            "vm",
            "create",
            "--name",
            "after",
            "--memory",
            "64M",
            "--no-disks",
        ])
        .status
        .success()
    });
    wait_until(Duration::from_secs(20), "B catches up", || {
        p.b.cli(&["vm", "show", "after"]).status.success()
    });
    wait_until(
        Duration::from_secs(20),
        "both members up after the outage",
        || hosts(&p.a) == expect && hosts(&p.b) == expect,
    );
    assert!(pid_alive(pid), "keep01 died");
    assert_eq!(p.a.power_state("keep01"), "running");
}

/// A tiny deterministic generator (xorshift), so a failing round can be replayed by seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Volume files (`<vm-uuid>-<device>.<fmt>`) in a repository directory, by VM id.
fn volumes_in(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if e.path().is_file()
            && (name.ends_with(".qcow2") || name.ends_with(".raw"))
            && name.len() > 36
        {
            out.push((name[..36].to_string(), name));
        }
    }
    out
}

#[test]
fn chaos_rounds_lose_nothing_and_never_run_a_vm_twice() {
    let rounds: u64 = std::env::var("CORRAL_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("CORRAL_CHAOS_SEED")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0x5eed_c0a1);
    let mut rng = Rng(seed);
    let ns = Netns::create();
    let mut p = start_pool_in(Some(&ns));
    let expect = vec![
        ("xen01".to_string(), "up".to_string()),
        ("xen02".to_string(), "up".to_string()),
    ];
    wait_until(Duration::from_secs(10), "both members up", || {
        hosts(&p.a) == expect && hosts(&p.b) == expect
    });
    let mut acknowledged: std::collections::BTreeSet<String> = Default::default();
    let mut faults = std::collections::BTreeMap::<&str, u32>::new();
    let mut next_vm = 0;
    let (mut ops_ok, mut ops_failed) = (0, 0);
    let started = Instant::now();
    for round in 0..rounds {
        // Mixed operations through either member, in a thread, while a fault strikes.
        let names: Vec<String> = acknowledged.iter().cloned().collect();
        let a_sock = p.a.socket.clone();
        let b_sock = p.b.socket.clone();
        let mut ops: Vec<Vec<String>> = Vec::new();
        for _ in 0..3 {
            let pick = rng.below(5);
            let name = if names.is_empty() || pick == 0 {
                next_vm += 1;
                format!("c{next_vm:03}")
            } else {
                names[rng.below(names.len() as u64) as usize].clone()
            };
            let g = guest();
            let op: Vec<String> = match (pick, acknowledged.contains(&name)) {
                (_, false) => vec![
                    "vm",
                    "create",
                    "--name",
                    &name,
                    "--memory",
                    "64M",
                    "--host",
                    "auto",
                    "--kernel",
                    g.kernel.to_str().unwrap(),
                    "--initrd",
                    g.initrd.to_str().unwrap(),
                    "--cmdline",
                    "console=ttyS0 no_timer_check",
                    "--disk",
                    "16M,sr=shared1",
                ]
                .into_iter()
                .map(String::from)
                .collect(),
                (1, true) => vec![
                    "vm".into(),
                    "start".into(),
                    name.clone(),
                    "--on".into(),
                    "auto".into(),
                ],
                (2, true) => vec!["vm".into(), "poweroff".into(), name.clone()],
                (3, true) => vec![
                    "vm".into(),
                    "set".into(),
                    name.clone(),
                    "--ha".into(),
                    "restart".into(),
                ],
                _ => vec!["vm".into(), "delete".into(), name.clone(), "--force".into()],
            };
            ops.push(op);
        }
        let worker = std::thread::spawn(move || {
            let mut done = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                let sock = if i % 2 == 0 { &a_sock } else { &b_sock };
                let out = std::process::Command::new(corral_bin())
                    .arg("--connect")
                    .arg(sock)
                    .args(op)
                    .output()
                    .unwrap();
                done.push((op.clone(), out.status.success()));
            }
            done
        });
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let fault = match rng.below(5) {
            0 => {
                let x = if rng.below(2) == 0 {
                    &mut p.a
                } else {
                    &mut p.b
                };
                x.kill9();
                std::thread::sleep(Duration::from_millis(rng.below(1500)));
                x.spawn();
                "kill -9 an agent"
            }
            1 => {
                let x = if rng.below(2) == 0 { &p.a } else { &p.b };
                let pid = x.pid() as i32;
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                std::thread::sleep(Duration::from_millis(300 + rng.below(2500)));
                unsafe { libc::kill(pid, libc::SIGCONT) };
                "SIGSTOP/SIGCONT an agent"
            }
            2 => {
                let i = rng.below(3) as usize;
                p.etcd.kill(i);
                std::thread::sleep(Duration::from_millis(rng.below(1500)));
                p.etcd.restart(i);
                "kill an etcd member"
            }
            3 => {
                ns.cut();
                std::thread::sleep(Duration::from_millis(300 + rng.below(3000)));
                ns.heal();
                "cut B off from etcd and A"
            }
            _ => "none",
        };
        *faults.entry(fault).or_default() += 1;
        let done = worker.join().unwrap();
        for (op, ok) in &done {
            if *ok {
                ops_ok += 1;
            } else {
                ops_failed += 1;
            }
            let name = if op[1] == "create" { &op[3] } else { &op[2] };
            match (op[1].as_str(), ok) {
                ("create", true) => {
                    acknowledged.insert(name.clone());
                }
                // A delete whose answer was lost (the agent killed under it) may or may not
                // have happened: nothing was acknowledged either way.
                ("delete", _) => {
                    acknowledged.remove(name);
                }
                _ => {}
            }
        }
        // Heal, then check: present exactly once, never twice running, no orphan volume.
        wait_until(
            Duration::from_secs(30),
            "both members up after the round",
            || hosts(&p.a) == expect && hosts(&p.b) == expect,
        );
        let context = format!("round {round} (seed {seed}), fault {fault}, ops {done:?}");
        let mut ids: std::collections::BTreeMap<String, String>;
        let names = |l: &serde_json::Value| -> Vec<(String, String, String)> {
            let mut v: Vec<(String, String, String)> = l
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap().to_string(),
                        v["id"].as_str().unwrap().to_string(),
                        v["host"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (na, nb) = (
                names(&p.a.json(&["vm", "list"])),
                names(&p.b.json(&["vm", "list"])),
            );
            ids = na.iter().map(|(n, i, _)| (n.clone(), i.clone())).collect();
            if na == nb && ids.len() == na.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{context}: the members disagree on the VMs:\nA {na:?}\nB {nb:?}\nA log:\n{}\nB log:\n{}",
                tail(&p.a.log(), 30),
                tail(&p.b.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for name in &acknowledged {
            // A create may have succeeded although its answer was lost; a delete may have
            // failed although it took effect. What was acknowledged and not deleted exists.
            assert!(
                ids.contains_key(name),
                "{context}: acknowledged VM {name} is missing"
            );
        }
        for name in ids.keys() {
            acknowledged.insert(name.clone());
        }
        for (name, id) in &ids {
            assert!(qemus_of(id).len() <= 1, "{context}: {name} runs twice");
        }
        // None is half-made: every disk of every VM exists.
        for v in p.a.json(&["vm", "list"]).as_array().unwrap() {
            for d in v["disks"].as_array().unwrap() {
                let path = d["path"].as_str().unwrap();
                assert!(
                    std::path::Path::new(path).exists(),
                    "{context}: VM {} has lost its disk {path}",
                    v["name"]
                );
            }
        }
        let known: std::collections::BTreeSet<&String> = ids.values().collect();
        for dir in [
            p.shared.path().to_path_buf(),
            p.a.state_dir().join("srs/default"),
            p.b.state_dir().join("srs/default"),
        ] {
            for (id, file) in volumes_in(&dir) {
                assert!(
                    known.contains(&id),
                    "{context}: orphan volume {file} in {}",
                    dir.display()
                );
            }
        }
    }
    println!(
        "chaos: {rounds} rounds in {:.0?}, faults {faults:?}, operations {ops_ok} succeeded and {ops_failed} failed (refused or cut off by a fault), {} VMs at the end, 0 inconsistencies",
        started.elapsed(),
        acknowledged.len()
    );
}

#[test]
fn a_member_cut_off_from_etcd_fences_its_ha_vm_and_it_restarts_elsewhere() {
    let ns = Netns::create();
    let p = start_pool_in(Some(&ns));
    let (a, b) = (&p.a, &p.b);
    let expect = vec![
        ("xen01".to_string(), "up".to_string()),
        ("xen02".to_string(), "up".to_string()),
    ];
    wait_until(Duration::from_secs(10), "both members up", || {
        hosts(a) == expect && hosts(b) == expect
    });
    // Made and started through A, on B: forwarding crosses the namespace too.
    a.create_kernel_vm("cut01", &["--host", "xen02", "--disk", "16M,sr=shared1"]);
    a.ok(&["vm", "set", "cut01", "--ha", "restart"]);
    a.ok(&["vm", "start", "cut01"]);
    let id = a.vm("cut01")["id"].as_str().unwrap().to_string();
    b.wait_console("cut01", MARKER, 1, Duration::from_secs(120));
    // Also a guest that is not HA: a cut-off host keeps running it.
    b.create_kernel_vm("plain01", &[]);
    b.ok(&["vm", "start", "plain01"]);
    let plain_pid = b.vm("plain01")["pid"].as_u64().unwrap() as u32;

    let sampler = OverlapSampler::start(id.clone());
    let lost = Instant::now();
    ns.cut();
    wait_until(Duration::from_secs(60), "cut01 restarted on xen01", || {
        a.vm("cut01")["host"] == "xen01" && a.power_state("cut01") == "running"
    });
    a.wait_console("cut01", MARKER, 1, Duration::from_secs(120));
    println!(
        "failover of a member cut off from etcd: {:.1?}",
        lost.elapsed()
    );
    assert!(
        pid_alive(plain_pid),
        "the cut-off host killed a guest that is not HA"
    );
    let fenced = std::fs::read_to_string(b.state_dir().join("run/fence/log")).unwrap_or_default();
    assert!(fenced.contains(&id), "B did not fence cut01: {fenced:?}");
    // B back: it rejoins and runs nothing twice.
    ns.heal();
    wait_until(Duration::from_secs(30), "xen02 back in the pool", || {
        hosts(a) == expect && hosts(b) == expect
    });
    std::thread::sleep(Duration::from_secs(2));
    let (worst, first) = sampler.finish();
    assert_eq!(worst, 1, "cut01 ran twice ({first:?})");
    assert_eq!(b.vm("cut01")["host"], "xen01");
    assert!(pid_alive(plain_pid));
    // The agents go before the namespace B lives in.
    drop(p);
}
