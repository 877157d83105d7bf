//! Helpers shared by the tests that run real QEMU.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_model::host::Accelerator;
use corral_model::*;
use corral_qemu::argv::{build_argv, Launch, NicBackend, OvmfPaths, RuntimePaths};
use corral_qemu::process::{self, Signal, QEMU_BINARY};
use corral_qemu::qmp::Qmp;

pub const VM_ID: &str = "6d1c2f3e-4b5a-4c6d-8e7f-0123456789ab";

pub fn qemu() -> PathBuf {
    PathBuf::from(QEMU_BINARY)
}

/// The project's test guest; tests that need it fail (never skip) when it is missing.
#[allow(unused_imports)] // not every test binary uses every helper
pub use corral_testkit::{test_guest, TestGuest};

pub fn base_spec(name: &str) -> VmSpec {
    corral_testkit::vm_spec(name)
}

/// A running (daemonized) QEMU that is killed when the test ends, however it ends.
pub struct Running {
    pub pid: u32,
    /// `None` once a test dropped the connection on purpose.
    pub qmp: Option<Qmp>,
    pub paths: RuntimePaths,
}

impl Running {
    pub fn qmp(&self) -> &Qmp {
        self.qmp.as_ref().expect("QMP connection was dropped")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if process::check_vm_process(self.pid, VM_ID) == process::ProcessMatch::Running {
            let _ = process::send_signal(self.pid, Signal::Kill);
        }
    }
}

/// Build the argv for `spec`, append `extra` (e.g. `-S`), start QEMU daemonized and connect.
pub async fn start(
    spec: &VmSpec,
    run_dir: &Path,
    nics: Vec<NicBackend>,
    ovmf: Option<OvmfPaths>,
    extra: &[&str],
) -> Running {
    std::fs::create_dir_all(run_dir).expect("create run dir");
    let paths = RuntimePaths::in_dir(run_dir);
    let launch = Launch {
        spec,
        vm_id: VM_ID,
        accel: Accelerator::Tcg,
        paths: paths.clone(),
        nics,
        ovmf,
        tpm_socket: None,
        daemonize: true,
        incoming: false,
        sandbox: false,
        identity: None,
        listen_fds: None,
    };
    let mut argv = build_argv(&launch).expect("build argv");
    argv.extend(extra.iter().map(|s| s.to_string()));
    let pid = process::spawn_daemonized(
        &qemu(),
        &argv,
        &run_dir.join("qemu.log"),
        &paths.pidfile,
        Duration::from_secs(60),
    )
    .await
    .expect("start QEMU");
    let qmp = Qmp::connect(&paths.qmp_socket, Duration::from_secs(30))
        .await
        .expect("connect QMP");
    Running {
        pid,
        qmp: Some(qmp),
        paths,
    }
}

pub fn raw_disk(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create disk");
    f.set_len(size).expect("size disk");
}
