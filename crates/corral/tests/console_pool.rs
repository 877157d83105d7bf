//! The web Administrator Console over a pool, end to end: a real 3-member etcd, two real
//! agents, a counting guest under TCG on xen01, and real headless Chromium running
//! `web/tests/pool.mjs` against xen01's web console: the tree heads each host's VMs, the
//! Migrate action shows the pre-checks before the move, the tree follows the VM to xen02,
//! the graphical console reconnects by itself to the VM on its new host within 3 s (through
//! xen01, which forwards to xen02), the text console shows the guest still counting, the
//! charts are pushed, and xen02 turns down and up in the tree as its agent freezes and thaws.
//!
//! Needs what `console.rs` needs (`web/node_modules`, `chromium`). On failure the script
//! leaves `failure.png` and `trace.zip` in `target/tmp/console-pool-e2e/`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "../../corral-store/src/etcd_cluster.rs"]
mod etcd_cluster;
#[path = "common/pool.rs"]
mod pool_setup;

use common::*;
use pool_setup::*;
use std::path::Path;
use std::time::Duration;

#[test]
fn the_console_follows_a_vm_across_a_migration_in_a_real_browser() {
    let p = start_pool();
    wait_until(Duration::from_secs(15), "both members up", || {
        hosts(&p.a).iter().filter(|(_, s)| s == "up").count() == 2
    });
    p.a.create_kernel_vm_cmdline(
        "web1",
        "console=tty0 console=ttyS0 no_timer_check corral.count",
        &["--host", "xen01", "--disk", "16M,sr=shared1"],
    );
    p.a.ok(&["vm", "start", "web1"]);
    p.a.wait_console("web1", "CORRAL-COUNT 2", 1, BOOT);
    let url = p.a.json(&["host", "show", "xen01"])["address"]
        .as_str()
        .expect("xen01 serves an address")
        .to_string();
    let token = std::fs::read_to_string(p.a.state_dir().join("token")).unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-pool-e2e");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();

    // The script asks (a file in OUT_DIR) to freeze xen02's agent, then to thaw it. What the
    // pool says about the VM is checked first: a frozen owner may fence its VMs.
    let (freeze, thaw) = (out.join("freeze-xen02"), out.join("thaw-xen02"));
    let mut frozen: Option<Thaw> = None;
    let shots = out.join("shots").display().to_string();
    let figures = browser::run_script(
        "pool.mjs",
        &[
            ("CORRAL_URL", url.as_str()),
            ("CORRAL_TOKEN", token.trim()),
            ("VM", "web1"),
            ("SHOTS_DIR", shots.as_str()),
        ],
        &out,
        Duration::from_secs(300),
        |child| {
            if frozen.is_none() && freeze.exists() {
                let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    the_vm_runs_once_on_xen02(&p)
                }));
                if let Err(why) = checked {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::panic::resume_unwind(why);
                }
                frozen = Some(Thaw::freeze(p.b.pid()));
            }
            if thaw.exists() {
                frozen.take();
            }
        },
        || {
            format!(
                "xen01's log tail:\n{}\nxen02's log tail:\n{}",
                tail(&p.a.log(), 30),
                tail(&p.b.log(), 30)
            )
        },
    );
    assert!(figures["reconnect_after_migration_ms"].as_u64().unwrap() <= 3000);
}

/// SIGSTOP of an agent until dropped (SIGCONT), so no exit path leaves it frozen.
struct Thaw(u32);

impl Thaw {
    fn freeze(pid: u32) -> Thaw {
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        Thaw(pid)
    }
}

impl Drop for Thaw {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// What the browser saw is what the pool says: the VM runs on xen02, once, and xen02's
/// console log starts at the move.
fn the_vm_runs_once_on_xen02(p: &Pool) {
    let v = p.b.vm("web1");
    assert_eq!(
        (v["host"].as_str(), v["power_state"].as_str()),
        (Some("xen02"), Some("running")),
        "{v}"
    );
    assert_eq!(qemus_of(v["id"].as_str().unwrap()).len(), 1);
    // xen02's console log starts at the move: no boot in it, the count went on.
    let log = p.b.console_log("web1");
    let boots = log.lines().filter(|l| l.trim() == "CORRAL-COUNT 1").count();
    assert!(boots == 0 && log.contains("CORRAL-COUNT"), "{log}");
}
