//! The `corral` binary's planning commands as a user runs them, no agent needed: `plan --json`
//! output fields and raw capacities with `--max-utilisation 100% --reserve-memory 0`, a closed
//! pipe (`corral plan --json | head`) ending quietly, and Ctrl-C (a real SIGINT) stopping
//! `corral measure` with its partial profile written.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

use serde_json::Value;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn corral() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corral"))
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write input");
    p.to_str().expect("utf-8").to_string()
}

fn plan_json(args: &[&str]) -> Value {
    let out = corral()
        .arg("plan")
        .args(args)
        .arg("--json")
        .output()
        .expect("run corral");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn resource<'a>(plan: &'a Value, host: &str, key: &str) -> &'a Value {
    plan["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["host"] == host)
        .expect("host in report")["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["resource"] == key)
        .expect("resource in report")
}

#[test]
fn plan_json_has_its_fields_and_raw_capacities_at_100_percent_without_reserve() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 4 cores x 2.5 GHz = 10 GHz and 16 GiB: the workload takes exactly all of it.
    let hosts = write(
        dir.path(),
        "hosts.csv",
        "name,cores,ghz,memory_gib,net_mbps,disk_mbps\nhv1,4,2.5,16,1000,500\n",
    );
    let workloads = write(
        dir.path(),
        "workloads.csv",
        "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\nall,10,16,1000,500\nsmall,1,1,1,1\n",
    );
    let raw = plan_json(&[
        "--hosts",
        &hosts,
        "--workloads",
        &workloads,
        "--max-utilisation",
        "100%",
        "--reserve-memory",
        "0",
    ]);
    assert_eq!(raw["hosts_used"], 1, "{raw}");
    assert_eq!(raw["hosts_available"], 1, "{raw}");
    assert_eq!(
        raw["assignments"],
        serde_json::json!([{"workload": "all", "host": "hv1"}]),
        "{raw}"
    );
    let unplaced = raw["unplaced"].as_array().expect("unplaced");
    assert_eq!(unplaced.len(), 1, "{raw}");
    assert_eq!(unplaced[0]["workload"], "small");
    assert!(!unplaced[0]["reason"].as_str().expect("reason").is_empty());
    // Limits are the raw capacities and the host is exactly full.
    for (key, cap) in [
        ("cpu", 10.0),
        ("memory", 16.0),
        ("net_in", 1000.0),
        ("disk", 500.0),
    ] {
        let r = resource(&raw, "hv1", key);
        assert_eq!(r["capacity"].as_f64(), Some(cap), "{key}: {r}");
        assert_eq!(r["limit"].as_f64(), Some(cap), "{key}: {r}");
        assert_eq!(r["utilisation"].as_f64(), Some(1.0), "{key}: {r}");
        assert_eq!(r["headroom"].as_f64(), Some(0.0), "{key}: {r}");
    }
    assert!(
        raw["decisions"].as_array().is_some_and(|d| d.len() == 1),
        "{raw}"
    );
    assert!(raw["bounds"]["volume"].as_u64().is_some(), "{raw}");

    // The defaults (85 %, 1 GiB reserved) leave no room for it: memory is not overcommitted.
    let default = plan_json(&["--hosts", &hosts, "--workloads", &workloads]);
    assert!(default["unplaced"]
        .as_array()
        .expect("unplaced")
        .iter()
        .any(|u| u["workload"] == "all"));
    let r = resource(&default, "hv1", "memory");
    assert!(
        (r["limit"].as_f64().expect("limit") - 16.0 * 0.85).abs() < 1e-9,
        "{r}"
    );

    // A host's own max_utilisation column wins over the flag.
    let capped = write(
        dir.path(),
        "capped.csv",
        "name,cores,ghz,memory_gib,net_mbps,disk_mbps,max_utilisation\nhv1,4,2.5,16,1000,500,50%\n",
    );
    let p = plan_json(&[
        "--hosts",
        &capped,
        "--workloads",
        &workloads,
        "--max-utilisation",
        "100%",
        "--reserve-memory",
        "0",
    ]);
    assert_eq!(
        resource(&p, "hv1", "cpu")["limit"].as_f64(),
        Some(5.0),
        "{p}"
    );
    assert_eq!(p["assignments"][0]["workload"], "small", "{p}");

    // --memory-overcommit 2 lets 16 GiB of VMs onto 8 GiB.
    let small_host = write(
        dir.path(),
        "small.csv",
        "name,cores,ghz,memory_gib,net_mbps,disk_mbps\nhv1,4,2.5,8,1000,500\n",
    );
    let two = write(
        dir.path(),
        "two.csv",
        "name,cpu_ghz,memory_gib,net_mbps,disk_mbps\na,1,8,1,1\nb,1,8,1,1\n",
    );
    let base = [
        "--hosts",
        &small_host,
        "--workloads",
        &two,
        "--max-utilisation",
        "100%",
        "--reserve-memory",
        "0",
    ];
    let plain = plan_json(&base);
    assert_eq!(
        plain["unplaced"].as_array().map(Vec::len),
        Some(1),
        "{plain}"
    );
    let mut args = base.to_vec();
    args.extend(["--memory-overcommit", "2"]);
    let over = plan_json(&args);
    assert_eq!(over["unplaced"].as_array().map(Vec::len), Some(0), "{over}");
    let out = corral()
        .args([
            "plan",
            "--hosts",
            &small_host,
            "--workloads",
            &two,
            "--memory-overcommit",
            "0.5",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be at least 1"));
}

#[test]
fn plan_json_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts = write(
        dir.path(),
        "hosts.csv",
        "name,cores,ghz,memory_gib,net_mbps,disk_mbps\nhv,64,3,1024,100000,10000\n",
    );
    // Enough workloads for far more JSON than a pipe holds (64 KiB).
    let mut w = String::from("name,cpu_ghz,memory_gib,net_mbps,disk_mbps\n");
    for i in 0..400 {
        w.push_str(&format!("workload-{i},0.1,0.5,1,1\n"));
    }
    let workloads = write(dir.path(), "w.csv", &w);
    let mut child = corral()
        .args([
            "plan",
            "--hosts",
            &hosts,
            "--workloads",
            &workloads,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // `| head -c 100`: read a little, then close the pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).expect("some output");
    drop(stdout);
    let status = child.wait().expect("wait");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(!err.contains("panicked"), "{err}");
    assert!(status.success(), "{status:?}: {err}");
}

#[test]
fn ctrl_c_stops_measure_and_writes_the_partial_profile() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("srv.json");
    let mut child = corral()
        .args([
            "measure",
            "--interval",
            "200ms",
            "--duration",
            "1h",
            "--quiet",
            "-o",
        ])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corral measure");
    // Let it take a few samples.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill with a pid we spawned and still own (not yet waited for).
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "measure did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("stdout");
    assert!(status.success(), "{status:?}");
    assert!(stdout.contains("(stopped early)"), "{stdout}");
    let profile: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("profile written"))
            .expect("profile JSON");
    assert_eq!(profile["interrupted"], true, "{profile}");
    let n = profile["samples"].as_array().expect("samples").len();
    assert!(n >= 3, "{n} samples in 1.5 s at 200 ms");
}
