//! Live migration end to end: a real 3-member etcd cluster, two real agents (B in its own
//! network namespace where the network is cut), real guests under TCG that count on their
//! serial console, QEMU's migration stream over TLS with the pool's certificates.
//!
//! - shared storage: a counting guest moves (the command sent to the member that does not
//!   own it), keeps counting on the target (no restart: the count goes on), runs once, and
//!   its task carries QEMU's downtime and total time;
//! - `--with-storage`: a guest whose local disk holds 64 MiB of random data moves; the
//!   target's new volume has the same content and the source's volume is gone; it comes back
//!   with `--insecure-stream` (the disk plain, straight to the target QEMU), the same again;
//! - convergence: no convergence within the deadline, escalation, post-copy; the source's
//!   agent killed mid-migration;
//! - every fault (target QEMU killed, target agent killed, network cut, cancel) at every
//!   phase (set-up, mirror, memory, switchover): the guest keeps running on the source, once,
//!   and nothing is left on the target within 10 s; the mirror's QEMU kill and network cut
//!   again with `--insecure-stream`;
//! - pre-check refusals, each with its message and nothing changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../corral-store/src/etcd_cluster.rs"]
mod etcd_cluster;
#[path = "common/pool.rs"]
mod pool_setup;

use common::*;
use pool_setup::*;
use std::time::{Duration, Instant};

/// The counts the guest printed on one member's console log.
fn counts(agent: &TestAgent, vm: &str) -> Vec<u64> {
    agent
        .console_log(vm)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CORRAL-COUNT "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Wait until `agent`'s console log of `vm` shows a count of at least `n`.
fn wait_count(agent: &TestAgent, vm: &str, n: u64) {
    wait_until(
        Duration::from_secs(60),
        &format!("{vm} counting to {n}"),
        || counts(agent, vm).last().is_some_and(|c| *c >= n),
    );
}

/// A host setting changed for a test, put back when dropped.
struct Sysctl {
    path: &'static str,
    before: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Option<Sysctl> {
        let before = std::fs::read_to_string(path).ok()?;
        std::fs::write(path, value).ok()?;
        Some(Sysctl { path, before })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.before.trim());
    }
}

