//! Load: 50 concurrent API clients (the typed client over the unix socket) issuing mixed
//! reads and actions on 20 VMs, a few of them running under TCG, for a while; no request may
//! hang (no deadlock), no error may be other than the expected refusals of concurrent actions
//! (`busy`, `conflict`, `invalid_state`), the agent must answer and be consistent afterwards.
//!
//! The suite runs it for 15 s and asserts no deadlock and no unexpected error (read latency
//! is printed, not asserted: CI machines are noisy). `scripts/bench-load.sh` runs the same
//! code for 60 s on a release build with `CORRAL_LOAD_P99_MS=50`, which also asserts the p99
//! of reads, and prints the figures as a markdown table (`CORRAL_LOAD_TABLE=FILE`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
use common::invariants::{inconsistencies, listed};
use common::*;
use corral_client::Client;
use corral_model::api::{ActionRequest, DiskRequest, VmAction, VmUpdateRequest};
use corral_model::ErrorKind;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What every client records.
#[derive(Default)]
struct Figures {
    /// Latency of each read, by kind, in microseconds.
    reads: BTreeMap<&'static str, Vec<u64>>,
    actions_ok: BTreeMap<&'static str, u64>,
    /// Expected refusals of concurrent actions (busy, conflict, invalid state), by kind.
    refused: BTreeMap<String, u64>,
    unexpected: Vec<String>,
    /// Requests that did not answer within the deadline: a deadlock or a hang.
    stuck: Vec<String>,
    action_us: Vec<u64>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Small xorshift per client.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// What every client shares: where the agent is, the VMs by role, when to stop, the figures.
struct Shared {
    socket: std::path::PathBuf,
    names: Vec<String>,
    running: Vec<String>,
    cycling: Vec<String>,
    until: Instant,
    think_ms: u64,
    figures: Mutex<Figures>,
}

async fn client_loop(id: u64, shared: Arc<Shared>) {
    let Shared {
        socket,
        names,
        running,
        cycling,
        until,
        think_ms,
        figures,
    } = &*shared;
    let (until, think_ms) = (*until, *think_ms);
    let c = Client::unix(socket.clone());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    while Instant::now() < until {
        let roll = rng.below(100);
        let vm = names[rng.below(names.len() as u64) as usize].clone();
        let started = Instant::now();
        if roll < 80 {
            let (kind, r): (&'static str, Result<(), corral_client::ClientError>) = match roll {
                0..=31 => (
                    "vm list",
                    wrap(tokio::time::timeout(REQUEST_DEADLINE, c.list_vms()).await),
                ),
                32..=55 => (
                    "vm show",
                    wrap(tokio::time::timeout(REQUEST_DEADLINE, c.show_vm(&vm)).await),
                ),
                56..=63 => (
                    "task list",
                    wrap(tokio::time::timeout(REQUEST_DEADLINE, c.list_tasks()).await),
                ),
                64..=71 => (
                    "host info",
                    wrap(tokio::time::timeout(REQUEST_DEADLINE, c.host_info()).await),
                ),
                _ => (
                    "vm history",
                    wrap(tokio::time::timeout(REQUEST_DEADLINE, c.history(&vm)).await),
                ),
            };
            let us = started.elapsed().as_micros() as u64;
            let mut f = figures.lock().unwrap();
            match r {
                Ok(()) => f.reads.entry(kind).or_default().push(us),
                Err(e) => record_error(&mut f, kind, &vm, e),
            }
        } else {
            let (kind, vm, r) = action(&c, &mut rng, names, running, cycling).await;
            let us = started.elapsed().as_micros() as u64;
            let mut f = figures.lock().unwrap();
            f.action_us.push(us);
            match r {
                Ok(()) => *f.actions_ok.entry(kind).or_default() += 1,
                Err(e) => record_error(&mut f, kind, &vm, e),
            }
        }
        if think_ms > 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(2 * think_ms))).await;
        }
    }
}

