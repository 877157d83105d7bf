//! A state directory made by the release before pools (schema 1: `host/id` and unscoped
//! repository and task keys in the store) upgrades in place when the new agent starts:
//! nothing is lost, the host keeps its identity, and names are indexed.
//!
//! The fixture `tests/data/state-schema1/corral.db` was made by that release's `corral
//! serve`: `sr create extra`, `vm create web01` (2 vCPUs, 256 MiB, a 16 MiB disk, a
//! description) and `vm create db01`. Its host id was 3e997f1a-8ad8-46d2-90d4-3e383e2e53e1.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

mod common;
use common::*;

const OLD_HOST_ID: &str = "3e997f1a-8ad8-46d2-90d4-3e383e2e53e1";

fn last_agent_start(a: &TestAgent) -> String {
    let tasks = a.json(&["task", "list"]);
    tasks
        .as_array()
        .unwrap()
        .iter()
        .rfind(|t| t["operation"] == "agent.start")
        .and_then(|t| t["result"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_state_from_the_release_before_pools_upgrades_in_place() {
    let mut a = TestAgent::start();
    a.stop();
    let state = a.state_dir().to_path_buf();
    for f in ["corral.db", "corral.db-wal", "corral.db-shm", "host-id"] {
        let _ = std::fs::remove_file(state.join(f));
    }
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/state-schema1/corral.db");
    std::fs::copy(&fixture, state.join("corral.db")).unwrap();
    a.spawn();

    let note = last_agent_start(&a);
    assert!(
        note.contains("upgraded the state from schema 1 to 2"),
        "{note}"
    );
    // The VMs, with their settings.
    let vms = a.json(&["vm", "list"]);
    let names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db01", "web01"]);
    let web = a.json(&["vm", "show", "web01"]);
    assert_eq!(web["vcpus"], 2);
    assert_eq!(web["description"], "made by the release before pools");
    // The repositories, the history and the host's identity.
    let srs = a.ok(&["sr", "list"]);
    assert!(srs.contains("extra") && srs.contains("default"), "{srs}");
    let history = a.json(&["vm", "history", "web01"]);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operation"] == "vm.create" && t["state"] == "succeeded"),
        "{history}"
    );
    assert_eq!(a.json(&["host", "info"])["host_id"], OLD_HOST_ID);
    let file = std::fs::read_to_string(state.join("host-id")).unwrap();
    assert_eq!(file.trim(), OLD_HOST_ID);
    // Names are indexed: an old name is taken; a new VM and a rename keep the index right.
    let taken = a.fails(&["vm", "create", "--name", "web01", "--no-nics"]);
    assert!(taken.contains("already exists"), "{taken}");
    a.ok(&["vm", "create", "--name", "app01", "--no-nics"]);
    a.ok(&["vm", "set", "db01", "--rename", "db02"]);
    a.ok(&["vm", "create", "--name", "db01", "--no-nics"]);

    // A second start finds schema 2 and changes nothing.
    a.stop();
    a.spawn();
    let note = last_agent_start(&a);
    assert!(!note.contains("upgraded"), "{note}");
    let vms = a.json(&["vm", "list"]);
    assert_eq!(vms.as_array().unwrap().len(), 4, "{vms}");
    assert_eq!(a.json(&["host", "info"])["host_id"], OLD_HOST_ID);
}
