//! Crash safety under `kill -9`, in rounds: mixed operations (create, start, power off,
//! clone, copy, export, import, image install, disk add, delete) run on several VMs through
//! the real CLI while the agent is killed at a random moment; after each restart every VM
//! that was acknowledged must exist exactly once with its last acknowledged state, nothing
//! may be half-created, and nothing may be left behind (no volume without a VM, no QEMU
//! without a record, no staging leftovers, no task of the dead agent still "running").
//!
//! The schedule is seeded: `CORRAL_CHAOS_SEED` (printed at the start; a new one each run
//! otherwise) and `CORRAL_CHAOS_ROUNDS` (100 here; `scripts/chaos.sh` runs 1,000). The last
//! line printed is the summary `scripts/chaos.sh` reports: rounds, faults, inconsistencies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
use common::invariants::{inconsistencies, listed, now_ms, stale_running_tasks};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// splitmix64: small, seedable, good enough to pick operations and moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    Halted,
    Running,
}

impl Power {
    fn as_str(self) -> &'static str {
        match self {
            Power::Halted => "halted",
            Power::Running => "running",
        }
    }
}

/// What the test knows of a VM that exists: its last acknowledged power state and number of
/// disks, `None` while an operation on it was cut off by a kill (either outcome is fine).
#[derive(Debug, Clone, Copy)]
struct Known {
    power: Option<Power>,
    disks: Option<usize>,
}

#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Start(String),
    Poweroff(String),
    Clone(String, String),
    Copy(String, String),
    Export(String, PathBuf),
    Import(PathBuf, String),
    Install(String),
    DiskAdd(String),
    Delete(String),
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Create(_) => "create",
            Op::Start(_) => "start",
            Op::Poweroff(_) => "poweroff",
            Op::Clone(..) => "clone",
            Op::Copy(..) => "copy",
            Op::Export(..) => "export",
            Op::Import(..) => "import",
            Op::Install(_) => "install",
            Op::DiskAdd(_) => "disk add",
            Op::Delete(_) => "delete",
        }
    }

    fn args(&self, user_data: &str) -> Vec<String> {
        let g = guest();
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            Op::Create(n) => s(&[
                "vm",
                "create",
                "--name",
                n,
                "--memory",
                "128M",
                "--kernel",
                g.kernel.to_str().unwrap(),
                "--initrd",
                g.initrd.to_str().unwrap(),
                "--cmdline",
                "console=ttyS0 no_timer_check",
                "--disk",
                "8M",
            ]),
            Op::Start(n) => s(&["vm", "start", n]),
            Op::Poweroff(n) => s(&["vm", "poweroff", n]),
            Op::Clone(src, n) => s(&["vm", "clone", src, n]),
            Op::Copy(src, n) => s(&["vm", "copy", src, n]),
            Op::Export(src, f) => s(&["vm", "export", src, "-o", f.to_str().unwrap()]),
            Op::Import(f, n) => s(&["vm", "import", f.to_str().unwrap(), "--name", n]),
            Op::Install(n) => s(&[
                "vm",
                "install",
                "--template",
                "corral-test-guest",
                "--name",
                n,
                "--memory",
                "128M",
                "--disk-import",
                g.disk_qcow2.to_str().unwrap(),
                "--cloud-init",
                user_data,
            ]),
            Op::DiskAdd(n) => s(&["vm", "disk", "add", n, "8M"]),
            Op::Delete(n) => s(&["vm", "delete", n, "--force"]),
        }
    }
}

/// One CLI run: did it succeed, when did it end, what did it say.
struct Outcome {
    ok: bool,
    took: Duration,
    ended: Instant,
    stderr: String,
}