/// `Err(None)`-like: a timeout is reported as a protocol error naming the deadline.
fn wrap<T>(
    r: Result<Result<T, corral_client::ClientError>, tokio::time::error::Elapsed>,
) -> Result<(), corral_client::ClientError> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(corral_client::ClientError::Protocol(format!(
            "STUCK: no answer within {REQUEST_DEADLINE:?}"
        ))),
    }
}

fn record_error(f: &mut Figures, kind: &str, vm: &str, e: corral_client::ClientError) {
    let text = e.to_string();
    if text.starts_with("bad answer from the agent: STUCK") {
        f.stuck.push(format!("{kind} {vm}: {text}"));
        return;
    }
    match e.kind() {
        Some(k @ (ErrorKind::Busy | ErrorKind::Conflict | ErrorKind::InvalidState)) => {
            *f.refused.entry(format!("{k:?}")).or_default() += 1;
        }
        _ => f.unexpected.push(format!("{kind} {vm}: {text}")),
    }
}

/// One action: pause/resume on the running VMs, start/poweroff on the cycling ones, a
/// description change or a disk added and removed on any.
async fn action(
    c: &Client,
    rng: &mut Rng,
    names: &[String],
    running: &[String],
    cycling: &[String],
) -> (&'static str, String, Result<(), corral_client::ClientError>) {
    let none = ActionRequest::default();
    let roll = rng.below(100);
    let pick = |rng: &mut Rng, from: &[String]| from[rng.below(from.len() as u64) as usize].clone();
    match roll {
        0..=24 => {
            let vm = pick(rng, running);
            let a = if rng.below(2) == 0 {
                VmAction::Pause
            } else {
                VmAction::Resume
            };
            let r = wrap(tokio::time::timeout(REQUEST_DEADLINE, c.action(&vm, a, &none)).await);
            ("pause/resume", vm, r)
        }
        25..=34 => {
            let vm = pick(rng, cycling);
            let a = if rng.below(2) == 0 {
                VmAction::Start
            } else {
                VmAction::Poweroff
            };
            let r = wrap(tokio::time::timeout(REQUEST_DEADLINE, c.action(&vm, a, &none)).await);
            ("start/poweroff", vm, r)
        }
        35..=74 => {
            let vm = pick(rng, names);
            let req: VmUpdateRequest = serde_json::from_value(serde_json::json!({
                "description": format!("load {}", rng.below(1_000_000))
            }))
            .unwrap();
            let r = wrap(tokio::time::timeout(REQUEST_DEADLINE, c.update_vm(&vm, &req)).await);
            ("vm set", vm, r)
        }
        _ => {
            // Halted VMs only (others refuse: an expected refusal, but not a useful one).
            let halted: Vec<String> = names
                .iter()
                .filter(|n| !running.contains(n) && !cycling.contains(n))
                .cloned()
                .collect();
            let vm = pick(rng, &halted);
            let req = DiskRequest {
                size_bytes: 8 << 20,
                ..Default::default()
            };
            let added = match tokio::time::timeout(REQUEST_DEADLINE, c.disk_add(&vm, &req)).await {
                Ok(Ok(answer)) => answer,
                other => return ("disk add/remove", vm, wrap(other)),
            };
            // Remove the disk this client added: the answer's VM has it last.
            let r = match added.vm.disks.last().filter(|_| added.vm.disks.len() > 1) {
                Some(d) => wrap(
                    tokio::time::timeout(REQUEST_DEADLINE, c.disk_remove(&vm, &d.device)).await,
                ),
                None => Ok(()),
            };
            ("disk add/remove", vm, r)
        }
    }
}

struct Report {
    secs: f64,
    requests: u64,
    table: String,
    read_p99_ms: f64,
    unexpected: Vec<String>,
    stuck: Vec<String>,
}

