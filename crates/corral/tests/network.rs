//! End-to-end: networks. Two guests on a Linux bridge reach each other (needs root, as in CI).

mod common;
use common::*;
use std::process::Command;

#[test]
fn two_guests_on_a_bridge_reach_each_other() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "bridged networking needs root; run the suite as root (CI does)"
    );
    let bridge = Bridge::create(&format!("crbr{}", std::process::id() % 100000), None);

    let a = TestAgent::start();
    a.ok(&["network", "create", "lan", "--bridge", &bridge.name]);
    let nets = a.json(&["network", "list"]);
    assert!(nets
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == "lan" && n["bridge"] == bridge.name.as_str()));
    let err = a.fails(&["network", "create", "lan", "--bridge", &bridge.name]);
    assert!(err.contains("already exists"), "{err}");

    a.create_kernel_vm_cmdline(
        "left",
        "console=ttyS0 no_timer_check corral.ip=10.77.0.2/24 corral.ping=10.77.0.3",
        &["--nic", "lan"],
    );
    a.create_kernel_vm_cmdline(
        "right",
        "console=ttyS0 no_timer_check corral.ip=10.77.0.3/24 corral.ping=10.77.0.2",
        &["--nic", "lan"],
    );
    a.ok(&["vm", "start", "left"]);
    a.ok(&["vm", "start", "right"]);
    a.wait_console("left", "CORRAL-PING-OK 10.77.0.3", 1, BOOT);
    a.wait_console("right", "CORRAL-PING-OK 10.77.0.2", 1, BOOT);
    // The taps are on the bridge while the VMs run and gone after.
    assert_eq!(bridge.ports().len(), 2);
    a.ok(&["vm", "poweroff", "left"]);
    a.ok(&["vm", "poweroff", "right"]);
    assert_eq!(
        bridge.ports(),
        Vec::<String>::new(),
        "taps removed after poweroff"
    );
}

#[test]
fn events_stream_state_changes() {
    let a = TestAgent::start();
    let mut child = Command::new(corral_bin())
        .arg("--connect")
        .arg(&a.socket)
        .args(["--json", "events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    a.create_kernel_vm("ev1", &[]);
    a.ok(&["vm", "start", "ev1"]);
    a.ok(&["vm", "poweroff", "ev1"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "vm_created" && e["vm"] == "ev1"),
        "{text}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "power_state_changed" && e["to"] == "running"),
        "{text}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "power_state_changed" && e["to"] == "halted"),
        "{text}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "events in order");
}