fn run_cli(socket: &std::path::Path, args: &[String]) -> Outcome {
    let begun = Instant::now();
    let mut child = Command::new(corral_bin())
        .arg("--connect")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corral");
    // A CLI whose agent died must give up on its own; a hang is a finding, not a wait.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            return Outcome {
                took: begun.elapsed(),
                ok: status.success(),
                ended: Instant::now(),
                stderr,
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome {
                took: begun.elapsed(),
                ok: false,
                ended: Instant::now(),
                stderr: format!("HUNG: corral {} did not end within 120 s", args.join(" ")),
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Chaos {
    rng: Rng,
    vms: BTreeMap<String, Known>,
    /// Creates cut off by a kill: the VM may exist (whole) or not.
    maybe: BTreeSet<String>,
    /// Acknowledged deletes (and creates found not to have happened): must stay absent.
    gone: BTreeSet<String>,
    archives: Vec<PathBuf>,
    next: u32,
    dir: PathBuf,
}

impl Chaos {
    fn new_name(&mut self) -> String {
        self.next += 1;
        format!("c{:04}", self.next)
    }

    fn pick<'a>(&mut self, from: &'a [String]) -> Option<&'a String> {
        (!from.is_empty()).then(|| &from[self.rng.below(from.len() as u64) as usize])
    }

    /// Up to `n` operations on distinct VMs, at most two guests running at once (TCG on two
    /// shared cores), the population kept near 4 to 10 VMs. Weighted so that each kind of
    /// operation runs in a good share of the rounds.
    fn plan(&mut self, n: usize, busy: &BTreeSet<String>) -> Vec<Op> {
        let mut taken: BTreeSet<String> = busy.clone();
        let mut running = self
            .vms
            .values()
            .filter(|k| k.power != Some(Power::Halted))
            .count();
        let mut population = self.vms.len() + self.maybe.len();
        let mut ops = Vec::new();
        for _ in 0..n {
            let free = |power: Option<Power>| -> Vec<String> {
                self.vms
                    .iter()
                    .filter(|(name, k)| {
                        !taken.contains(*name) && (power.is_none() || k.power == power)
                    })
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            let (halted, up, any) = (
                free(Some(Power::Halted)),
                free(Some(Power::Running)),
                free(None),
            );
            let grow = population < 10;
            let mut kinds: Vec<(&str, u64)> = Vec::new();
            if grow {
                kinds.push(("create", if population < 4 { 40 } else { 8 }));
                if !halted.is_empty() {
                    kinds.push(("clone", 10));
                    kinds.push(("copy", 10));
                }
                if !self.archives.is_empty() {
                    kinds.push(("import", 14));
                }
                if running < 2 {
                    kinds.push(("install", 5));
                }
            }
            if !halted.is_empty() {
                kinds.push(("export", 12));
                kinds.push(("disk add", 8));
                if running < 2 {
                    kinds.push(("start", 10));
                }
            }
            if !up.is_empty() {
                kinds.push(("poweroff", if running >= 2 { 20 } else { 8 }));
            }
            if !any.is_empty() && population > 3 {
                kinds.push(("delete", if grow { 10 } else { 40 }));
            }
            let total: u64 = kinds.iter().map(|k| k.1).sum();
            if total == 0 {
                break;
            }
            let mut roll = self.rng.below(total);
            let kind = kinds
                .iter()
                .find(|(_, w)| {
                    if roll < *w {
                        true
                    } else {
                        roll -= w;
                        false
                    }
                })
                .map(|k| k.0)
                .unwrap_or("create");
            let op = match kind {
                "create" => Op::Create(self.new_name()),
                "clone" => {
                    let s = self.pick(&halted).unwrap().clone();
                    Op::Clone(s, self.new_name())
                }
                "copy" => {
                    let s = self.pick(&halted).unwrap().clone();
                    Op::Copy(s, self.new_name())
                }
                "import" => {
                    let i = self.rng.below(self.archives.len() as u64) as usize;
                    let f = self.archives[i].clone();
                    Op::Import(f, self.new_name())
                }
                "install" => Op::Install(self.new_name()),
                "export" => {
                    let s = self.pick(&halted).unwrap().clone();
                    self.next += 1;
                    Op::Export(s, self.dir.join(format!("export-{}.corral", self.next)))
                }
                "disk add" => Op::DiskAdd(self.pick(&halted).unwrap().clone()),
                "start" => Op::Start(self.pick(&halted).unwrap().clone()),
                "poweroff" => Op::Poweroff(self.pick(&up).unwrap().clone()),
                _ => Op::Delete(self.pick(&any).unwrap().clone()),
            };
            match &op {
                Op::Create(n) | Op::Install(n) | Op::Import(_, n) => {
                    population += 1;
                    taken.insert(n.clone());
                }
                Op::Start(n) | Op::Poweroff(n) | Op::DiskAdd(n) | Op::Delete(n) => {
                    taken.insert(n.clone());
                }
                Op::Clone(s, n) | Op::Copy(s, n) => {
                    population += 1;
                    taken.insert(s.clone());
                    taken.insert(n.clone());
                }
                Op::Export(s, _) => {
                    taken.insert(s.clone());
                }
            }
            if matches!(op, Op::Start(_) | Op::Install(_)) {
                running += 1;
            }
            ops.push(op);
        }
        ops
    }

    /// Apply what an acknowledged (`ok`) or cut-off operation means for the model.
    fn apply(&mut self, op: &Op, ok: bool) {
        let halted = Known {
            power: Some(Power::Halted),
            disks: Some(1),
        };
        match (op, ok) {
            (Op::Create(n), true) => {
                self.vms.insert(n.clone(), halted);
            }
            // As many disks as the exported VM had then.
            (Op::Import(_, n), true) => {
                self.vms.insert(
                    n.clone(),
                    Known {
                        disks: None,
                        ..halted
                    },
                );
            }
            (Op::Clone(s, n) | Op::Copy(s, n), true) => {
                let disks = self.vms.get(s).and_then(|k| k.disks);
                self.vms.insert(
                    n.clone(),
                    Known {
                        power: Some(Power::Halted),
                        disks,
                    },
                );
            }
            (Op::Install(n), true) => {
                self.vms.insert(
                    n.clone(),
                    Known {
                        power: Some(Power::Running),
                        disks: None,
                    },
                );
            }
            (Op::Create(n) | Op::Clone(_, n) | Op::Copy(_, n) | Op::Import(_, n), false)
            | (Op::Install(n), false) => {
                self.maybe.insert(n.clone());
            }
            (Op::Start(n), true) => self.set_power(n, Some(Power::Running)),
            (Op::Poweroff(n), true) => self.set_power(n, Some(Power::Halted)),
            (Op::Start(n) | Op::Poweroff(n), false) => self.set_power(n, None),
            (Op::DiskAdd(n), true) => {
                if let Some(k) = self.vms.get_mut(n) {
                    k.disks = k.disks.map(|d| d + 1);
                }
            }
            (Op::DiskAdd(n), false) => {
                if let Some(k) = self.vms.get_mut(n) {
                    k.disks = None;
                }
            }
            (Op::Delete(n), true) => {
                self.vms.remove(n);
                self.gone.insert(n.clone());
            }
            (Op::Delete(n), false) => {
                self.vms.remove(n);
                self.maybe.insert(n.clone());
            }
            (Op::Export(_, f), true) => self.archives.push(f.clone()),
            (Op::Export(..), false) => {}
        }
    }

    fn set_power(&mut self, n: &str, p: Option<Power>) {
        if let Some(k) = self.vms.get_mut(n) {
            k.power = p;
        }
    }

    /// Compare the agent's VM list with what was acknowledged; then adopt what is unknown.
    fn check(&mut self, vms: &[common::invariants::Listed]) -> Vec<String> {
        let mut bad = Vec::new();
        let by_name: BTreeMap<&str, &common::invariants::Listed> =
            vms.iter().map(|v| (v.name.as_str(), v)).collect();
        for (name, k) in &self.vms {
            match by_name.get(name.as_str()) {
                None => bad.push(format!("acknowledged VM {name:?} is gone")),
                Some(v) => {
                    if let Some(p) = k.power {
                        if v.power_state != p.as_str() {
                            bad.push(format!(
                                "VM {name:?} is {} but was acknowledged {}",
                                v.power_state,
                                p.as_str()
                            ));
                        }
                    }
                    if let Some(d) = k.disks {
                        if v.disks.len() != d {
                            bad.push(format!(
                                "VM {name:?} has {} disks but {d} were acknowledged",
                                v.disks.len()
                            ));
                        }
                    }
                }
            }
        }
        for name in &self.gone {
            if by_name.contains_key(name.as_str()) {
                bad.push(format!(
                    "VM {name:?} was deleted (or never made) but exists"
                ));
            }
        }
        for v in vms {
            if !self.vms.contains_key(&v.name) && !self.maybe.contains(&v.name) {
                bad.push(format!("VM {:?} exists but nobody created it", v.name));
            }
        }
        // Adopt: what exists now is the new acknowledged state.
        for name in std::mem::take(&mut self.maybe) {
            if !by_name.contains_key(name.as_str()) {
                self.gone.insert(name);
            }
        }
        self.vms.clear();
        for v in vms {
            let power = match v.power_state.as_str() {
                "halted" => Some(Power::Halted),
                "running" => Some(Power::Running),
                _ => None,
            };
            self.vms.insert(
                v.name.clone(),
                Known {
                    power,
                    disks: Some(v.disks.len()),
                },
            );
        }
        bad
    }
}

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let rounds: u64 = std::env::var("CORRAL_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("CORRAL_CHAOS_SEED")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| now_ms() ^ (u64::from(std::process::id()) << 32));
    println!("chaos: seed {seed} (set CORRAL_CHAOS_SEED={seed} to replay), {rounds} rounds");
    let mut a = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("user-data.yaml");
    std::fs::write(&user_data, "#cloud-config\nhostname: chaos\n").unwrap();
    let user_data = format!("user-data={}", user_data.display());
    let mut c = Chaos {
        rng: Rng(seed),
        vms: BTreeMap::new(),
        maybe: BTreeSet::new(),
        gone: BTreeSet::new(),
        archives: Vec::new(),
        next: 0,
        dir: dir.path().to_path_buf(),
    };
    let started = Instant::now();
    let mut findings: Vec<String> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut unexpected: Vec<String> = Vec::new();
    let (mut faults, mut acked, mut cut) = (0u64, 0u64, 0u64);
    let mut by_kind: BTreeMap<&'static str, (u32, u32, Duration)> = BTreeMap::new();
    for round in 0..rounds {
        // VMs that a restarted agent is still working on (a resumed install) sit this out.
        let busy: BTreeSet<String> = a
            .json(&["task", "list"])
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["state"] == "running")
            .filter_map(|t| t["vm_name"].as_str().map(str::to_string))
            .collect();
        let n = 2 + c.rng.below(3) as usize;
        let ops = c.plan(n, &busy);
        let workers: Vec<_> = ops
            .iter()
            .map(|op| {
                let args = op.args(&user_data);
                let socket = a.socket.clone();
                std::thread::spawn(move || run_cli(&socket, &args))
            })
            .collect();
        // Most kills land while operations run; some after they all ended (a kill then
        // must not undo anything acknowledged).
        // Half the kills early (most operations still at work), half late (exports and
        // imports, which take a second or two, cut at any point or already acknowledged).
        let delay = if c.rng.below(2) == 0 {
            c.rng.below(400)
        } else {
            400 + c.rng.below(1600)
        };
        std::thread::sleep(Duration::from_millis(delay));
        let killed_at = Instant::now();
        a.kill9();
        faults += 1;
        let outcomes: Vec<Outcome> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        for (op, o) in ops.iter().zip(&outcomes) {
            let e = by_kind.entry(op.kind()).or_default();
            if o.ok {
                acked += 1;
                e.0 += 1;
                e.2 += o.took;
            } else {
                cut += 1;
                e.1 += 1;
                // Failing before the kill is a real error, not a fault's doing.
                if o.ended < killed_at || o.stderr.starts_with("HUNG") {
                    unexpected.push(format!(
                        "round {round}: {} {:?} failed before the kill: {}",
                        op.kind(),
                        op,
                        o.stderr.trim()
                    ));
                }
            }
            if let Op::Export(_, f) = op {
                let partial = PathBuf::from(format!("{}.partial", f.display()));
                if !o.ok && (f.exists() || partial.exists()) {
                    findings.push(format!(
                        "round {round}: a failed export left {} behind",
                        f.display()
                    ));
                }
            }
            c.apply(op, o.ok);
        }
        let since = now_ms();
        a.spawn();
        let vms = listed(&a);
        let mut bad = c.check(&vms);
        bad.extend(inconsistencies(&a, &vms));
        bad.extend(stale_running_tasks(&a, since));
        // A leftover found once stays until someone removes it: count it once.
        let new: Vec<String> = bad.into_iter().filter(|b| seen.insert(b.clone())).collect();
        if !new.is_empty() {
            let kinds: Vec<&str> = ops.iter().map(|o| o.kind()).collect();
            for b in &new {
                println!("chaos: round {round} (ops {kinds:?}): {b}");
            }
            // The history of the VMs a finding names, to see which operation left it.
            for t in a.json(&["task", "list"]).as_array().into_iter().flatten() {
                let id = t["vm_id"].as_str().unwrap_or("-");
                if id.len() > 8 && new.iter().any(|b| b.contains(id)) {
                    println!(
                        "chaos:   task {} {} {} {}: {} {}",
                        t["operation"],
                        t["vm_name"],
                        t["state"],
                        t["phase"],
                        t["result"],
                        t["error"]["message"]
                    );
                }
            }
            findings.extend(new.into_iter().map(|b| format!("round {round}: {b}")));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(k, (ok, cut, took))| {
            let mean = took.as_millis() / u128::from((*ok).max(1));
            format!("{k} {ok}/{} (mean {mean} ms)", ok + cut)
        })
        .collect();
    println!(
        "chaos: operations acknowledged/run by kind: {}",
        kinds.join(", ")
    );
    println!(
        "chaos: {rounds} rounds in {secs:.0} s (seed {seed}): {faults} faults injected (kill -9 of the agent), {acked} operations acknowledged, {cut} cut off, {} inconsistencies, {} unexpected errors, {} VMs at the end",
        findings.len(),
        unexpected.len(),
        c.vms.len()
    );
    assert!(
        unexpected.is_empty(),
        "operations failed without a fault (seed {seed}):\n{}\nagent log tail:\n{}",
        unexpected.join("\n"),
        tail(&a.log(), 30)
    );
    assert!(
        findings.is_empty(),
        "{} inconsistencies (seed {seed}):\n{}\nagent log tail:\n{}",
        findings.len(),
        findings
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        tail(&a.log(), 30)
    );
}