fn run_load(a: &TestAgent, clients: u64, secs: u64, think_ms: u64) -> Report {
    // 20 VMs: 3 running guests, 2 that clients start and power off, 15 halted with a disk.
    let mut names = Vec::new();
    for i in 0..20 {
        let n = format!("load{i:02}");
        a.create_kernel_vm(&n, &["--disk", "8M"]);
        names.push(n);
    }
    let running: Vec<String> = names[..3].to_vec();
    let cycling: Vec<String> = names[3..5].to_vec();
    for n in &running {
        a.ok(&["vm", "start", n]);
    }
    for n in &running {
        a.wait_console(n, MARKER, 1, BOOT);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let shared = Arc::new(Shared {
        socket: a.socket.clone(),
        names,
        running,
        cycling,
        until,
        think_ms,
        figures: Mutex::new(Figures::default()),
    });
    rt.block_on(async {
        let mut handles = Vec::new();
        for id in 0..clients {
            handles.push(tokio::spawn(client_loop(id, shared.clone())));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    let secs_run = started.elapsed().as_secs_f64();
    let f = std::mem::take(&mut *shared.figures.lock().unwrap());
    let mut all: Vec<u64> = f.reads.values().flatten().copied().collect();
    all.sort_unstable();
    let mut rows = vec![
        "| measure | count | p50 | p95 | p99 | max |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];
    let row = |name: &str, v: &mut Vec<u64>| {
        v.sort_unstable();
        format!(
            "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.95),
            percentile(v, 0.99),
            percentile(v, 1.0)
        )
    };
    rows.push(row("all reads", &mut all.clone()));
    for (k, v) in f.reads.iter() {
        rows.push(row(k, &mut v.clone()));
    }
    rows.push(row("actions (incl. refused)", &mut f.action_us.clone()));
    let acted: u64 = f.actions_ok.values().sum();
    let refused: u64 = f.refused.values().sum();
    let requests = all.len() as u64 + f.action_us.len() as u64;
    let ok_by: Vec<String> = f
        .actions_ok
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let refused_by: Vec<String> = f.refused.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let table = format!(
        "{}\n\n{clients} clients, 20 VMs (3 running under TCG, 2 started and powered off by the clients), {secs_run:.0} s: {requests} requests ({:.0}/s), {} reads, {acted} actions done ({}), {refused} refused as expected ({}), {} unexpected errors, {} requests without an answer within {}s.\n",
        rows.join("\n"),
        requests as f64 / secs_run,
        all.len(),
        ok_by.join(", "),
        refused_by.join(", "),
        f.unexpected.len(),
        f.stuck.len(),
        REQUEST_DEADLINE.as_secs()
    );
    Report {
        secs: secs_run,
        requests,
        table,
        read_p99_ms: percentile(&all, 0.99),
        unexpected: f.unexpected,
        stuck: f.stuck,
    }
}

#[test]
fn fifty_clients_on_twenty_vms_neither_deadlock_nor_fail() {
    let secs = env_u64("CORRAL_LOAD_SECS", 15);
    let clients = env_u64("CORRAL_LOAD_CLIENTS", 50);
    let think = env_u64("CORRAL_LOAD_THINK_MS", 20);
    let a = TestAgent::start();
    let r = run_load(&a, clients, secs, think);
    println!("{}", r.table);
    if let Ok(file) = std::env::var("CORRAL_LOAD_TABLE") {
        std::fs::write(file, &r.table).unwrap();
    }
    assert!(r.requests > 0 && r.secs > 0.0);
    assert!(
        r.stuck.is_empty(),
        "requests that never answered (a deadlock?):\n{}\nagent log tail:\n{}",
        r.stuck.join("\n"),
        tail(&a.log(), 30)
    );
    assert!(
        r.unexpected.is_empty(),
        "{} unexpected errors, e.g.:\n{}",
        r.unexpected.len(),
        r.unexpected
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Afterwards: the agent answers at once, every task ends, nothing is inconsistent.
    let t = Instant::now();
    a.ok(&["vm", "list"]);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "vm list took {:?}",
        t.elapsed()
    );
    wait_until(Duration::from_secs(60), "every task to end", || {
        !a.json(&["task", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["state"] == "running")
    });
    let vms = listed(&a);
    let bad = inconsistencies(&a, &vms);
    assert!(bad.is_empty(), "{bad:#?}");
    if let Some(max) = std::env::var("CORRAL_LOAD_P99_MS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        assert!(
            r.read_p99_ms <= max,
            "p99 of reads {:.1} ms > {max} ms",
            r.read_p99_ms
        );
    }
}
