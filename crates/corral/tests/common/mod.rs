//! Harness for end-to-end tests: a real `corral serve` in a temporary state directory, the
//! real CLI, real QEMU guests (TCG) booting the project's test guest. Every wait has a
//! timeout; dropping a `TestAgent` kills the agent and every QEMU it started.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic
#![allow(dead_code)]

pub mod invariants;
pub mod server;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // not every test binary uses every helper
pub use corral_testkit::{closed_port, free_port, MARKER};

/// The project's test guest (scripts/build-test-guest.sh).
pub type Guest = corral_testkit::TestGuest;

pub fn guest() -> Guest {
    corral_testkit::test_guest()
}

pub struct TestAgent {
    pub state: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    /// A command the agent runs under (`ip netns exec NS`), empty for none.
    prefix: Vec<String>,
}

pub fn corral_bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

impl TestAgent {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_under(&[], extra)
    }

    /// Start the agent under a command, e.g. `["ip", "netns", "exec", "ns1"]`.
    pub fn start_under(prefix: &[&str], extra: &[&str]) -> Self {
        let state = tempfile::Builder::new()
            .prefix("corral-e2e-")
            .tempdir()
            .expect("tempdir");
        let socket = state.path().join("corral.sock");
        let mut a = TestAgent {
            state,
            socket,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
        };
        a.spawn();
        a
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// (Re)start the agent process on the same state directory.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("agent.log"))
            .expect("agent log");
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(corral_bin());
                c
            }
            None => Command::new(corral_bin()),
        };
        cmd.arg("serve").arg("--state-dir").arg(self.state.path());
        if !self.extra.iter().any(|a| a.starts_with("--accel")) {
            cmd.args(["--accel", "tcg"]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn corral serve");
        self.child = Some(child);
        wait_until(Duration::from_secs(20), "agent socket", || {
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        });
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Start an agent that is expected to refuse to start; answers what it printed.
    pub fn try_start(extra: &[String]) -> String {
        let state = tempfile::Builder::new()
            .prefix("corral-e2e-")
            .tempdir()
            .expect("tempdir");
        let mut child = Command::new(corral_bin())
            .arg("serve")
            .arg("--state-dir")
            .arg(state.path())
            .args(["--accel", "tcg"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corral serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait().expect("wait").is_some() {
                let out = child.wait_with_output().expect("output");
                assert!(!out.status.success(), "the agent exited 0");
                return format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent started although it should have refused: {extra:?}");
    }

    /// SIGKILL the agent, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the agent and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("agent.log")).unwrap_or_default()
    }

    /// Run the CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(corral_bin())
            .arg("--connect")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run corral")
    }

    /// Run the CLI and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "corral {} failed ({}):\nstdout: {}\nstderr: {}\nagent log tail:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run the CLI and require failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "corral {} should have failed but printed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("JSON output")
    }

    pub fn vm(&self, name: &str) -> Value {
        self.json(&["vm", "show", name])
    }

    pub fn power_state(&self, name: &str) -> String {
        self.vm(name)["power_state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Create a VM that boots the test guest's kernel directly.
    pub fn create_kernel_vm(&self, name: &str, extra: &[&str]) {
        // no_timer_check: a loaded TCG host can make Linux's IO-APIC timer check fail.
        self.create_kernel_vm_cmdline(name, "console=ttyS0 no_timer_check", extra);
    }

    pub fn create_kernel_vm_cmdline(&self, name: &str, cmdline: &str, extra: &[&str]) {
        let g = guest();
        let (k, i) = (
            g.kernel.to_string_lossy().into_owned(),
            g.initrd.to_string_lossy().into_owned(),
        );
        let mut args = vec![
            "vm",
            "create",
            "--name",
            name,
            "--memory",
            "192M",
            "--kernel",
            &k,
            "--initrd",
            &i,
            "--cmdline",
            cmdline,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    pub fn console_log(&self, name: &str) -> String {
        let out = self.cli(&["vm", "console", name, "--log"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until the console log shows `needle` at least `count` times.
    pub fn wait_console(&self, name: &str, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.console_log(name);
            if log.matches(needle).count() >= count {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "VM {name}: {needle:?} did not appear {count} time(s) within {timeout:?}; console tail:\n{}",
                    tail(&log, 25)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) {
        wait_until(timeout, &format!("VM {name} to be {state}"), || {
            self.power_state(name) == state
        });
    }

    /// QEMU pids of this agent's VMs, from their pid files.
    pub fn qemu_pids(&self) -> Vec<u32> {
        let run = self.state.path().join("run");
        let mut pids = Vec::new();
        if let Ok(entries) = std::fs::read_dir(run) {
            for e in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(e.path().join("qemu.pid")) {
                    if let Ok(pid) = text.trim().parse::<u32>() {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.qemu_pids() {
            if pid > 1 {
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
        // What a restarted agent would do for QEMUs that died meanwhile: take back their
        // file grants, some of which sit outside the state (e.g. search on /root on the way
        // to the cached test guest).
        if let Ok(entries) = std::fs::read_dir(self.state.path().join("run")) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                corral_agent::confine::revoke_all(&e.path(), &id);
            }
        }
    }
}

pub fn pid_alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Boot timeouts are generous: CI runs two TCG guests at once on two cores.
pub const BOOT: Duration = Duration::from_secs(90);

/// A TCP port on 127.0.0.1 that was free a moment ago (for `serve --listen`).
/// Run the CLI with exactly `args` (no implicit `--connect`), ignoring CORRAL_* variables of
/// the caller's environment.
pub fn corral(args: &[&str]) -> Output {
    Command::new(corral_bin())
        .args(args)
        .env_remove("CORRAL_CONNECT")
        .env_remove("CORRAL_TOKEN")
        .env_remove("CORRAL_FINGERPRINT")
        .stdin(Stdio::null())
        .output()
        .expect("run corral")
}

/// A Linux bridge for one test (needs root), removed on drop even when the test panics,
/// together with whatever is still attached to it (taps of VMs a killed agent left behind).
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    /// Create bridge `name`, give it `address` (CIDR) if any, and bring it up.
    pub fn create(name: &str, address: Option<&str>) -> Bridge {
        assert!(name.len() <= 15, "bridge name {name:?} is too long");
        // A bridge of an earlier, killed run of this test would make `ip link add` fail.
        if Path::new("/sys/class/net").join(name).exists() {
            ip(&["link", "del", name]);
        }
        ip(&["link", "add", name, "type", "bridge"]);
        let bridge = Bridge { name: name.into() };
        if let Some(a) = address {
            ip(&["addr", "add", a, "dev", name]);
        }
        ip(&["link", "set", name, "up"]);
        bridge
    }

    /// Interfaces attached to the bridge.
    pub fn ports(&self) -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.name))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for port in self.ports() {
            let _ = Command::new("ip").args(["link", "del", &port]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Is the test running as root (bridges, taps and DHCP servers need it)?
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}
