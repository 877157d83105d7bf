//! The conversion on a throw-away overlay of the P2V fixture (`scripts/build-p2v-source.sh`),
//! without booting it (`crates/corral/tests/v2v.rs` boots the result through the agent).
//! A developer tool for timing the conversion alone (about 2 min under TCG); the suite's proof
//! is the end-to-end test. `cargo run -p corral-convert --example convert_fixture`
//! (`CORRAL_V2V_SMP=N` appliance vCPUs, `CORRAL_V2V_KEEP=FILE` keeps the converted overlay).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

use corral_convert::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn fixture() -> Option<PathBuf> {
    let dir = std::env::var_os("CORRAL_P2V_SOURCE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/corral/p2v-source"))
        })?;
    let disk = dir.join("disk.img");
    disk.exists().then_some(disk)
}

#[tokio::main]
async fn main() {
    let Some(src) = fixture() else {
        eprintln!("no fixture: build it with scripts/build-p2v-source.sh");
        std::process::exit(2);
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("overlay.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&src)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());
    let req = Request {
        disk: &disk,
        format: "qcow2",
        options: Options {
            network: NetworkMode::Dhcp,
            nic_macs: vec!["52:54:00:00:00:01".into()],
            grow: false,
            emptied: vec![],
        },
        appliance: ApplianceOptions {
            tcg: true,
            command_timeout: Duration::from_secs(600),
            smp: std::env::var("CORRAL_V2V_SMP")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1),
        },
    };
    let t = Instant::now();
    let progress = |s: Stage, f: f64, what: &str| {
        eprintln!(
            "{:>6.1}s {s:?} {:3.0}% {what}",
            t.elapsed().as_secs_f64(),
            f * 100.0
        )
    };
    let report = convert_disk(&req, &progress, std::future::pending())
        .await
        .unwrap();
    eprintln!("{report:#?}");
    assert_eq!(report.firmware, corral_model::Firmware::Bios);
    assert!(report
        .changes
        .iter()
        .any(|c| c.contains("update-initramfs")));
    if let Ok(keep) = std::env::var("CORRAL_V2V_KEEP") {
        std::fs::copy(&disk, &keep).unwrap();
    }
}
