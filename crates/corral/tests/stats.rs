//! End-to-end: the agent measures a real running guest (TCG): `vm stats` shows CPU after a few
//! seconds, network on user-mode NAT is reported as not available, the coarse history survives
//! an agent restart (with each point's maximum beside its mean), a halted VM has no current
//! sample, `vm recommend-host` rates this host with reasons, and the host's planner capacity
//! takes figures from `--capacity-*` and `[capacity]`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

fn stats(a: &TestAgent, name: &str) -> Value {
    a.json(&["vm", "stats", name])
}

fn points(s: &Value, resolution: &str) -> usize {
    s["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["resolution"] == resolution)
        .map(|x| x["points"].as_array().unwrap().len())
        .unwrap_or(0)
}

/// The first `n` lines of `corral --json vm stats NAME --follow` (each within 20 s).
fn follow_lines(a: &TestAgent, name: &str, n: usize) -> Vec<String> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(corral_bin())
        .arg("--connect")
        .arg(&a.socket)
        .args(["--json", "vm", "stats", name, "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let lines: Vec<String> = (0..n)
        .map_while(|_| rx.recv_timeout(Duration::from_secs(20)).ok())
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), n, "vm stats --follow printed {lines:?}");
    lines
}

#[test]
fn running_guest_is_measured_and_rated_and_halted_guest_has_no_current_sample() {
    // Disk bandwidth stated on the command line (it is only a typical figure otherwise).
    let mut a = TestAgent::start_with(&["--capacity-disk-mbps", "1234"]);
    a.create_kernel_vm("meter", &["--disk", "32M"]);

    // Halted: nothing to show yet, and the answer says so.
    let s = stats(&a, "meter");
    assert!(s["current"].is_null(), "{s}");
    assert_eq!(points(&s, "5s"), 0);
    let text = a.ok(&["vm", "stats", "meter"]);
    assert!(text.contains("no current sample"), "{text}");

    // Configured profile while halted.
    let r = a.json(&["vm", "recommend-host", "meter"]);
    assert_eq!(r["basis"], "configured", "{r}");

    a.ok(&["vm", "start", "meter"]);
    a.wait_console("meter", MARKER, 1, BOOT);
    let mut last = Value::Null;
    wait_until(Duration::from_secs(60), "a current sample with CPU", || {
        last = stats(&a, "meter");
        last["current"]["cpu_ghz"].as_f64().unwrap_or(0.0) > 0.0
    });
    let cur = &last["current"];
    assert!(cur["cpu_percent"].as_f64().unwrap() > 0.0, "{last}");
    assert!(cur["memory_bytes"].as_u64().unwrap() > 16 << 20, "{last}");
    // The default network is user-mode NAT: no counters, so no numbers.
    assert!(
        cur["net_rx_bytes_per_s"].is_null() && cur["net_tx_bytes_per_s"].is_null(),
        "{last}"
    );
    let na = last["not_available"].to_string();
    assert!(na.contains("user-mode NAT"), "{last}");
    // Disks are measured through QMP.
    assert!(cur["disk_read_bytes_per_s"].as_f64().is_some(), "{last}");
    assert!(cur["disk_write_iops"].as_f64().is_some(), "{last}");
    let summary = last["series"][0]["summary"].as_array().unwrap();
    assert!(summary
        .iter()
        .any(|m| m["metric"] == "cpu_ghz" && m["max"].as_f64().unwrap() > 0.0));

    let text = a.ok(&["vm", "stats", "meter"]);
    assert!(
        text.contains("GHz") && text.contains("p50/p95/max"),
        "{text}"
    );
    assert!(
        text.contains("not available: network traffic of nic0"),
        "{text}"
    );

    // `--follow` pushes each new sample: the document, then samples newer than its current
    // one, 5 s apart.
    let lines = follow_lines(&a, "meter", 3);
    let doc: Value = serde_json::from_str(&lines[0]).unwrap();
    let at = |l: &str| {
        serde_json::from_str::<Value>(l).unwrap()["at_ms"]
            .as_u64()
            .unwrap()
    };
    let (s1, s2) = (at(&lines[1]), at(&lines[2]));
    assert!(s1 > doc["current"]["at_ms"].as_u64().unwrap(), "{lines:?}");
    assert!((4_000..=7_000).contains(&(s2 - s1)), "{lines:?}");

    // Measured profile: rated 0-5 with reasons.
    let r = a.json(&["vm", "recommend-host", "meter"]);
    assert_eq!(r["basis"], "measured", "{r}");
    let hosts = r["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{r}");
    let score = hosts[0]["score"].as_f64().unwrap();
    assert!((0.0..=5.0).contains(&score), "{r}");
    assert!(!hosts[0]["reasons"].as_array().unwrap().is_empty(), "{r}");
    let text = a.ok(&["vm", "recommend-host", "meter"]);
    assert!(text.contains("/ 5") && text.contains("measured"), "{text}");

    // The demand covers all six resources.
    let keys: Vec<&str> = r["demand"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d[0].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 6, "{r}");

    // This host in the planner's model: every resource has a finite capacity (ratings weigh
    // all six), the configured one replaces the typical figure, and notes say where each
    // figure came from.
    let h = a.json(&["host", "info"]);
    let p = &h["planner"];
    assert!(p["cores"].as_u64().unwrap() >= 1, "{h}");
    assert!(p["ghz"].as_f64().unwrap() > 0.0, "{h}");
    assert!(p["memory_gib"].as_f64().unwrap() > 0.5, "{h}");
    assert!(p["net_mbps"].as_f64().unwrap() > 0.0, "{h}");
    assert_eq!(p["disk_mbps"].as_f64(), Some(1234.0), "{h}");
    assert!(p["iops"].as_f64().unwrap() > 0.0, "{h}");
    let notes = p["notes"].to_string();
    assert!(
        notes.contains("disk bandwidth: 1234 MB/s set by configuration"),
        "{h}"
    );
    assert!(
        notes.contains("logical CPUs from /proc/cpuinfo") && notes.contains("clock:"),
        "{h}"
    );
    let text = a.ok(&["host", "info"]);
    assert!(text.contains("disk 1234 MB/s"), "{text}");

    // The minute history is persisted: it survives an agent restart (the guest keeps running).
    wait_until(Duration::from_secs(100), "a 1-minute point", || {
        points(&stats(&a, "meter"), "1m") >= 1
    });
    a.stop();
    // IOPS stated in the configuration file's [capacity] table.
    std::fs::write(
        a.state_dir().join("corral.toml"),
        "[capacity]\niops = 4321\n",
    )
    .unwrap();
    a.spawn();
    assert_eq!(a.power_state("meter"), "running");
    let h = a.json(&["host", "info"]);
    assert_eq!(h["planner"]["iops"].as_f64(), Some(4321.0), "{h}");
    assert_eq!(h["planner"]["disk_mbps"].as_f64(), Some(1234.0), "{h}");
    let s = stats(&a, "meter");
    assert!(
        points(&s, "1m") >= 1,
        "coarse history kept across the restart: {s}"
    );
    // Coarse points keep the maximum beside the mean.
    let minute = &s["series"][1]["points"][0];
    assert!(
        minute["max"]["cpu_ghz"].as_f64().unwrap() >= minute["cpu_ghz"].as_f64().unwrap(),
        "{minute}"
    );

    // Halted again: no current sample.
    a.ok(&["vm", "poweroff", "meter"]);
    let s = stats(&a, "meter");
    assert!(s["current"].is_null(), "{s}");
    assert!(
        points(&s, "1m") >= 1,
        "history stays after the VM stops: {s}"
    );

    // Unknown VM: a clear error.
    let err = a.fails(&["vm", "stats", "nosuch"]);
    assert!(err.contains("no VM named \"nosuch\""), "{err}");
}
