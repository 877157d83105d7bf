//! Pool set-up shared by the multi-host tests (`pool.rs`, `migrate.rs`): a 3-member etcd
//! cluster, two members (B optionally in its own network namespace), a shared repository,
//! and the samplers that count a VM's QEMU processes. Included with `#[path]` by tests that
//! also include the etcd cluster helper as `etcd_cluster`.
#![allow(dead_code)]

use super::common::*;
use super::etcd_cluster;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Pool {
    pub etcd: etcd_cluster::EtcdCluster,
    pub a: TestAgent,
    pub b: TestAgent,
    pub shared: tempfile::TempDir,
}

pub fn member_args(etcd: &str, name: &str, port: u16, token: Option<&str>) -> Vec<String> {
    let mut v = vec![
        "--etcd".to_string(),
        etcd.to_string(),
        "--host-name".into(),
        name.into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    if let Some(t) = token {
        v.push("--join-token".into());
        v.push(t.into());
    }
    v
}

pub fn start_pool() -> Pool {
    start_pool_in(None)
}

/// A pool whose member B runs in the network namespace `ns` (when given), reaching etcd and
/// A over its veth, so a fault can cut B off.
pub fn start_pool_in(ns: Option<&Netns>) -> Pool {
    let etcd = etcd_cluster::EtcdCluster::start_also_on(3, ns.map(|n| n.host_ip.as_str()));
    let a_ip = ns.map_or("127.0.0.1", |n| n.host_ip.as_str());
    let mut a_args = member_args(&etcd.endpoints().join(","), "xen01", 0, None);
    a_args[5] = format!("{a_ip}:{}", free_port());
    let a = TestAgent::start_with(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let token = std::fs::read_to_string(a.state_dir().join("pool/join-token"))
        .unwrap()
        .trim()
        .to_string();
    let b = match ns {
        Some(ns) => {
            let mut b_args = member_args(
                &etcd.endpoints_at(&ns.host_ip).join(","),
                "xen02",
                0,
                Some(&token),
            );
            b_args[5] = format!("{}:{}", ns.ns_ip, free_port());
            TestAgent::start_under(
                &ns.prefix(),
                &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        }
        None => {
            let b_args = member_args(
                &etcd.endpoints().join(","),
                "xen02",
                free_port(),
                Some(&token),
            );
            TestAgent::start_with(&b_args.iter().map(String::as_str).collect::<Vec<_>>())
        }
    };
    let shared = tempfile::tempdir().unwrap();
    a.ok(&[
        "sr",
        "create",
        "shared1",
        "--path",
        shared.path().to_str().unwrap(),
        "--shared",
    ]);
    Pool { etcd, a, b, shared }
}

pub fn hosts(agent: &TestAgent) -> Vec<(String, String)> {
    let v = agent.json(&["host", "list"]);
    let mut out: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_string(),
                h["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// QEMU processes whose command line carries this VM id (`-uuid`), on the whole machine.
pub fn qemus_of(vm_id: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args
            .first()
            .is_some_and(|a| a.ends_with(b"qemu-system-x86_64"))
            && args.contains(&vm_id.as_bytes())
        {
            // A zombie has an empty cmdline, so this is a live process.
            out.push(pid);
        }
    }
    // A QEMU started with `-daemonize` forks: until the guest is up, the process the agent
    // spawned waits for the daemon it forked, with the same command line. That is one copy
    // of the guest, not two: leave out a process whose child is in the list too. (Confined
    // QEMUs do not daemonize; they are the agent's own children.)
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let parents: Vec<Option<u32>> = out.iter().map(|p| parent(*p)).collect();
    out.retain(|pid| !parents.contains(&Some(*pid)));
    out
}

/// Samples every 100 ms how many QEMUs run the VM; remembers the worst.
pub struct OverlapSampler {
    pub stop: Arc<AtomicBool>,
    pub worst: Arc<AtomicUsize>,
    /// When and which pids, at the first overlap.
    pub first_overlap: Arc<std::sync::Mutex<Option<String>>>,
    pub started: Instant,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl OverlapSampler {
    pub fn start(vm_id: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(AtomicUsize::new(0));
        let first_overlap = Arc::new(std::sync::Mutex::new(None));
        let (s, w, f) = (stop.clone(), worst.clone(), first_overlap.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let pids = qemus_of(&vm_id);
                w.fetch_max(pids.len(), Ordering::Relaxed);
                if pids.len() > 1 {
                    let mut f = f.lock().unwrap();
                    if f.is_none() {
                        *f = Some(format!("at {:.1?}: pids {pids:?}", started.elapsed()));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        OverlapSampler {
            stop,
            worst,
            first_overlap,
            started,
            thread: Some(thread),
        }
    }
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
    pub fn finish(mut self) -> (usize, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let first = self.first_overlap.lock().unwrap().clone();
        (self.worst.load(Ordering::Relaxed), first)
    }
}

/// A network namespace joined to this one by a veth pair: `host_ip` on this side, `ns_ip`
/// inside. Removed on drop.
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub ns_ip: String,
    /// The lock on this namespace's slot (see `claim_slot`), released when the test's
    /// process ends, however it ends.
    _slot: std::fs::File,
}

/// A slot number (20..220) no other test process holds: each names a namespace, a veth pair
/// and a /24. The suite runs tests of different binaries at once (nextest), so a per-process
/// counter cannot keep them apart; an exclusive lock on a file per slot can, and the kernel
/// drops it with the process, so a killed test frees its slot for the next run.
fn claim_slot() -> (usize, std::fs::File) {
    let dir = std::env::temp_dir().join("corral-test-netns");
    std::fs::create_dir_all(&dir).unwrap();
    let start = std::process::id() as usize;
    for i in 0..200 {
        let n = (start + i) % 200 + 20;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{n}.lock")))
            .unwrap();
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } == 0;
        if locked {
            return (n, file);
        }
    }
    panic!(
        "all 200 test network slots are taken under {}",
        dir.display()
    );
}

pub fn sh(args: &[&str]) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn create() -> Netns {
        // A subnet of its own, so tests running at once do not collide.
        let (n, slot) = claim_slot();
        let name = format!("corral-t{n}");
        let (host_ip, ns_ip) = (format!("10.231.{n}.1"), format!("10.231.{n}.2"));
        let (outer, inner) = (format!("cvh{n}"), format!("cvn{n}"));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &outer])
            .output();
        sh(&["ip", "netns", "add", &name]);
        sh(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        sh(&["ip", "link", "set", &inner, "netns", &name]);
        sh(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", &outer]);
        sh(&["ip", "link", "set", &outer, "up"]);
        let exec = |cmd: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", name.as_str()];
            v.extend_from_slice(cmd);
            sh(&v);
        };
        exec(&["ip", "addr", "add", &format!("{ns_ip}/24"), "dev", &inner]);
        exec(&["ip", "link", "set", &inner, "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
        Netns {
            name,
            host_ip,
            ns_ip,
            _slot: slot,
        }
    }

    pub fn prefix(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.name]
    }

    /// Drop everything from inside the namespace to this side (etcd, the other member).
    pub fn cut(&self) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "ip",
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.host_ip),
        ]);
    }

    pub fn heal(&self) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "ip",
            "route",
            "del",
            "blackhole",
            &format!("{}/32", self.host_ip),
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