fn sha256(path: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn task_of(agent: &TestAgent, id: &str) -> serde_json::Value {
    agent.json(&["task", "show", id])
}

/// The task once it is no longer running; on a timeout, the task and the agent's log tail
/// say where it stuck.
fn wait_task(agent: &TestAgent, id: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let task = task_of(agent, id);
        if task["state"] != "running" {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "the migration task still runs after {timeout:?}: {task}\nagent log tail:\n{}",
            tail(&agent.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first bytes a VNC viewer gets from `corral vm vnc VM --listen 127.0.0.1:0` run
/// against `agent`.
fn vnc_greeting(agent: &TestAgent, vm: &str) -> String {
    use std::io::{BufRead, Read};
    let mut child = std::process::Command::new(corral_bin())
        .arg("--connect")
        .arg(&agent.socket)
        .args(["--json", "vm", "vnc", vm, "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let listen: serde_json::Value = serde_json::from_str(&line).expect("vm vnc --json");
    let mut viewer = std::net::TcpStream::connect(listen["listen"].as_str().unwrap()).unwrap();
    viewer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = [0u8; 12];
    let read = viewer.read_exact(&mut greeting);
    let _ = child.kill();
    let _ = child.wait();
    read.expect("the VNC server's greeting");
    String::from_utf8_lossy(&greeting).into_owned()
}

/// The one QEMU running `vm_id` on the machine, and which agent's state directory it
/// belongs to (its pid file).
fn single_qemu(vm_id: &str) -> u32 {
    let pids = qemus_of(vm_id);
    assert_eq!(pids.len(), 1, "QEMUs of {vm_id}: {pids:?}");
    pids[0]
}

#[test]
fn live_migration_moves_a_running_guest_and_failures_keep_it_at_home() {
    let p = start_pool();
    wait_until(Duration::from_secs(10), "both members up", || {
        p.a.json(&["host", "list"]).as_array().unwrap().len() == 2
    });
    let counting = "console=ttyS0 no_timer_check corral.count";

    // ----- shared storage -----
    p.a.create_kernel_vm_cmdline(
        "mig1",
        counting,
        &["--host", "xen01", "--disk", "32M,sr=shared1"],
    );
    p.a.ok(&["vm", "start", "mig1"]);
    p.a.wait_console("mig1", "CORRAL-COUNT 3", 1, BOOT);
    let id = p.a.vm("mig1")["id"].as_str().unwrap().to_string();

    // Pre-checks: each refusal names the problem and nothing moves.
    let e = p.b.fails(&["vm", "migrate", "mig1", "--to", "xen01"]);
    assert!(e.contains("already on host"), "{e}");
    let e = p.b.fails(&["vm", "migrate", "mig1", "--to", "nosuch"]);
    assert!(e.contains("no host named \"nosuch\""), "{e}");
    let e = p.b.fails(&[
        "vm",
        "migrate",
        "mig1",
        "--to",
        "xen02",
        "--max-downtime",
        "1ms",
    ]);
    assert!(e.contains("--max-downtime must be between"), "{e}");
    let check =
        p.b.ok(&["vm", "migrate", "mig1", "--to", "xen02", "--check"]);
    for name in [
        "target-up",
        "memory",
        "machine",
        "cpu",
        "networks",
        "storage",
    ] {
        assert!(
            check
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "{name} in:\n{check}"
        );
    }
    assert!(check.contains("can migrate to host xen02"), "{check}");
    assert_eq!(p.a.vm("mig1")["host"], "xen01");
    // A VM with a local disk needs --with-storage.
    p.a.create_kernel_vm_cmdline("local1", counting, &["--host", "xen01", "--disk", "16M"]);
    p.a.ok(&["vm", "start", "local1"]);
    let e = p.a.fails(&["vm", "migrate", "local1", "--to", "xen02"]);
    assert!(
        e.contains("storage") && e.contains("use --with-storage"),
        "{e}"
    );

    // The migration itself, asked of the member that does not own the VM.
    let before = counts(&p.a, "mig1");
    let t0 = Instant::now();
    let out = p.b.json(&["vm", "migrate", "mig1", "--to", "xen02"]);
    let took = t0.elapsed();
    assert_eq!(out["state"], "succeeded", "{out}");
    assert_eq!(out["operation"], "vm.migrate");
    let downtime = out["downtime_ms"].as_u64().expect("downtime_ms");
    let total = out["total_ms"].as_u64().expect("total_ms");
    assert!(out["bytes_total"].as_u64().unwrap() > 0, "{out}");
    assert!(downtime <= total && total > 0, "{out}");
    println!("shared storage: downtime {downtime} ms, total {total} ms, command {took:.1?}");
    for agent in [&p.a, &p.b] {
        let v = agent.vm("mig1");
        assert_eq!(v["host"], "xen02", "{v}");
        assert_eq!(v["power_state"], "running", "{v}");
    }
    let pid = single_qemu(&id);
    // The target's agent adopts the VM when it sees the record move (its watch): until
    // then `vm show` may not have the pid yet.
    wait_until(
        Duration::from_secs(10),
        "xen02 to show the QEMU's pid",
        || p.b.vm("mig1")["pid"].as_u64() == Some(pid as u64),
    );
    // It keeps counting: no restart (a new boot would count from 1 again).
    let last_before = *before.last().unwrap();
    wait_count(&p.b, "mig1", last_before + 3);
    let after = counts(&p.b, "mig1");
    assert!(
        after.first().copied().unwrap_or(0) > 1 && !after.contains(&1),
        "the guest restarted: {after:?}"
    );
    // The console follows: read through the member that no longer has the VM.
    assert!(
        counts(&p.a, "mig1").iter().any(|n| *n > last_before),
        "the console through xen01 does not reach the guest on xen02"
    );
    // So does the graphical console: `vm vnc --listen` on the member without the VM serves
    // the VNC server of the guest on xen02 (its RFB greeting).
    let greeting = vnc_greeting(&p.a, "mig1");
    assert!(greeting.starts_with("RFB 003."), "{greeting:?}");
    // Nothing of it left on the source.
    assert!(!p.a.state_dir().join("run").join(&id).exists());

    // ----- local storage, mirrored -----
    p.b.create_kernel_vm_cmdline(
        "mig2",
        counting,
        &["--host", "xen02", "--disk", "256M,format=raw"],
    );
    let v = p.b.vm("mig2");
    let src_disk = v["disks"][0]["path"].as_str().unwrap().to_string();
    let id2 = v["id"].as_str().unwrap().to_string();
    let dd = std::process::Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={src_disk}"),
            "bs=1M",
            "count=64",
            "seek=16",
            "conv=notrunc",
        ])
        .output()
        .unwrap();
    assert!(dd.status.success());
    let want = sha256(&src_disk);
    p.b.ok(&["vm", "start", "mig2"]);
    p.b.wait_console("mig2", "CORRAL-COUNT 2", 1, BOOT);
    assert_eq!(sha256(&src_disk), want, "the guest wrote to its disk");
    let out =
        p.a.json(&["vm", "migrate", "mig2", "--to", "xen01", "--with-storage"]);
    assert_eq!(out["state"], "succeeded", "{out}");
    assert!(out["disk_bytes"].as_u64().unwrap() > 0, "{out}");
    let v = p.a.vm("mig2");
    assert_eq!(v["host"], "xen01");
    let new_disk = v["disks"][0]["path"].as_str().unwrap().to_string();
    assert!(
        new_disk.starts_with(p.a.state_dir().to_str().unwrap()),
        "{new_disk}"
    );
    assert_eq!(sha256(&new_disk), want, "mirrored disk differs");
    assert!(
        !std::path::Path::new(&src_disk).exists(),
        "source volume left behind"
    );
    single_qemu(&id2);
    p.a.wait_console("mig2", "CORRAL-COUNT", 2, Duration::from_secs(30));
    assert!(!counts(&p.a, "mig2").contains(&1));

    // ----- cancel while memory is being sent: the guest stays at home -----
    let out = p.a.json(&[
        "vm",
        "migrate",
        "mig1",
        "--to",
        "xen01",
        "--bandwidth",
        "1M",
        "--no-wait",
    ]);
    let task = out["task"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(30), "memory phase", || {
        task_of(&p.b, &task)["phase"] == "migrating memory"
    });
    p.b.ok(&["task", "cancel", &task]);
    let t = wait_task(&p.b, &task, Duration::from_secs(30));
    assert_eq!(t["state"], "cancelled", "{t}");
    let v = p.b.vm("mig1");
    assert_eq!(
        (v["host"].as_str(), v["power_state"].as_str()),
        (Some("xen02"), Some("running")),
        "{v}"
    );
    let t_cancel = Instant::now();
    wait_until(Duration::from_secs(10), "the target's half removed", || {
        !p.a.state_dir().join("run").join(&id).exists() && qemus_of(&id).len() == 1
    });
    println!("cancel: target cleaned up in {:.1?}", t_cancel.elapsed());
    let n = *counts(&p.b, "mig1").last().unwrap();
    wait_count(&p.b, "mig1", n + 2);

    // ----- evacuating a member migrates its running VMs live -----
    let out = p.a.ok(&["host", "evacuate", "xen02", "--to", "xen01"]);
    assert!(out.contains("migrating mig1 live to xen01 (task "), "{out}");
    wait_until(Duration::from_secs(60), "mig1 evacuated to xen01", || {
        p.a.vm("mig1")["host"] == "xen01"
    });
    assert_eq!(p.a.vm("mig1")["power_state"], "running");
    single_qemu(&id);
    wait_until(Duration::from_secs(30), "mig1 counting on xen01", || {
        counts(&p.a, "mig1").len() >= 2
    });
    assert!(!counts(&p.a, "mig1").contains(&1), "mig1 restarted");

    // ----- mig2 back with --insecure-stream -----
    // the disk goes plain, from this agent straight to the
    // target QEMU's NBD server, and arrives the same.
    let out = p.a.json(&[
        "vm",
        "migrate",
        "mig2",
        "--to",
        "xen02",
        "--with-storage",
        "--insecure-stream",
    ]);
    assert_eq!(out["state"], "succeeded", "{out}");
    let back = p.b.vm("mig2");
    assert_eq!(back["host"], "xen02");
    let back_disk = back["disks"][0]["path"].as_str().unwrap().to_string();
    assert!(
        back_disk.starts_with(p.b.state_dir().to_str().unwrap()),
        "{back_disk}"
    );
    assert_eq!(
        sha256(&back_disk),
        want,
        "disk mirrored in the clear differs"
    );
    assert!(
        !std::path::Path::new(&new_disk).exists(),
        "xen01's volume left behind"
    );
    single_qemu(&id2);
    // The console log shows this run only: counts, none of them a first one.
    p.b.wait_console("mig2", "CORRAL-COUNT", 2, Duration::from_secs(30));
    assert!(
        !counts(&p.b, "mig2").contains(&1),
        "mig2 restarted on its way back"
    );
}

/// Start a migration of `vm` to xen02 limited to 1 MiB/s (slow enough to interrupt) and
/// wait until it reaches `phase`; answers the task id (on `agent`, the VM's owner).
fn slow_migration(agent: &TestAgent, vm: &str, extra: &[&str], phase: &str) -> String {
    let mut args = vec![
        "vm",
        "migrate",
        vm,
        "--to",
        "xen02",
        "--bandwidth",
        "1M",
        "--no-wait",
    ];
    args.extend_from_slice(extra);
    let out = agent.json(&args);
    let task = out["task"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(30), phase, || {
        task_of(agent, &task)["phase"] == phase
    });
    task
}

/// QEMUs of `vm_id` other than `keep`.
fn other_qemus(vm_id: &str, keep: u32) -> Vec<u32> {
    qemus_of(vm_id).into_iter().filter(|p| *p != keep).collect()
}

#[test]
fn convergence_and_target_failures_keep_the_guest_running_once() {
    let mut p = start_pool();
    wait_until(Duration::from_secs(10), "both members up", || {
        p.a.json(&["host", "list"]).as_array().unwrap().len() == 2
    });
    // A guest that rewrites 8 MiB of its memory every second.
    p.a.create_kernel_vm_cmdline(
        "dirty1",
        "console=ttyS0 no_timer_check corral.count corral.dirty=8",
        &["--host", "xen01", "--no-disks"],
    );
    p.a.ok(&["vm", "start", "dirty1"]);
    p.a.wait_console("dirty1", "CORRAL-COUNT 3", 1, BOOT);
    let id = p.a.vm("dirty1")["id"].as_str().unwrap().to_string();
    let source_pid = single_qemu(&id);
    let b_run = p.b.state_dir().join("run").join(&id);
    let stays_home = |p: &Pool, what: &str| {
        let v = p.a.vm("dirty1");
        assert_eq!(
            (v["host"].as_str(), v["power_state"].as_str()),
            (Some("xen01"), Some("running")),
            "{what}: {v}"
        );
        let t = Instant::now();
        wait_until(Duration::from_secs(10), "the target's half removed", || {
            other_qemus(&id, source_pid).is_empty() && !b_run.exists()
        });
        println!(
            "{what}: target cleaned up {:.1?} after the task ended",
            t.elapsed()
        );
        assert_eq!(qemus_of(&id), vec![source_pid], "{what}");
        let n = *counts(&p.a, "dirty1").last().unwrap();
        wait_count(&p.a, "dirty1", n + 2);
    };

    // Dirtying faster than the link carries, no post-copy, a short deadline: cancelled with
    // the figures, the source still running.
    let e = p.a.fails(&[
        "vm",
        "migrate",
        "dirty1",
        "--to",
        "xen02",
        "--bandwidth",
        "1M",
        "--deadline",
        "20s",
    ]);
    assert!(e.contains("converge"), "{e}");
    assert!(
        e.contains("MiB still to send") || e.contains("deadline"),
        "{e}"
    );
    stays_home(&p, "no convergence");

    // The source's agent dies (kill -9) while the memory is sent. QEMU keeps sending; the
    // target drops its half when heartbeats stop; the restarted source cancels what QEMU
    // still sends and asks the target: the guest runs on here, once.
    let task = slow_migration(&p.a, "dirty1", &[], "migrating memory");
    p.a.kill9();
    std::thread::sleep(Duration::from_secs(1));
    p.a.spawn();
    stays_home(&p, "source agent killed");
    // The task the dead agent ran is marked failed, not left running.
    assert_eq!(task_of(&p.a, &task)["state"], "failed");
    assert!(!p
        .a
        .state_dir()
        .join("run")
        .join(&id)
        .join("migrating.json")
        .exists());

    // A dirtying guest converges by escalation when allowed a longer pause.
    let out = p.a.json(&[
        "vm",
        "migrate",
        "dirty1",
        "--to",
        "xen02",
        "--bandwidth",
        "6M",
        "--max-downtime",
        "5s",
    ]);
    assert_eq!(out["state"], "succeeded", "{out}");
    let steps = out["escalations"].as_array().cloned().unwrap_or_default();
    println!(
        "converged after {} escalations: {steps:?}; downtime {} ms, total {} ms",
        steps.len(),
        out["downtime_ms"],
        out["total_ms"]
    );
    assert!(!steps.is_empty(), "{out}");
    assert!(
        steps[0].as_str().unwrap().contains("stopped shrinking"),
        "{out}"
    );
    assert_eq!(p.b.vm("dirty1")["host"], "xen02");
    single_qemu(&id);

    // With a pause of at most 10 ms allowed and post-copy allowed, the last step is
    // post-copy: the guest runs on the target while the rest of its memory follows.
    wait_until(Duration::from_secs(30), "dirty1 counting on xen02", || {
        !counts(&p.b, "dirty1").is_empty()
    });
    let before = *counts(&p.b, "dirty1").last().unwrap();
    // The guest runs on xen02 (not just its first count after the switch-over).
    wait_count(&p.b, "dirty1", before + 2);
    let postcopy = [
        "vm",
        "migrate",
        "dirty1",
        "--to",
        "xen01",
        "--bandwidth",
        "6M",
        "--max-downtime",
        // The least allowed: once the throttle has slowed the guest, a larger limit can let
        // the pre-copy finish (seen in CI: 60 ms converged) and post-copy is never reached.
        "10ms",
        "--postcopy",
    ];
    // A confined QEMU 7.2 can take post-copy only where unprivileged userfaultfd is allowed:
    // the target refuses in its pre-checks otherwise, then the test allows it meanwhile.
    let _uffd = Sysctl::set("/proc/sys/vm/unprivileged_userfaultfd", "0");
    if is_root() {
        let e = p.b.fails(&postcopy);
        assert!(e.contains("vm.unprivileged_userfaultfd is 0"), "{e}");
        assert_eq!(p.b.vm("dirty1")["host"], "xen02");
    }
    let _uffd = Sysctl::set("/proc/sys/vm/unprivileged_userfaultfd", "1");
    let out = p.b.json(&postcopy);
    assert_eq!(out["state"], "succeeded", "{out}");
    let steps = out["escalations"].to_string();
    println!("post-copy: {steps}; downtime {} ms", out["downtime_ms"]);
    assert!(
        steps.contains("switching to post-copy"),
        "{out}\nconsole on xen02:\n{}",
        tail(&p.b.console_log("dirty1"), 30)
    );
    assert_eq!(p.a.vm("dirty1")["host"], "xen01");
    single_qemu(&id);
    wait_count(&p.a, "dirty1", before + 2);
    assert!(!counts(&p.a, "dirty1").contains(&1), "the guest restarted");
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// The target is ready (QEMU waiting, volumes made), nothing sent yet.
    SetUp,
    /// The disks are being mirrored.
    Mirror,
    /// The memory is being sent.
    Memory,
    /// The source's vCPUs are stopped before the switchover.
    Switchover,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    TargetQemuKilled,
    TargetAgentKilled,
    NetworkCut,
    Cancel,
}

/// Every fault at every phase of a `--with-storage` migration (the one that has all four):
/// the task fails, the guest keeps running at home (the same QEMU, still counting), and the
/// target holds nothing of it within 10 s. B runs in its own network namespace so the
/// network can be cut.
#[test]
fn every_fault_at_every_phase_keeps_the_guest_at_home() {
    let ns = Netns::create();
    let mut p = start_pool_in(Some(&ns));
    let b_up = |p: &Pool| {
        wait_until(Duration::from_secs(30), "xen02 up", || {
            hosts(&p.a).contains(&("xen02".to_string(), "up".to_string()))
        })
    };
    b_up(&p);
    // A network on both members, each on its own bridge of the same name (B's in its
    // namespace), so the guest's NIC moves with it.
    let _bridge = Bridge::create("crlfx0", None);
    for cmd in [
        &["ip", "link", "add", "crlfx0", "type", "bridge"][..],
        &["ip", "link", "set", "crlfx0", "up"][..],
    ] {
        sh(&[ns.prefix(), cmd.to_vec()].concat());
    }
    p.a.ok(&["network", "create", "lan", "--bridge", "crlfx0"]);
    p.b.ok(&["network", "create", "lan", "--bridge", "crlfx0"]);
    p.a.create_kernel_vm_cmdline(
        "fx1",
        "console=ttyS0 no_timer_check corral.count",
        &[
            "--host",
            "xen01",
            "--disk",
            "64M,format=raw",
            "--nic",
            "lan",
        ],
    );
    let v = p.a.vm("fx1");
    let id = v["id"].as_str().unwrap().to_string();
    let disk = v["disks"][0]["path"].as_str().unwrap().to_string();
    // 4 MiB of data: at 1 MiB/s the mirror lasts long enough to be caught.
    let dd = std::process::Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={disk}"),
            "bs=1M",
            "count=4",
            "conv=notrunc",
        ])
        .output()
        .unwrap();
    assert!(dd.status.success());
    p.a.ok(&["vm", "start", "fx1"]);
    p.a.wait_console("fx1", "CORRAL-COUNT 2", 1, BOOT);
    let source_pid = single_qemu(&id);
    let b_run = p.b.state_dir().join("run").join(&id);
    let b_volume =
        p.b.state_dir()
            .join("srs/default")
            .join(format!("{id}-disk0.raw"));
    let failpoints = p.a.state_dir().join("failpoints");
    // The source's log names the failpoint each time it holds there.
    let holds = |p: &Pool, at: &str| p.a.log().matches(at).count();

    let phases = [
        Phase::SetUp,
        Phase::Mirror,
        Phase::Memory,
        Phase::Switchover,
    ];
    let faults = [
        Fault::TargetQemuKilled,
        Fault::TargetAgentKilled,
        Fault::NetworkCut,
        Fault::Cancel,
    ];
    // CORRAL_FAULT_CASES=NetworkCut (a substring of "FAULT at PHASE") runs only those cases,
    // to look into one.
    let only = std::env::var("CORRAL_FAULT_CASES").unwrap_or_default();
    // Every case over the members' TLS; then the mirror's faults again on the plain path of
    // `--insecure-stream` (the source's agent straight to the target QEMU's NBD server).
    let cases = phases
        .iter()
        .flat_map(|p| faults.iter().map(move |f| (*p, *f, false)))
        .chain([
            (Phase::Mirror, Fault::TargetQemuKilled, true),
            (Phase::Mirror, Fault::NetworkCut, true),
        ]);
    for (phase, fault, plain) in cases {
        let case = format!(
            "{fault:?} at {phase:?}{}",
            if plain { " (plain)" } else { "" }
        );
        if !case.contains(&only) {
            continue;
        }
        let mut args = vec![
            "vm",
            "migrate",
            "fx1",
            "--to",
            "xen02",
            "--with-storage",
            "--no-wait",
        ];
        if plain {
            args.push("--insecure-stream");
        }
        match phase {
            Phase::SetUp => std::fs::write(&failpoints, "after-prepare 60\n").unwrap(),
            Phase::Switchover => std::fs::write(&failpoints, "at-switchover 60\n").unwrap(),
            Phase::Mirror | Phase::Memory => args.extend(["--bandwidth", "1M"]),
        }
        let (setup_holds, switchover_holds) =
            (holds(&p, "after-prepare"), holds(&p, "at-switchover"));
        let task = p.a.json(&args)["task"].as_str().unwrap().to_string();
        let reached = || match phase {
            Phase::SetUp => holds(&p, "after-prepare") > setup_holds,
            Phase::Mirror => task_of(&p.a, &task)["phase"] == "mirroring disks",
            Phase::Memory => task_of(&p.a, &task)["phase"] == "migrating memory",
            Phase::Switchover => holds(&p, "at-switchover") > switchover_holds,
        };
        wait_until(
            Duration::from_secs(60),
            &format!("{case}: reached"),
            reached,
        );
        let faulted = Instant::now();
        match fault {
            Fault::TargetQemuKilled => {
                let pids = other_qemus(&id, source_pid);
                assert!(!pids.is_empty(), "{case}: no target QEMU");
                for pid in pids {
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
            Fault::TargetAgentKilled => p.b.kill9(),
            Fault::NetworkCut => ns.cut(),
            Fault::Cancel => {
                p.a.ok(&["task", "cancel", &task]);
            }
        }
        let t = wait_task(&p.a, &task, Duration::from_secs(40));
        let ended = faulted.elapsed();
        // A fault is noticed within the target's 5 s of silence, and the rollback's
        // monitor commands are bounded: no case takes long (slack for a loaded CI).
        assert!(
            ended < Duration::from_secs(20),
            "{case}: the task ended {ended:.1?} after the fault: {t}\nthe source's log:\n{}",
            tail(&p.a.log(), 30)
        );
        let expected = if matches!(fault, Fault::Cancel) {
            "cancelled"
        } else {
            "failed"
        };
        assert_eq!(t["state"], expected, "{case}: {t}");
        let _ = std::fs::remove_file(&failpoints);
        // The restarted agent removes what its predecessor left; cut off, B removes its
        // half by itself (no heartbeats).
        if matches!(fault, Fault::TargetAgentKilled) {
            p.b.spawn();
        }
        let v = p.a.vm("fx1");
        assert_eq!(
            (
                v["host"].as_str(),
                v["power_state"].as_str(),
                v["disks"][0]["path"].as_str()
            ),
            (Some("xen01"), Some("running"), Some(disk.as_str())),
            "{case}: {v}"
        );
        let t0 = Instant::now();
        let clean = || qemus_of(&id) == vec![source_pid] && !b_run.exists() && !b_volume.exists();
        while !clean() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
                clean(),
                "{case}: B's half still there 10 s after the task ended: QEMUs {:?}, run dir {}, volume {}\n{}",
                qemus_of(&id),
                b_run.exists(),
                b_volume.exists(),
                tail(&p.b.log(), 30)
            );
        println!(
            "{case}: the task ended {ended:.1?} after the fault, B was clean {:.1?} later",
            t0.elapsed()
        );
        if matches!(fault, Fault::NetworkCut) {
            ns.heal();
        }
        b_up(&p);
        let n = *counts(&p.a, "fx1").last().unwrap();
        wait_count(&p.a, "fx1", n + 1);
    }
    // Eighteen failed migrations later, the guest never restarted: one boot in its log.
    let boots = counts(&p.a, "fx1").iter().filter(|c| **c == 1).count();
    assert_eq!(boots, 1, "fx1 restarted");

    // Then it moves, and the target announces the guest's MAC on its network at once
    // (QEMU's self-announce: RARP frames from that MAC, seen on B's side).
    let mac = p.a.vm("fx1")["nics"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let mut capture = RarpCapture::start(&ns, &mac);
    let out =
        p.a.json(&["vm", "migrate", "fx1", "--to", "xen02", "--with-storage"]);
    assert_eq!(out["state"], "succeeded", "{out}");
    let frames = capture.frames(Duration::from_secs(20));
    println!("self-announce: {frames} RARP frames from {mac} on xen02's bridge");
    assert!(frames >= 1, "no RARP frame from {mac} on xen02's side");
    wait_until(Duration::from_secs(30), "fx1 counting on xen02", || {
        !counts(&p.b, "fx1").is_empty()
    });
}

/// Counts RARP frames (QEMU's self-announce) from one MAC address on any interface of a
/// network namespace: a raw packet socket, in a Python child run inside the namespace.
struct RarpCapture {
    child: std::process::Child,
}

impl RarpCapture {
    const SCRIPT: &'static str = r#"
import socket, sys, time
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x8035))
s.settimeout(0.2)
print("ready", flush=True)
seen, end, last = 0, time.monotonic() + float(sys.argv[2]), None
while time.monotonic() < end and not (last and time.monotonic() - last > 2):
    try:
        frame = s.recv(2048)
    except socket.timeout:
        continue
    if frame[6:12] == mac:
        seen, last = seen + 1, time.monotonic()
print(seen, flush=True)
"#;

    fn start(ns: &Netns, mac: &str) -> RarpCapture {
        use std::io::BufRead;
        let mut cmd = ns.prefix();
        cmd.extend(["python3", "-c", Self::SCRIPT, mac, "60"]);
        let mut child = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the capture did not start");
        RarpCapture { child }
    }

    /// Frames seen: the capture ends 2 s after the last one, or after `timeout`.
    fn frames(&mut self, timeout: Duration) -> usize {
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() && t0.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out);
        out.trim().parse().unwrap_or(0)
    }
}

#[test]
fn pre_checks_refuse_with_reasons_and_change_nothing() {
    let p = start_pool();
    wait_until(Duration::from_secs(10), "both members up", || {
        p.a.json(&["host", "list"]).as_array().unwrap().len() == 2
    });
    let counting = "console=ttyS0 no_timer_check corral.count";
    // A network only xen01 has.
    let _br = Bridge::create("crlmig0", None);
    p.a.ok(&["network", "create", "lan-a", "--bridge", "crlmig0"]);
    p.a.create_kernel_vm_cmdline(
        "pc1",
        counting,
        &[
            "--host",
            "xen01",
            "--disk",
            "16M,sr=shared1",
            "--nic",
            "lan-a",
        ],
    );
    p.a.ok(&["vm", "start", "pc1"]);
    p.a.wait_console("pc1", "CORRAL-COUNT 2", 1, BOOT);
    let refusal = |args: &[&str], check: &str, why: &str| {
        let before = p.a.vm("pc1");
        let e = p.b.fails(args);
        assert!(e.contains(check) && e.contains(why), "{args:?}: {e}");
        let after = p.a.vm("pc1");
        assert_eq!(
            (&before["host"], &before["power_state"], &before["disks"]),
            (&after["host"], &after["power_state"], &after["disks"]),
            "{args:?} changed the VM"
        );
    };
    refusal(
        &["vm", "migrate", "pc1", "--to", "xen02"],
        "networks",
        "has no network for nic0 (network lan-a)",
    );
    // Media from a file of this host only.
    let iso = guest().dir.join("installer/installer.iso");
    p.a.ok(&["vm", "poweroff", "pc1"]);
    p.a.ok(&["vm", "nic", "remove", "pc1", "nic0"]);
    p.a.ok(&["vm", "start", "pc1"]);
    p.a.ok(&["vm", "cdrom", "insert", "pc1", iso.to_str().unwrap()]);
    refusal(
        &["vm", "migrate", "pc1", "--to", "xen02", "--check"],
        "cdrom",
        "a file of this host only: eject it first",
    );
    p.a.ok(&["vm", "cdrom", "eject", "pc1"]);
    // Already migrating: a second migration is refused while the first runs.
    let out = p.a.json(&[
        "vm",
        "migrate",
        "pc1",
        "--to",
        "xen02",
        "--bandwidth",
        "1M",
        "--no-wait",
    ]);
    let task = out["task"].as_str().unwrap().to_string();
    let e = p.a.fails(&["vm", "migrate", "pc1", "--to", "xen02"]);
    assert!(e.contains("migrat"), "{e}");
    let e = p.a.fails(&["vm", "poweroff", "pc1"]);
    assert!(e.contains("it is migrating to another host"), "{e}");
    p.a.ok(&["task", "cancel", &task]);
    assert_eq!(
        wait_task(&p.a, &task, Duration::from_secs(30))["state"],
        "cancelled"
    );
    let pc_id = p.a.vm("pc1")["id"].as_str().unwrap().to_string();
    wait_until(
        Duration::from_secs(10),
        "the cancelled migration's target half removed",
        || qemus_of(&pc_id).len() == 1,
    );
    // A template does not move.
    p.a.create_kernel_vm("tpl1", &["--host", "xen01", "--disk", "8M,sr=shared1"]);
    p.a.ok(&["vm", "convert-to-template", "tpl1"]);
    let e = p.b.fails(&["vm", "migrate", "tpl1", "--to", "xen02"]);
    assert!(e.contains("template: a template does not move"), "{e}");
    assert_eq!(p.a.vm("tpl1")["host"], "xen01");
}
